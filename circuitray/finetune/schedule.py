"""Which steps of a fine-tune are saved as checkpoints.

Circuits change fastest early in fine-tuning, so checkpoints are log-spaced: step 0
(the base model), then ``first``, ``first * r``, ``first * r**2`` ... up to the last
step, with ``r`` chosen so that there are ``k`` checkpoints in all (rounded to whole
steps, duplicates dropped, the last step always included).
"""

from __future__ import annotations

__all__ = ["checkpoint_steps", "geometric_steps"]


def checkpoint_steps(*, steps: int, k: int, first: int = 1, spacing: str = "log") -> list[int]:
    """``k`` checkpoint steps in ``[0, steps]``: 0, ``first``, ..., ``steps``.

    Args:
        steps: The last training step.
        k: Checkpoints in all, step 0 and ``steps`` included (at least 2).
        first: The first step after 0 (log spacing).
        spacing: ``log`` (geometric from ``first``) or ``linear`` (even).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if k < 2:
        raise ValueError(f"checkpoints must be >= 2 (step 0 and the last), got {k}")
    if spacing not in ("log", "linear"):
        raise ValueError(f"spacing must be 'log' or 'linear', got {spacing!r}")
    if spacing == "linear" or first >= steps or k == 2:
        inner = [round(steps * i / (k - 1)) for i in range(1, k - 1)]
    else:
        ratio = (steps / first) ** (1 / (k - 2))
        inner = [round(first * ratio**i) for i in range(k - 2)]
    return sorted({0, steps, *(s for s in inner if 0 < s < steps)})


def geometric_steps(*, first: int, cap: int, ratio: float = 2.0) -> list[int]:
    """0, ``first``, ``first * ratio``, ... (rounded, distinct) below ``cap``: checkpoint
    steps of a fine-tune whose length is not known in advance (it stops when the data
    are learned); the last step is saved as well, whenever it comes."""
    if first < 1:
        raise ValueError(f"first must be >= 1, got {first}")
    if not ratio > 1:
        raise ValueError(f"ratio must be > 1, got {ratio}")
    out, i = [0], 0
    while (step := round(first * ratio**i)) < cap:
        if step > out[-1]:
            out.append(step)
        i += 1
    return out
