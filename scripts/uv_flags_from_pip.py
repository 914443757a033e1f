"""Print pip's configuration (``pip config list``: files and ``PIP_*`` variables) as
``uv pip install`` flags, one per line, so that uv installs from the same indexes,
local wheel folders and constraints as pip would (uv reads no pip.conf).

Usage: ``python scripts/uv_flags_from_pip.py PIP``; ``make install`` passes the flags on.
Keys pip has and uv has no equivalent for (cert, timeout, ...) are left out.
"""

from __future__ import annotations

import ast
import subprocess
import sys

# pip key -> uv flag; a value may hold several entries separated by whitespace.
FLAGS = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
}
# The sections pip's install reads, weakest first: [global], then [install], then the
# PIP_* environment variables (``:env:``). Other sections (``wheel``, ...) are not the
# install's. (``pip config list`` has already merged the files in pip's order.)
SCOPES = ("global", "install", ":env:")


def uv_flags(config_list: str) -> list[str]:
    """Flags for the ``pip config list`` output ``config_list`` (``section.key=value``
    lines, each value as Python's repr of the text, which may span lines)."""
    chosen: dict[str, tuple[int, str]] = {}
    for line in config_list.splitlines():
        name, eq, value = line.partition("=")
        scope, _, key = name.rpartition(".")
        if not eq or scope not in SCOPES or (key not in FLAGS and key != "no-index"):
            continue
        try:
            text = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            text = value
        rank = SCOPES.index(scope)
        if key not in chosen or rank >= chosen[key][0]:
            chosen[key] = (rank, str(text))
    flags = []
    if "no-index" in chosen and chosen["no-index"][1].strip().lower() in ("1", "true", "yes", "on"):
        flags.append("--no-index")
    for key, (_, text) in sorted(chosen.items()):
        if key in FLAGS:
            flags += [f"{FLAGS[key]}={entry}" for entry in text.split()]
    return flags


if __name__ == "__main__":
    pip = sys.argv[1] if len(sys.argv) > 1 else "pip"
    listed = subprocess.run([pip, "config", "list"], capture_output=True, text=True, check=True)
    print("\n".join(uv_flags(listed.stdout)))
