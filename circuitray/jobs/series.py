"""``circuitray series``: attribute the same prompts at every checkpoint of a fine-tune.

1. Read the fine-tune's manifest (``finetune.json``, :mod:`circuitray.finetune.manifest`)
   and pick its checkpoints (all, or the steps asked for).
2. The prompts: a file given, or by default the manifest's held-out prompts (the
   first ``per_type`` of each constraint type), written once to
   ``<series>/prompts.parquet``. Every checkpoint gets the same file, so graphs pair
   by ``prompt_id`` (and ``graph_id``) across steps.
3. Write ``<series>/series.json``: the manifest, a checksum of what decides its
   checkpoints (:func:`manifest_digest`), the prompts, and one entry (step, run
   folder) per run, added as each run folder is made, so a series stopped half-way
   reads as the steps it has. A series folder made from another manifest, other
   prompts or transcoders is refused.
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
from circuitray.finetune.data import first_per_type
from circuitray.finetune.manifest import checkpoint_path, manifest_file, read_manifest
from circuitray.graph.config import AttributionConfig, PruneConfig
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

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.per_type, bool) or not isinstance(self.per_type, int):
            raise CircuitrayError(f"per_type must be an integer, got {self.per_type!r}")
        if self.per_type < 1:
            raise CircuitrayError(f"per_type must be >= 1, got {self.per_type}")
        if self.steps is not None and (
            not isinstance(self.steps, list)
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in self.steps)
        ):
            raise CircuitrayError(f"steps must be a list of integers, got {self.steps!r}")


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
    return first_per_type(rows, per_type)


def manifest_digest(manifest: dict) -> str:
    """SHA-256 of what decides a fine-tune's checkpoints: its base, data, config and
    (step, path) list; not timings, nor Ray Train's resume history."""
    canonical = {
        "base": manifest.get("base"),
        "data": (manifest.get("data") or {}).get("sha256"),
        "config": {k: v for k, v in (manifest.get("config") or {}).items() if k != "out"},
        "checkpoints": [(c["step"], c["path"]) for c in manifest["checkpoints"]],
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def _series_meta(config: SeriesConfig, manifest: dict, prompts: Path) -> dict:
    file = manifest_file(config.manifest)
    return {
        "format": SERIES_FORMAT,
        "name": Path(config.out).resolve().name,
        "manifest": str(file.resolve()),
        "manifest_sha256": manifest_digest(manifest),
        "base": manifest.get("base"),
        "transcoders": config.transcoders or manifest.get("transcoders"),
        "prompts": str(prompts.resolve()),
        "prompts_sha256": file_sha256(prompts),
        "runs": [],
    }


def _check_same(out: Path, meta: dict) -> list[dict]:
    """The runs an earlier session of this series recorded (refusing another series)."""
    path = out / SERIES_JSON
    if not path.exists():
        return []
    try:
        old = json.loads(path.read_text())
    except ValueError:
        raise CircuitrayError(f"{path}: not JSON; not a series folder") from None
    if not isinstance(old, dict) or old.get("format") != SERIES_FORMAT:
        raise CircuitrayError(f"{path}: not a circuitray series ({SERIES_FORMAT})")
    for key in ("manifest_sha256", "prompts_sha256", "transcoders"):
        if old.get(key) != meta[key]:
            raise CircuitrayError(
                f"{out}: a series of another {key.split('_')[0]} "
                f"(series.json {key} differs); use a new folder"
            )
    runs = old.get("runs")
    return runs if isinstance(runs, list) else []


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _checkpoint_paths(file: Path, checkpoints: list[dict]) -> dict[int, str]:
    """Each checkpoint's model, by step: a hub id as given, else its HF folder (which
    must exist)."""
    paths: dict[int, str] = {}
    for c in checkpoints:
        if c.get("hub"):  # the base, by hub id: loaded as any hub model
            paths[c["step"]] = str(c["path"])
            continue
        path = checkpoint_path(file, c).resolve()
        if not (path / "config.json").exists():
            raise CircuitrayError(f"{file}: checkpoint step {c['step']}: no HF folder at {path}")
        paths[c["step"]] = str(path)
    return paths


def _series_prompts(config: SeriesConfig, manifest: dict, file: Path, out: Path) -> Path:
    """The prompt file every step's run reads: ``config.prompts``, or the manifest's
    held-out prompts written once as ``out/prompts.parquet`` (a rerun with other
    prompts is refused)."""
    if config.prompts is not None:
        prompts = Path(config.prompts)
        if not prompts.is_file():
            raise CircuitrayError(f"{prompts}: no such prompt file")
        out.mkdir(parents=True, exist_ok=True)
    else:
        rows = _heldout_prompts(manifest, file, config.per_type)
        out.mkdir(parents=True, exist_ok=True)
        prompts = out / "prompts.parquet"
        fresh = out / ".prompts.new.parquet"
        write_prompts(rows, fresh)
        if prompts.exists() and file_sha256(fresh) != file_sha256(prompts):
            fresh.unlink()
            raise CircuitrayError(
                f"{out}: its prompts.parquet holds other prompts (another --per-type?); "
                "use a new folder"
            )
        os.replace(fresh, prompts)
    return prompts


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
    paths = _checkpoint_paths(file, checkpoints)
    out = Path(config.out)
    prompts = _series_prompts(config, manifest, file, out)
    meta = _series_meta(config, manifest, prompts)
    # Runs are listed once they exist, so a series stopped half-way is readable, and a
    # rerun over some steps keeps the others.
    meta["runs"] = _check_same(out, meta)
    _write_json(out / SERIES_JSON, meta)
    placement = {f.name: getattr(config, f.name) for f in fields(Placement)}
    result = SeriesResult(series_dir=str(out))
    cache = manifest.get("transcoder_cache_dir")
    for c in checkpoints:
        step = c["step"]
        model = ModelSpec(
            model=paths[step],
            transcoders=transcoders,
            device=config.device,
            dtype=config.dtype,
        )
        if cache and not config.transcoders:
            model = replace(model, transcoder_cache_dir=cache)
        logger.info("series %s: step %d (%s)", meta["name"], step, paths[step])
        name = f"step-{step:06d}"
        try:
            result.runs[step] = run(
                RunConfig(
                    prompts=str(prompts),
                    out=str(out / name),
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
        finally:
            if (out / name / "run.json").exists() and step not in {
                r.get("step") for r in meta["runs"]
            }:
                meta["runs"] = sorted([*meta["runs"], {"step": step, "run": name}],
                                      key=lambda r: r["step"])  # fmt: skip
                _write_json(out / SERIES_JSON, meta)
    return result
