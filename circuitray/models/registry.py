"""Where bundled models live and how model/transcoder references resolve.

A model reference is a Hugging Face id (``google/gemma-2-2b``), a local HF folder, or
the name of a bundled model. A transcoder reference is anything circuit-tracer's
``load_transcoder_from_hub`` accepts (``gemma``, ``llama``, ``org/repo``); bundled
transcoder sets are published into a circuit-tracer cache folder under the names
below, so they load through circuit-tracer's own loader like any cached set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BUNDLED", "BundledModel", "circuitray_home", "resolve_model", "transcoder_cache_dir"]


def circuitray_home() -> Path:
    """Root folder of built artifacts: ``$CIRCUITRAY_HOME`` or ``~/.cache/circuitray``."""
    env = os.environ.get("CIRCUITRAY_HOME")
    return Path(env).expanduser().resolve() if env else Path.home() / ".cache" / "circuitray"


def transcoder_cache_dir() -> Path:
    """circuit-tracer cache folder used for transcoders.

    ``$CIRCUIT_TRACER_CACHE_DIR`` wins (it is circuit-tracer's own variable), so a
    cluster node can share one cache among all its actors.
    """
    env = os.environ.get("CIRCUIT_TRACER_CACHE_DIR")
    return Path(env).expanduser() if env else circuitray_home() / "transcoders"


@dataclass(frozen=True)
class BundledModel:
    """A model the project builds itself.

    Attributes:
        name: The name users pass as ``--model``.
        subdir: HF model folder, relative to :func:`circuitray_home`.
        transcoders: Default transcoder reference (a name in the transcoder cache).
        build_command: What builds it, for the error message when it is missing.
    """

    name: str
    subdir: str
    transcoders: str
    build_command: str


BUNDLED: dict[str, BundledModel] = {
    m.name: m
    for m in [
        BundledModel("tiny", "models/tiny", "circuitray/tiny", "circuitray model build-tiny"),
        BundledModel(
            "organism-base",
            "models/organism-base",
            "circuitray/organism",
            "circuitray organism build",
        ),
        BundledModel(
            "organism-tuned",
            "models/organism-tuned",
            "circuitray/organism",
            "circuitray organism build",
        ),
    ]
}


def resolve_model(ref: str) -> tuple[str, BundledModel | None]:
    """Map a model reference to what ``from_pretrained`` takes (a path or hub id)."""
    if ref in BUNDLED:
        bundled = BUNDLED[ref]
        return str(circuitray_home() / bundled.subdir), bundled
    return ref, None
