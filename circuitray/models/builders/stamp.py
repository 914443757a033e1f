"""Build stamps: reuse built artifacts while the code and config that made them stand.

A build is keyed by a SHA-256 over everything that decides its bytes:

1. the build's config (a JSON-able dict, e.g. ``dataclasses.asdict`` of its config);
2. the source of every module that builds or evaluates it (a recipe edit rebuilds);
3. the versions of Python, torch, transformers, circuit-tracer, numpy and
   safetensors, torch's CPU kernel set (``ATEN_CPU_CAPABILITY``) and the
   variables that steer MKL's and oneDNN's code paths (``MKL_CBWR``,
   ``ONEDNN_MAX_CPU_ISA``): other kernels give other last bits.

Next to the artifacts a build records that key and a digest of each artifact folder
(:func:`tree_sha256`: every file's relative path and bytes). A later build with the
same key whose folders still hash to the recorded digests is reused as it is.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import os
import platform
from collections.abc import Iterable, Mapping
from pathlib import Path

# Packages and variables whose change can change a build's bytes.
KEY_DISTRIBUTIONS = ("torch", "transformers", "circuit-tracer", "numpy", "safetensors")
KEY_ENV = ("MKL_CBWR", "ONEDNN_MAX_CPU_ISA")

__all__ = [
    "build_key",
    "is_current",
    "source_files",
    "tree_sha256",
    "unchanged",
    "write_stamp",
]


def source_files(modules: Iterable[str]) -> list[Path]:
    """The ``.py`` files of ``modules``: a package contributes every file under it."""
    files: set[Path] = set()
    for name in modules:
        mod = importlib.import_module(name)
        path = Path(mod.__file__ or "")
        if path.name == "__init__.py":
            files.update(path.parent.rglob("*.py"))
        else:
            files.add(path)
    return sorted(files)


def build_key(config: Mapping, *, modules: Iterable[str]) -> str:
    """The key of a build of ``config`` by ``modules`` on this torch (see module doc)."""
    import torch

    h = hashlib.sha256()
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for f in source_files(modules):
        h.update(f"{f.parent.name}/{f.name}".encode())
        h.update(f.read_bytes())
    for dist in KEY_DISTRIBUTIONS:
        h.update(f"{dist}=={importlib.metadata.version(dist)}".encode())
    h.update(f"python {platform.python_version()}".encode())
    h.update(torch.backends.cpu.get_cpu_capability().encode())
    for var in KEY_ENV:
        h.update(f"{var}={os.environ.get(var, '')}".encode())
    return h.hexdigest()


def tree_sha256(path: Path) -> str:
    """SHA-256 over every file under ``path``: relative names and bytes, sorted."""
    path = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode())
        h.update(b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()


def unchanged(recorded: Mapping[str, str], folders: Mapping[str, Path]) -> bool:
    """Whether every folder exists and still hashes to its recorded digest."""
    return set(recorded) == set(folders) and all(
        Path(folders[name]).is_dir() and tree_sha256(folders[name]) == digest
        for name, digest in recorded.items()
    )


def is_current(stamp: Path, key: str, folders: Mapping[str, Path]) -> bool:
    """Whether the stamp file records ``key`` and ``folders`` are as it recorded them."""
    try:
        recorded = json.loads(Path(stamp).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(recorded, dict)
        and recorded.get("key") == key
        and unchanged(recorded.get("sha256", {}), folders)
    )


def write_stamp(stamp: Path, key: str, folders: Mapping[str, Path]) -> None:
    """Record ``key`` and the digests of ``folders`` (atomically, written last)."""
    stamp = Path(stamp)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    body = {"key": key, "sha256": {name: tree_sha256(d) for name, d in folders.items()}}
    tmp = stamp.with_name(f".{stamp.name}.tmp")
    tmp.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    tmp.replace(stamp)
