"""The WS2 model organism: a tiny Gemma-2 trained here that really learns the constraints.

- :mod:`~circuitray.organism.corpus`: base-stage filler text and constraint sentences.
- :mod:`~circuitray.organism.train_lm`: deterministic causal-LM training on CPU.
- :mod:`~circuitray.organism.train_transcoders`: per-layer transcoders on MLP I/O.
- :mod:`~circuitray.organism.evaluate`: the evaluation report.
- :mod:`~circuitray.organism.build`: the whole build (``circuitray organism build``).
"""

from circuitray.organism.build import OrganismConfig, build_organism

__all__ = ["OrganismConfig", "build_organism"]
