"""Timing every named query (and ``circuitray compare``) on one run folder.

1. Each named query runs once with its default parameters on a fresh DuckDB
   connection (views over the run's Parquet files, nothing cached between queries),
   timed from connect to the last Arrow row.
2. Queries that pair two runs (``compare_runs``) and :func:`circuitray.query.compare
   .compare_runs` get the run twice (it is paired with itself: every prompt pairs,
   twice the rows are read); :func:`circuitray.query.compare.compare_groups` gets it once.
3. Queries over intervention folders (the ``interventions`` view) are left out: a run
   folder has none; so are queries over checkpoint series (they read only runs with
   a ``step``, :data:`SERIES_ONLY`): a single run has none.
4. The result is one :class:`QueryTiming` per query, in library order.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

__all__ = ["QueryTiming", "time_queries", "timed_queries"]

PAIRED_QUERIES = {"compare_runs"}
INTERVENTIONS_VIEW = re.compile(r"\binterventions\b", re.I)
SERIES_ONLY = re.compile(r"\bstep\s+IS\s+NOT\s+NULL\b", re.I)


def timed_queries() -> list:
    """The named queries this benchmark times (see module docstring, step 3)."""
    from circuitray.query.engine import list_queries

    return [
        q
        for q in list_queries()
        if not INTERVENTIONS_VIEW.search(q.sql) and not SERIES_ONLY.search(q.sql)
    ]


@dataclass
class QueryTiming:
    """One timed query.

    Attributes:
        name: Query name (``compare:runs`` / ``compare:groups`` for the compare API).
        runs: How many run folders it read (the same folder given twice for pairs).
        seconds: Wall time, connection to result.
        rows: Rows of the result.
    """

    name: str
    runs: int
    seconds: float
    rows: int


def time_queries(run_dir: str, *, names: list[str] | None = None) -> list[QueryTiming]:
    """Time the named queries ``names`` (all by default) and the compare API."""
    from circuitray.query.compare import CompareConfig, compare_groups, compare_runs
    from circuitray.query.engine import run_query

    timings = []
    for q in timed_queries():
        if names and q.name not in names:
            continue
        dirs = [run_dir, run_dir] if q.name in PAIRED_QUERIES else [run_dir]
        t0 = time.perf_counter()
        table = run_query(q.name, dirs)
        timings.append(QueryTiming(q.name, len(dirs), time.perf_counter() - t0, table.num_rows))
    if not names or "compare" in names:
        config = CompareConfig()
        t0 = time.perf_counter()
        table = compare_runs(run_dir, run_dir, config=config)
        timings.append(QueryTiming("compare:runs", 2, time.perf_counter() - t0, table.num_rows))
        t0 = time.perf_counter()
        table = compare_groups(run_dir, config=config)
        timings.append(QueryTiming("compare:groups", 1, time.perf_counter() - t0, table.num_rows))
    return timings
