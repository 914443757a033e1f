"""``circuitray series``: attribute the same prompts at every checkpoint of a fine-tune.

1. Read the fine-tune's manifest (``finetune.json``, :mod:`circuitray.finetune.manifest`)
   and pick its checkpoints (all, or the steps asked for).
2. The prompts: a file given, or by default the manifest's held-out prompts (the
   first ``per_type`` of each constraint type), written once to
   ``<series>/prompts.parquet``. Every checkpoint gets the same file, so graphs pair
   by ``prompt_id`` (and ``graph_id``) across steps.
3. Write ``<series>/series.json`` (the manifest, its checksum, the prompts and one
   entry per checkpoint: step and run folder). A series folder made from another
   manifest or other prompts is refused.
4. Run each checkpoint as an ordinary run (:func:`circuitray.jobs.attribution_job.run`)
   into ``<series>/step-NNNNNN`` with ``step`` in its run.json, loading the
   checkpoint's HF folder with the manifest's transcoders through the usual path.
   Each run resumes as any run does, so rerunning a series finishes what is missing;
   one Ray session serves every run.

The query views open a series folder as all of its runs (:mod:`circuitray.query.engine`):
``graphs`` has a ``step`` column, ``runs`` has ``step`` and ``series``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from circuitray.errors import CircuitrayError
from circuitray.finetune.manifest import checkpoint_path, manifest_file, read_manifest
from circuitray.graph.attribute import AttributionConfig
from circuitray.graph.prune import PruneConfig
from circuitray.jobs.attribution_job import RunConfig, RunResult, run
from circuitray.jobs.dispatch import Placement, Progress
from circuitray.models.loading import ModelSpec
from circuitray.prompts.files import file_sha256, write_prompts

logger = logging.getLogger(__name__)

__all__ = ["SERIES_FORMAT", "SERIES_JSON", "SeriesConfig", "SeriesResult", "run_series"]

SERIES_JSON = "series.json"
SERIES_FORMAT = "circuitray-series/1"


@dataclass
class SeriesConfig(Placement):
    """A checkpoint series: one run per checkpoint of a fine-tune.

    Attributes:
        manifest: The fine-tune's ``finetune.json`` (or its folder).
        out: The series folder.
        prompts: Prompt file; default: the manifest's held-out prompts.
        per_type: Held-out prompts per constraint type (without ``prompts``).
        steps: Only these checkpoint steps (default: every one).
        transcoders: Transcoders to attribute with (default: the manifest's).
        device: Device of the actors' models (None: CUDA when available).
        dtype: Model and transcoder dtype name (``float32``, ``bfloat16``, ``float16``).
        attribution: circuit-tracer ``attribute()`` arguments of every run.
        prune: Node and edge thresholds of every run.
        retry_errors: Recompute prompts whose rows have ``status='error'``.
        compact: Compact each run folder at its end.
        actors, address, batch_size, ...: placement (:class:`Placement`).
    """

    manifest: str
    out: str
    prompts: str | None = None
    per_type: int = 20
    steps: list[int] | None = None
    transcoders: str | None = None
    device: str | None = None
    dtype: str = "float32"
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    retry_errors: bool = False
    compact: bool = True


@dataclass
class SeriesResult:
    """What a series did.

    Attributes:
        series_dir: The series folder.
        runs: Step -> that checkpoint's run result.
    """

    series_dir: str
    runs: dict[int, RunResult] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.runs.values())


def _heldout_prompts(manifest: dict, file: Path, per_type: int) -> list[dict]:
    rows = manifest.get("data", {}).get("heldout")
    if not isinstance(rows, list) or not rows:
        raise CircuitrayError(f"{file}: records no held-out prompts; give --prompts")
    counts: dict[str, int] = {}
    out = []
    for r in rows:
        t = r.get("constraint_type") or "(none)"
        if counts.get(t, 0) < per_type:
            counts[t] = counts.get(t, 0) + 1
            out.append(r)
    return out


def _series_meta(config: SeriesConfig, manifest: dict, prompts: Path, chosen: list[dict]) -> dict:
    file = manifest_file(config.manifest)
    return {
        "format": SERIES_FORMAT,
        "name": Path(config.out).resolve().name,
        "manifest": str(file.resolve()),
        "manifest_sha256": hashlib.sha256(file.read_bytes()).hexdigest(),
        "base": manifest.get("base"),
        "transcoders": config.transcoders or manifest.get("transcoders"),
        "prompts": str(prompts.resolve()),
        "prompts_sha256": file_sha256(prompts),
        "runs": [{"step": c["step"], "run": f"step-{c['step']:06d}"} for c in chosen],
    }


def _check_same(out: Path, meta: dict) -> None:
    path = out / SERIES_JSON
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except ValueError:
        raise CircuitrayError(f"{path}: not JSON; not a series folder") from None
    for key in ("manifest_sha256", "prompts_sha256", "transcoders"):
        if old.get(key) != meta[key]:
            raise CircuitrayError(
                f"{out}: a series of another {key.split('_')[0]} "
                f"(series.json {key} differs); use a new folder"
            )


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def run_series(config: SeriesConfig, *, on_progress: Progress | None = None) -> SeriesResult:
    """Run every chosen checkpoint of ``config.manifest`` into ``config.out`` (module
    docstring). ``on_progress`` is passed to each run."""
    file = manifest_file(config.manifest)
    manifest = read_manifest(file)
    checkpoints = manifest["checkpoints"]
    if config.steps is not None:
        known = {c["step"] for c in checkpoints}
        missing = sorted(set(config.steps) - known)
        if missing:
            raise CircuitrayError(
                f"{file}: no checkpoint at step {missing[0]} (steps: {sorted(known)})"
            )
        checkpoints = [c for c in checkpoints if c["step"] in set(config.steps)]
    transcoders = config.transcoders or manifest.get("transcoders")
    if not transcoders:
        raise CircuitrayError(f"{file}: names no transcoders; give --transcoders")
    paths = {}
    for c in checkpoints:
        path = checkpoint_path(file, c)
        if not (path / "config.json").exists():
            raise CircuitrayError(f"{file}: checkpoint step {c['step']}: no HF folder at {path}")
        paths[c["step"]] = path
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if config.prompts is not None:
        prompts = Path(config.prompts)
    else:
        prompts = out / "prompts.parquet"
        rows = _heldout_prompts(manifest, file, config.per_type)
        if not prompts.exists():
            write_prompts(rows, prompts)
    meta = _series_meta(config, manifest, prompts, checkpoints)
    _check_same(out, meta)
    _write_json(out / SERIES_JSON, meta)
    placement = {f.name: getattr(config, f.name) for f in fields(Placement)}
    result = SeriesResult(series_dir=str(out))
    cache = manifest.get("transcoder_cache_dir")
    for c in checkpoints:
        step = c["step"]
        model = ModelSpec(
            model=str(paths[step]),
            transcoders=transcoders,
            device=config.device,
            dtype=config.dtype,
        )
        if cache and not config.transcoders:
            model = replace(model, transcoder_cache_dir=cache)
        logger.info("series %s: step %d (%s)", meta["name"], step, paths[step])
        result.runs[step] = run(
            RunConfig(
                prompts=str(prompts),
                out=str(out / f"step-{step:06d}"),
                model=model,
                attribution=config.attribution,
                prune=config.prune,
                retry_errors=config.retry_errors,
                compact=config.compact,
                step=step,
                **placement,
            ),
            on_progress=on_progress,
        )
    return result
