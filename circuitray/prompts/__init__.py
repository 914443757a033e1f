"""Prompts, the first stage: the WS2 constraint corpus and users' prompt files.

1. :func:`generate_ws2` writes the deterministic synthetic corpus (:mod:`.ws2`).
2. :func:`read_prompts` / :func:`write_prompts` read and write Parquet, JSONL or CSV
   prompt files with one-line errors naming the file, row and column (:mod:`.files`).

No torch: a driver reads prompts before any model is loaded.
"""

from circuitray.prompts.files import file_sha256, read_prompts, write_prompts
from circuitray.prompts.ws2 import generate_ws2

__all__ = ["file_sha256", "generate_ws2", "read_prompts", "write_prompts"]
