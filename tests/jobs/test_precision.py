"""``circuitray run --verify-precision K``: a bfloat16 run checked against float32.

One real run of the tiny model in bfloat16 on a local Ray (one actor, CPU) with K=2;
the comparison on hand-built graphs (where matching nodes by index, not identity,
would fail); the sample; old run folders without the columns; bad K on the CLI.
"""

from __future__ import annotations

import math
import shutil
import sys
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import assert_refused, circuitray

from circuitray import ModelSpec, RunConfig, RunStore, run, write_prompts
from circuitray.errors import CircuitrayError, RunDirError
from circuitray.graph.precision import (
    PRECISION_COLUMNS,
    compare_kept,
    node_keys,
    sample_graph_ids,
    table_edge_keys,
    table_node_keys,
)
from circuitray.prompts import generate_ws2
from circuitray.query.engine import run_query
from circuitray.schema import EDGE_SCHEMA, NODE_SCHEMA

N_PROMPTS, K = 6, 2
# bfloat16 against float32 on the tiny model: ~0.01-0.1 relative error of the kept edge
# weights (feature-to-feature edges ~0.006; edges out of error nodes, which absorb the
# features firing in one dtype only, more). The bound leaves room for other kernels.
MAX_REL_ERROR = 0.5


# -- the comparison on hand-built graphs ---------------------------------------------------
def _nodes(rows: list[tuple]) -> pa.Table:
    """NODE_SCHEMA rows from (node_id, type, layer, pos, feature, token_id)."""
    names = ("node_id", "node_type", "layer", "pos", "feature", "token_id")
    cols = {n: [r[i] for r in rows] for i, n in enumerate(names)}
    full = {f.name: cols.get(f.name, [None] * len(rows)) for f in NODE_SCHEMA}
    full["graph_id"] = [0] * len(rows)
    return pa.table(full, schema=NODE_SCHEMA)


def _edges(rows: list[tuple]) -> pa.Table:
    """EDGE_SCHEMA rows from (dst, src, weight)."""
    full: dict[str, list] = {f.name: [None] * len(rows) for f in EDGE_SCHEMA}
    full.update(
        graph_id=[0] * len(rows),
        dst=[r[0] for r in rows],
        src=[r[1] for r in rows],
        weight=[r[2] for r in rows],
    )
    return pa.table(full, schema=EDGE_SCHEMA)


def test_compare_matches_nodes_by_identity_not_index():
    # float32: features (0, 0, 7) and (1, 1, 3), a token, two logits at the same place.
    ref_nodes = _nodes(
        [
            (0, "feature", 0, 0, 7, None),
            (1, "feature", 1, 1, 3, None),
            (5, "token", -1, 0, None, 11),
            (8, "logit", 2, 1, None, 40),
            (9, "logit", 2, 1, None, 41),
        ]
    )
    # Edges: feature(0,0,7) -> feature(1,1,3) 3.0; feature(1,1,3) -> logit 40 4.0;
    # token -> logit 41 1.0.
    ref_edges = _edges([(1, 0, 3.0), (8, 1, 4.0), (9, 5, 1.0)])
    # bfloat16: one more active feature shifts every index; logit 41 is not kept and
    # feature (1,1,3) -> logit 40 reads 4.5 where float32 has 4.0.
    test_nodes = _nodes(
        [
            (0, "feature", 0, 0, 2, None),
            (1, "feature", 0, 0, 7, None),
            (2, "feature", 1, 1, 3, None),
            (6, "token", -1, 0, None, 11),
            (9, "logit", 2, 1, None, 40),
        ]
    )
    test_edges = _edges([(2, 1, 3.0), (9, 2, 4.5), (2, 0, 0.5)])

    r_dst, r_src, r_w = table_edge_keys(ref_nodes, ref_edges)
    t_dst, t_src, _ = table_edge_keys(test_nodes, test_edges)
    # The run dtype's weights at the float32 edges (its unpruned matrix would give these;
    # token -> logit 41 has no counterpart).
    weights = np.array([3.0, 4.5, 0.0])
    found = np.array([True, True, False])
    check = compare_kept(
        table_node_keys(ref_nodes)[1],
        (r_dst, r_src, r_w),
        table_node_keys(test_nodes)[1],
        (t_dst, t_src),
        weights,
        found,
    )
    # ||(0, 0.5)|| / ||(3, 4)|| over the two matched edges.
    assert check.precision_rel_error == pytest.approx(0.1)
    # Nodes: 4 in both (features 7 and 3, token, logit 40), logit 41 and feature 2 in one.
    assert check.precision_node_jaccard == pytest.approx(4 / 6)
    assert check.precision_nodes_diff == 2
    # Edges: 2 in both, token->logit 41 and feature 2 -> feature 3 in one.
    assert check.precision_edge_jaccard == pytest.approx(2 / 4)
    assert check.precision_edges_diff == 2
    # Without the found mask the missing edge counts with weight 0.
    every = compare_kept(
        table_node_keys(ref_nodes)[1],
        (r_dst, r_src, r_w),
        table_node_keys(test_nodes)[1],
        (t_dst, t_src),
        weights,
    )
    assert every.precision_rel_error == pytest.approx(math.sqrt(0.25 + 1.0) / math.sqrt(26))


def test_identical_graphs_compare_exactly_and_keys_tell_logits_apart():
    keys = node_keys([3, 3, 0], [2, 2, 2], [1, 1, 1], [40, 41, 40])
    assert len(set(keys.tolist())) == 3
    w = np.array([0.25, -2.0])
    check = compare_kept(
        keys, (keys[:2], keys[2:].repeat(2), w), keys, (keys[:2], keys[2:].repeat(2)), w
    )
    assert check.columns() == {
        "precision_rel_error": 0.0,
        "precision_node_jaccard": 1.0,
        "precision_edge_jaccard": 1.0,
        "precision_nodes_diff": 0,
        "precision_edges_diff": 0,
    }
    with pytest.raises(ValueError, match="run-dtype weights"):
        compare_kept(keys, (keys[:2], keys[:2], w), keys, (keys[:2], keys[:2]), w[:1])


def test_sample_is_seeded_and_spreads_over_types():
    types = ["a"] * 6 + ["b"] * 3 + ["c"]
    picked = sample_graph_ids(types, 3, seed=0)
    assert picked == sample_graph_ids(types, 3, seed=0) == sorted(picked)
    assert {types[i] for i in picked} == {"a", "b", "c"}
    assert sample_graph_ids(types, 10, seed=1) == list(range(10))
    assert sample_graph_ids(types, 0, seed=0) == []
    with pytest.raises(ValueError):
        sample_graph_ids(types, 11, seed=0)


# -- a real bfloat16 run on Ray --------------------------------------------------------
@pytest.fixture(scope="module")
def checked_run(circuitray_home, tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    prompts = write_prompts(generate_ws2(n=N_PROMPTS, seed=5), root / "ws2.parquet")
    config = RunConfig(
        prompts=str(prompts),
        out=str(root / "bf16"),
        model=ModelSpec(model="tiny", dtype="bfloat16"),
        verify_precision=K,
        actors=1,
        cpus_per_actor=1,  # one torch thread: the cores are shared
        batch_size=3,
    )
    return config, run(config)


def test_k_graphs_carry_finite_small_errors(checked_run):
    config, result = checked_run
    assert (result.total, result.ok) == (N_PROMPTS, N_PROMPTS)
    graphs = RunStore(config.out).read_graphs().to_pylist()
    checked = [g for g in graphs if g["precision_node_jaccard"] is not None]
    assert len(checked) == K
    for g in graphs:  # a graph has all the columns or none
        assert (g in checked) == all(g[c] is not None for c in PRECISION_COLUMNS), g
    for g in checked:
        assert math.isfinite(g["precision_rel_error"])
        assert 0 < g["precision_rel_error"] < MAX_REL_ERROR, g
        assert 0.5 < g["precision_node_jaccard"] <= 1 and 0.5 < g["precision_edge_jaccard"] <= 1
        assert g["precision_nodes_diff"] >= 0 and g["precision_edges_diff"] >= 0

    meta = RunStore(config.out).read_meta()
    ids = sorted(g["graph_id"] for g in checked)
    assert meta["verify_precision"] == {
        "k": K,
        "seed": 0,
        "reference_dtype": "float32",
        "graph_ids": ids,
    }
    p = meta["precision"]
    assert p == result.precision
    assert (p["k"], p["checked"], p["graph_ids"], p["unchecked_graph_ids"]) == (K, K, ids, [])
    assert (p["dtype"], p["reference_dtype"]) == ("bfloat16", "float32")
    errors = [g["precision_rel_error"] for g in checked]
    assert p["rel_error"]["worst"] == pytest.approx(max(errors))
    assert p["rel_error"]["median"] == pytest.approx(float(np.median(errors)))
    assert p["edge_jaccard"]["worst"] == pytest.approx(
        min(g["precision_edge_jaccard"] for g in checked)
    )
    assert p["edges_diff"] == sum(g["precision_edges_diff"] for g in checked)

    rows = run_query("precision", [config.out]).to_pylist()
    every = [r for r in rows if r["constraint_type"] == "(all)"]
    assert len(every) == 1 and every[0]["checked"] == K and every[0]["graphs"] == N_PROMPTS
    assert every[0]["max_rel_error"] == pytest.approx(max(errors), rel=1e-6)
    per_type = [r for r in rows if r["constraint_type"] != "(all)"]
    assert sum(r["checked"] for r in per_type) == K
    assert sum(r["edges_diff"] or 0 for r in per_type) == p["edges_diff"]


def test_resume_keeps_the_sample_and_its_summary(checked_run):
    config, first = checked_run
    again = run(config)
    assert again.computed == 0 and again.precision == first.precision
    meta = RunStore(config.out).read_meta()
    assert meta["precision"] == first.precision and meta["status"] == "complete"
    # Another K is another run: refused like other parameters.
    with pytest.raises(RunDirError, match="verify_precision"):
        run(replace(config, verify_precision=K + 1))


def test_old_folders_without_the_columns_still_query(checked_run, tmp_path):
    config, _ = checked_run
    old = tmp_path / "old"
    shutil.copytree(config.out, old)
    for f in (old / "graphs").glob("*.parquet"):  # as written before the columns existed
        pq.write_table(pq.read_table(f).drop_columns(list(PRECISION_COLUMNS)), f)
    rows = run_query("precision", [str(old), config.out]).to_pylist()
    checked = {r["run"]: r["checked"] for r in rows if r["constraint_type"] == "(all)"}
    assert checked == {"old": 0, "bf16": K}
    assert run_query("constraint_stats", [str(old), config.out]).num_rows > 0


# -- bad K ---------------------------------------------------------------------------------
def test_bad_k_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    prompts = write_prompts(generate_ws2(n=3, seed=5), tmp_path / "p.parquet")
    base = ["circuitray", "run", str(prompts), "--out", str(tmp_path / "r"), "--model", "tiny"]
    # The console script: more than the prompts.
    p = circuitray(*base[1:], "--dtype", "bfloat16", "--verify-precision", "4")
    assert_refused(p, "--verify-precision 4", "more than the 3 prompts")
    # The same entry point in-process (no torch import to pay again).
    from circuitray.cli import main

    for extra, needle in (
        (["--dtype", "bfloat16", "--verify-precision", "-1"], "0 or more"),
        (["--verify-precision", "2"], "float32 already"),
    ):
        monkeypatch.setattr(sys, "argv", base + extra)
        with pytest.raises(SystemExit) as e:
            main()
        assert e.value.code == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not (tmp_path / "r" / "run.json").exists()
    with pytest.raises(CircuitrayError, match="0 or more"):
        RunConfig(prompts="p", out="o", verify_precision=True)  # type: ignore[arg-type]
