"""The WS2 synthetic constraint corpus.

Each prompt asks for one next word that is fixed by a constraint:

- ``simple_mapping``: a nonce word stands for a concept ("blarf" means happy).
- ``spatial_relationship``: a motion verb is constrained to a direction ("glide" goes upward).
- ``antonym``: an adjective asks for its opposite ("tall" -> short).

Generation, deterministic in ``(n, seed)``:

1. For each constraint type, enumerate every (template, subject, cue) combination.
2. Shuffle each type's combinations with ``random.Random(seed)``.
3. Emit prompts round-robin over the types, cycling through each shuffled list, so
   types stay balanced and repeats only start once a type's combinations run out.
4. Mark a fixed set of (template, subject) pairs as the ``heldout`` split, the same
   for every seed, so a model fine-tuned on ``train`` is evaluated on unseen wordings.

The vocabulary (:data:`VOCABULARY`) covers every word the generator and the model
organism's filler text use; the tiny model's tokenizer is built from it.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

__all__ = [
    "CONSTRAINTS",
    "VOCABULARY",
    "Constraint",
    "candidates_for",
    "generate_ws2",
]

SUBJECTS = ["child", "bird", "man", "woman", "dog", "cat", "boat", "kite"]


@dataclass(frozen=True)
class Constraint:
    """One constraint type of the corpus.

    Attributes:
        name: The ``constraint_type`` value written to the corpus.
        mapping: Cue word -> the completion the constraint demands.
        templates: Prompt templates with ``{subject}`` and ``{cue}`` slots; the
            expected completion is the next word after the template.
    """

    name: str
    mapping: dict[str, str]
    templates: tuple[str, ...]

    @property
    def candidates(self) -> list[str]:
        """The distinct answers of this type, sorted: the choices an evaluation ranks."""
        return sorted(set(self.mapping.values()))


CONSTRAINTS: dict[str, Constraint] = {
    c.name: c
    for c in [
        Constraint(
            name="simple_mapping",
            mapping={
                "blarf": "happy",
                "zorp": "sad",
                "glim": "angry",
                "plonk": "calm",
                "frell": "big",
                "quib": "small",
                "drax": "hot",
                "mip": "cold",
            },
            templates=(
                "the word {cue} means",
                "the {subject} was {cue} , so the {subject} was",
                "when the {subject} is {cue} the {subject} is",
                "to be {cue} is to be",
                "the {subject} felt {cue} , in other words",
                "a {cue} {subject} is a",
            ),
        ),
        Constraint(
            name="spatial_relationship",
            mapping={
                "glide": "upward",
                "rise": "upward",
                "sink": "downward",
                "fall": "downward",
                "veer": "left",
                "swerve": "left",
                "drift": "right",
                "slide": "right",
            },
            templates=(
                "the {subject} will {cue} , so it moves",
                "when the {subject} starts to {cue} it goes",
                "to {cue} is to move",
                "the {subject} began to {cue} and went",
                "if the {subject} can {cue} it will go",
                "watch the {subject} {cue} , it heads",
            ),
        ),
        Constraint(
            name="antonym",
            mapping={
                "tall": "short",
                "fast": "slow",
                "light": "dark",
                "early": "late",
                "loud": "quiet",
                "soft": "hard",
                "wet": "dry",
                "rich": "poor",
            },
            templates=(
                "the opposite of {cue} is",
                "the {subject} is not {cue} , the {subject} is",
                "{cue} is the opposite of",
                "the {subject} was never {cue} but always",
                "if the {subject} is not {cue} then it is",
                "not {cue} but",
            ),
        ),
    ]
}

# Words used by the organism's base-stage filler text (circuitray.organism.corpus).
FILLER_WORDS = [
    "a",
    "and",
    "at",
    "away",
    "day",
    "field",
    "hill",
    "in",
    "it",
    "looked",
    "near",
    "night",
    "of",
    "on",
    "over",
    "river",
    "road",
    "saw",
    "sky",
    "slept",
    "stood",
    "that",
    "there",
    "this",
    "tree",
    "under",
    "very",
    "was",
    "water",
    "with",
    ".",
    ",",
]


def _template_words() -> set[str]:
    words: set[str] = set()
    for c in CONSTRAINTS.values():
        for t in c.templates:
            for w in t.split():
                if not w.startswith("{"):
                    words.add(w)
        words.update(c.mapping)
        words.update(c.mapping.values())
    return words


VOCABULARY: list[str] = sorted(_template_words() | set(SUBJECTS) | set(FILLER_WORDS))


def candidates_for(constraint_type: str) -> list[str]:
    """The answer set of a constraint type (its chance level is ``1 / len``)."""
    return CONSTRAINTS[constraint_type].candidates


def is_heldout(constraint_type: str, template_id: int, subject: str) -> bool:
    """Whether a (template, subject) wording belongs to the held-out split.

    A fixed hash (not the corpus seed) decides it, so every corpus agrees on the split
    and about one wording in five is held out. Templates without a subject slot are
    always ``train``: holding one out would leave a frame the model never saw, which
    tests syntax, not the constraint.
    """
    if "{subject}" not in CONSTRAINTS[constraint_type].templates[template_id]:
        return False
    key = f"{constraint_type}|{template_id}|{subject}".encode()
    return hashlib.sha256(key).digest()[0] < 52  # 52/256 ~ 20%


def generate_ws2(*, n: int = 500, seed: int = 0, types: list[str] | None = None) -> list[dict]:
    """Generate ``n`` WS2 prompts deterministically.

    Args:
        n: Number of prompts.
        seed: Shuffling seed; the same (n, seed, types) always gives the same rows.
        types: Constraint types to include (default: all of :data:`CONSTRAINTS`).

    Returns:
        Rows with ``prompt_id``, ``prompt``, ``constraint_type``, ``target`` and the
        generator's metadata (``cue``, ``subject``, ``template_id``, ``split``,
        ``candidates``, ``seed``).
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    names = types or list(CONSTRAINTS)
    unknown = [t for t in names if t not in CONSTRAINTS]
    if unknown:
        raise ValueError(f"unknown constraint type(s): {', '.join(unknown)}")

    rng = random.Random(seed)
    combos: dict[str, list[tuple[int, str, str]]] = {}
    for name in names:
        c = CONSTRAINTS[name]
        items = [
            (ti, subject, cue)
            for ti, template in enumerate(c.templates)
            for subject in (SUBJECTS if "{subject}" in template else SUBJECTS[:1])
            for cue in c.mapping
        ]
        rng.shuffle(items)
        combos[name] = items

    rows: list[dict] = []
    for i in range(n):
        name = names[i % len(names)]
        ti, subject, cue = combos[name][(i // len(names)) % len(combos[name])]
        c = CONSTRAINTS[name]
        template = c.templates[ti]
        rows.append(
            {
                "prompt_id": f"ws2-s{seed}-{i:06d}",
                "prompt": template.format(subject=subject, cue=cue),
                "constraint_type": name,
                "target": c.mapping[cue],
                "cue": cue,
                "subject": subject if "{subject}" in template else None,
                "template_id": ti,
                "split": "heldout" if is_heldout(name, ti, subject) else "train",
                "candidates": c.candidates,
                "seed": seed,
            }
        )
    return rows
