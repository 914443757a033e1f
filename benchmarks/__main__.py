"""``python -m benchmarks``: the development benchmarks' command (:mod:`benchmarks.cli`)."""

from benchmarks.cli import benchmarks_group
from circuitray.cli import main

main(benchmarks_group)
