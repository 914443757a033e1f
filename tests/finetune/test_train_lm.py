"""The training loop of every fine-tune (``finetune.train_lm``) on the organism's
schedules: fixed-length cosine, and until-learned."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import Gemma2ForCausalLM

from circuitray.finetune.train_lm import train_lm
from circuitray.models.builders.tiny import tiny_gemma2_config
from circuitray.models.builders.tokenizer import build_tokenizer
from circuitray.organism.corpus import constraint_rows, constraint_sentences
from circuitray.organism.evaluate import constraint_accuracy
from circuitray.prompts.ws2 import VOCABULARY

TOK = build_tokenizer(VOCABULARY)
TEXTS = constraint_sentences(seed=0)[:200]


def _model(seed: int = 3) -> Gemma2ForCausalLM:
    torch.manual_seed(seed)
    return Gemma2ForCausalLM(tiny_gemma2_config(vocab_size=len(TOK), n_layers=1, d_model=32))


def _train(**kwargs):
    return train_lm(_model(), TOK, TEXTS, batch_size=8, lr=1e-3, seed=3, log_every=0, **kwargs)


def test_fixed_schedule_is_the_lambda_lr_cosine():
    steps = 40
    log = _train(steps=steps)
    # The same schedule through torch's own LambdaLR (the original implementation).
    warmup = steps // 20
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)

    def lam(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    expected = []
    for _ in range(steps):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert log.steps == steps and log.learned_at is None and not log.capped
    assert log.lrs == pytest.approx(expected, rel=1e-12)
    assert len(log.losses) == steps


def test_until_learned_anneals_then_stops():
    calls = []

    def learned(model) -> bool:  # true from the third check on
        assert not model.training  # checked in eval mode
        calls.append(1)
        return len(calls) >= 3

    log = _train(steps=200, warmup=4, until=learned, check_every=5, patience=2, anneal_steps=10)
    # Checks at 5, 10, 15 (true), 20 (true): learned from 15, anneal steps 20..29.
    assert log.checks == [(5, False), (10, False), (15, True), (20, True)]
    assert log.learned_at == 15 and log.steps == 30 and not log.capped
    assert log.lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert set(log.lrs[4:20]) == {1e-3}  # constant while learning
    tail = log.lrs[20:]
    assert tail[0] == pytest.approx(1e-3) and tail == sorted(tail, reverse=True)
    # Cosine to 0.1 x lr over the 10 anneal steps, as the fixed schedule decays.
    assert tail[-1] == pytest.approx(1e-3 * (0.1 + 0.45 * (1 + math.cos(math.pi * 9 / 10))))


def test_until_never_true_stops_at_the_cap_with_the_anneal_inside_it():
    log = _train(steps=40, warmup=2, until=lambda m: False, check_every=5, anneal_steps=10)
    assert log.capped and log.learned_at is None and log.steps == 40
    assert [s for s, _ in log.checks] == [5, 10, 15, 20, 25, 30]  # none once annealing
    assert set(log.lrs[2:30]) == {1e-3} and log.lrs[-1] < log.lrs[30]


def test_anneal_must_fit_under_the_cap():
    with pytest.raises(ValueError, match="below the step cap"):
        _train(steps=10, until=lambda m: True, anneal_steps=10)


def test_until_learned_training_is_bit_identical_for_same_seed_and_threads():
    rows = constraint_rows(seed=0)[:30]
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            model = _model()
            log = train_lm(
                model, TOK, TEXTS, steps=60, batch_size=8, lr=2e-3, seed=3, log_every=0,
                warmup=5, check_every=10, patience=1, anneal_steps=10,
                # A real criterion: evaluation passes between steps must not change bits.
                until=lambda m: constraint_accuracy(m, TOK, rows)["antonym"]["accuracy"] > 0.2,
            )  # fmt: skip
            runs.append((log, model.state_dict()))
    finally:
        torch.use_deterministic_algorithms(before)
    (log_a, a), (log_b, b) = runs
    assert log_a.checks == log_b.checks and log_a.losses == log_b.losses
    for k in a:
        assert torch.equal(a[k], b[k]), k
