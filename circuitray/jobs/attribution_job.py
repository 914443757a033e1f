"""``circuitray run``: attribute every prompt of a prompt file on Ray actors.

1. Read and validate the prompt file; each prompt's ``graph_id`` is its row index,
   so ids are stable across resumes of the same file (its SHA-256 is in run.json).
2. Open the run folder as every job does (:mod:`circuitray.jobs.session`): lock,
   refuse a folder whose run.json was made with other parameters (its prompts, model,
   attribution and pruning; not batch sizes or offloading), clean up, and find the
   prompts already done (any row, or only 'ok' rows with ``retry_errors``).
3. Dispatch the pending prompts (made into dicts one batch at a time) to
   :class:`AttributionWorker` actors (:mod:`circuitray.jobs.dispatch`); each writes
   one committed part per batch of graphs, nodes and edges
   (:mod:`circuitray.storage.run_store`).
4. Compact, and record status and counts in run.json; progress goes to a callback.

``verify_precision=K`` (``--verify-precision K``, a run in bfloat16 or float16): K
graph ids are drawn before dispatch (seeded, one constraint type after another:
:func:`circuitray.graph.precision.sample_graph_ids`) and recorded in run.json's
``verify_precision``, which a resume reads back (so it checks the same graphs) and
must match like the other parameters. The worker that gets one of them attributes it
in float32 as well and fills the graphs row's ``precision_*`` columns; when the run
finishes (every session) run.json's ``precision`` summarises them. A float32 run is
refused: there is nothing to compare.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa

from circuitray.errors import CircuitrayError
from circuitray.graph.config import AttributionConfig, PruneConfig
from circuitray.graph.precision import PRECISION_COLUMNS, sample_graph_ids, summarise_checks
from circuitray.graph.targets import required_columns
from circuitray.jobs.dispatch import Placement, Progress
from circuitray.jobs.session import Job, JobResult, PromptItems, pending_prompts
from circuitray.machine import package_versions
from circuitray.models.loading import ModelSpec, check_model_available
from circuitray.prompts.files import file_sha256, read_prompts
from circuitray.schema import EDGE_SCHEMA, GRAPH_SCHEMA, NODE_SCHEMA, graph_row
from circuitray.storage.run_store import RUN_FORMAT, RunStore

logger = logging.getLogger(__name__)

__all__ = ["AttributionJob", "RunConfig", "RunResult", "run"]

# Parameters that must match for a resume to continue the same run. Attribution
# arguments that change speed or memory but not results may differ between sessions.
FINGERPRINT_KEYS = ("prompts_sha256", "model", "attribution", "prune", "step", "verify_precision")
RESULT_NEUTRAL_ATTRIBUTION = ("batch_size", "offload", "update_interval", "max_tokens")
VERSIONED_PACKAGES = (
    "circuitray",
    "circuit-tracer",
    "torch",
    "transformers",
    "nnsight",
    "ray",
    "pyarrow",
    "duckdb",
)
# The seed of the --verify-precision sample (recorded in run.json with it).
PRECISION_SEED = 0
REFERENCE_DTYPE = "float32"


@dataclass
class RunConfig(Placement):
    """Everything a run needs; all of it except placement is recorded in run.json.

    Attributes:
        prompts: Prompt file (Parquet, JSONL or CSV; see :mod:`circuitray.prompts`).
        out: Run folder.
        model: Model and transcoders to load.
        attribution: circuit-tracer ``attribute()`` arguments.
        prune: Node and edge thresholds.
        retry_errors: Recompute prompts whose rows have ``status='error'``.
        compact: Merge part files into large sorted ones at the end of the run.
        step: The fine-tuning step of the model's checkpoint, for a run of a
            checkpoint series (:mod:`circuitray.jobs.series`); the query views give it
            as the ``graphs`` view's ``step`` column.
        verify_precision: Also attribute this many sampled graphs in float32 and
            record how far the run's dtype is from it (the graphs' ``precision_*``
            columns, run.json's ``precision``; query ``precision``); 0: none. Needs a
            bfloat16 or float16 run (--dtype).
        actors, address, batch_size, gpus_per_actor, cpus_per_actor, max_attempts,
            restart_timeout_s: where actors run and how failures are retried
            (:class:`circuitray.jobs.dispatch.Placement`, keyword-only).
    """

    prompts: str
    out: str
    model: ModelSpec = field(default_factory=ModelSpec)
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    retry_errors: bool = False
    compact: bool = True
    step: int | None = None
    verify_precision: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        k = self.verify_precision
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise CircuitrayError(f"--verify-precision {k}: must be a number of graphs (0 or more)")
        if k and self.model.dtype == REFERENCE_DTYPE:
            raise CircuitrayError(
                f"--verify-precision {k}: the run is float32 already; it checks a bfloat16 "
                "or float16 run (--dtype) against float32"
            )


@dataclass
class RunResult(JobResult):
    """What a run did: counts over the whole run folder and this session's timings
    (fields: :class:`circuitray.jobs.session.JobResult`).

    Attributes:
        precision: run.json's ``precision`` summary (``--verify-precision``), else None.
    """

    precision: dict | None = None


def _run_meta(config: RunConfig, n_prompts: int, sample: list[int] | None = None) -> dict:
    step = {} if config.step is None else {"step": config.step}
    verify = {}
    if config.verify_precision:
        verify = {
            "verify_precision": {
                "k": config.verify_precision,
                "seed": PRECISION_SEED,
                "reference_dtype": REFERENCE_DTYPE,
                "graph_ids": sample,
            }
        }
    return {
        **step,
        **verify,
        "format": RUN_FORMAT,
        "prompts": str(Path(config.prompts).resolve()),
        "prompts_sha256": file_sha256(config.prompts),
        "n_prompts": n_prompts,
        "model": {**asdict(config.model), **config.model.resolved()},
        "attribution": asdict(config.attribution),
        "prune": asdict(config.prune),
        "graph_id": "row index of the prompt in the prompt file (0-based)",
        "versions": package_versions(VERSIONED_PACKAGES),
        "python": platform.python_version(),
    }


def check_target_columns(mode: str, path: str, table: pa.Table) -> None:
    """Refuse, before anything runs, a prompt file without the columns ``mode`` needs
    (a column that is absent or null on every row is not there)."""
    have = [c for c in table.column_names if table.column(c).null_count < table.num_rows]
    for choices in required_columns(mode):
        if not any(c in have for c in choices):
            need = " or ".join(repr(c) for c in choices)
            raise CircuitrayError(
                f"{path}: --target {mode} needs a {need} column; the file has {', '.join(have)}"
            )


class AttributionJob(Job):
    """``circuitray run``: attribute every prompt of a prompt file (module docstring)."""

    holds = "a run"
    store: RunStore

    def __init__(self, config: RunConfig):
        self.config = config
        self.table = read_prompts(config.prompts)
        check_target_columns(config.attribution.target, config.prompts, self.table)
        k, n = config.verify_precision, self.table.num_rows
        if k > n:
            raise CircuitrayError(
                f"--verify-precision {k}: more than the {n} prompts of {config.prompts}"
            )
        check_model_available(config.model)
        self.sample: list[int] = []
        self._meta: dict = {}
        super().__init__(
            RunStore(config.out),
            placement=config,
            retry_errors=config.retry_errors,
            compact=config.compact,
        )

    def meta(self) -> dict:
        k = self.config.verify_precision
        if k:
            self.sample = self._recorded_sample() or sample_graph_ids(
                self._constraint_types(), k, PRECISION_SEED
            )
        # tally() adds the precision summary to this very dict, which execute() writes.
        self._meta = _run_meta(self.config, self.table.num_rows, self.sample or None)
        return self._meta

    def _constraint_types(self) -> list[str | None]:
        if "constraint_type" in self.table.column_names:
            return self.table.column("constraint_type").to_pylist()
        return [None] * self.table.num_rows

    def _recorded_sample(self) -> list[int] | None:
        """The graph ids a run of this folder sampled with the same K and seed (a
        resume checks the same graphs), else None."""
        if not self.store.exists():
            return None
        recorded = self.store.read_meta().get("verify_precision")
        if not isinstance(recorded, dict):
            return None
        same = recorded.get("k") == self.config.verify_precision
        ids = recorded.get("graph_ids")
        if same and recorded.get("seed") == PRECISION_SEED and isinstance(ids, list):
            return ids
        return None

    def fingerprint(self, meta: dict) -> dict:
        out = {key: meta.get(key) for key in FINGERPRINT_KEYS}
        if isinstance(out["attribution"], dict):
            # Folders written before --target existed attributed to the top logits.
            out["attribution"] = {
                "target": "top",
                **{
                    k: v
                    for k, v in out["attribution"].items()
                    if k not in RESULT_NEUTRAL_ATTRIBUTION
                },
            }
        return out

    def drop_errors(self) -> int:
        return len(self.store.drop_error_rows())

    def pending(self) -> tuple[PromptItems, int]:
        # Lazily: a prompt becomes a dict when its batch is sent (1.2 GB of driver at
        # 10^6 prompts as dicts up front; see circuitray bench scale).
        return pending_prompts(self.table, self.store.graph_ids()), self.table.num_rows

    def worker(self) -> tuple[type, dict]:
        from circuitray.jobs.workers import AttributionWorker

        c = self.config
        kwargs = {"model": c.model, "attribution": c.attribution, "prune": c.prune}
        if self.sample:
            kwargs["verify_precision"] = list(self.sample)
        return AttributionWorker, {**kwargs, "run_dir": self.store.uri}

    @staticmethod
    def error_tables(items: list[tuple[int, dict]], error: str) -> dict[str, pa.Table]:
        rows = [graph_row(gid, p, status="error", error=error) for gid, p in items]
        return {
            "graphs": pa.Table.from_pylist(rows, schema=GRAPH_SCHEMA),
            "nodes": NODE_SCHEMA.empty_table(),
            "edges": EDGE_SCHEMA.empty_table(),
        }

    def new_result(self) -> RunResult:
        return RunResult(run_dir=str(self.store.root))

    def tally(self, result: JobResult) -> tuple[bool, dict]:
        status = self.store.graph_status()
        result.ok = sum(1 for s in status.values() if s == "ok")
        result.errors = sum(1 for s in status.values() if s == "error")
        complete = len(status) == result.total
        if self.sample:
            summary = self.precision_summary()
            self._meta["precision"] = summary
            assert isinstance(result, RunResult)
            result.precision = summary
        return complete, {"total": result.total, "ok": result.ok, "error": result.errors}

    def precision_summary(self) -> dict:
        """run.json's ``precision``: the sample's checks over the whole folder."""
        rows = self.store.read_graphs(columns=["graph_id", *PRECISION_COLUMNS]).to_pylist()
        wanted = set(self.sample)
        summary = summarise_checks(
            [r for r in rows if r["graph_id"] in wanted], sampled=list(self.sample)
        )
        return {
            "k": self.config.verify_precision,
            "dtype": self.config.model.dtype,
            "reference_dtype": REFERENCE_DTYPE,
            "graph_ids": list(self.sample),
            **summary,
        }


def run(config: RunConfig, *, on_progress: Progress | None = None) -> RunResult:
    """Attribute every prompt of ``config.prompts`` into ``config.out`` (see module doc).

    ``on_progress(done, total, summary)`` is called once before work starts (summary
    None) and after each prompt. Raises :class:`CircuitrayError` for bad input.
    """
    start = time.perf_counter()
    result = AttributionJob(config).execute(on_progress=on_progress, start=start)
    assert isinstance(result, RunResult)
    return result
