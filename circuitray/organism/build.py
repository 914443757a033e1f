"""Building the WS2 model organism (``circuitray organism build``).

1. Fix the seed and torch's thread count and turn on deterministic algorithms, so a
   rebuild with the same seed and threads gives bit-identical weights.
2. **base**: train a tiny Gemma-2 from scratch on filler text over the WS2 vocabulary
   that never pairs a cue with its answer (:mod:`circuitray.organism.corpus`).
3. **tuned**: fine-tune a copy of base on the ``train`` split's constraint sentences,
   mixed with filler so it stays fluent.
4. Record base MLP inputs/outputs at circuit-tracer's Gemma-2 hooks over filler and
   constraint text and train one JumpReLU transcoder per layer; both checkpoints
   share them, as base-model transcoders are applied to fine-tunes in real work.
5. Build a cross-layer transcoder from the same activations: the per-layer encoders,
   decoders fitted jointly so each layer's MLP output is predicted from the features
   of all layers up to it (:mod:`circuitray.models.clt`).
6. Save ``models/organism-base``, ``models/organism-tuned`` (HF folders), the
   transcoder set ``circuitray/organism`` and the CLT ``circuitray/organism-clt``
   (circuit-tracer's cache layout), then write ``models/organism-report.json``
   (:mod:`circuitray.organism.evaluate`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from transformers import Gemma2ForCausalLM

from circuitray.models.artifacts import (
    save_cross_layer_transcoder,
    save_hf_model,
    save_transcoder_set,
)
from circuitray.models.clt import clt_metrics, fit_cross_layer_transcoder
from circuitray.models.hooks import record_mlp_io
from circuitray.models.registry import BUNDLED, circuitray_home, transcoder_cache_dir
from circuitray.models.tiny import tiny_gemma2_config
from circuitray.models.tokenizer import build_tokenizer
from circuitray.organism.corpus import constraint_sentences, filler_sentence
from circuitray.organism.evaluate import (
    acceptance,
    constraint_accuracy,
    graph_scores,
)
from circuitray.organism.train_lm import train_lm
from circuitray.organism.train_transcoders import (
    TranscoderTrainingConfig,
    metrics,
    train_transcoder,
)
from circuitray.ws2 import VOCABULARY, generate_ws2

logger = logging.getLogger(__name__)

REPORT_NAME = "organism-report.json"


@dataclass(frozen=True)
class OrganismConfig:
    """How the organism is built; the defaults are what ``make setup`` builds.

    Attributes:
        seed: Seeds weights, data order and corpora.
        threads: torch threads (part of what makes weights bit-identical).
        n_layers: Transformer layers.
        d_model: Residual width.
        d_mlp: MLP width.
        n_filler: Filler sentences for the base stage.
        base_steps: Base-stage training steps.
        base_lr: Base-stage peak learning rate.
        tuned_steps: Fine-tuning steps.
        tuned_lr: Fine-tuning peak learning rate.
        batch_size: Sentences per step.
        transcoders: Transcoder training settings.
        n_transcoder_texts: Sentences whose base activations train the transcoders.
        clt_ridge: Ridge of the cross-layer transcoder's decoder fit
            (:func:`circuitray.models.clt.fit_cross_layer_transcoder`).
        n_graph_samples: Held-out prompts attributed for replacement scores (per type).
    """

    seed: int = 0
    threads: int = 2
    n_layers: int = 4
    d_model: int = 64
    d_mlp: int = 256
    n_filler: int = 20000
    base_steps: int = 600
    base_lr: float = 3e-3
    tuned_steps: int = 500
    tuned_lr: float = 2e-3
    batch_size: int = 64
    transcoders: TranscoderTrainingConfig = field(
        default_factory=lambda: TranscoderTrainingConfig(l1=1e-2)
    )
    n_transcoder_texts: int = 4000
    clt_ridge: float = 1.0
    n_graph_samples: int = 6

    def with_seed(self, seed: int, *, threads: int | None = None) -> OrganismConfig:
        return replace(self, seed=seed, threads=threads or self.threads)


def _sha256_dir(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.rglob("*.safetensors")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def build_organism(config: OrganismConfig | None = None) -> dict:
    """Build, save and evaluate the organism; returns the report (also saved)."""
    config = config or OrganismConfig()
    threads_before = torch.get_num_threads()
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _build(config)
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(deterministic_before)


def _build(config: OrganismConfig) -> dict:
    t_start = time.perf_counter()
    torch.manual_seed(config.seed)
    timings: dict[str, float] = {}

    tokenizer = build_tokenizer(VOCABULARY)
    model_config = tiny_gemma2_config(
        vocab_size=len(tokenizer),
        n_layers=config.n_layers,
        d_model=config.d_model,
        d_mlp=config.d_mlp,
    )
    base = Gemma2ForCausalLM(model_config)
    rng = random.Random(config.seed)
    filler = [filler_sentence(rng) for _ in range(config.n_filler)]

    t = time.perf_counter()
    base_losses = train_lm(
        base,
        tokenizer,
        filler,
        steps=config.base_steps,
        batch_size=config.batch_size,
        lr=config.base_lr,
        seed=config.seed,
    )
    timings["train_base_s"] = time.perf_counter() - t

    t = time.perf_counter()
    tuned = copy.deepcopy(base)
    train_texts = constraint_sentences(seed=config.seed, split="train")
    mix = train_texts + filler[: len(train_texts) // 2]
    tuned_losses = train_lm(
        tuned,
        tokenizer,
        mix,
        steps=config.tuned_steps,
        batch_size=config.batch_size,
        lr=config.tuned_lr,
        seed=config.seed + 1,
    )
    timings["train_tuned_s"] = time.perf_counter() - t

    t = time.perf_counter()
    n_half = config.n_transcoder_texts // 2
    tc_texts = filler[-n_half:] + train_texts[:n_half]
    heldout_rows = [
        r for r in generate_ws2(n=3000, seed=config.seed + 7) if r["split"] == "heldout"
    ]
    val_rng = random.Random(config.seed + 99)
    val_texts = [filler_sentence(val_rng) for _ in range(400)] + [
        f"{r['prompt']} {r['target']} ." for r in heldout_rows[:400]
    ]
    x, y = record_mlp_io(base, tokenizer, tc_texts)
    layers = {
        layer: train_transcoder(
            x[layer], y[layer], config=config.transcoders, seed=config.seed * 1000 + layer
        )
        for layer in range(config.n_layers)
    }
    timings["train_transcoders_s"] = time.perf_counter() - t

    t = time.perf_counter()
    clt = fit_cross_layer_transcoder(x, y, layers, ridge=config.clt_ridge)
    del x, y
    timings["fit_cross_layer_transcoder_s"] = time.perf_counter() - t

    home = circuitray_home()
    base_dir = save_hf_model(base, tokenizer, home / BUNDLED["organism-base"].subdir)
    tuned_dir = save_hf_model(tuned, tokenizer, home / BUNDLED["organism-tuned"].subdir)
    tc_ref = BUNDLED["organism-tuned"].transcoders
    tc_dir = save_transcoder_set(
        layers, transcoder_cache_dir() / tc_ref, scan=tc_ref, model_name="organism-base"
    )
    clt_ref = BUNDLED["organism-tuned"].cross_layer_transcoders
    clt_dir = save_cross_layer_transcoder(
        clt, transcoder_cache_dir() / clt_ref, scan=clt_ref, model_name="organism-base"
    )

    t = time.perf_counter()
    xb, yb = record_mlp_io(base, tokenizer, val_texts)
    xt, yt = record_mlp_io(tuned, tokenizer, val_texts)
    sample = []
    for name in sorted({r["constraint_type"] for r in heldout_rows}):
        sample += [r for r in heldout_rows if r["constraint_type"] == name][
            : config.n_graph_samples
        ]
    report = {
        "config": asdict(config),
        "accuracy": {
            "split": "heldout",
            "base": constraint_accuracy(base, tokenizer, heldout_rows),
            "tuned": constraint_accuracy(tuned, tokenizer, heldout_rows),
        },
        "transcoders": {
            "d_transcoder": config.transcoders.d_transcoder,
            "base": {str(i): metrics(w, xb[i], yb[i]) for i, w in layers.items()},
            "tuned": {str(i): metrics(w, xt[i], yt[i]) for i, w in layers.items()},
        },
        "cross_layer_transcoders": {
            "d_transcoder": config.transcoders.d_transcoder,
            "ridge": config.clt_ridge,
            "base": clt_metrics(clt, xb, yb),
            "tuned": clt_metrics(clt, xt, yt),
        },
        "graphs": {
            "sample": [r["prompt_id"] for r in sample],
            "base": graph_scores("organism-base", sample),
            "tuned": graph_scores("organism-tuned", sample),
        },
        "training": {
            "base_final_loss": sum(base_losses[-20:]) / 20,
            "tuned_final_loss": sum(tuned_losses[-20:]) / 20,
        },
    }
    timings["evaluate_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start
    report["timings"] = timings
    report["artifacts"] = {
        "organism-base": str(base_dir),
        "organism-tuned": str(tuned_dir),
        "transcoders": str(tc_dir),
        "cross_layer_transcoders": str(clt_dir),
        "sha256": {
            "organism-base": _sha256_dir(base_dir),
            "organism-tuned": _sha256_dir(tuned_dir),
            "transcoders": _sha256_dir(tc_dir),
            "cross_layer_transcoders": _sha256_dir(clt_dir),
        },
        "bytes": sum(
            f.stat().st_size
            for d in (base_dir, tuned_dir, tc_dir, clt_dir)
            for f in d.rglob("*")
            if f.is_file()
        ),
    }
    report["acceptance"] = acceptance(report)
    report["passed"] = all(report["acceptance"].values())
    out = home / "models" / REPORT_NAME
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out)
    logger.info("organism built in %.1fs; report %s", timings["total_s"], out)
    return report
