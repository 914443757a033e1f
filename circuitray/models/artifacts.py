"""Saving model folders and transcoder sets in the layouts their loaders read.

Both writers build into a temporary sibling folder and rename it into place, so a
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
        return {k: v.detach().to(torch.float32).contiguous().clone() for k, v in d.items()}


def _replace_dir(tmp: Path, final: Path) -> None:
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
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for layer, weights in sorted(layers.items()):
        save_file(weights.state_dict(), str(tmp / f"layer_{layer}.safetensors"))
    config = {
        "model_kind": "transcoder_set",
        "model_name": model_name,
        "feature_input_hook": feature_input_hook,
        "feature_output_hook": feature_output_hook,
        "scan": scan,
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=True))
    _replace_dir(tmp, out_dir)
    return out_dir
