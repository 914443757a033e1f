"""Checkpoint schedules: log-spaced, step 0 and the last step always included."""

from __future__ import annotations

import pytest

from circuitray.finetune.schedule import checkpoint_steps, geometric_steps


def test_log_spacing_is_geometric_from_first_to_last():
    steps = checkpoint_steps(steps=640, k=8, first=10)
    assert steps == [0, 10, 20, 40, 80, 160, 320, 640]
    gaps = [b - a for a, b in zip(steps[1:], steps[2:], strict=False)]
    assert gaps == sorted(gaps)  # denser early


def test_linear_spacing_and_k_checkpoints_when_steps_allow():
    assert checkpoint_steps(steps=100, k=5, spacing="linear") == [0, 25, 50, 75, 100]
    for k in range(2, 12):
        s = checkpoint_steps(steps=1000, k=k, first=4)
        assert len(s) == k and s[0] == 0 and s[-1] == 1000 and s == sorted(set(s))


def test_few_steps_drop_duplicates_never_exceed_range():
    s = checkpoint_steps(steps=5, k=10, first=1)
    assert s == sorted(set(s)) and s[0] == 0 and s[-1] == 5 and all(0 <= x <= 5 for x in s)


@pytest.mark.parametrize(
    "kwargs", [{"steps": 0, "k": 3}, {"steps": 10, "k": 1}, {"steps": 10, "k": 3, "spacing": "x"}]
)
def test_bad_schedules_are_refused(kwargs):
    with pytest.raises(ValueError):
        checkpoint_steps(**kwargs)


def test_geometric_steps_for_a_fine_tune_of_unknown_length():
    assert geometric_steps(first=4, cap=100) == [0, 4, 8, 16, 32, 64]
    assert geometric_steps(first=4, cap=2000)[-1] == 1024
    assert geometric_steps(first=8, cap=100, ratio=2**0.5) == [0, 8, 11, 16, 23, 32, 45, 64, 91]
    assert geometric_steps(first=1, cap=6, ratio=1.2) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError):
        geometric_steps(first=1, cap=6, ratio=1.0)
