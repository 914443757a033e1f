"""Print pip's configuration (``pip config list``: files and ``PIP_*`` variables) as
``uv pip install`` flags, one per line, so that uv installs from the same indexes,
local wheel folders and constraints as pip would (uv reads no pip.conf).

Usage: ``python scripts/uv_flags_from_pip.py PIP``; ``make install`` passes the flags on.
Keys pip has and uv has no equivalent for (cert, timeout, ...) are left out.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

# pip key -> uv flag; a value may hold several entries separated by whitespace.
FLAGS = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
}


def uv_flags(config_list: str) -> list[str]:
    """Flags for the ``pip config list`` output ``config_list`` (``scope.key='value'``
    lines; an environment variable's scope is ``:env:``, which wins over files)."""
    values: dict[str, list[str]] = {}
    env: dict[str, list[str]] = {}
    for line in config_list.splitlines():
        name, eq, value = line.partition("=")
        if not eq:
            continue
        scope, _, key = name.rpartition(".")
        if key in FLAGS:
            entries = shlex.split(value)
            entries = [e for v in entries for e in v.split()]
            (env if scope == ":env:" else values)[key] = entries
    values.update(env)
    return [f"{FLAGS[k]}={v}" for k, entries in values.items() for v in entries]


if __name__ == "__main__":
    pip = sys.argv[1] if len(sys.argv) > 1 else "pip"
    listed = subprocess.run([pip, "config", "list"], capture_output=True, text=True, check=True)
    print("\n".join(uv_flags(listed.stdout)))
