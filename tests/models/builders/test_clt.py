"""The tiny model's cross-layer transcoder: its files load through circuit-tracer's own
loader, it reconstructs MLP outputs at least as well as the per-layer set, the
``cross-layer`` alias selects it, and a run with it works end to end."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from circuit_tracer import attribute
from circuit_tracer.transcoder.activation_functions import JumpReLU
from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder
from circuit_tracer.transcoder.single_layer_transcoder import TranscoderSet
from circuit_tracer.utils.hf_utils import load_transcoder_from_hub
from conftest import assert_one_line_error, circuitray
from safetensors.torch import load_file
from transformers import AutoTokenizer, Gemma2ForCausalLM

from circuitray.errors import ModelLoadError
from circuitray.models.builders.artifacts import (
    CrossLayerTranscoderWeights,
    save_cross_layer_transcoder,
)
from circuitray.models.builders.clt import fit_cross_layer_transcoder, reconstruct
from circuitray.models.builders.hooks import record_mlp_io
from circuitray.models.loading import ModelSpec
from circuitray.models.registry import BUNDLED, circuitray_home, transcoder_cache_dir
from circuitray.prompts.files import write_prompts
from circuitray.prompts.ws2 import CONSTRAINTS, generate_ws2

N_LAYERS, D_TC, D_MODEL = 4, 512, 64


def _load(ref: str, **kwargs):
    transcoders, _ = load_transcoder_from_hub(
        ref,
        cache_dir=str(transcoder_cache_dir()),
        device=torch.device("cpu"),
        dtype=torch.float32,
        **kwargs,
    )
    return transcoders


def test_files_are_circuit_tracers_clt_layout():
    tc = transcoder_cache_dir() / "circuitray" / "tiny-clt"
    config = yaml.safe_load((tc / "config.yaml").read_text())
    assert config == {
        "model_kind": "cross_layer_transcoder",
        "model_name": "tiny",
        "feature_input_hook": "ln2.hook_normalized",
        "feature_output_hook": "hook_mlp_out",
        "scan": "circuitray/tiny-clt",
    }
    per_layer = transcoder_cache_dir() / "circuitray" / "tiny"
    for i in range(N_LAYERS):
        enc = load_file(str(tc / f"W_enc_{i}.safetensors"))
        dec = load_file(str(tc / f"W_dec_{i}.safetensors"))
        assert {k: tuple(v.shape) for k, v in enc.items()} == {
            f"W_enc_{i}": (D_TC, D_MODEL),
            f"b_enc_{i}": (D_TC,),
            f"b_dec_{i}": (D_MODEL,),
            f"threshold_{i}": (D_TC,),
        }
        assert {k: tuple(v.shape) for k, v in dec.items()} == {
            f"W_dec_{i}": (D_TC, N_LAYERS - i, D_MODEL)
        }
        assert all(torch.isfinite(v).all() for v in [*enc.values(), *dec.values()])
        # The encoders are the per-layer set's, bit for bit.
        own = load_file(str(per_layer / f"layer_{i}.safetensors"))
        assert torch.equal(enc[f"W_enc_{i}"], own["W_enc"])
        assert torch.equal(enc[f"b_enc_{i}"], own["b_enc"])
        assert torch.equal(enc[f"threshold_{i}"], own["activation_function.threshold"])
    assert not [p for p in tc.parent.iterdir() if p.name.startswith(".")]


def test_loads_through_circuit_tracer_as_cross_layer_transcoder(loaded_tiny_clt):
    clt = _load("circuitray/tiny-clt")
    assert isinstance(clt, CrossLayerTranscoder)
    assert (clt.n_layers, clt.d_transcoder, clt.d_model) == (N_LAYERS, D_TC, D_MODEL)
    assert isinstance(clt.activation_function, JumpReLU)
    assert clt.feature_input_hook == "ln2.hook_normalized"
    assert clt.feature_output_hook == "hook_mlp_out"
    assert clt.scan == "circuitray/tiny-clt"
    assert isinstance(_load("circuitray/tiny"), TranscoderSet)
    # The session's ReplacementModel carries it (nnsight wraps it in an Envoy).
    carried = getattr(loaded_tiny_clt.transcoders, "_module", loaded_tiny_clt.transcoders)
    assert isinstance(carried, CrossLayerTranscoder)


def _explained_variance(y: torch.Tensor, y_hat: torch.Tensor) -> float:
    resid = y - y_hat
    var = (y - y.mean(0)).pow(2).sum(-1).mean()
    return float(1 - (resid - resid.mean(0)).pow(2).sum(-1).mean() / var)


def test_reconstructs_mlp_outputs_at_least_as_well_as_per_layer():
    home = circuitray_home() / BUNDLED["tiny"].subdir
    model = Gemma2ForCausalLM.from_pretrained(home).eval()
    tok = AutoTokenizer.from_pretrained(home)
    # WS2 prompts of another seed than the 300 the decoders were fitted on.
    x, y = record_mlp_io(model, tok, [r["prompt"] for r in generate_ws2(n=200, seed=11)])
    per_layer = _load("circuitray/tiny", lazy_decoder=False)
    clt = _load("circuitray/tiny-clt", lazy_decoder=False)
    assert isinstance(per_layer, TranscoderSet) and isinstance(clt, CrossLayerTranscoder)
    with torch.no_grad():
        # circuit-tracer's own forward passes: per layer, and all layers at once.
        ev_per_layer = [_explained_variance(y[i], per_layer[i](x[i])) for i in range(N_LAYERS)]
        recon = clt(torch.stack([x[i] for i in range(N_LAYERS)]))
    assert recon.shape == (N_LAYERS, len(x[0]), D_MODEL)
    ev_clt = [_explained_variance(y[i], recon[i]) for i in range(N_LAYERS)]
    numbers = (
        f"per-layer {[round(v, 4) for v in ev_per_layer]}, CLT {[round(v, 4) for v in ev_clt]}"
    )
    assert all(c >= p for c, p in zip(ev_clt, ev_per_layer, strict=True)), numbers
    assert min(ev_clt) > 0.5, numbers


def test_fit_predicts_each_layer_from_all_earlier_features():
    """On the fitting data, with a negligible ridge: a target that is a known linear map of
    earlier layers' codes is recovered exactly, so W_dec_i[:, j - i] is what i writes to j."""
    from circuitray.models.builders.artifacts import TranscoderWeights

    g = torch.Generator().manual_seed(0)
    n, d_tc, d_model, n_layers = 2000, 8, 4, 3
    x = {i: torch.randn(n, d_model, generator=g) for i in range(n_layers)}
    enc = {
        i: TranscoderWeights(
            W_enc=torch.randn(d_tc, d_model, generator=g),
            b_enc=torch.zeros(d_tc),
            W_dec=torch.zeros(d_tc, d_model),
            b_dec=torch.zeros(d_model),
            threshold=torch.full((d_tc,), 0.5),
        )
        for i in range(n_layers)
    }
    truth = CrossLayerTranscoderWeights(
        W_enc=torch.stack([w.W_enc for w in enc.values()]),
        b_enc=torch.zeros(n_layers, d_tc),
        W_dec=[torch.randn(d_tc, n_layers - i, d_model, generator=g) for i in range(n_layers)],
        b_dec=torch.randn(n_layers, d_model, generator=g),
        threshold=torch.full((n_layers, d_tc), 0.5),
    )
    y = reconstruct(truth, x)
    fitted = fit_cross_layer_transcoder(x, y, enc, ridge=1e-9)
    for i in range(n_layers):
        torch.testing.assert_close(fitted.W_dec[i], truth.W_dec[i], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fitted.b_dec, truth.b_dec, atol=1e-4, rtol=1e-4)
    # Wrong shapes are refused before anything is written.
    with pytest.raises(ValueError, match=r"W_dec\[1\]"):
        CrossLayerTranscoderWeights(
            W_enc=truth.W_enc,
            b_enc=truth.b_enc,
            W_dec=[truth.W_dec[0], truth.W_dec[0], truth.W_dec[2]],
            b_dec=truth.b_dec,
        )


def test_saved_relu_clt_round_trips_through_circuit_tracer(tmp_path):
    g = torch.Generator().manual_seed(1)
    w = CrossLayerTranscoderWeights(
        W_enc=torch.randn(2, 6, 3, generator=g),
        b_enc=torch.randn(2, 6, generator=g),
        W_dec=[torch.randn(6, 2 - i, 3, generator=g) for i in range(2)],
        b_dec=torch.randn(2, 3, generator=g),
    )
    save_cross_layer_transcoder(w, tmp_path / "me" / "clt", scan="me/clt", model_name="m")
    clt, _ = load_transcoder_from_hub(
        "me/clt", cache_dir=str(tmp_path), device=torch.device("cpu"), lazy_decoder=False
    )
    assert isinstance(clt, CrossLayerTranscoder)
    assert not isinstance(clt.activation_function, JumpReLU)  # no thresholds: ReLU
    assert clt.W_dec is not None  # loaded eagerly
    torch.testing.assert_close(clt.W_enc.data, w.W_enc)
    torch.testing.assert_close(clt.b_dec.data, w.b_dec)
    for i in range(2):
        torch.testing.assert_close(clt.W_dec[i].data, w.W_dec[i])


def test_same_features_as_per_layer_different_edges(loaded_tiny, loaded_tiny_clt):
    prompt = "the dog was blarf , so the dog was"
    a = attribute(prompt, loaded_tiny, batch_size=64)
    b = attribute(prompt, loaded_tiny_clt, batch_size=64)
    # Shared encoders on the same residual stream: identical active features...
    assert torch.equal(a.active_features, b.active_features)
    torch.testing.assert_close(a.activation_values, b.activation_values)
    # ...but the decoders, hence edges and error nodes, are the CLT's.
    assert a.adjacency_matrix.shape == b.adjacency_matrix.shape
    assert not torch.allclose(a.adjacency_matrix, b.adjacency_matrix)


@pytest.mark.parametrize(
    ("model", "transcoders", "expected"),
    [
        ("tiny", None, "circuitray/tiny"),
        ("tiny", "per-layer", "circuitray/tiny"),
        ("tiny", "cross-layer", "circuitray/tiny-clt"),
        ("tiny", "circuitray/tiny-clt", "circuitray/tiny-clt"),
        ("organism-base", "cross-layer", "circuitray/organism-clt"),
        ("organism-tuned", "cross-layer", "circuitray/organism-clt"),
        ("organism-tuned", "per-layer", "circuitray/organism"),
        ("google/gemma-2-2b", "gemma", "gemma"),
    ],
)
def test_transcoder_aliases_resolve(model, transcoders, expected):
    assert ModelSpec(model=model, transcoders=transcoders).resolved()["transcoders"] == expected


@pytest.mark.parametrize("alias", ["per-layer", "cross-layer"])
def test_alias_on_a_non_bundled_model_is_a_one_line_error(alias, tmp_path):
    with pytest.raises(ModelLoadError) as e:
        ModelSpec(model="google/gemma-2-2b", transcoders=alias).resolved()
    message = str(e.value)
    assert "\n" not in message
    assert repr(alias) in message and "'google/gemma-2-2b'" in message
    assert "bundled" in message
    # The CLI refuses it in one line before starting anything.
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt_id": "a", "prompt": "not tall but"}) + "\n")
    p = circuitray(
        "run", prompts, "--out", tmp_path / "run", "--model", "google/gemma-2-2b",
        "--transcoders", alias,
    )  # fmt: skip
    assert_one_line_error(p, repr(alias), "google/gemma-2-2b")
    assert not (tmp_path / "run").exists()


def test_cli_run_with_cross_layer_transcoders(tmp_path):
    rows = generate_ws2(n=6, seed=21)
    prompts = write_prompts(rows, tmp_path / "ws2.parquet")
    out = tmp_path / "clt_run"
    p = circuitray(
        "run", prompts, "--out", out, "--model", "tiny", "--transcoders", "cross-layer",
        "--actors", 1, "--batch-size", 3, "--no-stats", "--json",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    run_json = json.loads((out / "run.json").read_text())
    # run.json records the real cache name, not the alias.
    assert run_json["model"]["transcoders"] == "circuitray/tiny-clt"
    assert run_json["model"]["model"] == "tiny"

    q = circuitray("query", "constraint_stats", out, "--format", "json")
    assert q.returncode == 0, q.stderr
    stats = json.loads(q.stdout)
    assert {r["constraint_type"] for r in stats} == {r["constraint_type"] for r in rows}
    assert {r["constraint_type"] for r in stats} <= set(CONSTRAINTS)
    assert sum(r["graphs"] for r in stats) == len(rows)
    assert all(r["run"] == out.name for r in stats)
