"""`circuitray intervene` on a real local Ray: exactly-once results, resume, actor
failures, query-sourced feature sets and bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import assert_one_line_error, assert_refused, circuitray

from circuitray.jobs.intervention_job import InterventionConfig, intervene
from circuitray.query.engine import run_query
from circuitray.storage.run_store import InterventionStore, RunStore

SPECS = ["top:2", "random:2", "single:2"]


def _results(out: Path) -> list[dict]:
    t = InterventionStore(out).read_table("results")
    return [] if t is None else t.to_pylist()


def _keys(rows: list[dict]) -> Counter:
    return Counter((r["graph_id"], r["spec_index"], r["rank"]) for r in rows)


def _expected_keys(rows: list[dict], n_graphs: int) -> None:
    """Every graph has one top and one random row and 1..2 single rows, each once."""
    keys = _keys(rows)
    assert set(keys.values()) == {1}, [k for k, v in keys.items() if v > 1]
    by_graph = Counter(r["graph_id"] for r in rows)
    assert len(by_graph) == n_graphs
    for gid in by_graph:
        specs = Counter(r["spec_index"] for r in rows if r["graph_id"] == gid)
        assert specs[0] == 1 and specs[1] == 1 and 1 <= specs[2] <= 2, (gid, specs)


@pytest.fixture(scope="module")
def interventions(ray_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("iv") / "iv"
    config = InterventionConfig(
        run=str(ray_run.out), out=str(out), features=SPECS, actors=2, batch_size=4
    )
    return config, intervene(config)


def test_every_prompt_and_intervention_exactly_once(interventions, ray_run):
    config, result = interventions
    ok_graphs = [g for g in RunStore(ray_run.out).read_graphs().to_pylist() if g["status"] == "ok"]
    assert result.total == len(ok_graphs) and result.ok == result.total, result
    rows = _results(Path(config.out))
    _expected_keys(rows, len(ok_graphs))
    assert {r["status"] for r in rows} == {"ok"}
    by_id = {g["graph_id"]: g for g in ok_graphs}
    for r in rows:  # rows carry their prompt
        g = by_id[r["graph_id"]]
        assert (r["prompt_id"], r["constraint_type"]) == (g["prompt_id"], g["constraint_type"])
    meta = json.loads((Path(config.out) / "intervention.json").read_text())
    assert meta["status"] == "complete" and meta["counts"]["results"] == len(rows)
    assert [s["text"] for s in meta["plan"]["specs"]] == SPECS
    assert meta["model"]["model"] == "tiny"


def test_row_contents(interventions):
    config, _ = interventions
    rows = _results(Path(config.out))
    for r in rows:
        assert r["frame"] == "model" and r["scale"] == 0.0
        assert len(r["features"]) == r["n_features"]
        assert r["n_features"] == (2 if r["spec_index"] == 1 else r["n_features"])
        assert 0.0 <= r["target_prob_before"] <= 1.0 and 0.0 <= r["target_prob_after"] <= 1.0
        assert r["kl"] >= -1e-6
        if r["spec_index"] == 2:  # single: one node of the stored graph each
            assert r["n_features"] == r["n_in_graph"] == 1 and r["rank"] >= 1
    # The logit columns say what target_logit_change means: not the raw difference
    # (that includes the shift of every logit) but close to it.
    changed = [r for r in rows if r["n_features"]]
    assert any(
        abs(r["target_logit_change"] - (r["target_logit_after"] - r["target_logit_before"])) > 1e-6
        for r in changed
    )


def test_resume_computes_nothing(interventions):
    config, _ = interventions
    before = _keys(_results(Path(config.out)))
    again = intervene(config)
    assert again.computed == 0 and again.skipped == again.total
    assert _keys(_results(Path(config.out))) == before


def test_other_plan_refused(interventions):
    config, _ = interventions
    p = circuitray(
        "intervene", config.run, "--out", config.out, "--features", "top:3", "--actors", "1"
    )
    assert_refused(p, config.out, "plan")


def test_killed_actor_mid_intervention_then_resume(ray_run, tmp_path):
    out = tmp_path / "iv"
    killed: list[int] = []

    def kill_one_worker(done, total, summary):
        if summary and not killed:
            pid = int(summary["worker"].rsplit(":", 1)[1])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    config = InterventionConfig(
        run=str(ray_run.out), out=str(out), features=SPECS, actors=2, batch_size=2
    )
    result = intervene(config, on_progress=kill_one_worker)
    assert killed and result.retried_batches >= 1, result
    rows = _results(out)
    _expected_keys(rows, result.total)
    assert {r["status"] for r in rows} == {"ok"}

    # A crash between parts: drop one committed part; the resume computes just it.
    store = InterventionStore(out)
    parts = store.part_files("results")
    assert len(parts) == 1  # compacted at the end
    compacted = _keys(rows)
    t = pq.read_table(parts[0])
    lost = sorted({g for g, *_ in compacted})[:3]
    keep = t.filter(pc.invert(pc.is_in(t["graph_id"], pa.array(lost, pa.int32()))))
    pq.write_table(keep, parts[0])
    resumed = intervene(config)
    assert resumed.computed == len(lost) and resumed.skipped == resumed.total - len(lost)
    after = _results(out)
    _expected_keys(after, result.total)
    assert set(_keys(after)) == set(compacted)


def test_query_spec_tests_the_features_sql_found(ray_run, tmp_path):
    spec = "query:top_features?top_k=2&constraint_type=simple_mapping"
    out = tmp_path / "iv"
    result = intervene(
        InterventionConfig(run=str(ray_run.out), out=str(out), features=[spec], actors=1, limit=4)
    )
    assert result.ok == 4
    top = run_query("top_features", [str(ray_run.out)], params={"top_k": "2"}).to_pylist()
    expected = [[r["layer"], r["feature"]] for r in top if r["constraint_type"] == "simple_mapping"]
    plan = json.loads((out / "intervention.json").read_text())["plan"]
    assert plan["specs"][0]["features"] == expected and len(expected) == 2
    for r in _results(out):  # ablated wherever those features are active, nowhere else
        assert {(f["layer"], f["feature"]) for f in r["features"]} <= {tuple(e) for e in expected}


def test_cli_prints_effects_and_json(ray_run, tmp_path):
    out = tmp_path / "iv"
    args = ["intervene", str(ray_run.out), "--out", str(out), "--features", "top:1"]
    p = circuitray(*args, "--features", "2:5,1:7", "--limit", "3", "--actors", "1")
    assert p.returncode == 0, p.stderr
    assert "top:1" in p.stdout and "2:5,1:7" in p.stdout and "mean_change" in p.stdout
    p = circuitray(*args, "--features", "2:5,1:7", "--limit", "3", "--actors", "1", "--json")
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["computed"] == 0 and summary["skipped"] == 3 and summary["results"] == 6


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--features", "top:0"], ["top:0", "K"]),
        (["--features", "3:x"], ["'3:x'", "LAYER:FEATURE"]),
        (["--features", "query:constraint_stats"], ["constraint_stats", "layer"]),
        (["--features", "query:no_such_query"], ["no_such_query"]),
        (["--features", "query:top_features?top_k=oops"], ["top_k"]),
        (["--features", "9:1"], ["9:1", "layers 0-3"]),
        (["--features", "top:1", "--constrained-layers", "2-9"], ["2-9", "layers 0-3"]),
        (["--features", "top:1", "--constrained-layers", "x"], ["'x'", "all"]),
        (["--features", "top:1", "--type", "no_such_type"], ["no_such_type", "types"]),
    ],
)
def test_bad_input_is_one_line(ray_run, tmp_path, args, needles):
    out = tmp_path / "iv"
    p = circuitray("intervene", str(ray_run.out), "--out", str(out), "--limit", "1", *args)
    assert_one_line_error(p, *needles)


def test_missing_run_folder_and_same_folder(ray_run, tmp_path):
    p = circuitray(
        "intervene", str(tmp_path / "nope"), "--out", str(tmp_path / "iv"), "--features", "top:1"
    )
    assert_one_line_error(p, "nope", "run.json")
    p = circuitray("intervene", str(ray_run.out), "--out", str(ray_run.out), "--features", "top:1")
    assert_one_line_error(p, "source run")


def test_retry_errors_recomputes_prompts_with_error_rows(ray_run, tmp_path):
    from dataclasses import replace

    from circuitray.jobs.intervention_job import InterventionJob

    out = tmp_path / "iv"
    config = InterventionConfig(
        run=str(ray_run.out), out=str(out), features=["top:1"], actors=1, limit=4
    )
    intervene(config)
    # Two prompts' batch ran out of attempts: the driver wrote error rows for them.
    (part,) = InterventionStore(out).part_files("results")
    t = pq.read_table(part)
    failed = sorted(set(t["graph_id"].to_pylist()))[:2]
    pq.write_table(t.filter(pc.invert(pc.is_in(t["graph_id"], pa.array(failed, pa.int32())))), part)
    graphs = {g["graph_id"]: g for g in RunStore(ray_run.out).read_graphs().to_pylist()}
    InterventionStore(out).write_part(
        "part-failed", InterventionJob.error_tables([(g, graphs[g]) for g in failed], "x")
    )

    again = intervene(config)
    assert (again.computed, again.errors) == (0, 2)
    fixed = intervene(replace(config, retry_errors=True))
    assert (fixed.computed, fixed.errors, fixed.ok) == (2, 0, 4)
    rows = _results(out)
    assert set(_keys(rows).values()) == {1} and len(rows) == 4
    assert {r["status"] for r in rows} == {"ok"}


def test_run_and_intervention_folders_are_not_mixed(interventions, ray_run, tmp_path):
    config, _ = interventions
    other_run = tmp_path / "other"
    shutil.copytree(ray_run.out, other_run)
    p = circuitray("intervene", ray_run.out, "--out", other_run, "--features", "top:1")
    assert_refused(p, str(other_run), "is a run folder")
    p = circuitray("run", ray_run.prompts, "--out", config.out, "--model", "tiny")
    assert_refused(p, config.out, "is an intervention folder")
