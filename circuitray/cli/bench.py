"""``circuitray bench``: every benchmark, as a thin layer over :mod:`circuitray.bench`.

- ``suite``: ``make bench``, circuitray against a plain loop (:mod:`circuitray.bench.suite`);
- ``gpu``: graphs per hour on one GPU (:mod:`circuitray.bench.gpu`);
- ``make-edges`` and ``queries``: ``make bench-queries``, a synthetic run at scale and
  every named query timed on it (:mod:`circuitray.bench.synthetic`, ``.queries``);
- ``processes``: ``circuitray query`` / ``sql`` as whole processes next to a bare DuckDB
  process (:mod:`circuitray.bench.processes`);
- ``scale``: the driver's and the store's cost per prompt from 10^3 to 10^6 prompts,
  synthetic workers, no model (:mod:`circuitray.bench.scale`).

Options take their defaults and help from the benchmark configs
(:func:`circuitray.cli.options.config_option`); torch loads inside the commands that
attribute, never with this module.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from circuitray.bench.attribution import AttributionBenchConfig
from circuitray.bench.gpu import GpuBenchConfig
from circuitray.bench.processes import ProcessBenchConfig
from circuitray.bench.suite import RESULTS_DIR
from circuitray.bench.synthetic import SyntheticSpec
from circuitray.cli.options import config_option, config_values
from circuitray.cli.output import console
from circuitray.errors import CircuitrayError
from circuitray.outputs.aggregate import AggregateConfig


class IntList(click.ParamType):
    """Comma-separated integers, e.g. ``16,32,64``, as a tuple."""

    name = "N,N,..."

    def convert(self, value, param, ctx) -> tuple[int, ...]:
        if isinstance(value, tuple | list):
            return tuple(int(v) for v in value)
        try:
            out = tuple(int(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"{value!r}: expected comma-separated integers", param, ctx)
        if not out:
            self.fail("give at least one integer", param, ctx)
        return out


def _bench_logging() -> None:
    """Benchmark progress (INFO of circuitray.bench) through the CLI's log handler."""
    logging.getLogger("circuitray.bench").setLevel(logging.INFO)


def _wide_console() -> Console:
    # Piped to a file or CI log, rich would wrap at 80 columns; the tables need more.
    return Console(width=None if sys.stdout.isatty() else 160)


def _write_record(json_out: str, head: dict, timings: list[dict]) -> None:
    """A timing benchmark's JSON: what it measured (``head``), the machine, the timings."""
    record = {**head, "cpu_cores": os.cpu_count(), "machine": platform.platform()}
    record["timings"] = timings
    Path(json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(json_out).write_text(json.dumps(record, indent=2) + "\n")


@click.group("bench")
def bench_group() -> None:
    """Benchmarks: make bench (suite), GPU, synthetic runs at scale, query timings."""


@bench_group.command("make-edges")
@config_option(SyntheticSpec, "edges", type=click.IntRange(min=1))
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Run folder.")
@config_option(SyntheticSpec, "edges_per_graph", type=click.IntRange(min=1))
@config_option(SyntheticSpec, "nodes_per_graph", type=click.IntRange(min=30))
@config_option(SyntheticSpec, "n_layers", "--layers", "n_layers", type=click.IntRange(min=1))
@config_option(SyntheticSpec, "seed", type=int)
def make_edges_cmd(out, **fields) -> None:
    """Write a synthetic run folder of EDGES edges in the real schema."""
    from dataclasses import asdict

    from circuitray.bench.synthetic import make_synthetic_run
    from circuitray.storage.run_store import RunStore

    spec = SyntheticSpec(**config_values(SyntheticSpec, fields))
    store = RunStore(out)
    if store.exists():
        meta = store.read_meta()
        if meta.get("synthetic") == asdict(spec) and meta.get("status") == "done":
            console.print(f"{out}: already holds this synthetic run ({meta['counts']})")
            return
        raise CircuitrayError(f"{out}: already a run folder; remove it or pick another --out")
    t0 = time.perf_counter()
    with console.status(f"writing {spec.edges:,} synthetic edges to {out}"):
        counts = make_synthetic_run(out, spec)
    console.print(
        f"{out}: {counts['graphs']:,} graphs, {counts['nodes']:,} nodes, "
        f"{counts['edges']:,} edges in {time.perf_counter() - t0:.0f}s"
    )


@bench_group.command("queries")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--query", "names", multiple=True, help="Only these (repeatable; 'compare').")
@click.option("--json-out", type=click.Path(dir_okay=False), default=None)
@click.option("--limit-s", type=float, default=10.0, show_default=True, help="Goal per query.")
def bench_queries_cmd(run_dir, names, json_out, limit_s) -> None:
    """Time every named query and circuitray compare on RUN_DIR."""
    from dataclasses import asdict

    from circuitray.bench.queries import run_counts, time_queries

    graphs, edges = run_counts(run_dir)
    timings = time_queries(run_dir, names=list(names) or None)
    t = Table("query", "runs", "rows", "seconds", f"< {limit_s:g} s", show_edge=False)
    for q in timings:
        t.add_row(
            q.name,
            str(q.runs),
            str(q.rows),
            f"{q.seconds:.2f}",
            "yes" if q.seconds < limit_s else "NO",
        )
    console.print(f"{run_dir}: {edges:,} edges, {graphs:,} graphs; {os.cpu_count()} CPU cores")
    console.print(t)
    if json_out:
        _write_record(
            json_out,
            {"run_dir": str(run_dir), "edges": edges, "graphs": graphs},
            [asdict(q) for q in timings],
        )
    if any(q.seconds >= limit_s for q in timings):
        sys.exit(1)


@bench_group.command("processes")
@click.argument("run_dir", type=click.Path())
@config_option(ProcessBenchConfig, "query")
@config_option(ProcessBenchConfig, "sql")
@config_option(ProcessBenchConfig, "repeats", type=click.IntRange(min=1))
@config_option(ProcessBenchConfig, "goal_ratio", type=click.FloatRange(min=0, min_open=True))
@click.option(
    "--json-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the record here (e.g. bench/results/query-processes.json).",
)
def bench_processes_cmd(run_dir, json_out, **fields) -> None:
    """circuitray query / sql on RUN_DIR as whole processes, next to a bare DuckDB
    process running the same statements; exits 2 when RUN_DIR is not a run folder."""
    from circuitray.bench.processes import time_query_processes

    _bench_logging()
    config = ProcessBenchConfig(**config_values(ProcessBenchConfig, fields))
    record = time_query_processes(run_dir, config=config)
    t = Table(
        "command",
        "circuitray s",
        "bare duckdb s",
        "ratio",
        "goal",
        "met",
        "rows",
        title=f"whole processes, median of {config.repeats}: {record['graphs']:,} graphs, "
        f"{record['edges']:,} edges; floor (python -c 'import duckdb') "
        f"{record['floor']['median_s']:.3f} s",
    )
    for name, c in record["commands"].items():
        t.add_row(
            name if name != "sql" else f"sql {config.sql}",
            f"{c['circuitray']['median_s']:.3f}",
            f"{c['bare']['median_s']:.3f}",
            f"{c['ratio']:.2f}x",
            c["goal"],
            "[green]yes[/]" if c["met"] else "[red]no[/]",
            str(c["rows"]),
        )
    console.print(t)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(record, indent=2, default=str) + "\n")
        console.print(f"results: {json_out}")


@bench_group.command("suite")
@config_option(AttributionBenchConfig, "model")
@click.option("--prompts", "n_prompts", type=click.IntRange(min=1), help="Prompts per run [48].")
@click.option(
    "--quick", is_flag=True, help="8 prompts in batches of 2, 1 round, 2 flatten prompts."
)
@click.option("--batch-size", type=click.IntRange(min=1), help="Prompts per batch and file [8].")
@click.option("--repeats", type=click.IntRange(min=1), help="Rounds of plain + circuitray [2].")
@config_option(
    AttributionBenchConfig,
    "actor_counts",
    "--actors",
    "actor_counts",
    type=IntList(),
    help="Actor counts for scaling.",
)
@config_option(
    AttributionBenchConfig,
    "torch_threads",
    "--threads",
    "torch_threads",
    type=click.IntRange(min=0),
    help="Torch threads per actor and plain loop; 0: circuitray's own placement.",
)
@config_option(AttributionBenchConfig, "seed", type=int, help="Seed of the WS2 prompts.")
@click.option(
    "--pruning/--no-pruning",
    default=True,
    show_default=True,
    help="Run the pruning comparison (circuitray.bench.pruning).",
)
@click.option(
    "--real-shape/--no-real-shape",
    default=True,
    show_default=True,
    help="Run the 26-layer gemma-2-2b-shaped figures (circuitray.bench.real_shape).",
)
@click.option(
    "--real-models/--no-real-models",
    default=True,
    show_default=True,
    help="The same figures for each real model built (stories260k, gemma-3-270m).",
)
@click.option(
    "--results-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=RESULTS_DIR,
    show_default=True,
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where runs are written (kept); default: a temporary folder, removed at the end.",
)
def suite_cmd(
    quick,
    n_prompts,
    batch_size,
    repeats,
    pruning,
    real_shape,
    real_models,
    results_dir,
    work_dir,
    **fields,
):
    """make bench: circuitray against a plain loop; print a table, write JSON results."""
    from circuitray.bench.suite import print_suite, run_suite, suite_config

    _bench_logging()
    values = config_values(AttributionBenchConfig, fields)
    values["torch_threads"] = values["torch_threads"] or None  # 0: circuitray's placement
    config = suite_config(
        quick=quick, n_prompts=n_prompts, batch_size=batch_size, repeats=repeats, **values
    )
    done = run_suite(
        config,
        pruning=pruning,
        real_shape=real_shape,
        real_models=real_models,
        quick=quick,
        results_dir=results_dir,
        work_dir=work_dir,
    )
    out = _wide_console()
    print_suite(done.record, console=out)
    sections = ", ".join(f"{k} {v:.0f}s" for k, v in done.record["section_s"].items())
    out.print(f"total wall time {done.record['wall_s']:.0f}s ({sections}); results: {done.path}")


@bench_group.command("gpu")
@config_option(GpuBenchConfig, "device", type=click.Choice(["auto", "cuda", "cpu"]))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="JSON results.")
@click.option("--md-out", type=click.Path(dir_okay=False, path_type=Path), help="Markdown summary.")
@config_option(GpuBenchConfig, "main_model", "--model", "main_model")
@config_option(GpuBenchConfig, "main_transcoders", "--transcoders", "main_transcoders")
@config_option(GpuBenchConfig, "dtype")
@config_option(GpuBenchConfig, "fallback")
@config_option(GpuBenchConfig, "with_fallback", is_flag=True)
@config_option(GpuBenchConfig, "lengths", type=IntList())
@config_option(GpuBenchConfig, "prompts", type=click.IntRange(min=1))
@config_option(GpuBenchConfig, "warmup", type=click.IntRange(min=0))
@config_option(GpuBenchConfig, "tuned_batch_size", type=click.IntRange(min=1))
@config_option(GpuBenchConfig, "tuned_max_feature_nodes", type=click.IntRange(min=1))
@config_option(GpuBenchConfig, "tuned_update_interval", type=click.IntRange(min=1))
@config_option(GpuBenchConfig, "sweep", "--sweep/--no-sweep", "sweep")
@config_option(GpuBenchConfig, "prune_compare", "--prune-compare/--no-prune-compare")
@config_option(GpuBenchConfig, "seed", type=int)
@config_option(GpuBenchConfig, "quick", is_flag=True)
@config_option(GpuBenchConfig, "packing", type=IntList())
@config_option(GpuBenchConfig, "packing_prompts", type=click.IntRange(min=1))
@click.option(
    "--render",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Only print (and --md-out) an earlier JSON report; runs nothing.",
)
def gpu_cmd(out, md_out, render, **fields) -> None:
    """Attribution graphs per hour on one device (see circuitray.bench.gpu)."""
    from circuitray.bench import gpu

    if render:
        gpu.print_report(gpu.render(render, md_out=md_out))
        return
    if not out:
        raise click.UsageError("--out is required (the JSON results file)")
    _bench_logging()
    config = GpuBenchConfig(**config_values(GpuBenchConfig, fields))
    gpu.print_report(gpu.run_gpu_bench(config, out=out, md_out=md_out))


@bench_group.command("scale")
@click.option(
    "--sizes",
    type=IntList(),
    default=None,
    help="Prompt counts to run [1000,10000,100000,1000000].",
)
@click.option(
    "--batch-sizes",
    type=IntList(),
    default=None,
    help="Batch size per size (as many as --sizes); default: 8 at 10^3 growing as n^0.6.",
)
@click.option(
    "--s3/--no-s3",
    default=True,
    show_default=True,
    help="Also run --s3-size prompts into a local S3 server (moto), counting requests.",
)
@click.option("--s3-size", type=click.IntRange(min=1), default=None, help="[100000]")
@click.option(
    "--actors", type=click.IntRange(min=1), default=None, help="Worker actors [one per core]."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Benchmark folder (prompt files are kept there) [$CIRCUITRAY_HOME/bench/scale].",
)
@click.option("--keep", is_flag=True, help="Keep the run folders.")
@click.option(
    "--json-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where the record goes [bench/results/scale-<UTC date>.json].",
)
def scale_cmd(sizes, batch_sizes, s3, s3_size, actors, out, keep, json_out) -> None:
    """Driver RSS, dispatch cost per prompt, parts, resume check, compaction and a named
    query from 10^3 to 10^6 prompts, with growth exponents (synthetic workers)."""
    from datetime import UTC, datetime

    from circuitray.bench import scale

    _bench_logging()
    record = scale.run_scale_bench(
        sizes=sizes or scale.SIZES,
        batch_sizes=batch_sizes,
        s3=s3,
        s3_size=s3_size or scale.S3_SIZE,
        actors=actors,
        out=out,
        keep=keep,
    )
    path = json_out or RESULTS_DIR / f"scale-{datetime.now(UTC).strftime('%Y-%m-%d')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    scale.print_scale(record, console=_wide_console())
    console.print(f"total wall time {record['wall_s']:.0f}s; results: {path}")


@bench_group.command("aggregate")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@config_option(AggregateConfig, "min_share", type=click.FloatRange(0.0, 1.0))
@config_option(AggregateConfig, "memory_limit")
@click.option("--json-out", type=click.Path(dir_okay=False), default=None)
@click.option(
    "--goal", type=float, default=1e6, show_default=True, help="Graphs per hour, each run."
)
def bench_aggregate_cmd(run_dirs, min_share, memory_limit, json_out, goal) -> None:
    """circuitray aggregate on each RUN_DIR in a fresh process: graphs per hour, peak memory."""
    from dataclasses import asdict

    from circuitray.bench.aggregate import time_aggregate

    timings = [time_aggregate(r, min_share=min_share, memory_limit=memory_limit) for r in run_dirs]
    t = Table(
        "run", "graphs", "edges", "seconds", "graphs/hour", "peak MiB", f">= {goal:,.0f}/h",
        show_edge=False,
    )  # fmt: skip
    for a in timings:
        t.add_row(
            Path(a.run_dir).name, f"{a.graphs:,}", f"{a.edges:,}", f"{a.seconds:.1f}",
            f"{a.graphs_per_hour:,.0f}", f"{a.peak_rss_mb:,.0f}",
            "yes" if a.graphs_per_hour >= goal else "NO",
        )  # fmt: skip
    console.print(
        f"circuitray aggregate --min-share {min_share:g} --memory-limit {memory_limit}; "
        f"{os.cpu_count()} CPU cores"
    )
    console.print(t)
    if json_out:
        _write_record(
            json_out,
            {"min_share": min_share, "memory_limit": memory_limit},
            [asdict(a) for a in timings],
        )
    if any(a.graphs_per_hour < goal for a in timings):
        sys.exit(1)
