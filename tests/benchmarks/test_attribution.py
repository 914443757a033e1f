"""The attribution benchmark (circuitray against a plain loop) on the tiny model: each
measurement on a few prompts, the pruning hook, and ``python -m benchmarks suite --quick``
(``make bench``)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import benchmarks

from benchmarks.attribution import (
    GOALS,
    Workload,
    bytes_per_edge,
    circuitray_run,
    flatten_rate,
    plain_loop,
)
from circuitray.prompts.files import write_prompts
from circuitray.prompts.ws2 import generate_ws2

N_PROMPTS = 5
BATCH = 2
TINY = Workload(model="tiny", torch_threads=1)

FIGURES = {
    "overhead_ratio",
    "circuitray_per_graph_s",
    "plain_per_graph_s",
    "ray_start_s",
    "plain_load_s",
    "dispatch_s",
    "dispatch_share",
    "graphs_per_min",
    "graphs_per_min_e2e",
    "flatten_edges_per_s",
    "flatten_write_share",
    "bytes_per_edge",
    "edge_bytes_per_edge",
    "plain_bytes_per_edge",
    "actor_peak_rss_mb",
    "bare_peak_rss_mb",
    "rss_ratio",
}


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    rows = generate_ws2(n=N_PROMPTS, seed=3)
    return rows, write_prompts(rows, tmp_path_factory.mktemp("bench_prompts") / "ws2.parquet")


@pytest.fixture(scope="module")
def tiny_run(prompts, tmp_path_factory):
    """The prompts through circuitray: 1 actor, 1 torch thread, batches of 2."""
    _, path = prompts
    out = tmp_path_factory.mktemp("bench_run") / "run"
    return circuitray_run(path, out, workload=TINY, actors=1, batch_size=BATCH)


def _edge_rows(folder: Path) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in folder.glob("*.parquet"))


def test_circuitray_run_timings_and_rss(tiny_run):
    r = tiny_run
    assert r.computed == N_PROMPTS and r.actors == 1 and r.torch_threads == [1]
    assert 0 < r.ray_start_s < r.elapsed_s
    assert r.per_graph_s > 0 and r.compact_s > 0
    assert r.per_graph_s == pytest.approx((r.elapsed_s - r.ray_start_s + r.compact_s) / N_PROMPTS)
    # The actor's own attribute_prompt time is part of the per-graph time.
    assert 0 < r.mean_attribute_s < r.mean_total_s < r.per_graph_s
    assert r.n_edges == _edge_rows(Path(r.run_dir) / "edges") > 0
    # One AttributionWorker process, big enough to hold torch and the model.
    assert len(r.peak_rss_mb) == 1 and list(r.peak_rss_mb.values())[0] > 150


def test_bytes_per_edge_matches_file_sizes(tiny_run):
    run = Path(tiny_run.run_dir)
    files = list(run.rglob("*.parquet"))
    assert {f.parent.name for f in files} == {"graphs", "nodes", "edges"}
    total = sum(f.stat().st_size for f in files)
    edge_bytes = sum(f.stat().st_size for f in (run / "edges").glob("*.parquet"))
    n_edges = pq.read_table(run / "edges").num_rows

    s = bytes_per_edge(run)
    assert s.n_edges == n_edges
    assert s.total_bytes == total and s.table_bytes["edges"] == edge_bytes
    assert s.bytes_per_edge == pytest.approx(total / n_edges)
    assert s.edge_bytes_per_edge == pytest.approx(edge_bytes / n_edges)


def test_plain_loop_keeps_the_edges_circuitray_keeps(prompts, tiny_run, tmp_path):
    _, path = prompts
    r = plain_loop(path, tmp_path / "plain", workload=TINY, batch_size=BATCH)
    files = sorted((tmp_path / "plain").glob("*.parquet"))
    assert r.files == len(files) == -(-N_PROMPTS // BATCH)
    table = pq.read_table(tmp_path / "plain")
    assert table.column_names == ["graph_id", "dst", "src", "weight"]
    plain_counts = Counter(table["graph_id"].to_pylist())
    assert [plain_counts[g] for g in range(N_PROMPTS)] == r.edges_per_graph

    graphs = pq.read_table(Path(tiny_run.run_dir) / "graphs").to_pylist()
    ours = {g["graph_id"]: g["n_kept_edges"] for g in graphs}
    assert ours == dict(enumerate(r.edges_per_graph))
    # Not only as many edges: the same ones (same attribution, same pruning masks).
    theirs = pq.read_table(Path(tiny_run.run_dir) / "edges", columns=["graph_id", "dst", "src"])
    key = ["graph_id", "dst", "src"]
    assert (
        table.select(key)
        .sort_by([(k, "ascending") for k in key])
        .equals(theirs.sort_by([(k, "ascending") for k in key]))
    )
    assert r.per_graph_s > 0 and r.attribute_s > 0 and r.prune_s > 0 and r.write_s > 0
    assert r.elapsed_s >= r.attribute_s + r.prune_s + r.write_s


def test_flatten_rate(prompts, tmp_path):
    rows, _ = prompts
    f = flatten_rate(rows[:3], tmp_path / "flat", workload=TINY)
    assert f.n_graphs == 3 and f.n_edges > 0
    assert f.attribute_s > 0 and f.flatten_s > 0 and f.write_s > 0
    assert f.edges_per_s == pytest.approx(f.n_edges / f.flatten_s)
    assert 0 < f.share < 1
    assert f.share == pytest.approx((f.flatten_s + f.write_s) / f.attribute_s)
    # The pruning pass inside flatten_graph was timed, once per graph, within it.
    assert f.calls.get("prune") == 3
    assert f.prune_s is not None and f.arrow_s is not None
    assert 0 < f.prune_s < f.flatten_s and f.arrow_s > 0
    # What it wrote is a readable run part with every edge.
    assert bytes_per_edge(tmp_path / "flat").n_edges == f.n_edges


def test_suite_quick_writes_every_figure(tmp_path):
    results = tmp_path / "results"
    proc = benchmarks(
        "suite",
        "--quick",
        "--model",
        "tiny",
        "--prompts",
        "4",
        "--no-pruning",
        "--no-real-shape",
        "--no-real-models",
        "--results-dir",
        results,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    stamped = list(results.glob("bench-*.json"))
    assert len(stamped) == 1
    assert stamped[0].read_text() == (results / "latest.json").read_text()
    out = json.loads(stamped[0].read_text())

    figures = out["figures"]
    assert set(figures) == FIGURES
    for name in FIGURES - {"graphs_per_min", "graphs_per_min_e2e"}:
        assert isinstance(figures[name], float) and figures[name] > 0, name
    assert set(figures["graphs_per_min"]) == set(figures["graphs_per_min_e2e"]) == {"1", "2"}
    assert out["scaling"]["2"]["actors_used"] == 2
    assert set(out["goals"]) == set(GOALS)
    for name, goal in out["goals"].items():
        assert goal["value"] == figures[name] and isinstance(goal["met"], bool)
    assert 0 < figures["flatten_write_share"] < 1
    assert out["config"]["model"] == "tiny" and out["config"]["n_prompts"] == 4
    assert {"cpu_count", "platform", "torch", "device"} <= set(out["machine"])
    assert out["pruning"] == {"skipped": "--no-pruning"}
    assert out["real_shape"] == {"skipped": "--no-real-shape"}
    assert out["real_models"] == {"skipped": "--no-real-models"}
    for section in ("overhead", "scaling", "flatten", "storage", "memory"):
        assert section in out
    for text in ("overhead ratio", "flatten + write", "bytes per edge", "peak RSS"):
        assert text in proc.stdout, text
