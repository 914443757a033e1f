"""``circuitray bench ...`` in a fresh process, as ``make bench`` and users run it."""

from __future__ import annotations

import os
import subprocess

from conftest import CLI


def bench(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``circuitray bench ARGS`` (os.environ, plus ``env``) with a 10-minute limit."""
    return subprocess.run(
        [*CLI, "bench", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
