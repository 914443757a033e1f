"""The WS2 model organism: a tiny Gemma-2 trained here that really learns the constraints.

- :mod:`~circuitray.organism.corpus`: base-stage filler text and constraint sentences.
- :mod:`~circuitray.organism.evaluate`: the evaluation report.
- :mod:`~circuitray.organism.build`: the whole build (``circuitray organism build``).
- :mod:`~circuitray.organism.matrix`: the robustness matrix over CPU kernels, threads
  and seeds (``circuitray organism matrix``); it imports no torch itself.

Its training loop is every fine-tune's (:mod:`~circuitray.finetune.train_lm`), its
transcoders are trained as every built model's
(:mod:`~circuitray.models.builders.train_transcoders`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from circuitray.organism.build import OrganismConfig, build_organism

__all__ = ["OrganismConfig", "build_organism"]


def __getattr__(name: str):
    # Lazy, so that the matrix (and the CLI's help) need not import torch.
    if name in __all__:
        from circuitray.organism import build

        return getattr(build, name)
    raise AttributeError(name)
