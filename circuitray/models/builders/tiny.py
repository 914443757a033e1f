"""The random-weight tiny model: the fastest real model for plumbing tests.

Algorithm (deterministic in ``seed``):

1. Build the word-level tokenizer over :data:`circuitray.prompts.ws2.VOCABULARY`.
2. Initialise a tiny ``Gemma2ForCausalLM`` (4 layers, d_model 64) with ``seed``.
3. Record each layer's normalised MLP input (circuit-tracer's ``ln2.hook_normalized``)
   on WS2 prompts.
4. Draw random unit-norm encoder rows and set each feature's JumpReLU threshold at
   the 97th percentile of its pre-activation, so a token activates ~3% of features
   (random encoders otherwise fire on half of them and graphs explode).
5. Set decoders to a least-squares fit of the MLP output from the active features,
   so features carry real signal and error nodes only the remainder.
6. Build the cross-layer transcoder: the same encoders, decoders fitted jointly so
   each layer's MLP output is predicted from the features of all layers up to it
   (:mod:`circuitray.models.builders.clt`).
7. Save the HF folder, the per-layer transcoder set and the CLT (circuit-tracer's
   cache layout), and a build stamp (``models/tiny-build.json``): a later build with
   the same arguments, code and torch whose folders are unchanged does nothing
   (:mod:`circuitray.models.builders.stamp`).

For a model whose circuits mean something, see :mod:`circuitray.organism`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import Gemma2Config, Gemma2ForCausalLM

from circuitray.models.builders.artifacts import (
    TranscoderWeights,
    save_cross_layer_transcoder,
    save_hf_model,
    save_transcoder_set,
)
from circuitray.models.builders.clt import fit_cross_layer_transcoder
from circuitray.models.builders.hooks import record_mlp_io
from circuitray.models.builders.stamp import build_key, is_current, write_stamp
from circuitray.models.builders.tokenizer import SPECIAL_TOKENS, build_tokenizer
from circuitray.models.registry import BUNDLED, circuitray_home, transcoder_cache_dir
from circuitray.prompts.ws2 import VOCABULARY, generate_ws2

logger = logging.getLogger(__name__)

# Ridge of the tiny CLT's decoder fit. The fit sees ~2.3k tokens for up to 2048 codes
# (layer 3 reads all four layers' features): at the default ridge (1.0) layers 2-3
# overfit and explain less held-out variance than the per-layer set; at 30 every
# layer explains more (held-out WS2 prompts, seed 11: 0.77-0.84 vs 0.61-0.72).
TINY_CLT_RIDGE = 30.0


def tiny_gemma2_config(
    *, vocab_size: int, n_layers: int = 4, d_model: int = 64, d_mlp: int = 256
) -> Gemma2Config:
    """A Gemma-2 config small enough to attribute in about a second on one CPU core."""
    return Gemma2Config(
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=d_mlp,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16,
        max_position_embeddings=64,
        sliding_window=64,
        pad_token_id=SPECIAL_TOKENS.index("<pad>"),
        bos_token_id=SPECIAL_TOKENS.index("<bos>"),
        eos_token_id=SPECIAL_TOKENS.index("<eos>"),
        attn_implementation="eager",
        architectures=["Gemma2ForCausalLM"],
    )


def calibrated_transcoders(
    inputs: dict[int, torch.Tensor],
    outputs: dict[int, torch.Tensor],
    *,
    d_transcoder: int,
    seed: int,
    active_fraction: float = 0.03,
) -> dict[int, TranscoderWeights]:
    """Random JumpReLU encoders at a given activity, with least-squares decoders."""
    g = torch.Generator().manual_seed(seed + 1)
    layers: dict[int, TranscoderWeights] = {}
    for layer, x in sorted(inputs.items()):
        d_model = x.shape[1]
        w_enc = torch.randn(d_transcoder, d_model, generator=g)
        w_enc = w_enc / w_enc.norm(dim=1, keepdim=True)
        pre = x @ w_enc.T
        # Scale so every feature's pre-activation has unit std on real inputs.
        w_enc = w_enc / pre.std(dim=0).clamp(min=1e-6)[:, None]
        pre = x @ w_enc.T
        threshold = torch.quantile(pre, 1.0 - active_fraction, dim=0)
        acts = torch.where(pre > threshold, pre, torch.zeros_like(pre))
        y = outputs[layer]
        b_dec = y.mean(0)
        # Ridge solve keeps the decoder finite for features that rarely fire.
        gram = acts.T @ acts + 1e-2 * torch.eye(d_transcoder)
        w_dec = torch.linalg.solve(gram, acts.T @ (y - b_dec))
        layers[layer] = TranscoderWeights(
            W_enc=w_enc,
            b_enc=torch.zeros(d_transcoder),
            W_dec=w_dec,
            b_dec=b_dec,
            threshold=threshold,
        )
    return layers


# What decides the tiny model's bytes besides its arguments (circuitray.models.builders.stamp).
TINY_BUILD_MODULES = (
    "circuitray.models.builders.artifacts",
    "circuitray.models.builders.clt",
    "circuitray.models.builders.hooks",
    "circuitray.models.registry",
    "circuitray.models.builders.tiny",
    "circuitray.models.builders.tokenizer",
    "circuitray.prompts.ws2",
)


def build_tiny(*, seed: int = 0, d_transcoder: int = 512, force: bool = False) -> dict[str, Path]:
    """Build the ``tiny`` bundled model and its transcoders; returns their paths.

    The model goes under :func:`circuitray_home`, the transcoders into
    :func:`transcoder_cache_dir` under the names ``circuitray/tiny`` (per-layer,
    ``"transcoders"``) and ``circuitray/tiny-clt`` (``"cross_layer_transcoders"``).
    An up-to-date build (step 7) is kept as it is unless ``force``.
    """
    home = circuitray_home()
    bundled = BUNDLED["tiny"]
    paths = {
        "model": home / bundled.subdir,
        "transcoders": transcoder_cache_dir() / bundled.transcoders,
        "cross_layer_transcoders": transcoder_cache_dir() / bundled.cross_layer_transcoders,
    }
    stamp = home / "models" / "tiny-build.json"
    key = build_key({"seed": seed, "d_transcoder": d_transcoder}, modules=TINY_BUILD_MODULES)
    if not force and is_current(stamp, key, paths):
        logger.info("tiny model up to date at %s", paths["model"])
        return paths
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(VOCABULARY)
    config = tiny_gemma2_config(vocab_size=len(tokenizer))
    model = Gemma2ForCausalLM(config).eval()

    prompts = [r["prompt"] for r in generate_ws2(n=300, seed=seed)]
    inputs, outputs = record_mlp_io(model, tokenizer, prompts)
    layers = calibrated_transcoders(inputs, outputs, d_transcoder=d_transcoder, seed=seed)
    clt = fit_cross_layer_transcoder(inputs, outputs, layers, ridge=TINY_CLT_RIDGE)

    model_dir = save_hf_model(model, tokenizer, paths["model"])
    tc_dir = save_transcoder_set(
        layers,
        paths["transcoders"],
        scan=bundled.transcoders,
        model_name=bundled.name,
    )
    clt_dir = save_cross_layer_transcoder(
        clt,
        paths["cross_layer_transcoders"],
        scan=bundled.cross_layer_transcoders,
        model_name=bundled.name,
    )
    write_stamp(stamp, key, paths)
    logger.info("built tiny model at %s, transcoders at %s and %s", model_dir, tc_dir, clt_dir)
    return paths
