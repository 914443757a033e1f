"""``circuitray intervene``: batch feature interventions over a run's prompts on Ray.

1. Read the source run's ``run.json`` (its model and transcoders are the ones the
   interventions must use) and its ok graphs rows; each graph is one work item,
   keyed by its ``graph_id``.
2. Resolve every ``--features`` SPEC
   (:func:`circuitray.graph.intervention_plan.parse_feature_spec`); a ``query:NAME?...``
   SPEC runs the named query over the source run now, so the
   hypothesis found in SQL is the feature set tested, and the resolved pairs are
   recorded in ``intervention.json``.
3. Open the intervention folder like a run folder (:class:`InterventionStore`): take
   the driver lock, refuse a folder made with another plan or source run, remove
   crash leftovers, and skip graphs that already have result rows.
4. Dispatch the pending graphs to :class:`circuitray.jobs.workers.InterventionWorker`
   actors with the placement, retries and actor restarts of every job
   (:mod:`circuitray.jobs.session`, :mod:`circuitray.jobs.dispatch`); each batch is one
   committed part, so a resumed run gives every (prompt, intervention) exactly once.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, replace

import pyarrow as pa
import pyarrow.dataset as ds

from circuitray.errors import CircuitrayError, RunDirError
from circuitray.graph.intervention_plan import FeatureSpec, InterventionPlan, parse_feature_spec
from circuitray.jobs.dispatch import Placement, Progress
from circuitray.jobs.session import Job, JobResult
from circuitray.models.loading import ModelSpec, check_model_available
from circuitray.schema import RESULT_SCHEMA
from circuitray.storage.run_store import InterventionStore, RunStore

logger = logging.getLogger(__name__)

__all__ = [
    "InterventionConfig",
    "InterventionJob",
    "InterventionResult",
    "intervene",
    "parse_layer_range",
]


@dataclass
class InterventionConfig(Placement):
    """Everything ``circuitray intervene`` needs; the plan and source are recorded.

    Attributes:
        run: Source run folder (its graphs choose ``top``/``single`` nodes and predict
            effects; its run.json names the model).
        out: Intervention folder.
        features: SPECs, one intervention group each (see
            :mod:`circuitray.graph.interventions`).
        scale: Intervened activations become ``scale`` x their clean value (0 ablates).
        constrained_layers: ``all``, ``A-B`` (inclusive), ``A`` or None: circuit-tracer's
            ``constrained_layers`` (``all`` is its direct-effect setting).
        freeze_attention: circuit-tracer's ``freeze_attention``.
        seed: Seeds ``random:K``.
        constraint_types: Only graphs of these types (None: all).
        limit: At most this many graphs (the first by graph_id; None: all).
        retry_errors: Recompute the prompts that have error rows (all their rows).
        compact: Merge part files into large sorted ones at the end.
        actors, address, batch_size, gpus_per_actor, cpus_per_actor, max_attempts,
            restart_timeout_s: where actors run and how failures are retried
            (:class:`circuitray.jobs.dispatch.Placement`, keyword-only).
    """

    run: str
    out: str
    features: list[str]
    scale: float = 0.0
    constrained_layers: str | None = None
    freeze_attention: bool = True
    seed: int = 0
    constraint_types: list[str] | None = None
    limit: int | None = None
    retry_errors: bool = False
    compact: bool = True


@dataclass
class InterventionResult(JobResult):
    """What an intervention job did: prompt counts over the whole folder, result rows
    (``results``) and this session's timings (:class:`JobResult`)."""

    results: int = 0


def parse_layer_range(text: str | None, n_layers: int) -> tuple[int, int] | None:
    """``all`` / ``A-B`` (inclusive) / ``A`` -> (start, stop); None stays None."""
    if text is None or str(text).strip().lower() in ("", "none"):
        return None
    t = str(text).strip().lower()
    if t == "all":
        return (0, n_layers)
    lo, sep, hi = t.partition("-")
    try:
        start, stop = int(lo), int(hi if sep else lo) + 1
    except ValueError:
        raise CircuitrayError(
            f"--constrained-layers {text!r}: expected 'all', 'A-B' or 'A'"
        ) from None
    if not 0 <= start < stop <= n_layers:
        raise CircuitrayError(
            f"--constrained-layers {text!r}: the model has layers 0-{n_layers - 1}"
        )
    return (start, stop)


def _resolve_query_spec(spec: FeatureSpec, run_dir: str) -> FeatureSpec:
    """Run a ``query:`` SPEC over the source run; rows give (layer, feature) pairs."""
    from circuitray.query.engine import get_query, run_query

    query = get_query(spec.query or "")
    params = {k: v for k, v in spec.params if k in query.params}
    filters = {k: v for k, v in spec.params if k not in query.params}
    table = run_query(spec.query or "", [run_dir], params=params)
    missing = [c for c in ("layer", "feature", *filters) if c not in table.column_names]
    if missing:
        raise CircuitrayError(
            f"--features {spec.text!r}: query {spec.query} has no column(s) "
            f"{', '.join(missing)} (columns: {', '.join(table.column_names)})"
        )
    pairs = []
    for row in table.to_pylist():
        matches = all(str(row[k]) == v for k, v in filters.items())
        if matches and row["layer"] is not None and row["feature"] is not None:
            pairs.append((int(row["layer"]), int(row["feature"])))
    if not pairs:
        raise CircuitrayError(f"--features {spec.text!r}: the query selected no features")
    return replace(spec, kind="features", features=tuple(dict.fromkeys(pairs)))


def _model_spec(meta: dict) -> ModelSpec:
    """The run's model. run.json records the transcoder cache folder the run resolved;
    where that folder is not here (another machine), resolve it again here."""
    m = meta.get("model") or {}
    fields = {k: m[k] for k in ModelSpec.__dataclass_fields__ if k in m}
    cache = fields.get("transcoder_cache_dir")
    if cache and not os.path.isdir(cache):
        fields["transcoder_cache_dir"] = None
    return ModelSpec(**fields)


def _n_layers(store: RunStore) -> int:
    nodes = store.dataset("nodes")
    if nodes is None:
        raise RunDirError(f"{store.root}: the run has no stored graphs")
    logits = nodes.to_table(columns=["layer"], filter=ds.field("node_type") == "logit")
    if logits.num_rows == 0:
        raise RunDirError(f"{store.root}: the run has no logit nodes")
    return max(logits["layer"].to_pylist())


def build_plan(config: InterventionConfig, source: RunStore) -> InterventionPlan:
    """Parse and resolve the SPECs and layer range (module docstring, step 2)."""
    if not config.features:
        raise CircuitrayError("no --features given: name at least one SPEC")
    n_layers = _n_layers(source)
    specs = []
    for text in config.features:
        spec = parse_feature_spec(text)
        if spec.kind == "query":
            spec = _resolve_query_spec(spec, str(source.root))
        bad = [f"{la}:{f}" for la, f in spec.features if not 0 <= la < n_layers]
        if bad:
            raise CircuitrayError(
                f"--features {spec.text!r}: {', '.join(bad)}: the model has layers 0-{n_layers - 1}"
            )
        specs.append(spec)
    return InterventionPlan(
        specs=tuple(specs),
        scale=config.scale,
        constrained_layers=parse_layer_range(config.constrained_layers, n_layers),
        freeze_attention=config.freeze_attention,
        seed=config.seed,
    )


def _plan_meta(plan: InterventionPlan) -> dict:
    d = asdict(plan)
    d["specs"] = [{k: v for k, v in s.items() if v not in (None, ())} for s in d["specs"]]
    return d


class InterventionJob(Job):
    """``circuitray intervene``: the plan on every selected ok graph (module docstring)."""

    holds = "interventions"
    store: InterventionStore
    FINGERPRINT_KEYS = ("source_run", "source_prompts_sha256", "plan", "selection")

    def __init__(self, config: InterventionConfig):
        self.config = config
        self.source = source = RunStore(config.run)
        self.source_meta = source.read_meta()
        self.model = _model_spec(self.source_meta)
        check_model_available(self.model)
        # What each graph was attributed to (--target), where the folder records it.
        targets = [
            c
            for c in ("target_mode", "target_token_id", "contrast_token_ids")
            if c in source.common_columns("graphs")
        ]
        graphs = source.read_graphs(
            ["graph_id", "prompt_id", "constraint_type", "prompt", "target", "status", *targets]
        )
        selected = [g for g in graphs.sort_by("graph_id").to_pylist() if g["status"] == "ok"]
        if config.constraint_types:
            known = {g["constraint_type"] for g in selected}
            unknown = sorted(set(config.constraint_types) - known)
            if unknown:
                raise CircuitrayError(
                    f"--type {', '.join(unknown)}: no ok graphs of that type in {config.run} "
                    f"(types: {', '.join(sorted(t for t in known if t))})"
                )
            selected = [g for g in selected if g["constraint_type"] in config.constraint_types]
        if config.limit is not None:
            selected = selected[: config.limit]
        self.selected = selected
        self.plan = build_plan(config, source)
        store = InterventionStore(config.out)
        if store.local and str(store.base) == str(source.base):
            raise RunDirError(f"{config.out}: is the source run folder; give a new --out folder")
        super().__init__(
            store, placement=config, retry_errors=config.retry_errors, compact=config.compact
        )

    def meta(self) -> dict:
        config, source_meta = self.config, self.source_meta
        meta = {
            "format": "circuitray-intervention/1",
            "source_run": str(self.source.uri),
            "source_prompts_sha256": source_meta.get("prompts_sha256"),
            "model": source_meta.get("model"),
            "plan": _plan_meta(self.plan),
            "selection": {"constraint_types": config.constraint_types, "limit": config.limit},
        }
        return json.loads(json.dumps(meta))  # as stored (tuples -> lists), to compare

    def fingerprint(self, meta: dict) -> dict:
        return {key: meta.get(key) for key in self.FINGERPRINT_KEYS}

    def drop_errors(self) -> int:
        return len(self.store.drop_graphs_with_errors())

    def pending(self) -> tuple[list[tuple[int, dict]], int]:
        done = self.store.done_graph_ids()
        items = [(g["graph_id"], g) for g in self.selected if g["graph_id"] not in done]
        return items, len(self.selected)

    def worker(self) -> tuple[type, dict]:
        from circuitray.jobs.workers import InterventionWorker

        return InterventionWorker, {
            "model": self.model,
            "plan": self.plan,
            "source_run": self.source.uri,
            "run_dir": self.store.uri,
        }

    @staticmethod
    def error_tables(items: list[tuple[int, dict]], error: str) -> dict[str, pa.Table]:
        rows = [
            {
                "graph_id": gid,
                "prompt_id": g["prompt_id"],
                "constraint_type": g.get("constraint_type"),
                "spec_index": -1,
                "spec": None,
                "rank": 0,
                "status": "error",
                "error": error,
            }
            for gid, g in items
        ]
        return {"results": pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)}

    def new_result(self) -> InterventionResult:
        return InterventionResult(run_dir=str(self.store.root))

    def tally(self, result: JobResult) -> tuple[bool, dict]:
        assert isinstance(result, InterventionResult)
        rows = self.store.read_table("results", ["graph_id", "status"])
        wanted = {g["graph_id"] for g in self.selected}
        failed: set[int] = set()
        seen: set[int] = set()
        if rows is not None:
            for gid, status in zip(
                rows["graph_id"].to_pylist(), rows["status"].to_pylist(), strict=True
            ):
                seen.add(gid)
                if status == "error":
                    failed.add(gid)
            result.results = rows.num_rows
        result.errors = len(failed & wanted)
        result.ok = len((seen - failed) & wanted)
        counts = {
            "prompts": result.total,
            "ok": result.ok,
            "error": result.errors,
            "results": result.results,
        }
        return wanted <= seen, counts


def intervene(
    config: InterventionConfig, *, on_progress: Progress | None = None
) -> InterventionResult:
    """Run the planned interventions on every selected ok graph of ``config.run``
    (see module docstring). Raises :class:`CircuitrayError` for bad input."""
    start = time.perf_counter()
    result = InterventionJob(config).execute(on_progress=on_progress, start=start)
    assert isinstance(result, InterventionResult)
    return result
