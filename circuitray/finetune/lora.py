"""LoRA adapters through peft, and checkpoints with the adapters merged in.

1. :func:`add_lora` wraps a causal LM in a peft ``LoraModel`` over the named linear
   layers (only the adapters train).
2. :func:`merged_copy` gives a plain HF model with ``W + (alpha / r) B A`` in every
   adapted layer, computed by peft's own ``merge_and_unload`` on a copy, so training
   goes on unmerged; the copy saves as an ordinary HF folder that ``circuitray run
   --model PATH`` loads through the usual path.
"""

from __future__ import annotations

import copy

from transformers import PreTrainedModel

from circuitray.errors import CircuitrayError

__all__ = ["add_lora", "merged_copy"]


def add_lora(
    model: PreTrainedModel,
    *,
    r: int,
    alpha: int,
    dropout: float,
    targets: tuple[str, ...],
) -> PreTrainedModel:
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in present]
    if missing or not targets:
        raise CircuitrayError(
            f"LoRA targets: {', '.join(missing) or '(none given)'}: not a module name of "
            f"this model (its linear layers: {', '.join(sorted(_linear_names(model)))})"
        )
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none"
    )
    return get_peft_model(model, config)  # type: ignore[return-value]


def _linear_names(model: PreTrainedModel) -> set[str]:
    import torch

    return {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


def merged_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A plain HF model: ``model`` itself when it has no adapters, else a merged copy."""
    if not hasattr(model, "merge_and_unload"):
        return model
    return copy.deepcopy(model).merge_and_unload()  # type: ignore[operator]
