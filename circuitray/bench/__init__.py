"""Benchmarks: synthetic runs at scale and timings of the query library."""

from circuitray.bench.queries import QueryTiming, time_queries
from circuitray.bench.synthetic import SyntheticSpec, make_synthetic_run

__all__ = ["QueryTiming", "SyntheticSpec", "make_synthetic_run", "time_queries"]
