"""The organism build: reused while unchanged, rebuilt when edited, and robust to the
CPU's float kernels (a build under torch's portable ``default`` kernels, in a fresh
process, still meets every threshold of the report)."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

from circuitray.models.registry import circuitray_home
from circuitray.organism import OrganismConfig, build_organism
from circuitray.organism.build import adopt_build, reusable_report


def _mtimes(root: Path) -> dict[Path, int]:
    return {f: f.stat().st_mtime_ns for f in root.rglob("*") if f.is_file()}


def test_an_unchanged_build_is_reused_and_an_edited_one_rebuilt(tmp_path, monkeypatch, micro):
    monkeypatch.setenv("CIRCUITRAY_HOME", str(tmp_path / "home"))
    config = OrganismConfig.from_dict(micro)
    first = build_organism(config)
    assert first["reused"] is False and first["training"]["tuned_steps"] <= 60
    files = _mtimes(tmp_path / "home")
    second = build_organism(config)
    assert second["reused"] is True
    assert second["build"]["key"] == first["build"]["key"]
    assert second["accuracy"] == first["accuracy"]
    assert _mtimes(tmp_path / "home") == files  # no artifact, not even the report, rewritten

    # An edited recipe is another build.
    edited = build_organism(replace(config, tuned_lr=config.tuned_lr / 2))
    assert edited["reused"] is False and edited["build"]["key"] != first["build"]["key"]
    assert reusable_report(config) is None  # the saved build is now the edited one
    assert reusable_report(replace(config, tuned_lr=config.tuned_lr / 2)) is not None

    # A damaged artifact is not reused.
    weights = circuitray_home() / "models" / "organism-tuned" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1])
    assert reusable_report(replace(config, tuned_lr=config.tuned_lr / 2)) is None


def test_a_build_is_adopted_from_another_home(tmp_path, monkeypatch, micro):
    config = OrganismConfig.from_dict(micro)
    monkeypatch.setenv("CIRCUITRAY_HOME", str(tmp_path / "a"))
    built = build_organism(config)
    monkeypatch.setenv("CIRCUITRAY_HOME", str(tmp_path / "b"))
    assert not adopt_build(replace(config, seed=1), source_home=tmp_path / "a")
    assert adopt_build(config, source_home=tmp_path / "a")
    report = build_organism(config)
    assert report["reused"] is True and report["build"] == built["build"]
    assert report["artifacts"]["sha256"] == built["artifacts"]["sha256"]
    assert Path(report["artifacts"]["organism-tuned"]).is_relative_to(tmp_path / "b")
    saved = json.loads((tmp_path / "b" / "models" / "organism-report.json").read_text())
    assert Path(saved["artifacts"]["transcoders"]).is_relative_to(tmp_path / "b")


def test_cli_config_file_errors_are_one_line(tmp_path, cli):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tuned_stepz: 3\n")
    proc = subprocess.run(
        [*cli, "organism", "build", "--config", str(bad)],
        capture_output=True,
        text=True,
        env={**os.environ, "CIRCUITRAY_HOME": str(tmp_path / "home")},
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {bad}: unknown organism config field(s): tuned_stepz"
    ]


def test_full_recipe_on_default_cpu_kernels_meets_thresholds_and_is_reused(tmp_path, cli):
    """The recipe as ``make setup`` runs it (fewer graph samples, one thread), built in a
    fresh process on torch's portable kernels: other CPUs' last bits must not matter."""
    config = tmp_path / "organism.yaml"
    config.write_text("n_graph_samples: 2\nthreads: 1\n")
    env = {
        **os.environ,
        "CIRCUITRAY_HOME": str(tmp_path / "home"),
        "ATEN_CPU_CAPABILITY": "default",
    }
    cmd = [*cli, "organism", "build", "--config", str(config), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["build"]["cpu_capability"] == "DEFAULT"
    assert report["build"]["torch_threads"] == 1
    failed = [k for k, ok in report["acceptance"].items() if not ok]
    assert report["passed"] and not failed, failed
    assert not report["training"]["tuned_capped"], report["training"]
    for name, tuned in report["accuracy"]["tuned"].items():
        assert tuned["accuracy"] >= 0.95, (name, tuned)

    # `make setup` again: the same command reuses the build and writes nothing.
    files = _mtimes(tmp_path / "home")
    again = subprocess.run(cmd[:-1], capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "up to date" in again.stdout
    assert _mtimes(tmp_path / "home") == files
