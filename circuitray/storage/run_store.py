"""The run folder: ``run.json`` plus Parquet tables ``graphs/``, ``nodes/``, ``edges/``.

Write protocol (what makes a crash leave a resumable run):

1. A worker writes one part per batch of prompts under the same name in all three
   tables: ``edges/`` first, then ``nodes/``, then ``graphs/``. Each file is written
   to a hidden temporary name and renamed into place, so no reader sees half a file.
   A worker's part is named by its driver session: ``part-<first>-<last>-<session>``.
2. A graphs part is the commit point. Nodes and edges parts without a graphs part of
   the same name are orphans of a crash; readers ignore them and
   :meth:`RunStore.clean` removes them before a resumed run.
3. A retried batch reuses its part name, so it replaces, never duplicates, its rows.
3a. The fence (``manifest.json``: the current session and the sealed parts of earlier
   sessions). A worker's part is committed only while its session is the manifest's
   current one, or once it is listed as sealed. A new driver (:meth:`RunStore.fence`,
   under the lock, before it cleans or counts anything) proves every committed part
   whole (its nodes and edges files read, and hold exactly the rows its graphs rows
   count), seals the whole ones and names itself current, in one atomic write. A
   worker of a killed driver that writes afterwards, whatever the timing, writes
   under a session that is neither current nor sealed: its rows never become
   visible, and the next clean-up removes them. A part of the earlier session that
   is not whole is not sealed (its prompts are computed again); a sealed part that
   is no longer whole is named in one line, for ``compact --repair``. Parts not
   named by a session (compaction output, hand-written parts) are committed by
   their graphs file alone, as before; only lock holders write them.
4. Locally every file is flushed to disk (``fsync``) before its rename, and its folder
   after it, so a commit that survives a power loss has its data with it.
   ``run.json`` is rewritten atomically too; ``.lock`` (an advisory ``flock``) keeps
   a second driver out of a run folder that is in use.
5. Compaction merges parts into few large ones sorted by graph_id, as a roll-forward
   log: new parts are written under ``*.parquet.pending`` names (invisible), then
   ``compaction.json`` naming new and replaced parts is written atomically (the
   commit point), then pending files are renamed and replaced parts deleted, then
   the log is removed. Readers honour the log; :meth:`RunStore.clean` finishes a
   committed compaction or discards an uncommitted one after a crash.

An intervention folder (:class:`InterventionStore`, ``circuitray intervene``) follows the
same protocol with ``intervention.json`` and one table, ``results/``, as commit point.

Storage is a local path or ``s3://bucket/prefix`` (an S3-compatible endpoint via
``AWS_ENDPOINT_URL`` or ``?endpoint_override=host:port&scheme=http`` in the URI);
readers also take anything else ``pyarrow.fs`` reaches (``gs://``), writers do not
(no conditional writes there for the lease). On object stores a PUT is
atomic (an object appears whole or not at all), so parts are written in place
instead of renamed, and the driver lock is a lease object kept by S3 conditional writes
(:mod:`circuitray.storage.lease`): a driver that loses it writes nothing more.

Those differences (an atomic put, ``fsync``, symbolic links, the lock) live in one file
layer, :mod:`circuitray.storage.files` (:class:`~circuitray.storage.files.LocalFiles`,
:class:`~circuitray.storage.files.ObjectFiles`), which a store holds as
:attr:`PartStore.files`: the protocol code here is the same for both.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from circuitray.errors import RunDirError
from circuitray.schema import RESULT_SORT_KEYS, SCHEMAS, SORT_KEYS
from circuitray.storage.files import Files, Lock, open_files
from circuitray.storage.lease import LEASE_S

if TYPE_CHECKING:  # imported where used: pyarrow.dataset loads pandas (~0.3 s)
    import pyarrow.dataset as ds

logger = logging.getLogger(__name__)

__all__ = ["InterventionStore", "PartStore", "RunStore"]

RUN_FORMAT = "circuitray-run/1"  # run.json's "format": computed and imported runs alike
PENDING = ".pending"
PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 3}
# Per-column encodings by what the column holds: floats split into byte streams (a
# dictionary of floats compresses worse than nothing), ids sorted within a graph
# delta-encoded, low-cardinality strings and layers dictionary-encoded. On organism
# runs this takes edges from 6.9 to about 5 bytes per edge.
COLUMN_OPTIONS = {
    "edges": {
        "use_dictionary": ["src_type", "dst_type", "src_layer", "dst_layer"],
        "column_encoding": {
            "weight": "BYTE_STREAM_SPLIT",
            **{c: "DELTA_BINARY_PACKED" for c in ("graph_id", "dst", "src")},
        },
    },
    "nodes": {
        "use_dictionary": ["node_type", "token", "layer", "pos"],
        "column_encoding": {
            **{c: "BYTE_STREAM_SPLIT" for c in ("activation", "influence", "logit_prob")},
            "cumulative_influence": "BYTE_STREAM_SPLIT",
            **{c: "DELTA_BINARY_PACKED" for c in ("graph_id", "node_id")},
        },
    },
}
# What a part name may be: written by circuitray (part-<first>-<last>-<session>,
# compact-<token>-<n>); anything else, e.g. a path read from a tampered compaction.json,
# is refused rather than joined to the folder.
PART_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
# A part a worker writes for a driver session: fenced by manifest.json.
SESSION_PART = re.compile(r"part-\d+-\d+-(?P<session>[0-9a-f]{12})")
MANIFEST = "manifest.json"
# How fence() lays out manifest.json: the session first, so that a worker's check of
# whose the folder is reads a few bytes, not the sealed list.
MANIFEST_HEAD = re.compile(r'\{"session": "(?P<session>[^"\\]+)", "sealed": \[')
MANIFEST_HEAD_BYTES = 256


def _stem(path: str) -> str:
    """The part name of a part file's path (``.../graphs/NAME.parquet[.pending]``)."""
    return path.rsplit("/", 1)[1].split(".parquet")[0]


def _cut(sizes: np.ndarray, limit: int) -> list[tuple[int, int]]:
    """Consecutive index runs ``[start, end)`` of ``sizes``, each closed by the entry
    that brings it to ``limit`` (the last run takes what remains)."""
    runs: list[tuple[int, int]] = []
    start, acc = 0, 0
    for i, n in enumerate(sizes.tolist()):
        acc += n
        if acc >= limit:
            runs.append((start, i + 1))
            start, acc = i + 1, 0
    if start < len(sizes):
        runs.append((start, len(sizes)))
    return runs


def _by_graph(
    ids: list[np.ndarray], sizes: list[np.ndarray], spans: list[tuple[int, int, str]]
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, str]]]:
    """The parts' distinct graph ids, ascending, and the rows each holds over all parts
    (a graph id in two parts is one entry, so no slice boundary falls inside it)."""
    if not ids:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), spans
    all_ids, all_sizes = np.concatenate(ids).astype(np.int64), np.concatenate(sizes)
    unique, where = np.unique(all_ids, return_inverse=True)
    totals = np.bincount(where, weights=all_sizes.astype(np.float64), minlength=len(unique))
    return unique, totals.astype(np.int64), spans


def _overlapping(
    spans: list[tuple[int, int, str]], bounds: list[tuple[int, int]]
) -> Iterator[list[str]]:
    """For ascending graph-id ranges ``bounds`` ``(lo, hi)``, the parts (``spans``:
    lowest id, highest id, name) whose ids meet each range: one sweep, so the work
    grows with parts plus ranges, not with their product."""
    todo = sorted(spans)
    i = 0
    active: list[tuple[int, int, str]] = []
    for lo, hi in bounds:
        while i < len(todo) and todo[i][0] <= hi:
            active.append(todo[i])
            i += 1
        active = [s for s in active if s[1] >= lo]  # ended below: never met again
        yield [s[2] for s in active]


class PartStore:
    """One folder of Parquet parts under the module docstring's protocol: the lock, the
    fence, parts, reads, clean-up, repair and compaction, over its file layer
    :attr:`files` (a local disk or an object store). Its two kinds, :class:`RunStore`
    and :class:`InterventionStore`, say what the folder holds: ``tables`` in write
    order (the last is the commit point), ``sort_keys``, ``meta_file`` (the folder's
    JSON description), and how a part's rows are counted (:meth:`expected_rows`,
    :meth:`_graph_index`).
    """

    tables: tuple[str, ...] = ()
    sort_keys: dict[str, list[tuple[str, str]]] = {}
    meta_file = ""
    kind = ""
    count_columns: list[str] = []  # commit-table columns expected_rows reads

    def __init__(self, root: str | Path):
        self.files: Files = open_files(root, self.kind)
        self._lock: Lock | None = None
        self.lease_s = LEASE_S  # object stores: how long the driver lease lasts
        self.session: str | None = None  # the session this store started (fence)

    @property
    def root(self) -> Path | str:
        """The folder as given (a :class:`~pathlib.Path` locally), for messages."""
        return self.files.root

    @property
    def fs(self) -> pafs.FileSystem:
        """The folder's ``pyarrow.fs`` filesystem; its paths come from :meth:`_path`."""
        return self.files.fs

    @property
    def base(self) -> str:
        """The folder's path on :attr:`fs`."""
        return self.files.base

    @property
    def local(self) -> bool:
        """Whether the folder is on the local disk (not an object store)."""
        return self.files.local

    @property
    def uri(self) -> str:
        """What another process (a worker) passes to RunStore to open the same folder."""
        return self.files.uri

    # -- file primitives (the file layer: :mod:`circuitray.storage.files`) -----------
    def _path(self, *parts: str) -> str:
        return self.files.path(*parts)

    def check_confined(self) -> None:
        """Refuse a local folder whose own entries (meta file, lock, compaction log,
        table folders) are symbolic links; a no-op on object stores (no links)."""
        entries = (self.meta_file, ".lock", "compaction.json", MANIFEST, "quarantine")
        for entry in (*entries, *self.tables):
            self.files.refuse_link(self._path(entry))
        for table in self.tables:
            self.files.refuse_link(self._path("quarantine", table))

    def _read_json(self, path: str, what: str):
        """A JSON file the folder's protocol writes (manifest, compaction log), or None
        when there is none; refused in one line if it is a link or not JSON."""
        self.files.refuse_link(path)
        try:
            return json.loads(self.files.read_text(path))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RunDirError(f"{path}: not a circuitray {what} (not JSON)") from None

    def _put(self, path: str, write) -> None:
        """Make ``path`` appear whole (:meth:`Files.put`: temp file + rename locally,
        one PUT remotely); a driver that lost its lease writes nothing more."""
        self.check_lease()
        self.files.put(path, write)

    def _put_text(self, path: str, text: str) -> None:
        def write(p: str) -> None:
            with self.fs.open_output_stream(p) as f:
                f.write(text.encode())

        self._put(path, write)

    @staticmethod
    def _parquet_options(path: str, columns: list[str]) -> dict:
        kind = path.rstrip("/").split("/")[-2]  # the table folder: edges, nodes, graphs
        options: dict = dict(PARQUET_OPTIONS)
        for key, value in COLUMN_OPTIONS.get(kind, {}).items():  # only columns present
            keep = [c for c in value if c in columns]
            options[key] = {c: value[c] for c in keep} if isinstance(value, dict) else keep
        return options

    def _put_parquet(self, path: str, table: pa.Table) -> None:
        options = self._parquet_options(path, table.column_names)
        self._put(path, lambda p: pq.write_table(table, p, filesystem=self.fs, **options))

    # -- run.json ---------------------------------------------------------------
    @property
    def commit_table(self) -> str:
        return self.tables[-1]

    @property
    def meta_path(self) -> Path | str:
        """The folder's JSON description (``run.json``, ``intervention.json``)."""
        return self.files.child(self.meta_file)

    def exists(self) -> bool:
        return self.files.exists(self._path(self.meta_file))

    def read_meta(self) -> dict:
        if not self.exists():
            raise RunDirError(f"{self.root}: not a {self.kind} (no {self.meta_file})")
        try:
            return json.loads(self.files.read_text(self._path(self.meta_file)))
        except json.JSONDecodeError as e:
            raise RunDirError(f"{self.meta_path}: corrupt {self.meta_file} ({e.msg})") from None

    def write_meta(self, meta: dict) -> None:
        text = json.dumps(meta, indent=2, sort_keys=False, default=str) + "\n"
        self._put_text(self._path(self.meta_file), text)

    # -- locking ----------------------------------------------------------------
    def acquire_lock(self) -> None:
        """Take the folder's driver lock or raise :class:`RunDirError` if held.

        Locally an advisory ``flock`` (released by the OS if the driver dies). On S3 a
        lease object kept by conditional writes (:mod:`circuitray.storage.lease`),
        renewed every ``lease_s / 4`` s; a lease not renewed for ``lease_s`` (a killed
        driver) can be taken over, and a driver whose lease was taken stops writing.
        """
        self.check_confined()
        self._lock = self.files.lock(self.lease_s)

    def start_session(self, meta: dict) -> str:
        """Fence the folder for a new driver session (:meth:`fence`), then mark
        ``meta`` running under that session and write it. Returns the session id."""
        session = self.fence(uuid.uuid4().hex[:12])
        meta.update(
            status="running", session=session, started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z")
        )
        self.write_meta(meta)
        return session

    # -- the fence (protocol step 3a) -------------------------------------------------
    def _manifest(self) -> dict | None:
        """manifest.json, validated; None in a folder written before the fence."""
        path = self._path(MANIFEST)
        m = self._read_json(path, "manifest")
        if m is None:
            return None
        ok = (
            isinstance(m, dict)
            and isinstance(m.get("session"), str)
            and isinstance(m.get("sealed"), list)
            and all(isinstance(n, str) for n in m["sealed"])
        )
        if not ok:
            raise RunDirError(f"{path}: not a circuitray manifest (no session and sealed parts)")
        for name in m["sealed"]:
            self.check_part_name(name, where=path)
        return m

    def current_session(self) -> str | None:
        """The session whose workers may commit now (None before any session).

        Workers ask before every batch, and the sealed list grows with the run, so only
        the head of the manifest is read, where :meth:`fence` writes the session; a
        manifest laid out otherwise is read and validated whole."""
        path = self._path(MANIFEST)
        self.files.refuse_link(path)
        try:
            head = self.files.read_head(path, MANIFEST_HEAD_BYTES)
        except FileNotFoundError:
            return None
        match = MANIFEST_HEAD.match(head)
        if match is not None:
            return match["session"]
        m = self._manifest()
        return None if m is None else m["session"]

    def _unseal(self, names: list[str]) -> None:
        """Drop ``names`` from the sealed parts before their files are deleted, so a
        late writer of an older session can never bring a name back into view."""
        m = self._manifest()
        if m is None:
            return
        drop = set(names)  # once: compaction unseals every part it replaces
        sealed = [n for n in m["sealed"] if n not in drop]
        if len(sealed) == len(m["sealed"]):
            return
        self._put_text(self._path(MANIFEST), json.dumps({**m, "sealed": sealed}) + "\n")

    def fence(self, session: str | None = None) -> str:
        """Seal every whole committed part and make ``session`` (default: a fresh id
        that no worker has) the folder's current session, in one atomic write of
        manifest.json. Needs the lock. Raises :class:`RunDirError` naming a sealed (or
        unsessioned) part that is no longer whole; a part of the earlier session that
        is not whole is left unsealed, so its prompts count as not done."""
        if not self.locked:
            raise RunDirError(f"{self.root}: fencing needs the driver lock")
        if self._compaction() is not None:
            self._finish_compaction()
        m = self._manifest()
        committed = self.committed_parts()
        bad = self.unreadable_parts(committed)
        sealed = []
        for stem in committed:
            match = SESSION_PART.fullmatch(stem)
            current = m is not None and match is not None and match["session"] == m["session"]
            if stem in bad:
                if not current:
                    raise self.unreadable(*bad[stem])
                logger.warning(
                    "part %s of the earlier session is not whole (%s: %s); its prompts "
                    "are computed again",
                    stem,
                    *bad[stem],
                )
                continue
            if match is not None:
                sealed.append(stem)
        session = session or uuid.uuid4().hex[:12]
        text = json.dumps({"session": session, "sealed": sealed}) + "\n"
        self._put_text(self._path(MANIFEST), text)
        self.session = session
        return session

    def check_kind(self) -> None:
        """Refuse a folder that holds the other kind's description (a run folder
        opened as an intervention folder, or the reverse): they share lock and
        compaction files."""
        for other in (RunStore, InterventionStore):
            if other.meta_file != self.meta_file and self.files.exists(self._path(other.meta_file)):
                name = "a run" if other is RunStore else "an intervention"
                raise RunDirError(f"{self.root}: is {name} folder; give a new --out folder")

    def check_lease(self) -> None:
        """Raise :class:`circuitray.storage.lease.LeaseLostError` when this store held
        an object-store lease and lost it (a no-op otherwise)."""
        if self._lock is not None:
            self._lock.check()

    @property
    def locked(self) -> bool:
        return self._lock is not None

    def release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()  # a lease is removed only while it is still ours
            self._lock = None

    # -- parts ------------------------------------------------------------------
    def table_dir(self, table: str) -> Path | str:
        return self.files.child(table)

    def write_part(self, name: str, tables: dict[str, pa.Table]) -> None:
        """Write one part of every table, the commit table (graphs) last."""
        self.check_part_name(name)
        for table in self.tables:
            self._put_parquet(self._path(table, f"{name}.parquet"), tables[table])

    def _compaction(self) -> dict | None:
        path = self._path("compaction.json")
        log = self._read_json(path, "compaction log")
        if log is None:
            return None
        lists = [log.get(k) for k in ("old", "new")] if isinstance(log, dict) else [None]
        if not all(isinstance(v, list) and all(isinstance(n, str) for n in v) for v in lists):
            raise RunDirError(f"{path}: not a circuitray compaction log (no old/new part names)")
        for name in [*log["old"], *log["new"]]:
            self.check_part_name(name, where=path)
        return log

    def check_part_name(self, name: str, *, where: str | None = None) -> None:
        """Refuse a part name that is not one circuitray writes (it could be a path)."""
        if not PART_NAME.fullmatch(name):
            raise RunDirError(
                f"{where or self.root}: part name {name!r} is not a circuitray part "
                "(it would lead outside the folder); refusing to touch it"
            )

    def has_parts(self) -> bool:
        """Whether any table folder holds a part file (committed or not)."""
        return any(
            n.endswith((".parquet", PENDING))
            for t in self.tables
            for n in self.files.names(self._path(t))
        )

    def committed_parts(self) -> list[str]:
        """Parts whose rows readers see: a commit-table file, fenced by the manifest
        (protocol step 3a), with a committed compaction's log applied."""
        parts = {
            n.removesuffix(".parquet")
            for n in self.files.names(self._path(self.commit_table))
            if n.endswith(".parquet") and not n.startswith(".")
        }
        m = self._manifest()
        if m is not None:
            sealed = set(m["sealed"])

            def visible(stem: str) -> bool:
                match = SESSION_PART.fullmatch(stem)
                return match is None or stem in sealed or match["session"] == m["session"]

            parts = {p for p in parts if visible(p)}
        log = self._compaction()
        if log is not None:
            parts = (parts - set(log["old"])) | set(log["new"])
        return sorted(parts)

    def part_files(self, table: str) -> list[str]:
        """Committed part files of ``table`` (orphans of a crash excluded), as paths
        of :attr:`fs`."""
        names = set(self.files.names(self._path(table)))
        files = []
        for stem in self.committed_parts():
            if f"{stem}.parquet" in names:
                files.append(self._path(table, f"{stem}.parquet"))
            elif f"{stem}.parquet{PENDING}" in names:  # committed compaction, not renamed
                files.append(self._path(table, f"{stem}.parquet{PENDING}"))
        return files

    def read_table(self, table: str, columns: list[str] | None = None) -> pa.Table | None:
        """Every committed row of ``table`` (``columns`` only, when given). A folder
        begun by an older circuitray has parts without the columns added since: they
        read as nulls there (as DuckDB's ``union_by_name`` reads them); a requested
        column of the table's schema that no part has is all nulls, one the schema does
        not know is left out."""
        files = self.part_files(table)
        if not files:
            return None
        parts = [self._read_part(f, columns) for f in files]
        if len({part.schema for part in parts}) == 1 and (
            columns is None or parts[0].column_names == columns
        ):
            return pa.concat_tables(parts)
        merged = pa.concat_tables(parts, promote_options="default")
        schema = SCHEMAS.get(table)
        for c in columns or []:
            if c not in merged.column_names and schema is not None and c in schema.names:
                merged = merged.append_column(
                    schema.field(c), pa.nulls(merged.num_rows, schema.field(c).type)
                )
        order = columns or [n for part in parts for n in part.column_names]
        return merged.select(list(dict.fromkeys(n for n in order if n in merged.column_names)))

    def common_columns(self, table: str) -> list[str]:
        """The columns every part file of ``table`` has (its schema may have grown since
        the folder's first parts were written), in the order of the first."""
        names: list[str] | None = None
        for f in self.part_files(table):
            try:
                have = pq.read_schema(f, filesystem=self.fs).names
            except (pa.ArrowInvalid, OSError) as e:
                raise self.unreadable(f, e) from None
            names = have if names is None else [n for n in names if n in have]
        return names or []

    def _read_part(self, path: str, columns: list[str] | None = None) -> pa.Table:
        try:
            return pq.read_table(path, columns=columns, filesystem=self.fs)
        except (pa.ArrowInvalid, OSError) as e:
            error = e
        try:  # a part from an older circuitray lacks the newer columns: read those it has
            have = set(pq.read_schema(path, filesystem=self.fs).names)
            if columns is not None and not set(columns) <= have:
                return pq.read_table(
                    path, columns=[c for c in columns if c in have], filesystem=self.fs
                )
        except (pa.ArrowInvalid, OSError) as e:
            error = e
        raise self.unreadable(path, error) from None

    def unreadable(self, path: str, error: BaseException | str) -> RunDirError:
        """The one-line error for a part file that cannot be read (torn by a crash or a
        power loss, or damaged), with the way out."""
        text = str(error).strip()
        first = text.splitlines()[0] if text else type(error).__name__
        return RunDirError(
            f"{path}: unreadable part ({first}); `circuitray compact --repair "
            f"{self.root}` moves its batch aside so that a resumed run recomputes it"
        )

    def unreadable_parts(self, stems: list[str] | None = None) -> dict[str, tuple[str, str]]:
        """Committed parts (or ``stems``, as :meth:`committed_parts` listed them) that
        are not whole: a file missing or not readable as Parquet, or (run folders) a
        nodes or edges file whose row count differs from what its graphs rows count.
        stem -> (that file, why)."""
        bad: dict[str, tuple[str, str]] = {}
        names = {t: set(self.files.names(self._path(t))) for t in self.tables}
        for stem in self.committed_parts() if stems is None else stems:
            expected: dict[str, int] = {}
            for table in self.tables[::-1]:  # the commit table first: it says the counts
                path = next(
                    (
                        self._path(table, n)
                        for n in (f"{stem}.parquet", f"{stem}.parquet{PENDING}")
                        if n in names[table]
                    ),
                    None,
                )
                if path is None:
                    bad[stem] = (self._path(table, f"{stem}.parquet"), "missing")
                    break
                try:
                    if table == self.commit_table and self.count_columns:
                        counts = pq.read_table(path, columns=self.count_columns, filesystem=self.fs)
                        expected = self.expected_rows(counts)
                    with self.fs.open_input_file(path) as f:
                        rows = pq.read_metadata(f).num_rows
                except (pa.ArrowInvalid, OSError) as e:
                    bad[stem] = (path, (str(e).strip().splitlines() or [type(e).__name__])[0])
                    break
                if table in expected and rows != expected[table]:
                    bad[stem] = (path, f"{rows} rows where its graphs rows count {expected[table]}")
                    break
        return bad

    def expected_rows(self, commit: pa.Table) -> dict[str, int]:
        """Rows the other tables' files of a part must hold, from its commit-table
        columns :attr:`count_columns` (none: the commit table holds every row)."""
        return {}

    def repair(self) -> dict[str, tuple[str, str]]:
        """Move every part with an unreadable or missing file out of the folder's tables
        into ``quarantine/`` (the commit table's file first, so the batch is simply not
        done); a resumed run recomputes its prompts. Returns stem -> why."""
        own_lock = not self.locked
        if own_lock:
            self.acquire_lock()
        try:
            self.check_lease()
            if self._compaction() is not None:
                self._finish_compaction()
            bad = self.unreadable_parts()
            for stem in bad:
                for table in self.tables[::-1]:  # the commit point first
                    for name in (f"{stem}.parquet", f"{stem}.parquet{PENDING}"):
                        src = self._path(table, name)
                        if self.files.exists(src):
                            dst = self._path("quarantine", table, name)
                            self.fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
                            self.fs.move(src, dst)
                logger.warning("quarantined part %s: %s: %s", stem, *bad[stem])
            self.fence()  # what is left is whole; stale writers stay out
            return bad
        finally:
            if own_lock:
                self.release_lock()

    def dataset(self, table: str) -> ds.Dataset | None:
        import pyarrow.dataset as ds

        files = self.part_files(table)
        return ds.dataset(files, format="parquet", filesystem=self.fs) if files else None

    def clean(self) -> int:
        """Finish or discard an interrupted compaction, remove temporary files and
        orphan parts; returns how many files were removed."""
        self.check_confined()
        if self._compaction() is not None:
            self._finish_compaction()
        committed = set(self.committed_parts())
        removed = 0
        for table in self.tables:
            for n in self.files.names(self._path(table)):
                orphan = n.endswith(".parquet") and n.removesuffix(".parquet") not in committed
                if n.endswith((".tmp", PENDING)) or orphan:
                    self.files.delete(self._path(table, n))
                    removed += 1
        return removed

    # -- compaction ---------------------------------------------------------------
    slice_rows = 1_000_000  # rows compaction sorts at once: bounds its memory

    def compact(self, *, rows_per_file: int = 20_000_000) -> dict[str, int]:
        """Merge all parts into files of about ``rows_per_file`` edge rows, sorted by
        graph_id (nodes by node_id, edges by dst, src within a graph). Atomic: see the
        module docstring. Takes the driver lock unless this store already holds it.

        Costs grow with the rows and parts, never their product: each output file is
        written a slice of about :attr:`slice_rows` rows at a time (sorted, one row
        group or more each), and each slice reads only the parts whose graph ids meet
        its range."""
        own_lock = not self.locked
        if own_lock:
            self.acquire_lock()
        try:
            # A fresh session that no worker has: any late write stays out of view. The
            # fence reads every committed part and leaves only whole ones in view (it
            # raises on a damaged sealed one), so they need no second check here.
            self.fence()
            self.clean()
            old = self.committed_parts()
            if len(old) <= 1:
                return {"parts_before": len(old), "parts_after": len(old)}
            ids, sizes, spans = self._graph_index()
            ranges = _cut(sizes, rows_per_file)  # index runs of about rows_per_file rows
            token = uuid.uuid4().hex[:8]
            new = [f"compact-{token}-{r:05d}" for r in range(len(ranges))]
            # Within each file, slices of about slice_rows rows (a graph's graphs row
            # counts as one, so graphs without edges are bounded too).
            slices = [
                [(start + a, start + b) for a, b in _cut(sizes[start:end] + 1, self.slice_rows)]
                for start, end in ranges
            ]
            bounds = [(int(ids[a]), int(ids[b - 1])) for file in slices for a, b in file]
            readers = list(_overlapping(spans, bounds))
            for table in self.tables:
                files = {_stem(f): f for f in self.part_files(table)}
                whole = self.dataset(table)
                assert whole is not None
                schema = whole.schema  # as one dataset of every part reads them
                k = 0
                for stem, file_slices in zip(new, slices, strict=True):
                    chunks = []
                    for _ in file_slices:
                        chunks.append((bounds[k], [files[s] for s in readers[k] if s in files]))
                        k += 1
                    self._put_parquet_stream(
                        self._path(table, f"{stem}.parquet{PENDING}"),
                        schema,
                        self._sorted_slices(table, schema, chunks),
                    )
            log = json.dumps({"token": token, "new": new, "old": old})
            self._put_text(self._path("compaction.json"), log)  # the commit point
            self._finish_compaction()
            logger.info("compacted %d parts into %d", len(old), len(new))
            return {"parts_before": len(old), "parts_after": len(new)}
        finally:
            if own_lock:
                self.release_lock()

    def _sorted_slices(
        self, table: str, schema: pa.Schema, chunks: list[tuple[tuple[int, int], list[str]]]
    ) -> Iterator[pa.Table]:
        """Each chunk's rows (graph ids ``lo..hi`` from its part files), sorted."""
        import pyarrow.dataset as ds

        gid = pc.field("graph_id")
        for (lo, hi), paths in chunks:
            if not paths:
                continue
            source = ds.dataset(paths, schema=schema, format="parquet", filesystem=self.fs)
            rows = source.to_table(filter=(gid >= lo) & (gid <= hi))
            if rows.num_rows:
                yield rows.sort_by(self.sort_keys[table])

    def _graph_index(self) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, str]]]:
        """Sorted graph ids, the rows each holds in the largest table, and each committed
        part's (lowest, highest graph id, name), for :meth:`compact`."""
        raise NotImplementedError

    def _put_parquet_stream(self, path: str, schema: pa.Schema, tables: Iterator[pa.Table]):
        """:meth:`_put_parquet` of the tables one after another (one file, same options)."""
        options = self._parquet_options(path, schema.names)

        def write(p: str) -> None:
            with pq.ParquetWriter(p, schema, filesystem=self.fs, **options) as writer:
                for t in tables:
                    writer.write_table(t)

        self._put(path, write)

    def _finish_compaction(self) -> None:
        log = self._compaction()
        if log is None:
            return
        self.check_lease()
        commit_first = self.tables[::-1]
        for table in commit_first:
            for stem in log["new"]:
                pending = self._path(table, f"{stem}.parquet{PENDING}")
                if self.files.exists(pending):
                    self.fs.move(pending, self._path(table, f"{stem}.parquet"))
            self.files.sync_dir(self._path(table))
        self._unseal(log["old"])  # the log already hides them from readers
        # Old commit parts first: once gone, their other tables' parts are orphans anyway.
        for table in commit_first:
            for stem in log["old"]:
                self.files.delete(self._path(table, f"{stem}.parquet"))
        self.files.delete(self._path("compaction.json"))


class RunStore(PartStore):
    """A run folder: ``run.json`` and the tables ``edges/``, ``nodes/``, ``graphs/``
    (the commit point), whose rows count each part's nodes and edges."""

    tables = ("edges", "nodes", "graphs")
    sort_keys = SORT_KEYS
    meta_file = "run.json"
    kind = "circuitray run folder"
    count_columns = ["n_kept_nodes", "n_kept_edges"]

    @property
    def run_json(self) -> Path | str:
        return self.meta_path

    def expected_rows(self, commit: pa.Table) -> dict[str, int]:
        """Rows the other tables' files of a part must hold, from its commit-table
        columns :attr:`count_columns`: every kept node and edge of its graphs (error
        rows keep none)."""
        return {
            "nodes": sum(n or 0 for n in commit["n_kept_nodes"].to_pylist()),
            "edges": sum(n or 0 for n in commit["n_kept_edges"].to_pylist()),
        }

    def _graph_index(self) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, str]]]:
        """Sorted graph ids, the rows each holds in the largest table (edges), and each
        committed part's (lowest, highest graph id, name): one read of the commit table."""
        ids, sizes, spans = [], [], []
        for f in self.part_files(self.commit_table):
            t = self._read_part(f, ["graph_id", "n_kept_edges"])
            if t.num_rows:
                gid = t["graph_id"].to_numpy()
                spans.append((int(gid.min()), int(gid.max()), _stem(f)))
                ids.append(gid)
                sizes.append(t["n_kept_edges"].fill_null(0).to_numpy())
        return _by_graph(ids, sizes, spans)

    def read_graphs(self, columns: list[str] | None = None) -> pa.Table:
        t = self.read_table("graphs", columns)
        if t is None:
            graphs = SCHEMAS["graphs"]
            schema = graphs if columns is None else pa.schema([graphs.field(c) for c in columns])
            return schema.empty_table()
        return t

    def graph_ids(self) -> np.ndarray:
        """The graph_id of every committed graphs row, as one int64 array: what a resume
        counts as done (:func:`circuitray.jobs.session.pending_prompts`), without a
        Python object per graph."""
        ids = self.read_graphs(columns=["graph_id"])["graph_id"]
        return ids.to_numpy().astype(np.int64, copy=False)

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
        self.check_lease()
        dropped: list[int] = []
        for f in self.part_files("graphs"):
            t = self._read_part(f)
            is_error = pc.field("status") == "error"
            errors = t.filter(is_error)["graph_id"].to_pylist()
            if not errors:
                continue
            dropped += errors
            keep = t.filter(~is_error)
            stem = _stem(f)
            if keep.num_rows == 0:
                # Unseal, remove the commit point, then the (empty) orphan parts.
                self._unseal([stem])
                self.files.delete(f)
                for table in ("nodes", "edges"):
                    self.files.delete(self._path(table, f"{stem}.parquet"))
            else:
                self._put_parquet(f, keep)
        return dropped


class InterventionStore(PartStore):
    """An intervention folder: ``intervention.json`` plus one table, ``results/``, with
    the run folder's protocol (atomic parts, orphan cleanup, locking, compaction).

    A part holds every result row of its prompts, so a prompt is done exactly when a
    committed part has rows for its graph_id.
    """

    tables = ("results",)
    sort_keys = RESULT_SORT_KEYS
    meta_file = "intervention.json"
    kind = "circuitray intervention folder"

    count_columns: list[str] = []  # one table: the commit point holds every row

    def _graph_index(self) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, str]]]:
        ids, sizes, spans = [], [], []
        for f in self.part_files("results"):
            t = self._read_part(f, ["graph_id"])
            if t.num_rows:
                counts = t.group_by("graph_id").aggregate([("graph_id", "count")])
                gid = counts["graph_id"].to_numpy()
                spans.append((int(gid.min()), int(gid.max()), _stem(f)))
                ids.append(gid)
                sizes.append(counts["graph_id_count"].to_numpy())
        return _by_graph(ids, sizes, spans)

    def drop_graphs_with_errors(self) -> list[int]:
        """Remove every row of the graphs that have an error row, so a resumed run
        computes them again. A graph's rows are all in one part (a batch, or a
        compaction range), and each part is rewritten atomically."""
        self.check_lease()
        dropped: list[int] = []
        for f in self.part_files("results"):
            t = self._read_part(f)
            bad = t.filter(pc.field("status") == "error")["graph_id"].unique()
            if len(bad) == 0:
                continue
            dropped += bad.to_pylist()
            keep = t.filter(~pc.field("graph_id").isin(bad))
            if keep.num_rows == 0:
                self._unseal([_stem(f)])
                self.files.delete(f)
            else:
                self._put_parquet(f, keep)
        return dropped

    def done_graph_ids(self) -> set[int]:
        t = self.read_table("results", ["graph_id"])
        return set() if t is None else set(t["graph_id"].to_pylist())
