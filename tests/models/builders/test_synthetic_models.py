"""Synthetic real-shape models: the real configuration, calibrated transcoders, and
loading through the one model-loading path."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SYNTHETIC_GEMMA
from transformers import AutoConfig, AutoTokenizer

from circuitray.errors import CircuitrayError
from circuitray.models.builders.synthetic import GEMMASCOPE_L0, SHAPES, scaled_shape
from circuitray.models.loading import ModelSpec, check_model_available, load_replacement_model
from circuitray.models.registry import bundled_model, resolve_model, synthetic_model_name


def test_full_gemma_shape_is_the_real_configuration():
    s = SHAPES["gemma-2-2b"]
    assert (s.n_layers, s.d_model, s.d_mlp, s.n_heads, s.n_kv_heads, s.head_dim) == (
        26, 2304, 9216, 8, 4, 256,
    )  # fmt: skip
    assert (s.vocab_size, s.d_transcoder) == (256_000, 16_384)
    assert s.extra["final_logit_softcapping"] == 30.0
    assert s.extra["attn_logit_softcapping"] == 50.0
    assert s.extra["sliding_window"] == 4096
    assert len(GEMMASCOPE_L0) == 26 and sum(GEMMASCOPE_L0) == 1020
    assert scaled_shape(s, 1.0) is s


def test_scaling_keeps_layers_heads_and_architecture():
    s = scaled_shape(SHAPES["llama-3.2-1b"], 1 / 32)
    assert (s.n_layers, s.n_heads, s.n_kv_heads, s.architecture) == (16, 32, 8, "llama")
    assert (s.d_model, s.d_transcoder) == (64, 4096)
    assert s.extra["rope_scaling"]["rope_type"] == "llama3"
    with pytest.raises(CircuitrayError, match="--scale"):
        scaled_shape(s, 1.5)


def test_names_resolve_to_bundled_entries():
    assert synthetic_model_name("gemma-2-2b", 1.0) == "synthetic-gemma-2-2b"
    name = synthetic_model_name("gemma-2-2b", 0.0625)
    assert name == SYNTHETIC_GEMMA
    b = bundled_model(name)
    assert b is not None and b.transcoders == f"circuitray/{name}"
    assert "--scale 0.0625" in b.build_command
    assert bundled_model("synthetic-gpt-5") is None
    assert resolve_model("synthetic-gpt-5") == ("synthetic-gpt-5", None)


def test_missing_build_names_its_command(circuitray_home):
    with pytest.raises(CircuitrayError, match="build-synthetic --like llama-3.2-1b --scale 0.5"):
        check_model_available(ModelSpec(model="synthetic-llama-3.2-1b-s0.5"))


def test_built_gemma_has_the_shape_and_the_l0(synthetic_gemma):
    folder = synthetic_gemma["model"]
    cfg = AutoConfig.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert cfg.architectures == ["Gemma2ForCausalLM"]
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (26, 8, 4)
    assert (cfg.hidden_size, cfg.head_dim, cfg.final_logit_softcapping) == (144, 16, 30.0)
    assert len(tok) == cfg.vocab_size == 16_000
    manifest = json.loads((folder / "synthetic.json").read_text())
    assert manifest["l0_target_per_token"] == 1020
    # Held-out WS2 tokens: within a quarter of GemmaScope's 1020 features per token.
    assert 765 <= manifest["l0_measured_per_token"] <= 1275
    assert synthetic_gemma["cross_layer_transcoders"].joinpath("config.yaml").exists()


def test_loads_through_the_one_loader_with_both_transcoder_sets(synthetic_gemma):
    ids = None
    for transcoders in ("per-layer", "cross-layer"):
        m = load_replacement_model(
            ModelSpec(model=SYNTHETIC_GEMMA, transcoders=transcoders, device="cpu")
        )
        if ids is None:
            ids = torch.tensor(
                [m.tokenizer.bos_token_id, *m.tokenizer("a drax dog is a").input_ids]
            )
        _, acts = m.get_activations(ids, sparse=False)
        assert acts.shape == (26, ids.numel(), 1024)
        per_token = (acts[:, 1:] > 0).sum((0, 2)).float().mean().item()
        assert 300 < per_token < 3000, (transcoders, per_token)


def test_llama_shape_builds_and_loads(circuitray_home):
    from circuitray.models.builders.synthetic import build_synthetic

    paths = build_synthetic(like="llama-3.2-1b", scale=1 / 64, calibration_prompts=40)
    cfg = AutoConfig.from_pretrained(paths["model"])
    assert cfg.architectures == ["LlamaForCausalLM"] and cfg.num_hidden_layers == 16
    m = load_replacement_model(ModelSpec(model=synthetic_model_name("llama-3.2-1b", 1 / 64)))
    ids = torch.tensor([m.tokenizer.bos_token_id, *m.tokenizer("a drax dog is a").input_ids])
    _, acts = m.get_activations(ids, sparse=False)
    assert acts.shape[:2] == (16, ids.numel()) and (acts[:, 1:] > 0).any()
