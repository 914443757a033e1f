"""``circuitray series``: one run per checkpoint, the same prompts, ``step`` recorded."""

from __future__ import annotations

import json

import pytest
from conftest import assert_one_line_error, circuitray

from circuitray.errors import CircuitrayError
from circuitray.finetune.config import FinetuneConfig
from circuitray.jobs.series import SeriesConfig, run_series


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from circuitray.finetune.local import finetune

    out = tmp_path_factory.mktemp("ft") / "tiny-ft"
    finetune(
        FinetuneConfig(
            base="tiny",
            out=str(out),
            steps=6,
            checkpoints=3,
            first_checkpoint=2,
            batch_size=4,
            eval_per_type=2,
            ws2_n=300,
            threads=1,
        )  # fmt: skip
    )
    return out / "finetune.json"


@pytest.fixture(scope="module")
def series(manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("series") / "tiny-series"
    result = run_series(SeriesConfig(manifest=str(manifest), out=str(out), per_type=2, actors=1))
    return out, result


def test_every_checkpoint_is_a_run_of_the_same_prompts(manifest, series):
    out, result = series
    steps = [c["step"] for c in json.loads(manifest.read_text())["checkpoints"]]
    assert sorted(result.runs) == steps == [0, 2, 6]
    meta = json.loads((out / "series.json").read_text())
    assert [r["step"] for r in meta["runs"]] == steps
    assert meta["transcoders"] == "circuitray/tiny"
    for r in meta["runs"]:
        run_json = json.loads((out / r["run"] / "run.json").read_text())
        assert run_json["step"] == r["step"] and run_json["status"] == "complete"
        assert run_json["prompts_sha256"] == meta["prompts_sha256"]
    assert all(r.ok == 6 and r.errors == 0 for r in result.runs.values())  # 2 x 3 types


def test_the_views_see_the_series_with_a_step_column(series):
    from circuitray.query.engine import run_sql

    out, _ = series
    t = run_sql([str(out)], "SELECT step, count(*) AS n, count(DISTINCT prompt_id) AS p "
                "FROM graphs GROUP BY step ORDER BY step").to_pylist()  # fmt: skip
    assert t == [{"step": s, "n": 6, "p": 6} for s in (0, 2, 6)]


def test_a_rerun_computes_nothing_and_another_manifest_is_refused(manifest, series, tmp_path):
    out, _ = series
    again = run_series(SeriesConfig(manifest=str(manifest), out=str(out), per_type=2, actors=1))
    assert all(r.computed == 0 and r.skipped == 6 for r in again.runs.values())
    # A rerun of one step keeps the other steps listed.
    run_series(SeriesConfig(manifest=str(manifest), out=str(out), per_type=2, steps=[2]))
    listed = json.loads((out / "series.json").read_text())["runs"]
    assert [r["step"] for r in listed] == [0, 2, 6]
    with pytest.raises(CircuitrayError, match="other prompts"):  # another --per-type
        run_series(SeriesConfig(manifest=str(manifest), out=str(out), per_type=1))
    from circuitray.finetune.manifest import checkpoint_path

    m = json.loads(manifest.read_text())
    for c in m["checkpoints"]:  # the same checkpoints, another manifest's bytes
        c["path"] = str(checkpoint_path(manifest, c))
    m["config"]["lr"] = 0.5
    other = tmp_path / "finetune.json"
    other.write_text(json.dumps(m))
    with pytest.raises(CircuitrayError, match="another manifest"):
        run_series(SeriesConfig(manifest=str(other), out=str(out), per_type=2))


def test_a_two_step_series_reports_first_and_last(manifest, series, tmp_path):
    import shutil

    from circuitray.outputs.report import build_report

    # The first and last steps of the module's series, copied: what is already there
    # is kept, so the two-step series attributes nothing again.
    done, _ = series
    out = tmp_path / "two"
    listed = json.loads((done / "series.json").read_text())["runs"]
    for r in listed:
        if r["step"] in (0, 6):
            shutil.copytree(done / r["run"], out / r["run"])
    two = run_series(SeriesConfig(manifest=str(manifest), out=str(out), per_type=2, steps=[0, 6]))
    assert sorted(two.runs) == [0, 6]
    assert all(r.computed == 0 and r.skipped == 6 for r in two.runs.values())
    build_report([str(out)], str(tmp_path / "r.html"))
    html = (tmp_path / "r.html").read_text()
    assert "Trajectory over fine-tuning" in html and "step-000006" in html


def test_cli_errors_are_one_line(manifest, tmp_path):
    p = circuitray("series", manifest, "--out", tmp_path / "s", "--step", "5")
    assert_one_line_error(p, "no checkpoint at step 5")
    p = circuitray("series", tmp_path / "nope.json", "--out", tmp_path / "s")
    assert_one_line_error(p, "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert_one_line_error(circuitray("series", bad, "--out", tmp_path / "s"), "bad.json")


def test_the_report_draws_the_trajectory_of_a_series(series, tmp_path):
    import pandas as pd

    from circuitray.outputs.report import build_report, trajectory_bands
    from circuitray.query.engine import connect, query_statements

    out, _ = series
    con = connect([str(out)])
    try:
        [(trajectory, _)] = query_statements("trajectory")  # the report's named query
        rows = con.sql(trajectory).df()
        graphs = con.sql("SELECT * FROM graphs WHERE status = 'ok'").df()
    finally:
        con.close()
    assert len(rows) == len(graphs) == 18
    last = rows[rows["step"] == rows["step"].max()]
    assert (last["jaccard_final"] == 1.0).all()  # every prompt's graph against itself
    bands = trajectory_bands(rows, n_boot=200, seed=0)
    top1 = (graphs["top_token"] == graphs["target_token"]).astype(float)
    expect = top1.groupby([graphs["constraint_type"], graphs["step"]]).mean()
    acc = bands[bands["metric"] == "top1"].set_index(["constraint_type", "step"])["mean"]
    pd.testing.assert_series_equal(
        acc.sort_index(), expect.sort_index(), check_names=False, check_index_type=False
    )
    assert (bands["lo"] <= bands["mean"] + 1e-12).all() and (
        bands["mean"] <= bands["hi"] + 1e-12
    ).all()
    info = build_report([str(out)], str(tmp_path / "r.html"))
    html = (tmp_path / "r.html").read_text()
    assert "Trajectory over fine-tuning" in html and "Convergence" in html
    assert (
        "step-000000" in html
        and "step-000006" in html
        and "step-000002" not in html.split("Trajectory")[0]
    )
    assert info["plots"] > 0
