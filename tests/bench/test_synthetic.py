"""Synthetic run folders: the real schema, exact sizes, transcoder-graph structure, and
``circuitray bench make-edges``."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from conftest import SYNTHETIC_SPEC as SPEC
from conftest import assert_one_line_error, circuitray

from circuitray.bench import SyntheticSpec, make_synthetic_run
from circuitray.errors import CircuitrayError
from circuitray.prompts.ws2 import CONSTRAINTS
from circuitray.query.engine import run_sql
from circuitray.schema import EDGE_SCHEMA, GRAPH_SCHEMA, NODE_SCHEMA


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


def test_make_edges_cli(tmp_path):
    out = tmp_path / "cli"
    args = ["bench", "make-edges", "--edges", 3000, "--edges-per-graph", 300, "--out", out]
    p = circuitray(*args)
    assert p.returncode == 0, p.stderr
    assert "3,000 edges" in " ".join(p.stdout.split())
    p = circuitray(*args)  # the same spec again: nothing to do
    assert p.returncode == 0 and "already holds" in p.stdout, p.stdout
    assert_one_line_error(circuitray(*args[:-1], tmp_path / "cli", "--seed", 3), "already a run")
