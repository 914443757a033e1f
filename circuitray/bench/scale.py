"""``circuitray bench scale``: what the driver and the store cost per prompt, 10^3 to 10^6.

No model runs: the workers make small synthetic graphs, so every second measured is
the machinery's (Ray calls, part writes, the driver's bookkeeping, resume, compaction,
queries), not attribution's. The procedure:

1. For each size n (:data:`SIZES`: 10^3, 10^4, 10^5, 10^6) write a prompt file of n
   synthetic prompts (Parquet, column by column, in the benchmark folder; reused when
   present) and pick the batch size a user would (:func:`batch_size_for`: 8, the
   default, at 10^3, growing as n^0.6 to 512 at 10^6, so part files stay in the low
   thousands).
2. Run the real driver on it in a fresh Python process per size (its own local Ray,
   its own peak RSS): :class:`ScaleJob` is :class:`AttributionJob` with its workers
   swapped, so the pending prompts, lock, fingerprint, fence, dispatch, retries, part
   commits, compaction, tally and run.json are the real code. :class:`SyntheticWorker`
   actors have AttributionWorker's interface (``info()``, ``process(part_name,
   items)``, the session check before writing) and its write path: one
   ``RunStore.write_part`` per batch of graphs, nodes and edges tables of the real
   schemas, renumbered copies of a few graphs from :mod:`circuitray.bench.synthetic`'s
   generator (:class:`GraphShape`).
3. Measure the run: the driver's peak RSS through dispatch (``VmHWM`` before
   compaction) and over the whole run, dispatch seconds per prompt (from every actor
   ready to the last batch back, :attr:`JobResult.dispatch_s`), the driver's CPU per
   prompt, committed part files before compaction, compaction time and its peak RSS
   above its start (:class:`MeasuredStore`).
4. Resume check: Ray shut down, the same job again on the complete folder (a rerun of
   ``circuitray run``): the seconds from reading the prompt file to run.json written
   with nothing pending, and its peak RSS.
5. A named query (``constraint_stats``) on the compacted folder: seconds, rows.
6. With ``s3``, one more run at :data:`S3_SIZE` prompts into a local S3 server (moto,
   as ``tests/storage/test_s3.py``) in this process, which counts every request by
   method and by kind of object, split into run, compaction, resume and query.
7. Fit each figure's growth exponent (least squares of log figure on log n; per-prompt
   costs should be flat, about 0, totals at most 1), check the goals (:data:`GOALS`)
   at the largest size, and return the record (:func:`run_scale_bench`);
   :func:`print_scale` prints the table and exponents.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from circuitray.bench.environment import RssPeak, git_commit, machine_info, peak_rss_kb
from circuitray.bench.scale_worker import GraphShape, SyntheticWorker
from circuitray.errors import CircuitrayError
from circuitray.jobs.attribution_job import AttributionJob, RunConfig
from circuitray.models.loading import ModelSpec
from circuitray.storage.run_store import RunStore

logger = logging.getLogger(__name__)

__all__ = [
    "GOALS",
    "S3_SIZE",
    "SIZES",
    "GraphShape",
    "MeasuredStore",
    "ScaleJob",
    "SyntheticWorker",
    "batch_size_for",
    "fit_exponent",
    "print_scale",
    "run_scale_bench",
    "write_prompt_file",
]

SIZES = (1_000, 10_000, 100_000, 1_000_000)
S3_SIZE = 100_000
QUERY = "constraint_stats"
CONSTRAINTS = ("simple_mapping", "first_letter", "rhyme", "count")
# The acceptance, checked at the largest size (not asserted by the tests).
GOALS = {
    "driver_rss_mb": 1024.0,  # the driver's peak RSS over the whole run, MiB
    "resume_s": 30.0,
    "dispatch_ratio": 1.5,  # dispatch s/prompt at the largest size / at the smallest
}
# (record key, column heading, how it should grow: "flat" per prompt, "linear" total)
FIGURES = (
    ("parts", "parts", "n^0.4 (batch size)"),
    ("driver_rss_mb", "driver RSS MiB", "flat"),
    ("dispatch_rss_mb", "RSS to dispatch end", "flat"),
    ("dispatch_us_per_prompt", "dispatch us/prompt", "flat"),
    ("driver_cpu_us_per_prompt", "driver CPU us/prompt", "flat"),
    ("resume_s", "resume check s", "<= 1"),
    ("compact_s", "compaction s", "<= 1"),
    ("compact_peak_mb", "compaction +MiB", "<= 1"),
    ("query_s", f"{QUERY} s", "<= 1"),
)


def batch_size_for(n: int) -> int:
    """The batch size a user would pick for ``n`` prompts: the default 8 at 10^3,
    then growing as n^0.6 (a power of two: 32, 128, 512 at 10^4, 10^5, 10^6)."""
    return max(1, 2 ** round(math.log2(8 * (n / 1000) ** 0.6)))


def write_prompt_file(path: Path, n: int, *, chunk: int = 100_000) -> Path:
    """A Parquet prompt file of ``n`` synthetic prompts, written a chunk at a time
    (atomically, kept for the next benchmark run)."""
    if path.exists() and pq.read_metadata(path).num_rows == n:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    schema = pa.schema([(c, pa.string()) for c in ("prompt_id", "prompt", "constraint_type")])
    with pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, n, chunk):
            ids = range(start, min(n, start + chunk))
            writer.write_table(
                pa.table(
                    {
                        "prompt_id": [f"scale-{i:07d}" for i in ids],
                        "prompt": [f"synthetic prompt {i}: the next word is" for i in ids],
                        "constraint_type": [CONSTRAINTS[i % len(CONSTRAINTS)] for i in ids],
                    },
                    schema=schema,
                )
            )
    tmp.replace(path)
    return path


# -- the job ----------------------------------------------------------------------------
class MeasuredStore(RunStore):
    """A run store that measures its compaction: parts before, seconds, peak RSS above
    its start, and the process's peak RSS before it (the driver through dispatch)."""

    measured: dict[str, Any]

    def compact(self, *, rows_per_file: int = 20_000_000) -> dict[str, int]:
        before_kb = peak_rss_kb() or 0
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        with RssPeak() as rss:
            stats = super().compact(rows_per_file=rows_per_file)
        self.measured = {
            "compact_s": time.perf_counter() - t0,
            "compact_peak_mb": rss.extra_mb,
            "dispatch_rss_mb": before_kb / 1024,
            "cpu_before_compact_s": cpu.ru_utime + cpu.ru_stime,
            "compact_wall_start": time.time() - (time.perf_counter() - t0),
            **stats,
        }
        return stats


class ScaleJob(AttributionJob):
    """``circuitray run`` with :class:`SyntheticWorker` actors; everything else is
    AttributionJob's. ``model`` in the config must name a folder with a config.json
    (the model check before Ray starts); no worker loads it."""

    def __init__(self, config: RunConfig, *, shape: GraphShape):
        super().__init__(config)
        self.shape = shape
        self.store = MeasuredStore(config.out)

    def worker(self) -> tuple[type, dict]:
        return SyntheticWorker, {"shape": asdict(self.shape), "run_dir": self.store.uri}


def placeholder_model(root: Path) -> ModelSpec:
    """A model folder that passes the driver's model check; the workers load none."""
    folder = root / "no-model"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(
        json.dumps({"architectures": ["none"], "note": "circuitray bench scale: no weights"})
    )
    return ModelSpec(model=str(folder), transcoders="none")


# -- one size, in a child process ------------------------------------------------------
def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its RSS now (Linux); whether it could."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _FirstPrompt:
    """``on_progress`` that notes the driver's CPU seconds when the first batch is back."""

    def __init__(self) -> None:
        self.cpu_s: float | None = None
        self.done = 0

    def __call__(self, done: int, total: int, summary: dict | None) -> None:
        if summary is not None and self.cpu_s is None:
            self.cpu_s, self.done = _cpu_s(), done


def measure_run(
    *,
    n: int,
    batch_size: int,
    prompts: str,
    out: str,
    model: dict,
    shape: dict,
    actors: int | None = None,
) -> dict[str, Any]:
    """Steps 2-3 for one size in this process (:func:`run_scale_bench` runs it in a
    fresh one per size): the run, its dispatch and its compaction."""
    graph_shape = GraphShape(**shape)
    config = RunConfig(
        prompts=prompts, out=out, model=ModelSpec(**model), batch_size=batch_size, actors=actors
    )
    rec: dict[str, Any] = {"n": n, "batch_size": batch_size}
    _reset_peak_rss()  # a no-op in a fresh process; else this size's peak, not earlier ones'
    rec["run_wall_start"] = time.time()
    first = _FirstPrompt()
    t0 = time.perf_counter()
    job = ScaleJob(config, shape=graph_shape)
    rec["read_prompts_rss_mb"] = (peak_rss_kb() or 0) / 1024
    result = job.execute(start=t0, on_progress=first)
    rec["run_s"] = time.perf_counter() - t0
    rec["driver_rss_mb"] = (peak_rss_kb() or 0) / 1024
    m = job.store.measured if isinstance(job.store, MeasuredStore) else {}
    if result.computed != n or result.ok != n:
        raise RuntimeError(f"scale run of {n}: {result.computed} computed, {result.ok} ok")
    steady = n - first.done
    cpu_end = m.get("cpu_before_compact_s", _cpu_s())
    rec.update(
        computed=result.computed,
        ray_start_s=result.ray_start_s,
        dispatch_s=result.dispatch_s,
        dispatch_us_per_prompt=1e6 * result.dispatch_s / n,
        # From the first batch back to the last: the driver's own work per prompt.
        driver_cpu_us_per_prompt=(
            1e6 * (cpu_end - first.cpu_s) / steady if steady and first.cpu_s else None
        ),
        parts=m.get("parts_before"),
        parts_after=m.get("parts_after"),
        compact_s=m.get("compact_s"),
        compact_peak_mb=m.get("compact_peak_mb"),
        dispatch_rss_mb=m.get("dispatch_rss_mb"),
        compact_wall_start=m.get("compact_wall_start"),
        workers=len(result.workers),
        run_end_wall=time.time(),
    )
    return rec


def measure_resume(
    *, n: int, batch_size: int, prompts: str, out: str, model: dict, shape: dict, **_: Any
) -> dict[str, Any]:
    """Steps 4-5 for one size in this process (a fresh one: a rerun of ``circuitray
    run`` on the complete folder, then the named query)."""
    from circuitray.query.engine import run_query

    config = RunConfig(prompts=prompts, out=out, model=ModelSpec(**model), batch_size=batch_size)
    rec: dict[str, Any] = {"resume_wall_start": time.time()}
    reset = _reset_peak_rss()
    t1 = time.perf_counter()
    again = ScaleJob(config, shape=GraphShape(**shape)).execute(start=t1)
    rec["resume_s"] = time.perf_counter() - t1
    rec["resume_rss_mb"] = (peak_rss_kb() or 0) / 1024 if reset else None
    if again.computed != 0 or again.skipped != n:
        raise RuntimeError(f"resume of {n}: {again.computed} computed, {again.skipped} skipped")

    rec["query_wall_start"] = time.time()
    t2 = time.perf_counter()
    table = run_query(QUERY, [out])
    rec["query_s"] = time.perf_counter() - t2
    rec["query_rows"] = table.num_rows
    graphs = sum(table["graphs"].to_pylist()) if "graphs" in table.column_names else None
    if graphs is not None and graphs != n:
        raise RuntimeError(f"{QUERY} on {n} prompts counts {graphs} graphs")
    rec["end_wall"] = time.time()
    return rec


PHASES = {"run": measure_run, "resume": measure_resume}


def child_main() -> None:
    """Entry of a measuring process: ``argv[1]`` the phase (:data:`PHASES`), ``argv[2]``
    its JSON arguments, ``argv[3]`` where its JSON record goes."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    record = PHASES[sys.argv[1]](**json.loads(sys.argv[2]))
    Path(sys.argv[3]).write_text(json.dumps(record) + "\n")


def measure_size(
    args: dict[str, Any], *, isolate: bool, env: dict[str, str] | None = None, timeout_s: float
) -> dict[str, Any]:
    """Steps 2-5 for one size: the run, then the resume check and the query, each in
    a fresh process (``isolate``) or both in this one (Ray then stays up)."""
    if not isolate:
        return {**measure_run(**args), **measure_resume(**args)}
    run = _in_child("run", args, env=env, timeout_s=timeout_s)
    return {**run, **_in_child("resume", args, env=env, timeout_s=timeout_s)}


def _in_child(
    phase: str, args: dict, *, env: dict[str, str] | None = None, timeout_s: float
) -> dict:
    with tempfile.TemporaryDirectory(prefix="circuitray-scale-") as tmp:
        out = Path(tmp) / "record.json"
        code = "from circuitray.bench.scale import child_main; child_main()"
        child_env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
        child_env.pop("RAY_ADDRESS", None)  # each size measures a local Ray of its own
        proc = subprocess.run(
            [sys.executable, "-c", code, phase, json.dumps(args), str(out)],
            env=child_env,
            timeout=timeout_s,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not out.exists():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise RuntimeError(f"scale benchmark ({phase}, {args['n']} prompts) failed:\n{tail}")
        return json.loads(out.read_text())


# -- S3 ---------------------------------------------------------------------------------
class CountingS3Server:
    """moto's S3 server on 127.0.0.1 (as ``tests/storage/test_s3.py`` starts it) behind
    a WSGI layer that records every request: (time, method, kind of object)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.requests: list[tuple[float, str, str]] = []
        outer = self

        class _Server(ThreadedMotoServer):
            def _server_entry(self) -> None:
                from moto.moto_server.werkzeug_app import (
                    DomainDispatcherApplication,
                    MotoRequestHandler,
                    create_backend_app,
                )
                from werkzeug.serving import make_server

                app = DomainDispatcherApplication(create_backend_app)

                def counting(environ, start_response):
                    outer.record(environ)
                    return app(environ, start_response)

                self._server = make_server(
                    self._ip_address, self._port, counting, True, request_handler=MotoRequestHandler
                )
                self._server_ready_event.set()
                self._server.serve_forever()

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.server = _Server(ip_address="127.0.0.1", port=0, verbose=False)

    @staticmethod
    def kind(path: str, query: str) -> str:
        name = path.rsplit("/", 1)[-1]
        if "list-type" in query or "prefix=" in query or path.count("/") <= 1:
            return "list"
        for table in ("graphs", "nodes", "edges"):
            if f"/{table}/" in path:
                return f"{table} part"
        return (
            name if name in (".lock", "manifest.json", "run.json", "compaction.json") else "other"
        )

    def record(self, environ: dict) -> None:
        path, query = environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")
        self.requests.append(
            (time.time(), environ.get("REQUEST_METHOD", "?"), self.kind(path, query))
        )

    def __enter__(self) -> CountingS3Server:
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def counts(self, start: float, end: float) -> dict[str, Any]:
        """Requests between two ``time.time()`` instants: total, by method, by kind."""
        by_method: dict[str, int] = {}
        by_kind: dict[str, int] = {}
        total = 0
        for t, method, kind in self.requests:
            if start <= t < end:
                total += 1
                by_method[method] = by_method.get(method, 0) + 1
                by_kind[kind] = by_kind.get(kind, 0) + 1
        return {"total": total, "by_method": by_method, "by_kind": by_kind}


def _s3_run(
    *, n: int, batch_size: int, prompts: Path, model: ModelSpec, shape: GraphShape, timeout_s: float
) -> dict[str, Any]:
    import pyarrow.fs as pafs

    keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    with CountingS3Server() as s3:
        env = {**keys, "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3.endpoint}
        pafs.S3FileSystem(
            access_key="testing",
            secret_key="testing",
            endpoint_override=s3.endpoint.removeprefix("http://"),
            scheme="http",
            allow_bucket_creation=True,
        ).create_dir("circuitray-scale")
        args = {
            "n": n,
            "batch_size": batch_size,
            "prompts": str(prompts),
            "out": f"s3://circuitray-scale/runs/n{n}",
            "model": asdict(model),
            "shape": asdict(shape),
        }
        rec = measure_size(args, isolate=True, env=env, timeout_s=timeout_s)
        phases = {
            "run": (rec["run_wall_start"], rec["compact_wall_start"] or rec["run_end_wall"]),
            "compaction": (rec["compact_wall_start"] or 0, rec["run_end_wall"] + 0.5),
            "resume": (rec["resume_wall_start"], rec["query_wall_start"]),
            "query": (rec["query_wall_start"], rec["end_wall"] + 1),
        }
        rec["requests"] = {k: s3.counts(a, b) for k, (a, b) in phases.items()}
        total = sum(r["total"] for r in rec["requests"].values())
        rec["requests_total"] = total
        rec["requests_per_prompt"] = rec["requests"]["run"]["total"] / n
        rec["requests_per_batch"] = rec["requests"]["run"]["total"] / -(-n // batch_size)
    return rec


# -- the whole benchmark ----------------------------------------------------------------
def fit_exponent(ns: list[int], values: list[float | None]) -> float | None:
    """The slope of log(value) on log(n) by least squares (None under two positive
    values): cost ~ n^slope."""
    pts = [(math.log(n), math.log(v)) for n, v in zip(ns, values, strict=True) if v and v > 0]
    if len(pts) < 2:
        return None
    x, y = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


def _goals(rows: list[dict]) -> dict[str, dict]:
    first, last = rows[0], rows[-1]
    ratio = last["dispatch_us_per_prompt"] / first["dispatch_us_per_prompt"]
    at = f"at {last['n']:,} prompts"
    return {
        "driver_rss_mb": {
            "value": last["driver_rss_mb"],
            "goal": f"< {GOALS['driver_rss_mb']:.0f} MiB {at}",
            "met": last["driver_rss_mb"] < GOALS["driver_rss_mb"],
        },
        "resume_s": {
            "value": last["resume_s"],
            "goal": f"< {GOALS['resume_s']:.0f} s {at}",
            "met": last["resume_s"] < GOALS["resume_s"],
        },
        "dispatch_ratio": {
            "value": ratio,
            "goal": f"<= {GOALS['dispatch_ratio']}x of {first['n']:,} {at}",
            "met": ratio <= GOALS["dispatch_ratio"],
        },
    }


def _size_batches(
    sizes: tuple[int, ...], batch_sizes: tuple[int, ...] | None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The sizes in increasing order with their batch sizes (given, one per size, or
    :func:`batch_size_for`); wrong counts or sizes are errors a user can fix."""
    if batch_sizes is not None and len(batch_sizes) != len(sizes):
        raise CircuitrayError(
            f"--batch-sizes: {len(batch_sizes)} batch sizes for {len(sizes)} sizes"
        )
    if len(set(sizes)) != len(sizes) or min(sizes) < 1:
        raise CircuitrayError(f"--sizes {sizes}: give distinct prompt counts of 1 or more")
    pairs = sorted(zip(sizes, batch_sizes or [batch_size_for(n) for n in sizes], strict=True))
    return tuple(n for n, _ in pairs), tuple(b for _, b in pairs)


def run_scale_bench(
    *,
    sizes: tuple[int, ...] = SIZES,
    batch_sizes: tuple[int, ...] | None = None,
    out: Path | None = None,
    s3: bool = True,
    s3_size: int = S3_SIZE,
    shape: GraphShape | None = None,
    actors: int | None = None,
    keep: bool = False,
    isolate: bool = True,
    timeout_s: float = 1800.0,
) -> dict[str, Any]:
    """Steps 1-7 of the module docstring; returns the record. ``out``: the benchmark
    folder (default ``$CIRCUITRAY_HOME/bench/scale``): prompt files are kept there, run
    folders removed unless ``keep``. ``isolate`` off measures every size in this
    process on one Ray (quicker, for tests; peak RSS is then reset per size and holds
    what earlier sizes left). ``timeout_s`` bounds each child process."""
    import shutil

    from circuitray.models.registry import circuitray_home

    shape = shape or GraphShape()
    sizes, batches = _size_batches(sizes, batch_sizes)
    root = Path(out) if out is not None else Path(circuitray_home()) / "bench" / "scale"
    root.mkdir(parents=True, exist_ok=True)
    model = placeholder_model(root)
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    rows: list[dict] = []
    for n, batch in zip(sizes, batches, strict=True):
        prompts = write_prompt_file(root / f"prompts-{n}.parquet", n)
        run_dir = root / f"run-{n}"
        shutil.rmtree(run_dir, ignore_errors=True)
        logger.info("scale: %d prompts in batches of %d", n, batch)
        args = {
            "n": n,
            "batch_size": batch,
            "prompts": str(prompts),
            "out": str(run_dir),
            "model": asdict(model),
            "shape": asdict(shape),
            "actors": actors,
        }
        try:
            rec = measure_size(args, isolate=isolate, timeout_s=timeout_s)
        finally:
            if not keep:
                shutil.rmtree(run_dir, ignore_errors=True)
        figures = ("dispatch_us_per_prompt", "driver_rss_mb", "resume_s")
        logger.info(
            "scale: %d prompts: dispatch %.1f us/prompt, driver %.0f MiB, resume %.2f s",
            n,
            *(rec[k] for k in figures),
        )
        rows.append(rec)
    ns = [r["n"] for r in rows]
    exponents = {key: fit_exponent(ns, [r.get(key) for r in rows]) for key, _, _ in FIGURES}
    s3_record = None
    if s3:
        prompts = write_prompt_file(root / f"prompts-{s3_size}.parquet", s3_size)
        logger.info("scale: %d prompts on a local S3 server", s3_size)
        s3_record = _s3_run(
            n=s3_size,
            batch_size=batch_size_for(s3_size),
            prompts=prompts,
            model=model,
            shape=shape,
            timeout_s=timeout_s,
        )
    return {
        "format": "circuitray-bench-scale/1",
        "started_at": started.isoformat(timespec="seconds"),
        "wall_s": time.perf_counter() - t0,
        "git_commit": git_commit(),
        "machine": machine_info(),
        "shape": asdict(shape),
        "rows": rows,
        "exponents": exponents,
        "expected_growth": {key: growth for key, _, growth in FIGURES},
        "goals": _goals(rows),
        "s3": s3_record,
    }


# -- report -----------------------------------------------------------------------------
def _cell(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def print_scale(record: dict, *, console: Any) -> None:
    """The figures by size with each one's exponent, the goals, and the S3 run."""
    from rich.table import Table

    rows, exps = record["rows"], record["exponents"]
    shape = record["shape"]
    table = Table(
        title=f"circuitray bench scale: synthetic graphs of {shape['nodes']} nodes, "
        f"{shape['edges']} edges; {record['machine'].get('cpu_count', '?')} CPU cores"
    )
    table.add_column("prompts", justify="right")
    table.add_column("batch", justify="right")
    for _, heading, _ in FIGURES:
        table.add_column(heading, justify="right")
    for r in rows:
        table.add_row(
            f"{r['n']:,}", str(r["batch_size"]), *[_cell(r.get(key)) for key, _, _ in FIGURES]
        )
    table.add_section()
    table.add_row(
        "exponent",
        "",
        *[_cell(None if exps[k] is None else round(exps[k], 2)) for k, _, _ in FIGURES],
    )
    table.add_row("expected", "", *[g for _, _, g in FIGURES])
    console.print(table)
    for name, g in record["goals"].items():
        mark = "[green]met[/]" if g["met"] else "[red]NOT met[/]"
        console.print(f"goal {name}: {g['value']:.3g} ({g['goal']}): {mark}")
    s3 = record.get("s3")
    if s3:
        req = s3["requests"]
        parts = ", ".join(f"{k} {v['total']:,}" for k, v in req.items())
        console.print(
            f"S3 (local moto server), {s3['n']:,} prompts in batches of {s3['batch_size']}: "
            f"{s3['requests_total']:,} requests ({parts}); run {s3['requests_per_prompt']:.3f} "
            f"per prompt, {s3['requests_per_batch']:.1f} per batch; dispatch "
            f"{s3['dispatch_us_per_prompt']:.0f} us/prompt, compaction {s3['compact_s']:.1f} s, "
            f"resume {s3['resume_s']:.2f} s, {QUERY} {s3['query_s']:.2f} s"
        )
        console.print(f"  run requests by kind: {req['run']['by_kind']}")
        console.print(f"  run requests by method: {req['run']['by_method']}")
