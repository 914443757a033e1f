"""Benchmarks a user runs on their own machine or cluster (``circuitray bench ...``).

- :mod:`circuitray.bench.gpu`: graphs per hour on one GPU (``circuitray bench gpu``);
  :mod:`circuitray.bench.gpu_report` renders its record as tables and Markdown.
- :mod:`circuitray.bench.processes`: ``circuitray query`` / ``circuitray sql`` as whole
  processes next to a bare DuckDB process (``circuitray bench processes``).
- :mod:`circuitray.bench.scale` (with :mod:`circuitray.bench.scale_worker`): the
  driver's and the store's cost per prompt from 10^3 to 10^6 prompts, synthetic workers
  (``circuitray bench scale``).
- :mod:`circuitray.bench.synthetic`: synthetic run folders at any size in the real
  schema (``circuitray bench make-edges``).
- :mod:`circuitray.bench.environment`: what every benchmark records of the machine
  (commit, versions, CPU, GPU) and its memory probes.

The development suites (``make bench``: circuitray against a plain loop, pruning,
real shapes; ``make bench-queries``; ``make bench-aggregate``) are not part of the
package: they live in the checkout's ``benchmarks/`` and run as ``python -m
benchmarks ...``.

Importing the package loads neither torch nor DuckDB (the modules import them in the
functions that use them), so a benchmark's child process can use its helpers without
changing what it measures.
"""

from circuitray.bench.synthetic import SyntheticSpec, make_synthetic_run

__all__ = ["SyntheticSpec", "make_synthetic_run"]
