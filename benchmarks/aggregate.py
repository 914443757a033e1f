"""Aggregation at scale: ``circuitray aggregate`` on synthetic runs of growing size.

1. For each run folder (synthetic runs in the real schema, :mod:`.synthetic`), run
   ``circuitray aggregate RUN --by constraint_type`` as a fresh process with the given
   minimum share and DuckDB memory limit, writing into a temporary folder.
2. Take its wall time and its own peak resident memory (``os.wait4``: the child's
   rusage, not the largest of every child so far).
3. Report graphs and edges per run, seconds, graphs per hour and peak memory, so that
   runs ten times apart show whether time grows with the graphs and memory does not.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass

from circuitray.errors import CircuitrayError

__all__ = ["AggregateTiming", "time_aggregate"]


@dataclass
class AggregateTiming:
    """One aggregation of one run folder.

    Attributes:
        run_dir: The run folder aggregated.
        graphs: Its graphs.
        edges: Its edges.
        seconds: Wall time of the ``circuitray aggregate`` process.
        graphs_per_hour: ``graphs / seconds * 3600``.
        peak_rss_mb: The process's peak resident memory, MiB.
        groups: Groups (constraint types) aggregated.
    """

    run_dir: str
    graphs: int
    edges: int
    seconds: float
    graphs_per_hour: float
    peak_rss_mb: float
    groups: int


def time_aggregate(
    run_dir: str, *, min_share: float = 0.5, memory_limit: str = "1GB"
) -> AggregateTiming:
    """Aggregate ``run_dir`` in a fresh process and time it (module docstring)."""
    import json

    from circuitray.bench.processes import circuitray_command, run_counts

    graphs, edges = run_counts(run_dir)
    with tempfile.TemporaryDirectory(prefix="circuitray-bench-aggregate-") as out:
        cmd = [
            *circuitray_command(), "aggregate", run_dir, "--out", out,
            "--min-share", str(min_share), "--memory-limit", memory_limit, "--json",
        ]  # fmt: skip
        # The child's output goes to files, not pipes: wait4 (its own rusage) reaps it
        # before anything reads, and a full pipe would block it forever.
        with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=so, stderr=se, text=True)
            _, status, usage = os.wait4(proc.pid, 0)
            seconds = time.perf_counter() - t0
            proc.returncode = os.waitstatus_to_exitcode(status)
            so.seek(0)
            se.seek(0)
            stdout, stderr = so.read(), se.read()
        if proc.returncode != 0:
            raise CircuitrayError(f"circuitray aggregate {run_dir}: {stderr.strip()[-2000:]}")
    groups = len(json.loads(stdout)["groups"])
    return AggregateTiming(
        run_dir=str(run_dir),
        graphs=graphs,
        edges=edges,
        seconds=seconds,
        graphs_per_hour=graphs / seconds * 3600,
        peak_rss_mb=usage.ru_maxrss / 1024,
        groups=groups,
    )
