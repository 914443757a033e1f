"""pipelines/ws2_base_vs_tuned.py runs one corpus on base and tuned and prints both."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]


def test_base_vs_tuned_pipeline(organism_runs):
    out = organism_runs.base.parent
    lines = [ln for ln in organism_runs.stdout.splitlines() if "│" in ln]
    rows = [[c.strip() for c in ln.split("│")] for ln in lines]
    pairs = {(r[0], r[1]) for r in rows}
    for run in ("base", "tuned"):
        for ctype in ("simple_mapping", "spatial_relationship", "antonym"):
            assert (run, ctype) in pairs, organism_runs.stdout
    graphs = {run: pq.read_table(out / run / "graphs").to_pylist() for run in ("base", "tuned")}
    assert len(graphs["base"]) == len(graphs["tuned"]) == 12
    # Both models' graphs explain the same output: the answer, one logit node each.
    for run in ("base", "tuned"):
        assert {(g["target_mode"], g["n_logits"]) for g in graphs[run]} == {("answer", 1)}
    answer = {r: {g["prompt_id"]: g["target_token_id"] for g in graphs[r]} for r in graphs}
    assert answer["base"] == answer["tuned"] and None not in answer["base"].values()
    # The same prompts ran on both checkpoints.
    assert sorted(g["prompt_id"] for g in graphs["base"]) == sorted(
        g["prompt_id"] for g in graphs["tuned"]
    )
    tuned_acc = sum(g["top_token"] == g["target_token"] for g in graphs["tuned"]) / 12
    base_acc = sum(g["top_token"] == g["target_token"] for g in graphs["base"]) / 12
    assert tuned_acc > base_acc, (tuned_acc, base_acc)


def test_compare_runs_base_vs_tuned_matches_python(organism_runs):
    from statistics import mean

    from circuitray import run_query

    out = organism_runs.base.parent
    graphs = {
        r: {g["prompt_id"]: g for g in pq.read_table(out / r / "graphs").to_pylist()}
        for r in ("base", "tuned")
    }
    feats = {}
    for r in ("base", "tuned"):
        by_graph: dict = {}
        for n in pq.read_table(out / r / "nodes").to_pylist():
            if n["node_type"] == "feature":
                by_graph.setdefault(n["graph_id"], set()).add((n["layer"], n["feature"]))
        feats[r] = by_graph
    rows = {
        x["constraint_type"]: x
        for x in run_query("compare_runs", [str(out / "base"), str(out / "tuned")]).to_pylist()
    }
    for ctype, row in rows.items():
        ids = [p for p, g in graphs["base"].items() if g["constraint_type"] == ctype]
        d_prob = [graphs["tuned"][p]["target_prob"] - graphs["base"][p]["target_prob"] for p in ids]
        gained, lost = [], []
        for p in ids:
            fb = feats["base"].get(graphs["base"][p]["graph_id"], set())
            fc = feats["tuned"].get(graphs["tuned"][p]["graph_id"], set())
            gained.append(len(fc - fb))
            lost.append(len(fb - fc))
        assert row["pairs"] == len(ids)
        assert row["mean_d_target_prob"] == pytest.approx(mean(d_prob), abs=1e-3)
        assert row["mean_features_gained"] == pytest.approx(mean(gained), abs=0.01)
        assert row["mean_features_lost"] == pytest.approx(mean(lost), abs=0.01)
        # Fine-tuning on the constraints raises the target's probability.
        assert row["mean_d_target_prob"] > 0.3, row
