"""What machine and software this is, as runs, benchmarks and the organism matrix
record it (no torch)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

__all__ = ["aten_capabilities", "cpu_flags", "cpu_model", "package_versions"]


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model(cpuinfo: str | None = None) -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux), else None."""
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where unknown)."""
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def aten_capabilities(cpuinfo: str | None = None) -> list[str]:
    """``ATEN_CPU_CAPABILITY`` values this CPU runs: ``default`` and ``avx2``, plus
    ``avx512`` where it has ``avx512f`` (torch reports AVX512 even where it cannot)."""
    caps = ["default", "avx2"]
    if "avx512f" in cpu_flags(cpuinfo):
        caps.append("avx512")
    return caps


def package_versions(names: tuple[str, ...] | list[str]) -> dict[str, str | None]:
    """Installed version of each distribution in ``names`` (None where absent)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
