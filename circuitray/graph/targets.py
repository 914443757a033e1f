"""What a graph explains: the model's top logits, the prompt's answer, or the answer
against its alternatives (``--target top|answer|contrast``).

1. ``top``: circuit-tracer picks the logit nodes (``max_n_logits`` most probable
   tokens until ``desired_logit_prob``), as ``attribute()`` does without targets.
2. ``answer``: the prompt's ``target`` column, tokenised as a continuation of the
   prompt (:func:`continuation_ids`: a leading space, as in running text), is the one
   logit node, passed to ``attribute(attribution_targets=tensor([id]))``.
3. ``contrast``: one custom logit node (circuit-tracer's ``CustomTarget``) whose
   unembedding direction is the answer's column minus the mean of the alternatives'
   columns; its value is the answer's logit minus the alternatives' mean logit, so
   the graph explains what makes the model prefer the answer over the alternatives.
   The alternatives are the row's ``contrast`` list when the file has that column,
   else its ``candidates`` without the answer (WS2's constraint vocabulary). The
   node's probability is the answer's share of the softmax over the answer and its
   alternatives.
4. An answer or alternative of several tokens is represented by its first token and
   the graph says so (``target_first_token_only``); an alternative whose first token
   is the answer's own is dropped (it would cancel the answer). A row without what
   its mode needs raises :class:`TargetError`, which the caller turns into one error
   row naming what is missing.

Nothing here runs a forward pass: the caller gives the next-token logits. Only
resolving a target computes with tensors, so torch is imported there: the modes and
the columns they need are read by the driver and the CLI, which load no model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

TARGET_MODES = ("top", "answer", "contrast")


class TargetError(ValueError):
    """A prompt row lacks what its target mode needs."""


@dataclass
class ResolvedTarget:
    """A prompt's attribution target.

    Attributes:
        mode: One of :data:`TARGET_MODES`.
        targets: What ``attribute(attribution_targets=...)`` gets (None for ``top``).
        token_id: The answer's (first) token id; None for ``top``.
        contrast_ids: The alternatives' (first) token ids (``contrast`` only).
        logit: The answer's logit (``answer``) or the logit difference (``contrast``).
        first_token_only: The answer or an alternative has more than one token.
    """

    mode: str
    targets: torch.Tensor | Sequence[Any] | None = None
    token_id: int | None = None
    contrast_ids: list[int] = field(default_factory=list)
    logit: float | None = None
    first_token_only: bool | None = None

    def columns(self) -> dict:
        """The graphs-row columns this target fills."""
        return {
            "target_mode": self.mode,
            "target_token_id": self.token_id,
            "target_logit": self.logit,
            "contrast_token_ids": self.contrast_ids if self.mode == "contrast" else None,
            "target_first_token_only": self.first_token_only,
        }


def continuation_ids(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` as it continues a prompt: a leading space, as in text."""
    return list(tokenizer(" " + text.strip(), add_special_tokens=False).input_ids)


def required_columns(mode: str) -> tuple[tuple[str, ...], ...]:
    """Columns a prompt file needs for ``mode``: each inner tuple, one of them."""
    if mode == "answer":
        return (("target",),)
    if mode == "contrast":
        return (("target",), ("contrast", "candidates"))
    return ()


def _as_list(value, column: str) -> list[str]:
    """A list column's value as text items. A CSV (and a JSONL column of mixed types)
    holds a list as its JSON text, which is parsed; other text is one item for
    ``contrast`` and refused for ``candidates`` (its characters are not candidates)."""
    if value is None:
        return []
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if isinstance(parsed, list):
            value = parsed
        elif column == "contrast":
            value = [value]
        else:
            raise TargetError(
                f"--target contrast: column {column!r} holds text, not a list "
                '(write it as a JSON list, e.g. ["up", "down"])'
            )
    return [str(c).strip() for c in value if c is not None and str(c).strip()]


def alternatives(prompt: dict) -> list[str]:
    """The alternatives of ``prompt``'s answer (step 3 of the module docstring)."""
    if prompt.get("contrast") is not None:
        return _as_list(prompt["contrast"], "contrast")
    answer = str(prompt.get("target") or "").strip()
    return [c for c in _as_list(prompt.get("candidates"), "candidates") if c != answer]


def unembedding_columns(unembed: torch.Tensor, ids: list[int], d_vocab: int) -> torch.Tensor:
    """``(len(ids), d_model)`` unembedding vectors of ``ids`` from ``unembed`` in either
    orientation (circuit-tracer's backends differ: ``(d_model, d_vocab)`` or the transpose)."""
    import torch

    index = torch.tensor(ids, dtype=torch.long, device=unembed.device)
    if unembed.shape[0] == d_vocab and unembed.shape[-1] != d_vocab:
        return unembed[index]
    return unembed[:, index].T


def resolve_target(
    mode: str, prompt: dict, *, tokenizer, logits: torch.Tensor, unembed: torch.Tensor
) -> ResolvedTarget:
    """The target of ``prompt`` in ``mode``; ``logits``: the next-token logits of its
    tokens, ``unembed``: the model's ``unembed_proj``. Raises :class:`TargetError`."""
    import torch

    if mode not in TARGET_MODES:
        raise ValueError(f"target mode {mode!r}: choose one of {', '.join(TARGET_MODES)}")
    if mode == "top":
        return ResolvedTarget(mode="top")
    answer = prompt.get("target")
    if answer is None or not str(answer).strip():
        raise TargetError(f"--target {mode}: the prompt has no target (its expected answer)")
    ids = continuation_ids(tokenizer, str(answer))
    if not ids:
        raise TargetError(f"--target {mode}: the target {answer!r} has no tokens")
    token_id, multi = int(ids[0]), len(ids) > 1
    logits = logits.float()
    if mode == "answer":
        return ResolvedTarget(
            mode="answer",
            targets=torch.tensor([token_id], dtype=torch.long),
            token_id=token_id,
            logit=float(logits[token_id]),
            first_token_only=multi,
        )
    alt_ids: list[int] = []
    for alt in alternatives(prompt):
        alt_tokens = continuation_ids(tokenizer, alt)
        if alt_tokens and alt_tokens[0] != token_id and alt_tokens[0] not in alt_ids:
            alt_ids.append(int(alt_tokens[0]))
            multi = multi or len(alt_tokens) > 1
    if not alt_ids:
        raise TargetError(
            "--target contrast: the prompt has no alternatives to its target "
            "(a contrast list, or candidates other than the target)"
        )
    from circuit_tracer.attribution.targets import CustomTarget

    d_vocab = logits.shape[0]
    vectors = unembedding_columns(unembed, [token_id, *alt_ids], d_vocab)
    direction = vectors[0] - vectors[1:].mean(dim=0)
    diff = float(logits[token_id] - logits[alt_ids].mean())
    share = float(torch.softmax(logits[[token_id, *alt_ids]], dim=0)[0])
    answer_text = tokenizer.decode([token_id]).strip()
    alt_text = ", ".join(tokenizer.decode([i]).strip() for i in alt_ids)
    label = f"{answer_text} vs {alt_text}"
    return ResolvedTarget(
        mode="contrast",
        targets=[CustomTarget(token_str=label, prob=share, vec=direction)],
        token_id=token_id,
        contrast_ids=alt_ids,
        logit=diff,
        first_token_only=multi,
    )
