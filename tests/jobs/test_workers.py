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
    store.write_meta({"session": "s1"})
    summaries = _worker(tmp_path, "s1").process("part-a", [(0, PROMPT)])
    assert [s["status"] for s in summaries] == ["ok"]
    assert summaries[0]["worker"]
    assert store.committed_parts() == ["part-a"]


def test_orphaned_worker_does_not_write(tmp_path):
    store = RunStore(tmp_path)
    store.write_meta({"session": "new-driver"})
    with pytest.raises(StaleSessionError):
        _worker(tmp_path, "old-driver").process("part-b", [(0, PROMPT)])
    assert store.committed_parts() == []
    assert not list(tmp_path.rglob("*.parquet"))
