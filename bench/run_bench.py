"""`make bench`: circuitray against a plain loop, side by side, on this machine.

1. Run every measurement of :mod:`circuitray.bench.attribution` (overhead, scaling,
   flattening, storage, memory) in a temporary work folder.
2. Run the pruning comparison of :mod:`circuitray.bench.pruning` (circuitray's exact
   pruning against circuit-tracer's ``prune_graph``), unless ``--no-pruning``.
3. Print one table (each figure, its goal, whether it is met) and write the results,
   with a description of the machine, to ``bench/results/bench-<UTC time>.json`` and
   ``bench/results/latest.json``.

Defaults fit in well under 10 minutes on 2 CPU cores with the organism model;
``--quick`` (or ``--prompts N``) shrinks the work.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from circuitray.bench.attribution import (
    AttributionBenchConfig,
    machine_info,
    run_attribution_bench,
)
from circuitray.bench.pruning import compare_pruning

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Piped to a file or CI log, rich would wrap at 80 columns; the table needs more.
console = Console(width=None if sys.stdout.isatty() else 160)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    return out.stdout.strip() or None


# ---- Pruning comparison ----------------------------------------------------------------
def _flat(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def print_pruning(section: dict) -> None:
    """Its ``rows`` as a table; without them, each list of dicts and each dict (but
    ``config``) as a table of flattened keys, one column per entry."""
    groups: dict[str, list[dict]] = {}
    if isinstance(section.get("rows"), list):
        groups["rows"] = section["rows"]
    else:
        for key, value in section.items():
            if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
                groups[key] = value
            elif isinstance(value, dict) and key != "config":
                groups[key] = [value]
    for key, entries in groups.items():
        flat = [_flat(e) for e in entries]
        table = Table(title=f"pruning comparison: {key}")
        table.add_column("field", overflow="fold")
        for e in flat:
            first = next(iter(e.items()), ("", ""))
            table.add_column(f"{first[0]}={_fmt(first[1])}", justify="right")
        for field in dict.fromkeys(k for e in flat for k in list(e)[1:]):
            table.add_row(escape(field), *[_fmt(e.get(field)) for e in flat])
        console.print(table)


# ---- Output ----------------------------------------------------------------------------
def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    text = "" if v is None else str(v)
    return escape(text if len(text) <= 32 else text[:29] + "...")


def _met(goals: dict, name: str) -> str:
    g = goals[name]
    return "[green]yes[/]" if g["met"] else "[red]no[/]"


def print_table(result: dict) -> None:
    f, goals, ov = result["figures"], result["goals"], result["overhead"]
    fl, mem, st = result["flatten"], result["memory"], result["storage"]
    cfg = result["config"]
    table = Table(
        title=f"circuitray attribution bench: {cfg['model']}, {cfg['n_prompts']} prompts, "
        f"{cfg['repeats']} rounds, torch threads {cfg['torch_threads'] or 'auto'}"
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("goal", justify="right")
    table.add_column("met", justify="center")
    table.add_column("detail")

    cr, pl = ov["circuitray_per_graph_s"], ov["plain_per_graph_s"]
    rounds = ", ".join(f"{r:.3f}" for r in ov["round_ratios"])
    table.add_row(
        "overhead ratio (1 actor / plain loop, per graph)",
        f"{f['overhead_ratio']:.3f}x",
        goals["overhead_ratio"]["goal"],
        _met(goals, "overhead_ratio"),
        f"rounds: {rounds}",
    )
    table.add_row(
        "  circuitray, 1 actor: s per graph",
        f"{cr['median']:.3f}",
        "",
        "",
        f"min {cr['min']:.3f}, max {cr['max']:.3f}",
    )
    table.add_row(
        "  plain loop: s per graph",
        f"{pl['median']:.3f}",
        "",
        "",
        f"min {pl['min']:.3f}, max {pl['max']:.3f}",
    )
    b = ov["breakdown"]
    table.add_row(
        "  circuitray's own overhead per graph (s)",
        f"{ov['dispatch_s']:.4f}",
        "",
        "",
        f"{100 * ov['dispatch_share']:.1f}% of its per-graph time: Ray calls, part "
        "writes, compaction, bookkeeping",
    )
    table.add_row(
        "  circuitray per graph: attribute / flatten / other / dispatch",
        " / ".join(
            f"{b['circuitray'][k]:.3f}"
            for k in ("attribute", "flatten", "other_in_attribute_prompt", "dispatch_write_compact")
        ),
        "",
        "",
        "s; flatten includes circuitray's pruning; other: tokenise + next-token forward",
    )
    table.add_row(
        "  plain per graph: attribute / prune_graph / write / other",
        " / ".join(f"{b['plain'][k]:.3f}" for k in ("attribute", "prune", "write", "other")),
        "",
        "",
        f"s; attribute() actor / plain {ov['attribute_ratio']:.3f} (same work: noise)",
    )
    rs, ld = ov["ray_start_s"], ov["plain_load_s"]
    table.add_row(
        "start-up: Ray + actor + model load (s)",
        f"{rs['median']:.2f}",
        "",
        "",
        f"min {rs['min']:.2f}, max {rs['max']:.2f}; plain loop model load {ld['median']:.2f}",
    )
    for k, v in result["scaling"].items():
        table.add_row(
            f"scaling: graphs/min, {k} actor(s)",
            f"{v['graphs_per_min']:.1f}",
            "",
            "",
            f"x{v['speedup']:.2f} of 1 actor; {v['graphs_per_min_e2e']:.1f} with start-up; "
            f"threads {v['torch_threads']}",
        )
    table.add_row(
        "flatten: kept edges/s (Graph -> Arrow)",
        f"{f['flatten_edges_per_s']:,.0f}",
        "",
        "",
        f"{fl['n_edges']} edges, {fl['n_graphs']} graphs; without pruning "
        + (f"{fl['n_edges'] / fl['arrow_s']:,.0f}/s" if fl["arrow_s"] else "not measured"),
    )
    table.add_row(
        "flatten + write, share of attribute() time",
        f"{100 * f['flatten_write_share']:.1f}%",
        "< 5%",
        _met(goals, "flatten_write_share"),
        "",
    )
    att = fl["attribute_s"]
    if fl["prune_s"] is None:
        split = "not measured: flatten_graph made none of the timed calls"
        table.add_row("  of attribute(): pruning / Arrow + rest / write", "", "", "", split)
    else:
        parts = [("pruning", fl["prune_s"])]
        if fl["scores_s"] or fl["influence_s"]:
            parts.append(("graph scores + influence", fl["scores_s"] + fl["influence_s"]))
        parts += [("Arrow + rest", fl["arrow_s"]), ("write", fl["write_s"])]
        table.add_row(
            "  of attribute(): " + " / ".join(name for name, _ in parts),
            " / ".join(f"{100 * v / att:.1f}%" for _, v in parts),
            "",
            "",
            f"attribute() {att / fl['n_graphs']:.3f} s per graph",
        )
    table.add_row(
        "storage: bytes per edge (all tables)",
        f"{f['bytes_per_edge']:.2f}",
        goals["bytes_per_edge"]["goal"],
        _met(goals, "bytes_per_edge"),
        f"edges table alone {f['edge_bytes_per_edge']:.2f}; "
        f"plain loop's 4 columns {f['plain_bytes_per_edge']:.2f}",
    )
    table.add_row(
        "memory: peak RSS actor / bare process",
        f"{mem['ratio']:.2f}x",
        "",
        "",
        f"{mem['actor_peak_rss_mb']:.0f} MiB vs {mem['bare_peak_rss_mb']:.0f} MiB, "
        f"prompt {mem['prompt_id']}",
    )
    console.print(table)
    console.print(f"storage: {st['n_edges']} edges, {st['table_bytes']} bytes by table")


# ---- The script --------------------------------------------------------------------------
@click.command()
@click.option("--model", default="organism-tuned", show_default=True, help="Model to attribute.")
@click.option("--prompts", "n_prompts", type=int, default=None, help="Prompts per run [48].")
@click.option(
    "--quick", is_flag=True, help="8 prompts in batches of 2, 1 round, 2 flatten prompts."
)
@click.option("--batch-size", type=int, default=None, help="Prompts per batch and file [8].")
@click.option("--repeats", type=int, default=None, help="Rounds of plain + circuitray [2].")
@click.option("--actors", default="1,2", show_default=True, help="Actor counts for scaling.")
@click.option(
    "--threads",
    type=int,
    default=1,
    show_default=True,
    help="Torch threads per actor and plain loop; 0: circuitray's own placement.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--pruning/--no-pruning",
    default=True,
    show_default=True,
    help="Run the pruning comparison (circuitray.bench.pruning).",
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
def main(
    model: str,
    n_prompts: int | None,
    quick: bool,
    batch_size: int | None,
    repeats: int | None,
    actors: str,
    threads: int,
    seed: int,
    pruning: bool,
    results_dir: Path,
    work_dir: Path | None,
) -> None:
    """Benchmark circuitray against a plain loop; print a table, write JSON results."""
    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )
    logging.getLogger("circuitray.bench").setLevel(logging.INFO)
    config = AttributionBenchConfig(
        model=model,
        n_prompts=n_prompts or (8 if quick else 48),
        seed=seed,
        actor_counts=tuple(int(a) for a in actors.split(",") if a.strip()),
        torch_threads=threads or None,
        repeats=repeats or (1 if quick else 2),
        batch_size=batch_size or (2 if quick else 8),
        n_flatten=2 if quick else 16,
    )
    config.n_flatten = min(config.n_flatten, config.n_prompts)
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    machine = machine_info()
    root = work_dir or Path(tempfile.mkdtemp(prefix="circuitray-bench-"))
    pruning_result: dict | None = None
    try:
        result = run_attribution_bench(config, root / "attribution")
        t_pruning = time.perf_counter()
        pruning_result = compare_pruning(quick=quick) if pruning else None
        if pruning_result is None:
            result["pruning"] = {"skipped": "--no-pruning"}
        else:
            result["pruning"] = pruning_result
            result["section_s"]["pruning"] = time.perf_counter() - t_pruning
    finally:
        if work_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    wall_s = time.perf_counter() - t0
    machine["loadavg_end"] = list(os.getloadavg())
    out = {
        "format": "circuitray-bench/1",
        "started_at": started.isoformat(timespec="seconds"),
        "wall_s": wall_s,
        "git_commit": _git_commit(),
        "argv": sys.argv[1:],
        "machine": machine,
        **result,
    }

    print_table(result)
    if pruning_result is None:
        console.print(f"[dim]pruning comparison skipped: {result['pruning']['skipped']}[/]")
    else:
        print_pruning(pruning_result)
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(out, indent=2, default=str) + "\n"
    path = results_dir / f"bench-{stamp}.json"
    path.write_text(text)
    (results_dir / "latest.json").write_text(text)
    sections = ", ".join(f"{k} {v:.0f}s" for k, v in result["section_s"].items())
    console.print(f"total wall time {wall_s:.0f}s ({sections}); results: {path}")


if __name__ == "__main__":
    main()
