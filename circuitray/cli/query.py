"""``circuitray query``, ``sql`` and ``compare``: DuckDB over stored runs (no torch)."""

from __future__ import annotations

import click
from rich.table import Table

from circuitray.cli.options import config_option
from circuitray.cli.printing import (
    console,
    parse_params,
    print_json,
    print_table,
    table_output_options,
)
from circuitray.errors import CircuitrayError
from circuitray.query.compare import CompareConfig, compare_groups, compare_runs
from circuitray.query.engine import list_queries, run_query, run_sql


@click.command("query", context_settings={"ignore_unknown_options": False})
@click.argument("name", required=False)
@click.argument("run_dirs", nargs=-1, type=click.Path())
@click.option("--list", "list_", is_flag=True, help="List the named queries.")
@click.option("--param", "params", multiple=True, help="key=value, repeatable.")
@click.option(
    "--supernodes",
    type=click.Path(dir_okay=False),
    help="A grouping file (layer, feature, name: CSV, Parquet or JSONL) for the view "
    "supernodes; the consensus_* queries collapse its groups into single nodes.",
)
@table_output_options
def query_cmd(name, run_dirs, list_, params, supernodes, fmt, output) -> None:
    """Run the named query NAME (queries/NAME.sql) over one or more RUN_DIRs."""
    if list_:
        queries = list_queries()
        if fmt == "json":
            print_json(
                [
                    {
                        "name": q.name,
                        "description": q.description,
                        "params": {
                            k: {"type": t, "default": d, "doc": doc}
                            for k, (t, d, doc) in q.params.items()
                        },
                    }
                    for q in queries
                ]
            )
            return
        t = Table("query", "description", "parameters")
        for q in queries:
            ps = ", ".join(f"{k}={d}" for k, (_, d, _) in q.params.items())
            t.add_row(q.name, q.description, ps)
        console.print(t)
        return
    if not name or not run_dirs:
        raise CircuitrayError("usage: circuitray query NAME RUN_DIR [RUN_DIR ...] (or --list)")
    print_table(
        run_query(name, list(run_dirs), params=parse_params(params), supernodes=supernodes),
        fmt=fmt,
        output=output,
    )


@click.command("sql")
@click.argument("args", nargs=-1, required=True)
@table_output_options
def sql_cmd(args, fmt, output) -> None:
    """Read-only SQL over views graphs, nodes, edges, interventions: circuitray sql
    RUN_DIR... "SELECT ..."

    Every format shows every column the query returns, in order; a name it repeats
    is kept by the first column, each repeat gets the first free NAME_1, NAME_2...
    (SELECT g.graph_id, n.graph_id: graph_id, graph_id_1)."""

    if len(args) < 2:
        raise CircuitrayError('usage: circuitray sql RUN_DIR [RUN_DIR ...] "SELECT ..."')
    print_table(run_sql(list(args[:-1]), args[-1]), fmt=fmt, output=output)


@click.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@config_option(CompareConfig, "by")
@config_option(
    CompareConfig, "metrics", "--metric", "metrics", multiple=True, help="Metric (repeatable)."
)
@config_option(CompareConfig, "n_boot", type=click.IntRange(min=100))
@config_option(CompareConfig, "alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True))
@config_option(CompareConfig, "seed", type=int)
@config_option(CompareConfig, "mixed_targets", is_flag=True)
@table_output_options
def compare_cmd(run_dirs, by, metrics, n_boot, alpha, seed, mixed_targets, fmt, output) -> None:
    """BASELINE CANDIDATE: paired differences per --by group; one RUN: differences
    between its --by groups. Bootstrap CIs, effect sizes, Holm-adjusted verdicts."""

    config = CompareConfig(
        by=by,
        metrics=tuple(metrics) or None,
        n_boot=n_boot,
        alpha=alpha,
        seed=seed,
        mixed_targets=mixed_targets,
    )
    if len(run_dirs) == 1:
        table = compare_groups(run_dirs[0], config=config)
    elif len(run_dirs) == 2:
        table = compare_runs(run_dirs[0], run_dirs[1], config=config)
    else:
        raise CircuitrayError(
            "usage: circuitray compare BASELINE_RUN CANDIDATE_RUN, or RUN --by COL"
        )
    print_table(table, fmt=fmt, output=output)
