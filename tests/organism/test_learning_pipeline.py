"""pipelines/ws2_learning_dynamics.yaml: organism checkpoints -> series -> queries -> report."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from conftest import CLI, assert_one_line_error, circuitray

REPO = Path(__file__).resolve().parents[2]
PIPELINE = REPO / "pipelines" / "ws2_learning_dynamics.yaml"


def test_learning_dynamics_pipeline_on_the_organism(organism_report, tmp_path):
    doc = yaml.safe_load(PIPELINE.read_text())
    doc["series"]["organism"]["per_type"] = 2  # the shipped file: 20 per type
    small = tmp_path / "pipeline.yaml"
    small.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    p = subprocess.run(
        [*CLI, "pipeline", "run", small, "--out-root", out, "--actors", "1"],
        capture_output=True, text=True, env=dict(os.environ), timeout=1200,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    n_steps = organism_report["training"]["checkpoints"]
    runs = sorted(d.name for d in (out / "organism").iterdir() if d.name.startswith("step-"))
    assert len(runs) == n_steps
    curves = pq.read_table(out / "results" / "learning_curves-organism.parquet").to_pylist()
    assert len({r["step"] for r in curves}) == n_steps
    assert {r["constraint_type"] for r in curves} == {
        "simple_mapping", "spatial_relationship", "antonym",
    }  # fmt: skip
    last = max(r["step"] for r in curves)
    assert all(r["accuracy"] == 1.0 for r in curves if r["step"] == last)
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
