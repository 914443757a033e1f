"""circuitray.query.compare and ``circuitray compare``, checked against pandas over the Parquet.

Every expected value is recomputed here from the run folders' ``graphs/*.parquet`` and
``nodes/*.parquet`` files (no DuckDB): per-graph metrics, prompt pairs, group means,
Hedges' g, the error nodes' share of influence and the Holm adjustment. The bootstrap
itself is checked by its properties: seeded, the CI holds the difference, and its width
is close to the normal approximation.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import statistics
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import N_RAY_PROMPTS, assert_refused, circuitray

from circuitray.errors import CircuitrayError
from circuitray.prompts.ws2 import CONSTRAINTS
from circuitray.query.compare import (
    METRICS,
    CompareConfig,
    _per_graph,
    compare_groups,
    compare_runs,
)

TOL = 1e-9


# -- the expected values, from the Parquet files ------------------------------------------
def read_parts(run: Path, table: str) -> pd.DataFrame:
    files = sorted((Path(run) / table).glob("*.parquet"))
    assert files, f"no parts in {run}/{table}"
    return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)


def error_shares(run: Path) -> pd.Series:
    """graph_id -> error influence / (feature + error + token influence) over kept nodes."""
    nodes = read_parts(run, "nodes")
    nodes = nodes[nodes.node_type.isin(["feature", "error", "token"])]
    influence = nodes.influence.astype("float64")
    total = influence.groupby(nodes.graph_id).sum()
    error = influence[nodes.node_type == "error"].groupby(nodes.graph_id).sum()
    return error.reindex(total.index, fill_value=0.0) / total.where(total != 0)


def expected_metrics(run: Path) -> pd.DataFrame:
    """One row per ok graph: graph_id, prompt_id, constraint_type and every metric."""
    g = read_parts(run, "graphs")
    g = g[g.status == "ok"].reset_index(drop=True)
    top1 = (g.top_token == g.target_token).astype("float64").where(g.target_token.notna())
    out = pd.DataFrame(
        {
            "graph_id": g.graph_id,
            "prompt_id": g.prompt_id,
            "constraint_type": g.constraint_type.fillna("(none)"),
            "target_prob": g.target_prob.astype("float64"),
            "top1": top1,
            "replacement_score": g.replacement_score.astype("float64"),
            "completeness_score": g.completeness_score.astype("float64"),
            "n_kept_nodes": g.n_kept_nodes.astype("float64"),
            "n_kept_edges": g.n_kept_edges.astype("float64"),
            "n_kept_features": g.n_kept_features.astype("float64"),
        }
    )
    out["error_influence_share"] = out.graph_id.map(error_shares(run))
    assert set(out.columns) >= set(METRICS)
    return out


def hedges_g(a: list[float], b: list[float]) -> float | None:
    """Hedges' g of b - a: pooled SD (ddof=1), correction 1 - 3 / (4 (na + nb) - 9)."""
    na, nb = len(a), len(b)
    pooled = math.sqrt(
        ((na - 1) * statistics.variance(a) + (nb - 1) * statistics.variance(b)) / (na + nb - 2)
    )
    diff = statistics.fmean(b) - statistics.fmean(a)
    if pooled == 0:
        return 0.0 if diff == 0 else None
    return diff / pooled * (1 - 3 / (4 * (na + nb) - 9))


def holm(p: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values: step-down, monotone, capped at 1."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def rows_by(table, *keys: str) -> dict[tuple, dict]:
    rows = table.to_pylist()
    out = {tuple(r[k] for k in keys): r for r in rows}
    assert len(out) == len(rows), "duplicate rows"
    return out


# -- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def organism_table(organism_runs):
    """compare_runs(base, tuned) with the default config (all metrics, seed 0)."""
    return compare_runs(str(organism_runs.base), str(organism_runs.tuned))


@pytest.fixture(scope="module")
def groups_table(ray_run):
    """compare_groups over the shared run, by constraint type (the default)."""
    return compare_groups(str(ray_run.out))


# -- two runs -------------------------------------------------------------------------------
def test_identical_runs_show_no_difference(ray_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(ray_run.out, copy)
    table = compare_runs(str(ray_run.out), str(copy))
    assert table.num_rows == (1 + len(CONSTRAINTS)) * len(METRICS)
    rows = table.to_pylist()
    assert {r["group"] for r in rows} == {"(all)", *CONSTRAINTS}
    assert {r["metric"] for r in rows} == set(METRICS)
    per_type = N_RAY_PROMPTS // len(CONSTRAINTS)
    for r in rows:
        assert r["n"] == (N_RAY_PROMPTS if r["group"] == "(all)" else per_type), r
        assert r["diff"] == 0 and r["ci_low"] == 0 and r["ci_high"] == 0, r
        assert r["baseline"] == r["candidate"], r
        assert r["effect_size"] == 0.0, r
        assert r["p_value"] == 1 and r["p_holm"] == 1, r
        assert r["beyond_noise"] is False, r


def test_base_vs_tuned_target_prob_is_beyond_noise(organism_table):
    rows = rows_by(organism_table, "group", "metric")
    groups = {g for g, _ in rows}
    assert groups == {"(all)", *CONSTRAINTS}
    for group in groups:
        r = rows[(group, "target_prob")]
        assert r["beyond_noise"] is True, r
        assert r["diff"] > 0.3, r
        assert r["ci_low"] > 0, r
        assert r["p_holm"] < 0.05, r


def test_base_vs_tuned_matches_pandas(organism_runs, organism_table):
    base = expected_metrics(organism_runs.base)
    tuned = expected_metrics(organism_runs.tuned)
    pairs = base.merge(tuned, on="prompt_id", suffixes=("_b", "_c"))
    assert len(pairs) == len(base) == len(tuned) == 12
    rows = rows_by(organism_table, "group", "metric")
    frames = [("(all)", pairs), *pairs.groupby("constraint_type_b")]
    assert len(rows) == len(frames) * len(METRICS)
    for group, frame in frames:
        for metric in METRICS:
            both = frame[[f"{metric}_b", f"{metric}_c"]].dropna()
            b, c = both[f"{metric}_b"].tolist(), both[f"{metric}_c"].tolist()
            r = rows[(group, metric)]
            assert r["n"] == len(b), (group, metric)
            assert r["baseline"] == pytest.approx(statistics.fmean(b), rel=TOL, abs=TOL)
            assert r["candidate"] == pytest.approx(statistics.fmean(c), rel=TOL, abs=TOL)
            d = [y - x for x, y in zip(b, c, strict=True)]
            assert r["diff"] == pytest.approx(statistics.fmean(d), rel=TOL, abs=TOL)
    # The headline numbers, spelled out for target_prob.
    all_prob = rows[("(all)", "target_prob")]
    assert all_prob["n"] == 12
    assert all_prob["diff"] == pytest.approx(
        (pairs.target_prob_c - pairs.target_prob_b).mean(), abs=TOL
    )


def test_bootstrap_is_seeded(organism_runs, organism_table):
    base, tuned = str(organism_runs.base), str(organism_runs.tuned)
    again = compare_runs(base, tuned, config=CompareConfig(seed=0))
    assert again.equals(organism_table)
    other = compare_runs(base, tuned, config=CompareConfig(seed=1))
    assert other.column_names == organism_table.column_names
    for col in ("group", "metric", "n", "baseline", "candidate", "diff", "effect_size"):
        assert other[col].to_pylist() == organism_table[col].to_pylist(), col
    moved = [
        (a, b)
        for a, b in zip(
            organism_table["ci_low"].to_pylist() + organism_table["ci_high"].to_pylist(),
            other["ci_low"].to_pylist() + other["ci_high"].to_pylist(),
            strict=True,
        )
        if a != b
    ]
    assert moved, "another seed left every CI bound where it was"


def test_ci_holds_the_difference(organism_table, groups_table):
    for table in (organism_table, groups_table):
        for r in table.to_pylist():
            assert r["ci_low"] <= r["diff"] <= r["ci_high"], r


def test_ci_width_close_to_normal_approximation(organism_runs):
    table = compare_runs(
        str(organism_runs.base),
        str(organism_runs.tuned),
        config=CompareConfig(metrics=("target_prob",), n_boot=4000),
    )
    r = rows_by(table, "group", "metric")[("(all)", "target_prob")]
    base = expected_metrics(organism_runs.base).set_index("prompt_id").target_prob
    tuned = expected_metrics(organism_runs.tuned).set_index("prompt_id").target_prob
    d = (tuned - base.reindex(tuned.index)).tolist()
    half = 1.96 * statistics.stdev(d) / math.sqrt(len(d))
    assert half > 0
    assert (r["ci_high"] - r["ci_low"]) / 2 == pytest.approx(half, rel=0.3)
    assert abs((r["ci_low"] + r["ci_high"]) / 2 - r["diff"]) < 0.3 * half


# -- one run, between groups --------------------------------------------------------------
def test_compare_groups_matches_pandas(ray_run, groups_table):
    expected = expected_metrics(ray_run.out)
    by_type = dict(list(expected.groupby("constraint_type")))
    assert sorted(by_type) == sorted(CONSTRAINTS)
    rows = rows_by(groups_table, "group_a", "group_b", "metric")
    pairs = list(itertools.combinations(sorted(by_type), 2))
    assert len(rows) == len(pairs) * len(METRICS)
    defined = 0
    for ga, gb in pairs:
        for metric in METRICS:
            a = by_type[ga][metric].dropna().tolist()
            b = by_type[gb][metric].dropna().tolist()
            r = rows[(ga, gb, metric)]
            assert (r["n_a"], r["n_b"]) == (len(a), len(b)), r
            assert r["mean_a"] == pytest.approx(statistics.fmean(a), rel=TOL, abs=TOL)
            assert r["mean_b"] == pytest.approx(statistics.fmean(b), rel=TOL, abs=TOL)
            diff = statistics.fmean(b) - statistics.fmean(a)
            assert r["diff"] == pytest.approx(diff, rel=TOL, abs=TOL)
            g = hedges_g(a, b)
            if g is None:
                assert r["effect_size"] is None, r
            else:
                assert r["effect_size"] == pytest.approx(g, rel=TOL, abs=TOL), r
                defined += g != 0
    assert defined >= len(pairs)  # the check above compared real effect sizes


def test_compare_groups_counts_by_type(ray_run, groups_table):
    per_type = N_RAY_PROMPTS // len(CONSTRAINTS)
    for r in groups_table.to_pylist():
        assert r["group_a"] < r["group_b"]
        assert r["n_a"] == r["n_b"] == per_type, r


def package_shares(run: Path) -> dict[str, float]:
    """prompt_id -> error_influence_share, as compare reads it (one row per ok graph)."""
    t = _per_graph([str(run)], CompareConfig(metrics=("error_influence_share",)))
    prompts, shares = t["prompt_id"].to_pylist(), t["error_influence_share"].to_pylist()
    assert len(set(prompts)) == len(prompts)
    return dict(zip(prompts, shares, strict=True))


def test_error_influence_share_per_graph(ray_run, tmp_path):
    """Per graph, error influence over feature + error + token influence; a graph that
    keeps no error node has share 0 (not missing)."""
    run = tmp_path / "run"
    shutil.copytree(ray_run.out, run)
    # Drop the error nodes of one graph, in place in its part files.
    victim = 0
    dropped = 0
    for f in sorted((run / "nodes").glob("*.parquet")):
        t = pq.read_table(f)
        hit = (t["graph_id"].to_numpy() == victim) & (t["node_type"].to_numpy() == "error")
        dropped += int(hit.sum())
        pq.write_table(t.filter(~hit), f)
    assert dropped > 0
    for folder in (ray_run.out, run):
        expected = expected_metrics(folder).set_index("prompt_id").error_influence_share
        got = package_shares(folder)
        assert len(got) == len(expected) == N_RAY_PROMPTS
        for prompt_id, share in expected.items():
            assert got[prompt_id] == pytest.approx(share, rel=TOL, abs=TOL), prompt_id
            assert 0 <= got[prompt_id] < 1
    shares = package_shares(run)
    victim_prompt = expected_metrics(run).set_index("graph_id").prompt_id[victim]
    assert shares[victim_prompt] == 0.0
    assert [p for p, v in shares.items() if v == 0] == [victim_prompt]
    assert package_shares(ray_run.out)[victim_prompt] > 0


def test_error_influence_share_group_means(ray_run, groups_table):
    expected = expected_metrics(ray_run.out)
    means = expected.groupby("constraint_type").error_influence_share.mean()
    assert ((means > 0) & (means < 1)).all()
    for r in groups_table.to_pylist():
        if r["metric"] == "error_influence_share":
            assert r["mean_a"] == pytest.approx(means[r["group_a"]], rel=TOL, abs=TOL)
            assert r["mean_b"] == pytest.approx(means[r["group_b"]], rel=TOL, abs=TOL)


# -- Holm ---------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.05, 0.2])
def test_holm_verdicts(organism_runs, ray_run, organism_table, groups_table, alpha):
    tables = [organism_table, groups_table]
    if alpha != 0.05:
        config = CompareConfig(alpha=alpha)
        tables = [
            compare_runs(str(organism_runs.base), str(organism_runs.tuned), config=config),
            compare_groups(str(ray_run.out), config=config),
        ]
    verdicts = set()
    for table in tables:
        rows = table.to_pylist()
        p = [r["p_value"] for r in rows]
        for r, adjusted in zip(rows, holm(p), strict=True):
            assert 0 < r["p_value"] <= r["p_holm"] <= 1, r
            assert r["p_holm"] == pytest.approx(adjusted, rel=1e-12), r
            assert r["beyond_noise"] == (r["p_holm"] < alpha), r
            verdicts.add(r["beyond_noise"])
    assert verdicts == {True, False}  # both outcomes were checked


def test_holm_is_stricter_than_per_row_alpha(groups_table):
    rows = groups_table.to_pylist()
    nominal = [r for r in rows if r["p_value"] < 0.05]
    assert any(not r["beyond_noise"] for r in nominal), "Holm adjusted nothing away"


# -- API errors -----------------------------------------------------------------------------
def test_api_errors(ray_run):
    run = str(ray_run.out)
    with pytest.raises(CircuitrayError, match="--by 'nope': not a graphs column"):
        compare_groups(run, config=CompareConfig(by="nope"))
    with pytest.raises(CircuitrayError, match="unknown metric 'nope'"):
        compare_runs(run, run, config=CompareConfig(metrics=("nope",)))
    with pytest.raises(CircuitrayError, match="fewer than two groups"):
        compare_groups(run, config=CompareConfig(by="status"))


# -- the command ----------------------------------------------------------------------------
def test_cli_compare_two_runs_json(organism_runs):
    p = circuitray(
        "compare",
        organism_runs.base,
        organism_runs.tuned,
        "--format",
        "json",
        "--metric",
        "target_prob",
    )
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert {r["group"] for r in rows} == {"(all)", *CONSTRAINTS}
    assert {r["metric"] for r in rows} == {"target_prob"}
    assert all(r["beyond_noise"] is True and r["diff"] > 0.3 for r in rows), rows
    api = compare_runs(
        str(organism_runs.base),
        str(organism_runs.tuned),
        config=CompareConfig(metrics=("target_prob",)),
    )
    assert rows == api.to_pylist()


def test_cli_compare_one_run_json(ray_run):
    p = circuitray("compare", ray_run.out, "--format", "json", "--metric", "target_prob")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    pairs = list(itertools.combinations(sorted(CONSTRAINTS), 2))
    assert [(r["group_a"], r["group_b"]) for r in rows] == pairs
    api = compare_groups(str(ray_run.out), config=CompareConfig(metrics=("target_prob",)))
    assert rows == api.to_pylist()


def test_cli_compare_unknown_by(ray_run):
    p = circuitray("compare", ray_run.out, "--by", "not_a_column")
    assert_refused(p, "--by 'not_a_column': not a graphs column", "constraint_type")


def test_cli_compare_three_runs(ray_run):
    p = circuitray("compare", ray_run.out, ray_run.out, ray_run.out)
    assert_refused(p, "usage: circuitray compare BASELINE_RUN CANDIDATE_RUN")


@pytest.mark.parametrize("n_runs", [1, 2])
def test_cli_compare_unknown_metric(ray_run, n_runs):
    p = circuitray("compare", *[ray_run.out] * n_runs, "--metric", "nope")
    assert_refused(p, "unknown metric 'nope'", "target_prob")


def test_cli_compare_not_a_run_folder(ray_run, tmp_path):
    p = circuitray("compare", tmp_path, ray_run.out)
    assert_refused(p, str(tmp_path), "not a circuitray run folder")


def test_runs_of_different_targets_are_compared_only_when_asked(ray_run, tmp_path):
    """Graphs attributed to the top logits and to the answer explain different outputs:
    one line and exit 2, unless --mixed-targets."""
    import pyarrow as pa
    import pyarrow.compute as pc

    answer = tmp_path / "answer"
    shutil.copytree(ray_run.out, answer)
    for part in (answer / "graphs").glob("*.parquet"):
        t = pq.read_table(part)
        i = t.schema.get_field_index("target_mode")
        pq.write_table(t.set_column(i, "target_mode", pa.array(["answer"] * t.num_rows)), part)
    assert set(pc.unique(pq.read_table(ray_run.out / "graphs")["target_mode"]).to_pylist()) == {
        "top"
    }
    p = circuitray("compare", ray_run.out, answer)
    assert_refused(p, "attributes to top", "to answer", "--mixed-targets")
    with pytest.raises(CircuitrayError, match="explain different outputs"):
        compare_runs(str(ray_run.out), str(answer))
    p = circuitray("compare", ray_run.out, answer, "--mixed-targets", "--format", "json")
    assert p.returncode == 0, p.stderr
    assert {r["group"] for r in json.loads(p.stdout)} >= {"(all)"}
