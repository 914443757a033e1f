"""The driver: shards a prompt file over AttributionWorker actors on Ray.

1. Read and validate the prompt file; each prompt's ``graph_id`` is its row index,
   so ids are stable across resumes of the same file (its SHA-256 is in run.json).
2. Open the run folder: take the driver lock, refuse a folder whose run.json was made
   with other parameters, remove crash leftovers, and find prompts already done
   (any row, or only 'ok' rows with ``retry_errors``, whose error rows are dropped).
3. Start or join Ray and create K actors: ``num_gpus`` each when the cluster has
   GPUs, else CPU actors with ``cpus / K`` torch threads each. Actors are spread over
   nodes and restarted by Ray if their process dies (``max_restarts``).
4. Cut pending prompts into batches and keep every actor fed (two batches in flight
   each) with ``ray.wait``; an actor that dies loses only its in-flight batches,
   which go back to the queue up to ``max_attempts`` times, then become error rows.
5. Update run.json (status, counts) at the end; progress goes to a callback.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import pyarrow as pa

from circuitray.errors import CircuitrayError, RunDirError
from circuitray.graph.attribute import AttributionConfig
from circuitray.graph.flatten import PruneConfig
from circuitray.models.loading import ModelSpec, check_model_available
from circuitray.prompts.files import file_sha256, read_prompts
from circuitray.schema import EDGE_SCHEMA, GRAPH_SCHEMA, NODE_SCHEMA, graph_row
from circuitray.storage.run_store import RunStore

logger = logging.getLogger(__name__)

__all__ = ["RunConfig", "RunResult", "run"]

# Parameters that must match for a resume to continue the same run. Attribution
# arguments that change speed or memory but not results may differ between sessions.
FINGERPRINT_KEYS = ("prompts_sha256", "model", "attribution", "prune")
RESULT_NEUTRAL_ATTRIBUTION = ("batch_size", "offload", "update_interval", "max_tokens")
# Environment the actors need to see what the driver sees: model homes, hub and
# object-store credentials and endpoints.
FORWARDED_ENV = (
    "CIRCUITRAY_HOME",
    "CIRCUIT_TRACER_CACHE_DIR",
    "HF_HOME",
    "HF_TOKEN",
    "HF_HUB_OFFLINE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "GOOGLE_APPLICATION_CREDENTIALS",
)
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
class RunConfig:
    """Everything a run needs; all of it except placement is recorded in run.json.

    Attributes:
        prompts: Prompt file (Parquet, JSONL or CSV; see :mod:`circuitray.prompts.files`).
        out: Run folder.
        model: Model and transcoders to load.
        attribution: circuit-tracer ``attribute()`` arguments.
        prune: Node and edge thresholds.
        actors: Number of AttributionWorker actors; None: one per GPU, or one per CPU
            core when the cluster has no GPUs.
        address: Ray address to join (``auto``, ``ray://...``); None starts a local Ray.
        batch_size: Prompts per task, and per part file.
        gpus_per_actor: GPUs each actor reserves when the cluster has GPUs.
        cpus_per_actor: CPUs each actor reserves (also its torch threads on CPU);
            None divides the cluster's CPUs among the actors.
        max_attempts: Tries per batch when actor processes die (also each actor's
            ``max_restarts``); a batch out of tries becomes error rows.
        retry_errors: Recompute prompts whose rows have ``status='error'``.
        restart_timeout_s: How long to wait for dead actors to come back when none
            is alive (e.g. their node is gone and no other fits) before giving up.
        compact: Merge part files into large sorted ones at the end of the run.
    """

    prompts: str
    out: str
    model: ModelSpec = field(default_factory=ModelSpec)
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    actors: int | None = None
    address: str | None = None
    batch_size: int = 8
    gpus_per_actor: float = 1.0
    cpus_per_actor: float | None = None
    max_attempts: int = 3
    retry_errors: bool = False
    restart_timeout_s: float = 600.0
    compact: bool = True


@dataclass
class RunResult:
    """What a run did: counts over the whole run folder and this session's timings."""

    run_dir: str
    total: int
    ok: int
    errors: int
    computed: int
    skipped: int
    elapsed_s: float
    ray_start_s: float
    retried_batches: int = 0
    workers: list[dict] = field(default_factory=list)


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _run_meta(config: RunConfig, n_prompts: int) -> dict:
    return {
        "format": "circuitray-run/1",
        "prompts": str(Path(config.prompts).resolve()),
        "prompts_sha256": file_sha256(config.prompts),
        "n_prompts": n_prompts,
        "model": {**asdict(config.model), **config.model.resolved()},
        "attribution": asdict(config.attribution),
        "prune": asdict(config.prune),
        "graph_id": "row index of the prompt in the prompt file (0-based)",
        "versions": _versions(),
        "python": platform.python_version(),
    }


def _check_resumable(store: RunStore, meta: dict) -> None:
    old = store.read_meta()

    def comparable(m: dict, key: str):
        v = m.get(key)
        if key == "attribution" and isinstance(v, dict):
            return {k: x for k, x in v.items() if k not in RESULT_NEUTRAL_ATTRIBUTION}
        return v

    for key in FINGERPRINT_KEYS:
        if comparable(old, key) != comparable(meta, key):
            raise RunDirError(
                f"{store.root}: holds a run with a different {key!r}; "
                "use a new --out folder or the same parameters to resume"
            )


def forwarded_env() -> dict[str, str]:
    """The variables of FORWARDED_ENV set here, for the actors' runtime_env."""
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def _init_ray(config: RunConfig):
    import ray

    if ray.is_initialized():
        return ray
    env = forwarded_env()
    kwargs: dict = {
        "include_dashboard": False,
        "log_to_driver": os.environ.get("CIRCUITRAY_RAY_LOGS") == "1",
        "runtime_env": {"env_vars": env} if env else None,
    }
    if config.address:
        ray.init(address=config.address, **kwargs)
    else:
        # Logical CPUs are scheduling slots, not cores: leave room for every actor
        # (and Ray's own tasks) even when there are more actors than cores.
        ncpu = os.cpu_count() or 1
        # address="local": always a new local Ray, never a stray cluster left on this machine.
        ray.init(address="local", num_cpus=max(ncpu, (config.actors or 1) + 1), **kwargs)
    return ray


def _placement(config: RunConfig, resources: dict) -> tuple[int, dict, int | None]:
    """(number of actors, ray.remote options, torch threads per actor)."""
    gpus = resources.get("GPU", 0)
    cpus = resources.get("CPU", os.cpu_count() or 1)
    if gpus > 0:
        n = config.actors or max(1, int(gpus / config.gpus_per_actor))
        opts = {"num_gpus": config.gpus_per_actor, "num_cpus": config.cpus_per_actor or 1}
        return n, opts, None
    cores = os.cpu_count() or 1
    n = config.actors or cores
    # A logical CPU is a scheduling slot: ask for at most an even share so K actors
    # always fit; torch threads follow the physical cores each actor may use.
    slots = config.cpus_per_actor or min(1.0, cpus / n)
    threads = int(config.cpus_per_actor or max(1, cores // n))
    return n, {"num_cpus": slots}, threads


def _batches(items: list[tuple[int, dict]], size: int, session: str):
    for i in range(0, len(items), size):
        chunk = items[i : i + size]
        name = f"part-{chunk[0][0]:07d}-{chunk[-1][0]:07d}-{session}"
        yield name, chunk


def _error_part(store: RunStore, name: str, chunk: list[tuple[int, dict]], error: str):
    rows = [graph_row(gid, p, status="error", error=error[:2000]) for gid, p in chunk]
    store.write_part(
        name,
        {
            "graphs": pa.Table.from_pylist(rows, schema=GRAPH_SCHEMA),
            "nodes": NODE_SCHEMA.empty_table(),
            "edges": EDGE_SCHEMA.empty_table(),
        },
    )
    return [{"graph_id": gid, "status": "error", "error": error} for gid, _ in chunk]


def run(
    config: RunConfig,
    *,
    on_progress: Callable[[int, int, dict | None], None] | None = None,
) -> RunResult:
    """Attribute every prompt of ``config.prompts`` into ``config.out`` (see module doc).

    ``on_progress(done, total, summary)`` is called once before work starts (summary
    None) and after each prompt. Raises :class:`CircuitrayError` for bad input.
    """
    start = time.perf_counter()
    table = read_prompts(config.prompts)
    check_model_available(config.model)
    store = RunStore(config.out)
    store.check_kind()
    store.acquire_lock()
    try:
        meta = _run_meta(config, table.num_rows)
        if store.exists():
            _check_resumable(store, meta)
            store.clean()
            if config.retry_errors:
                dropped = store.drop_error_rows()
                logger.info("retrying %d prompts that had errors", len(dropped))
        store.start_session(meta)

        done = store.graph_status()
        prompts = table.to_pylist()
        items = [(gid, p) for gid, p in enumerate(prompts) if gid not in done]
        total = table.num_rows
        n_done = total - len(items)
        if on_progress:
            on_progress(n_done, total, None)
        result = RunResult(
            run_dir=str(store.root),
            total=total,
            ok=0,
            errors=0,
            computed=0,
            skipped=n_done,
            elapsed_s=0.0,
            ray_start_s=0.0,
        )
        if items:
            from circuitray.jobs.workers import AttributionWorker

            dispatch(
                config,
                store,
                items,
                result=result,
                n_done=n_done,
                total=total,
                on_progress=on_progress,
                worker_cls=AttributionWorker,
                worker_kwargs={
                    "model": config.model,
                    "attribution": config.attribution,
                    "prune": config.prune,
                    "run_dir": store.uri,
                    "session": meta["session"],
                },
                error_part=_error_part,
            )

        if config.compact and result.computed:
            store.compact()
        status = store.graph_status()
        result.ok = sum(1 for s in status.values() if s == "ok")
        result.errors = sum(1 for s in status.values() if s == "error")
        result.elapsed_s = time.perf_counter() - start
        meta.update(
            status="complete" if len(status) == total else "incomplete",
            finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            counts={"total": total, "ok": result.ok, "error": result.errors},
        )
        store.write_meta(meta)
        return result
    finally:
        store.release_lock()


def dispatch(
    config,
    store: RunStore,
    items: list[tuple[int, dict]],
    *,
    result,
    n_done: int,
    total: int,
    on_progress: Callable[[int, int, dict | None], None] | None,
    worker_cls: type,
    worker_kwargs: dict,
    error_part: Callable[[RunStore, str, list, str], list[dict]],
) -> None:
    """Steps 3-4 of the module docstring for any worker class with ``info()`` and
    ``process(part_name, items) -> summaries`` (attribution and intervention actors).

    ``config`` gives placement and fault tolerance (``actors``, ``address``,
    ``batch_size``, ``gpus_per_actor``, ``cpus_per_actor``, ``max_attempts``,
    ``restart_timeout_s``); ``error_part`` writes a batch that ran out of tries as
    error rows and returns their summaries.
    """
    session = worker_kwargs["session"]
    t0 = time.perf_counter()
    ray = _init_ray(config)
    from ray.exceptions import RayActorError, RayTaskError

    n_actors, opts, threads = _placement(config, ray.cluster_resources())
    n_actors = min(n_actors, max(1, -(-len(items) // config.batch_size)))
    remote_cls = ray.remote(max_restarts=config.max_attempts, max_task_retries=0, **opts)(
        worker_cls
    ).options(scheduling_strategy="SPREAD")
    actors = [remote_cls.remote(**worker_kwargs, torch_threads=threads) for _ in range(n_actors)]
    try:
        result.workers = ray.get([a.info.remote() for a in actors])
    except RayTaskError as e:
        cause = e.cause if isinstance(getattr(e, "cause", None), CircuitrayError) else None
        for a in actors:
            ray.kill(a)  # type: ignore[arg-type]
        if cause is not None:
            raise cause from None
        raise
    result.ray_start_s = time.perf_counter() - t0
    logger.info("%d workers ready in %.1fs: %s", n_actors, result.ray_start_s, result.workers)

    queue = deque(_batches(items, config.batch_size, session))
    attempts: dict[str, int] = {}
    # ref -> ("batch", actor, part name, chunk) or ("probe", actor, None, None)
    inflight: dict = {}
    load = [0] * n_actors
    healthy = [True] * n_actors
    per_actor = 2  # one running, one queued: no idle gap between batches
    all_down_since: float | None = None

    def feed() -> None:
        """Give queued batches to live actors with spare capacity, least loaded first."""
        while queue:
            free = [i for i in range(n_actors) if healthy[i] and load[i] < per_actor]
            if not free:
                return
            i = min(free, key=lambda j: load[j])
            name, chunk = queue.popleft()
            inflight[actors[i].process.remote(name, chunk)] = ("batch", i, name, chunk)
            load[i] += 1

    def report(summaries: list[dict]) -> None:
        nonlocal n_done
        for s in summaries:
            n_done += 1
            result.computed += 1
            if on_progress:
                on_progress(n_done, total, s)

    def retry_or_fail(name: str, chunk: list, msg: str) -> None:
        attempts[name] = attempts.get(name, 0) + 1
        if attempts[name] < config.max_attempts:
            logger.warning("batch %s failed (attempt %d), retrying: %s", name, attempts[name], msg)
            result.retried_batches += 1
            queue.appendleft((name, chunk))
        else:
            report(error_part(store, name, chunk, f"worker failed: {msg}"))

    feed()
    while any(kind == "batch" for kind, *_ in inflight.values()) or queue:
        if not inflight:  # every actor is gone for good
            while queue:
                name, chunk = queue.popleft()
                report(error_part(store, name, chunk, "worker failed: no live workers left"))
            break
        ready, _ = ray.wait(list(inflight), num_returns=1, timeout=10.0)
        if not any(healthy):
            all_down_since = all_down_since or time.monotonic()
            if time.monotonic() - all_down_since > config.restart_timeout_s:
                logger.error("no worker came back within %ss", config.restart_timeout_s)
                for kind, _, name, chunk in inflight.values():
                    if kind == "batch":
                        queue.append((name, chunk))
                inflight.clear()
                continue
        else:
            all_down_since = None
        if not ready:
            continue
        ref = ready[0]
        kind, i, name, chunk = inflight.pop(ref)
        if kind == "probe":
            # Resolves once Ray has restarted the actor (and it reloaded its model).
            try:
                ray.get(ref)
                healthy[i] = True
                logger.info("worker %d is back", i)
            except (RayActorError, RayTaskError) as e:
                logger.warning("worker %d is gone for good: %s", i, _first_line(e))
            feed()
            continue
        load[i] -= 1
        try:
            report(ray.get(ref))
        except RayActorError as e:
            # The process died (killed, out of memory, node lost); Ray restarts it up to
            # max_restarts times. Stop feeding it until a probe says it is back.
            if healthy[i]:
                healthy[i] = False
                inflight[actors[i].info.remote()] = ("probe", i, None, None)
            retry_or_fail(name, chunk, _first_line(e))
        except RayTaskError as e:
            retry_or_fail(name, chunk, _first_line(e))
        feed()
    for a in actors:
        ray.kill(a)  # type: ignore[arg-type]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
