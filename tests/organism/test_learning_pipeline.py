"""pipelines/ws2_learning_dynamics.yaml: organism checkpoints -> series -> queries -> report."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import CLI, assert_one_line_error, circuitray

REPO = Path(__file__).resolve().parents[2]
PIPELINE = REPO / "pipelines" / "ws2_learning_dynamics.yaml"
# A bound, not a goal: the long variant takes about 10 min alone on 2 Intel cores, and
# hit 1200 s beside the chaos soak; AMD machines of this kind run 2-3x slower.
TIMEOUT_S = {"ci": 1200, "long": 3600}


@pytest.mark.parametrize(
    "size", ["ci", pytest.param("long", marks=pytest.mark.long)]
)  # fmt: skip
def test_learning_dynamics_pipeline_on_the_organism(organism_report, tmp_path, size):
    """CI: the shipped file at the first and last checkpoints, 2 prompts per type (the
    smallest series with a trajectory); long: the shipped file as it is (every
    checkpoint, 20 prompts per type: ``make dynamics``)."""
    from circuitray.finetune.manifest import read_manifest
    from circuitray.models.registry import circuitray_home

    manifest = read_manifest(circuitray_home() / "models" / "organism-finetune")
    all_steps = [c["step"] for c in manifest["checkpoints"]]
    doc = yaml.safe_load(PIPELINE.read_text())
    steps = all_steps
    if size == "ci":
        steps = [all_steps[0], all_steps[-1]]
        doc["series"]["organism"].update(per_type=2, steps=steps)
    small = tmp_path / "pipeline.yaml"
    small.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    p = subprocess.run(
        [*CLI, "pipeline", "run", small, "--out-root", out, "--actors", "1"],
        capture_output=True, text=True, env=dict(os.environ), timeout=TIMEOUT_S[size],
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(all_steps) == organism_report["training"]["checkpoints"]
    runs = sorted(d.name for d in (out / "organism").iterdir() if d.name.startswith("step-"))
    assert runs == [f"step-{s:06d}" for s in steps]
    curves = pq.read_table(out / "results" / "learning_curves-organism.parquet").to_pylist()
    assert sorted({r["step"] for r in curves}) == steps
    for run in runs:  # every checkpoint explains the answer: its one logit node
        graphs = pq.read_table(out / "organism" / run / "graphs").to_pylist()
        assert {(g["target_mode"], g["n_logits"]) for g in graphs} == {("answer", 1)}, run
        assert all(g["target_token_id"] is not None for g in graphs), run
    base_acc = sum(r["accuracy"] for r in curves if r["step"] == 0) / 3
    assert base_acc < 0.9  # at chance (0.125-0.25): with 2 prompts per type, a few right
    assert {r["constraint_type"] for r in curves} == {
        "simple_mapping", "spatial_relationship", "antonym",
    }  # fmt: skip
    last = max(r["step"] for r in curves)
    least = 1.0 if size == "ci" else 0.9  # 20 held-out prompts per type may miss one
    assert all(r["accuracy"] >= least for r in curves if r["step"] == last), curves
    assert (out / "results" / "convergence-organism.parquet").exists()
    assert (out / "results" / "feature_dynamics-organism.parquet").exists()
    assert "convergence-organism" in p.stdout
    html = (out / "report.html").read_text()
    assert "Trajectory" in html


def test_pipeline_learning_steps_are_checked(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "series": {"s": {"finetune": "nope"}}}))
    assert_one_line_error(circuitray("pipeline", "run", bad, "--out-root", tmp_path), "series.s")
    bad.write_text(
        yaml.safe_dump(
            {
                "name": "x",
                "finetune": {"f": {"base": "tiny", "steps": 0}},
                "series": {"s": {"finetune": "f"}},
            }  # fmt: skip
        )
    )
    assert_one_line_error(
        circuitray("pipeline", "run", bad, "--out-root", tmp_path), "finetune.f", "steps"
    )


def test_pipeline_learning_names_and_references_are_checked(tmp_path):
    base = {"name": "x", "finetune": {"f": {"manifest": "organism"}}}
    cases = [
        ({"series": {"../up": {"finetune": "f"}}}, "series.../up"),
        ({"series": {"results": {"finetune": "f"}}}, "series.results"),
        ({"series": {"s": {"finetune": "f", "per_type": 0}}}, "per_type"),
        ({"series": {"s": {"finetune": "f"}}, "report": {"out": "../r.html"}}, "report.out"),
        (
            {"series": {"s": {"finetune": "f"}}, "compare": [{"run": "s"}]},
            "is a series",
        ),
        (
            {
                "finetune": {"f": {"base": "tiny", "ray_workers": "two"}},
                "series": {"s": {"finetune": "f"}},
            },  # fmt: skip
            "ray_workers",
        ),
    ]
    for extra, needle in cases:
        bad = tmp_path / "p.yaml"
        bad.write_text(yaml.safe_dump({**base, **extra}))
        p = circuitray("pipeline", "run", bad, "--out-root", tmp_path / "o")
        assert_one_line_error(p, needle)
        assert not (tmp_path / "o").exists()
