"""Deterministic causal-LM training of the tiny Gemma-2 on CPU.

1. Tokenise every sentence with BOS first (as circuit-tracer's ``attribute`` does)
   and right-pad to a fixed length; padding is masked out of the loss.
2. Each step draws a batch with ``torch.Generator(seed)``; AdamW with linear warm-up
   and cosine decay; gradients clipped to norm 1.
3. Determinism: the caller fixes torch's thread count and turns on
   ``torch.use_deterministic_algorithms``; with the same seed and thread count the
   weights are bit-identical.
"""

from __future__ import annotations

import logging
import math

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from circuitray.models.hooks import encode_with_bos

logger = logging.getLogger(__name__)


def encode_batch(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], *, max_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels): BOS-prefixed, right-padded; labels -100 on padding."""
    pad = int(tokenizer.pad_token_id)  # type: ignore[arg-type]
    ids = torch.full((len(texts), max_len), pad, dtype=torch.long)
    labels = torch.full((len(texts), max_len), -100, dtype=torch.long)
    for i, t in enumerate(texts):
        toks = encode_with_bos(tokenizer, t)[:max_len]
        ids[i, : len(toks)] = torch.tensor(toks)
        labels[i, 1 : len(toks)] = torch.tensor(toks[1:])  # never predict BOS
    return ids, labels


def train_lm(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    max_len: int = 20,
    weight_decay: float = 0.01,
    log_every: int = 100,
) -> list[float]:
    """Train ``model`` in place on ``texts``; returns the loss of every step."""
    ids, labels = encode_batch(tokenizer, texts, max_len=max_len)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    model.train()
    losses = []
    for step in range(steps):
        idx = torch.randint(len(texts), (batch_size,), generator=gen)
        out = model(input_ids=ids[idx], labels=labels[idx])
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(out.loss.detach().item())
        if log_every and step % log_every == 0:
            logger.info("step %d/%d loss %.4f", step, steps, losses[-1])
    model.eval()
    return losses
