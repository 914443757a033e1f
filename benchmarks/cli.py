"""``python -m benchmarks``: the development benchmarks' commands, a thin click layer
over :mod:`benchmarks` (each module measures; this one prints and writes the records).

- ``suite``: ``make bench``, circuitray against a plain loop (:mod:`benchmarks.suite`);
- ``queries``: ``make bench-queries``, every named query timed on a run folder
  (:mod:`benchmarks.queries`; ``circuitray bench make-edges`` writes one at scale);
- ``aggregate``: ``make bench-aggregate``, ``circuitray aggregate`` in a fresh process
  (:mod:`benchmarks.aggregate`).

Errors go through circuitray's own entry point (:func:`circuitray.cli.main`): one
line, exit 2.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import click
from rich.table import Table

from benchmarks.attribution import AttributionBenchConfig
from circuitray.bench.environment import RESULTS_DIR
from circuitray.cli.bench import IntList, bench_logging, wide_console
from circuitray.cli.options import config_option, config_values
from circuitray.cli.printing import console
from circuitray.outputs.aggregate import AggregateConfig


@click.group("benchmarks", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def benchmarks_group(verbose: bool) -> None:
    """circuitray's development benchmarks: make bench (suite), bench-queries, bench-aggregate."""


def _write_record(json_out: str, head: dict, timings: list[dict]) -> None:
    """A timing benchmark's JSON: what it measured (``head``), the machine, the timings."""
    record = {**head, "cpu_cores": os.cpu_count(), "machine": platform.platform()}
    record["timings"] = timings
    Path(json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(json_out).write_text(json.dumps(record, indent=2) + "\n")


@benchmarks_group.command("queries")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--query", "names", multiple=True, help="Only these (repeatable; 'compare').")
@click.option("--json-out", type=click.Path(dir_okay=False), default=None)
@click.option("--limit-s", type=float, default=10.0, show_default=True, help="Goal per query.")
def bench_queries_cmd(run_dir, names, json_out, limit_s) -> None:
    """Time every named query and circuitray compare on RUN_DIR."""
    from dataclasses import asdict

    from benchmarks.queries import time_queries
    from circuitray.bench.processes import run_counts

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


@benchmarks_group.command("suite")
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
    help="Run the pruning comparison (benchmarks.pruning).",
)
@click.option(
    "--real-shape/--no-real-shape",
    default=True,
    show_default=True,
    help="Run the 26-layer gemma-2-2b-shaped figures (benchmarks.real_shape).",
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
    from benchmarks.suite import print_suite, run_suite, suite_config

    bench_logging("benchmarks")
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
    out = wide_console()
    print_suite(done.record, console=out)
    sections = ", ".join(f"{k} {v:.0f}s" for k, v in done.record["section_s"].items())
    out.print(f"total wall time {done.record['wall_s']:.0f}s ({sections}); results: {done.path}")


@benchmarks_group.command("aggregate")
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

    from benchmarks.aggregate import time_aggregate

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
