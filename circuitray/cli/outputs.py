"""``circuitray report``, ``export``, ``serve`` and ``aggregate``."""

from __future__ import annotations

import contextlib
import json

import click

from circuitray.cli.options import config_option
from circuitray.cli.printing import (
    console,
    print_json,
    print_result,
)
from circuitray.outputs.aggregate import AggregateConfig, aggregate_circuits
from circuitray.outputs.export import export_graph
from circuitray.outputs.report import ReportConfig, build_report
from circuitray.outputs.viewer import graph_slugs, serve


@click.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="HTML file.")
@config_option(ReportConfig, "top_k", type=click.IntRange(min=1))
@config_option(ReportConfig, "circuit_edges", type=click.IntRange(min=1))
@click.option(
    "--interventions",
    "interventions",
    multiple=True,
    type=click.Path(),
    help="An intervention folder (circuitray intervene), repeatable: adds an "
    "Interventions section.",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def report_cmd(run_dirs, out, top_k, circuit_edges, interventions, as_json) -> None:
    """One self-contained HTML report of RUN_DIRs (two runs: before/after)."""
    config = ReportConfig(top_k=top_k, circuit_edges=circuit_edges)
    status = console.status("building the report") if not as_json else contextlib.nullcontext()
    with status:
        record = build_report(list(run_dirs), out, config=config, interventions=list(interventions))
    text = (
        f"{record['path']}: {record['plots']} plots, {record['bytes'] / 1e6:.1f} MB "
        f"in {record['seconds']:.1f}s"
    )
    print_result(record, text, as_json=as_json)


@click.command("export")
@click.argument("run_dir", type=click.Path())
@click.option("--graph", "graph_id", type=int, required=True, help="graph_id to export.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Viewer folder.")
@config_option(export_graph, "slug", help="Name in the viewer (default RUN-gID).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def export_cmd(run_dir, graph_id, out, slug, as_json) -> None:
    """Write a stored graph in circuit-tracer's graph-viewer JSON format."""
    path = export_graph(run_dir, graph_id, out, slug=slug)
    data = json.loads(path.read_text())
    record = {
        "path": str(path),
        "slug": data["metadata"]["slug"],
        "nodes": len(data["nodes"]),
        "links": len(data["links"]),
    }
    text = f"{path}: {record['nodes']} nodes, {record['links']} links; "
    print_result(record, text + f"view with: circuitray serve {out}", as_json=as_json)


@click.command("serve")
@click.argument("data_dir", type=click.Path())
@config_option(serve, "port", type=click.IntRange(0, 65535))
def serve_cmd(data_dir, port) -> None:
    """Serve exported graphs in circuitray's offline viewer on 127.0.0.1."""
    server = serve(data_dir, port=port)
    port = server.server_address[1]
    console.print(f"http://127.0.0.1:{port}/ ({len(graph_slugs(data_dir))} graphs); Ctrl-C stops")
    try:
        server.serve_forever()
    finally:
        server.server_close()


@click.command("aggregate")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@config_option(AggregateConfig, "out", required=True, type=click.Path(file_okay=False))
@config_option(AggregateConfig, "by")
@config_option(AggregateConfig, "min_share", type=click.FloatRange(0.0, 1.0))
@config_option(AggregateConfig, "top_k", type=click.IntRange(min=0))
@config_option(AggregateConfig, "edge_top_k", type=click.IntRange(min=0))
@config_option(AggregateConfig, "supernodes", type=click.Path(dir_okay=False))
@config_option(AggregateConfig, "memory_limit")
@click.option("--json", "as_json", is_flag=True, help="Print the groups as JSON.")
def aggregate_cmd(run_dirs, as_json: bool, **fields) -> None:
    """Consensus circuits of RUN_DIRs' graphs per --by group: tables and viewer graphs
    in --out (then: circuitray serve OUT)."""
    result = aggregate_circuits(AggregateConfig(runs=list(run_dirs), **fields))
    if as_json:
        print_json({"out": result.out, "groups": result.groups})
        return
    for g in result.groups:
        console.print(
            f"{g['slug']}: {g['graphs']} graphs, {g['nodes']} nodes, {g['edges']} edges",
            soft_wrap=True,
            markup=False,
        )
    console.print(
        f"wrote {result.out}; open with: circuitray serve {result.out}",
        soft_wrap=True,
        markup=False,
    )
