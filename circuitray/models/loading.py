"""Loading a ReplacementModel: one code path for the bundled and the hub models.

1. Resolve ``model`` (bundled name -> local HF folder; else a hub id or path) and
   ``transcoders`` (a bundled model's ``per-layer`` / ``cross-layer`` alias -> the
   name of that set in the transcoder cache; else as given).
2. Load the transcoders with circuit-tracer's own ``load_transcoder_from_hub``, which
   reads ``<cache_dir>/<ref>/config.yaml`` when cached and downloads otherwise.
3. Build ``ReplacementModel.from_pretrained_and_transcoders(..., backend="nnsight")``,
   exactly as for ``google/gemma-2-2b`` with the ``gemma`` transcoders.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from circuitray.errors import ModelLoadError
from circuitray.models.registry import (
    BUNDLED,
    TRANSCODER_ALIASES,
    resolve_model,
    transcoder_cache_dir,
)

logger = logging.getLogger(__name__)

# Names of the dtypes a spec may ask for (torch attributes of the same names); this module
# imports torch only to load, so a driver or CLI that checks a spec loads none.
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModelSpec:
    """Which model and transcoders to load, and how.

    Attributes:
        model: Bundled name (``organism-tuned``, ``tiny``), local HF folder or hub id.
        transcoders: circuit-tracer transcoder reference; for a bundled model also
            ``per-layer`` or ``cross-layer`` (its two sets); None takes the bundled
            model's default, the per-layer set (required for other models).
        transcoder_cache_dir: circuit-tracer cache folder; None uses
            ``$CIRCUIT_TRACER_CACHE_DIR`` or ``$CIRCUITRAY_HOME/transcoders``.
        backend: circuit-tracer backend; ``nnsight`` loads local HF folders.
        dtype: Model and transcoder dtype name (``float32``, ``bfloat16``, ``float16``).
        device: ``cuda``, ``cpu`` or None (CUDA when available).
    """

    model: str = "organism-tuned"
    transcoders: str | None = None
    transcoder_cache_dir: str | None = None
    backend: str = "nnsight"
    dtype: str = "float32"
    device: str | None = None

    def resolved(self) -> dict[str, str]:
        """The concrete references this spec loads (recorded in run.json)."""
        path, bundled = resolve_model(self.model)
        transcoders = self.transcoders or (bundled.transcoders if bundled else None)
        if transcoders in TRANSCODER_ALIASES:
            if bundled is None:
                raise ModelLoadError(
                    f"transcoders {transcoders!r}: names a set of a bundled model "
                    f"({', '.join(BUNDLED)}, synthetic-*), and {self.model!r} is not one; give a "
                    "circuit-tracer reference (e.g. 'gemma', 'llama', org/repo)"
                )
            transcoders = bundled.transcoder_alias(transcoders)
        if transcoders is None:
            looks_local = path.startswith((".", "/", "~")) or os.path.exists(path)
            what = "local model" if looks_local else "hub model"
            raise ModelLoadError(
                f"model {self.model!r}: not a bundled model ({', '.join(BUNDLED)}, "
                f"synthetic-*); a {what} "
                "needs --transcoders (e.g. 'gemma' for google/gemma-2-2b, 'llama' for "
                "meta-llama/Llama-3.2-1B)"
            )
        cache = self.transcoder_cache_dir or str(transcoder_cache_dir())
        return {"model_path": path, "transcoders": transcoders, "transcoder_cache_dir": cache}


def check_model_available(spec: ModelSpec) -> None:
    """Fail fast, before Ray starts, on a bundled model not built or a bad local path."""
    path, bundled = resolve_model(spec.model)
    if bundled is not None and not (Path(path) / "config.json").exists():
        raise ModelLoadError(
            f"bundled model {spec.model!r} not built at {path}; run `{bundled.build_command}`"
        )
    looks_local = path.startswith((".", "/", "~")) or os.path.exists(path)
    if looks_local and not (Path(path).expanduser() / "config.json").exists():
        raise ModelLoadError(f"model path {path}: no such HF model folder (config.json missing)")
    spec.resolved()


def load_replacement_model(spec: ModelSpec):
    """Load the ReplacementModel described by ``spec`` (see module docstring)."""
    import torch
    from circuit_tracer import ReplacementModel
    from circuit_tracer.utils.hf_utils import load_transcoder_from_hub

    refs = spec.resolved()
    check_model_available(spec)
    if spec.dtype not in DTYPES:
        raise ModelLoadError(f"dtype {spec.dtype!r}: choose one of {', '.join(DTYPES)}")
    device = torch.device(spec.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, spec.dtype)
    try:
        transcoders, _ = load_transcoder_from_hub(
            refs["transcoders"],
            device=device,
            dtype=dtype,
            cache_dir=refs["transcoder_cache_dir"],
        )
    except Exception as e:  # hub errors come in many types; name the reference
        raise ModelLoadError(
            f"transcoders {refs['transcoders']!r} (cache {refs['transcoder_cache_dir']}): "
            f"cannot load: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e
    try:
        model = ReplacementModel.from_pretrained_and_transcoders(
            refs["model_path"],
            transcoders,
            backend=spec.backend,  # type: ignore[arg-type]
            device=device,
            dtype=dtype,
        )
    except Exception as e:
        raise ModelLoadError(
            f"model {refs['model_path']!r}: cannot load: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e
    logger.info(
        "loaded %s with transcoders %s on %s", refs["model_path"], refs["transcoders"], device
    )
    return model
