"""Per-part costs of the run store that must not grow with the run (issue 19, part 5).

Each test counts a quantity that reveals the complexity (sets built, part names
validated, part files opened), never a time: the quadratic versions these guard
against were found by ``circuitray bench scale``.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.fs as pafs

from circuitray.schema import EDGE_SCHEMA, GRAPH_SCHEMA, NODE_SCHEMA, SORT_KEYS
from circuitray.storage import run_store
from circuitray.storage.run_store import RunStore


def _part(ids: list[int]) -> dict[str, pa.Table]:
    rows, nodes, edges = [], [], []
    for gid in ids:
        row = {f.name: None for f in GRAPH_SCHEMA}
        row.update(graph_id=gid, prompt_id=f"p{gid}", prompt="x", status="ok")
        row.update(n_kept_nodes=2, n_kept_edges=1)
        rows.append(row)
        for i in range(2):
            nodes.append(
                {"graph_id": gid, "node_id": i, "node_type": "error", "layer": i, "pos": 0}
            )
        edges.append({"graph_id": gid, "dst": 1, "src": 0, "weight": 1.0})
    return {
        "graphs": pa.Table.from_pylist(rows, GRAPH_SCHEMA),
        "nodes": pa.Table.from_pylist(nodes, NODE_SCHEMA),
        "edges": pa.Table.from_pylist(edges, EDGE_SCHEMA),
    }


class _CountingSet(set):
    made = 0

    def __init__(self, *args):
        type(self).made += 1
        super().__init__(*args)


def test_unsealing_n_parts_builds_a_bounded_number_of_sets(tmp_path, monkeypatch):
    """Compaction unseals every part it replaces (all of them: its fence sealed them).
    That was ``[n for n in sealed if n not in set(names)]``: one set of every name per
    sealed name, O(parts^2), minutes at 10^5 parts."""
    store = RunStore(tmp_path / "run")
    names = [f"part-{i:07d}-{i:07d}-0123456789ab" for i in range(300)]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text(
        json.dumps({"session": "fedcba987654", "sealed": names})
    )
    monkeypatch.setattr(run_store, "set", _CountingSet, raising=False)
    store._unseal(names[:200])
    assert _CountingSet.made <= 4, _CountingSet.made
    assert store._manifest() == {"session": "fedcba987654", "sealed": names[200:]}


def test_a_workers_session_check_does_not_read_every_sealed_name(tmp_path, monkeypatch):
    """Every batch a worker writes first asks whose the folder is (current_session).
    After a resume the manifest lists every part of the earlier sessions: reading and
    validating all of them per batch made a resumed run O(parts^2)."""
    store = RunStore(tmp_path / "run")
    names = [f"part-{i:07d}-{i:07d}-0123456789ab" for i in range(5000)]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text(
        json.dumps({"session": "fedcba987654", "sealed": names}) + "\n"
    )
    checked = []
    real = RunStore.check_part_name
    monkeypatch.setattr(
        RunStore, "check_part_name", lambda self, n, **kw: checked.append(n) or real(self, n, **kw)
    )
    assert store.current_session() == "fedcba987654"
    assert checked == []
    # Anything but the manifest's own layout is read (and validated) in full.
    (tmp_path / "run" / "manifest.json").write_text(
        json.dumps({"sealed": names[:3], "session": "fedcba987654"})
    )
    assert store.current_session() == "fedcba987654"
    assert len(checked) == 3


class _CountingHandler(pafs.FileSystemHandler):
    """The local filesystem, counting the part files opened for reading."""

    def __init__(self) -> None:
        self.fs = pafs.LocalFileSystem()
        self.opened: list[str] = []

    def _count(self, path: str) -> None:
        if path.endswith(".parquet"):
            self.opened.append(path)

    def get_type_name(self):
        return "counting"

    def normalize_path(self, path):
        return path

    def equals(self, other):
        return self is other

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise NotImplementedError

    def delete_file(self, path):
        self.fs.delete_file(path)

    def move(self, src, dest):
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        self._count(path)
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        self._count(path)
        return self.fs.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self.fs.open_append_stream(path, metadata=metadata)


def test_compaction_opens_each_part_a_bounded_number_of_times(tmp_path):
    """Every open is requests on object storage. Compaction read every part twice over
    before copying it (the fence's whole-part check, then the same check again): 18
    opens a part. Now: the fence (the graphs counts and the row counts of nodes and
    edges: 3), the graph-id index (1), then each table's file once, twice where an
    output file's boundary cuts the part (here every part: 20 files over 40 parts)."""
    store = RunStore(tmp_path / "run")
    n_parts, per_part = 40, 5
    for p in range(n_parts):
        ids = list(range(p * per_part, (p + 1) * per_part))
        store.write_part(f"part-{ids[0]:07d}-{ids[-1]:07d}", _part(ids))
    before = {t: store.read_table(t).sort_by(SORT_KEYS[t]) for t in store.tables}
    handler = _CountingHandler()
    store.files.fs = pafs.PyFileSystem(handler)
    stats = store.compact(rows_per_file=10)  # 200 graphs of one edge: 20 files of 10
    assert stats == {"parts_before": n_parts, "parts_after": 20}
    opened = len([p for p in handler.opened if "/part-" in p])
    # (+ 1 a table: the schema every slice is read with, from the first part)
    assert opened <= n_parts * (3 + 1 + 3 * 2) + 3, opened / n_parts
    store.files.fs = pafs.LocalFileSystem()
    for t in store.tables:
        after = store.read_table(t)
        assert after.equals(before[t]), t  # every row, in sorted order


def _many_parts(store: RunStore, n_parts: int, per_part: int, edges: int = 1) -> None:
    for p in range(n_parts):
        ids = list(range(p * per_part, (p + 1) * per_part))
        tables = _part(ids)
        if edges > 1:  # more edge rows per graph (the counts the fence checks follow)
            e = tables["edges"]
            idx = pa.array([i for i in range(e.num_rows) for _ in range(edges)])
            tables["edges"] = e.take(idx)
            g = tables["graphs"]
            col = g.schema.get_field_index("n_kept_edges")
            tables["graphs"] = g.set_column(
                col, "n_kept_edges", pa.array([edges] * g.num_rows, pa.int32())
            )
        store.write_part(f"part-{ids[0]:07d}-{ids[-1]:07d}", tables)


def test_compaction_scans_each_part_for_the_ranges_it_overlaps_only(tmp_path, monkeypatch):
    """Compaction scanned one dataset of every part for every output range: each
    range's filter was evaluated against all parts, O(ranges x parts) (500 parts cut
    into 250 files took 148 s here, 2.7 s as one file). Counted: the part files in
    the datasets each scan runs over."""
    import pyarrow.dataset as ds

    real = ds.dataset
    scanned: list[int] = []

    class Counted:
        def __init__(self, source, **kw):
            self.inner = real(source, **kw)
            self.n = len(source) if isinstance(source, list) else 1

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def to_table(self, *a, **kw):
            scanned.append(self.n)
            return self.inner.to_table(*a, **kw)

    store = RunStore(tmp_path / "run")
    n_parts = 60
    _many_parts(store, n_parts, 5)
    monkeypatch.setattr(ds, "dataset", Counted)
    stats = store.compact(rows_per_file=10)  # 30 files of 10 graphs, each over 2 parts
    assert stats == {"parts_before": n_parts, "parts_after": 30}
    # Each table: every part once, plus a second time where a file boundary cuts it.
    assert sum(scanned) <= 3 * (2 * n_parts + stats["parts_after"]), sum(scanned)


def test_compaction_memory_is_a_slice_not_a_whole_file(tmp_path, monkeypatch):
    """Compaction read, sorted and wrote each output file whole: up to rows_per_file
    (20M) edge rows at once, about 2 GB for a million-prompt run. It now sorts and
    writes a file a slice of about ``slice_rows`` rows at a time. Counted: the peak of
    Arrow's memory pool during compaction, against the edges table's size."""
    store = RunStore(tmp_path / "run")
    _many_parts(store, 40, 50, edges=100)  # 200k edge rows in 40 parts
    whole = store.read_table("edges").nbytes
    store.slice_rows = 10_000  # a twentieth of the edges
    pool = pa.proxy_memory_pool(pa.default_memory_pool())
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    try:
        stats = store.compact()  # one output file
    finally:
        pa.set_memory_pool(previous)
    assert stats["parts_after"] == 1
    assert pool.max_memory() < 0.5 * whole, (pool.max_memory(), whole)
    edges = store.read_table("edges")
    assert edges.num_rows == 200_000
    assert edges.equals(edges.sort_by(SORT_KEYS["edges"]))


def test_compaction_keeps_each_row_once_when_parts_share_a_graph_id(tmp_path):
    """Slices are cut between graph ids: a graph id in two parts (rows the store
    holds twice, which compaction must not double or drop) once opened two slices of
    the same id, each reading both parts' rows."""
    store = RunStore(tmp_path / "run")
    store.write_part("part-0000000-0000003", _part([0, 1, 2, 3]))
    store.write_part("part-0000003-0000005", _part([3, 4, 5]))
    before = {t: store.read_table(t).num_rows for t in store.tables}
    store.slice_rows = 2  # a slice closes at every graph (its row counts 1 + 1 edge)
    assert store.compact()["parts_after"] == 1
    for t in store.tables:
        rows = store.read_table(t)
        assert rows.num_rows == before[t], t
        assert pa.compute.sum(pa.compute.equal(rows["graph_id"], 3)).as_py() == 2 * (
            1 if t == "graphs" else 2 if t == "nodes" else 1
        ), t
