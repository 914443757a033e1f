"""Training sentences and held-out prompts of a fine-tune, with their checksum.

1. ``data: ws2``: the WS2 corpus (``ws2_n`` rows, ``ws2_seed``); its ``train`` split
   is trained on, its ``heldout`` wordings evaluated.
2. A prompt file (:func:`circuitray.prompts.files.read_prompts`) needs a ``target``
   column; rows whose ``split`` is ``heldout`` are evaluated, all others trained on.
3. A training sentence is the prompt, a space, its target and a full stop; the
   checksum is the SHA-256 of the sentences in order, so two fine-tunes on the same
   data agree on it whatever file they came from.
"""

from __future__ import annotations

import hashlib

from circuitray.errors import CircuitrayError
from circuitray.finetune.config import FinetuneConfig
from circuitray.prompts.files import read_prompts
from circuitray.prompts.ws2 import generate_ws2

__all__ = ["TrainingData", "completed", "first_per_type", "load_data", "sha256_of"]


def completed(row: dict) -> str:
    """A prompt completed with its target and a full stop: a training sentence."""
    return f"{row['prompt']} {row['target']} ."


def first_per_type(rows: list[dict], per_type: int) -> list[dict]:
    """The first ``per_type`` rows of each constraint type, in their order."""
    counts: dict[str, int] = {}
    out = []
    for r in rows:
        t = r.get("constraint_type") or "(none)"
        if counts.get(t, 0) < per_type:
            counts[t] = counts.get(t, 0) + 1
            out.append(r)
    return out


def sha256_of(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\n")
    return h.hexdigest()


class TrainingData:
    """What a fine-tune trains on and evaluates.

    Attributes:
        train_rows: Rows trained on.
        heldout_rows: Held-out rows, the first ``eval_per_type`` of each type.
        texts: The training sentences (one per train row).
        sha256: Checksum of ``texts``.
    """

    def __init__(self, train_rows: list[dict], heldout_rows: list[dict], *, per_type: int):
        self.train_rows = train_rows
        self.texts = [completed(r) for r in train_rows]
        self.sha256 = sha256_of(self.texts)
        self.heldout_rows = first_per_type(heldout_rows, per_type)


def load_data(config: FinetuneConfig) -> TrainingData:
    if config.data == "ws2":
        rows = generate_ws2(n=config.ws2_n, seed=config.ws2_seed)
    else:
        table = read_prompts(config.data)
        if "target" not in table.column_names:
            raise CircuitrayError(f"{config.data}: fine-tuning needs a 'target' column")
        rows = table.to_pylist()
        for i, r in enumerate(rows):
            if not r.get("target"):
                raise CircuitrayError(f"{config.data}: row {i}: column 'target' is empty")
    train = [r for r in rows if r.get("split") != "heldout"]
    heldout = [r for r in rows if r.get("split") == "heldout"]
    if not train:
        raise CircuitrayError(f"{config.data}: no training rows (every row is held out)")
    return TrainingData(train, heldout, per_type=config.eval_per_type)
