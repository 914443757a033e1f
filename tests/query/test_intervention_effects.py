"""The intervention_effects query and the ``interventions`` view, checked against a
plain-Python / numpy recomputation on a real intervention folder (tiny model, Ray)."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SPECS, circuitray

from circuitray.query.engine import connect, run_query
from circuitray.schema import RESULT_SCHEMA


def _result_rows(folder: Path) -> list[dict]:
    rows = []
    for f in sorted((folder / "results").glob("*.parquet")):
        rows += pq.read_table(f).to_pylist()
    return rows


def _avg_ranks(values: list[float]) -> np.ndarray:
    """1-based ranks; tied values share the mean of their positions."""
    v = np.asarray(values, dtype=float)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _spearman(xs: list, ys: list) -> float | None:
    """Pearson correlation of average ranks over the pairs with an x; None if undefined."""
    pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if x is not None]
    if len(pairs) < 2:
        return None
    rx = _avg_ranks([p[0] for p in pairs])
    ry = _avg_ranks([p[1] for p in pairs])
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _python_effects(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """(spec, constraint type or '(all)') -> the query's statistics, recomputed."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        if r["status"] == "ok":
            groups[(r["spec"], r["constraint_type"] or "(none)")].append(r)
            groups[(r["spec"], "(all)")].append(r)
    out = {}
    for key, g in groups.items():
        y = [r["target_logit_change"] for r in g]
        predicted = [r["predicted_total"] for r in g if r["predicted_total"] is not None]
        out[key] = {
            "prompts": len({r["graph_id"] for r in g}),
            "n": len(g),
            "mean_features": np.mean([r["n_features"] for r in g]),
            "mean_change": np.mean(y),
            "prob_before": np.mean([r["target_prob_before"] for r in g]),
            "prob_after": np.mean([r["target_prob_after"] for r in g]),
            "top1_changed": np.mean([r["top_token_before"] != r["top_token_after"] for r in g]),
            "mean_kl": np.mean([r["kl"] for r in g]),
            "mean_predicted": np.mean(predicted) if predicted else None,
            "n_predicted": len(predicted),
            "spearman": _spearman([r["predicted_total"] for r in g], y),
            "spearman_direct": _spearman([r["predicted_direct"] for r in g], y),
            "y": np.array(y),
        }
    return out


# Absolute tolerances: the query rounds (4, 3 or 2 decimals).
TOLERANCE = {
    "mean_features": 6e-3,
    "mean_change": 6e-5,
    "prob_before": 6e-5,
    "prob_after": 6e-5,
    "top1_changed": 6e-4,
    "mean_kl": 6e-5,
    "mean_predicted": 6e-5,
    "spearman": 6e-4,
    "spearman_direct": 6e-4,
}


def _assert_matches_python(folder: Path) -> list[dict]:
    expected = _python_effects(_result_rows(folder))
    got = run_query("intervention_effects", [str(folder)]).to_pylist()
    assert {(r["spec"], r["constraint_type"]) for r in got} == expected.keys()
    for r in got:
        e = expected[(r["spec"], r["constraint_type"])]
        assert r["run"] == folder.name
        assert (r["prompts"], r["n"], r["n_predicted"]) == (
            e["prompts"],
            e["n"],
            e["n_predicted"],
        ), r
        for col, tol in TOLERANCE.items():
            if e[col] is None:
                assert r[col] is None, (col, r)
            else:
                assert r[col] == pytest.approx(e[col], abs=tol, rel=1e-6), (col, r, e[col])
    return got


def test_interventions_view_has_every_result_row(intervention_dir):
    rows = _result_rows(intervention_dir)
    assert len(rows) > 0 and {r["status"] for r in rows} == {"ok"}
    con = connect([str(intervention_dir)])
    try:
        cols = [c[0] for c in con.sql("DESCRIBE interventions").fetchall()]
        assert cols == ["run", *RESULT_SCHEMA.names]
        assert con.execute("SELECT count(*) FROM interventions").fetchone()[0] == len(rows)
        # An intervention folder has no graphs: those views are empty, not an error.
        assert con.execute("SELECT count(*) FROM graphs").fetchone()[0] == 0
    finally:
        con.close()


def test_effects_match_python(intervention_dir):
    got = _assert_matches_python(intervention_dir)
    assert [r["spec"] for r in got] == sorted(
        (r["spec"] for r in got), key=SPECS.index
    )  # SPEC order


def test_all_row_pools_the_types(intervention_dir):
    got = run_query("intervention_effects", [str(intervention_dir)]).to_pylist()
    for spec in SPECS:
        rows = [r for r in got if r["spec"] == spec]
        types, pooled = rows[:-1], rows[-1]
        assert pooled["constraint_type"] == "(all)" and len(types) == 3, rows
        assert pooled["n"] == sum(r["n"] for r in types)
        assert pooled["prompts"] == sum(r["prompts"] for r in types)
        assert pooled["n_predicted"] == sum(r["n_predicted"] for r in types)
        weighted = sum(r["mean_change"] * r["n"] for r in types) / pooled["n"]
        assert pooled["mean_change"] == pytest.approx(weighted, abs=1e-4)
        assert min(r["mean_change"] for r in types) <= pooled["mean_change"]
        assert pooled["mean_change"] <= max(r["mean_change"] for r in types)


def test_bootstrap_interval(intervention_dir):
    folder = [str(intervention_dir)]
    expected = _python_effects(_result_rows(intervention_dir))
    seed0 = run_query("intervention_effects", folder, params={"seed": "0"}).to_pylist()
    assert run_query("intervention_effects", folder).to_pylist() == seed0  # default seed 0
    assert run_query("intervention_effects", folder, params={"seed": "0"}).to_pylist() == seed0
    seed1 = run_query("intervention_effects", folder, params={"seed": "1"}).to_pylist()
    varied = changed = 0
    for a, b in zip(seed0, seed1, strict=True):
        ci = ("ci_low", "ci_high")
        assert {k: v for k, v in a.items() if k not in ci} == {
            k: v for k, v in b.items() if k not in ci
        }
        for r in (a, b):
            assert r["ci_low"] <= r["mean_change"] <= r["ci_high"], r
        if len(set(expected[(a["spec"], a["constraint_type"])]["y"])) > 1:
            varied += 1
            changed += (a["ci_low"], a["ci_high"]) != (b["ci_low"], b["ci_high"])
        else:  # one value: every resample has the same mean
            assert a["ci_low"] == a["ci_high"] == a["mean_change"], a
    # Other resamples, other endpoints; but a percentile of a few skewed values' resampled
    # means can land on the same (rounded) value for both seeds.
    assert varied > 0 and changed >= 0.75 * varied, (changed, varied)

    # The percentile interval of a numpy bootstrap with many resamples: the query's
    # endpoints lie within a fraction of the resampled means' spread of it.
    rng = np.random.default_rng(0)
    many = run_query("intervention_effects", folder, params={"n_boot": "4000"}).to_pylist()
    for r in many:
        y = expected[(r["spec"], r["constraint_type"])]["y"]
        means = y[rng.integers(0, len(y), size=(20_000, len(y)))].mean(axis=1)
        low, high = np.quantile(means, [0.025, 0.975])
        spread = means.std()
        assert r["ci_low"] == pytest.approx(low, abs=0.3 * spread + 1e-4), (r, low, spread)
        assert r["ci_high"] == pytest.approx(high, abs=0.3 * spread + 1e-4), (r, high, spread)
    # A wider interval for a smaller alpha; no resamples: no interval, same rows.
    wide = run_query("intervention_effects", folder, params={"alpha": "0.01"}).to_pylist()
    for a, w in zip(seed0, wide, strict=True):
        assert w["ci_low"] <= a["ci_low"] and a["ci_high"] <= w["ci_high"]
    none = run_query("intervention_effects", folder, params={"n_boot": "0"}).to_pylist()
    assert len(none) == len(seed0)
    assert all(r["ci_low"] is None and r["ci_high"] is None for r in none)


def test_spearman_without_some_predictions(intervention_dir, tmp_path):
    """Rows without a prediction (target not a logit node of the stored graph) leave
    the others' ranks alone; a constant prediction gives NULL (not NaN)."""
    copy = tmp_path / "iv_edited"
    shutil.copytree(intervention_dir, copy)
    n = 0
    for f in sorted((copy / "results").glob("*.parquet")):
        rows = pq.read_table(f).to_pylist()
        for r in rows:
            if r["spec_index"] == 0:  # top: one predicted total for all
                r["predicted_total"] = 1.0
            elif n % 3 == 0:
                r["predicted_total"] = r["predicted_direct"] = None
            n += 1
        pq.write_table(pa.Table.from_pylist(rows, schema=RESULT_SCHEMA), f)
    got = _assert_matches_python(copy)
    top = [r for r in got if r["spec"] == "top:2"]
    assert all(r["spearman"] is None for r in top)
    others = [r for r in got if r["spec"] != "top:2"]
    assert all(r["n_predicted"] < r["n"] for r in others if r["constraint_type"] == "(all)")
    assert any(r["spearman"] is not None for r in others)


def test_sql_over_an_intervention_folder_and_a_run(intervention_dir, ray_run):
    n_rows = len(_result_rows(intervention_dir))
    p = circuitray(
        "sql", intervention_dir, "SELECT count(*) AS n FROM interventions", "--format", "json"
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == [{"n": n_rows}]
    # A run folder alone: an empty interventions view (and an empty summary).
    p = circuitray(
        "sql", ray_run.out, "SELECT count(*) AS n FROM interventions", "--format", "json"
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == [{"n": 0}]
    assert run_query("intervention_effects", [str(ray_run.out)]).num_rows == 0
    # Both: each view holds its own folder's rows.
    con = connect([str(ray_run.out), str(intervention_dir)])
    try:
        q = "SELECT run, count(*) FROM {} GROUP BY run"
        assert dict(con.sql(q.format("interventions")).fetchall()) == {
            intervention_dir.name: n_rows
        }
        assert set(dict(con.sql(q.format("graphs")).fetchall())) == {ray_run.out.name}
    finally:
        con.close()
