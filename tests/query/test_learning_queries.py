"""Checkpoint series in the query engine, and the learning_curves, convergence and
feature_dynamics queries against pandas / numpy recomputations from the same rows.

Series folders are written here with RunStore (real Parquet parts, a series.json), from
synthetic graphs whose accuracy, scores and feature sets change with the step in a
known way: no model and no Ray.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from circuitray.errors import CircuitrayError, RunDirError
from circuitray.query.engine import connect, run_query, run_sql, view_sql
from circuitray.schema import EDGE_SCHEMA, GRAPH_SCHEMA, NODE_SCHEMA
from circuitray.storage.run_store import RunStore

STEPS = (0, 1, 2, 3, 4, 5, 6, 7)
N_PROMPTS = 20
N_LAYERS = 4
N_TOKENS = 3
# Steps from which a prompt's answer is right: simple_mapping is learned by step 2
# (18 of 20), spatial_relationship by step 5.
LEARN = {
    "simple_mapping": [0] * 3 + [1] * 6 + [2] * 9 + [3] * 2,
    "spatial_relationship": [3] * 3 + [4] * 6 + [5] * 9 + [6] * 2,
}
FLIP = 0.03  # chance that a learned prompt is wrong at a later step (noise)


@dataclass
class TypeSpec:
    """How one constraint type's graphs look at each step."""

    name: str
    learn: list[int]
    core: list[tuple[int, int, int]] = field(default_factory=list)  # layer, feature, from
    noise_pool: int = 30
    prompt_prefix: str = ""


def _core_features(rng: np.random.Generator, offset: int) -> list[tuple[int, int, int]]:
    """Eight (layer, feature) pairs that join the circuit at steps 0..5."""
    appear = [0, 0, 0, 1, 2, 3, 4, 5]
    return [(int(rng.integers(0, N_LAYERS)), offset + i, a) for i, a in enumerate(appear)]


def _graph(rng, gid: int, prompt_id: str, spec: TypeSpec, index: int, step: int, flips):
    """One graph: its graphs row and its nodes and edges rows."""
    right = step >= spec.learn[index] and not flips[index, step]
    target = f"x{index}"
    row = {f.name: None for f in GRAPH_SCHEMA}
    row.update(
        graph_id=gid,
        prompt_id=prompt_id,
        constraint_type=spec.name,
        prompt=f"prompt {prompt_id}",
        target=target,
        status="ok",
        target_token=target,
        top_token=target if right else "y",
        target_prob=float(np.clip((0.55 if right else 0.1) + rng.normal(0, 0.05), 0, 1)),
        replacement_score=float(0.5 + 0.04 * step + rng.normal(0, 0.02)),
        completeness_score=float(0.7 + 0.02 * step + rng.normal(0, 0.02)),
        n_tokens=N_TOKENS,
        n_logits=2,
        worker="synthetic",
    )
    feats = [(layer, f) for layer, f, a in spec.core if a <= step and rng.random() < 0.85]
    for f in rng.choice(spec.noise_pool, size=2, replace=False):
        feats.append((int(rng.integers(0, N_LAYERS)), 1000 + int(f)))
    feats = sorted(set(feats))
    nodes: list[dict] = []

    def node(kind: str, layer: int, pos: int, **extra) -> dict:
        n = {f.name: None for f in NODE_SCHEMA}
        n.update(
            graph_id=gid,
            node_id=len(nodes),
            node_type=kind,
            layer=layer,
            pos=pos,
            influence=float(rng.uniform(0.01, 1)),
            cumulative_influence=0.5,
            **extra,
        )
        nodes.append(n)
        return n

    for layer, f in feats:
        act = 1.0 + 0.2 * step + f % 7 * 0.1 + rng.normal(0, 0.1)
        node("feature", layer, int(rng.integers(0, N_TOKENS)), feature=f, activation=act)
    for _ in range(int(rng.integers(1, 3))):
        node("error", int(rng.integers(0, N_LAYERS)), int(rng.integers(0, N_TOKENS)))
    for p in range(N_TOKENS):
        node("token", -1, p, token_id=10 + p, token=f"t{p}")
    node("logit", N_LAYERS, N_TOKENS - 1, token_id=1, token=target, logit_prob=0.6)
    node("logit", N_LAYERS, N_TOKENS - 1, token_id=2, token="y", logit_prob=0.3)
    edges: list[dict] = []

    def edge(src: dict, dst: dict) -> None:
        sign = 1 if rng.random() < 0.8 else -1
        edges.append(
            {
                "graph_id": gid,
                "dst": dst["node_id"],
                "src": src["node_id"],
                "weight": float(sign * rng.lognormal(-1, 1)),
                "src_layer": src["layer"],
                "dst_layer": dst["layer"],
                "src_type": src["node_type"],
                "dst_type": dst["node_type"],
            }
        )

    inner = [n for n in nodes if n["node_type"] in ("feature", "error")]
    for dst in inner:
        below = [n for n in nodes if n["node_type"] != "logit" and n["layer"] < dst["layer"]]
        k = min(len(below), int(rng.integers(1, 3)))
        for i in rng.choice(len(below), size=k, replace=False):
            edge(below[int(i)], dst)
    logits = [n for n in nodes if n["node_type"] == "logit"]
    for src in inner:
        edge(src, logits[0])
    edge(nodes[len(inner)], logits[0])  # a direct token -> target edge
    edge(inner[0], logits[1])
    edges.sort(key=lambda e: (e["dst"], e["src"]))
    row.update(
        n_kept_features=len(feats),
        n_kept_error_nodes=len(inner) - len(feats),
        n_kept_nodes=len(nodes),
        n_kept_edges=len(edges),
    )
    return row, nodes, edges


def write_series(
    root: Path, specs: list[TypeSpec], *, seed: int, flips: np.ndarray | None = None
) -> Path:
    """A series folder: one run folder per step, same prompts in each, + series.json.
    ``flips`` (prompt x step, the same for every type) replaces each type's own draws."""
    rng = np.random.default_rng(seed)
    shape = (N_PROMPTS, max(STEPS) + 1)
    wrong = {s.name: rng.random(shape) < FLIP if flips is None else flips for s in specs}
    listed = []
    for step in STEPS:
        folder = f"step-{step:06d}"
        store = RunStore(root / folder)
        store.write_meta({"format": "circuitray-run/1", "status": "done", "step": step})
        graphs, nodes, edges = [], [], []
        gid = 0
        for spec in specs:
            for i in range(N_PROMPTS):
                prompt_id = f"{spec.prompt_prefix}-{i:02d}"
                if step == 3 and i == 7:  # a failed graph: no metrics, no nodes
                    row = {f.name: None for f in GRAPH_SCHEMA}
                    row.update(
                        graph_id=gid,
                        prompt_id=prompt_id,
                        constraint_type=spec.name,
                        prompt="p",
                        status="error",
                        error="boom",
                    )
                    graphs.append(row)
                else:
                    row, n, e = _graph(rng, gid, prompt_id, spec, i, step, wrong[spec.name])
                    graphs.append(row)
                    nodes += n
                    edges += e
                gid += 1
        store.write_part(
            "part-000000",
            {
                "graphs": pa.Table.from_pylist(graphs, GRAPH_SCHEMA),
                "nodes": pa.Table.from_pylist(nodes, NODE_SCHEMA),
                "edges": pa.Table.from_pylist(edges, EDGE_SCHEMA),
            },
        )
        listed.append({"step": step, "run": folder})
    meta = {"format": "circuitray-series/1", "name": root.name, "runs": listed[::-1]}
    (root / "series.json").write_text(json.dumps({**meta, "base_model": "synthetic"}))
    return root


def _specs(seed: int, learn: dict[str, list[int]]) -> list[TypeSpec]:
    rng = np.random.default_rng(seed)
    return [
        TypeSpec(name, list(steps), _core_features(rng, 100 * k), prompt_prefix=f"{name[:4]}{k}")
        for k, (name, steps) in enumerate(learn.items())
    ]


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    """simple_mapping learns early, spatial_relationship late."""
    root = tmp_path_factory.mktemp("series") / "tune"
    return write_series(root, _specs(1, LEARN), seed=2)


@pytest.fixture(scope="module")
def twin_series(tmp_path_factory) -> Path:
    """Two types with the same per-prompt values (accuracy and flips): only prompt ids
    and feature ids differ."""
    root = tmp_path_factory.mktemp("twins") / "twins"
    same = [1] * 4 + [2] * 6 + [3] * 6 + [4] * 4
    specs = _specs(3, {"simple_mapping": same, "compositional": same})
    flips = np.random.default_rng(5).random((N_PROMPTS, max(STEPS) + 1)) < FLIP
    write_series(root, specs, seed=4, flips=flips)
    return root


# -- the same quantities from the Parquet files, in pandas ----------------------------
def frames(root: Path) -> dict[str, pd.DataFrame]:
    """graphs, nodes and edges of every run of a series, with step and run name."""
    listed = json.loads((root / "series.json").read_text())["runs"]
    out: dict[str, list[pd.DataFrame]] = {"graphs": [], "nodes": [], "edges": []}
    for entry in listed:
        for table in out:
            df = pq.read_table(root / entry["run"] / table).to_pandas()
            df["run"] = f"{root.name}/{entry['run']}"
            df["step"] = entry["step"]
            out[table].append(df)
    return {t: pd.concat(dfs, ignore_index=True) for t, dfs in out.items()}


def strongest_hops(nodes: pd.DataFrame, edges: pd.DataFrame, target_token: str) -> int:
    """Hops of the strongest token -> target-logit path, by dynamic programming."""
    kind = dict(zip(nodes.node_id, nodes.node_type, strict=True))
    logits = nodes[nodes.node_type == "logit"]
    target = int(logits.sort_values("logit_prob").iloc[-1].node_id)
    hit = logits[logits.token == target_token]
    if len(hit):
        target = int(hit.iloc[0].node_id)
    e = edges.assign(a=edges.weight.abs())
    e["share"] = e.a / e.groupby("dst").a.transform("sum")
    inflow = {d: list(zip(g.src, g.share, strict=True)) for d, g in e.groupby("dst")}
    memo: dict[int, tuple[float, int]] = {}

    def best(v: int) -> tuple[float, int]:
        if kind[v] == "token":
            return 1.0, 0
        if v not in memo:
            options = [
                (s * best(int(src))[0], best(int(src))[1] + 1) for src, s in inflow.get(v, [])
            ]
            memo[v] = max(options, default=(0.0, 0))
        return memo[v]

    return best(target)[1]


def expected_curves(root: Path) -> pd.DataFrame:
    f = frames(root)
    g = f["graphs"][f["graphs"].status == "ok"].copy()
    key = ["run", "graph_id"]
    e = f["edges"].assign(a=f["edges"].weight.abs())
    e["ea"] = np.where(e.src_type == "error", e.a, 0.0)
    share = e.groupby(key).agg(ea=("ea", "sum"), a=("a", "sum"))
    share = (share.ea / share.a).rename("share")
    feats = f["nodes"][f["nodes"].node_type == "feature"]
    span = feats.groupby(key).layer.nunique().rename("span")
    hops = {}
    for (run, gid), nodes in f["nodes"].groupby(key):
        edges = f["edges"][(f["edges"].run == run) & (f["edges"].graph_id == gid)]
        target = g[(g.run == run) & (g.graph_id == gid)].target_token.iloc[0]
        hops[(run, gid)] = strongest_hops(nodes, edges, target)
    g = g.join(share, on=key).join(span, on=key)
    g["hops"] = [hops[(r, i)] for r, i in zip(g.run, g.graph_id, strict=True)]
    g["top1"] = (g.top_token == g.target_token).astype(float)
    return g.groupby(["constraint_type", "step"]).agg(
        graphs=("graph_id", "size"),
        accuracy=("top1", "mean"),
        mean_target_prob=("target_prob", "mean"),
        mean_replacement=("replacement_score", "mean"),
        mean_completeness=("completeness_score", "mean"),
        mean_nodes=("n_kept_nodes", "mean"),
        mean_edges=("n_kept_edges", "mean"),
        mean_features=("n_kept_features", "mean"),
        error_weight_share=("share", lambda s: s.fillna(0).mean()),
        mean_layers_spanned=("span", lambda s: s.fillna(0).mean()),
        mean_path_hops=("hops", "mean"),
    )


def per_prompt(root: Path, metric: str) -> pd.DataFrame:
    """The metric per (type, prompt) (rows) and step (columns), ok graphs only."""
    g = frames(root)["graphs"]
    g = g[g.status == "ok"].copy()
    column = {
        "accuracy": (g.top_token == g.target_token).astype(float),
        "target_prob": g.target_prob.astype(float),
        "replacement": g.replacement_score.astype(float),
    }[metric]
    g["value"] = column
    return g.pivot_table(index=["constraint_type", "prompt_id"], columns="step", values="value")


def convergence_step(curve: pd.Series, criterion: float) -> int | None:
    """First step from which the curve stays >= criterion (NaN counts as below)."""
    below = [s for s, v in curve.items() if not (v >= criterion)]
    later = [s for s in curve.index if not below or s > max(below)]
    return int(min(later)) if later else None


def numpy_bootstrap(table: pd.DataFrame, criterion: float, n_boot: int, seed: int):
    """Convergence steps of resampled prompts (rows), with replacement."""
    rng = np.random.default_rng(seed)
    values = table.to_numpy(float)
    steps = list(table.columns)
    out = []
    for _ in range(n_boot):
        pick = values[rng.integers(0, len(values), len(values))]
        curve = pd.Series(np.nanmean(pick, axis=0), index=steps)
        out.append(convergence_step(curve, criterion))
    return out


def rows_by(table: pa.Table, *keys: str) -> dict:
    return {tuple(r[k] for k in keys): r for r in table.to_pylist()}


# -- engine ----------------------------------------------------------------------------
def test_series_folder_expands_to_its_runs_in_step_order(series):
    con = connect([str(series)])
    try:
        runs = con.sql("SELECT run, position, path, step, series FROM runs").fetchall()
        cols = [c[0] for c in con.sql("DESCRIBE graphs").fetchall()]
        types = dict(con.sql("SELECT column_name, column_type FROM (DESCRIBE runs)").fetchall())
        steps = con.sql("SELECT DISTINCT run, step FROM graphs ORDER BY step").fetchall()
        node_cols = [c[0] for c in con.sql("DESCRIBE nodes").fetchall()]
    finally:
        con.close()
    assert runs == [
        (f"tune/step-{s:06d}", i, str(series / f"step-{s:06d}"), s, "tune")
        for i, s in enumerate(STEPS)
    ]
    assert cols == ["run", *GRAPH_SCHEMA.names, "step"]
    assert types["step"] == "INTEGER" and types["series"] == "VARCHAR"
    assert steps == [(f"tune/step-{s:06d}", s) for s in STEPS]
    assert "step" not in node_cols


def test_two_series_and_a_plain_run_together(series, twin_series, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(series / "step-000003", plain)
    meta = json.loads((plain / "run.json").read_text())
    del meta["step"]
    (plain / "run.json").write_text(json.dumps(meta))
    t = run_sql(
        [str(series), str(plain), str(twin_series)],
        "SELECT r.run, r.series, r.step, count(g.graph_id) AS n, count(g.step) AS with_step "
        "FROM runs r LEFT JOIN graphs g USING (run) GROUP BY ALL ORDER BY any_value(position)",
    ).to_pylist()
    assert len(t) == 2 * len(STEPS) + 1
    assert t[len(STEPS)] == {"run": "plain", "series": None, "step": None, "n": 40, "with_step": 0}
    assert {r["series"] for r in t[: len(STEPS)]} == {"tune"}
    assert all(r["run"].startswith("twins/step-") for r in t[len(STEPS) + 1 :])
    assert all(r["n"] == r["with_step"] == 40 for r in t if r["series"])
    # The plain run (no step) in the queries that existed before series.
    stats = run_query("constraint_stats", [str(plain)]).to_pylist()
    assert {r["constraint_type"]: r["graphs"] for r in stats} == {
        "simple_mapping": 19,
        "spatial_relationship": 19,
    }
    assert run_query("learning_curves", [str(plain)]).num_rows == 0
    assert run_query("convergence", [str(plain)]).num_rows == 0
    assert run_query("feature_dynamics", [str(plain)]).num_rows == 0


def test_same_series_twice_is_numbered(series, tmp_path):
    other = tmp_path / "tune"
    shutil.copytree(series, other)
    t = run_sql(
        [str(series), str(other)], "SELECT series, run FROM runs ORDER BY position"
    ).to_pylist()
    assert [r["series"] for r in t] == ["tune#0"] * len(STEPS) + ["tune#1"] * len(STEPS)
    assert t[0]["run"] == "tune#0/step-000000" and t[-1]["run"] == "tune#1/step-000007"
    curves = run_query("learning_curves", [str(series), str(other)], params={"max_graphs": "1"})
    assert sorted(set(curves["series"].to_pylist())) == ["tune#0", "tune#1"]


def test_step_from_series_json_when_run_json_has_none(series, tmp_path):
    copy = _copy(series, tmp_path)
    run_json = copy / "step-000004" / "run.json"
    meta = json.loads(run_json.read_text())
    run_json.write_text(json.dumps({k: v for k, v in meta.items() if k != "step"}))
    t = run_sql([str(copy)], "SELECT DISTINCT step FROM graphs ORDER BY step")
    assert t["step"].to_pylist() == list(STEPS)
    run_json.write_text(json.dumps({**meta, "step": 9}))
    with pytest.raises(RunDirError, match="step-000004 at step 4 but its run.json says step 9"):
        connect([str(copy)])
    run_json.write_text(json.dumps({**meta, "step": "4"}))
    with pytest.raises(RunDirError, match="step '4' is not an integer"):
        connect([str(copy)])


def test_view_sql_over_a_series_gives_the_same_rows_in_a_bare_duckdb(series):
    bare = duckdb.connect()
    for statement in view_sql([str(series)]):
        bare.execute(statement)
    ours = connect([str(series)])
    try:
        for view in ("runs", "graphs", "nodes", "edges"):
            sql = f"SELECT * FROM {view} ORDER BY ALL"
            assert bare.sql(sql).fetchall() == ours.sql(sql).fetchall(), view
            assert (
                bare.sql(f"DESCRIBE {view}").fetchall() == ours.sql(f"DESCRIBE {view}").fetchall()
            )
    finally:
        ours.close()
        bare.close()


def test_run_sql_reads_the_series_runs_and_nothing_else(series):
    part = series / "step-000002" / "graphs" / "part-000000.parquet"
    t = run_sql([str(series)], f"SELECT count(*) AS n FROM read_parquet('{part}')")
    assert t.to_pylist() == [{"n": 2 * N_PROMPTS}]
    with pytest.raises(CircuitrayError, match="Permission|disabled"):
        run_sql([str(series)], f"SELECT * FROM read_text('{series / 'series.json'}')")


def _copy(series: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "broken"
    shutil.copytree(series, copy)
    return copy


def _one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_series_naming_a_missing_folder(series, tmp_path):
    copy = _copy(series, tmp_path)
    shutil.rmtree(copy / "step-000005")
    for call in (
        lambda: connect([str(copy)]),
        lambda: run_query("learning_curves", [str(copy)]),
        lambda: view_sql([str(copy)]),
        lambda: run_sql([str(copy)], "SELECT 1"),
    ):
        with pytest.raises(RunDirError) as e:
            call()
        text = _one_line(e)
        assert "broken" in text and "step-000005" in text and "missing" in text
    (copy / "step-000005").mkdir()
    with pytest.raises(RunDirError, match="step-000005 has no run.json"):
        connect([str(copy)])


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "corrupt series.json"),
        (json.dumps({"format": "other/1", "runs": []}), "not a circuitray series"),
        (json.dumps({"format": "circuitray-series/1", "runs": []}), "lists no runs"),
        (
            json.dumps({"format": "circuitray-series/1", "runs": [{"step": 0, "run": "../x"}]}),
            "runs\\[0\\] is not",
        ),
        (
            json.dumps({"format": "circuitray-series/1", "runs": [{"step": "0", "run": "a"}]}),
            "runs\\[0\\] is not",
        ),
        (
            json.dumps(
                {
                    "format": "circuitray-series/1",
                    "runs": [{"step": 0, "run": "step-000000"}, {"step": 0, "run": "step-000001"}],
                }
            ),
            "step 0 is listed twice",
        ),
    ],
)
def test_bad_series_json_is_one_line(series, tmp_path, content, message):
    copy = _copy(series, tmp_path)
    (copy / "series.json").write_text(content)
    with pytest.raises(RunDirError, match=message) as e:
        run_query("learning_curves", [str(copy)])
    _one_line(e)


# -- learning_curves -------------------------------------------------------------------
def test_learning_curves_match_pandas(series):
    params = {"beam": "64", "max_graphs": "0"}  # a beam that cuts nothing: exact paths
    got = rows_by(
        run_query("learning_curves", [str(series)], params=params), "constraint_type", "step"
    )
    want = expected_curves(series)
    assert set(got) == set(want.index)
    tolerance = {"mean_nodes": 0.006, "mean_edges": 0.006, "mean_features": 0.006}
    for key, expected in want.iterrows():
        row = got[key]
        assert row["series"] == "tune" and row["run"] == f"tune/step-{key[1]:06d}"
        assert row["graphs"] == expected["graphs"] == (N_PROMPTS - 1 if key[1] == 3 else N_PROMPTS)
        assert row["path_graphs"] == row["graphs"]
        for column, value in expected.items():
            if column == "graphs":
                continue
            abs_tol = tolerance.get(
                column, 6e-4 if "layers" in column or "hops" in column else 6e-5
            )
            assert row[column] == pytest.approx(value, abs=abs_tol), (key, column)
    # The constructed shape: simple_mapping is accurate earlier than spatial_relationship.
    assert (
        got[("simple_mapping", 2)]["accuracy"] >= 0.8 > got[("spatial_relationship", 2)]["accuracy"]
    )


def test_learning_curves_default_path_sample(series):
    t = run_query("learning_curves", [str(series)], params={"max_graphs": "5"}).to_pylist()
    assert all(r["path_graphs"] == 5 and r["mean_path_hops"] >= 1 for r in t)


# -- convergence -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def convergence(series):
    return run_query("convergence", [str(series)], params={"criterion": "0.8"})


def test_convergence_point_estimates_match_pandas(series, convergence):
    got = rows_by(convergence, "kind", "type_a", "type_b")
    for metric, criterion in (("accuracy", 0.8), ("target_prob", 0.45), ("replacement", 0.6)):
        table = per_prompt(series, metric)
        t = run_query(
            "convergence",
            [str(series)],
            params={"metric": metric, "criterion": str(criterion), "n_boot": "50"},
        )
        rows = rows_by(t, "kind", "type_a", "type_b")
        steps = {}
        for type_name, frame in table.groupby(level=0):
            curve = frame.mean(axis=0).reindex(list(STEPS))
            steps[type_name] = convergence_step(curve, criterion)
            row = rows[("type", type_name, None)]
            assert row["metric"] == metric and row["criterion"] == criterion
            assert row["step_a"] == steps[type_name], (metric, type_name)
            assert row["n_a"] == N_PROMPTS and row["last_step"] == max(STEPS)
            assert row["final_a"] == pytest.approx(curve.iloc[-1], abs=6e-5)
        pair = rows[("pair", "simple_mapping", "spatial_relationship")]
        a, b = steps["simple_mapping"], steps["spatial_relationship"]
        assert pair["step_a"] == a and pair["step_b"] == b
        assert pair["estimate"] == (None if a is None or b is None else a - b)
    for (kind, _, _), row in got.items():  # a type row's estimate is its step
        assert kind == "pair" or row["estimate"] == row["step_a"]


def test_convergence_earlier_type_is_first_beyond_noise(convergence):
    rows = rows_by(convergence, "kind", "type_a", "type_b")
    simple = rows[("type", "simple_mapping", None)]
    spatial = rows[("type", "spatial_relationship", None)]
    assert simple["step_a"] in (2, 3) and spatial["step_a"] in (5, 6)
    assert simple["ci_low"] <= simple["step_a"] <= simple["ci_high"] <= 4
    assert 4 <= spatial["ci_low"] <= spatial["step_a"] <= spatial["ci_high"]
    pair = rows[("pair", "simple_mapping", "spatial_relationship")]
    assert pair["converges_first"] == "simple_mapping"
    assert pair["beyond_noise"] is True
    assert pair["ci_high"] < 0 and pair["ci_low"] <= pair["estimate"] <= pair["ci_high"]
    assert [r["kind"] for r in convergence.to_pylist()] == ["type", "type", "pair"]


def test_convergence_bootstrap_agrees_with_numpy(series, convergence):
    """The SQL bootstrap's spread of convergence steps is a numpy bootstrap's."""
    table = per_prompt(series, "accuracy").reindex(columns=list(STEPS))
    rows = rows_by(convergence, "kind", "type_a", "type_b")
    for type_name, frame in table.groupby(level=0):
        boot = numpy_bootstrap(frame, 0.8, 4000, seed=7)
        steps = np.array([np.inf if s is None else s for s in boot])
        row = rows[("type", type_name, None)]
        assert row["never_a"] == pytest.approx(np.mean(np.isinf(steps)), abs=0.03)
        lo, hi = np.quantile(steps, [0.025, 0.975], method="inverted_cdf")
        assert abs(row["ci_low"] - lo) <= 1 and abs(row["ci_high"] - hi) <= 1


def test_convergence_is_seeded(series, convergence):
    again = run_query("convergence", [str(series)], params={"criterion": "0.8"})
    assert again.to_pylist() == convergence.to_pylist()
    other = run_query("convergence", [str(series)], params={"criterion": "0.8", "seed": "1"})
    assert other.num_rows == convergence.num_rows


def test_identical_types_converge_together(twin_series):
    table = per_prompt(twin_series, "accuracy")
    a = table.loc["compositional"].to_numpy()
    b = table.loc["simple_mapping"].to_numpy()
    np.testing.assert_array_equal(a, b)  # the same values, prompt by prompt
    t = run_query("convergence", [str(twin_series)], params={"criterion": "0.8"})
    rows = rows_by(t, "kind", "type_a", "type_b")
    pair = rows[("pair", "compositional", "simple_mapping")]
    assert pair["estimate"] == 0 and pair["converges_first"] == "tie"
    assert pair["beyond_noise"] is False
    assert pair["ci_low"] < 0 < pair["ci_high"]  # replicates resample each type apart
    assert (
        rows[("type", "compositional", None)]["step_a"]
        == rows[("type", "simple_mapping", None)]["step_a"]
    )


def test_never_converging_type(series):
    t = run_query("convergence", [str(series)], params={"criterion": "0.99", "n_boot": "200"})
    rows = rows_by(t, "kind", "type_a", "type_b")
    for type_name in LEARN:
        curve = per_prompt(series, "accuracy").loc[type_name].mean(axis=0)
        expected = convergence_step(curve.reindex(list(STEPS)), 0.99)
        row = rows[("type", type_name, None)]
        assert row["step_a"] == expected
        if expected is None:
            assert row["estimate"] is None and row["never_a"] > 0.5 and row["ci_high"] is None


def test_unknown_metric_is_one_line(series, tmp_path):
    with pytest.raises(CircuitrayError, match="unknown metric 'nope'") as e:
        run_query("convergence", [str(series)], params={"metric": "nope"})
    _one_line(e)
    plain = tmp_path / "plain"
    RunStore(plain).write_meta({"format": "circuitray-run/1"})  # no rows at all
    with pytest.raises(CircuitrayError, match="unknown metric 'nope'"):
        run_query("convergence", [str(plain)], params={"metric": "nope"})


# -- feature_dynamics ------------------------------------------------------------------
def expected_dynamics(root: Path, min_graphs: int) -> dict[tuple[str, int], dict]:
    f = frames(root)
    ok = f["graphs"][f["graphs"].status == "ok"][["run", "graph_id", "constraint_type"]]
    n = f["nodes"][f["nodes"].node_type == "feature"].merge(ok, on=["run", "graph_id"])
    counts = n.groupby(["constraint_type", "step", "layer", "feature"]).agg(
        graphs=("graph_id", "nunique"), act=("activation", "mean")
    )
    kept = counts[counts.graphs >= min_graphs]
    out = {}
    for type_name in sorted(ok.constraint_type.unique()):
        sets = {
            s: set(kept.loc[(type_name, s)].index) if (type_name, s) in kept.index else set()
            for s in STEPS
        }
        act = {s: kept.loc[(type_name, s)].act.to_dict() for s in STEPS}
        final = sets[STEPS[-1]]
        first = {x: min(s for s in STEPS if x in sets[s]) for x in final}
        stable = set.intersection(*sets.values())
        firsts = sorted(first.values())
        half = next(s for s in STEPS if 2 * sum(v <= s for v in firsts) >= len(final))
        for i, s in enumerate(STEPS):
            prev = sets[STEPS[i - 1]] if i else None
            cur = sets[s]
            out[(type_name, s)] = {
                "graphs": int(
                    (f["graphs"].status == "ok")[
                        (f["graphs"].step == s) & (f["graphs"].constraint_type == type_name)
                    ].sum()
                ),
                "n_features": len(cur),
                "n_final": len(final),
                "jaccard_final": len(cur & final) / len(cur | final),
                "jaccard_prev": None if prev is None else len(cur & prev) / len(cur | prev),
                "gained": None if prev is None else len(cur - prev),
                "lost": None if prev is None else len(prev - cur),
                "final_share": len(cur & final) / len(final),
                "appeared_share": sum(v <= s for v in firsts) / len(final),
                "median_first_step": float(np.median(firsts)),
                "half_step": half,
                "all_step": max(firsts),
                "n_stable": len(stable),
                "mean_activation_change": float(
                    np.mean([act[s][x] - act[STEPS[0]][x] for x in stable])
                ),
            }
    return out


@pytest.mark.parametrize("min_graphs", [2, 5])
def test_feature_dynamics_matches_pandas(series, min_graphs):
    t = run_query("feature_dynamics", [str(series)], params={"min_graphs": str(min_graphs)})
    got = rows_by(t, "constraint_type", "step")
    want = expected_dynamics(series, min_graphs)
    assert set(got) == set(want)
    for key, expected in want.items():
        row = got[key]
        assert row["series"] == "tune"
        for column, value in expected.items():
            if value is None or isinstance(value, int):
                assert row[column] == value, (key, column)
            else:
                assert row[column] == pytest.approx(value, abs=6e-5), (key, column)
    # The constructed circuit: core features join by step 5; the final set grows.
    for type_name in LEARN:
        assert got[(type_name, 0)]["n_stable"] >= 3
        assert got[(type_name, 0)]["mean_activation_change"] == 0
        assert got[(type_name, 7)]["mean_activation_change"] > 1.0  # activation + 0.2/step
        assert got[(type_name, 7)]["jaccard_final"] == 1.0
