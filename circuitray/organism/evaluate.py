"""The organism's evaluation report.

1. Constraint accuracy, per type, on ``heldout`` WS2 prompts: the expected
   completion must be the top-1 among that type's candidate answers (chance is
   ``1 / len(candidates)``); unrestricted top-1 over the vocabulary is reported too.
2. Transcoders, per layer, on held-out text: normalised MSE, explained variance of
   the MLP output, mean L0 (and as a fraction of the dictionary), dead features;
   measured on the base model (where they were trained) and on the tuned one.
3. Attribution graphs of a sample of held-out prompts through circuit-tracer,
   loaded exactly as ``circuitray run`` loads them: replacement and completeness.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from circuitray.models.hooks import pad_with_bos
from circuitray.prompts.ws2 import CONSTRAINTS


@torch.no_grad()
def constraint_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict],
    *,
    batch_size: int = 256,
) -> dict[str, dict]:
    """Per constraint type: n, candidate top-1 accuracy, chance, vocabulary top-1.

    Prompts are right-padded into batches (:func:`~circuitray.models.hooks.pad_with_bos`)
    and read at their last real position.
    """
    vocab = tokenizer.get_vocab()
    out: dict[str, dict] = {}
    for name, c in CONSTRAINTS.items():
        typed = [r for r in rows if r["constraint_type"] == name]
        if not typed:
            continue
        cand_ids = torch.tensor([vocab[t] for t in c.candidates])
        correct = top1 = 0
        for b in range(0, len(typed), batch_size):
            chunk = typed[b : b + batch_size]
            ids, lengths = pad_with_bos(tokenizer, [r["prompt"] for r in chunk])
            last = torch.tensor(lengths) - 1
            logits = model(ids).logits[torch.arange(len(chunk)), last]
            target = torch.tensor([vocab[r["target"]] for r in chunk])
            correct += int((cand_ids[logits[:, cand_ids].argmax(-1)] == target).sum())
            top1 += int((logits.argmax(-1) == target).sum())
        out[name] = {
            "n": len(typed),
            "accuracy": correct / len(typed),
            "chance": 1 / len(c.candidates),
            "vocab_top1_accuracy": top1 / len(typed),
        }
    return out


def graph_scores(model_name: str, prompts: list[dict], *, batch_size: int = 64) -> dict:
    """Mean replacement / completeness of circuit-tracer graphs for ``prompts``."""
    from circuit_tracer import attribute
    from circuit_tracer.graph import compute_graph_scores

    from circuitray.models.loading import ModelSpec, load_replacement_model

    model = load_replacement_model(ModelSpec(model=model_name, device="cpu"))
    per_type: dict[str, list[tuple[float, float]]] = {}
    for r in prompts:
        graph = attribute(r["prompt"], model, batch_size=batch_size)
        per_type.setdefault(r["constraint_type"], []).append(compute_graph_scores(graph))
    every = [s for v in per_type.values() for s in v]
    return {
        "n": len(every),
        "mean_replacement": sum(s[0] for s in every) / len(every),
        "mean_completeness": sum(s[1] for s in every) / len(every),
        "per_type": {
            k: {
                "n": len(v),
                "mean_replacement": sum(s[0] for s in v) / len(v),
                "mean_completeness": sum(s[1] for s in v) / len(v),
            }
            for k, v in per_type.items()
        },
    }


def acceptance(report: dict) -> dict[str, bool]:
    """The organism's acceptance checks, evaluated on a report."""
    acc = report["accuracy"]
    tc = report["transcoders"]["base"]
    checks = {}
    for name, t in acc["tuned"].items():
        checks[f"tuned_accuracy_{name}>=0.95"] = t["accuracy"] >= 0.95
    for name, b in acc["base"].items():
        checks[f"base_accuracy_{name}<=chance+0.10"] = b["accuracy"] <= b["chance"] + 0.10
    for layer, m in tc.items():
        checks[f"explained_variance_layer{layer}>=0.8"] = m["explained_variance"] >= 0.8
        checks[f"l0_fraction_layer{layer}<0.05"] = m["l0_fraction"] < 0.05
    checks["mean_replacement_tuned>=0.5"] = report["graphs"]["tuned"]["mean_replacement"] >= 0.5
    return checks
