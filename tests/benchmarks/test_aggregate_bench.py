"""``python -m benchmarks aggregate`` (``make bench-aggregate``): circuitray aggregate in
a fresh process on a small synthetic run, its graphs per hour and its own peak memory,
the goal checked."""

from __future__ import annotations

import json

from conftest import benchmarks, circuitray


def test_bench_aggregate_times_a_synthetic_run(tmp_path):
    run = tmp_path / "synthetic"
    p = circuitray("bench", "make-edges", "--edges", "200000", "--out", run)
    assert p.returncode == 0, p.stderr
    out = tmp_path / "aggregate.json"
    # A goal no run meets: the figures are written, the table says NO, the exit is 1.
    p = benchmarks("aggregate", run, "--json-out", out, "--goal", "1e15")
    assert p.returncode == 1 and "NO" in p.stdout, (p.returncode, p.stdout, p.stderr)
    record = json.loads(out.read_text())
    (timing,) = record["timings"]
    assert timing["edges"] == 200_000 and 30 < timing["graphs"] < 50 and timing["groups"] == 3
    assert 0 < timing["seconds"] < 120 and timing["graphs_per_hour"] > 0
    assert 50 < timing["peak_rss_mb"] < 4096, timing  # the child's own, not this process's
    assert record["memory_limit"] == "1GB" and record["min_share"] == 0.5
