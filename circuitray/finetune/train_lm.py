"""Deterministic causal-LM training: the loop of every fine-tune (full or LoRA, one
device or Ray Train) and of the organism's two stages.

1. Tokenise every sentence with BOS first (as circuit-tracer's ``attribute`` does)
   and right-pad to a fixed length; padding is masked out of the loss.
2. Each step draws a batch with ``torch.Generator(seed)``; AdamW, gradients clipped
   to norm 1, a linear warm-up, then one of two schedules:

   - fixed length (no ``until``): cosine decay to 0.1 x ``lr`` over ``steps``;
   - until learned (``until`` given): constant ``lr`` (warmup-stable-decay), and every
     ``check_every`` steps ``until(model)`` is asked whether the training data is
     learned; once it says yes ``patience`` checks in a row (or ``steps`` minus
     ``anneal_steps`` is reached, the cap), the rate decays by a cosine to 0.1 x
     ``lr`` over ``anneal_steps`` and training stops. The step count then follows
     the data, not the last bits of one CPU's float kernels: a machine whose kernels
     learn a little slower trains a little longer.
3. Checkpoints: ``on_step(step, log, state)`` is called after every step; ``state()``
   gives everything a resumed call needs (step, optimizer and batch generator states,
   the schedule's position, the log so far), which ``resume=`` takes back, so a
   resumed run draws the same batches and rates as an uninterrupted one.
4. Determinism: the caller fixes torch's thread count and turns on
   ``torch.use_deterministic_algorithms``; with the same seed, thread count and CPU
   kernels the weights are bit-identical.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from circuitray.models.builders.hooks import encode_with_bos

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


@dataclass
class TrainingLog:
    """What one :func:`train_lm` call did.

    Attributes:
        losses: The loss of every step.
        lrs: The learning rate of every step.
        steps: Steps taken.
        learned_at: First step of the ``patience`` checks in a row at which ``until``
            held (None: never, or no ``until``).
        capped: Whether the step cap ended training before ``until`` held.
        checks: (step, until's answer) for every check.
    """

    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    steps: int = 0
    learned_at: int | None = None
    capped: bool = False
    checks: list[tuple[int, bool]] = field(default_factory=list)

    def final_loss(self, last: int = 20) -> float:
        tail = self.losses[-last:]
        return sum(tail) / len(tail)


@dataclass
class _Position:
    """Where a :func:`train_lm` call stands in its schedule (step 3's resumable state,
    with the optimizer's, the batch generator's and the log)."""

    step: int
    total: int
    # With ``until``: the step the decay starts (None while still learning).
    anneal_from: int | None
    streak: int = 0


@dataclass(frozen=True)
class _Schedule:
    """Step 2's learning-rate schedule and when training stops (see :func:`train_lm`'s
    arguments of the same names; ``steps`` is the fixed length or the cap)."""

    lr: float
    steps: int
    warmup: int
    until: Callable[[PreTrainedModel], bool] | None
    check_every: int
    patience: int
    anneal_steps: int

    def rate(self, pos: _Position) -> float:
        """The learning rate of step ``pos.step``."""
        return self.lr * self._factor(pos)

    def _factor(self, pos: _Position) -> float:
        step = pos.step
        if step < self.warmup:
            return (step + 1) / self.warmup
        if pos.anneal_from is None:
            return 1.0
        start = self.warmup if self.until is None else pos.anneal_from
        length = (pos.total - self.warmup) if self.until is None else self.anneal_steps
        progress = min(1.0, (step - start) / max(1, length))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    def after_step(self, model: PreTrainedModel, pos: _Position, log: TrainingLog) -> None:
        """With ``until``, while still learning: the check due at ``pos.step``, then
        the cap; either may start the anneal (moving ``pos.total``)."""
        if self.until is None or pos.anneal_from is not None:
            return
        step = pos.step
        if step % self.check_every == 0:
            model.eval()
            with torch.no_grad():
                ok = bool(self.until(model))
            model.train()
            log.checks.append((step, ok))
            pos.streak = pos.streak + 1 if ok else 0
            if pos.streak >= self.patience:
                log.learned_at = step - (self.patience - 1) * self.check_every
                pos.anneal_from, pos.total = step, step + self.anneal_steps
                logger.info("learned at step %d; annealing %d steps", step, self.anneal_steps)
        if pos.anneal_from is None and step >= self.steps - self.anneal_steps:
            log.capped = True
            pos.anneal_from, pos.total = step, self.steps
            logger.warning("step cap %d reached before the criterion held", self.steps)


@dataclass(frozen=True)
class _Batches:
    """Step 1's encoded texts and step 2's batch generator."""

    ids: torch.Tensor
    labels: torch.Tensor
    gen: torch.Generator
    batch_size: int

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(self.ids), (self.batch_size,), generator=self.gen)
        return self.ids[idx], self.labels[idx]


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
    warmup: int | None = None,
    until: Callable[[PreTrainedModel], bool] | None = None,
    check_every: int = 50,
    patience: int = 2,
    anneal_steps: int = 0,
    log_every: int = 100,
    on_step: Callable[[int, TrainingLog, Callable[[], dict]], None] | None = None,
    resume: dict | None = None,
) -> TrainingLog:
    """Train ``model`` in place on ``texts`` (see the module docstring).

    Args:
        steps: Fixed length, or with ``until`` the cap on all steps (anneal included).
        warmup: Linear warm-up steps (default ``steps // 20``).
        until: Criterion on the model, checked every ``check_every`` steps in eval
            mode without gradients; None for a fixed-length cosine schedule.
        patience: Consecutive true checks that count as learned.
        anneal_steps: Length of the final decay once learned (with ``until``).
        on_step: Called after every step with (steps done, the log, a function giving
            the resumable state); it may save a checkpoint.
        resume: A state from ``on_step``: training continues from there (the model's
            weights must already be those of that step).
    """
    if until is not None and anneal_steps >= steps:
        raise ValueError("anneal_steps must be below the step cap")
    ids, labels = encode_batch(tokenizer, texts, max_len=max_len)
    batches = _Batches(ids, labels, torch.Generator().manual_seed(seed), batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = _Schedule(
        lr=lr,
        steps=steps,
        warmup=max(1, steps // 20) if warmup is None else max(1, warmup),
        until=until,
        check_every=check_every,
        patience=patience,
        anneal_steps=anneal_steps,
    )
    pos = _Position(step=0, total=steps, anneal_from=None if until is not None else 0)
    log = TrainingLog()
    if resume is not None:
        pos, log = _resumed(resume, opt, batches.gen)

    def state() -> dict:
        return _state(pos, opt, batches.gen, log)

    model.train()
    while pos.step < pos.total:
        _one_step(model, opt, batches, lr=schedule.rate(pos), log=log)
        if log_every and pos.step % log_every == 0:
            logger.info("step %d/%d loss %.4f", pos.step, pos.total, log.losses[-1])
        pos.step += 1
        schedule.after_step(model, pos, log)
        log.steps = pos.step
        if on_step is not None:
            on_step(pos.step, log, state)
            model.train()
    log.steps = pos.step
    model.eval()
    return log


def _one_step(
    model: PreTrainedModel,
    opt: torch.optim.Optimizer,
    batches: _Batches,
    *,
    lr: float,
    log: TrainingLog,
) -> None:
    """One optimizer step at rate ``lr`` on a drawn batch (step 2), logged."""
    log.lrs.append(lr)
    for group in opt.param_groups:
        group["lr"] = log.lrs[-1]
    input_ids, labels = batches.draw()
    out = model(input_ids=input_ids, labels=labels)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    log.losses.append(out.loss.detach().item())


def _state(
    pos: _Position, opt: torch.optim.Optimizer, gen: torch.Generator, log: TrainingLog
) -> dict:
    """Step 3's resumable state, as ``resume=`` takes it back."""
    return {
        "step": pos.step,
        "streak": pos.streak,
        "total": pos.total,
        "anneal_from": pos.anneal_from,
        "optimizer": opt.state_dict(),
        "generator": gen.get_state(),
        "log": {k: copy.copy(v) for k, v in vars(log).items()},
    }


def _resumed(
    resume: dict, opt: torch.optim.Optimizer, gen: torch.Generator
) -> tuple[_Position, TrainingLog]:
    """Restore ``opt`` and ``gen`` from a :func:`_state`; its position and log."""
    opt.load_state_dict(resume["optimizer"])
    gen.set_state(resume["generator"])
    pos = _Position(
        step=resume["step"],
        total=resume["total"],
        anneal_from=resume["anneal_from"],
        streak=resume["streak"],
    )
    log = TrainingLog(**resume["log"])
    log.checks = [tuple(c) for c in log.checks]  # type: ignore[misc]
    return pos, log
