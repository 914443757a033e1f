"""The bundled tiny model: built offline, loaded through circuit-tracer, sparse features."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from circuit_tracer import attribute
from safetensors.torch import load_file

from circuitray.models.builders.tiny import build_tiny
from circuitray.models.loading import ModelSpec, load_replacement_model
from circuitray.prompts.ws2 import generate_ws2


def test_loads_as_nnsight_replacement_model(loaded_tiny):
    assert "NNSightReplacementModel" in type(loaded_tiny).__name__
    assert loaded_tiny.cfg.n_layers == 4
    assert loaded_tiny.cfg.d_model == 64
    assert str(loaded_tiny.device) == "cpu"
    assert loaded_tiny.tokenizer.bos_token_id != 0  # circuit-tracer skips id 0


def test_artifacts_under_circuitray_home(circuitray_home):
    home = Path(os.environ["CIRCUITRAY_HOME"])
    assert home == circuitray_home
    assert (home / "models" / "tiny" / "config.json").exists()
    tc = home / "transcoders" / "circuitray" / "tiny"
    config = yaml.safe_load((tc / "config.yaml").read_text())
    assert config["model_kind"] == "transcoder_set"
    assert config["feature_input_hook"] == "ln2.hook_normalized"
    assert config["feature_output_hook"] == "hook_mlp_out"
    assert config["scan"] == "circuitray/tiny"
    for layer in range(4):
        w = load_file(str(tc / f"layer_{layer}.safetensors"))
        assert w["W_enc"].shape == (512, 64)
        assert w["W_dec"].shape == (512, 64)
        assert w["activation_function.threshold"].shape == (512,)
        assert all(torch.isfinite(v).all() for v in w.values())
    # No temporary build folders left behind.
    assert not [p for p in (home / "models").iterdir() if p.name.startswith(".")]
    assert not [p for p in tc.parent.iterdir() if p.name.startswith(".")]


def test_every_ws2_word_is_one_known_token(loaded_tiny):
    tok = loaded_tiny.tokenizer
    for r in generate_ws2(n=60, seed=4):
        ids = tok(r["prompt"], add_special_tokens=False).input_ids
        assert len(ids) == len(r["prompt"].split())
        assert tok.unk_token_id not in ids


@pytest.mark.parametrize("idx", [0, 1, 2])
def test_a_few_percent_of_features_fire(loaded_tiny, idx):
    prompt = generate_ws2(n=3, seed=9)[idx]["prompt"]
    g = attribute(prompt, loaded_tiny, batch_size=64)
    n_tokens = len(g.input_tokens)
    d_transcoder = int(loaded_tiny.transcoders.d_transcoder)
    assert d_transcoder == 512
    slots = loaded_tiny.cfg.n_layers * d_transcoder * (n_tokens - 1)  # BOS has no features
    fraction = g.active_features.shape[0] / slots
    assert 0.005 < fraction < 0.10, fraction
    # Graph scores are meaningful: the transcoders explain part, not none, of the model.
    from circuit_tracer.graph import compute_graph_scores

    replacement, completeness = compute_graph_scores(g)
    assert 0 < replacement <= 1 and 0 < completeness <= 1


def test_build_is_deterministic(circuitray_home, tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITRAY_HOME", str(tmp_path))
    paths = build_tiny(seed=0)
    assert paths["transcoders"] == tmp_path / "transcoders" / "circuitray" / "tiny"
    for layer in range(4):
        name = f"layer_{layer}.safetensors"
        a = load_file(str(paths["transcoders"] / name))
        b = load_file(str(circuitray_home / "transcoders" / "circuitray" / "tiny" / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (layer, k)
    clt = paths["cross_layer_transcoders"]
    assert clt == tmp_path / "transcoders" / "circuitray" / "tiny-clt"
    names = sorted(f.name for f in clt.glob("*.safetensors"))
    assert len(names) == 2 * 4  # W_enc_{i} and W_dec_{i}
    for name in names:
        a = load_file(str(clt / name))
        b = load_file(str(circuitray_home / "transcoders" / "circuitray" / "tiny-clt" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    model_a = load_file(str(paths["model"] / "model.safetensors"))
    model_b = load_file(str(circuitray_home / "models" / "tiny" / "model.safetensors"))
    assert all(torch.equal(model_a[k], model_b[k]) for k in model_b)
    # And it loads from the other home too.
    monkeypatch.setenv("CIRCUITRAY_HOME", str(tmp_path))
    m = load_replacement_model(ModelSpec(model="tiny"))
    assert m.cfg.n_layers == 4


def _mtimes(paths: dict) -> dict:
    return {f: f.stat().st_mtime_ns for d in paths.values() for f in d.rglob("*") if f.is_file()}


def test_build_is_reused_until_its_inputs_or_artifacts_change(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITRAY_HOME", str(tmp_path))
    paths = build_tiny(seed=0)
    before = _mtimes(paths)
    assert build_tiny(seed=0) == paths
    assert _mtimes(paths) == before  # nothing written again
    # A damaged artifact is rebuilt...
    (paths["transcoders"] / "layer_0.safetensors").write_bytes(b"")
    build_tiny(seed=0)
    assert load_file(str(paths["transcoders"] / "layer_0.safetensors"))["W_enc"].shape[0] == 512
    # ...and so is a build with other arguments.
    again = _mtimes(paths)
    build_tiny(seed=1)
    assert all(again[f] != t for f, t in _mtimes(paths).items() if f in again)
