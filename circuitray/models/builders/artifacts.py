"""Saving model folders and transcoder sets in the layouts their loaders read.

All writers build into a temporary sibling folder and rename it into place, so a
crash never leaves a half-written model that a loader would accept.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Gemma-2's transcoder hooks as circuit-tracer names them (GemmaScope uses the same):
# features read the normalised MLP input and write the (post-norm) MLP output.
GEMMA2_FEATURE_INPUT_HOOK = "ln2.hook_normalized"
GEMMA2_FEATURE_OUTPUT_HOOK = "hook_mlp_out"


@dataclass
class TranscoderWeights:
    """One layer's per-layer transcoder, in circuit-tracer's safetensors key names.

    Attributes:
        W_enc: (d_transcoder, d_model) encoder.
        b_enc: (d_transcoder,) encoder bias.
        W_dec: (d_transcoder, d_model) decoder.
        b_dec: (d_model,) decoder bias.
        threshold: (d_transcoder,) JumpReLU thresholds, or None for ReLU.
    """

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    threshold: torch.Tensor | None = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        d = {
            "W_enc": self.W_enc,
            "b_enc": self.b_enc,
            "W_dec": self.W_dec,
            "b_dec": self.b_dec,
        }
        if self.threshold is not None:
            d["activation_function.threshold"] = self.threshold
        return _float32(d)


@dataclass
class CrossLayerTranscoderWeights:
    """A cross-layer transcoder (CLT): the features of layer ``i`` read layer ``i``'s MLP
    input and write to the MLP outputs of layers ``i..n_layers-1``.

    Shapes follow circuit-tracer's ``CrossLayerTranscoder``.

    Attributes:
        W_enc: (n_layers, d_transcoder, d_model) encoders, one per layer.
        b_enc: (n_layers, d_transcoder) encoder biases.
        W_dec: One decoder per source layer: ``W_dec[i]`` is
            (d_transcoder, n_layers - i, d_model), and ``W_dec[i][:, j - i]`` is what
            layer ``i``'s features write to layer ``j``'s MLP output (``j >= i``).
        b_dec: (n_layers, d_model) decoder bias of each layer's MLP output.
        threshold: (n_layers, d_transcoder) JumpReLU thresholds, or None for ReLU.
    """

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: list[torch.Tensor]
    b_dec: torch.Tensor
    threshold: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n_layers, d_transcoder, d_model = self.W_enc.shape
        expected = {
            "b_enc": (tuple(self.b_enc.shape), (n_layers, d_transcoder)),
            "b_dec": (tuple(self.b_dec.shape), (n_layers, d_model)),
            "len(W_dec)": (len(self.W_dec), n_layers),
        }
        if self.threshold is not None:
            expected["threshold"] = (tuple(self.threshold.shape), (n_layers, d_transcoder))
        for i, w in enumerate(self.W_dec):
            expected[f"W_dec[{i}]"] = (tuple(w.shape), (d_transcoder, n_layers - i, d_model))
        bad = [f"{k} {got} != {want}" for k, (got, want) in expected.items() if got != want]
        if bad:
            raise ValueError(f"cross-layer transcoder shapes: {'; '.join(bad)}")

    @property
    def n_layers(self) -> int:
        return int(self.W_enc.shape[0])

    def layer_files(self, layer: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The tensors of ``W_enc_{layer}.safetensors`` and ``W_dec_{layer}.safetensors``."""
        enc = {
            f"W_enc_{layer}": self.W_enc[layer],
            f"b_enc_{layer}": self.b_enc[layer],
            f"b_dec_{layer}": self.b_dec[layer],
        }
        if self.threshold is not None:
            enc[f"threshold_{layer}"] = self.threshold[layer]
        dec = {f"W_dec_{layer}": self.W_dec[layer]}
        return _float32(enc), _float32(dec)


def _float32(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(torch.float32).contiguous().clone() for k, v in d.items()}


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing what was there."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


def save_hf_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path
) -> Path:
    """Save a causal LM and its tokenizer as a local HF folder (atomically)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    _replace_dir(tmp, out_dir)
    return out_dir


def save_transcoder_set(
    layers: Mapping[int, TranscoderWeights],
    out_dir: Path,
    *,
    scan: str,
    model_name: str,
    feature_input_hook: str = GEMMA2_FEATURE_INPUT_HOOK,
    feature_output_hook: str = GEMMA2_FEATURE_OUTPUT_HOOK,
) -> Path:
    """Write ``config.yaml`` + ``layer_{i}.safetensors`` as circuit-tracer's cache does.

    ``config.yaml`` is written last inside the temporary folder: circuit-tracer treats
    a cache entry as complete once that file exists.
    """
    files = {
        f"layer_{layer}.safetensors": weights.state_dict()
        for layer, weights in sorted(layers.items())
    }
    config = {
        "model_kind": "transcoder_set",
        "model_name": model_name,
        "feature_input_hook": feature_input_hook,
        "feature_output_hook": feature_output_hook,
        "scan": scan,
    }
    return _save_cache_entry(Path(out_dir), files, config)


def _save_cache_entry(out_dir: Path, files: dict[str, dict], config: dict) -> Path:
    """Safetensors ``files`` then ``config.yaml`` into a temporary sibling folder,
    renamed into place (a cache entry is complete once config.yaml exists)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, tensors in files.items():
        save_file(tensors, str(tmp / name))
    (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=True))
    _replace_dir(tmp, out_dir)
    return out_dir


def save_cross_layer_transcoder(
    weights: CrossLayerTranscoderWeights,
    out_dir: Path,
    *,
    scan: str,
    model_name: str,
    feature_input_hook: str = GEMMA2_FEATURE_INPUT_HOOK,
    feature_output_hook: str = GEMMA2_FEATURE_OUTPUT_HOOK,
) -> Path:
    """Write ``config.yaml`` + ``W_enc_{i}``/``W_dec_{i}.safetensors`` as circuit-tracer's
    cache holds a CLT (what its ``load_clt`` reads).

    ``W_enc_{i}.safetensors`` holds ``W_enc_{i}``, ``b_enc_{i}``, ``b_dec_{i}`` and, for
    JumpReLU, ``threshold_{i}``; ``W_dec_{i}.safetensors`` holds ``W_dec_{i}``. As for
    :func:`save_transcoder_set`, ``config.yaml`` is written last and the folder is
    renamed into place.
    """
    files = {}
    for layer in range(weights.n_layers):
        enc, dec = weights.layer_files(layer)
        files[f"W_enc_{layer}.safetensors"] = enc
        files[f"W_dec_{layer}.safetensors"] = dec
    config = {
        "model_kind": "cross_layer_transcoder",
        "model_name": model_name,
        "feature_input_hook": feature_input_hook,
        "feature_output_hook": feature_output_hook,
        "scan": scan,
    }
    return _save_cache_entry(Path(out_dir), files, config)
