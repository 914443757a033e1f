"""``finetune.json``: what a fine-tune did, one entry per checkpoint (no torch).

::

    {"format": "circuitray-finetune/1", "base": ..., "transcoders": ...,
     "data": {"source": "ws2", "sha256": ..., "n_train": ..., "heldout": [rows]},
     "config": {...every FinetuneConfig field...},
     "checkpoints": [{"step": 0, "path": "/abs/base", "examples_seen": 0,
                      "train_loss": null, "heldout": {type: {accuracy, target_prob, ...}},
                      "transcoder_fit": {layer: {nmse, explained_variance}}}, ...]}

A checkpoint's ``path`` is relative to the manifest's folder when it lies inside it.
The file is written whole to a temporary name and renamed, after every checkpoint,
so a reader never sees half of it and a resumed fine-tune knows where it stopped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from circuitray.errors import CircuitrayError

__all__ = ["FORMAT", "MANIFEST", "checkpoint_path", "read_manifest", "write_manifest"]

MANIFEST = "finetune.json"
FORMAT = "circuitray-finetune/1"


def manifest_file(path: str | Path) -> Path:
    """``path`` itself, or its ``finetune.json`` when it is a folder."""
    path = Path(path)
    return path / MANIFEST if path.is_dir() else path


def write_manifest(out: str | Path, manifest: dict) -> Path:
    target = Path(out) / MANIFEST
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{MANIFEST}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, target)
    return target


def read_manifest(path: str | Path) -> dict:
    """The manifest at ``path`` (a file or its folder), checked: one-line errors."""
    file = manifest_file(path)
    try:
        manifest = json.loads(file.read_text())
    except FileNotFoundError:
        raise CircuitrayError(f"{file}: no such fine-tune manifest") from None
    except (OSError, ValueError) as e:
        raise CircuitrayError(
            f"{file}: not a fine-tune manifest: {str(e).splitlines()[0]}"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CircuitrayError(f"{file}: not a fine-tune manifest (format is not {FORMAT})")
    checkpoints = manifest.get("checkpoints")
    if not isinstance(checkpoints, list) or not checkpoints:
        raise CircuitrayError(f"{file}: no checkpoints")
    for i, c in enumerate(checkpoints):
        if not isinstance(c, dict) or not isinstance(c.get("step"), int) or not c.get("path"):
            raise CircuitrayError(f"{file}: checkpoint {i}: needs an integer step and a path")
    steps = [c["step"] for c in checkpoints]
    if steps != sorted(set(steps)):
        raise CircuitrayError(f"{file}: checkpoint steps are not increasing: {steps}")
    return manifest


def checkpoint_path(manifest_path: str | Path, checkpoint: dict) -> Path:
    """Where a checkpoint's HF folder is (relative paths are the manifest folder's)."""
    path = Path(checkpoint["path"])
    return path if path.is_absolute() else manifest_file(manifest_path).parent / path
