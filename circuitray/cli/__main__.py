"""``python -m circuitray.cli``."""

from circuitray.cli import main

main()
