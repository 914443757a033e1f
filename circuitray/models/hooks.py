"""Reading a Gemma-2 model's MLP inputs and outputs at circuit-tracer's hook points.

circuit-tracer's Gemma-2 transcoders read ``ln2.hook_normalized`` (the pre-MLP RMS
norm's normalised input, before its learned scale) and write ``hook_mlp_out`` (the
output of the post-MLP norm). These hooks record exactly those tensors from a plain
HF model, for calibrating and training transcoders.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def encode_with_bos(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids as circuit-tracer's ``attribute`` sees them: BOS, then the text."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return [tokenizer.bos_token_id, *ids]


@torch.no_grad()
def record_mlp_io(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    *,
    skip_bos: bool = True,
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Per layer, (n_tokens, d_model) transcoder inputs and targets over ``texts``."""
    layers = model.model.layers
    inputs: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(layers))}
    outputs: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(layers))}
    handles = []
    for i, layer in enumerate(layers):
        norm_in = layer.pre_feedforward_layernorm
        norm_out = layer.post_feedforward_layernorm

        def pre_hook(module, args, i=i):
            inputs[i].append(module._norm(args[0].float())[0])

        def out_hook(module, args, output, i=i):
            outputs[i].append(output.float()[0])

        handles.append(norm_in.register_forward_pre_hook(pre_hook))
        handles.append(norm_out.register_forward_hook(out_hook))
    try:
        for text in texts:
            ids = torch.tensor([encode_with_bos(tokenizer, text)])
            model(ids)
    finally:
        for h in handles:
            h.remove()
    start = 1 if skip_bos else 0
    x = {i: torch.cat([t[start:] for t in v]) for i, v in inputs.items()}
    y = {i: torch.cat([t[start:] for t in v]) for i, v in outputs.items()}
    return x, y
