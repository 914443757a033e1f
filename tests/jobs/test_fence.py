"""A worker of a killed driver that writes while the next driver resumes (issue 17,
finding 1): its rows never become visible, whatever the timing, and a resume proves
that every ok graph it counts as done has its nodes and edges.

The driver runs in this process on a real local Ray, with real workers. The stale
worker's late writes are made through the worker's own write path
(``RunStore._put_parquet``, the step ``write_part`` does per table) at the exact
instants that the red-team pass found: after the new driver started its session,
after its clean-up, and after the resumed run finished."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from circuitray import ModelSpec, RunConfig, RunStore, generate_ws2, run, write_prompts

# A part a worker wrote for a driver session (the protocol's naming).
SESSION_PART = re.compile(r"part-\d+-\d+-[0-9a-f]{12}")


@pytest.fixture(scope="module")
def uncompacted(circuitray_home, tmp_path_factory) -> tuple[RunConfig, Path]:
    root = tmp_path_factory.mktemp("fence")
    prompts = write_prompts(generate_ws2(n=8, seed=41), root / "p.parquet")
    config = RunConfig(
        prompts=str(prompts),
        out=str(root / "base"),
        model=ModelSpec(model="tiny"),
        actors=2,
        batch_size=2,
        compact=False,
    )
    result = run(config)
    assert (result.ok, result.errors) == (8, 0)
    return config, root / "base"


def _assert_exactly_once_and_whole(out: Path, n: int) -> None:
    store = RunStore(out)
    graphs = store.read_graphs().to_pylist()
    counts = Counter(r["prompt_id"] for r in graphs)
    assert len(counts) == n and set(counts.values()) == {1}, counts
    assert store.unreadable_parts() == {}
    nodes = Counter(store.read_table("nodes", ["graph_id"])["graph_id"].to_pylist())
    edges = Counter(store.read_table("edges", ["graph_id"])["graph_id"].to_pylist())
    for r in graphs:
        assert r["status"] == "ok"
        assert nodes[r["graph_id"]] == r["n_kept_nodes"] > 0
        assert edges[r["graph_id"]] == r["n_kept_edges"] > 0


@pytest.mark.parametrize("when", ["after_start_session", "after_clean", "after_the_run"])
def test_a_stale_workers_late_commit_is_never_seen(uncompacted, tmp_path, monkeypatch, when):
    config, base = uncompacted
    out = tmp_path / "run"
    shutil.copytree(base, out)
    store = RunStore(out)
    # The killed driver's worker had written the edges of its batch, not yet the
    # nodes and graphs: the state a kill leaves between two writes of write_part.
    stale = next(p for p in store.committed_parts() if SESSION_PART.fullmatch(p))
    late = {t: pq.read_table(out / t / f"{stale}.parquet") for t in ("nodes", "graphs")}
    for t in ("nodes", "graphs"):
        (out / t / f"{stale}.parquet").unlink()

    def stale_worker_commits() -> None:
        writer = RunStore(out)  # the worker's own store object
        for t in ("nodes", "graphs"):
            writer._put_parquet(writer._path(t, f"{stale}.parquet"), late[t])

    hook = {"after_start_session": "start_session", "after_clean": "clean"}.get(when)
    if hook is not None:
        original = getattr(RunStore, hook)
        fired = []

        def then_the_stale_worker(self, *args, **kwargs):
            value = original(self, *args, **kwargs)
            if not fired:
                fired.append(hook)
                stale_worker_commits()
            return value

        monkeypatch.setattr(RunStore, hook, then_the_stale_worker)
    resumed = run(replace(config, out=str(out)))
    if hook is None:
        stale_worker_commits()
    else:
        assert fired == [hook]
    assert resumed.computed == 2 and resumed.skipped == 6
    _assert_exactly_once_and_whole(out, 8)
    again = run(replace(config, out=str(out), compact=True))
    assert again.computed == 0 and again.skipped == 8
    _assert_exactly_once_and_whole(out, 8)
    # The late files were removed as orphans; nothing of them is left.
    for t in ("edges", "nodes", "graphs"):
        assert not (out / t / f"{stale}.parquet").exists()


def test_resume_recomputes_a_part_whose_edges_are_gone(uncompacted, tmp_path):
    """A graphs part that counts edges its edges file does not hold (the second timing
    of finding 1) is not counted as done: its prompts are computed again."""
    config, base = uncompacted
    out = tmp_path / "run"
    shutil.copytree(base, out)
    store = RunStore(out)
    part = next(p for p in store.committed_parts() if SESSION_PART.fullmatch(p))
    edges = pq.read_table(out / "edges" / f"{part}.parquet")
    pq.write_table(edges.slice(0, 0), out / "edges" / f"{part}.parquet")
    resumed = run(replace(config, out=str(out)))
    assert resumed.computed == 2 and resumed.skipped == 6
    _assert_exactly_once_and_whole(out, 8)


def test_a_sealed_part_that_lost_rows_is_named(uncompacted, tmp_path):
    """Once sealed, a part is the run's record: damage to it is named in one line with
    the way out, not silently recomputed over."""
    config, base = uncompacted
    out = tmp_path / "run"
    shutil.copytree(base, out)
    assert run(replace(config, out=str(out))).computed == 0  # seals every part
    part = next(p for p in RunStore(out).committed_parts() if SESSION_PART.fullmatch(p))
    nodes = pq.read_table(out / "nodes" / f"{part}.parquet")
    pq.write_table(nodes.slice(1), out / "nodes" / f"{part}.parquet")
    from circuitray.errors import RunDirError

    with pytest.raises(RunDirError, match=f"nodes/{part}.parquet.*rows where its graphs"):
        run(replace(config, out=str(out)))
    RunStore(out).repair()
    resumed = run(replace(config, out=str(out)))
    assert resumed.computed == 2
    _assert_exactly_once_and_whole(out, 8)


def test_a_sealed_name_deleted_by_compaction_cannot_come_back(tmp_path):
    """A worker of a killed session that rewrites its part after the next driver
    sealed and then compacted it away: the name was unsealed before the delete, so
    the late copy stays invisible (no row twice next to the compacted file)."""
    import pyarrow as pa

    from circuitray.schema import EDGE_SCHEMA, GRAPH_SCHEMA, NODE_SCHEMA

    def part(gid: int) -> dict[str, pa.Table]:
        row = {f.name: None for f in GRAPH_SCHEMA}
        row.update(graph_id=gid, prompt_id=f"p{gid}", prompt="x", status="ok")
        row.update(n_kept_nodes=1, n_kept_edges=1)
        node = {"graph_id": gid, "node_id": 0, "node_type": "error", "layer": 0, "pos": 0}
        edge = {"graph_id": gid, "dst": 0, "src": 0, "weight": 1.0}
        return {
            "graphs": pa.Table.from_pylist([row], GRAPH_SCHEMA),
            "nodes": pa.Table.from_pylist([node], NODE_SCHEMA),
            "edges": pa.Table.from_pylist([edge], EDGE_SCHEMA),
        }

    store = RunStore(tmp_path / "run")
    store.acquire_lock()
    old = store.start_session({})
    stale = f"part-0000000-0000000-{old}"
    store.write_part(stale, part(0))
    new = store.start_session({})  # seals the old session's part
    store.write_part(f"part-0000001-0000001-{new}", part(1))
    store.compact()
    assert not (tmp_path / "run" / "graphs" / f"{stale}.parquet").exists()
    RunStore(tmp_path / "run").write_part(stale, part(0))  # the late worker
    ids = store.read_graphs(["graph_id"])["graph_id"].to_pylist()
    assert sorted(ids) == [0, 1]
    store.release_lock()
