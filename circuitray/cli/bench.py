"""``circuitray bench``: synthetic runs at scale and query timings."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import click
from rich.table import Table

from circuitray.cli.output import (
    console,
)
from circuitray.errors import CircuitrayError


@click.group("bench")
def bench_group() -> None:
    """Benchmarks: synthetic runs at scale, query timings."""


@bench_group.command("make-edges")
@click.option("--edges", type=click.IntRange(min=1), default=100_000_000, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Run folder.")
@click.option("--edges-per-graph", type=click.IntRange(min=1), default=5_000, show_default=True)
@click.option("--nodes-per-graph", type=click.IntRange(min=30), default=400, show_default=True)
@click.option("--layers", type=click.IntRange(min=1), default=26, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def make_edges_cmd(edges, out, edges_per_graph, nodes_per_graph, layers, seed) -> None:
    """Write a synthetic run folder of EDGES edges in the real schema."""
    from dataclasses import asdict

    from circuitray.bench import SyntheticSpec, make_synthetic_run
    from circuitray.storage.run_store import RunStore

    spec = SyntheticSpec(
        edges=edges,
        edges_per_graph=edges_per_graph,
        nodes_per_graph=nodes_per_graph,
        n_layers=layers,
        seed=seed,
    )
    store = RunStore(out)
    if store.exists():
        meta = store.read_meta()
        if meta.get("synthetic") == asdict(spec) and meta.get("status") == "done":
            console.print(f"{out}: already holds this synthetic run ({meta['counts']})")
            return
        raise CircuitrayError(f"{out}: already a run folder; remove it or pick another --out")
    t0 = time.perf_counter()
    with console.status(f"writing {edges:,} synthetic edges to {out}"):
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

    from circuitray.bench import time_queries
    from circuitray.query.engine import connect

    con = connect([run_dir])
    counts = con.execute("SELECT (SELECT count(*) FROM edges), count(*) FROM graphs").fetchone()
    edges, graphs = counts or (0, 0)
    con.close()
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
        record = {
            "run_dir": str(run_dir),
            "edges": edges,
            "graphs": graphs,
            "cpu_cores": os.cpu_count(),
            "machine": platform.platform(),
            "timings": [asdict(q) for q in timings],
        }
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(record, indent=2) + "\n")
    if any(q.seconds >= limit_s for q in timings):
        sys.exit(1)
