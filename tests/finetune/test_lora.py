"""LoRA fine-tuning of the tiny model (peft): merged checkpoints are plain HF folders.

A short ``method: lora`` fine-tune through :func:`circuitray.finetune.local.finetune`;
its checkpoints must load through ``circuitray run``'s path and attribute, differ from
the base exactly in the adapted linear layers, hold no adapter keys, and merging a
copy must leave the training model's adapters as they were.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from circuitray.errors import CircuitrayError
from circuitray.finetune.config import LORA_TARGETS, FinetuneConfig
from circuitray.finetune.local import finetune
from circuitray.finetune.manifest import checkpoint_path, read_manifest
from circuitray.models.registry import BUNDLED

STEPS = 12


def _config(out: Path, **overrides) -> FinetuneConfig:
    fields = {
        "base": "tiny",
        "out": str(out),
        "method": "lora",
        "steps": STEPS,
        "checkpoints": 3,
        "first_checkpoint": 4,
        "batch_size": 8,
        "lr": 1e-2,
        "ws2_n": 400,
        "eval_per_type": 4,
        "threads": 1,
        **overrides,
    }
    return FinetuneConfig(**fields)


@pytest.fixture(scope="module")
def lora_finetune(circuitray_home, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "tiny-lora"
    finetune(_config(out))
    return out


def _base_weights(manifest: dict, out: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint_path(out, manifest["checkpoints"][0]) / "model.safetensors")


def test_merged_checkpoints_load_and_attribute(lora_finetune):
    from circuit_tracer import attribute

    from circuitray.models.loading import ModelSpec, load_replacement_model

    manifest = read_manifest(lora_finetune)
    assert manifest["config"]["method"] == "lora"
    assert [c["step"] for c in manifest["checkpoints"]] == [0, 4, STEPS]
    for c in manifest["checkpoints"][1:]:
        spec = ModelSpec(
            model=str(checkpoint_path(lora_finetune, c)),
            transcoders=BUNDLED["tiny"].transcoders,
            device="cpu",
        )
        graph = attribute("the opposite of tall is", load_replacement_model(spec), batch_size=64)
        assert graph.adjacency_matrix.shape[0] > 0


def test_only_the_adapted_layers_change(lora_finetune):
    manifest = read_manifest(lora_finetune)
    base = _base_weights(manifest, lora_finetune)
    adapted = [k for k in base if k.rsplit(".", 2)[-2] in LORA_TARGETS]
    assert len(adapted) == 7 * 4  # seven linear layers in each of four blocks
    for c in manifest["checkpoints"][1:]:
        folder = checkpoint_path(lora_finetune, c)
        tuned = load_file(folder / "model.safetensors")
        assert tuned.keys() == base.keys()  # an ordinary HF state dict: no lora_, no peft prefix
        assert not [k for k in tuned if "lora" in k or k.startswith("base_model")]
        for k in base:
            if k in adapted:
                assert not torch.equal(tuned[k], base[k]), (c["step"], k)
            else:  # embeddings, norms: LoRA never touches them
                assert torch.equal(tuned[k], base[k]), (c["step"], k)
        assert not list(folder.glob("adapter_*"))  # no peft adapter files either


def test_merged_copy_leaves_the_training_model_unmerged(circuitray_home):
    from transformers import AutoModelForCausalLM

    from circuitray.finetune.lora import add_lora, merged_copy
    from circuitray.models.registry import resolve_model

    path, _ = resolve_model("tiny")
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    model = add_lora(base, r=4, alpha=8, dropout=0.0, targets=("q_proj", "down_proj"))
    with torch.no_grad():  # B starts at 0 (the adapters are a no-op): give it weights
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    merged = merged_copy(model)

    assert not [k for k in merged.state_dict() if "lora" in k]
    assert [n for n, _ in model.named_parameters() if "lora_A" in n]  # still adapters
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert torch.equal(layer.base_layer.weight, original["model.layers.0.self_attn.q_proj.weight"])
    delta = layer.lora_B["default"].weight @ layer.lora_A["default"].weight * (8 / 4)
    assert torch.allclose(
        merged.model.layers[0].self_attn.q_proj.weight,
        original["model.layers.0.self_attn.q_proj.weight"] + delta,
        atol=1e-6,
    )
    model.eval()
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, model(ids).logits, atol=1e-5)

    # Training goes on: a step moves the adapters, not the merged copy or the base weights.
    frozen_merged = {k: v.clone() for k, v in merged.state_dict().items()}
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    assert torch.equal(layer.base_layer.weight, original["model.layers.0.self_attn.q_proj.weight"])
    assert all(torch.equal(v, merged.state_dict()[k]) for k, v in frozen_merged.items())
    again = merged_copy(model)
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(again.state_dict()[key], frozen_merged[key])


def test_bad_lora_targets_are_one_line_errors(circuitray_home, tmp_path):
    with pytest.raises(CircuitrayError) as e:
        finetune(_config(tmp_path / "bad", lora_targets=("nope", "q_projection")))
    message = str(e.value)
    assert "\n" not in message and "nope" in message and "not a module name" in message
    with pytest.raises(CircuitrayError, match="nope"):  # one unknown name among known ones
        finetune(_config(tmp_path / "bad2", lora_targets=("q_proj", "nope")))
    assert not (tmp_path / "bad" / "finetune.json").exists()


def test_lora_checkpoints_record_the_transcoder_fit(lora_finetune):
    """Each checkpoint is evaluated as saved, merged: the peft wrapper hid the blocks
    whose MLPs the fit reads, so LoRA checkpoints recorded none."""
    manifest = read_manifest(lora_finetune)
    assert all(c["transcoder_fit"] is not None for c in manifest["checkpoints"])
