"""The organism's base -> tuned fine-tune ships as a checkpoint series (make setup)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from circuitray.finetune.manifest import checkpoint_path, read_manifest
from circuitray.models.registry import BUNDLED, circuitray_home


def _manifest_file() -> Path:
    return circuitray_home() / "models" / "organism-finetune" / "finetune.json"


def test_at_least_eight_log_spaced_checkpoints_from_base_to_tuned(organism_report):
    m = read_manifest(_manifest_file())
    steps = [c["step"] for c in m["checkpoints"]]
    assert len(steps) >= 8 and steps[0] == 0
    assert steps[-1] == organism_report["training"]["tuned_steps"]
    assert organism_report["training"]["checkpoints"] == len(steps)
    gaps = [b - a for a, b in zip(steps[1:-2], steps[2:-1], strict=True)]
    assert gaps == sorted(gaps), steps  # log-spaced: denser early
    base = checkpoint_path(_manifest_file(), m["checkpoints"][0]).resolve()
    assert base == (circuitray_home() / BUNDLED["organism-base"].subdir).resolve()
    # The last checkpoint is organism-tuned, byte for byte in its weights.
    last = load_file(checkpoint_path(_manifest_file(), m["checkpoints"][-1]) / "model.safetensors")
    tuned = load_file(circuitray_home() / BUNDLED["organism-tuned"].subdir / "model.safetensors")
    assert last.keys() == tuned.keys()
    assert all(torch.equal(last[k], tuned[k]) for k in last)


def test_each_checkpoint_records_loss_accuracy_and_transcoder_fit(organism_report):
    m = read_manifest(_manifest_file())
    assert m["transcoders"] == BUNDLED["organism-tuned"].transcoders
    assert (
        len(m["data"]["sha256"]) == 64 and m["config"]["seed"] == organism_report["config"]["seed"]
    )
    types = {"simple_mapping", "spatial_relationship", "antonym"}
    for c in m["checkpoints"]:
        assert set(c["heldout"]) == types
        assert sorted(c["transcoder_fit"]) == ["0", "1", "2", "3"]
        assert c["examples_seen"] == c["step"] * m["config"]["batch_size"]
        assert (c["train_loss"] is None) == (c["step"] == 0)
    first, last = m["checkpoints"][0], m["checkpoints"][-1]
    # The same numbers as the organism's own report, from the other end of the series.
    for name in types:
        acc = organism_report["accuracy"]
        assert first["heldout"][name]["accuracy"] == acc["base"][name]["accuracy"]
        assert last["heldout"][name]["accuracy"] == acc["tuned"][name]["accuracy"] >= 0.95
        assert last["heldout"][name]["target_prob"] > first["heldout"][name]["target_prob"]
    # Base transcoders fit the base best: fine-tuning moves the MLP outputs away.
    for layer in first["transcoder_fit"]:
        ev = [c["transcoder_fit"][layer]["explained_variance"] for c in m["checkpoints"]]
        assert ev[0] > 0.8 and ev[0] == max(ev)
