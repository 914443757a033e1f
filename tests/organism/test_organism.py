"""The WS2 organism: a fresh full build meets its acceptance thresholds.

The build (about 90 s on 2 cores) runs once per session into the test
CIRCUITRAY_HOME, exactly as ``make setup`` runs it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from circuitray.models.loading import ModelSpec, load_replacement_model
from circuitray.models.registry import circuitray_home
from circuitray.prompts.ws2 import CONSTRAINTS


def test_report_is_written_next_to_artifacts(organism_report):
    path = circuitray_home() / "models" / "organism-report.json"
    assert json.loads(path.read_text())["acceptance"] == organism_report["acceptance"]


def test_tuned_learns_every_constraint_and_base_does_not(organism_report):
    acc = organism_report["accuracy"]
    assert set(acc["tuned"]) == set(CONSTRAINTS)
    for name in CONSTRAINTS:
        tuned, base = acc["tuned"][name], acc["base"][name]
        assert tuned["n"] >= 50, (name, tuned)
        assert tuned["accuracy"] >= 0.95, (name, tuned)
        assert base["accuracy"] <= base["chance"] + 0.10, (name, base)


def test_transcoders_reconstruct_sparsely(organism_report):
    tc = organism_report["transcoders"]
    for layer, m in tc["base"].items():
        assert m["explained_variance"] >= 0.8, (layer, m)
        assert m["l0_fraction"] < 0.05, (layer, m)  # "well below 10%"
        assert m["l0"] > 1, (layer, m)


def test_cross_layer_transcoder_reconstructs_at_least_as_well(organism_report):
    clt, tc = organism_report["cross_layer_transcoders"], organism_report["transcoders"]
    assert clt["d_transcoder"] == tc["d_transcoder"]
    assert set(clt["base"]) == set(clt["tuned"]) == set(tc["base"]) == {"0", "1", "2", "3"}
    for layer, m in clt["base"].items():
        per_layer = tc["base"][layer]
        # Layer j reads the features of layers <= j: never worse than layer j's alone.
        assert m["explained_variance"] >= 0.9, (layer, m)
        assert m["explained_variance"] >= per_layer["explained_variance"] - 1e-3, (
            layer,
            m,
            per_layer,
        )
        assert m["l0"] == pytest.approx(per_layer["l0"]), (layer, m, per_layer)  # same encoders
        assert m["l0_writing"] >= m["l0"]
    for layer, m in clt["tuned"].items():
        # Base transcoders on the fine-tune: poor, as the per-layer set, but finite.
        assert math.isfinite(m["explained_variance"]) and m["explained_variance"] <= 1, (layer, m)
    artifacts = organism_report["artifacts"]
    assert len(artifacts["sha256"]["cross_layer_transcoders"]) == 64
    config = yaml.safe_load(
        (Path(artifacts["cross_layer_transcoders"]) / "config.yaml").read_text()
    )
    assert config["model_kind"] == "cross_layer_transcoder"
    assert config["scan"] == "circuitray/organism-clt"


def test_tuned_checkpoint_loads_with_the_cross_layer_transcoder(organism_report):
    from circuit_tracer import attribute

    spec = ModelSpec(model="organism-tuned", transcoders="cross-layer")
    assert spec.resolved()["transcoders"] == "circuitray/organism-clt"
    graph = attribute("the word blarf means", load_replacement_model(spec), batch_size=64)
    assert graph.logit_targets[0].token_str == "happy"


def test_tuned_graphs_have_replacement_score_above_half(organism_report):
    graphs = organism_report["graphs"]
    assert graphs["tuned"]["n"] >= 9
    assert graphs["tuned"]["mean_replacement"] >= 0.5, graphs["tuned"]
    assert organism_report["passed"], organism_report["acceptance"]


def test_artifacts_are_small(organism_report):
    # Models, transcoders and CLT within 20 MB, plus about 1 MB per fine-tuning checkpoint.
    n_checkpoints = organism_report["training"]["checkpoints"]
    assert organism_report["artifacts"]["bytes"] <= (20 + 1.2 * n_checkpoints) * 1024 * 1024


def test_both_checkpoints_load_with_the_shared_transcoders(organism_report):
    from circuit_tracer import attribute

    targets = {}
    for name in ("organism-base", "organism-tuned"):
        spec = ModelSpec(model=name)
        assert spec.resolved()["transcoders"] == "circuitray/organism"
        model = load_replacement_model(spec)
        assert type(model).__name__ == "NNSightReplacementModel"
        graph = attribute("the word blarf means", model, batch_size=64)
        targets[name] = graph.logit_targets[0].token_str
    # Only the fine-tuned model knows that blarf means happy.
    assert targets["organism-tuned"] == "happy"
    assert targets["organism-base"] != "happy"


def test_lm_training_is_bit_identical_for_same_seed_and_threads():
    from transformers import Gemma2ForCausalLM

    from circuitray.finetune.train_lm import train_lm
    from circuitray.models.builders.tiny import tiny_gemma2_config
    from circuitray.models.builders.tokenizer import build_tokenizer
    from circuitray.organism.corpus import constraint_sentences
    from circuitray.prompts.ws2 import VOCABULARY

    tok = build_tokenizer(VOCABULARY)
    texts = constraint_sentences(seed=0)[:200]
    states = []
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for _ in range(2):
            torch.manual_seed(3)
            model = Gemma2ForCausalLM(tiny_gemma2_config(vocab_size=len(tok), n_layers=2))
            train_lm(model, tok, texts, steps=20, batch_size=16, lr=1e-3, seed=3, log_every=0)
            states.append(model.state_dict())
    finally:
        torch.use_deterministic_algorithms(before)
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
