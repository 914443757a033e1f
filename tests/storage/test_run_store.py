"""The run folder protocol: parts, orphans, clean, error rows, run.json and the lock."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from circuitray.errors import RunDirError
from circuitray.schema import EDGE_SCHEMA, GRAPH_SCHEMA, NODE_SCHEMA
from circuitray.storage.run_store import InterventionStore, RunStore


def _graphs(ids: list[int], status: list[str] | None = None) -> pa.Table:
    status = status or ["ok"] * len(ids)
    rows = []
    for gid, st in zip(ids, status, strict=True):
        row = {f.name: None for f in GRAPH_SCHEMA}
        row.update(
            graph_id=gid,
            prompt_id=f"p{gid}",
            prompt="not tall but",
            status=st,
            error="ValueError: boom" if st == "error" else None,
            # what _nodes and _edges write for an ok graph (the fence checks the counts)
            n_kept_nodes=3 if st == "ok" else None,
            n_kept_edges=1 if st == "ok" else None,
        )
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=GRAPH_SCHEMA)


def _nodes(ids: list[int], per_graph: int = 3) -> pa.Table:
    rows = [
        {"graph_id": gid, "node_id": i, "node_type": "error", "layer": 0, "pos": i}
        for gid in ids
        for i in range(per_graph)
    ]
    return pa.Table.from_pylist(rows, schema=NODE_SCHEMA)


def _edges(ids: list[int]) -> pa.Table:
    rows = [
        {"graph_id": g, "dst": 1, "src": 0, "weight": 0.5, "src_type": "error", "dst_type": "error"}
        for g in ids
    ]
    return pa.Table.from_pylist(rows, schema=EDGE_SCHEMA)


def _part(ids, status=None):
    ok_ids = [g for g, s in zip(ids, status or ["ok"] * len(ids), strict=True) if s == "ok"]
    return {"graphs": _graphs(ids, status), "nodes": _nodes(ok_ids), "edges": _edges(ok_ids)}


def _files(store: RunStore, table: str) -> list[str]:
    return sorted(p.name for p in store.table_dir(table).iterdir())


def test_write_part_writes_three_tables_without_leftovers(tmp_path):
    store = RunStore(tmp_path / "run")
    store.write_part("part-a", _part([0, 1]))
    for table in ("graphs", "nodes", "edges"):
        assert _files(store, table) == ["part-a.parquet"]
    assert store.committed_parts() == ["part-a"]
    assert store.read_graphs()["graph_id"].to_pylist() == [0, 1]
    assert pq.read_table(store.part_files("nodes")[0]).num_rows == 6


def test_rewriting_a_part_replaces_its_rows(tmp_path):
    store = RunStore(tmp_path / "run")
    store.write_part("part-a", _part([0, 1], ["ok", "error"]))
    store.write_part("part-a", _part([0, 1]))  # a retried batch reuses its name
    assert store.read_graphs().num_rows == 2
    assert store.graph_status() == {0: "ok", 1: "ok"}
    assert pq.read_table(store.part_files("nodes")[0]).num_rows == 6


def test_orphans_ignored_and_cleaned(tmp_path):
    store = RunStore(tmp_path / "run")
    store.write_part("part-a", _part([0, 1]))
    # A crash after edges and nodes but before the graphs part (the commit point).
    pq.write_table(_nodes([2]), store.table_dir("nodes") / "part-b.parquet")
    pq.write_table(_edges([2]), store.table_dir("edges") / "part-b.parquet")
    # A crash in the middle of writing a file leaves a hidden temporary.
    (store.table_dir("edges") / ".part-c.0123abcd.tmp").write_bytes(b"half a file")
    (store.table_dir("graphs") / ".part-c.0123abcd.tmp").write_bytes(b"half a file")

    assert store.committed_parts() == ["part-a"]
    for table in ("graphs", "nodes", "edges"):
        assert [p.rsplit("/", 1)[1] for p in store.part_files(table)] == ["part-a.parquet"]
    assert store.graph_status() == {0: "ok", 1: "ok"}

    assert store.clean() == 4
    for table in ("graphs", "nodes", "edges"):
        assert _files(store, table) == ["part-a.parquet"]
    assert store.clean() == 0
    assert store.read_graphs().num_rows == 2


def test_empty_run_folder(tmp_path):
    store = RunStore(tmp_path / "run")
    assert store.committed_parts() == []
    assert store.part_files("edges") == []
    g = store.read_graphs()
    assert g.num_rows == 0 and g.schema == GRAPH_SCHEMA
    assert store.read_graphs(columns=["graph_id", "status"]).column_names == ["graph_id", "status"]
    assert store.graph_status() == {}
    assert store.drop_error_rows() == []
    assert store.clean() == 0


def test_drop_error_rows(tmp_path):
    store = RunStore(tmp_path / "run")
    store.write_part("part-a", _part([0, 1, 2], ["ok", "error", "ok"]))
    store.write_part("part-b", _part([3, 4], ["error", "error"]))
    store.write_part("part-c", _part([5]))
    assert store.graph_status() == {0: "ok", 1: "error", 2: "ok", 3: "error", 4: "error", 5: "ok"}

    assert sorted(store.drop_error_rows()) == [1, 3, 4]
    assert store.graph_status() == {0: "ok", 2: "ok", 5: "ok"}
    # A part with only error rows is gone from all three tables; no orphans, no temps.
    for table in ("graphs", "nodes", "edges"):
        assert _files(store, table) == ["part-a.parquet", "part-c.parquet"]
    # The kept rows of a mixed part are intact, and its nodes/edges untouched.
    a = pq.read_table(store.table_dir("graphs") / "part-a.parquet")
    assert a.schema == GRAPH_SCHEMA
    assert a["prompt_id"].to_pylist() == ["p0", "p2"]
    assert pq.read_table(store.table_dir("nodes") / "part-a.parquet").num_rows == 6
    assert store.drop_error_rows() == []
    assert store.clean() == 0


def test_meta_roundtrip_and_errors(tmp_path):
    store = RunStore(tmp_path / "run")
    assert not store.exists()
    with pytest.raises(RunDirError, match="no run.json"):
        store.read_meta()
    store.write_meta({"format": "circuitray-run/1", "n_prompts": 3})
    assert store.read_meta() == {"format": "circuitray-run/1", "n_prompts": 3}
    assert [p.name for p in store.root.iterdir()] == ["run.json"]
    store.run_json.write_text("{not json")
    with pytest.raises(RunDirError, match="corrupt run.json"):
        store.read_meta()


def test_lock_excludes_a_second_driver(tmp_path):
    a = RunStore(tmp_path / "run")
    b = RunStore(tmp_path / "run")
    a.acquire_lock()
    try:
        with pytest.raises(RunDirError, match="another circuitray driver"):
            b.acquire_lock()
    finally:
        a.release_lock()
    b.acquire_lock()  # free again once released
    b.release_lock()
    a.release_lock()  # releasing twice is harmless


# -- compaction ------------------------------------------------------------------------
def _copy_run(ray_run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(ray_run.out, out)
    return out


def _rows(store, table):
    import pyarrow.parquet as pq

    files = store.part_files(table)
    return pa.concat_tables(pq.read_table(f) for f in files) if files else None


def test_compaction_keeps_rows_and_sorts_into_few_files(ray_run, tmp_path):
    from circuitray.schema import SORT_KEYS

    out = _copy_run(ray_run, tmp_path)
    store = RunStore(out)
    # The shared run was compacted at its end; split it again by writing the same
    # content as many small parts (one per graph) to compact from scratch.
    before = {t: _rows(store, t) for t in ("graphs", "nodes", "edges")}
    for t in ("graphs", "nodes", "edges"):
        for f in (out / t).glob("*.parquet"):
            f.unlink()
    ids = before["graphs"]["graph_id"].to_pylist()
    for gid in ids:
        store.write_part(
            f"part-{gid:07d}",
            {t: before[t].filter(pa.compute.equal(before[t]["graph_id"], gid)) for t in before},
        )
    assert len(store.committed_parts()) == len(ids)

    stats = store.compact(rows_per_file=10_000)
    assert stats["parts_before"] == len(ids)
    assert (
        1 < stats["parts_after"] <= 1 + sum(before["graphs"]["n_kept_edges"].to_pylist()) // 10_000
    )
    for t in ("graphs", "nodes", "edges"):
        after = _rows(store, t)
        assert after.num_rows == before[t].num_rows, t
        assert after.sort_by(SORT_KEYS[t]).equals(before[t].sort_by(SORT_KEYS[t])), t
        assert after.equals(after.sort_by(SORT_KEYS[t])), t  # files are in sorted order
        assert len(list((out / t).iterdir())) == stats["parts_after"], t
    assert not (out / "compaction.json").exists()


def test_crash_after_compaction_commit_rolls_forward(ray_run, tmp_path, monkeypatch):
    out = _copy_run(ray_run, tmp_path)
    store = RunStore(out)
    before = _rows(store, "edges").num_rows
    store.write_part(
        "part-extra",
        {
            "graphs": store.read_graphs().slice(0, 0),
            "nodes": _rows(store, "nodes").slice(0, 0),
            "edges": _rows(store, "edges").slice(0, 0),
        },
    )
    # Crash right after the commit point: pending files and the log, nothing renamed.
    monkeypatch.setattr(RunStore, "_finish_compaction", lambda self: None)
    store.compact()
    assert (out / "compaction.json").exists()
    assert list(out.rglob("*.pending"))
    assert _rows(store, "edges").num_rows == before  # readers see each row once
    monkeypatch.undo()
    store.clean()
    assert not (out / "compaction.json").exists()
    assert not list(out.rglob("*.pending"))
    assert len(store.committed_parts()) == 1
    assert _rows(store, "edges").num_rows == before


def test_uncommitted_compaction_is_discarded(ray_run, tmp_path):
    out = _copy_run(ray_run, tmp_path)
    store = RunStore(out)
    before = _rows(store, "edges").num_rows
    (out / "edges" / "compact-dead-00000.parquet.pending").write_bytes(b"partial")
    assert _rows(store, "edges").num_rows == before
    store.clean()
    assert not list(out.rglob("*.pending"))


def test_every_commit_is_flushed_to_disk_before_and_after_its_rename(tmp_path, monkeypatch):
    """Issue 17, finding 5: no fsync anywhere, so after a power loss the graphs part
    (the commit) could exist while its edges or run.json did not."""
    import os

    events: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    store = RunStore(tmp_path / "run")
    store.write_meta({"format": "circuitray-run/1"})
    store.write_part("part-a", _part([0, 1]))
    renames = [e for e in events if e[0] == "replace"]
    assert [Path(dst).name for _, _, dst in renames] == ["run.json"] + ["part-a.parquet"] * 3
    for _, src, dst in renames:
        at = events.index(("replace", src, dst))
        assert ("fsync", src) in events[:at], src  # the data, before the name
        assert ("fsync", str(Path(dst).parent)) in events[at + 1 :], dst  # the rename


def test_a_folder_that_cannot_be_fsynced_still_commits(tmp_path, monkeypatch):
    """FUSE mounts and CIFS answer fsync on a folder with EINVAL; files are still
    flushed and the part commits (before: every write failed there)."""
    import errno
    import os

    real = os.fsync
    dirs = []

    def fsync(fd):
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            dirs.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store = RunStore(tmp_path / "run")
    store.write_part("part-a", _part([0, 1]))
    assert dirs and store.committed_parts() == ["part-a"]


def test_a_folder_whose_schema_grew_reads_as_one_table(tmp_path):
    """A folder begun by an older circuitray (its graphs parts without the columns added
    since, e.g. target_mode) and resumed by this one: every read sees all rows, the new
    columns null for the old parts (as DuckDB's union_by_name reads them)."""
    store = RunStore(tmp_path / "run")
    newer = ("target_mode", "target_token_id", "contrast_token_ids")
    old = _part([0, 1])
    old["graphs"] = old["graphs"].drop_columns(list(newer))
    store.write_part("part-a", old)
    new = _part([2])
    new["graphs"] = new["graphs"].set_column(
        new["graphs"].schema.get_field_index("target_mode"),
        "target_mode",
        pa.array(["answer"], pa.string()),
    )
    store.write_part("part-b", new)
    graphs = store.read_graphs()
    assert graphs["graph_id"].to_pylist() == [0, 1, 2]
    assert graphs["target_mode"].to_pylist() == [None, None, "answer"]
    assert store.read_graphs(["graph_id", "status"]).num_rows == 3
    assert store.graph_status() == {0: "ok", 1: "ok", 2: "ok"}
    # a column only the newer part has, and one no part has
    mixed = store.read_graphs(["graph_id", "target_mode"])
    assert mixed.column_names == ["graph_id", "target_mode"]
    assert mixed["target_mode"].to_pylist() == [None, None, "answer"]
    assert store.read_table("graphs", ["graph_id", "no_such"]).column_names == ["graph_id"]
    # a column of the schema that no part has yet: nulls, as for an empty folder
    only_old = RunStore(tmp_path / "old")
    only_old.write_part("part-a", old)
    t = only_old.read_graphs(["graph_id", "target_mode"])
    assert t.column_names == ["graph_id", "target_mode"]
    assert t["target_mode"].to_pylist() == [None, None]


def test_an_intervention_folder_has_none_of_a_run_folders_graph_reads(tmp_path):
    """InterventionStore was a RunStore: on an intervention folder read_graphs() looked
    for a graphs/ table it never has and returned an empty table, not an error, and
    run_json named intervention.json. The two kinds are siblings of PartStore now."""
    from circuitray.storage.run_store import PartStore

    for name in ("read_graphs", "graph_ids", "graph_status", "drop_error_rows", "run_json"):
        assert not hasattr(InterventionStore, name), name
    assert not isinstance(InterventionStore(tmp_path), RunStore)
    assert isinstance(InterventionStore(tmp_path), PartStore)
    assert InterventionStore(tmp_path).meta_path == tmp_path / "intervention.json"
    assert RunStore(tmp_path).run_json == RunStore(tmp_path).meta_path == tmp_path / "run.json"
