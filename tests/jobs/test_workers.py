"""AttributionWorker in-process: parts written, and none after its session is replaced."""

from __future__ import annotations

import pytest

from circuitray import AttributionConfig, ModelSpec, PruneConfig, RunStore
from circuitray.jobs.workers import AttributionWorker, StaleSessionError

PROMPT = {"prompt_id": "p0", "prompt": "the word zorp means", "target": "sad"}


def _worker(out, session):
    return AttributionWorker(
        model=ModelSpec(model="tiny"),
        attribution=AttributionConfig(),
        prune=PruneConfig(),
        run_dir=str(out),
        session=session,
    )


def test_worker_writes_a_part_for_its_session(tmp_path):
    store = RunStore(tmp_path)
    store.acquire_lock()
    session = store.start_session({})
    name = f"part-0000000-0000000-{session}"
    summaries = _worker(tmp_path, session).process(name, [(0, PROMPT)])
    assert [s["status"] for s in summaries] == ["ok"]
    assert summaries[0]["worker"]
    assert store.committed_parts() == [name]
    store.release_lock()


def test_orphaned_worker_does_not_write(tmp_path):
    store = RunStore(tmp_path)
    store.acquire_lock()
    old = store.start_session({})
    store.start_session({})  # a new driver session fences the old one out
    with pytest.raises(StaleSessionError):
        _worker(tmp_path, old).process(f"part-0000000-0000000-{old}", [(0, PROMPT)])
    assert store.committed_parts() == []
    assert not list(tmp_path.rglob("*.parquet"))
    store.release_lock()
