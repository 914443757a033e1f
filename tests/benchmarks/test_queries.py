"""``python -m benchmarks queries`` (``make bench-queries``): every named query and
``circuitray compare`` timed on a synthetic run folder."""

from __future__ import annotations

import json

from conftest import benchmarks, circuitray

from benchmarks.queries import time_queries, timed_queries
from circuitray.query.engine import list_queries, run_query


def test_time_queries_covers_the_library(synthetic):
    out, _ = synthetic
    timings = time_queries(str(out))
    names = [t.name for t in timings]
    intervention_only = {"intervention_effects", "intervention_folders", "intervention_results"}
    run_queries = [q.name for q in list_queries() if q.name not in intervention_only]
    series_only = {"learning_curves", "convergence", "feature_dynamics", "trajectory"}
    assert [q.name for q in timed_queries()] == [q for q in run_queries if q not in series_only]
    assert names == [q for q in run_queries if q not in series_only] + [
        "compare:runs",
        "compare:groups",
    ]
    # Random synthetic edges rarely recur across graphs: at the consensus queries'
    # default share (0.5) no edge is shared; every edge is at share 0.
    sparse = {"consensus_edges", "consensus_diff"}
    assert all(t.seconds > 0 and (t.rows > 0 or t.name in sparse) for t in timings), timings
    for name in sparse:
        assert run_query(name, [str(out)], params={"min_share": "0"}).num_rows > 0, name
    assert {t.name: t.runs for t in timings}["compare_runs"] == 2


def test_bench_queries_cli(tmp_path):
    out = tmp_path / "cli"
    p = circuitray("bench", "make-edges", "--edges", 3000, "--edges-per-graph", 300, "--out", out)
    assert p.returncode == 0, p.stderr
    record = tmp_path / "results" / "queries.json"
    p = benchmarks("queries", out, "--json-out", record)
    assert p.returncode == 0, p.stderr
    data = json.loads(record.read_text())
    assert data["edges"] == 3000 and data["cpu_cores"] >= 1
    run_queries = {q.name for q in timed_queries()}
    assert "constraint_stats" in run_queries and "learning_curves" not in run_queries
    assert {t["name"] for t in data["timings"]} >= run_queries
    # A goal no query can meet fails the benchmark.
    p = benchmarks("queries", out, "--query", "paths", "--limit-s", "0")
    assert p.returncode == 1 and "NO" in p.stdout
