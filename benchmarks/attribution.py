"""Attribution benchmarks: circuitray next to a hand-written loop, in one run.

Every figure comes from :func:`run_attribution_bench`, which measures both sides on
the same prompt file, model, :class:`AttributionConfig`, :class:`PruneConfig`, batch
size and torch thread count:

1. Prompts: ``generate_ws2(n_prompts, seed)``, written once to a Parquet prompt file
   that every measurement reads.
2. Dispatch overhead: ``repeats`` rounds of :func:`plain_loop` and a 1-actor
   :func:`circuitray_run`, alternating which goes first (P C, C P, ...) so that drift on
   a shared machine hits both sides. Per-graph time is steady-state time / graphs:

   - plain loop: from after its model load to after its last Parquet write;
   - circuitray: ``elapsed_s - ray_start_s`` of :func:`circuitray.run`, plus the
     compaction ``run`` does at its end (the run is made with ``compact=False`` and
     compacted right after, timed, which leaves the same folder). ``ray_start_s``
     spans ``ray.init``, actor creation and each actor's model load: the driver waits
     for every actor's ``info()``, which answers only after the constructor loaded.

   Model load is therefore outside both per-graph times; it is reported as the plain
   loop's ``load_s`` next to circuitray's ``ray_start_s``. Neither side warms the model
   up before its timed prompts: an AttributionWorker cannot be warmed up without
   changing it, so the plain loop does exactly what the actor does (load, then the
   prompts in order) and any first-prompt cost falls on both. The figure is the ratio
   of the median per-graph times; each round's own ratio shows the spread. The two
   sides do not prune the same way (the plain loop calls circuit-tracer's
   ``prune_graph``; circuitray's ``flatten_graph`` has its own pruning pass, with the
   same masks, plus nodes and scores), so a per-graph breakdown of each side is kept,
   and ``dispatch_s``, what a circuitray run adds per graph to the actors' own
   ``attribute_prompt`` time (Ray calls, part writes, compaction, bookkeeping), is
   circuitray's overhead alone; ``attribute_ratio`` (``attribute()`` in the actor over
   the same in the plain loop, identical work) shows how noisy the machine was.
3. Scaling: graphs per minute for each of ``actor_counts``, steady state (start-up
   excluded) and end to end; the 1-actor figures are the medians of step 2's runs.
4. Flattening (:func:`flatten_rate`): after one untimed warm-up prompt, ``n_flatten``
   prompts are attributed in this process; ``flatten_graph`` (prune, scores, Graph ->
   Arrow) is timed alone, giving kept edges per second, then the batch is written with
   ``RunStore.write_part`` as a worker does. Flatten + write is reported as a share of
   ``attribute()`` time. Inside ``flatten_graph``, the pruning pass (and any separate
   graph-score calls) are timed as they run, to show where flattening's time goes; the
   rest is circuitray's own Arrow code (``arrow_s``).
5. Storage (:func:`bytes_per_edge`): bytes of the committed Parquet files of the last
   1-actor run (graphs, nodes, edges) per edge row, and of the edges files alone.
6. Memory (:func:`peak_rss`): peak RSS of the AttributionWorker process of a 1-actor run
   on a single prompt, against a bare ``python -c`` process (no Ray) that loads the same
   model, attributes the same prompt with :func:`attribute_prompt` and writes the part.
   Both are the kernel's high-water mark ``VmHWM`` from ``/proc/<pid>/status``: the
   driver reads the actor's after each batch (the worker's name carries its pid; the
   actor is the real AttributionWorker, unchanged), the bare process reads its own at
   the end. ``ru_maxrss`` would be the same counter, except that Linux carries it over
   fork and exec, so a child of this (large) process would report this process's size.
   Local runs on Linux only.

torch, circuit-tracer and the model loaders are imported by the functions that use
them, so the configs (and ``python -m benchmarks``' options built from them) load without.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from circuitray.bench.environment import peak_rss_kb
from circuitray.errors import CircuitrayError
from circuitray.prompts.files import read_prompts, write_prompts
from circuitray.schema import GRAPH_SCHEMA, TABLES, graph_row
from circuitray.storage.run_store import PARQUET_OPTIONS, RunStore

if TYPE_CHECKING:
    from circuitray.graph.config import AttributionConfig, PruneConfig

logger = logging.getLogger(__name__)

__all__ = [
    "GOALS",
    "AttributionBenchConfig",
    "CircuitrayRunResult",
    "FlattenResult",
    "MemoryResult",
    "PlainLoopResult",
    "StorageResult",
    "Workload",
    "bytes_per_edge",
    "circuitray_run",
    "flatten_rate",
    "peak_rss",
    "plain_loop",
    "run_attribution_bench",
]


def _attribution_config() -> AttributionConfig:
    # torch comes with it: imported when a config is made, not with this module.
    from circuitray.graph.config import AttributionConfig

    return AttributionConfig()


def _prune_config() -> PruneConfig:
    from circuitray.graph.config import PruneConfig

    return PruneConfig()


# Figure -> (comparison, bound): the acceptance goals.
GOALS: dict[str, tuple[str, float]] = {
    "overhead_ratio": ("<=", 1.05),
    "flatten_write_share": ("<", 0.05),
    "bytes_per_edge": ("<=", 6.0),
}


@dataclass
class AttributionBenchConfig:
    """What :func:`run_attribution_bench` measures, and on what.

    Attributes:
        model: Bundled model name (or HF folder / hub id with its default transcoders).
        n_prompts: WS2 prompts attributed by each plain-loop and circuitray run.
        seed: Seed of :func:`circuitray.prompts.ws2.generate_ws2`.
        actor_counts: Actor counts of the scaling figure (1 is always measured).
        torch_threads: Torch threads per actor, and of the plain loop and the other
            in-process steps. ``None`` takes circuitray's own CPU placement (cores / K
            per actor; the plain loop gets what one actor gets). The default 1 keeps
            timings stable on a shared machine: two threads on two busy cores can stall
            in OpenMP barriers, which would make the ratios measure the neighbours.
        repeats: Rounds of (plain loop, 1-actor circuitray) for the overhead figure.
        batch_size: Prompts per circuitray task and part file; the plain loop writes
            one Parquet file per batch of the same size.
        n_flatten: Prompts attributed in-process for the flattening figure.
        rss_prompt: Row of the prompt file that the memory figure attributes.
        attribution: circuit-tracer ``attribute()`` arguments, for both sides.
        prune: Pruning thresholds, for both sides.
    """

    model: str = "organism-tuned"
    n_prompts: int = 48
    seed: int = 0
    actor_counts: tuple[int, ...] = (1, 2)
    torch_threads: int | None = 1
    repeats: int = 2
    batch_size: int = 8
    n_flatten: int = 16
    rss_prompt: int = 0
    attribution: AttributionConfig = field(default_factory=_attribution_config)
    prune: PruneConfig = field(default_factory=_prune_config)

    def workload(self) -> Workload:
        """The model, attribution, pruning and torch threads every measurement uses."""
        return Workload(
            model=self.model,
            attribution=self.attribution,
            prune=self.prune,
            torch_threads=self.torch_threads,
        )


@dataclass
class Workload:
    """What one measurement attributes with; both sides of a comparison get the same.

    Attributes:
        model: Bundled model name (or HF folder / hub id with its default transcoders).
        attribution: circuit-tracer ``attribute()`` arguments.
        prune: Pruning thresholds.
        torch_threads: Torch threads of the process (an actor's ``cpus_per_actor`` in a
            circuitray run); None keeps the process's setting (circuitray's placement).
    """

    model: str = "organism-tuned"
    attribution: AttributionConfig = field(default_factory=_attribution_config)
    prune: PruneConfig = field(default_factory=_prune_config)
    torch_threads: int | None = None


@dataclass
class PlainLoopResult:
    """One :func:`plain_loop` run. Times in seconds; sums are over all prompts."""

    out_dir: str
    n_graphs: int
    n_edges: int
    files: int
    torch_threads: int
    load_s: float
    elapsed_s: float
    per_graph_s: float
    attribute_s: float
    prune_s: float
    write_s: float
    edges_per_graph: list[int]


@dataclass
class CircuitrayRunResult:
    """One :func:`circuitray_run`. ``actors`` is how many the run used (the driver makes
    no more than there are batches); ``per_graph_s`` excludes start-up and includes
    compaction; ``mean_*_s`` are the actors' own per-prompt timings (graphs table)."""

    run_dir: str
    actors: int
    computed: int
    n_edges: int
    elapsed_s: float
    ray_start_s: float
    compact_s: float
    per_graph_s: float
    graphs_per_min: float
    graphs_per_min_e2e: float
    torch_threads: list[int]
    peak_rss_mb: dict[str, float]
    mean_attribute_s: float
    mean_flatten_s: float
    mean_total_s: float


@dataclass
class FlattenResult:
    """:func:`flatten_rate`: sums over ``n_graphs`` prompts, in seconds.

    ``prune_s`` (the pruning pass, with whatever scores it computes), ``scores_s`` and
    ``influence_s`` (separate circuit-tracer score calls, if flatten_graph makes any) and
    ``arrow_s`` (the rest: circuitray's own Arrow building) split ``flatten_s``; the
    split is None when it could not be measured. ``calls`` counts the timed calls.
    """

    n_graphs: int
    n_edges: int
    attribute_s: float
    flatten_s: float
    write_s: float
    edges_per_s: float
    share: float
    prune_s: float | None
    scores_s: float
    influence_s: float
    arrow_s: float | None
    calls: dict[str, int]


@dataclass
class StorageResult:
    """:func:`bytes_per_edge`: committed Parquet bytes of one run folder."""

    n_edges: int
    total_bytes: int
    table_bytes: dict[str, int]
    bytes_per_edge: float
    edge_bytes_per_edge: float


@dataclass
class MemoryResult:
    """:func:`peak_rss`: peak resident set sizes in MiB for one prompt."""

    prompt_id: str
    torch_threads: int
    actor_peak_rss_mb: float
    bare_peak_rss_mb: float
    ratio: float


# -- helpers ------------------------------------------------------------------------
@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[int]:
    """Run the block with ``n`` torch threads (unchanged when None); yields the count."""
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def _threads_per_actor(torch_threads: int | None, actors: int) -> int:
    """What circuitray gives each of ``actors`` CPU actors (see
    :func:`circuitray.jobs.dispatch.actor_options`)."""
    return torch_threads or max(1, (os.cpu_count() or 1) // actors)


def _mb(kb: float) -> float:
    return kb / 1024


def _prune_kwargs(prune: PruneConfig) -> dict:
    return {"node_threshold": prune.node_threshold, "edge_threshold": prune.edge_threshold}


# -- the measurements -----------------------------------------------------------------
def plain_loop(
    prompts: str | Path,
    out_dir: str | Path,
    *,
    workload: Workload | None = None,
    batch_size: int = 8,
) -> PlainLoopResult:
    """The hand-written baseline: circuit-tracer and pyarrow in a loop, no circuitray.

    Loads the model once in this process, then per prompt: ``attribute()`` with the
    same arguments circuitray passes, ``prune_graph`` with the same thresholds, and a
    minimal edges table (graph_id, dst, src, weight) of the kept edges; one Parquet file
    per ``batch_size`` prompts, with circuitray's compression (``PARQUET_OPTIONS``) so
    the codec is not what differs, but none of its per-column tuning. ``torch_threads``
    None (in ``workload``) keeps this process's setting.
    """
    import torch
    from circuit_tracer import attribute
    from circuit_tracer.graph import prune_graph

    from circuitray.models.loading import ModelSpec, load_replacement_model

    work = workload or Workload()
    rows = read_prompts(prompts).to_pylist()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kwargs = work.attribution.attribute_kwargs()
    attribute_s = prune_s = write_s = 0.0
    edges_per_graph: list[int] = []
    files = 0
    with _torch_threads(work.torch_threads) as threads:
        t0 = time.perf_counter()
        replacement_model = load_replacement_model(ModelSpec(model=work.model))
        load_s = time.perf_counter() - t0
        start = time.perf_counter()
        for first in range(0, len(rows), batch_size):
            tables = []
            for gid in range(first, min(first + batch_size, len(rows))):
                t0 = time.perf_counter()
                graph = attribute(rows[gid]["prompt"], replacement_model, **kwargs)
                t1 = time.perf_counter()
                _, edge_mask, _ = prune_graph(graph, **_prune_kwargs(work.prune))
                dst, src = torch.nonzero(edge_mask, as_tuple=True)
                weight = graph.adjacency_matrix[dst, src].float().cpu().numpy()
                tables.append(
                    pa.table(
                        {
                            "graph_id": np.full(len(dst), gid, np.int32),
                            "dst": dst.cpu().numpy().astype(np.int32),
                            "src": src.cpu().numpy().astype(np.int32),
                            "weight": weight,
                        }
                    )
                )
                del graph
                attribute_s += t1 - t0
                prune_s += time.perf_counter() - t1
                edges_per_graph.append(len(dst))
            t0 = time.perf_counter()
            path = out / f"part-{first:07d}.parquet"
            pq.write_table(pa.concat_tables(tables), path, **PARQUET_OPTIONS)
            write_s += time.perf_counter() - t0
            files += 1
        elapsed_s = time.perf_counter() - start
    n = len(rows)
    logger.info("plain loop: %d graphs, %.3f s/graph (%d threads)", n, elapsed_s / n, threads)
    return PlainLoopResult(
        out_dir=str(out),
        n_graphs=n,
        n_edges=sum(edges_per_graph),
        files=files,
        torch_threads=threads,
        load_s=load_s,
        elapsed_s=elapsed_s,
        per_graph_s=elapsed_s / n,
        attribute_s=attribute_s,
        prune_s=prune_s,
        write_s=write_s,
        edges_per_graph=edges_per_graph,
    )


def circuitray_run(
    prompts: str | Path,
    out_dir: str | Path,
    *,
    workload: Workload | None = None,
    actors: int = 1,
    batch_size: int = 8,
) -> CircuitrayRunResult:
    """:func:`circuitray.run` with ``actors`` actors on a local Ray, into a fresh folder.

    ``workload.torch_threads`` becomes ``cpus_per_actor`` (each actor's torch threads); None keeps
    circuitray's placement. Ray is started for this run and shut down after it, unless
    this process had already started it, so ``ray_start_s`` is a full start each time.
    Each actor's peak RSS is read from ``/proc`` after each of its batches (see the
    module docstring). Raises :class:`CircuitrayError` if any prompt became an error
    row: a benchmark on partial work would compare unequal things.
    """
    import ray
    import torch

    from circuitray.jobs.attribution_job import RunConfig, run
    from circuitray.models.loading import ModelSpec

    work = workload or Workload()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise CircuitrayError(f"{out}: benchmark runs need a fresh folder")
    n_gpus = torch.cuda.device_count()
    config = RunConfig(
        prompts=str(prompts),
        out=str(out),
        model=ModelSpec(model=work.model),
        attribution=work.attribution,
        prune=work.prune,
        actors=actors,
        batch_size=batch_size,
        gpus_per_actor=min(1.0, n_gpus / actors) if n_gpus else 1.0,
        cpus_per_actor=float(work.torch_threads) if work.torch_threads else None,
        compact=False,
    )
    host = socket.gethostname()
    peaks: dict[str, int] = {}

    def on_progress(done: int, total: int, summary: dict | None) -> None:
        if summary is None:
            return
        name = summary["worker"]
        worker_host, _, pid = name.rpartition(":")
        kb = peak_rss_kb(int(pid)) if worker_host == host and pid.isdigit() else None
        if kb is not None:
            peaks[name] = max(peaks.get(name, 0), kb)

    started_ray = not ray.is_initialized()
    try:
        result = run(config, on_progress=on_progress)
        t0 = time.perf_counter()
        RunStore(out).compact()
        compact_s = time.perf_counter() - t0
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()
    if result.errors or result.computed == 0:
        first = RunStore(out).read_graphs(columns=["status", "error"]).to_pylist()
        errors = [r["error"] for r in first if r["status"] == "error"]
        raise CircuitrayError(
            f"benchmark run {out}: {result.errors} error rows, {result.computed} computed"
            + (f"; first error: {errors[0]}" if errors else "")
        )
    graphs = (
        RunStore(out)
        .read_graphs(columns=["n_kept_edges", "attribute_s", "flatten_s", "total_s"])
        .to_pydict()
    )
    steady = result.elapsed_s - result.ray_start_s + compact_s
    per_graph = steady / result.computed
    logger.info(
        "circuitray %d actor(s): %d graphs, %.3f s/graph, start-up %.1f s",
        actors,
        result.computed,
        per_graph,
        result.ray_start_s,
    )
    if len(result.workers) != actors:
        logger.warning(
            "asked for %d actors, the run used %d (fewer batches than actors?)",
            actors,
            len(result.workers),
        )
    return CircuitrayRunResult(
        run_dir=str(out),
        actors=len(result.workers),
        computed=result.computed,
        n_edges=int(sum(graphs["n_kept_edges"])),
        elapsed_s=result.elapsed_s,
        ray_start_s=result.ray_start_s,
        compact_s=compact_s,
        per_graph_s=per_graph,
        graphs_per_min=60.0 / per_graph,
        graphs_per_min_e2e=60.0 * result.computed / (result.elapsed_s + compact_s),
        torch_threads=[int(w["torch_threads"]) for w in result.workers],
        peak_rss_mb={k: _mb(v) for k, v in peaks.items()},
        mean_attribute_s=statistics.fmean(graphs["attribute_s"]),
        mean_flatten_s=statistics.fmean(graphs["flatten_s"]),
        mean_total_s=statistics.fmean(graphs["total_s"]),
    )


# Functions flatten_graph calls for pruning and graph scores, timed as they run:
# (module, name, label). Whichever exist are wrapped, in the module that defines them
# and in circuitray.graph.flatten, which imports prune_graph_exact at its top: the
# name flatten_graph looks up is its own module's.
FLATTEN_CALLS = (
    ("circuitray.graph.flatten", "prune_graph_exact", "prune"),
    ("circuitray.graph.prune", "prune_graph_exact", "prune"),
    ("circuit_tracer.graph", "prune_graph", "prune"),
    ("circuit_tracer.graph", "compute_graph_scores", "scores"),
    ("circuit_tracer.graph", "compute_node_influence", "influence"),
)


@contextlib.contextmanager
def _timed_calls(totals: dict[str, float], calls: dict[str, int]) -> Iterator[None]:
    """Add the time of each :data:`FLATTEN_CALLS` call made in the block to
    ``totals[label]`` (and count it in ``calls``). Only outermost calls count, so a
    function called by another one stays inside its caller's time."""
    patched: list[tuple[object, str, Callable]] = []
    depth = [0]

    def wrap(label: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    totals[label] = totals.get(label, 0.0) + time.perf_counter() - t0
                    calls[label] = calls.get(label, 0) + 1

        return timed

    for module_name, name, label in FLATTEN_CALLS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        fn = getattr(module, name, None)
        if fn is not None:
            patched.append((module, name, fn))
            setattr(module, name, wrap(label, fn))
    try:
        yield
    finally:
        for module, name, fn in reversed(patched):
            setattr(module, name, fn)


def flatten_rate(
    prompts: list[dict],
    run_dir: str | Path,
    *,
    workload: Workload | None = None,
) -> FlattenResult:
    """Time ``flatten_graph`` and ``RunStore.write_part`` against ``attribute()``.

    ``prompts`` are prompt rows (``prompt_id``, ``prompt``, ...); their graphs are written
    as one part into ``run_dir``, as a worker writes one batch. See the module
    docstring, step 4, for what is timed; the pruning calls inside ``flatten_graph``
    are timed as they happen (:func:`_timed_calls`); what remains of
    ``flatten_graph`` is ``arrow_s``. When none of :data:`FLATTEN_CALLS` was called (the
    pruning moved elsewhere), the breakdown is unknown: ``prune_s`` and ``arrow_s`` are
    None rather than a wrong split.
    """
    from circuit_tracer import attribute

    from circuitray.graph.flatten import flatten_graph
    from circuitray.models.loading import ModelSpec, load_replacement_model

    if not prompts:
        raise ValueError("flatten_rate needs at least one prompt")
    work = workload or Workload()
    prune = work.prune
    kwargs = work.attribution.attribute_kwargs()
    columns = set(GRAPH_SCHEMA.names)
    t: dict[str, float] = dict.fromkeys(
        ("attribute", "flatten", "prune", "scores", "influence", "write"), 0.0
    )
    calls: dict[str, int] = {}
    rows, nodes, edges = [], [], []
    with _torch_threads(work.torch_threads):
        replacement_model = load_replacement_model(ModelSpec(model=work.model))
        graph = attribute(prompts[0]["prompt"], replacement_model, **kwargs)  # warm-up
        flatten_graph(graph, graph_id=0, prune=prune, tokenizer=replacement_model.tokenizer)
        del graph
        for gid, prompt in enumerate(prompts):
            tokens = replacement_model.ensure_tokenized(prompt["prompt"])
            t0 = time.perf_counter()
            graph = attribute(tokens, replacement_model, **kwargs)
            t["attribute"] += time.perf_counter() - t0

            with _timed_calls(t, calls):
                t0 = time.perf_counter()
                flat = flatten_graph(
                    graph, graph_id=gid, prune=prune, tokenizer=replacement_model.tokenizer
                )
                t["flatten"] += time.perf_counter() - t0
            del graph

            fields = {k: v for k, v in flat.summary.items() if k in columns}
            rows.append(graph_row(gid, prompt, status="ok", **fields))
            nodes.append(flat.nodes)
            edges.append(flat.edges)
    store = RunStore(run_dir)
    t0 = time.perf_counter()
    store.write_part(
        "part-flatten-bench",
        {
            "graphs": pa.Table.from_pylist(rows, schema=GRAPH_SCHEMA),
            "nodes": pa.concat_tables(nodes),
            "edges": pa.concat_tables(edges),
        },
    )
    t["write"] = time.perf_counter() - t0
    n_edges = sum(e.num_rows for e in edges)
    known = calls.get("prune", 0) > 0
    inner = t["prune"] + t["scores"] + t["influence"]
    if not known:
        logger.warning("flatten_graph called none of %s: no breakdown", FLATTEN_CALLS)
    return FlattenResult(
        n_graphs=len(prompts),
        n_edges=n_edges,
        attribute_s=t["attribute"],
        flatten_s=t["flatten"],
        write_s=t["write"],
        edges_per_s=n_edges / t["flatten"],
        share=(t["flatten"] + t["write"]) / t["attribute"],
        prune_s=t["prune"] if known else None,
        scores_s=t["scores"],
        influence_s=t["influence"],
        arrow_s=t["flatten"] - inner if known else None,
        calls=calls,
    )


def bytes_per_edge(run_dir: str | Path) -> StorageResult:
    """Bytes of the committed Parquet files of ``run_dir`` (graphs, nodes and edges)
    per edge row, and of the edges files alone per edge row."""
    store = RunStore(run_dir)
    sizes: dict[str, int] = {}
    n_edges = 0
    for table in TABLES:
        files = store.part_files(table)
        sizes[table] = sum(int(store.fs.get_file_info(f).size or 0) for f in files)
        if table == "edges":
            for f in files:
                with store.fs.open_input_file(f) as handle:
                    n_edges += pq.ParquetFile(handle).metadata.num_rows
    if n_edges == 0:
        raise CircuitrayError(f"{run_dir}: no edge rows to measure")
    total = sum(sizes.values())
    return StorageResult(
        n_edges=n_edges,
        total_bytes=total,
        table_bytes=sizes,
        bytes_per_edge=total / n_edges,
        edge_bytes_per_edge=sizes["edges"] / n_edges,
    )


# Run as ``python -c BARE_PROCESS <json args>``: no Ray, only what attributing needs.
# Peak RSS is VmHWM of /proc/self/status, not ru_maxrss: Linux carries ru_maxrss over
# fork and exec, so a child of a large benchmark process would report the parent's size.
BARE_PROCESS = """
import json, sys
args = json.loads(sys.argv[1])
import pyarrow as pa
import torch
if args["threads"]:
    torch.set_num_threads(args["threads"])
from circuitray.schema import GRAPH_SCHEMA
from circuitray.graph.attribute import attribute_prompt
from circuitray.graph.config import AttributionConfig
from circuitray.graph.config import PruneConfig
from circuitray.models.loading import ModelSpec, load_replacement_model
from circuitray.storage.run_store import RunStore
from circuitray.bench.environment import peak_rss_kb
model = load_replacement_model(ModelSpec(model=args["model"]))
row, nodes, edges = attribute_prompt(
    model, args["prompt"], graph_id=0,
    attribution=AttributionConfig(**args["attribution"]), prune=PruneConfig(**args["prune"]),
)
RunStore(args["out"]).write_part(
    "part-0", {"graphs": pa.Table.from_pylist([row], schema=GRAPH_SCHEMA),
               "nodes": nodes, "edges": edges},
)
print(json.dumps({"status": row["status"], "error": row["error"], "peak_rss_kb": peak_rss_kb()}))
"""


def peak_rss(
    prompt: dict, work_dir: str | Path, *, workload: Workload | None = None
) -> MemoryResult:
    """Peak RSS of one AttributionWorker vs a bare process, on the same prompt.

    ``prompt`` is a prompt row (as :func:`read_prompts` gives it). The actor side is a
    1-actor :func:`circuitray_run` on a prompt file holding only that row; the bare side
    is :data:`BARE_PROCESS` in a fresh interpreter with the same torch thread count.
    """
    load = workload or Workload()
    if platform.system() != "Linux":
        raise CircuitrayError("peak_rss reads /proc/<pid>/status: Linux only")
    work = Path(work_dir)
    one = write_prompts([prompt], work / "one-prompt.parquet")
    threads = _threads_per_actor(load.torch_threads, 1)
    actor = circuitray_run(one, work / "actor-run", workload=load, actors=1, batch_size=1)
    if not actor.peak_rss_mb:
        raise CircuitrayError("could not read the actor's peak RSS from /proc")
    args = {
        "model": load.model,
        "prompt": prompt,
        "threads": threads,
        "attribution": asdict(load.attribution),
        "prune": asdict(load.prune),
        "out": str(work / "bare-run"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", BARE_PROCESS, json.dumps(args)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise CircuitrayError(f"bare process failed ({proc.returncode}): {proc.stderr[-1000:]}")
    bare = json.loads(lines[-1])
    if bare["status"] != "ok":
        raise CircuitrayError(f"bare process: prompt failed: {bare['error']}")
    actor_mb = max(actor.peak_rss_mb.values())
    bare_mb = _mb(bare["peak_rss_kb"])
    return MemoryResult(
        prompt_id=str(prompt["prompt_id"]),
        torch_threads=threads,
        actor_peak_rss_mb=actor_mb,
        bare_peak_rss_mb=bare_mb,
        ratio=actor_mb / bare_mb,
    )


# -- the whole benchmark ----------------------------------------------------------------
def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _goal(name: str, value: float) -> dict:
    op, bound = GOALS[name]
    met = value <= bound if op == "<=" else value < bound
    return {"value": value, "goal": f"{op} {bound:g}", "met": bool(met and math.isfinite(value))}


def run_attribution_bench(
    config: AttributionBenchConfig,
    work_dir: str | Path,
    *,
    on_step: Callable[[str], None] | None = None,
) -> dict:
    """Run every measurement of the module docstring under ``work_dir`` (which must be
    empty or new); returns a JSON-ready dict with ``figures``, ``goals``, each
    section's details, ``config`` and ``section_s`` (wall time per section)."""
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):
        raise CircuitrayError(f"{work}: benchmark work folder must be empty")
    step = on_step or (lambda msg: logger.info("%s", msg))
    n_batches = -(-config.n_prompts // config.batch_size)
    if n_batches < max(config.actor_counts):
        raise CircuitrayError(
            f"{config.n_prompts} prompts in batches of {config.batch_size} make {n_batches} "
            f"batches, fewer than {max(config.actor_counts)} actors: lower batch_size"
        )
    from circuitray.prompts.ws2 import generate_ws2

    section_s: dict[str, float] = {}
    prompt_rows = generate_ws2(n=config.n_prompts, seed=config.seed)
    prompts = write_prompts(prompt_rows, work / "prompts.parquet")
    common = config.workload()
    one_actor_threads = _threads_per_actor(config.torch_threads, 1)
    # The plain loop and the in-process steps get what one actor gets.
    in_process = replace(common, torch_threads=one_actor_threads)

    # 2. Overhead: alternate which side goes first.
    t_section = time.perf_counter()
    plains: list[PlainLoopResult] = []
    crs: list[CircuitrayRunResult] = []
    for r in range(config.repeats):
        order = ("plain", "circuitray") if r % 2 == 0 else ("circuitray", "plain")
        for side in order:
            step(f"overhead round {r + 1}/{config.repeats}: {side}, {config.n_prompts} prompts")
            if side == "plain":
                plains.append(
                    plain_loop(
                        prompts,
                        work / f"plain-{r}",
                        workload=in_process,
                        batch_size=config.batch_size,
                    )
                )
            else:
                crs.append(
                    circuitray_run(
                        prompts,
                        work / f"circuitray-1-{r}",
                        workload=common,
                        actors=1,
                        batch_size=config.batch_size,
                    )
                )
    section_s["overhead"] = time.perf_counter() - t_section
    actor_threads = sorted({t for c in crs for t in c.torch_threads})
    if actor_threads != [one_actor_threads]:
        logger.warning("actor threads %s, plain loop %d", actor_threads, one_actor_threads)
    plain_pg = [p.per_graph_s for p in plains]
    cr_pg = [c.per_graph_s for c in crs]
    ratio = statistics.median(cr_pg) / statistics.median(plain_pg)
    n = config.n_prompts

    def med(values) -> float:
        return statistics.median(list(values))

    # Where a graph's time goes on each side: per run, then the median over runs.
    breakdown = {
        "circuitray": {
            "attribute": med(c.mean_attribute_s for c in crs),
            "flatten": med(c.mean_flatten_s for c in crs),
            "other_in_attribute_prompt": med(
                c.mean_total_s - c.mean_attribute_s - c.mean_flatten_s for c in crs
            ),
            "dispatch_write_compact": med(c.per_graph_s - c.mean_total_s for c in crs),
            "compact": med(c.compact_s / c.computed for c in crs),
        },
        "plain": {
            "attribute": med(p.attribute_s / n for p in plains),
            "prune": med(p.prune_s / n for p in plains),
            "write": med(p.write_s / n for p in plains),
            "other": med(
                p.per_graph_s - (p.attribute_s + p.prune_s + p.write_s) / n for p in plains
            ),
        },
    }
    # circuitray's own cost per graph: what its run adds to attribute_prompt (Ray calls,
    # part writes, compaction, driver bookkeeping), as a share of its per-graph time.
    dispatch_s = breakdown["circuitray"]["dispatch_write_compact"]
    overhead = {
        "ratio": ratio,
        "round_ratios": [c.per_graph_s / p.per_graph_s for p, c in zip(plains, crs, strict=True)],
        "circuitray_per_graph_s": _spread(cr_pg),
        "plain_per_graph_s": _spread(plain_pg),
        "ray_start_s": _spread([c.ray_start_s for c in crs]),
        "plain_load_s": _spread([p.load_s for p in plains]),
        "breakdown": breakdown,
        "dispatch_s": dispatch_s,
        "dispatch_share": dispatch_s / statistics.median(cr_pg),
        # attribute() alone, actor vs plain loop: same work, so this shows the noise.
        "attribute_ratio": breakdown["circuitray"]["attribute"] / breakdown["plain"]["attribute"],
        "plain_runs": [asdict(p) for p in plains],
        "circuitray_runs": [asdict(c) for c in crs],
    }

    # 3. Scaling.
    t_section = time.perf_counter()
    scaling: dict[str, dict] = {
        "1": {
            "actors_used": 1,
            "graphs_per_min": statistics.median(c.graphs_per_min for c in crs),
            "graphs_per_min_e2e": statistics.median(c.graphs_per_min_e2e for c in crs),
            "ray_start_s": statistics.median(c.ray_start_s for c in crs),
            "torch_threads": crs[0].torch_threads,
        }
    }
    for k in sorted(set(config.actor_counts) - {1}):
        step(f"scaling: {k} actors, {config.n_prompts} prompts")
        c = circuitray_run(
            prompts,
            work / f"circuitray-{k}",
            workload=common,
            actors=k,
            batch_size=config.batch_size,
        )
        scaling[str(k)] = {
            "actors_used": c.actors,
            "graphs_per_min": c.graphs_per_min,
            "graphs_per_min_e2e": c.graphs_per_min_e2e,
            "ray_start_s": c.ray_start_s,
            "torch_threads": c.torch_threads,
            "run": asdict(c),
        }
    base = scaling["1"]["graphs_per_min"]
    for v in scaling.values():
        v["speedup"] = v["graphs_per_min"] / base
    section_s["scaling"] = time.perf_counter() - t_section

    # 4. Flattening.
    t_section = time.perf_counter()
    step(f"flattening: {config.n_flatten} prompts in this process")
    flat = flatten_rate(prompt_rows[: config.n_flatten], work / "flatten-run", workload=in_process)
    section_s["flatten"] = time.perf_counter() - t_section

    # 5. Storage.
    step("storage")
    storage = bytes_per_edge(crs[-1].run_dir)
    plain_bytes = sum(f.stat().st_size for f in Path(plains[-1].out_dir).glob("*.parquet"))
    plain_bpe = plain_bytes / max(1, plains[-1].n_edges)

    # 6. Memory.
    t_section = time.perf_counter()
    step("memory: one prompt in an actor and in a bare process")
    rss_prompt = read_prompts(prompts).slice(config.rss_prompt, 1).to_pylist()[0]
    memory = peak_rss(rss_prompt, work / "rss", workload=common)
    section_s["memory"] = time.perf_counter() - t_section

    figures = {
        "overhead_ratio": ratio,
        "circuitray_per_graph_s": statistics.median(cr_pg),
        "plain_per_graph_s": statistics.median(plain_pg),
        "ray_start_s": statistics.median(c.ray_start_s for c in crs),
        "plain_load_s": statistics.median(p.load_s for p in plains),
        "dispatch_s": dispatch_s,
        "dispatch_share": overhead["dispatch_share"],
        "graphs_per_min": {k: v["graphs_per_min"] for k, v in scaling.items()},
        "graphs_per_min_e2e": {k: v["graphs_per_min_e2e"] for k, v in scaling.items()},
        "flatten_edges_per_s": flat.edges_per_s,
        "flatten_write_share": flat.share,
        "bytes_per_edge": storage.bytes_per_edge,
        "edge_bytes_per_edge": storage.edge_bytes_per_edge,
        "plain_bytes_per_edge": plain_bpe,
        "actor_peak_rss_mb": memory.actor_peak_rss_mb,
        "bare_peak_rss_mb": memory.bare_peak_rss_mb,
        "rss_ratio": memory.ratio,
    }
    return {
        "figures": figures,
        "goals": {name: _goal(name, figures[name]) for name in GOALS},
        "overhead": overhead,
        "scaling": scaling,
        "flatten": asdict(flat),
        "storage": {
            **asdict(storage),
            "plain_bytes": plain_bytes,
            "plain_bytes_per_edge": plain_bpe,
        },
        "memory": asdict(memory),
        "config": asdict(config),
        "section_s": section_s,
    }
