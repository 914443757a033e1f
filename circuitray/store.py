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
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (registers pa.compute)
import pyarrow.parquet as pq

from circuitray.errors import RunDirError

__all__ = ["TABLES", "RunStore"]

TABLES = ("graphs", "nodes", "edges")
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

    def committed_parts(self) -> list[str]:
        d = self.table_dir("graphs")
        if not d.exists():
            return []
        return sorted(p.stem for p in d.glob("*.parquet"))

    def part_files(self, table: str) -> list[str]:
        """Committed part files of ``table`` (orphans of a crash excluded)."""
        committed = set(self.committed_parts())
        d = self.table_dir(table)
        if not d.exists():
            return []
        return [str(p) for p in sorted(d.glob("*.parquet")) if p.stem in committed]

    def clean(self) -> int:
        """Remove temporary files and orphan parts; returns how many were removed."""
        committed = set(self.committed_parts())
        removed = 0
        for table in TABLES:
            d = self.table_dir(table)
            if not d.exists():
                continue
            for p in d.iterdir():
                orphan = p.suffix == ".parquet" and p.stem not in committed
                if p.name.endswith(".tmp") or orphan:
                    p.unlink(missing_ok=True)
                    removed += 1
        return removed

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
