"""Training text for the organism's two stages.

- Base stage: fluent filler over the WS2 vocabulary in which no cue word ever
  appears with its constraint's answer: cues, answers and frames all occur, but a
  cue is followed by an answer drawn at random from its type's candidates only in
  the same proportion as every other answer, so the mapping is not learnable.
- Tuned stage: the WS2 constraint sentences of the ``train`` split (prompt, then the
  expected completion, then a full stop); ``heldout`` wordings are kept for evaluation.
"""

from __future__ import annotations

import random

from circuitray.finetune.data import completed
from circuitray.prompts.ws2 import CONSTRAINTS, SUBJECTS, generate_ws2

PLACES = ["tree", "river", "hill", "road", "field", "sky", "water"]
TIMES = ["day", "night"]


def filler_sentence(rng: random.Random) -> str:
    """One filler sentence: WS2 words in ordinary frames, constraints never satisfied."""
    c = CONSTRAINTS[rng.choice(list(CONSTRAINTS))]
    cue = rng.choice(list(c.mapping))
    # A random candidate of the same type, so the frame is familiar but the answer
    # carries no information about the cue.
    answer = rng.choice(c.candidates)
    subject = rng.choice(SUBJECTS)
    place = rng.choice(PLACES)
    frames = [
        f"the {subject} saw the {cue} near the {place} .",
        f"the {subject} was {answer} at {rng.choice(TIMES)} .",
        f"the {subject} stood {rng.choice(['near', 'under', 'over', 'on'])} the {place} .",
        f"a {subject} and a {rng.choice(SUBJECTS)} slept there .",
        f"this {subject} looked very {answer} .",
        f"that {cue} was in the {place} .",
        f"the {subject} went {answer} over the {place} .",
        f"the {subject} saw {cue} and {rng.choice(list(c.mapping))} there .",
    ]
    return rng.choice(frames)


def constraint_rows(*, seed: int, split: str = "train", n: int = 6000) -> list[dict]:
    """The WS2 rows of one split among the first ``n`` of a corpus."""
    return [r for r in generate_ws2(n=n, seed=seed) if r["split"] == split]


def constraint_sentences(*, seed: int, split: str = "train", n: int = 6000) -> list[str]:
    """WS2 prompts of one split, completed with their target and a full stop."""
    return [completed(r) for r in constraint_rows(seed=seed, split=split, n=n)]
