"""One prompt's attribution graph, computed inside a worker (torch, circuit-tracer).

1. :mod:`.attribute`: tokenise, run circuit-tracer's ``attribute()``, read the
   next-token distribution.
2. :mod:`.prune`: circuit-tracer's node and edge masks without its N^2 sort
   (:mod:`.zeropage` holds the large zero-initialised buffers).
3. :mod:`.flatten`: the kept nodes and edges as Arrow tables of :mod:`circuitray.schema`.
4. :mod:`.interventions`: feature interventions on one prompt, measured and predicted.
5. :mod:`.precision`: a reduced-precision graph against the float32 graph of the same
   prompt (``circuitray run --verify-precision``).

Submodules import torch; nothing here is imported by storage or query code.
"""
