"""Reading a Gemma-2 model's MLP inputs and outputs at circuit-tracer's hook points.

circuit-tracer's Gemma-2 transcoders read ``ln2.hook_normalized`` (the pre-MLP RMS
norm's normalised input, before its learned scale) and write ``hook_mlp_out`` (the
output of the post-MLP norm); its Gemma-3 transcoders read ``mlp.hook_in`` (the pre-MLP
norm's output) and write ``hook_mlp_out``; its Llama transcoders read ``mlp.hook_in`` (the output
of ``post_attention_layernorm``) and write ``mlp.hook_out`` (the MLP's output). These
hooks record exactly those tensors from a plain HF model, for calibrating and
training transcoders.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def encode_with_bos(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids as circuit-tracer's ``attribute`` sees them: BOS, then the text."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return [int(tokenizer.bos_token_id), *ids]  # type: ignore[arg-type]


def pad_with_bos(
    tokenizer: PreTrainedTokenizerBase, texts: list[str]
) -> tuple[torch.Tensor, list[int]]:
    """(input_ids, lengths): each text BOS-first, right-padded to the longest.

    Under causal attention padding after a text cannot change its positions.
    """
    seqs = [encode_with_bos(tokenizer, t) for t in texts]
    pad = int(tokenizer.pad_token_id)  # type: ignore[arg-type]
    ids = torch.full((len(seqs), max(map(len, seqs))), pad, dtype=torch.long)
    for j, s in enumerate(seqs):
        ids[j, : len(s)] = torch.tensor(s)
    return ids, [len(s) for s in seqs]


# circuit-tracer's names of the transcoder inputs record_mlp_io reads.
INPUT_HOOKS = ("ln2.hook_normalized", "mlp.hook_in")


@torch.no_grad()
def record_mlp_io(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    *,
    skip_bos: bool = True,
    batch_size: int = 64,
    input_hook: str = "ln2.hook_normalized",
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Per layer, (n_tokens, d_model) transcoder inputs and targets over ``texts``.

    ``input_hook``: on a Gemma model, which of circuit-tracer's hooks the inputs are
    (``ln2.hook_normalized``: Gemma-2's; ``mlp.hook_in``: Gemma-3's); Llama models have
    one (``mlp.hook_in``).

    Texts are right-padded into batches (:func:`pad_with_bos`) and padded
    positions are dropped.
    """
    if input_hook not in INPUT_HOOKS:
        raise ValueError(f"input_hook {input_hook!r}: one of {', '.join(INPUT_HOOKS)}")
    layers = model.model.layers
    inputs: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(layers))}
    outputs: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(layers))}
    keep: list[torch.Tensor] = []
    handles = []
    for i, layer in enumerate(layers):

        def pre_hook(module, args, i=i):
            inputs[i].append(module._norm(args[0].float()).flatten(0, 1))

        def in_hook(module, args, output, i=i):
            inputs[i].append(output.float().flatten(0, 1))

        def out_hook(module, args, output, i=i):
            outputs[i].append(output.float().flatten(0, 1))

        if hasattr(layer, "pre_feedforward_layernorm") and input_hook == "mlp.hook_in":
            handles.append(layer.pre_feedforward_layernorm.register_forward_hook(in_hook))
            handles.append(layer.post_feedforward_layernorm.register_forward_hook(out_hook))
        elif hasattr(layer, "pre_feedforward_layernorm"):  # Gemma-2
            handles.append(layer.pre_feedforward_layernorm.register_forward_pre_hook(pre_hook))
            handles.append(layer.post_feedforward_layernorm.register_forward_hook(out_hook))
        else:  # Llama
            handles.append(layer.post_attention_layernorm.register_forward_hook(in_hook))
            handles.append(layer.mlp.register_forward_hook(out_hook))
    try:
        for b in range(0, len(texts), batch_size):
            ids, lengths = pad_with_bos(tokenizer, texts[b : b + batch_size])
            mask = torch.zeros(ids.shape, dtype=torch.bool)
            for j, n in enumerate(lengths):
                mask[j, (1 if skip_bos else 0) : n] = True
            # The body only: the layers' hooks fire, and no (batch, tokens, vocabulary)
            # logits are made (Gemma-3's 262,144-token vocabulary: 5 GB a batch).
            model.model(ids)
            keep.append(mask.flatten())
    finally:
        for h in handles:
            h.remove()
    m = torch.cat(keep)
    x: dict[int, torch.Tensor] = {}
    y: dict[int, torch.Tensor] = {}
    for i in range(len(layers)):  # one layer's batches at a time: never two copies of all
        x[i] = torch.cat(inputs.pop(i))[m]
        y[i] = torch.cat(outputs.pop(i))[m]
    return x, y
