"""Where a benchmark ran and how much memory it took: the helpers every benchmark shares.

1. :func:`git_commit` is the checkout's short commit (None outside a git checkout).
2. :func:`machine_info` describes the machine for ``python -m benchmarks suite`` (CPU
   model, torch's CPU capability, device, load average); :func:`gpu_environment`
   describes it for ``circuitray bench gpu`` (GPU name and memory, CUDA and cuDNN).
   Both take the common part from :func:`host_info` and the package versions from
   :func:`circuitray.machine.package_versions`; torch is imported inside them only.
3. Memory probes read Linux's ``/proc``: :func:`proc_status_kb` one field of
   ``/proc/<pid>/status`` (:func:`peak_rss_kb` its high-water mark ``VmHWM``,
   which, unlike ``ru_maxrss``, is not carried over fork and exec from a large
   parent), :func:`rss_bytes` the resident set of this process now,
   :func:`mem_available_bytes` the kernel's ``MemAvailable``, and :class:`RssPeak`
   the peak resident set above its level at entry, sampled every 5 ms.

Stdlib only at import time, so benchmark child processes can import it cheaply.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

from circuitray.machine import cpu_model, package_versions

__all__ = [
    "RESULTS_DIR",
    "SUITE_PACKAGES",
    "GPU_PACKAGES",
    "RssPeak",
    "git_commit",
    "gpu_environment",
    "host_info",
    "machine_info",
    "mem_available_bytes",
    "peak_rss_kb",
    "proc_status_kb",
    "rss_bytes",
]

# The checkout's bench/results (gitignored), wherever the command runs from.
RESULTS_DIR = Path(__file__).resolve().parents[2] / "bench" / "results"

# Distributions whose versions each benchmark records.
SUITE_PACKAGES = ("circuitray", "circuit-tracer", "torch", "ray", "pyarrow")
GPU_PACKAGES = (
    "circuitray",
    "circuit-tracer",
    "transformers",
    "nnsight",
    "huggingface-hub",
    "tokenizers",
)


def git_commit(*, cwd: str | Path | None = None) -> str | None:
    """Short commit of the git checkout holding ``cwd`` (this package by default)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=cwd or Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def host_info() -> dict[str, Any]:
    """Python, platform, CPU count and physical memory (GiB) of this machine."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def machine_info() -> dict[str, Any]:
    """Where ``python -m benchmarks suite`` ran: CPUs, platform, versions, device, load."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "host": socket.gethostname(),
        **host_info(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "versions": package_versions(SUITE_PACKAGES),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cuda_devices": torch.cuda.device_count() if cuda else 0,
        "loadavg": list(os.getloadavg()),
    }


def gpu_environment(device: str) -> dict[str, Any]:
    """Where ``circuitray bench gpu`` ran on ``device`` (cuda or cpu): torch, CUDA,
    cuDNN, the GPU's name, memory and capability, library versions, commit."""
    import torch

    cudnn = torch.backends.cudnn
    env: dict[str, Any] = {
        **host_info(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": cudnn.version() if cudnn.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "gpu_name": None,
        "gpu_memory_gb": None,
        "git_commit": git_commit(),
        "versions": package_versions(GPU_PACKAGES),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env["gpu_name"] = torch.cuda.get_device_name(0)
        env["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
        env["gpu_capability"] = f"{props.major}.{props.minor}"
        env["gpu_count"] = torch.cuda.device_count()
    return env


# -- memory probes (Linux /proc) ------------------------------------------------------
def proc_status_kb(key: str, *, pid: int | str = "self") -> int | None:
    """Field ``key`` (e.g. ``VmHWM``, ``VmSize``) of ``/proc/<pid>/status`` in KiB;
    None where the process or the field cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_kb(pid: int | str = "self") -> int | None:
    """Peak resident set (``VmHWM``) of a local process in KiB; None if unreadable."""
    return proc_status_kb("VmHWM", pid=pid)


def rss_bytes() -> int:
    """Resident set of this process now, in bytes (``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def mem_available_bytes() -> int:
    """The kernel's estimate of memory available to new work (``MemAvailable``)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


class RssPeak:
    """Peak resident memory above the level at entry, sampled every 5 ms::

    with RssPeak() as rss:
        work()
    rss.extra_mb
    """

    def __init__(self) -> None:
        self.base = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(0.005)

    def __enter__(self) -> RssPeak:
        self.base = self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def extra_mb(self) -> float:
        """Peak above the level at entry, in MiB."""
        return (self.peak - self.base) / 2**20
