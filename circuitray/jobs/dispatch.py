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
    whether the Ray is one this process started (:func:`circuitray.cluster.start_local_ray`;
    default: no address given)."""
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


@dataclass(frozen=True)
class _Batch:
    """In flight: a batch sent to actor ``actor``."""

    actor: int
    name: str
    items: list[tuple[int, dict]]


@dataclass(frozen=True)
class _Probe:
    """In flight: asking actor ``actor`` (its process died) whether Ray restarted it."""

    actor: int


class _Dispatcher:
    """Steps 3 and 4 of the module docstring over started actors, one rule a method.

    State: ``inflight`` (Ray ref -> :class:`_Batch` or :class:`_Probe`), each actor's
    ``load`` (batches in flight) and ``healthy`` flag (False from its death until a
    probe says it is back), each batch's failed ``attempts``, and since when no actor
    has been healthy (``all_down_since``).
    """

    PER_ACTOR = 2  # batches in flight per actor: one running, one queued, no idle gap

    def __init__(
        self,
        ray,
        actors: list,
        placement: Placement,
        queue: _BatchQueue,
        *,
        result: JobResult,
        n_done: int,
        total: int,
        on_progress: Progress | None,
        on_failed: Callable[[str, list[tuple[int, dict]], str], list[dict]],
        check: Callable[[], None] | None,
    ):
        self.ray, self.actors, self.placement, self.queue = ray, actors, placement, queue
        self.result, self.n_done, self.total = result, n_done, total
        self.on_progress, self.on_failed, self.check = on_progress, on_failed, check
        self.inflight: dict[object, _Batch | _Probe] = {}
        self.load = [0] * len(actors)
        self.healthy = [True] * len(actors)
        self.attempts: dict[str, int] = {}
        self.all_down_since: float | None = None

    def run(self) -> None:
        """Until every batch is back or written as error rows."""
        self.feed()
        while self.queue or any(isinstance(w, _Batch) for w in self.inflight.values()):
            if not self.inflight:  # every actor is gone for good
                self.fail_queued("worker failed: no live workers left")
                return
            ready, _ = self.ray.wait(list(self.inflight), num_returns=1, timeout=10.0)
            if self.check is not None:
                self.check()
            if self.waited_too_long_for_a_restart():
                self.requeue_inflight()
                continue
            if not ready:
                continue
            ref = ready[0]
            work = self.inflight.pop(ref)
            if isinstance(work, _Probe):
                self.probe_answered(ref, work)
            else:
                self.batch_answered(ref, work)
            self.feed()

    def feed(self) -> None:
        """Give queued batches to live actors with spare capacity, least loaded first."""
        while self.queue:
            free = [
                i
                for i in range(len(self.actors))
                if self.healthy[i] and self.load[i] < self.PER_ACTOR
            ]
            if not free:
                return
            i = min(free, key=lambda j: self.load[j])
            name, items = self.queue.popleft()
            self.inflight[self.actors[i].process.remote(name, items)] = _Batch(i, name, items)
            self.load[i] += 1

    def report(self, summaries: list[dict]) -> None:
        for s in summaries:
            self.n_done += 1
            self.result.computed += 1
            if self.on_progress:
                self.on_progress(self.n_done, self.total, s)

    def retry_or_fail(self, name: str, items: list[tuple[int, dict]], msg: str) -> None:
        """A failed batch goes back to the front of the queue, or, out of tries, is
        written as error rows."""
        self.attempts[name] = self.attempts.get(name, 0) + 1
        if self.attempts[name] < self.placement.max_attempts:
            logger.warning(
                "batch %s failed (attempt %d), retrying: %s", name, self.attempts[name], msg
            )
            self.result.retried_batches += 1
            self.queue.appendleft((name, items))
        else:
            self.report(self.on_failed(name, items, f"worker failed: {msg}"))

    def fail_queued(self, msg: str) -> None:
        while self.queue:
            name, items = self.queue.popleft()
            self.report(self.on_failed(name, items, msg))

    def waited_too_long_for_a_restart(self) -> bool:
        """Whether no actor has been healthy for ``restart_timeout_s``."""
        if any(self.healthy):
            self.all_down_since = None
            return False
        self.all_down_since = self.all_down_since or time.monotonic()
        if time.monotonic() - self.all_down_since <= self.placement.restart_timeout_s:
            return False
        logger.error("no worker came back within %ss", self.placement.restart_timeout_s)
        return True

    def requeue_inflight(self) -> None:
        """Give up on what is in flight: its batches back in the queue (then written as
        error rows, no actor being left)."""
        for work in self.inflight.values():
            if isinstance(work, _Batch):
                self.queue.append((work.name, work.items))
        self.inflight.clear()

    def probe_answered(self, ref, probe: _Probe) -> None:
        """A probe resolves once Ray has restarted the actor (and it reloaded its model)."""
        from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

        i = probe.actor
        try:
            self.ray.get(ref)
            self.healthy[i] = True
            logger.info("worker %d is back", i)
        except ActorUnavailableError:
            # Still restarting (the probe reached it mid-restart): ask again. The
            # restart_timeout_s check bounds the wait when none comes back.
            time.sleep(0.2)
            self.inflight[self.actors[i].info.remote()] = _Probe(i)
        except (RayActorError, RayTaskError) as e:
            logger.warning("worker %d is gone for good: %s", i, _first_line(e))

    def batch_answered(self, ref, batch: _Batch) -> None:
        from ray.exceptions import RayActorError, RayTaskError

        i = batch.actor
        self.load[i] -= 1
        try:
            self.report(self.ray.get(ref))
        except RayActorError as e:
            # The process died (killed, out of memory, node lost); Ray restarts it up to
            # max_restarts times. Stop feeding it until a probe says it is back.
            if self.healthy[i]:
                self.healthy[i] = False
                self.inflight[self.actors[i].info.remote()] = _Probe(i)
            self.retry_or_fail(batch.name, batch.items, _first_line(e))
        except RayTaskError as e:
            self.retry_or_fail(batch.name, batch.items, _first_line(e))


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
    from ray.exceptions import RayTaskError

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
        _Dispatcher(
            ray,
            actors,
            placement,
            _BatchQueue(items, placement.batch_size, session),
            result=result,
            n_done=n_done,
            total=total,
            on_progress=on_progress,
            on_failed=on_failed,
            check=check,
        ).run()
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
