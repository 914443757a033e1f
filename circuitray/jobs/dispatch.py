"""Dispatching a job's prompts to Ray actors: placement, batches, retries, restarts.

1. Start or join Ray (:func:`init_ray`, through :mod:`circuitray.cluster`, which
   forwards the model-home, hub and object-store variables to the actors).
2. Create K actors (:func:`actor_options`): ``num_gpus`` each when the cluster has
   GPUs, else CPU actors with ``cpus / K`` torch threads each. Actors no node can hold
   are refused at once on the local Ray (:func:`check_fits`), not waited for, and any
   that are not started within ``start_timeout_s`` fail the job in one line. Actors
   are spread over nodes and restarted by Ray if their process dies (``max_restarts``).
3. Cut pending items into batches (one part file each), each only when it is sent,
   and keep every actor fed (two batches in flight each) with ``ray.wait``.
4. An actor that dies loses only its in-flight batches, which go back to the queue up
   to ``max_attempts`` times, then become error rows; when no actor is alive for
   ``restart_timeout_s`` the remaining batches become error rows too.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from circuitray.cluster import connect, started_local_ray
from circuitray.errors import CircuitrayError

if TYPE_CHECKING:
    from circuitray.jobs.session import JobResult

logger = logging.getLogger(__name__)

__all__ = ["Placement", "Progress", "dispatch", "init_ray"]

Progress = Callable[[int, int, "dict | None"], None]
"""``on_progress(done, total, summary)``: once before work starts (summary None), then
after each prompt with its summary (graph_id, status, ...)."""


@dataclass(kw_only=True)
class Placement:
    """Where a job's actors run and how failures are retried (:class:`RunConfig` and
    :class:`InterventionConfig` extend it, so these fields are theirs too).

    Attributes:
        actors: Number of worker actors; None: one per GPU, or one per CPU core when
            the cluster has no GPUs.
        address: Ray address to join (``auto``, ``ray://...``); None joins
            ``$RAY_ADDRESS`` when it is set (as ``ray.init`` does, and as the
            entrypoint of a ``ray job submit`` finds it), else starts a local Ray.
        batch_size: Prompts per task, and per part file.
        gpus_per_actor: GPUs each actor reserves when the cluster has GPUs.
        cpus_per_actor: CPUs each actor reserves (also its torch threads on CPU);
            None divides the cluster's CPUs among the actors.
        max_attempts: Tries per batch when actor processes die (also each actor's
            ``max_restarts``); a batch out of tries becomes error rows.
        restart_timeout_s: How long to wait for dead actors to come back when none
            is alive (e.g. their node is gone and no other fits) before giving up.
        start_timeout_s: How long to wait for every actor to be placed and to load
            its model (a first load may download it) before failing with what was
            asked and what the cluster has; a joined cluster may take minutes to add
            a node.
    """

    actors: int | None = None
    address: str | None = None
    batch_size: int = 8
    gpus_per_actor: float = 1.0
    cpus_per_actor: float | None = None
    max_attempts: int = 3
    restart_timeout_s: float = 600.0
    start_timeout_s: float = 1800.0

    def __post_init__(self) -> None:
        checks = (
            ("actors", self.actors is None or self.actors >= 1, "at least 1"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("gpus_per_actor", self.gpus_per_actor > 0, "more than 0"),
            (
                "cpus_per_actor",
                self.cpus_per_actor is None or self.cpus_per_actor > 0,
                "more than 0",
            ),
            ("max_attempts", self.max_attempts >= 1, "at least 1"),
            ("restart_timeout_s", self.restart_timeout_s > 0, "more than 0"),
            ("start_timeout_s", self.start_timeout_s > 0, "more than 0"),
        )
        for name, ok, need in checks:
            if not ok:
                value = getattr(self, name)
                raise CircuitrayError(f"--{name.replace('_', '-')} {value}: must be {need}")


def init_ray(placement: Placement):
    """Connect to the Ray ``placement`` names, or start a local one with a logical CPU
    for every actor and one more (:func:`circuitray.cluster.connect`); the ray module."""
    import ray

    # Logical CPUs are scheduling slots, not cores: leave room for every actor (and
    # Ray's own tasks) even when there are more actors than cores.
    connect(placement.address, local_cpus=max(os.cpu_count() or 1, (placement.actors or 1) + 1))
    return ray


def actor_options(placement: Placement, resources: dict) -> tuple[int, dict, int | None]:
    """(number of actors, ray.remote options, torch threads per actor)."""
    gpus = resources.get("GPU", 0)
    cpus = resources.get("CPU", os.cpu_count() or 1)
    if gpus > 0:
        n = placement.actors or max(1, int(gpus / placement.gpus_per_actor))
        opts = {"num_gpus": placement.gpus_per_actor, "num_cpus": placement.cpus_per_actor or 1}
        return n, opts, None
    cores = os.cpu_count() or 1
    n = placement.actors or cores
    # A logical CPU is a scheduling slot: ask for at most an even share so K actors
    # always fit; torch threads follow the physical cores each actor may use.
    slots = placement.cpus_per_actor or min(1.0, cpus / n)
    threads = int(placement.cpus_per_actor or max(1, cores // n))
    return n, {"num_cpus": slots}, threads


def check_fits(
    placement: Placement, opts: dict, nodes: list[dict], *, n_actors: int, local: bool | None = None
) -> None:
    """Refuse actors that no node of the cluster can hold, instead of waiting forever
    for Ray to schedule them. ``nodes``: ``ray.nodes()``. A joined cluster may grow
    (autoscaling), so there it is a warning (and ``start_timeout_s`` bounds the wait);
    the local Ray this process started cannot, so there it is an error. ``local``:
    whether the Ray is one :func:`init_ray` started (default: no address given)."""
    local = placement.address is None if local is None else local
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
    for key, resource, flag in (
        ("num_cpus", "CPU", "--cpus-per-actor"),
        ("num_gpus", "GPU", "--gpus-per-actor"),
    ):
        want = float(opts.get(key) or 0)
        largest = max((float(r.get(resource, 0)) for r in alive), default=0.0)
        if want > largest:
            msg = (
                f"{flag} {want:g}: no node of the Ray cluster has {want:g} {resource}s "
                f"(the largest has {largest:g}, {len(alive)} node(s))"
            )
            if local:
                raise CircuitrayError(msg)
            logger.warning("%s; waiting for the cluster to add one", msg)
        total = sum(float(r.get(resource, 0)) for r in alive)
        if local and want * n_actors > total + 1e-9:
            raise CircuitrayError(
                f"--actors {n_actors} x {flag} {want:g} = {want * n_actors:g} {resource}s: "
                f"the local Ray has {total:g}"
            )


class _BatchQueue:
    """The batches still to send: retried ones first, then fresh ones, each cut from
    ``items`` only when it is taken. ``items`` may make its rows on slicing
    (:class:`circuitray.jobs.session.PromptItems`), so the driver holds the rows of the
    batches in flight, not of every pending prompt."""

    def __init__(self, items: Sequence[tuple[int, dict]], size: int, session: str):
        self.items, self.size, self.session = items, size, session
        self.cut = 0  # items[:cut] are in batches already
        self.again: deque[tuple[str, list[tuple[int, dict]]]] = deque()

    def __bool__(self) -> bool:
        return bool(self.again) or self.cut < len(self.items)

    def popleft(self) -> tuple[str, list[tuple[int, dict]]]:
        if self.again:
            return self.again.popleft()
        chunk = list(self.items[self.cut : self.cut + self.size])
        self.cut += self.size
        return f"part-{chunk[0][0]:07d}-{chunk[-1][0]:07d}-{self.session}", chunk

    def appendleft(self, batch: tuple[str, list[tuple[int, dict]]]) -> None:
        self.again.appendleft(batch)

    def append(self, batch: tuple[str, list[tuple[int, dict]]]) -> None:
        self.again.append(batch)


def dispatch(
    placement: Placement,
    items: Sequence[tuple[int, dict]],
    *,
    session: str,
    result: JobResult,
    n_done: int,
    total: int,
    on_progress: Progress | None,
    worker_cls: type,
    worker_kwargs: dict,
    on_failed: Callable[[str, list[tuple[int, dict]], str], list[dict]],
    check: Callable[[], None] | None = None,
) -> None:
    """Steps 1-4 of the module docstring for any worker class with ``info()`` and
    ``process(part_name, items) -> summaries`` (attribution and intervention actors).

    Actors get ``worker_kwargs`` plus ``session`` and their ``torch_threads``;
    ``on_failed(part name, items, message)`` writes a batch that ran out of tries as
    error rows and returns their summaries; ``result`` gets the workers' info, Ray's
    start time, the time from then to the last batch back, and the computed and
    retried counts. ``items`` is sliced one batch at a time, when the batch is sent.
    ``check()``, called at least every 10 s, stops the dispatch by raising (a driver
    that lost its lease).
    """
    t0 = time.perf_counter()
    ray = init_ray(placement)
    from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

    n_actors, opts, threads = actor_options(placement, ray.cluster_resources())
    n_actors = min(n_actors, max(1, -(-len(items) // placement.batch_size)))
    check_fits(placement, opts, ray.nodes(), n_actors=n_actors, local=started_local_ray())
    remote_cls = ray.remote(max_restarts=placement.max_attempts, max_task_retries=0, **opts)(
        worker_cls
    ).options(scheduling_strategy="SPREAD")
    actors = [
        remote_cls.remote(**worker_kwargs, session=session, torch_threads=threads)
        for _ in range(n_actors)
    ]
    try:
        try:
            result.workers = _wait_started(ray, placement, actors, opts, check=check)
        except RayTaskError as e:
            cause = e.cause if isinstance(getattr(e, "cause", None), CircuitrayError) else None
            if cause is not None:
                raise cause from None
            raise
        result.ray_start_s = time.perf_counter() - t0
        logger.info("%d workers ready in %.1fs: %s", n_actors, result.ray_start_s, result.workers)

        t_ready = time.perf_counter()
        queue = _BatchQueue(items, placement.batch_size, session)
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
            if attempts[name] < placement.max_attempts:
                logger.warning(
                    "batch %s failed (attempt %d), retrying: %s", name, attempts[name], msg
                )
                result.retried_batches += 1
                queue.appendleft((name, chunk))
            else:
                report(on_failed(name, chunk, f"worker failed: {msg}"))

        feed()
        while any(kind == "batch" for kind, *_ in inflight.values()) or queue:
            if not inflight:  # every actor is gone for good
                while queue:
                    name, chunk = queue.popleft()
                    report(on_failed(name, chunk, "worker failed: no live workers left"))
                break
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=10.0)
            if check is not None:
                check()
            if not any(healthy):
                all_down_since = all_down_since or time.monotonic()
                if time.monotonic() - all_down_since > placement.restart_timeout_s:
                    logger.error("no worker came back within %ss", placement.restart_timeout_s)
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
                except ActorUnavailableError:
                    # Still restarting (the probe reached it mid-restart): ask again. The
                    # restart_timeout_s check above bounds the wait when none comes back.
                    time.sleep(0.2)
                    inflight[actors[i].info.remote()] = ("probe", i, None, None)
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
        result.dispatch_s = time.perf_counter() - t_ready
    finally:  # also when starting fails or check() stops the run: no actor is left running
        for a in actors:
            ray.kill(a)  # type: ignore[arg-type]


def _wait_started(ray, placement: Placement, actors: list, opts: dict, *, check=None) -> list:
    """Every actor's ``info()`` once it is placed and has loaded its model; fails after
    ``placement.start_timeout_s`` naming what was asked and what the cluster has."""
    from ray.exceptions import ActorUnavailableError, RayActorError

    refs = [a.info.remote() for a in actors]
    infos: dict[int, dict] = {}
    deadline = time.monotonic() + placement.start_timeout_s
    while True:
        pending = [refs[i] for i in range(len(refs)) if i not in infos]
        if not pending:
            return [infos[i] for i in range(len(refs))]
        ready, _ = ray.wait(pending, num_returns=len(pending), timeout=10.0)
        for ref in ready:
            i = refs.index(ref)
            try:
                infos[i] = ray.get(ref)  # a failed start (model load error) raises now
            except ActorUnavailableError:  # restarting (its process died): ask again
                time.sleep(0.2)
                refs[i] = actors[i].info.remote()
            except RayActorError as e:
                raise CircuitrayError(f"actor {i} died while starting: {_first_line(e)}") from None
        if check is not None:
            check()
        if time.monotonic() > deadline:
            have = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
            free = {k: v for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
            asked = ", ".join(f"{k}={v:g}" for k, v in opts.items() if v)
            raise CircuitrayError(
                f"{len(refs) - len(infos)} of {len(refs)} actors ({asked} each) not started within "
                f"{placement.start_timeout_s:g}s (--start-timeout-s): the Ray cluster has "
                f"{have or 'no CPUs or GPUs'}, {free or 'nothing'} free"
            )
        logger.info("%d of %d actors started; waiting for the rest", len(infos), len(refs))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
