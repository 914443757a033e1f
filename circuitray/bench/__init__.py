"""Benchmarks: synthetic runs at scale, timings of the query library, and attribution
with circuitray against a plain loop (``make bench``)."""

from circuitray.bench.attribution import (
    AttributionBenchConfig,
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
    "bytes_per_edge",
    "circuitray_run",
    "flatten_rate",
    "make_synthetic_run",
    "peak_rss",
    "plain_loop",
    "run_attribution_bench",
    "time_queries",
]
