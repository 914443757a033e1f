"""Pipelines: a YAML file naming a prompt set, runs, named queries and comparisons.

A pipeline file (``pipelines/*.yaml``) is the unit users launch, locally or with
``ray job submit ... -- circuitray pipeline run FILE --address auto``::

    name: ws2-constraint-comparison
    prompts: {ws2: {n: 300, seed: 0}}           # or {file: prompts.parquet}
    run_options: {batch_size: 8}                # RunConfig fields shared by all runs
    runs:
      base: {model: organism-base}
      tuned: {model: organism-tuned}
    queries:
      - {name: constraint_stats, runs: [base, tuned]}
      - {name: top_features, runs: [tuned], params: {top_k: 5}}
    compare:
      - {baseline: base, candidate: tuned}
      - {run: tuned, by: constraint_type}
    interventions:                              # InterventionConfig fields
      - {name: ablate, run: tuned, features: ["top:3", "random:3"]}

With ``finetune`` and ``series`` steps (learning dynamics), each fine-tune is made
(or a given ``finetune.json`` taken), then each series attributes every checkpoint
into ``<out_root>/<series name>`` (:mod:`circuitray.jobs.series`), before the queries;
a ``report`` step writes the HTML report last. ``prompts`` and ``runs`` are then
optional.

1. Load and check the file (:meth:`Pipeline.load`): unknown keys, runs that a query
   or comparison names but the pipeline does not define, and bad values are errors
   naming the file and the key.
2. Write the prompts (``<out_root>/prompts.parquet``; a local cache folder when the
   output root is object storage), then each run into ``<out_root>/<run name>``. Runs
   resume like ``circuitray run``: rerunning a pipeline finishes what is missing.
3. Run each intervention step into ``<out_root>/interventions/<name>`` (resumable like
   ``circuitray intervene``), its ``intervention_effects`` table labelled
   ``intervention_effects-<name>``.
4. Run each query and comparison over the run folders and write its table (and the
   intervention tables) to ``<out_root>/results/<step>.parquet`` (through pyarrow's
   filesystem, so s3:// roots work); the tables are also returned.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import yaml

from circuitray.errors import CircuitrayError
from circuitray.finetune.config import FinetuneConfig
from circuitray.finetune.manifest import MANIFEST
from circuitray.graph.config import AttributionConfig, PruneConfig
from circuitray.graph.intervention_plan import parse_feature_spec
from circuitray.jobs.attribution_job import RunConfig, RunResult, run
from circuitray.jobs.intervention_job import InterventionConfig, intervene
from circuitray.jobs.series import SeriesConfig, run_series
from circuitray.models.loading import ModelSpec
from circuitray.models.registry import circuitray_home
from circuitray.prompts.files import write_prompts
from circuitray.prompts.ws2 import generate_ws2
from circuitray.query.compare import CompareConfig, compare_groups, compare_runs
from circuitray.query.engine import get_query, run_query

logger = logging.getLogger(__name__)

__all__ = ["Pipeline", "PipelineResult", "run_pipeline"]

TOP_KEYS = {
    "name",
    "description",
    "prompts",
    "run_options",
    "runs",
    "queries",
    "compare",
    "interventions",
    "finetune",
    "series",
    "report",
}
RUN_KEYS = {f.name for f in fields(RunConfig)} - {"prompts", "out", "model"}
MODEL_KEYS = {f.name for f in fields(ModelSpec)}
NESTED = {"attribution": AttributionConfig, "prune": PruneConfig}
QUERY_KEYS = {"name", "runs", "params", "label"}
COMPARE_KEYS = {"baseline", "candidate", "run", "label"} | {f.name for f in fields(CompareConfig)}
INTERVENTION_KEYS = {"name"} | {f.name for f in fields(InterventionConfig)} - {"out"}
FINETUNE_KEYS = ({"manifest", "ray_workers", "use_gpu"} | set(FinetuneConfig.field_names())) - {
    "out"
}
SERIES_KEYS = {"finetune"} | {f.name for f in fields(SeriesConfig)} - {"manifest", "out"}
REPORT_KEYS = {"runs", "out"}
# Folders of the output root that a pipeline writes itself.
RESERVED = {"finetune", "results", "interventions"}


@dataclass
class Pipeline:
    """A parsed pipeline file.

    Attributes:
        name: Pipeline name (results are labelled with it).
        path: The file it came from (for error messages).
        prompts: ``{"ws2": {"n": .., "seed": .., "types": [..]}}`` or ``{"file": path}``.
        run_options: RunConfig fields shared by every run (``attribution`` and
            ``prune`` as nested mappings).
        runs: Run name -> its model fields (``model``, ``transcoders``...) and any
            RunConfig field overriding ``run_options``.
        queries: Steps ``{name, runs, params}``.
        compare: Steps ``{baseline, candidate}`` or ``{run, by}``, plus CompareConfig
            fields.
        interventions: Steps ``{name, run, features, ...}``: InterventionConfig fields,
            ``run`` naming one of ``runs``.
        finetune: Fine-tune name -> FinetuneConfig fields (``ray_workers: N`` and
            ``use_gpu: true`` for a Ray Train job), or ``{manifest: PATH}`` for one
            made elsewhere (``organism``: the organism's, made by ``make setup``).
        series: Series name -> ``{finetune: NAME}`` plus SeriesConfig fields; queries,
            comparisons and the report name series as they name runs.
        report: ``{runs: [names], out: FILE}``: the HTML report of those runs/series.
    """

    name: str
    path: str
    prompts: dict
    run_options: dict = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    queries: list[dict] = field(default_factory=list)
    compare: list[dict] = field(default_factory=list)
    interventions: list[dict] = field(default_factory=list)
    finetune: dict[str, dict] = field(default_factory=dict)
    series: dict[str, dict] = field(default_factory=dict)
    report: dict | None = None

    @classmethod
    def load(cls, path: str | Path) -> Pipeline:
        p = Path(path)
        if not p.is_file():
            raise CircuitrayError(f"{path}: no such pipeline file")
        try:
            doc = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise CircuitrayError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(doc, dict):
            raise CircuitrayError(f"{path}: a pipeline is a mapping (name, prompts, runs...)")
        unknown = sorted(set(doc) - TOP_KEYS)
        if unknown:
            raise CircuitrayError(
                f"{path}: unknown key {unknown[0]!r} (keys: {', '.join(sorted(TOP_KEYS))})"
            )
        pipe = cls(
            name=str(doc.get("name") or p.stem),
            path=str(path),
            prompts=doc.get("prompts") or {},
            run_options=doc.get("run_options") or {},
            runs=doc.get("runs") or {},
            queries=doc.get("queries") or [],
            compare=doc.get("compare") or [],
            interventions=doc.get("interventions") or [],
            finetune=doc.get("finetune") or {},
            series=doc.get("series") or {},
            report=doc.get("report"),
        )
        pipe.validate()
        return pipe

    def _err(self, where: str, msg: str) -> CircuitrayError:
        return CircuitrayError(f"{self.path}: {where}: {msg}")

    def validate(self) -> None:
        """Check every reference and key; errors name the file and the key."""
        for key in ("runs", "finetune", "series"):
            if not isinstance(getattr(self, key), dict):
                raise self._err(key, "a mapping of names to steps")
        kinds = set(self.prompts) if isinstance(self.prompts, dict) else set()
        if self.runs and (len(kinds) != 1 or not kinds <= {"ws2", "file"}):
            raise self._err("prompts", "give exactly one of ws2: {n, seed} or file: PATH")
        if not self.runs and not self.series:
            raise self._err("runs", "define at least one run (name: {model: ...}) or series")
        self._validate_learning()
        for key in self.run_options:
            if key not in RUN_KEYS:
                raise self._err(f"run_options.{key}", "not a run option")
        for name, spec in self.runs.items():
            if not isinstance(spec, dict):
                raise self._err(f"runs.{name}", "a run is a mapping (model: ...)")
            for key in spec:
                if key not in RUN_KEYS | MODEL_KEYS:
                    raise self._err(f"runs.{name}.{key}", "not a run or model option")
            self.run_config(name, prompts="-", out="-")  # builds, so types are checked
        for i, q in enumerate(self.queries):
            where = f"queries[{i}]"
            if not isinstance(q, dict) or "name" not in q:
                raise self._err(where, "a query step needs name (and runs)")
            self._check_keys(where, q, QUERY_KEYS)
            try:
                get_query(q["name"]).bind({k: str(v) for k, v in (q.get("params") or {}).items()})
            except CircuitrayError as e:
                raise self._err(where, str(e)) from None
            self._check_runs(where, q.get("runs") or self.names())
        for i, c in enumerate(self.compare):
            where = f"compare[{i}]"
            if not isinstance(c, dict):
                raise self._err(where, "a compare step is a mapping")
            self._check_keys(where, c, COMPARE_KEYS)
            names = [c[k] for k in ("baseline", "candidate", "run") if k in c]
            if not ({"baseline", "candidate"} <= set(c) or "run" in c):
                raise self._err(where, "give baseline and candidate, or run (with by)")
            self._check_runs(where, names, series=False)

        seen: set[str] = set()
        for i, iv in enumerate(self.interventions):
            where = f"interventions[{i}]"
            if not isinstance(iv, dict) or not {"name", "run", "features"} <= set(iv):
                raise self._err(where, "an intervention step needs name, run and features")
            self._check_keys(where, iv, INTERVENTION_KEYS)
            self._check_runs(where, [iv["run"]], series=False)
            if iv["name"] in seen or not str(iv["name"]).replace("-", "_").isidentifier():
                raise self._err(where, f"name {iv['name']!r}: unique, letters/digits/-/_")
            seen.add(iv["name"])
            features = iv["features"]
            if not isinstance(features, list) or not features:
                raise self._err(f"{where}.features", "a list of SPECs")
            for spec in features:
                if not isinstance(spec, str):
                    raise self._err(
                        f"{where}.features", f"{spec!r}: quote each SPEC (YAML reads 3:10 as 190)"
                    )
                try:
                    parse_feature_spec(str(spec))
                except CircuitrayError as e:
                    raise self._err(f"{where}.features", str(e)) from None
            self.intervention_config(i, run_dir="-", out="-")  # builds: values checked

    def intervention_config(self, i: int, *, run_dir: str, out: str, **overrides):
        """The InterventionConfig of step ``i``; ``overrides`` where not None."""
        step = {k: v for k, v in self.interventions[i].items() if k not in ("name", "run")}
        step["features"] = [str(f) for f in step["features"]]
        step.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return InterventionConfig(run=run_dir, out=out, **step)
        except (TypeError, CircuitrayError) as e:  # CircuitrayError: a value out of range
            raise self._err(f"interventions[{i}]", str(e)) from None

    def _check_keys(self, where: str, step: dict, allowed: set[str]) -> None:
        unknown = sorted(set(step) - allowed)
        if unknown:
            raise self._err(
                where, f"unknown key {unknown[0]!r} (keys: {', '.join(sorted(allowed))})"
            )

    def _validate_learning(self) -> None:
        """The finetune, series and report steps."""
        for kind, steps in (("finetune", self.finetune), ("series", self.series)):
            for name in steps:
                if not str(name).replace("-", "_").isidentifier() or name in RESERVED:
                    raise self._err(
                        f"{kind}.{name}",
                        "a name of letters, digits, - and _ (not "
                        f"{', '.join(sorted(RESERVED))}): it names a folder",
                    )
        for name, spec in self.finetune.items():
            where = f"finetune.{name}"
            if not isinstance(spec, dict):
                raise self._err(where, "a mapping (base: ..., or manifest: PATH)")
            self._check_keys(where, spec, FINETUNE_KEYS)
            workers = spec.get("ray_workers", 1)
            if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
                raise self._err(f"{where}.ray_workers", f"an integer >= 1, got {workers!r}")
            if not isinstance(spec.get("use_gpu", False), bool):
                raise self._err(f"{where}.use_gpu", f"true or false, got {spec['use_gpu']!r}")
            targets = spec.get("lora_targets", [])
            if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
                raise self._err(f"{where}.lora_targets", "a list of module names")
            if "manifest" not in spec:
                self.finetune_config(name, out="-")  # builds, so values are checked
        for name, spec in self.series.items():
            where = f"series.{name}"
            if name in self.runs:
                raise self._err(where, "a run has this name too")
            if not isinstance(spec, dict) or spec.get("finetune") not in self.finetune:
                raise self._err(
                    where, f"needs finetune: one of ({', '.join(self.finetune) or 'none'})"
                )
            self._check_keys(where, spec, SERIES_KEYS)
            self.series_config(name, manifest="-", out="-")
        if self.report is not None:
            if not isinstance(self.report, dict):
                raise self._err("report", "a mapping {runs: [...], out: FILE}")
            self._check_keys("report", self.report, REPORT_KEYS)
            out = str(self.report.get("out") or "report.html")
            if "/" in out or "\\" in out or out.startswith("."):
                raise self._err("report.out", f"{out!r}: a file name inside the output root")
            self._check_runs("report", self.report.get("runs") or self.names())

    def names(self) -> list[str]:
        """Runs and series, which queries, comparisons and the report can name."""
        return [*self.runs, *self.series]

    def finetune_config(self, name: str, *, out: str) -> FinetuneConfig:
        spec = {k: v for k, v in self.finetune[name].items() if k not in ("ray_workers", "use_gpu")}
        if "lora_targets" in spec:
            spec["lora_targets"] = tuple(spec["lora_targets"])
        try:
            return FinetuneConfig(out=out, **spec)
        except (TypeError, ValueError) as e:
            raise self._err(f"finetune.{name}", str(e)) from None

    def series_config(self, name: str, *, manifest: str, out: str, **overrides) -> SeriesConfig:
        spec = {k: v for k, v in self.series[name].items() if k != "finetune"}
        self._nested(f"series.{name}", spec)
        spec.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return SeriesConfig(manifest=manifest, out=out, **spec)
        except (TypeError, CircuitrayError) as e:
            raise self._err(f"series.{name}", str(e)) from None

    def _nested(self, where: str, opts: dict) -> None:
        """Build ``opts``' nested configs (``attribution``, ``prune``) in place."""
        for key, cls in NESTED.items():
            if key in opts:
                try:
                    opts[key] = cls(**opts[key])
                except (TypeError, CircuitrayError) as e:
                    raise self._err(f"{where}.{key}", str(e)) from None

    def _check_runs(self, where: str, names: list[str], *, series: bool = True) -> None:
        for n in names:
            if n in self.series and not series:
                raise self._err(
                    where, f"{n!r} is a series; comparisons and interventions take runs"
                )
            if n not in self.runs and n not in self.series:
                raise self._err(
                    where, f"run {n!r} is not defined (runs: {', '.join(self.names())})"
                )

    def run_config(self, name: str, *, prompts: str, out: str, **overrides) -> RunConfig:
        """The RunConfig of run ``name``: run_options, then the run's own fields, then
        ``overrides`` (e.g. address, actors from the command line) where not None."""
        merged = {**self.run_options, **self.runs[name]}
        model = ModelSpec(**{k: v for k, v in merged.items() if k in MODEL_KEYS})
        opts = {k: v for k, v in merged.items() if k in RUN_KEYS}
        self._nested(f"runs.{name}", opts)
        opts.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return RunConfig(prompts=prompts, out=out, model=model, **opts)
        except (TypeError, CircuitrayError) as e:  # CircuitrayError: a value out of range
            raise self._err(f"runs.{name}", str(e)) from None


@dataclass
class PipelineResult:
    """What a pipeline did: its runs and the tables of its steps, by step label."""

    out_root: str
    runs: dict[str, RunResult]
    tables: dict[str, pa.Table]


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def _write_table(root: str, name: str, table: pa.Table) -> str:
    """Write a result table atomically (temporary name, then rename) under root."""
    uri = _join(root, "results", f"{name}.parquet")
    if "://" in root:
        fs, path = pafs.FileSystem.from_uri(uri)
    else:
        fs, path = pafs.LocalFileSystem(), os.path.abspath(uri)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = path + ".tmp"
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, path)
    return uri


def _prompt_file(pipeline: Pipeline, out_root: str, *, n: int | None, seed: int | None) -> str:
    """The prompt file the pipeline's runs read: its ``file``, or its ws2 set (``n`` and
    ``seed`` override the pipeline's) written once next to the runs ("" without runs)."""
    remote = "://" in out_root
    if not pipeline.runs:
        return ""
    if "file" in pipeline.prompts:
        return str(pipeline.prompts["file"])
    ws2 = dict(pipeline.prompts["ws2"] or {})
    ws2.update({k: v for k, v in {"n": n, "seed": seed}.items() if v is not None})
    local_root = circuitray_home() / "pipelines" / pipeline.name if remote else Path(out_root)
    prompts_path = local_root / f"prompts-n{ws2.get('n')}-s{ws2.get('seed', 0)}.parquet"
    if not prompts_path.exists():
        try:
            rows = generate_ws2(**ws2)
        except TypeError as e:
            raise CircuitrayError(f"{pipeline.path}: prompts.ws2: {e}") from None
        write_prompts(rows, prompts_path)
    return str(prompts_path)


def _query_tables(pipeline: Pipeline, dirs: dict[str, str]) -> dict[str, pa.Table]:
    """The pipeline's named queries and comparisons over its run folders ``dirs``, by
    label."""
    tables: dict[str, pa.Table] = {}
    for q in pipeline.queries:
        names = q.get("runs") or pipeline.names()
        params = {k: str(v) for k, v in (q.get("params") or {}).items()}
        label = q.get("label") or f"{q['name']}-{'-'.join(names)}"
        tables[label] = run_query(q["name"], [dirs[n] for n in names], params=params)
    for c in pipeline.compare:
        opts = {k: v for k, v in c.items() if k in {f.name for f in fields(CompareConfig)}}
        if "metrics" in opts:
            opts["metrics"] = tuple(opts["metrics"])
        config = CompareConfig(**opts)
        if "run" in c:
            label = c.get("label") or f"compare-{c['run']}-by-{config.by}"
            tables[label] = compare_groups(dirs[c["run"]], config=config)
        else:
            label = c.get("label") or f"compare-{c['baseline']}-vs-{c['candidate']}"
            tables[label] = compare_runs(dirs[c["baseline"]], dirs[c["candidate"]], config=config)
    return tables


def run_pipeline(
    pipeline: Pipeline,
    *,
    out_root: str,
    address: str | None = None,
    actors: int | None = None,
    n: int | None = None,
    seed: int | None = None,
    on_progress=None,
) -> PipelineResult:
    """Run ``pipeline`` into ``out_root`` (see module docstring). ``n`` and ``seed``
    override a ws2 prompt set's; ``address`` and ``actors`` apply to every run."""
    remote = "://" in out_root
    if remote and (pipeline.finetune or pipeline.series):
        raise CircuitrayError(f"{pipeline.path}: finetune and series steps write local folders")
    prompts = _prompt_file(pipeline, out_root, n=n, seed=seed)

    results: dict[str, RunResult] = {}
    dirs: dict[str, str] = {}
    for name in pipeline.runs:
        dirs[name] = _join(out_root, name)
        config = pipeline.run_config(
            name, prompts=prompts, out=dirs[name], address=address, actors=actors
        )
        logger.info("pipeline %s: run %s -> %s", pipeline.name, name, dirs[name])
        results[name] = run(config, on_progress=on_progress)

    manifests = {
        name: _finetune(pipeline, name, out_root, address=address) for name in pipeline.finetune
    }
    for name, spec in pipeline.series.items():
        dirs[name] = _join(out_root, name)
        config = pipeline.series_config(
            name,
            manifest=manifests[spec["finetune"]],
            out=dirs[name],
            address=address,
            actors=actors,
        )
        logger.info("pipeline %s: series %s -> %s", pipeline.name, name, dirs[name])
        for step, r in run_series(config, on_progress=on_progress).runs.items():
            results[f"{name}/step-{step:06d}"] = r

    tables: dict[str, pa.Table] = {}
    for i, step in enumerate(pipeline.interventions):
        out = _join(out_root, "interventions", step["name"])
        config = pipeline.intervention_config(
            i, run_dir=dirs[step["run"]], out=out, address=address, actors=actors
        )
        logger.info("pipeline %s: interventions %s -> %s", pipeline.name, step["name"], out)
        intervene(config, on_progress=on_progress)
        tables[f"intervention_effects-{step['name']}"] = run_query("intervention_effects", [out])
    tables.update(_query_tables(pipeline, dirs))
    for label, table in tables.items():
        _write_table(out_root, label, table)
    if pipeline.report is not None:
        from circuitray.outputs.report import build_report

        names = pipeline.report.get("runs") or pipeline.names()
        out = _join(out_root, str(pipeline.report.get("out") or "report.html"))
        build_report([dirs[n] for n in names], out)
    return PipelineResult(out_root=out_root, runs=results, tables=tables)


def _finetune(pipeline: Pipeline, name: str, out_root: str, *, address: str | None) -> str:
    """The manifest of fine-tune step ``name``: a given one, or one made here (a
    fine-tune whose folder already holds a finished manifest of the same config is
    not run again)."""
    spec = pipeline.finetune[name]
    if "manifest" in spec:
        if spec["manifest"] == "organism":
            return str(circuitray_home() / "models" / "organism-finetune" / MANIFEST)
        return str(spec["manifest"])
    from dataclasses import asdict

    from circuitray.finetune.manifest import read_manifest

    out = _join(out_root, "finetune", name)
    config = pipeline.finetune_config(name, out=out)
    try:
        done = read_manifest(out)
    except CircuitrayError:
        done = None
    if (
        done is not None
        and _without_out(done.get("config")) == _without_out(json_ready(asdict(config)))
        and done["checkpoints"][-1]["step"] == config.steps
    ):
        logger.info("pipeline %s: fine-tune %s already done", pipeline.name, name)
    elif spec.get("ray_workers"):
        from circuitray.finetune.ray_train import finetune_on_ray

        finetune_on_ray(
            config,
            workers=int(spec["ray_workers"]),
            use_gpu=bool(spec.get("use_gpu")),
            address=address,
        )
    else:
        from circuitray.finetune.local import finetune

        finetune(config)
    return _join(out, MANIFEST)


def _without_out(config) -> dict | None:
    """A recorded FinetuneConfig without ``out`` (Ray Train records it resolved)."""
    return {k: v for k, v in config.items() if k != "out"} if isinstance(config, dict) else None


def json_ready(value):
    """``value`` as it reads back from JSON (tuples become lists)."""
    import json

    return json.loads(json.dumps(value))
