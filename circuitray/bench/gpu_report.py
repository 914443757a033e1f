"""Rendering of a GPU benchmark record (:mod:`circuitray.bench.gpu`): the tables a
terminal shows and the Markdown summary ``bench/gpu_results.md`` keeps.

1. :func:`result_rows` and :func:`prune_rows` turn the record's cells and pruning
   comparison into rows of strings (``-`` for a missing value).
2. :func:`print_report` prints them as rich tables (plain Markdown without rich).
3. :func:`markdown_report` writes the whole summary: the machine, the hub, each model
   loaded or why not, the tables and the packing rows; :func:`render` reads an earlier
   record from its JSON file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["markdown_report", "print_report", "render", "write_markdown"]


def _fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def result_rows(report: dict) -> list[list[str]]:
    rows = []
    for m in report["models"]:
        for c in m.get("results", []):
            rows.append(
                [
                    m["label"],
                    _fmt(c["length"]),
                    "/".join(str(t) for t in c["n_tokens"]) or "-",
                    c["setting"],
                    f"{c['batch_size']}/{c['max_feature_nodes'] or 'all'}/{c['update_interval']}",
                    _fmt(c.get("s_per_graph"), 3),
                    _fmt(c.get("attribute_s"), 3),
                    _fmt(c.get("flatten_s"), 3),
                    _fmt(c.get("graphs_per_hour"), 0),
                    _fmt(c.get("peak_gpu_mb"), 0),
                    _fmt(c.get("N")),
                    _fmt(c.get("n_kept_nodes")),
                    _fmt(c.get("n_kept_edges")),
                    "; ".join(c["errors"]) if c["errors"] else "",
                ]
            )
    return rows


HEADERS = [
    "model",
    "length",
    "tokens",
    "setting",
    "batch/max_feat/update",
    "s/graph",
    "attribute s",
    "flatten s",
    "graphs/h",
    "peak GPU MB",
    "N",
    "kept nodes",
    "kept edges",
    "errors",
]
PRUNE_HEADERS = ["model", "N", "method", "on", "s", "peak extra MB", "kept edges", "mask diff"]


def prune_rows(report: dict) -> list[list[str]]:
    rows = []
    for m in report["models"]:
        pc = m.get("prune_comparison")
        if not pc or "runs" not in pc:
            continue
        for r in pc["runs"]:
            peak = r.get("peak_extra_gpu_mb", r.get("peak_extra_rss_mb"))
            diff = r.get("edge_mask_diff_vs_circuitray_cpu")
            rows.append(
                [
                    m["label"],
                    _fmt(pc["N"]),
                    r["method"],
                    r["on"],
                    _fmt(r.get("s"), 3) if "s" in r else r.get("error") or r.get("skipped", "-"),
                    _fmt(peak, 0),
                    _fmt(r.get("kept_edges")),
                    "ref" if diff is None and "kept_edges" in r else _fmt(diff),
                ]
            )
    return rows


def print_report(report: dict) -> None:
    env = report["environment"]
    title = (
        f"circuitray bench gpu on {env['gpu_name'] or 'CPU'} "
        f"(torch {env['torch']}, CUDA {env['torch_cuda']})"
    )
    try:
        from rich.console import Console
        from rich.table import Table

        console = Console(width=None if sys.stdout.isatty() else 220)
        for heads, rows, t in (
            (HEADERS, result_rows(report), title),
            (PRUNE_HEADERS, prune_rows(report), "pruning: circuit-tracer vs circuitray"),
        ):
            table = Table(title=t)
            for h in heads:
                table.add_column(
                    h, justify="left" if h in ("model", "setting", "method") else "right"
                )
            for r in rows:
                table.add_row(*r)
            console.print(table)
        for m in report["models"]:
            if not m["loaded"]:
                console.print(f"[yellow]{m['model']}: not loaded: {m['error']}[/yellow]")
        console.print(report["summary"])
    except ImportError:
        print(title)
        print(markdown_tables(report))


def markdown_tables(report: dict) -> str:
    def md(heads: list[str], rows: list[list[str]]) -> str:
        lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)

    return md(HEADERS, result_rows(report)) + "\n\n" + md(PRUNE_HEADERS, prune_rows(report))


def markdown_report(report: dict) -> str:
    env = report["environment"]
    hub = report["hub"]
    lines = [
        f"# circuitray bench gpu results: {env['gpu_name'] or 'CPU (no GPU)'}",
        "",
        f"- created (UTC): {report['created_utc']}; commit {env['git_commit']}",
        f"- device: {env['device']}, GPU {env['gpu_name']} ({env['gpu_memory_gb']} GiB); "
        f"{env['cpu_count']} CPUs, {env['memory_gb']} GiB RAM",
        f"- torch {env['torch']}, CUDA {env['torch_cuda']}; "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
        f"- hub reachable: {hub['reachable']} ({hub['detail']}); "
        f"gemma available: {report['gemma_available']}",
        f"- {report['summary']}",
    ]
    for m in report["models"]:
        if not m["loaded"]:
            lines.append(f"- {m['model']} ({m['transcoders']}): not loaded: {m['error']}")
    lines += [
        "",
        "s/graph is the mean wall time of attribute + next-token probabilities + exact",
        "pruning + flattening (circuitray.graph.attribute.attribute_prompt) after a warm-up;",
        "graphs/h = 3600 / s/graph for one process on one device; peak GPU MB is",
        "torch.cuda.max_memory_allocated over the cell (model weights included).",
        "",
        markdown_tables(report),
        "",
    ]
    packing = report.get("packing")
    if packing:
        lines += [
            f"Packing ({packing['model']}, {packing['prompts']} prompts per run; graphs/h "
            "from dispatch time, start-up apart):",
            "",
            "| actors | GPUs per actor | graphs/h | start-up s | ok | errors |",
            "|---|---|---|---|---|---|",
        ]
        for r in packing["rows"]:
            lines.append(
                f"| {r['actors']} | {r['gpus_per_actor']:.3g} | "
                f"{r.get('graphs_per_hour', r.get('error', '-'))} | {r.get('ray_start_s', '-')} | "
                f"{r.get('ok', '-')} | {r.get('errors', '-')} |"
            )
        lines += [
            "",
            f"Best packing: {packing['best_actors']} actor(s), "
            f"{packing['best_graphs_per_hour']} graphs/h.",
            "",
        ]
    return "\n".join(lines)


def render(path: Path, *, md_out: Path | None = None) -> dict:
    """An earlier run's report from ``path`` (and its Markdown into ``md_out``)."""
    report = json.loads(path.read_text())
    if md_out:
        write_markdown(report, md_out)
    return report


def write_markdown(report: dict, md_out: Path) -> None:
    """The Markdown summary of ``report`` (:func:`markdown_report`) into ``md_out``."""
    md_out.parent.mkdir(parents=True, exist_ok=True)
    md_out.write_text(markdown_report(report))
