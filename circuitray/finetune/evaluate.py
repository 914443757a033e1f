"""What each checkpoint of a fine-tune is measured on.

1. Constraint accuracy per type on held-out prompts (:func:`constraint_accuracy`):
   the expected completion must be the top-1 among that type's candidate answers;
   the mean probability of the target over the whole vocabulary is reported too.
2. Transcoder fit per layer (:func:`transcoder_fit`): the base model's transcoders
   applied to this checkpoint's MLP inputs, scored against its MLP outputs
   (normalised MSE and explained variance), read at the set's own input hook
   (``feature_input_hook``: Gemma-2's ``ln2.hook_normalized``, Gemma-3's and Llama's
   ``mlp.hook_in``; :func:`circuitray.models.builders.hooks.record_mlp_io`); a set read
   elsewhere (``hook_resid_mid``) is skipped with a warning. Per-layer sets and
   cross-layer transcoders are both loaded through circuit-tracer's own loader.
"""

from __future__ import annotations

import logging

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from circuitray.errors import CircuitrayError
from circuitray.graph.attribute import target_token_id
from circuitray.models.builders.hooks import INPUT_HOOKS, pad_with_bos, record_mlp_io
from circuitray.prompts.ws2 import CONSTRAINTS

logger = logging.getLogger(__name__)

__all__ = ["constraint_accuracy", "load_transcoders", "transcoder_fit"]


@torch.no_grad()
def constraint_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict],
    *,
    batch_size: int = 256,
) -> dict[str, dict]:
    """Per constraint type: n, accuracy, chance, vocabulary top-1 and the mean target
    probability.

    Accuracy is top-1 among the type's candidate answers for a WS2 type, top-1 over
    the vocabulary for any other (chance None). A target or candidate is its first
    token as a continuation (:func:`circuitray.graph.attribute.target_token_id`: a
    leading space, as the training sentences have it). Prompts are right-padded into
    batches (:func:`~circuitray.models.builders.hooks.pad_with_bos`) and read at their last real
    position.
    """
    device = next(model.parameters()).device
    by_type: dict[str, list[dict]] = {}
    for r in rows:
        by_type.setdefault(r.get("constraint_type") or "(none)", []).append(r)
    order = [t for t in CONSTRAINTS if t in by_type] + sorted(set(by_type) - set(CONSTRAINTS))

    def token(word: str) -> int:
        tid = target_token_id(tokenizer, word)
        if tid is None:
            raise CircuitrayError(f"target {word!r}: the tokenizer gives it no token")
        return tid

    out: dict[str, dict] = {}
    for name in order:
        typed = by_type[name]
        c = CONSTRAINTS.get(name)
        cand_ids = torch.tensor([token(t) for t in c.candidates], device=device) if c else None
        correct = top1 = 0
        prob = 0.0
        for b in range(0, len(typed), batch_size):
            chunk = typed[b : b + batch_size]
            ids, lengths = pad_with_bos(tokenizer, [r["prompt"] for r in chunk])
            last = torch.tensor(lengths) - 1
            logits = model(ids.to(device)).logits[torch.arange(len(chunk)), last.to(device)]
            target = torch.tensor([token(r["target"]) for r in chunk], device=device)
            hit = logits.argmax(-1) == target
            top1 += int(hit.sum())
            if cand_ids is not None:
                correct += int((cand_ids[logits[:, cand_ids].argmax(-1)] == target).sum())
            else:
                correct += int(hit.sum())
            probs = logits.float().softmax(-1)
            prob += float(probs[torch.arange(len(chunk)), target].sum())
        out[name] = {
            "n": len(typed),
            "accuracy": correct / len(typed),
            "chance": 1 / len(c.candidates) if c else None,
            "vocab_top1_accuracy": top1 / len(typed),
            "target_prob": prob / len(typed),
        }
    return out


def load_transcoders(reference: str, *, cache_dir: str, device: str = "cpu"):
    """A transcoder set or CLT by circuit-tracer reference (``gemma``, a cache name)."""
    from circuit_tracer.utils.hf_utils import load_transcoder_from_hub

    transcoders, _ = load_transcoder_from_hub(
        reference, device=torch.device(device), dtype=torch.float32, cache_dir=cache_dir
    )
    return transcoders


def _fit(y: torch.Tensor, y_hat: torch.Tensor) -> dict[str, float]:
    var = (y - y.mean(0)).pow(2).sum(-1).mean()
    resid = y - y_hat
    return {
        "nmse": float(resid.pow(2).sum(-1).mean() / var),
        "explained_variance": float(1 - (resid - resid.mean(0)).pow(2).sum(-1).mean() / var),
    }


@torch.no_grad()
def transcoder_fit(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], transcoders
) -> dict[str, dict[str, float]] | None:
    """Per layer (as a string), how well ``transcoders`` reconstruct ``model``'s MLP
    outputs on ``texts``, read at the transcoders' own input hook (Gemma-2's
    ``ln2.hook_normalized``, Gemma-3's and Llama's ``mlp.hook_in``); None where
    :func:`record_mlp_io` reads no such hook."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    input_hook = getattr(transcoders, "feature_input_hook", None)
    if not layers or input_hook not in INPUT_HOOKS:
        logger.warning("transcoder fit: no MLP hooks at %s to read; skipped", input_hook)
        return None
    device = next(model.parameters()).device
    x, y = record_mlp_io(model, tokenizer, texts, input_hook=input_hook)
    tc_device = next(transcoders.parameters()).device
    if hasattr(transcoders, "transcoders"):  # a per-layer TranscoderSet
        recon = {i: transcoders[i](x[i].to(tc_device)).to(device) for i in x}
    else:  # a cross-layer transcoder reads every layer's input at once
        stacked = torch.stack([x[i] for i in sorted(x)]).to(tc_device)
        out = transcoders(stacked)
        recon = {i: out[i].to(device) for i in sorted(x)}
    return {str(i): _fit(y[i], recon[i]) for i in sorted(x)}
