"""``circuitray finetune`` on one device: checkpoints, manifest, and exact resume."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import assert_refused, circuitray

from circuitray.finetune.manifest import checkpoint_path, read_manifest
from circuitray.finetune.schedule import checkpoint_steps

STEPS, K = 24, 5


@pytest.fixture(scope="module")
def tiny_finetune(tmp_path_factory):
    out = tmp_path_factory.mktemp("finetune") / "tiny-ft"
    p = circuitray(
        "finetune", "--base", "tiny", "--out", out, "--steps", STEPS, "--checkpoints", K,
        "--first-checkpoint", 2, "--batch-size", 8, "--eval-per-type", 4, "--threads", 1,
        "--ws2-n", 600,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    return out, p.stdout


def test_manifest_records_every_checkpoint_and_hyper_parameter(tiny_finetune):
    out, stdout = tiny_finetune
    m = read_manifest(out)
    steps = [c["step"] for c in m["checkpoints"]]
    assert steps == checkpoint_steps(steps=STEPS, k=K, first=2)
    assert m["config"]["steps"] == STEPS and m["config"]["method"] == "full"
    assert len(m["data"]["sha256"]) == 64 and m["data"]["n_train"] > 0
    assert m["transcoders"] == "circuitray/tiny"
    per_type = {r["constraint_type"] for r in m["data"]["heldout"]}
    assert len(m["data"]["heldout"]) == 4 * len(per_type)
    base = m["checkpoints"][0]
    assert base["train_loss"] is None and base["examples_seen"] == 0
    assert (checkpoint_path(out, base) / "config.json").exists()  # the base's own folder
    for c in m["checkpoints"][1:]:
        assert c["examples_seen"] == c["step"] * 8
        assert c["train_loss"] > 0
        assert set(c["heldout"]) == per_type
        for v in c["heldout"].values():
            assert 0 <= v["accuracy"] <= 1 and 0 < v["target_prob"] < 1
        assert sorted(c["transcoder_fit"]) == ["0", "1", "2", "3"]
        assert (out / c["path"] / "model.safetensors").exists()
    # The base's transcoders fit the base better than the last checkpoint's MLPs.
    fit0 = base["transcoder_fit"]["3"]["explained_variance"]
    assert m["checkpoints"][-1]["transcoder_fit"]["3"]["explained_variance"] < fit0
    assert f"{STEPS}" in stdout  # the summary table lists the last step


def test_checkpoints_load_through_the_run_path_and_differ(tiny_finetune):
    from circuit_tracer import attribute
    from safetensors.torch import load_file

    from circuitray.models.loading import ModelSpec, load_replacement_model

    out, _ = tiny_finetune
    m = read_manifest(out)
    weights = [load_file(checkpoint_path(out, c) / "model.safetensors") for c in m["checkpoints"]]
    key = next(k for k in weights[0] if "mlp.down_proj" in k)
    for a, b in zip(weights, weights[1:], strict=False):
        assert not torch.equal(a[key], b[key])
    last = checkpoint_path(out, m["checkpoints"][-1])
    model = load_replacement_model(ModelSpec(model=str(last), transcoders="circuitray/tiny"))
    graph = attribute("blarf means", model, batch_size=64)
    assert graph.adjacency_matrix.shape[0] > 0


def test_a_resumed_training_equals_an_uninterrupted_one(circuitray_home):
    """``train_lm``'s resumable state (what Ray Train checkpoints hold) continues the
    same batches, rates and optimizer moments: bit-identical weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from circuitray.finetune.data import completed
    from circuitray.finetune.train_lm import train_lm
    from circuitray.models.registry import resolve_model
    from circuitray.prompts.ws2 import generate_ws2

    path, _ = resolve_model("tiny")
    tok = AutoTokenizer.from_pretrained(path)
    texts = [completed(r) for r in generate_ws2(n=200, seed=0)]
    args = {"steps": 12, "batch_size": 4, "lr": 1e-3, "seed": 3, "log_every": 0}
    full = AutoModelForCausalLM.from_pretrained(path)
    train_lm(full, tok, texts, **args)

    first = AutoModelForCausalLM.from_pretrained(path)
    saved: dict = {}

    def keep(step, log, state):
        if step == 5:
            saved["state"] = copy.deepcopy(state())
            saved["weights"] = copy.deepcopy(first.state_dict())

    train_lm(first, tok, texts, on_step=keep, **args)
    resumed = AutoModelForCausalLM.from_pretrained(path)
    resumed.load_state_dict(saved["weights"])
    log = train_lm(resumed, tok, texts, resume=saved["state"], **args)
    assert log.steps == 12 and len(log.losses) == 12
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_another_fine_tune_in_the_same_folder_is_refused(tiny_finetune):
    out, _ = tiny_finetune
    before = (out / "finetune.json").read_bytes()
    p = circuitray("finetune", "--base", "tiny", "--out", out, "--steps", 3, "--lr", 0.5)
    assert_refused(p, str(out), "another fine-tune")
    assert (out / "finetune.json").read_bytes() == before


def test_a_prompt_file_without_targets_is_one_line(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text(json.dumps({"prompt_id": "a", "prompt": "blarf means"}) + "\n")
    p = circuitray("finetune", "--base", "tiny", "--out", tmp_path / "o", "--data", bad)
    assert_refused(p, str(bad), "target")
    assert not (tmp_path / "o").exists()


def test_bad_values_are_one_line(tmp_path):
    p = circuitray("finetune", "--base", "tiny", "--out", tmp_path / "o", "--lora-targets", "nope",
                   "--method", "lora", "--steps", "2")  # fmt: skip
    assert_refused(p, "nope")
    p = circuitray("finetune", "--base", "no-such-model-dir/", "--out", tmp_path / "o2")
    assert_refused(p, "no-such-model-dir")
