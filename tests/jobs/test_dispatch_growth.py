"""What the driver holds while it dispatches a large job (issue 19, part 5).

Dispatch ran on an in-process stand-in for Ray (remote calls run when their result is
fetched), so these tests count what the driver materialised, without a cluster.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from circuitray.jobs import dispatch as dispatch_module
from circuitray.jobs.dispatch import Placement, dispatch
from circuitray.jobs.session import JobResult, PromptItems, pending_prompts


class _Ref:
    ids = itertools.count()

    def __init__(self, thunk):
        self.thunk = thunk
        self.id = next(self.ids)

    def __hash__(self) -> int:
        return self.id


class _Method:
    def __init__(self, bound):
        self.bound = bound

    def remote(self, *args):
        return _Ref(lambda: self.bound(*args))


class _Handle:
    def __init__(self, obj):
        self.obj = obj

    def __getattr__(self, name):
        return _Method(getattr(self.obj, name))


class _RemoteClass:
    def __init__(self, cls):
        self.cls = cls

    def options(self, **_):
        return self

    def remote(self, **kwargs):
        return _Handle(self.cls(**kwargs))


class FakeRay:
    """ray's calls that dispatch makes, run in this process."""

    def cluster_resources(self):
        return {"CPU": 2.0}

    available_resources = cluster_resources

    def nodes(self):
        return [{"Alive": True, "Resources": {"CPU": 2.0}}]

    def remote(self, **_):
        return _RemoteClass

    def wait(self, refs, num_returns=1, timeout=None):
        return list(refs)[:num_returns], list(refs)[num_returns:]

    def get(self, ref):
        return ref.thunk()

    def kill(self, actor):
        pass


class CountingItems(Sequence):
    """n (graph_id, prompt) items that count the rows made into dicts."""

    def __init__(self, n: int):
        self.n = n
        self.made = 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index):
        if isinstance(index, slice):
            rows = [(g, {"prompt": f"p{g}"}) for g in range(*index.indices(self.n))]
            self.made += len(rows)
            return rows
        return (index, {"prompt": f"p{index}"})


def test_dispatch_makes_each_batch_when_it_sends_it(monkeypatch):
    """The queue was every batch cut up front: every pending prompt a dict in the
    driver before the first batch ran (1.2 GB at 10^6 prompts with the prompt rows)."""
    items = CountingItems(1000)
    ahead: list[int] = []
    processed = [0]

    class Worker:
        def __init__(self, **_):
            pass

        def info(self):
            return {"worker": "fake"}

        def process(self, part_name, chunk):
            ahead.append(items.made - processed[0])  # made but not yet processed
            processed[0] += len(chunk)
            return [{"graph_id": g, "status": "ok"} for g, _ in chunk]

    monkeypatch.setattr(dispatch_module, "init_ray", lambda placement: FakeRay())
    result = JobResult(run_dir="unused")
    seen: list[int] = []
    dispatch(
        Placement(actors=2, batch_size=10),
        items,
        session="0123456789ab",
        result=result,
        n_done=0,
        total=1000,
        on_progress=lambda done, total, s: seen.append(s["graph_id"]),
        worker_cls=Worker,
        worker_kwargs={},
        on_failed=lambda name, chunk, msg: [],
    )
    assert sorted(seen) == list(range(1000)) and result.computed == 1000
    # Two actors with two batches in flight each, and the one being taken.
    assert max(ahead) <= (2 * 2 + 1) * 10, max(ahead)


def test_pending_prompts_are_rows_of_the_table_made_on_slicing():
    table = pa.table({"prompt_id": [f"p{i}" for i in range(10)], "prompt": ["x"] * 10})
    items = pending_prompts(table, np.array([0, 3, 4, 99]))
    assert isinstance(items, PromptItems) and len(items) == 7
    assert items[0:2] == [
        (1, {"prompt_id": "p1", "prompt": "x"}),
        (2, {"prompt_id": "p2", "prompt": "x"}),
    ]
    assert [g for g, _ in items] == [1, 2, 5, 6, 7, 8, 9]
    assert items[-1] == (9, {"prompt_id": "p9", "prompt": "x"})
    assert list(pending_prompts(table, {1: "ok", 2: "error"}))[0][0] == 0  # a status dict
