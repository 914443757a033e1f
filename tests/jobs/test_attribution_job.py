"""End to end on a real local Ray: sharding, integrity, resume, errors, retry, locks."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import N_RAY_PROMPTS

from circuitray import (
    AttributionConfig,
    ModelSpec,
    PruneConfig,
    RunConfig,
    RunStore,
    run,
    write_prompts,
)
from circuitray.errors import ModelLoadError, PromptFileError, RunDirError


def _duck(out: Path) -> duckdb.DuckDBPyConnection:
    """Raw DuckDB views over every Parquet file of a run folder (no circuitray code)."""
    con = duckdb.connect()
    for t in ("graphs", "nodes", "edges"):
        con.sql(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{out}/{t}/*.parquet')")
    return con


def _one(con, sql):
    return con.sql(sql).fetchall()[0][0]


def _listing(out: Path) -> dict[str, float]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*.parquet")}


# -- the shared 24-prompt run ---------------------------------------------------------
def test_every_prompt_exactly_once_and_ok(ray_run):
    graphs = RunStore(ray_run.out).read_graphs()
    ids = graphs["prompt_id"].to_pylist()
    assert len(ray_run.rows) == N_RAY_PROMPTS >= 20
    assert Counter(ids) == Counter(r["prompt_id"] for r in ray_run.rows)
    assert set(graphs["status"].to_pylist()) == {"ok"}
    assert graphs["error"].null_count == graphs.num_rows
    r = ray_run.result
    assert (r.total, r.ok, r.errors, r.computed, r.skipped) == (24, 24, 0, 24, 0)


def test_graph_id_is_row_index_and_rows_carry_prompt(ray_run):
    graphs = RunStore(ray_run.out).read_graphs().to_pylist()
    by_id = {g["graph_id"]: g for g in graphs}
    assert sorted(by_id) == list(range(N_RAY_PROMPTS))
    for i, row in enumerate(ray_run.rows):
        g = by_id[i]
        assert g["prompt_id"] == row["prompt_id"]
        assert g["prompt"] == row["prompt"]
        assert g["constraint_type"] == row["constraint_type"]
        assert g["target"] == row["target"]
        assert g["n_tokens"] == len(row["prompt"].split()) + 1  # word tokenizer + BOS
        assert g["n_kept_edges"] > 0 and g["n_kept_features"] > 0
        assert 0 < g["replacement_score"] <= 1 and 0 < g["completeness_score"] <= 1
        assert g["target_token"] == row["target"]  # every target is one vocabulary word
        assert 0 <= g["target_rank"] < 200 and 0 < g["target_prob"] < 1
        assert g["total_s"] >= g["attribute_s"] > 0


def test_nodes_and_edges_reference_existing_graphs_and_nodes(ray_run):
    con = _duck(ray_run.out)
    assert _one(con, "SELECT count(*) FROM nodes") > 0
    assert _one(con, "SELECT count(*) FROM edges") > 0
    for t in ("nodes", "edges"):
        orphans = f"SELECT count(*) FROM {t} WHERE graph_id NOT IN (SELECT graph_id FROM graphs)"
        assert _one(con, orphans) == 0, t
    # Every graph has nodes and edges; node ids are unique within a graph.
    assert _one(con, "SELECT count(DISTINCT graph_id) FROM nodes") == N_RAY_PROMPTS
    assert _one(con, "SELECT count(DISTINCT graph_id) FROM edges") == N_RAY_PROMPTS
    assert _one(con, "SELECT count(*) - count(DISTINCT (graph_id, node_id)) FROM nodes") == 0
    assert _one(con, "SELECT count(*) - count(DISTINCT (graph_id, dst, src)) FROM edges") == 0
    # Every edge's src and dst is a node of the same graph, with matching layer and type.
    for end in ("src", "dst"):
        dangling = _one(
            con,
            f"""SELECT count(*) FROM edges e ANTI JOIN nodes n
                ON n.graph_id = e.graph_id AND n.node_id = e.{end}
                AND n.layer = e.{end}_layer AND n.node_type = e.{end}_type""",
        )
        assert dangling == 0, end
    # The graphs row's counts are the stored rows.
    mismatched = _one(
        con,
        """SELECT count(*) FROM graphs g
           LEFT JOIN (SELECT graph_id, count(*) AS n FROM nodes GROUP BY ALL) n USING (graph_id)
           LEFT JOIN (SELECT graph_id, count(*) AS n FROM edges GROUP BY ALL) e USING (graph_id)
           LEFT JOIN (SELECT graph_id, count(*) AS n FROM nodes WHERE node_type = 'feature'
                      GROUP BY ALL) f USING (graph_id)
           WHERE g.n_kept_nodes != n.n OR g.n_kept_edges != e.n OR g.n_kept_features != f.n""",
    )
    assert mismatched == 0


def test_two_distinct_workers(ray_run):
    workers = ray_run.result.workers
    assert len(workers) == 2
    assert len({w["worker"] for w in workers}) == 2
    # CPU actors split the cores between them.
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert all(w["device"] == "cpu" and w["torch_threads"] == threads for w in workers)
    used = set(RunStore(ray_run.out).read_graphs()["worker"].to_pylist())
    assert used == {w["worker"] for w in workers}


def test_run_json(ray_run):
    meta = RunStore(ray_run.out).read_meta()
    assert meta["status"] == "complete"
    assert meta["counts"] == {"total": 24, "ok": 24, "error": 0}
    assert meta["n_prompts"] == 24
    assert meta["prune"] == {"node_threshold": 0.8, "edge_threshold": 0.98}
    assert meta["model"]["model"] == "tiny"
    assert meta["model"]["transcoders"] == "circuitray/tiny"
    assert meta["versions"]["circuit-tracer"] == "0.5.0"


def test_resume_computes_nothing_and_duplicates_nothing(ray_run):
    before = _listing(ray_run.out)
    result = run(ray_run.config)
    assert result.computed == 0
    assert result.skipped == result.total == result.ok == N_RAY_PROMPTS
    assert result.workers == []  # no actors were started
    assert _listing(ray_run.out) == before
    ids = RunStore(ray_run.out).read_graphs()["prompt_id"].to_pylist()
    assert len(ids) == len(set(ids)) == N_RAY_PROMPTS


def test_second_driver_refused_while_lock_held(ray_run):
    holder = RunStore(ray_run.out)
    holder.acquire_lock()
    try:
        with pytest.raises(RunDirError, match="another circuitray driver"):
            run(ray_run.config)
    finally:
        holder.release_lock()


@pytest.mark.parametrize(
    "change",
    [
        {"prune": PruneConfig(node_threshold=0.7)},
        {"attribution": AttributionConfig(max_n_logits=5)},
    ],
    ids=["node_threshold", "max_n_logits"],
)
def test_other_parameters_refused(ray_run, change):
    before = _listing(ray_run.out)
    meta = RunStore(ray_run.out).read_meta()
    key = next(iter(change))
    with pytest.raises(RunDirError, match=f"different '{key}'"):
        run(replace(ray_run.config, **change))
    assert _listing(ray_run.out) == before
    assert RunStore(ray_run.out).read_meta() == meta


def test_other_prompt_file_refused(ray_run, tmp_path):
    other = write_prompts(ray_run.rows[:5], tmp_path / "other.parquet")
    with pytest.raises(RunDirError, match="prompts_sha256"):
        run(replace(ray_run.config, prompts=str(other)))


def test_bad_input_fails_before_touching_the_folder(tmp_path, monkeypatch):
    out = tmp_path / "run"
    with pytest.raises(PromptFileError, match="not found"):
        run(RunConfig(prompts=str(tmp_path / "missing.parquet"), out=str(out)))
    prompts = write_prompts([{"prompt_id": "a", "prompt": "not tall but"}], tmp_path / "p.jsonl")
    with monkeypatch.context() as m:  # a home where nothing is built yet
        m.setenv("CIRCUITRAY_HOME", str(tmp_path / "empty_home"))
        with pytest.raises(ModelLoadError, match="not built"):
            run(
                RunConfig(
                    prompts=str(prompts), out=str(out), model=ModelSpec(model="organism-tuned")
                )
            )
    with pytest.raises(ModelLoadError, match="/no/such/dir"):
        run(RunConfig(prompts=str(prompts), out=str(out), model=ModelSpec(model="/no/such/dir")))
    assert not out.exists()


# -- a run with prompts that are too long ---------------------------------------------
SHORT_AND_LONG = [
    {"prompt_id": "s0", "prompt": "not tall but", "constraint_type": "antonym", "target": "short"},
    {
        "prompt_id": "long0",
        "prompt": "the dog was blarf , so the dog was",
        "constraint_type": "simple_mapping",
        "target": "happy",
    },
    {
        "prompt_id": "s1",
        "prompt": "the word zorp means",
        "constraint_type": "simple_mapping",
        "target": "sad",
    },
    {
        "prompt_id": "s2",
        "prompt": "to rise is to move",
        "constraint_type": "spatial_relationship",
        "target": "upward",
    },
    {
        "prompt_id": "long1",
        "prompt": "when the bird starts to sink it goes",
        "constraint_type": "spatial_relationship",
        "target": "downward",
    },
    {"prompt_id": "s3", "prompt": "not wet but", "constraint_type": "antonym", "target": "dry"},
]
LONG = {"long0": 10, "long1": 9}  # tokens, BOS included


@pytest.fixture(scope="module")
def error_run(ray_run, tmp_path_factory):
    """The six prompts above with max_tokens=6 (ray_run first: Ray is already up)."""
    root = tmp_path_factory.mktemp("error_run")
    prompts = write_prompts(SHORT_AND_LONG, root / "mixed.jsonl")
    config = RunConfig(
        prompts=str(prompts),
        out=str(root / "run"),
        model=ModelSpec(model="tiny"),
        attribution=AttributionConfig(max_tokens=6, batch_size=64),
        actors=2,
        batch_size=2,
    )
    calls: list = []
    result = run(config, on_progress=lambda done, total, s: calls.append((done, total, s)))
    return config, result, calls


def _copy_run(config: RunConfig, dest: Path) -> RunConfig:
    shutil.copytree(config.out, dest)
    return replace(config, out=str(dest))


def test_too_long_prompt_is_an_error_row(error_run):
    config, result, _ = error_run
    assert (result.total, result.ok, result.errors, result.computed) == (6, 4, 2, 6)
    graphs = {g["prompt_id"]: g for g in RunStore(config.out).read_graphs().to_pylist()}
    assert sorted(graphs) == sorted(p["prompt_id"] for p in SHORT_AND_LONG)
    for pid, g in graphs.items():
        if pid in LONG:
            assert g["status"] == "error"
            assert g["n_tokens"] == LONG[pid]
            assert g["error"] == (
                f"ValueError: prompt has {LONG[pid]} tokens, more than max_tokens=6"
            )
            assert g["n_kept_edges"] is None
        else:
            assert g["status"] == "ok", g["error"]
            assert g["error"] is None and g["n_kept_edges"] > 0
    con = _duck(Path(config.out))
    err_ids = [graphs[p]["graph_id"] for p in LONG]
    assert _one(con, f"SELECT count(*) FROM nodes WHERE graph_id IN {tuple(err_ids)}") == 0
    assert _one(con, f"SELECT count(*) FROM edges WHERE graph_id IN {tuple(err_ids)}") == 0
    meta = RunStore(config.out).read_meta()
    assert meta["status"] == "complete"
    assert meta["counts"] == {"total": 6, "ok": 4, "error": 2}


def test_progress_callback(error_run):
    _, _, calls = error_run
    assert calls[0] == (0, 6, None)
    assert [c[0] for c in calls[1:]] == [1, 2, 3, 4, 5, 6]
    assert all(c[1] == 6 for c in calls)
    statuses = Counter(c[2]["status"] for c in calls[1:])
    assert statuses == {"ok": 4, "error": 2}
    assert {c[2]["prompt_id"] for c in calls[1:]} == {p["prompt_id"] for p in SHORT_AND_LONG}


def test_resume_without_retry_keeps_error_rows(error_run, tmp_path):
    config = _copy_run(error_run[0], tmp_path / "run")
    result = run(config)
    assert (result.computed, result.ok, result.errors) == (0, 4, 2)


def test_retry_errors_same_parameters_recomputes_only_errors(error_run, tmp_path):
    config = _copy_run(error_run[0], tmp_path / "run")
    result = run(replace(config, retry_errors=True))
    # Same max_tokens: the two long prompts are attributed again and fail again.
    assert (result.computed, result.ok, result.errors, result.skipped) == (2, 4, 2, 4)
    graphs = RunStore(config.out).read_graphs()
    ids = graphs["prompt_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 6
    errors = graphs.filter(pc.equal(graphs["status"], "error"))
    assert sorted(errors["prompt_id"].to_pylist()) == sorted(LONG)


def test_retry_errors_with_larger_max_tokens_turns_rows_ok(error_run, tmp_path):
    config = _copy_run(error_run[0], tmp_path / "run")
    bigger = replace(
        config,
        attribution=replace(config.attribution, max_tokens=64),
        retry_errors=True,
    )
    result = run(bigger)
    assert (result.computed, result.ok, result.errors) == (2, 6, 0)
    graphs = RunStore(config.out).read_graphs()
    ids = graphs["prompt_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 6
    assert set(graphs["status"].to_pylist()) == {"ok"}


def test_retry_errors_turns_error_rows_ok(ray_run, tmp_path):
    """Error rows (here injected into a copy of the good run) are recomputed into ok rows."""
    config = _copy_run(ray_run.config, tmp_path / "run")
    store = RunStore(config.out)
    before = {g["graph_id"]: g for g in store.read_graphs().to_pylist()}
    part = Path(store.part_files("graphs")[0])
    g = pq.read_table(part)
    bad = g["graph_id"].to_pylist()[:2]
    rows = g.to_pylist()
    for row in rows:
        if row["graph_id"] in bad:
            for k in row:
                if k not in ("graph_id", "prompt_id", "constraint_type", "prompt", "target"):
                    row[k] = None
            row.update(status="error", error="RuntimeError: injected")
    pq.write_table(pa.Table.from_pylist(rows, schema=g.schema), part)
    for table in ("nodes", "edges"):
        p = store.table_dir(table) / part.name
        t = pq.read_table(p)
        pq.write_table(t.filter(pc.invert(pc.is_in(t["graph_id"], pa.array(bad, pa.int32())))), p)
    assert sum(s == "error" for s in store.graph_status().values()) == 2

    result = run(replace(config, retry_errors=True))
    assert (result.computed, result.ok, result.errors) == (2, N_RAY_PROMPTS, 0)
    after = {g["graph_id"]: g for g in store.read_graphs().to_pylist()}
    ids = [g["prompt_id"] for g in after.values()]
    assert len(ids) == len(set(ids)) == N_RAY_PROMPTS
    assert store.read_graphs().num_rows == N_RAY_PROMPTS
    for gid in bad:
        # Attribution is deterministic: the recomputed graph is the same circuit.
        assert after[gid]["status"] == "ok"
        for k in ("n_active_features", "n_kept_nodes", "n_kept_edges"):
            assert after[gid][k] == before[gid][k], k
    con = _duck(Path(config.out))
    assert _one(con, "SELECT count(*) - count(DISTINCT (graph_id, node_id)) FROM nodes") == 0
    sql = f"SELECT count(DISTINCT graph_id) FROM edges WHERE graph_id IN {tuple(bad)}"
    assert _one(con, sql) == 2
    meta = json.loads((Path(config.out) / "run.json").read_text())
    assert meta["counts"] == {"total": N_RAY_PROMPTS, "ok": N_RAY_PROMPTS, "error": 0}


def test_actor_load_failure_is_a_model_load_error(ray_run, tmp_path):
    empty = tmp_path / "no_transcoders"
    empty.mkdir()
    config = replace(
        ray_run.config,
        out=str(tmp_path / "run"),
        model=ModelSpec(model="tiny", transcoder_cache_dir=str(empty)),
        max_attempts=1,
    )
    with pytest.raises(ModelLoadError, match="circuitray/tiny"):
        run(config)


# -- reproducibility from run.json alone ---------------------------------------------
def test_third_party_recomputes_stored_edges_from_run_json(ray_run):
    """Only run.json, the prompt file and circuit-tracer: the same kept edges."""
    import torch
    from circuit_tracer import ReplacementModel, attribute
    from circuit_tracer.graph import prune_graph
    from circuit_tracer.utils.hf_utils import load_transcoder_from_hub

    out = Path(ray_run.out)
    meta = json.loads((out / "run.json").read_text())
    m = meta["model"]
    transcoders, _ = load_transcoder_from_hub(
        m["transcoders"], cache_dir=m["transcoder_cache_dir"], device=torch.device("cpu")
    )
    model = ReplacementModel.from_pretrained_and_transcoders(
        m["model_path"], transcoders, backend=m["backend"], device=torch.device("cpu")
    )
    prompts = pq.read_table(meta["prompts"]).to_pylist()
    assert meta["attribution"]["target"] == "top"  # attribute()'s own logits
    kwargs = {k: v for k, v in meta["attribution"].items() if k not in ("max_tokens", "target")}
    con = _duck(out)
    for graph_id in (0, 7, N_RAY_PROMPTS - 1):
        graph = attribute(prompts[graph_id]["prompt"], model, **kwargs)
        _, edge_mask, _ = prune_graph(graph, **meta["prune"])
        dst, src = torch.nonzero(edge_mask, as_tuple=True)
        expected = {
            (int(d), int(s)): float(graph.adjacency_matrix[d, s])
            for d, s in zip(dst, src, strict=True)
        }
        stored = {
            (d, s): w
            for d, s, w in con.sql(
                f"SELECT dst, src, weight FROM edges WHERE graph_id = {graph_id}"
            ).fetchall()
        }
        assert stored.keys() == expected.keys(), graph_id
        for key, w in expected.items():
            assert abs(stored[key] - w) <= 1e-6 * max(1.0, abs(w)), (graph_id, key)
