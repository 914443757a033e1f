"""``circuitray import-graphs``: graph JSON files into one run folder, exactly once.

1. Expand the inputs (files, and the ``*.json`` files of folders, sorted) and read and
   check every file (:func:`circuitray.ingest.graph_json.read_graph_json`) before
   anything is written: one bad file is named in one line and nothing is written.
2. Take the folder's driver lock; refuse a folder that holds an attribution run or an
   intervention folder. Start a session (:meth:`RunStore.start_session`: the fence),
   then remove crash leftovers (:meth:`RunStore.clean`).
3. run.json's ``sources`` is the import log, keyed by each file's SHA-256: a file
   whose hash is there and whose graph is committed adds nothing (the same file under
   another name included). A new file gets the next graph_id and its entry is written
   (``committed: false``) before its part, so a crash between the two leaves an entry
   whose graph_id the next import of that file writes again (the crashed session's
   part is never committed: its graphs file is missing, or the fence leaves it out).
   A prompt_id is the file's slug, made unique in the folder with the hash's start.
4. Each graph is one part (edges, nodes, then graphs: the commit point), named by the
   session like an actor's; then its entry is marked committed.
5. Record status, counts and finish time in run.json and release the lock, also on
   errors.

The folder then answers every named query, ``sql``, ``compare``, ``report``, ``export``
and ``serve`` like a computed run's. Its run.json has no ``attribution`` or
``prune``: the sources record the thresholds each file was made with.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from circuitray.errors import CircuitrayError, RunDirError
from circuitray.ingest.graph_json import MAX_BYTES, ImportedGraph, read_graph_json
from circuitray.schema import GRAPH_SCHEMA, graph_row
from circuitray.storage.run_store import RUN_FORMAT, RunStore

logger = logging.getLogger(__name__)

__all__ = ["ImportConfig", "ImportResult", "import_graphs"]

KIND = "graph-json import"


@dataclass(kw_only=True)
class ImportConfig:
    """What ``circuitray import-graphs`` imports, and where.

    Attributes:
        sources: Graph JSON files, or folders whose ``*.json`` files are read (sorted).
        out: The run folder (local; created if missing).
        max_bytes: Files larger than this are refused before they are read.
    """

    sources: list[str]
    out: str
    max_bytes: int = MAX_BYTES

    def __post_init__(self) -> None:
        if not self.sources:
            raise CircuitrayError("no graph files given")
        if self.max_bytes < 1:
            raise CircuitrayError(f"--max-bytes {self.max_bytes}: must be at least 1")


@dataclass
class ImportResult:
    """What an import did.

    Attributes:
        run_dir: The run folder.
        total: Graphs the folder holds now.
        imported: Files imported in this call (graph_id and file).
        skipped: Files already in the folder (same SHA-256), with their graph_id.
        elapsed_s: Wall time.
    """

    run_dir: str
    total: int = 0
    imported: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    elapsed_s: float = 0.0


def _files(sources: list[str]) -> list[Path]:
    files: list[Path] = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            found = sorted(q for q in p.glob("*.json") if q.is_file())
            if not found:
                raise CircuitrayError(f"{p}: no *.json graph files in this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise CircuitrayError(f"{p}: no such file or folder")
    return files


def _new_meta() -> dict:
    from circuitray.machine import package_versions

    return {
        "format": RUN_FORMAT,
        "kind": KIND,
        "graph_id": "order of import (0-based); sources maps each to its file",
        "node_id": "circuit-tracer's layout over the kept nodes: features, errors, tokens, "
        "logits (the files hold pruned graphs only)",
        "versions": package_versions(("circuitray", "pyarrow")),
        "sources": [],
    }


def import_graphs(config: ImportConfig) -> ImportResult:
    """Import ``config.sources`` into ``config.out`` (module docstring)."""
    start = time.perf_counter()
    if "://" in config.out:
        raise CircuitrayError(f"{config.out}: graphs are imported into a local folder")
    graphs = _read_all(_files(config.sources), max_bytes=config.max_bytes)
    store = RunStore(config.out)
    store.check_kind()
    store.acquire_lock()
    result = ImportResult(run_dir=str(store.root))
    meta: dict = {}
    started = False  # run.json is ours to mark failed only once our session started
    try:
        meta = _existing_meta(store)
        session = store.start_session(meta)
        started = True
        store.clean()
        log = _SourceLog.of(meta, committed=set(store.graph_ids().tolist()))
        for g in graphs:
            _import_one(g, store=store, meta=meta, log=log, session=session, result=result)
        result.total = len(store.graph_ids())
        _finish_meta(meta, total=result.total)
        store.write_meta(meta)
    except BaseException as e:
        if started:
            _record_failure(store, meta, e)
        raise
    finally:
        store.release_lock()
    result.elapsed_s = time.perf_counter() - start
    return result


def _read_all(files: list[Path], *, max_bytes: int) -> list[ImportedGraph]:
    """Step 1: every file read and checked; the same bytes twice imported once."""
    graphs: list[ImportedGraph] = []
    seen: dict[str, str] = {}
    for path in files:
        g = read_graph_json(path, max_bytes=max_bytes)
        if g.sha256 in seen:  # the same bytes twice on the command line: once
            logger.info("%s: the same file as %s", path, seen[g.sha256])
            continue
        seen[g.sha256] = str(path)
        graphs.append(g)
    return graphs


def _existing_meta(store: RunStore) -> dict:
    """Step 2: the folder's run.json if it holds imported graphs, a new one if the
    folder is new; a folder of anything else is refused."""
    if store.exists():
        meta = store.read_meta()
        if meta.get("kind") != KIND:
            raise RunDirError(
                f"{store.root}: holds a circuitray run, not imported graphs; "
                "give a new --out folder"
            )
        return meta
    if store.has_parts():
        raise RunDirError(f"{store.root}: has parts but no run.json; give a new --out")
    return _new_meta()


@dataclass(kw_only=True)
class _SourceLog:
    """Step 3's import log: run.json's ``sources`` by SHA-256, and what the next new
    file gets (its graph_id, a prompt_id not yet taken).

    Attributes:
        entries: run.json's source entries by their file's SHA-256 (the same dicts).
        committed: The graph_ids the folder holds committed.
        next_id: The graph_id of the next new file.
        prompt_ids: The prompt_ids taken.
    """

    entries: dict[str, dict]
    committed: set[int]
    next_id: int
    prompt_ids: set[str | None]

    @classmethod
    def of(cls, meta: dict, *, committed: set[int]) -> _SourceLog:
        sources = meta["sources"]
        return cls(
            entries={e["sha256"]: e for e in sources},
            committed=committed,
            next_id=max((e["graph_id"] for e in sources), default=-1) + 1,
            prompt_ids={e.get("prompt_id") for e in sources},
        )

    def add(self, g: ImportedGraph, *, meta: dict) -> dict:
        """A new file's entry, appended to ``meta``'s sources (not yet committed)."""
        prompt_id = g.graph["prompt_id"]
        if prompt_id in self.prompt_ids:
            prompt_id = f"{prompt_id}-{g.sha256[:12]}"
        self.prompt_ids.add(prompt_id)
        entry = {
            "graph_id": self.next_id,
            "prompt_id": prompt_id,
            "sha256": g.sha256,
            "bytes": g.size,
            "committed": False,
            **g.source,
            "labels": {str(k): v for k, v in g.labels.items()},
        }
        self.next_id += 1
        meta["sources"].append(entry)
        self.entries[g.sha256] = entry
        return entry


def _import_one(
    g: ImportedGraph,
    *,
    store: RunStore,
    meta: dict,
    log: _SourceLog,
    session: str,
    result: ImportResult,
) -> None:
    """Steps 3 and 4 for one file: skipped if its graph is committed, else its entry
    written first, then its part, then the entry marked committed."""
    entry = log.entries.get(g.sha256)
    if entry is not None and entry["graph_id"] in log.committed:
        if not entry.get("committed"):
            entry["committed"] = True
            store.write_meta(meta)
        result.skipped.append({"graph_id": entry["graph_id"], "file": g.path})
        return
    if entry is None:  # the intent first: a crash after the part leaves it found
        entry = log.add(g, meta=meta)
        store.write_meta(meta)
    gid = entry["graph_id"]
    nodes, edges = g.tables(gid)
    row = graph_row(gid, {"prompt_id": entry["prompt_id"], "prompt": g.graph["prompt"]})
    row.update({k: v for k, v in g.graph.items() if k in row and k != "prompt_id"})
    store.write_part(
        f"part-{gid}-{gid}-{session}",
        {
            "graphs": pa.Table.from_pylist([row], schema=GRAPH_SCHEMA),
            "nodes": nodes,
            "edges": edges,
        },
    )
    entry["committed"] = True
    store.write_meta(meta)
    result.imported.append({"graph_id": gid, "file": g.path})


def _finish_meta(meta: dict, *, total: int) -> None:
    """Step 5: status, counts and finish time; the model where every file names one."""
    scans = {e.get("scan") for e in meta["sources"]}
    if len(scans) == 1 and None not in scans:  # the model, where export looks for it
        meta["scan"] = scans.pop()
    meta.update(
        status="complete",
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        counts={"total": total, "ok": total, "error": 0},
    )


def _record_failure(store: RunStore, meta: dict, error: BaseException) -> None:
    """Step 5 on errors: run.json says failed, and why (its first line)."""
    text = str(error)
    meta.update(status="failed", error=text.splitlines()[0] if text else repr(error))
    try:
        store.write_meta(meta)
    except Exception:  # noqa: BLE001 - the first error is the one to report
        logger.warning("could not record the failure in run.json")
