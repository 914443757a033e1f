"""circuitray's development benchmarks: measured side by side in one run, kept out of
the wheel (``circuitray bench`` holds the ones a user runs on their own cluster).

Run from a checkout as ``python -m benchmarks COMMAND`` (the Makefile's ``bench*``
targets do):

- ``suite`` (``make bench``, :mod:`benchmarks.suite`): circuitray against a plain loop
  (:mod:`benchmarks.attribution`), circuitray's pruning against circuit-tracer's
  (:mod:`benchmarks.pruning`) and the real-shape and real-model figures
  (:mod:`benchmarks.real_shape`);
- ``queries`` (``make bench-queries``, :mod:`benchmarks.queries`): every named query
  and ``circuitray compare`` timed on one run folder;
- ``aggregate`` (``make bench-aggregate``, :mod:`benchmarks.aggregate`): ``circuitray
  aggregate`` in a fresh process, graphs per hour and peak memory.

Each module measures and returns records; :mod:`benchmarks.cli` prints and writes them.
"""
