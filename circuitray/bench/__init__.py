"""Benchmarks: every measurement behind ``make bench``, ``make bench-queries`` and the
GPU benchmark, importable and run as ``circuitray bench ...``.

- :mod:`circuitray.bench.suite`: ``make bench`` (``circuitray bench suite``), the
  attribution figures of :mod:`circuitray.bench.attribution` (circuitray against a
  plain loop) and the pruning comparison of :mod:`circuitray.bench.pruning`.
- :mod:`circuitray.bench.gpu`: graphs per hour on one GPU (``circuitray bench gpu``).
- :mod:`circuitray.bench.synthetic` and :mod:`circuitray.bench.queries`: synthetic
  runs at scale and every named query timed on them (``make bench-queries``).
- :mod:`circuitray.bench.processes`: ``circuitray query`` / ``circuitray sql`` as whole
  processes next to a bare DuckDB process (``circuitray bench processes``).
- :mod:`circuitray.bench.environment`: what every benchmark records of the machine
  (commit, versions, CPU, GPU) and its memory probes.

Importing the package loads neither torch nor DuckDB (the modules import them in the
functions that use them), so a benchmark's child process can use its helpers without
changing what it measures.
"""

from circuitray.bench.attribution import (
    AttributionBenchConfig,
    Workload,
    bytes_per_edge,
    circuitray_run,
    flatten_rate,
    peak_rss,
    plain_loop,
    run_attribution_bench,
)
from circuitray.bench.queries import QueryTiming, time_queries
from circuitray.bench.synthetic import SyntheticSpec, make_synthetic_run

__all__ = [
    "AttributionBenchConfig",
    "QueryTiming",
    "SyntheticSpec",
    "Workload",
    "bytes_per_edge",
    "circuitray_run",
    "flatten_rate",
    "make_synthetic_run",
    "peak_rss",
    "plain_loop",
    "run_attribution_bench",
    "time_queries",
]
