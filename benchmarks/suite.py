"""``make bench`` (``python -m benchmarks suite``): circuitray against a plain loop, side by
side, on this machine.

1. Build the :class:`AttributionBenchConfig` (:func:`suite_config`): 48 WS2 prompts
   in batches of 8, 2 rounds, 16 flatten prompts; ``quick`` (:data:`QUICK`) makes it
   8 prompts in batches of 2, 1 round, 2 flatten prompts.
2. Run every measurement of :mod:`benchmarks.attribution` (overhead, scaling,
   flattening, storage, memory) in a work folder (a temporary one unless given).
3. Run the pruning comparison of :mod:`benchmarks.pruning` (circuitray's exact
   pruning against circuit-tracer's ``prune_graph``), unless ``pruning`` is off, and
   the real-shape figures of :mod:`benchmarks.real_shape` (the 26-layer
   gemma-2-2b-shaped model at 1/16 width: per-graph time, peak RSS, flatten share),
   unless ``real_shape`` is off, and the same figures for each real model that is
   built (stories260K, Gemma-3-270m), unless ``real_models`` is off.
4. Write the results, with a description of the machine
   (:func:`circuitray.bench.environment.machine_info`) and the commit, to
   ``bench/results/bench-<UTC time>.json`` and ``bench/results/latest.json``.
5. :func:`print_suite` prints one table (each figure, its goal, whether it is met)
   and the pruning comparison.

Defaults fit in well under 10 minutes on 2 CPU cores with the organism model.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from benchmarks.attribution import AttributionBenchConfig
from circuitray.bench.environment import RESULTS_DIR, git_commit

__all__ = [
    "QUICK",
    "RESULTS_DIR",
    "SuiteResult",
    "print_pruning",
    "print_suite",
    "run_suite",
    "suite_config",
]


@dataclass
class SuiteResult:
    """What :func:`run_suite` wrote.

    Attributes:
        record: The JSON record (``figures``, ``goals``, each section, ``machine``...).
        path: The time-stamped results file (``latest.json`` holds the same).
    """

    record: dict[str, Any]
    path: Path


# What --quick changes: 8 prompts in batches of 2, 1 round, 2 flatten prompts.
QUICK = {"n_prompts": 8, "batch_size": 2, "repeats": 1, "n_flatten": 2}


def suite_config(
    *,
    quick: bool = False,
    n_prompts: int | None = None,
    batch_size: int | None = None,
    repeats: int | None = None,
    **fields: Any,
) -> AttributionBenchConfig:
    """The benchmark's config: ``fields`` are :class:`AttributionBenchConfig` fields as
    given; ``n_prompts``, ``batch_size`` and ``repeats`` None take its defaults (48
    prompts in batches of 8, 2 rounds, 16 flatten prompts) or, with ``quick``,
    :data:`QUICK`'s; never more flatten prompts than prompts."""
    sizes = {"n_prompts": n_prompts, "batch_size": batch_size, "repeats": repeats}
    given = {k: v for k, v in sizes.items() if v is not None}
    config = AttributionBenchConfig(**{**(QUICK if quick else {}), **given, **fields})
    config.n_flatten = min(config.n_flatten, config.n_prompts)
    return config


def run_suite(
    config: AttributionBenchConfig,
    *,
    pruning: bool = True,
    real_shape: bool = True,
    real_models: bool = True,
    quick: bool = False,
    results_dir: Path = RESULTS_DIR,
    work_dir: Path | None = None,
) -> SuiteResult:
    """Steps 2-4 of the module docstring; ``quick`` also shrinks the pruning graphs.
    ``work_dir`` keeps the runs there; by default they go to a temporary folder that
    is removed at the end."""
    from benchmarks.attribution import run_attribution_bench
    from benchmarks.pruning import compare_pruning
    from circuitray.bench.environment import machine_info

    started = datetime.now(UTC)
    t0 = time.perf_counter()
    machine = machine_info()
    root = work_dir or Path(tempfile.mkdtemp(prefix="circuitray-bench-"))
    try:
        result = run_attribution_bench(config, root / "attribution")
        from benchmarks.real_shape import real_models_bench, real_shape_bench

        n = 1 if quick else 3
        sections = (
            ("pruning", pruning, lambda: compare_pruning(quick=quick)),
            ("real_shape", real_shape, lambda: real_shape_bench(n_prompts=n)),
            ("real_models", real_models, lambda: real_models_bench(n_prompts=n)),
        )
        for name, wanted, measure in sections:
            if not wanted:
                result[name] = {"skipped": f"--no-{name.replace('_', '-')}"}
                continue
            t = time.perf_counter()
            result[name] = measure()
            result["section_s"][name] = time.perf_counter() - t
    finally:
        if work_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    wall_s = time.perf_counter() - t0
    machine["loadavg_end"] = list(os.getloadavg())
    record = {
        "format": "circuitray-bench/1",
        "started_at": started.isoformat(timespec="seconds"),
        "wall_s": wall_s,
        "git_commit": git_commit(),
        "argv": sys.argv[1:],
        "machine": machine,
        **result,
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2, default=str) + "\n"
    path = results_dir / f"bench-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(text)
    (results_dir / "latest.json").write_text(text)
    return SuiteResult(record=record, path=path)


# -- report -------------------------------------------------------------------------------
def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    text = "" if v is None else str(v)
    return escape(text if len(text) <= 32 else text[:29] + "...")


def _flat(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _met(goals: dict, name: str) -> str:
    return "[green]yes[/]" if goals[name]["met"] else "[red]no[/]"


def print_pruning(section: dict, *, console: Console) -> None:
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


def _figures_table(result: dict) -> Table:
    f, goals, ov = result["figures"], result["goals"], result["overhead"]
    fl, mem = result["flatten"], result["memory"]
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

    def row(
        figure: str, value: str, detail: str = "", *, goal: str = "", goal_text: str = ""
    ) -> None:
        """One figure; ``goal`` names its entry in ``goals`` (shown as ``goal_text``
        where given, else as the goal's own text)."""
        shown = goal_text or (goals[goal]["goal"] if goal else "")
        table.add_row(figure, value, shown, _met(goals, goal) if goal else "", detail)

    cr, pl = ov["circuitray_per_graph_s"], ov["plain_per_graph_s"]
    rounds = ", ".join(f"{r:.3f}" for r in ov["round_ratios"])
    row(
        "overhead ratio (1 actor / plain loop, per graph)",
        f"{f['overhead_ratio']:.3f}x",
        f"rounds: {rounds}",
        goal="overhead_ratio",
    )
    for label, spread in (("circuitray, 1 actor", cr), ("plain loop", pl)):
        row(
            f"  {label}: s per graph",
            f"{spread['median']:.3f}",
            f"min {spread['min']:.3f}, max {spread['max']:.3f}",
        )
    b = ov["breakdown"]
    row(
        "  circuitray's own overhead per graph (s)",
        f"{ov['dispatch_s']:.4f}",
        f"{100 * ov['dispatch_share']:.1f}% of its per-graph time: Ray calls, part "
        "writes, compaction, bookkeeping",
    )
    row(
        "  circuitray per graph: attribute / flatten / other / dispatch",
        " / ".join(
            f"{b['circuitray'][k]:.3f}"
            for k in ("attribute", "flatten", "other_in_attribute_prompt", "dispatch_write_compact")
        ),
        "s; flatten includes circuitray's pruning; other: tokenise + next-token forward",
    )
    row(
        "  plain per graph: attribute / prune_graph / write / other",
        " / ".join(f"{b['plain'][k]:.3f}" for k in ("attribute", "prune", "write", "other")),
        f"s; attribute() actor / plain {ov['attribute_ratio']:.3f} (same work: noise)",
    )
    rs, ld = ov["ray_start_s"], ov["plain_load_s"]
    row(
        "start-up: Ray + actor + model load (s)",
        f"{rs['median']:.2f}",
        f"min {rs['min']:.2f}, max {rs['max']:.2f}; plain loop model load {ld['median']:.2f}",
    )
    for k, v in result["scaling"].items():
        row(
            f"scaling: graphs/min, {k} actor(s)",
            f"{v['graphs_per_min']:.1f}",
            f"x{v['speedup']:.2f} of 1 actor; {v['graphs_per_min_e2e']:.1f} with start-up; "
            f"threads {v['torch_threads']}",
        )
    row(
        "flatten: kept edges/s (Graph -> Arrow)",
        f"{f['flatten_edges_per_s']:,.0f}",
        f"{fl['n_edges']} edges, {fl['n_graphs']} graphs; without pruning "
        + (f"{fl['n_edges'] / fl['arrow_s']:,.0f}/s" if fl["arrow_s"] else "not measured"),
    )
    row(
        "flatten + write, share of attribute() time",
        f"{100 * f['flatten_write_share']:.1f}%",
        goal="flatten_write_share",
        goal_text="< 5%",
    )
    att = fl["attribute_s"]
    if fl["prune_s"] is None:
        split = "not measured: flatten_graph made none of the timed calls"
        row("  of attribute(): pruning / Arrow + rest / write", "", split)
    else:
        parts = [("pruning", fl["prune_s"])]
        if fl["scores_s"] or fl["influence_s"]:
            parts.append(("graph scores + influence", fl["scores_s"] + fl["influence_s"]))
        parts += [("Arrow + rest", fl["arrow_s"]), ("write", fl["write_s"])]
        row(
            "  of attribute(): " + " / ".join(name for name, _ in parts),
            " / ".join(f"{100 * v / att:.1f}%" for _, v in parts),
            f"attribute() {att / fl['n_graphs']:.3f} s per graph",
        )
    row(
        "storage: bytes per edge (all tables)",
        f"{f['bytes_per_edge']:.2f}",
        f"edges table alone {f['edge_bytes_per_edge']:.2f}; "
        f"plain loop's 4 columns {f['plain_bytes_per_edge']:.2f}",
        goal="bytes_per_edge",
    )
    row(
        "memory: peak RSS actor / bare process",
        f"{mem['ratio']:.2f}x",
        f"{mem['actor_peak_rss_mb']:.0f} MiB vs {mem['bare_peak_rss_mb']:.0f} MiB, "
        f"prompt {mem['prompt_id']}",
    )
    return table


def print_real_shape(section: dict, *, console: Console) -> None:
    """One row per graph of a real-shape or real-model section, and the process's peak
    RSS."""
    table = Table(
        title=f"{section['model']} ({section.get('n_layers', 26)} layers), torch threads "
        f"{section['torch_threads']}, peak RSS {section['peak_rss_mb']:.0f} MiB"
    )
    for col in ("prompt", "tokens", "N", "kept nodes", "kept edges", "attribute s", "flatten s"):
        table.add_column(col, justify="right")
    table.add_column("flatten share", justify="right")
    table.add_column("prune_graph peak (est.)", justify="right")
    for g in section["graphs"]:
        table.add_row(
            g["prompt_id"],
            str(g["n_tokens"]),
            f"{g['n_nodes']:,}",
            f"{g['kept_nodes']:,}",
            f"{g['kept_edges']:,}",
            f"{g['attribute_s']:.2f}",
            f"{g['flatten_s']:.2f}",
            f"{100 * g['flatten_share']:.1f}%",
            f"{g['prune_graph_peak_mb_estimate']:,.0f} MiB",
        )
    console.print(table)


def print_suite(record: dict, *, console: Console) -> None:
    """The figures table, the storage line, the pruning comparison and the real-shape
    and real-model figures of a record."""
    console.print(_figures_table(record))
    st = record["storage"]
    console.print(f"storage: {st['n_edges']} edges, {st['table_bytes']} bytes by table")
    pruning = record["pruning"]
    if "skipped" in pruning:
        console.print(f"[dim]pruning comparison skipped: {pruning['skipped']}[/]")
    else:
        print_pruning(pruning, console=console)
    shape = record.get("real_shape") or {"skipped": "not in this record"}
    if "skipped" in shape:
        console.print(f"[dim]real-shape figures skipped: {shape['skipped']}[/]")
    else:
        print_real_shape(shape, console=console)
    real: dict[str, Any] = record.get("real_models") or {"skipped": "not in this record"}
    if "skipped" in real:
        console.print(f"[dim]real-model figures skipped: {real['skipped']}[/]")
        return
    for name, section in real.items():
        section: dict[str, Any]
        if "skipped" in section or "error" in section:
            why = section.get("skipped") or f"[red]{section['error']}[/]"
            console.print(f"[dim]{name}:[/] {why}")
        else:
            print_real_shape(section, console=console)
