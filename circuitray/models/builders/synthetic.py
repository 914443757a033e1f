"""Random-weight models of a real model's shape, with transcoders of its real width.

The weights of google/gemma-2-2b and its GemmaScope transcoders cannot be had offline,
but their *shape* (what decides memory, speed and most of what breaks) can. A
synthetic model copies a real model's configuration and replaces every weight.

1. Take the real configuration (:data:`SHAPES`: layer count, widths, heads and KV
   heads, head size, soft-caps, sliding window, RoPE, vocabulary size) and, for
   ``scale < 1``, shrink the widths, head size, MLP width, feature count and
   vocabulary by ``scale`` while keeping the layer count, head counts and
   architecture (:func:`scaled_shape`).
2. Build a word-level tokenizer of exactly that vocabulary size: the WS2 words (so
   WS2 prompts tokenize) then generated filler words.
3. Initialise the HF model (``Gemma2ForCausalLM`` / ``LlamaForCausalLM``) with HF's
   own random initialisation under ``seed``.
4. Record each layer's transcoder input and MLP output at circuit-tracer's hook points
   (:func:`circuitray.models.builders.hooks.record_mlp_io`) on WS2 prompts.
5. Per layer, draw unit-norm random encoder rows, standardise every feature's
   pre-activation on the recorded inputs (bias = -mean, rows / std) and put its
   JumpReLU threshold at the Gaussian quantile ``1 - l0 / d_transcoder``: a token then
   activates about ``l0`` features of that layer. The target ``l0`` per layer is the
   real transcoder set's (:data:`GEMMASCOPE_L0`); the L0 reached on held-out prompts is
   measured and written to the build manifest.
6. Decoders are random unit rows scaled so a typical token's reconstruction has the
   norm of the MLP output, ``b_dec`` the mean MLP output: no fit (at 16k features x 26
   layers a least-squares fit is the expensive part and shape is what is wanted).
   Error nodes therefore carry most of the MLP output; graphs are of the real size,
   not of real meaning.
7. Build the cross-layer transcoder variant on the same encoders (random decoders to
   every later layer, same scaling), unless too large (:data:`CLT_MAX_BYTES`).
8. Save the HF folder, the per-layer set and the CLT in circuit-tracer's cache layout,
   a manifest (``synthetic.json`` in the model folder: shape, targets and measured
   L0) and a build stamp; an up-to-date build is kept.

The result loads through :func:`circuitray.models.loading.load_replacement_model` like
any bundled model: ``--model synthetic-gemma-2-2b`` (full shape) or
``--model synthetic-gemma-2-2b-s0.0625`` (``--scale 0.0625``), see
:func:`circuitray.models.registry.synthetic_model_name`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

from circuitray.errors import CircuitrayError
from circuitray.models.builders.artifacts import (
    CrossLayerTranscoderWeights,
    TranscoderWeights,
    save_cross_layer_transcoder,
    save_hf_model,
    save_transcoder_set,
)
from circuitray.models.builders.hooks import record_mlp_io
from circuitray.models.builders.stamp import build_key, is_current, write_stamp
from circuitray.models.builders.tokenizer import SPECIAL_TOKENS, build_tokenizer
from circuitray.models.registry import (
    BundledModel,
    bundled_model,
    circuitray_home,
    synthetic_model_name,
)
from circuitray.models.registry import transcoder_cache_dir as default_transcoder_cache_dir
from circuitray.prompts.ws2 import VOCABULARY, generate_ws2

logger = logging.getLogger(__name__)

__all__ = [
    "CLT_MAX_BYTES",
    "GEMMASCOPE_L0",
    "SHAPES",
    "SyntheticShape",
    "build_synthetic",
    "scaled_shape",
]

# Average L0 (active features per token) of each layer's GemmaScope transcoder in the
# set circuit-tracer loads as ``gemma`` (google/gemma-scope-2b-pt-transcoders, width
# 16k): the ``average_l0_<n>`` variant names of layers 0..25, as listed in
# mntss/gemma-scope-transcoders' config.yaml and circuit-tracer's
# ``utils/hf_utils.py`` (``gemma_2_2b_pt_16k``). 1020 features per token in all.
GEMMASCOPE_L0 = (
    76, 65, 49, 54, 88, 87, 95, 70, 52, 72, 88, 5, 6,
    8, 8, 8, 10, 12, 13, 12, 11, 13, 15, 25, 37, 41,
)  # fmt: skip

# A CLT of more parameters than this is not built (full-shape gemma's would be 13G).
CLT_MAX_BYTES = 4 * 2**30


@dataclass(frozen=True)
class SyntheticShape:
    """A real model's configuration, as far as a synthetic copy needs it.

    Attributes:
        like: The real model it copies (``gemma-2-2b``, ``llama-3.2-1b``).
        hub_id: Its Hugging Face id (recorded, never loaded).
        architecture: ``gemma2`` or ``llama``.
        n_layers: Decoder layers (kept by scaling).
        d_model: Residual stream width.
        d_mlp: MLP hidden width.
        n_heads: Attention heads (kept by scaling).
        n_kv_heads: Key/value heads (kept by scaling).
        head_dim: Width of one head.
        vocab_size: Vocabulary size (the generated tokenizer has exactly this many).
        d_transcoder: Features per layer of its transcoders.
        l0: Target active features per token, per layer (kept by scaling, capped at a
            quarter of the features).
        l0_source: Where the ``l0`` figures come from.
        feature_input_hook: circuit-tracer hook the transcoders read.
        feature_output_hook: circuit-tracer hook the transcoders write.
        transcoders_hub: The real transcoder set's circuit-tracer reference.
        extra: Architecture-specific config values (soft-caps, sliding window, RoPE).
    """

    like: str
    hub_id: str
    architecture: str
    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    d_transcoder: int
    l0: tuple[int, ...]
    l0_source: str
    feature_input_hook: str
    feature_output_hook: str
    transcoders_hub: str
    extra: dict = field(default_factory=dict)


SHAPES: dict[str, SyntheticShape] = {
    "gemma-2-2b": SyntheticShape(
        like="gemma-2-2b",
        hub_id="google/gemma-2-2b",
        architecture="gemma2",
        n_layers=26,
        d_model=2304,
        d_mlp=9216,
        n_heads=8,
        n_kv_heads=4,
        head_dim=256,
        vocab_size=256_000,
        d_transcoder=16_384,
        l0=GEMMASCOPE_L0,
        l0_source=(
            "GemmaScope 16k transcoders of circuit-tracer's 'gemma' set "
            "(average_l0_<n> variant names, mntss/gemma-scope-transcoders config.yaml)"
        ),
        feature_input_hook="ln2.hook_normalized",
        feature_output_hook="hook_mlp_out",
        transcoders_hub="gemma",
        extra={
            "final_logit_softcapping": 30.0,
            "attn_logit_softcapping": 50.0,
            "sliding_window": 4096,
            "query_pre_attn_scalar": 256,
            "max_position_embeddings": 8192,
            "rope_theta": 10_000.0,
        },
    ),
    "llama-3.2-1b": SyntheticShape(
        like="llama-3.2-1b",
        hub_id="meta-llama/Llama-3.2-1B",
        architecture="llama",
        n_layers=16,
        d_model=2048,
        d_mlp=8192,
        n_heads=32,
        n_kv_heads=8,
        head_dim=64,
        vocab_size=128_256,
        d_transcoder=131_072,
        # No per-layer L0 of mntss/transcoder-Llama-3.2-1B is in the material
        # available here: the gemma set's 1020 features per token spread evenly
        # over 16 layers is the stated assumption.
        l0=(64,) * 16,
        l0_source="assumed: GemmaScope's 1020 features/token spread over 16 layers",
        feature_input_hook="mlp.hook_in",
        feature_output_hook="mlp.hook_out",
        transcoders_hub="llama",
        extra={
            "rope_theta": 500_000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            "max_position_embeddings": 131_072,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": True,
        },
    ),
}


def scaled_shape(shape: SyntheticShape, scale: float) -> SyntheticShape:
    """``shape`` with widths, head size, features and vocabulary times ``scale``.

    Layer count, head counts, hooks and architecture are kept; the vocabulary keeps at
    least the WS2 words; each layer's L0 target is capped at a quarter of its features.
    """
    if not 0 < scale <= 1:
        raise CircuitrayError(f"--scale {scale}: must be in (0, 1]")
    if scale == 1:
        return shape

    def width(x: int, multiple: int, minimum: int) -> int:
        return max(minimum, multiple * round(x * scale / multiple))

    d_tc = width(shape.d_transcoder, 64, 256)
    head_dim = width(shape.head_dim, 2, 8)
    extra = dict(shape.extra)
    if "query_pre_attn_scalar" in extra:
        extra["query_pre_attn_scalar"] = head_dim
    return replace(
        shape,
        d_model=width(shape.d_model, 8, 32),
        d_mlp=width(shape.d_mlp, 8, 64),
        head_dim=head_dim,
        vocab_size=max(width(shape.vocab_size, 8, 0), len(SPECIAL_TOKENS) + len(VOCABULARY)),
        d_transcoder=d_tc,
        l0=tuple(min(n, d_tc // 4) for n in shape.l0),
        extra=extra,
    )


def _hf_config(shape: SyntheticShape, tokenizer) -> Gemma2Config | LlamaConfig:
    common: dict[str, Any] = dict(
        vocab_size=shape.vocab_size,
        hidden_size=shape.d_model,
        intermediate_size=shape.d_mlp,
        num_hidden_layers=shape.n_layers,
        num_attention_heads=shape.n_heads,
        num_key_value_heads=shape.n_kv_heads,
        head_dim=shape.head_dim,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attn_implementation="eager",
        **shape.extra,
    )
    if shape.architecture == "gemma2":
        return Gemma2Config(architectures=["Gemma2ForCausalLM"], **common)
    return LlamaConfig(architectures=["LlamaForCausalLM"], **common)


def _tokenizer(vocab_size: int):
    """Word-level tokenizer: the WS2 words, then ``w<i>`` fillers up to ``vocab_size``."""
    words = list(VOCABULARY)
    n_fill = vocab_size - len(SPECIAL_TOKENS) - len(words)
    words += [f"w{i}" for i in range(n_fill)]
    tok = build_tokenizer(words)
    if len(tok) != vocab_size:
        raise AssertionError(f"tokenizer has {len(tok)} ids, expected {vocab_size}")
    return tok


def _gaussian_quantile(p: float) -> float:
    """z with P(N(0,1) > z) = p."""
    return math.sqrt(2.0) * torch.erfinv(torch.tensor(1.0 - 2.0 * p, dtype=torch.float64)).item()


def _transcoder_layer(
    x: torch.Tensor, y: torch.Tensor, *, d_tc: int, l0: int, g: torch.Generator
) -> TranscoderWeights:
    """Steps 5-6 for one layer: calibrated JumpReLU encoder, scaled random decoder."""
    d_model = x.shape[1]
    w = torch.randn(d_tc, d_model, generator=g)
    w = w / w.norm(dim=1, keepdim=True)
    pre = x @ w.T
    mean, std = pre.mean(0), pre.std(0).clamp(min=1e-6)
    w_enc = w / std[:, None]
    b_enc = -mean / std
    z = _gaussian_quantile(l0 / d_tc)
    threshold = torch.full((d_tc,), z)
    pre = x @ w_enc.T + b_enc
    acts = torch.where(pre > threshold, pre, torch.zeros_like(pre))
    w_dec = torch.randn(d_tc, d_model, generator=g)
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
    b_dec = y.mean(0)
    recon = (acts @ w_dec).norm(dim=1).mean().clamp(min=1e-6)
    w_dec = w_dec * ((y - b_dec).norm(dim=1).mean() / recon)
    return TranscoderWeights(
        W_enc=w_enc, b_enc=b_enc, W_dec=w_dec, b_dec=b_dec, threshold=threshold
    )


def _measured_l0(layers: dict[int, TranscoderWeights], x: dict[int, torch.Tensor]) -> list[float]:
    out = []
    for i, t in sorted(layers.items()):
        pre = x[i] @ t.W_enc.T + t.b_enc
        assert t.threshold is not None
        out.append(round(float((pre > t.threshold).sum(1).float().mean()), 2))
    return out


def _clt(layers: dict[int, TranscoderWeights], g: torch.Generator) -> CrossLayerTranscoderWeights:
    """Step 7: the per-layer encoders, random decoders to every later layer."""
    n = len(layers)
    enc = [layers[i] for i in range(n)]
    w_dec = []
    for i, t in enumerate(enc):
        d = torch.randn(t.W_dec.shape[0], n - i, t.W_dec.shape[1], generator=g)
        d = d / d.norm(dim=2, keepdim=True)
        # Scaled like the per-layer decoder, split over the n - i layers written.
        w_dec.append(d * (t.W_dec.norm(dim=1).mean() / math.sqrt(n - i)))
    assert all(t.threshold is not None for t in enc)
    return CrossLayerTranscoderWeights(
        W_enc=torch.stack([t.W_enc for t in enc]),
        b_enc=torch.stack([t.b_enc for t in enc]),
        W_dec=w_dec,
        b_dec=torch.stack([t.b_dec for t in enc]),
        threshold=torch.stack([t.threshold for t in enc]),  # type: ignore[misc]
    )


def clt_bytes(shape: SyntheticShape) -> int:
    """Size in float32 of ``shape``'s CLT decoders (the bulk of it)."""
    n = shape.n_layers
    return 4 * shape.d_transcoder * shape.d_model * n * (n + 1) // 2


# What decides a synthetic build's bytes besides its arguments (circuitray.models.builders.stamp).
SYNTHETIC_BUILD_MODULES = (
    "circuitray.models.builders.artifacts",
    "circuitray.models.builders.hooks",
    "circuitray.models.registry",
    "circuitray.models.builders.synthetic",
    "circuitray.models.builders.tokenizer",
    "circuitray.prompts.ws2",
)


def build_synthetic(
    *,
    like: str = "gemma-2-2b",
    scale: float = 1.0,
    seed: int = 0,
    calibration_prompts: int = 400,
    force: bool = False,
) -> dict[str, Path]:
    """Build a synthetic model of ``like``'s shape (see module docstring).

    Args:
        like: Real model whose shape is copied (a key of :data:`SHAPES`).
        scale: Width factor in (0, 1]: 1 is the full shape; smaller keeps the layer
            count and architecture and shrinks widths, features and vocabulary.
        seed: Seed of every random weight.
        calibration_prompts: WS2 prompts whose tokens calibrate the encoders (a
            quarter more, held out, measure the L0 reached).
        force: Rebuild even if the saved build is up to date.

    Returns:
        Paths of ``model``, ``transcoders`` and (when built) ``cross_layer_transcoders``.
    """
    plan = _plan(like=like, scale=scale, seed=seed, calibration_prompts=calibration_prompts)
    paths = plan.paths
    if not force and is_current(plan.stamp, plan.key, paths):
        logger.info("%s up to date at %s", plan.name, paths["model"])
        return paths
    model, tokenizer = _random_model(plan.shape, seed)
    calibrated = _calibrate(plan, model, tokenizer)
    save_hf_model(model, tokenizer, paths["model"])  # step 8 (the model first, freed)
    del model
    _save_transcoders(plan, calibrated)
    _write_manifest(plan, calibrated.measured)
    write_stamp(plan.stamp, plan.key, paths)
    logger.info(
        "built %s: L0 per token %.0f (target %d); model %s",
        plan.name,
        sum(calibrated.measured),
        sum(plan.shape.l0),
        paths["model"],
    )
    return paths


@dataclass(frozen=True)
class _Plan:
    """One synthetic build: its arguments, shape (step 1), the folders it writes and
    its stamp and key (step 8)."""

    like: str
    scale: float
    seed: int
    calibration_prompts: int
    name: str
    shape: SyntheticShape
    bundled: BundledModel
    paths: dict[str, Path]
    stamp: Path
    key: str

    @property
    def with_clt(self) -> bool:
        return "cross_layer_transcoders" in self.paths


@dataclass(frozen=True)
class _Calibrated:
    """Steps 4-6: the per-layer transcoders, the L0 each reached on held-out prompts,
    and the generator step 7 goes on drawing from."""

    layers: dict[int, TranscoderWeights]
    measured: list[float]
    g: torch.Generator


def _plan(*, like: str, scale: float, seed: int, calibration_prompts: int) -> _Plan:
    """Step 1, and where step 8 writes: the CLT only under :data:`CLT_MAX_BYTES`."""
    if like not in SHAPES:
        raise CircuitrayError(f"--like {like!r}: unknown; one of {', '.join(SHAPES)}")
    shape = scaled_shape(SHAPES[like], scale)
    name = synthetic_model_name(like, scale)
    bundled = bundled_model(name)
    assert bundled is not None
    home = circuitray_home()
    cache = default_transcoder_cache_dir()
    paths = {"model": home / bundled.subdir, "transcoders": cache / bundled.transcoders}
    if clt_bytes(shape) <= CLT_MAX_BYTES:
        paths["cross_layer_transcoders"] = cache / bundled.cross_layer_transcoders
    key = build_key(
        {"like": like, "scale": scale, "seed": seed, "calibration_prompts": calibration_prompts},
        modules=SYNTHETIC_BUILD_MODULES,
    )
    return _Plan(
        like=like,
        scale=scale,
        seed=seed,
        calibration_prompts=calibration_prompts,
        name=name,
        shape=shape,
        bundled=bundled,
        paths=paths,
        stamp=home / "models" / f"{name}-build.json",
        key=key,
    )


def _random_model(
    shape: SyntheticShape, seed: int
) -> tuple[Gemma2ForCausalLM | LlamaForCausalLM, Any]:
    """Steps 2-3: the tokenizer and the HF model, randomly initialised under ``seed``."""
    torch.manual_seed(seed)
    tokenizer = _tokenizer(shape.vocab_size)
    config = _hf_config(shape, tokenizer)
    model_cls = Gemma2ForCausalLM if shape.architecture == "gemma2" else LlamaForCausalLM
    return model_cls(config).eval(), tokenizer  # type: ignore[arg-type]


def _calibrate(plan: _Plan, model, tokenizer) -> _Calibrated:
    """Steps 4-6 on WS2 prompts (a quarter more held out to measure the L0)."""
    shape, seed, n = plan.shape, plan.seed, plan.calibration_prompts
    n_held = max(1, n // 4)
    texts = [r["prompt"] for r in generate_ws2(n=n + n_held, seed=seed)]
    x, y = record_mlp_io(model, tokenizer, texts[:n])
    x_held, _ = record_mlp_io(model, tokenizer, texts[n:])
    g = torch.Generator().manual_seed(seed + 1)
    layers = {
        i: _transcoder_layer(x[i], y[i], d_tc=shape.d_transcoder, l0=shape.l0[i], g=g)
        for i in range(shape.n_layers)
    }
    return _Calibrated(layers=layers, measured=_measured_l0(layers, x_held), g=g)


def _save_transcoders(plan: _Plan, calibrated: _Calibrated) -> None:
    """Step 8's transcoder set, and step 7's CLT (drawn here, after the set) where
    it is built."""
    hooks = {
        "feature_input_hook": plan.shape.feature_input_hook,
        "feature_output_hook": plan.shape.feature_output_hook,
    }
    layers = calibrated.layers
    save_transcoder_set(
        layers,
        plan.paths["transcoders"],
        scan=plan.bundled.transcoders,
        model_name=plan.name,
        **hooks,
    )
    if plan.with_clt:
        save_cross_layer_transcoder(
            _clt(layers, calibrated.g),
            plan.paths["cross_layer_transcoders"],
            scan=plan.bundled.cross_layer_transcoders,
            model_name=plan.name,
            **hooks,
        )


def _write_manifest(plan: _Plan, measured: list[float]) -> None:
    """Step 8's ``synthetic.json`` in the model folder."""
    shape = plan.shape
    manifest = {
        "name": plan.name,
        "like": plan.like,
        "scale": plan.scale,
        "seed": plan.seed,
        "shape": {**asdict(shape), "l0": list(shape.l0)},
        "l0_target_per_token": sum(shape.l0),
        "l0_measured_per_layer": measured,
        "l0_measured_per_token": round(sum(measured), 1),
        "cross_layer_transcoders": plan.with_clt,
        "note": "random weights of the real shape: graph sizes are real, meanings are not",
    }
    (plan.paths["model"] / "synthetic.json").write_text(json.dumps(manifest, indent=2) + "\n")
