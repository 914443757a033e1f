"""pipelines/ws2_base_vs_tuned.py runs one corpus on base and tuned and prints both."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]


def test_base_vs_tuned_pipeline(organism_report, tmp_path):
    out = tmp_path / "pipeline"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "pipelines" / "ws2_base_vs_tuned.py"),
            "--n",
            "12",
            "--out-root",
            str(out),
            "--actors",
            "1",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if "│" in ln]
    rows = [[c.strip() for c in ln.split("│")] for ln in lines]
    pairs = {(r[0], r[1]) for r in rows}
    for run in ("base", "tuned"):
        for ctype in ("simple_mapping", "spatial_relationship", "antonym"):
            assert (run, ctype) in pairs, proc.stdout
    graphs = {run: pq.read_table(out / run / "graphs").to_pylist() for run in ("base", "tuned")}
    assert len(graphs["base"]) == len(graphs["tuned"]) == 12
    # The same prompts ran on both checkpoints.
    assert sorted(g["prompt_id"] for g in graphs["base"]) == sorted(
        g["prompt_id"] for g in graphs["tuned"]
    )
    tuned_acc = sum(g["top_token"] == g["target_token"] for g in graphs["tuned"]) / 12
    base_acc = sum(g["top_token"] == g["target_token"] for g in graphs["base"]) / 12
    assert tuned_acc > base_acc, (tuned_acc, base_acc)
