"""``circuitray bench``: the benchmarks a user runs on their own machine or cluster, as a
thin layer over :mod:`circuitray.bench`.

- ``gpu``: graphs per hour on one GPU (:mod:`circuitray.bench.gpu`);
- ``processes``: ``circuitray query`` / ``sql`` on a run folder as whole processes next
  to a bare DuckDB process (:mod:`circuitray.bench.processes`);
- ``scale``: the driver's and the store's cost per prompt from 10^3 to 10^6 prompts,
  synthetic workers, no model (:mod:`circuitray.bench.scale`);
- ``make-edges``: a synthetic run folder at any size, in the real schema
  (:mod:`circuitray.bench.synthetic`).

The development suites (``make bench``, ``make bench-queries``, ``make bench-aggregate``)
live outside the package, in the checkout's ``benchmarks/`` (``python -m benchmarks``).
Options take their defaults and help from the benchmark configs
(:func:`circuitray.cli.options.config_option`); torch loads inside the commands that
attribute, never with this module.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from circuitray.bench.environment import RESULTS_DIR
from circuitray.bench.gpu import GpuBenchConfig
from circuitray.bench.processes import ProcessBenchConfig
from circuitray.bench.synthetic import SyntheticSpec
from circuitray.cli.options import config_option, config_values
from circuitray.cli.printing import console
from circuitray.errors import CircuitrayError


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


def bench_logging(*names: str) -> None:
    """Benchmark progress (INFO of circuitray.bench and ``names``) through the CLI's log
    handler."""
    for name in ("circuitray.bench", *names):
        logging.getLogger(name).setLevel(logging.INFO)


def wide_console() -> Console:
    # Piped to a file or CI log, rich would wrap at 80 columns; the tables need more.
    return Console(width=None if sys.stdout.isatty() else 160)


@click.group("bench")
def bench_group() -> None:
    """Benchmarks for your machine: GPU graphs/hour, query processes, scale, synthetic runs."""


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

    bench_logging()
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
    from circuitray.bench import gpu, gpu_report

    if render:
        gpu_report.print_report(gpu_report.render(render, md_out=md_out))
        return
    if not out:
        raise click.UsageError("--out is required (the JSON results file)")
    bench_logging()
    config = GpuBenchConfig(**config_values(GpuBenchConfig, fields))
    report = gpu.run_gpu_bench(config, out=out)
    if md_out:
        gpu_report.write_markdown(report, md_out)
    gpu_report.print_report(report)


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

    bench_logging()
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
    scale.print_scale(record, console=wide_console())
    console.print(f"total wall time {record['wall_s']:.0f}s; results: {path}")
