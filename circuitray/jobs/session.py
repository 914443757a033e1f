"""The one skeleton of every job over a folder of parts (runs and interventions).

A :class:`Job` says what its folder holds and how to compute it; :meth:`Job.execute`
does the rest, the same way for every job:

1. Refuse a folder of another kind, then take its driver lock
   (:meth:`PartStore.acquire_lock`), which a second driver cannot get.
2. If the folder already holds a job: refuse it when its fingerprint
   (:meth:`Job.fingerprint`, the recorded parameters that decide results) differs.
   A folder with parts but no meta file is refused: nothing records what made them.
3. Start a session (:meth:`PartStore.start_session`): fence the folder (seal the whole
   parts of earlier sessions; a worker of an older session that writes later is never
   seen), then record the new session id in the meta file. Only then remove crash
   leftovers (:meth:`PartStore.clean`) and, with ``retry_errors``, drop the error rows
   so those prompts count as pending (:meth:`Job.drop_errors`).
4. Dispatch the pending items (:meth:`Job.pending`: not in any committed part) to the
   job's actors (:func:`circuitray.jobs.dispatch.dispatch`); a batch out of tries is
   written as error rows (:meth:`Job.error_tables`) under its part name. Jobs over a
   prompt table give their items as :func:`pending_prompts`, whose rows become dicts
   one batch at a time.
5. Compact if asked, count what the folder now holds (:meth:`Job.tally`), record
   status, finish time and counts in the meta file, and release the lock, also on
   errors and interrupts (status ``failed`` with the error's first line, or
   ``interrupted``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

import numpy as np
import pyarrow as pa

from circuitray.errors import RunDirError
from circuitray.jobs.dispatch import Placement, Progress, dispatch
from circuitray.storage.run_store import PartStore

logger = logging.getLogger(__name__)

__all__ = ["Job", "JobResult", "PromptItems", "pending_prompts"]


@dataclass
class JobResult:
    """What a job did: prompt counts over the whole folder and this session's timings.

    Attributes:
        run_dir: The job's folder.
        total: Prompts the job covers.
        ok: Prompts with only ok rows.
        errors: Prompts with an error row.
        computed: Prompts computed in this session.
        skipped: Prompts already done when this session started.
        elapsed_s: Wall time of this session.
        ray_start_s: Time until every actor had loaded its model.
        dispatch_s: Time from then until the last batch came back.
        retried_batches: Batches sent again after an actor died.
        workers: Each actor's ``info()`` (host, pid, device, threads).
    """

    run_dir: str
    total: int = 0
    ok: int = 0
    errors: int = 0
    computed: int = 0
    skipped: int = 0
    elapsed_s: float = 0.0
    ray_start_s: float = 0.0
    dispatch_s: float = 0.0
    retried_batches: int = 0
    workers: list[dict] = field(default_factory=list)


class PromptItems(Sequence[tuple[int, dict]]):
    """The (graph_id, prompt row) pairs of rows ``ids`` of a prompt table (graph_id =
    row index), whose rows become dicts only when sliced: dispatch cuts one batch at a
    time, so a million pending prompts are never a million dicts in the driver."""

    def __init__(self, table: pa.Table, ids: np.ndarray):
        self.table = table
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> tuple[int, dict]: ...
    @overload
    def __getitem__(self, index: slice) -> list[tuple[int, dict]]: ...
    def __getitem__(self, index: int | slice) -> tuple[int, dict] | list[tuple[int, dict]]:
        if isinstance(index, slice):
            ids = self.ids[index]
            rows = self.table.take(ids).to_pylist() if len(ids) else []
            return list(zip(ids.tolist(), rows, strict=True))
        gid = int(self.ids[index])
        return gid, self.table.slice(gid, 1).to_pylist()[0]

    def __iter__(self) -> Iterator[tuple[int, dict]]:
        for start in range(0, len(self), 4096):
            yield from self[start : start + 4096]


def pending_prompts(table: pa.Table, done: Iterable[int] | np.ndarray) -> PromptItems:
    """The prompts of ``table`` whose graph_id (row index) is not in ``done``, in order."""
    given = done if isinstance(done, np.ndarray) else np.fromiter(done, dtype=np.int64)
    done_ids = given.astype(np.int64, copy=False)
    todo = np.ones(table.num_rows, dtype=bool)
    todo[done_ids[(done_ids >= 0) & (done_ids < table.num_rows)]] = False
    return PromptItems(table, np.flatnonzero(todo))


class Job(ABC):
    """One job over ``store`` (see module docstring); subclasses fill in the steps.

    Attributes:
        holds: What the folder holds, for messages ("a run", "interventions").
    """

    holds: str = "a job"

    def __init__(
        self,
        store: PartStore,
        *,
        placement: Placement,
        retry_errors: bool = False,
        compact: bool = True,
    ):
        self.store = store
        self.placement = placement
        self.retry_errors = retry_errors
        self.compact = compact

    # -- what a job provides ------------------------------------------------------
    @abstractmethod
    def meta(self) -> dict:
        """The meta-file record of this job (called with the lock held)."""

    @abstractmethod
    def fingerprint(self, meta: dict) -> dict:
        """The entries of ``meta`` that must match for a resume to continue the job."""

    @abstractmethod
    def drop_errors(self) -> int:
        """Remove the rows of prompts that have errors; how many prompts."""

    @abstractmethod
    def pending(self) -> tuple[Sequence[tuple[int, dict]], int]:
        """(items not yet in a committed part, number of items the job covers); a job
        over a prompt table returns :func:`pending_prompts`."""

    @abstractmethod
    def worker(self) -> tuple[type, dict]:
        """The worker class and its keyword arguments (less ``session``, threads)."""

    @staticmethod
    @abstractmethod
    def error_tables(items: list[tuple[int, dict]], error: str) -> dict[str, pa.Table]:
        """A part's tables recording ``items`` as failed with ``error``."""

    @abstractmethod
    def tally(self, result: JobResult) -> tuple[bool, dict]:
        """Set ``result``'s ok and error counts from the folder; (complete, counts)."""

    def new_result(self) -> JobResult:
        return JobResult(run_dir=str(self.store.root))

    # -- the skeleton -------------------------------------------------------------
    def write_error_part(self, name: str, items: list[tuple[int, dict]], error: str) -> list:
        """Write ``items`` as error rows under part ``name``; their summaries."""
        self.store.write_part(name, self.error_tables(items, error[:2000]))
        return [{"graph_id": gid, "status": "error", "error": error} for gid, _ in items]

    def execute(
        self, *, on_progress: Progress | None = None, start: float | None = None
    ) -> JobResult:
        """Steps 1-5 of the module docstring; returns the counts. ``start``: the
        ``time.perf_counter()`` that ``elapsed_s`` counts from (default: now; the job
        functions pass the time before the job read its inputs)."""
        start = time.perf_counter() if start is None else start
        store = self.store
        store.check_kind()
        store.acquire_lock()
        try:
            meta = self.meta()
            if store.exists():
                old, new = self.fingerprint(store.read_meta()), self.fingerprint(meta)
                for key in new:
                    if old.get(key) != new[key]:
                        raise RunDirError(
                            f"{store.root}: holds {self.holds} with a different {key!r}; "
                            "use a new --out folder or the same parameters to resume"
                        )
            elif store.has_parts():
                # Parts whose parameters nothing records: adopting them would count
                # another job's rows as this one's.
                raise RunDirError(
                    f"{store.root}: holds parts but no {store.meta_file}, so nothing says "
                    "what made them; give a new --out folder"
                )
            # Fence first: a worker of an earlier driver that writes after this line
            # is never seen, so the clean-up and the count below are final.
            store.start_session(meta)
            try:
                store.clean()
                if self.retry_errors:
                    logger.info("retrying %d prompts that had errors", self.drop_errors())
                items, total = self.pending()
                result = self.new_result()
                result.total = total
                result.skipped = total - len(items)
                if on_progress:
                    on_progress(result.skipped, total, None)
                if items:
                    worker_cls, worker_kwargs = self.worker()
                    dispatch(
                        self.placement,
                        items,
                        session=meta["session"],
                        result=result,
                        n_done=result.skipped,
                        total=total,
                        on_progress=on_progress,
                        worker_cls=worker_cls,
                        worker_kwargs=worker_kwargs,
                        on_failed=self.write_error_part,
                        check=store.check_lease,
                    )
                if self.compact and result.computed:
                    store.compact()
                complete, counts = self.tally(result)
                result.elapsed_s = time.perf_counter() - start
                meta.update(
                    status="complete" if complete else "incomplete",
                    finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    counts=counts,
                )
                store.write_meta(meta)
                return result
            except BaseException as e:
                # Say in the meta file that this session stopped, not that it still runs.
                stopped = isinstance(e, KeyboardInterrupt)
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                meta.update(
                    status="interrupted" if stopped else "failed",
                    finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    error=None if stopped else first[:2000],
                )
                with contextlib.suppress(Exception):
                    store.write_meta(meta)
                raise
        finally:
            store.release_lock()
