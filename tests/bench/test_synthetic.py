"""Synthetic run folders: the real schema, exact sizes, transcoder-graph structure, and
the ``circuitray bench`` commands over them."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from conftest import assert_one_line_error, circuitray

from circuitray.bench import SyntheticSpec, make_synthetic_run, time_queries
from circuitray.bench.queries import timed_queries
from circuitray.errors import CircuitrayError
from circuitray.prompts.ws2 import CONSTRAINTS
from circuitray.query.engine import list_queries, run_query, run_sql
from circuitray.schema import EDGE_SCHEMA, GRAPH_SCHEMA, NODE_SCHEMA

SPEC = SyntheticSpec(edges=20_011, edges_per_graph=500, nodes_per_graph=120, n_layers=6)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "syn"
    counts = make_synthetic_run(str(out), SPEC)
    return out, counts


def _table(out, name):
    return pq.read_table(out / name)


def test_schema_and_counts(synthetic):
    out, counts = synthetic
    schemas = {"graphs": GRAPH_SCHEMA, "nodes": NODE_SCHEMA, "edges": EDGE_SCHEMA}
    for name, schema in schemas.items():
        assert _table(out, name).schema.equals(schema), name
    graphs, edges = _table(out, "graphs"), _table(out, "edges")
    assert edges.num_rows == counts["edges"] == SPEC.edges
    assert graphs.num_rows == counts["graphs"]
    per_graph = edges.group_by("graph_id").aggregate([("dst", "count")]).to_pylist()
    stored = {g["graph_id"]: g["n_kept_edges"] for g in graphs.to_pylist()}
    assert {r["graph_id"]: r["dst_count"] for r in per_graph} == stored
    # Sizes vary around the mean as real graphs do.
    sizes = list(stored.values())[:-1]  # the last graph takes the remainder
    assert min(sizes) >= 0.5 * SPEC.edges_per_graph and max(sizes) <= 1.5 * SPEC.edges_per_graph
    assert max(sizes) - min(sizes) > 0.3 * SPEC.edges_per_graph
    assert {g["constraint_type"] for g in graphs.to_pylist()} == set(CONSTRAINTS)


def test_graph_structure(synthetic):
    out, _ = synthetic
    (bad_order, dupes, dangling, token_dst, wrong_layer) = (
        run_sql(
            [str(out)],
            """
        SELECT count(*) FILTER (WHERE e.src_layer >= e.dst_layer),
               count(*) - count(DISTINCT (e.graph_id, e.dst, e.src)),
               count(*) FILTER (WHERE s.node_id IS NULL OR d.node_id IS NULL),
               count(*) FILTER (WHERE e.dst_type = 'token'),
               count(*) FILTER (WHERE s.layer <> e.src_layer OR d.node_type <> e.dst_type)
        FROM edges e
        LEFT JOIN nodes s ON s.graph_id = e.graph_id AND s.node_id = e.src
        LEFT JOIN nodes d ON d.graph_id = e.graph_id AND d.node_id = e.dst
        """,
        )
        .to_pylist()[0]
        .values()
    )
    assert (bad_order, dupes, dangling, token_dst, wrong_layer) == (0, 0, 0, 0, 0)
    nodes = _table(out, "nodes").to_pylist()
    layers = {n["node_type"]: set() for n in nodes}
    for n in nodes:
        layers[n["node_type"]].add(n["layer"])
    assert layers["token"] == {-1} and layers["logit"] == {SPEC.n_layers}
    assert layers["feature"] <= set(range(SPEC.n_layers))
    assert all(0 <= n["feature"] < SPEC.d_transcoder for n in nodes if n["node_type"] == "feature")
    # Features recur across graphs of a type (a Zipf-like pool), as top_features needs.
    rows = run_sql(
        [str(out)],
        "SELECT max(c) FROM (SELECT layer, feature, count(DISTINCT graph_id) c FROM nodes "
        "WHERE node_type = 'feature' GROUP BY ALL)",
    ).to_pylist()
    assert next(iter(rows[0].values())) > 5


def test_same_seed_same_tables(synthetic, tmp_path):
    out, _ = synthetic
    again = tmp_path / "again"
    make_synthetic_run(str(again), SPEC)
    for name in ("graphs", "nodes", "edges"):
        assert _table(out, name).equals(_table(again, name)), name
    other = tmp_path / "other"
    make_synthetic_run(str(other), SyntheticSpec(**{**SPEC.__dict__, "seed": 1}))
    assert not _table(out, "edges").equals(_table(other, "edges"))


def test_impossible_density_is_refused(tmp_path):
    with pytest.raises(CircuitrayError, match="edges_per_graph"):
        make_synthetic_run(
            str(tmp_path / "x"), SyntheticSpec(edges_per_graph=10_000, nodes_per_graph=50)
        )
    assert not (tmp_path / "x").exists()


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


def test_bench_cli(tmp_path):
    out = tmp_path / "cli"
    args = ["bench", "make-edges", "--edges", 3000, "--edges-per-graph", 300, "--out", out]
    p = circuitray(*args)
    assert p.returncode == 0, p.stderr
    assert "3,000 edges" in " ".join(p.stdout.split())
    p = circuitray(*args)  # the same spec again: nothing to do
    assert p.returncode == 0 and "already holds" in p.stdout, p.stdout
    assert_one_line_error(circuitray(*args[:-1], tmp_path / "cli", "--seed", 3), "already a run")
    record = tmp_path / "results" / "queries.json"
    p = circuitray("bench", "queries", out, "--json-out", record)
    assert p.returncode == 0, p.stderr
    data = json.loads(record.read_text())
    assert data["edges"] == 3000 and data["cpu_cores"] >= 1
    run_queries = {q.name for q in timed_queries()}
    assert "constraint_stats" in run_queries and "learning_curves" not in run_queries
    assert {t["name"] for t in data["timings"]} >= run_queries
    # A goal no query can meet fails the benchmark.
    p = circuitray("bench", "queries", out, "--query", "paths", "--limit-s", "0")
    assert p.returncode == 1 and "NO" in p.stdout
