"""``circuitray run``: attribute every prompt of a prompt file on Ray actors.

1. Read and validate the prompt file; each prompt's ``graph_id`` is its row index,
   so ids are stable across resumes of the same file (its SHA-256 is in run.json).
2. Open the run folder as every job does (:mod:`circuitray.jobs.session`): lock,
   refuse a folder whose run.json was made with other parameters (its prompts, model,
   attribution and pruning; not batch sizes or offloading), clean up, and find the
   prompts already done (any row, or only 'ok' rows with ``retry_errors``).
3. Dispatch the pending prompts to :class:`AttributionWorker` actors
   (:mod:`circuitray.jobs.dispatch`); each writes one committed part per batch of
   graphs, nodes and edges (:mod:`circuitray.storage.run_store`).
4. Compact, and record status and counts in run.json; progress goes to a callback.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa

from circuitray.graph.attribute import AttributionConfig
from circuitray.graph.prune import PruneConfig
from circuitray.jobs.dispatch import Placement, Progress
from circuitray.jobs.session import Job, JobResult
from circuitray.machine import package_versions
from circuitray.models.loading import ModelSpec, check_model_available
from circuitray.prompts.files import file_sha256, read_prompts
from circuitray.schema import EDGE_SCHEMA, GRAPH_SCHEMA, NODE_SCHEMA, graph_row
from circuitray.storage.run_store import RunStore

logger = logging.getLogger(__name__)

__all__ = ["AttributionJob", "RunConfig", "RunResult", "run"]

# Parameters that must match for a resume to continue the same run. Attribution
# arguments that change speed or memory but not results may differ between sessions.
FINGERPRINT_KEYS = ("prompts_sha256", "model", "attribution", "prune", "step")
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


@dataclass
class RunResult(JobResult):
    """What a run did: counts over the whole run folder and this session's timings
    (fields: :class:`circuitray.jobs.session.JobResult`)."""


def _run_meta(config: RunConfig, n_prompts: int) -> dict:
    step = {} if config.step is None else {"step": config.step}
    return {
        **step,
        "format": "circuitray-run/1",
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


class AttributionJob(Job):
    """``circuitray run``: attribute every prompt of a prompt file (module docstring)."""

    holds = "a run"

    def __init__(self, config: RunConfig):
        self.config = config
        self.table = read_prompts(config.prompts)
        check_model_available(config.model)
        super().__init__(
            RunStore(config.out),
            placement=config,
            retry_errors=config.retry_errors,
            compact=config.compact,
        )

    def meta(self) -> dict:
        return _run_meta(self.config, self.table.num_rows)

    def fingerprint(self, meta: dict) -> dict:
        out = {key: meta.get(key) for key in FINGERPRINT_KEYS}
        if isinstance(out["attribution"], dict):
            out["attribution"] = {
                k: v for k, v in out["attribution"].items() if k not in RESULT_NEUTRAL_ATTRIBUTION
            }
        return out

    def drop_errors(self) -> int:
        return len(self.store.drop_error_rows())

    def pending(self) -> tuple[list[tuple[int, dict]], int]:
        done = self.store.graph_status()
        prompts = self.table.to_pylist()
        return [(gid, p) for gid, p in enumerate(prompts) if gid not in done], len(prompts)

    def worker(self) -> tuple[type, dict]:
        from circuitray.jobs.workers import AttributionWorker

        c = self.config
        kwargs = {"model": c.model, "attribution": c.attribution, "prune": c.prune}
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
        return complete, {"total": result.total, "ok": result.ok, "error": result.errors}


def run(config: RunConfig, *, on_progress: Progress | None = None) -> RunResult:
    """Attribute every prompt of ``config.prompts`` into ``config.out`` (see module doc).

    ``on_progress(done, total, summary)`` is called once before work starts (summary
    None) and after each prompt. Raises :class:`CircuitrayError` for bad input.
    """
    start = time.perf_counter()
    result = AttributionJob(config).execute(on_progress=on_progress, start=start)
    assert isinstance(result, RunResult)
    return result
