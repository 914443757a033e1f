"""The run folder: ``run.json`` plus Parquet tables ``graphs/``, ``nodes/``, ``edges/``.

Write protocol (what makes a crash leave a resumable run):

1. A worker writes one part per batch of prompts under the same name in all three
   tables: ``edges/`` first, then ``nodes/``, then ``graphs/``. Each file is written
   to a hidden temporary name and renamed into place, so no reader sees half a file.
2. A graphs part is the commit point. Nodes and edges parts without a graphs part of
   the same name are orphans of a crash; readers ignore them and
   :meth:`RunStore.clean` removes them before a resumed run.
3. A retried batch reuses its part name, so it replaces, never duplicates, its rows.
4. ``run.json`` is rewritten atomically too; ``.lock`` (an advisory ``flock``) keeps
   a second driver out of a run folder that is in use.
5. Compaction merges parts into few large ones sorted by graph_id, as a roll-forward
   log: new parts are written under ``*.parquet.pending`` names (invisible), then
   ``compaction.json`` naming new and replaced parts is written atomically (the
   commit point), then pending files are renamed and replaced parts deleted, then
   the log is removed. Readers honour the log; :meth:`RunStore.clean` finishes a
   committed compaction or discards an uncommitted one after a crash.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (registers pa.compute)
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from circuitray.errors import RunDirError

logger = logging.getLogger(__name__)

__all__ = ["TABLES", "RunStore"]

TABLES = ("graphs", "nodes", "edges")
SORT_KEYS = {
    "graphs": [("graph_id", "ascending")],
    "nodes": [("graph_id", "ascending"), ("node_id", "ascending")],
    "edges": [("graph_id", "ascending"), ("dst", "ascending"), ("src", "ascending")],
}
PENDING = ".pending"
PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 3}


class RunStore:
    """Reads and writes one run folder (see module docstring for the protocol)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._lock_fd: int | None = None

    # -- run.json ---------------------------------------------------------------
    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    def exists(self) -> bool:
        return self.run_json.exists()

    def read_meta(self) -> dict:
        if not self.exists():
            raise RunDirError(f"{self.root}: not a circuitray run folder (no run.json)")
        try:
            return json.loads(self.run_json.read_text())
        except json.JSONDecodeError as e:
            raise RunDirError(f"{self.run_json}: corrupt run.json ({e.msg})") from None

    def write_meta(self, meta: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".run.json.{uuid.uuid4().hex}.tmp"
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=False, default=str) + "\n")
        os.replace(tmp, self.run_json)

    # -- locking ----------------------------------------------------------------
    def acquire_lock(self) -> None:
        """Take the folder's driver lock or raise :class:`RunDirError` if held."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirError(
                f"{self.root}: another circuitray driver is using this run folder"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def release_lock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- parts ------------------------------------------------------------------
    def table_dir(self, table: str) -> Path:
        return self.root / table

    def write_part(self, name: str, tables: dict[str, pa.Table]) -> None:
        """Write one part of every table, graphs last (the commit point)."""
        for table in ("edges", "nodes", "graphs"):
            d = self.table_dir(table)
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / f".{name}.{uuid.uuid4().hex}.tmp"
            pq.write_table(tables[table], tmp, **PARQUET_OPTIONS)
            os.replace(tmp, d / f"{name}.parquet")

    @property
    def compaction_log(self) -> Path:
        return self.root / "compaction.json"

    def _compaction(self) -> dict | None:
        try:
            return json.loads(self.compaction_log.read_text())
        except FileNotFoundError:
            return None

    def committed_parts(self) -> list[str]:
        d = self.table_dir("graphs")
        if not d.exists():
            return []
        parts = {p.stem for p in d.glob("*.parquet")}
        log = self._compaction()
        if log is not None:
            parts = (parts - set(log["old"])) | set(log["new"])
        return sorted(parts)

    def part_files(self, table: str) -> list[str]:
        """Committed part files of ``table`` (orphans of a crash excluded)."""
        d = self.table_dir(table)
        if not d.exists():
            return []
        files = []
        for stem in self.committed_parts():
            final = d / f"{stem}.parquet"
            pending = d / f"{stem}.parquet{PENDING}"
            if final.exists():
                files.append(str(final))
            elif pending.exists():  # a committed compaction not yet renamed
                files.append(str(pending))
        return files

    def clean(self) -> int:
        """Finish or discard an interrupted compaction, remove temporary files and
        orphan parts; returns how many files were removed."""
        if self._compaction() is not None:
            self._finish_compaction()
        committed = set(self.committed_parts())
        removed = 0
        for table in TABLES:
            d = self.table_dir(table)
            if not d.exists():
                continue
            for p in d.iterdir():
                orphan = p.suffix == ".parquet" and p.stem not in committed
                if p.name.endswith((".tmp", PENDING)) or orphan:
                    p.unlink(missing_ok=True)
                    removed += 1
        return removed

    # -- compaction ---------------------------------------------------------------
    def compact(self, *, rows_per_file: int = 20_000_000) -> dict[str, int]:
        """Merge all parts into files of about ``rows_per_file`` edge rows, sorted by
        graph_id (nodes by node_id, edges by dst, src within a graph). Atomic: see the
        module docstring. The caller must hold the lock (a driver) or none must."""
        own_lock = self._lock_fd is None
        if own_lock:
            self.acquire_lock()
        try:
            self.clean()
            old = self.committed_parts()
            if len(old) <= 1:
                return {"parts_before": len(old), "parts_after": len(old)}
            graphs = pa.concat_tables(pq.read_table(f) for f in self.part_files("graphs"))
            graphs = graphs.sort_by(SORT_KEYS["graphs"])
            # Cut graph_id ranges so each file holds about rows_per_file edges.
            ranges: list[tuple[int, int]] = []
            ids = graphs["graph_id"].to_pylist()
            sizes = [n or 0 for n in graphs["n_kept_edges"].to_pylist()]
            start, acc = 0, 0
            for i, n in enumerate(sizes):
                acc += n
                if acc >= rows_per_file or i == len(sizes) - 1:
                    ranges.append((ids[start], ids[i]))
                    start, acc = i + 1, 0
            token = uuid.uuid4().hex[:8]
            new = [f"compact-{token}-{r:05d}" for r in range(len(ranges))]
            sources = {t: ds.dataset(self.part_files(t), format="parquet") for t in TABLES}
            for table in ("edges", "nodes", "graphs"):
                for stem, (lo, hi) in zip(new, ranges, strict=True):
                    gid = ds.field("graph_id")
                    part = sources[table].to_table(filter=(gid >= lo) & (gid <= hi))
                    part = part.sort_by(SORT_KEYS[table])
                    d = self.table_dir(table)
                    tmp = d / f".{stem}.{uuid.uuid4().hex}.tmp"
                    pq.write_table(part, tmp, **PARQUET_OPTIONS)
                    os.replace(tmp, d / f"{stem}.parquet{PENDING}")
            log_tmp = self.root / f".compaction.{token}.tmp"
            log_tmp.write_text(json.dumps({"token": token, "new": new, "old": old}))
            os.replace(log_tmp, self.compaction_log)  # the commit point
            self._finish_compaction()
            logger.info("compacted %d parts into %d", len(old), len(new))
            return {"parts_before": len(old), "parts_after": len(new)}
        finally:
            if own_lock:
                self.release_lock()

    def _finish_compaction(self) -> None:
        log = self._compaction()
        if log is None:
            return
        for table in ("graphs", "nodes", "edges"):
            d = self.table_dir(table)
            for stem in log["new"]:
                pending = d / f"{stem}.parquet{PENDING}"
                if pending.exists():
                    os.replace(pending, d / f"{stem}.parquet")
        # Old graphs parts first: once gone, their nodes and edges are orphans anyway.
        for table in ("graphs", "nodes", "edges"):
            for stem in log["old"]:
                (self.table_dir(table) / f"{stem}.parquet").unlink(missing_ok=True)
        self.compaction_log.unlink(missing_ok=True)

    def read_graphs(self, columns: list[str] | None = None) -> pa.Table:
        files = self.part_files("graphs")
        if not files:
            from circuitray.attribution import GRAPH_SCHEMA

            schema = (
                GRAPH_SCHEMA
                if columns is None
                else pa.schema([GRAPH_SCHEMA.field(c) for c in columns])
            )
            return schema.empty_table()
        return pa.concat_tables(pq.read_table(f, columns=columns) for f in files)

    def graph_status(self) -> dict[int, str]:
        """graph_id -> status over all committed graphs rows."""
        t = self.read_graphs(columns=["graph_id", "status"])
        return dict(zip(t["graph_id"].to_pylist(), t["status"].to_pylist(), strict=True))

    def drop_error_rows(self) -> list[int]:
        """Remove the graphs rows with ``status='error'`` so those prompts run again.

        Error rows have no nodes or edges, so only graphs parts are rewritten (each
        atomically). A crash midway leaves those prompts without a row, which a
        resumed run computes like any missing prompt: never two rows for one prompt.
        """
        dropped: list[int] = []
        d = self.table_dir("graphs")
        for f in self.part_files("graphs"):
            t = pq.read_table(f)
            is_error = pa.compute.equal(t["status"], "error")
            n_err = pa.compute.sum(is_error).as_py() or 0
            if n_err == 0:
                continue
            dropped += t.filter(is_error)["graph_id"].to_pylist()
            keep = t.filter(pa.compute.invert(is_error))
            stem = Path(f).stem
            if keep.num_rows == 0:
                # Remove the commit point first, then the (empty) orphan parts.
                Path(f).unlink()
                for table in ("nodes", "edges"):
                    (self.table_dir(table) / f"{stem}.parquet").unlink(missing_ok=True)
            else:
                tmp = d / f".{stem}.{uuid.uuid4().hex}.tmp"
                pq.write_table(keep, tmp, **PARQUET_OPTIONS)
                os.replace(tmp, f)
        return dropped
