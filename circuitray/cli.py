"""The ``circuitray`` command: a thin click layer over the Python API.

Every command parses its options into the API's dataclasses and calls one function
(``circuitray.run``, ``circuitray.run_query``...). Errors a user can fix
(:class:`CircuitrayError`) print one line to stderr and exit 2; no traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import click
import pyarrow as pa
from rich.console import Console
from rich.table import Table

from circuitray.errors import CircuitrayError

console = Console()
err_console = Console(stderr=True)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        warnings.filterwarnings("ignore")
        for noisy in ("ray", "transformers", "nnsight", "circuit_tracer", "attribution"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def print_table(table: pa.Table, *, fmt: str = "table", output: str | None = None) -> None:
    """Show an Arrow table as a rich table, or write csv / json / parquet."""
    if fmt == "parquet":
        if not output:
            raise CircuitrayError("--format parquet needs --output FILE")
        import pyarrow.parquet as pq

        pq.write_table(table, output)
        return
    if fmt == "csv":
        import pyarrow.csv as pacsv

        # CSV has no lists: nested columns (e.g. a path's node ids) become JSON text.
        for i, col in enumerate(table.schema):
            if pa.types.is_nested(col.type):
                text = [None if v is None else json.dumps(v) for v in table[i].to_pylist()]
                table = table.set_column(i, col.name, pa.array(text, pa.string()))

        if output:
            pacsv.write_csv(table, output)
        else:
            sink = pa.BufferOutputStream()
            pacsv.write_csv(table, sink)
            click.echo(sink.getvalue().to_pybytes().decode(), nl=False)
        return
    if fmt == "json":
        text = json.dumps(table.to_pylist(), indent=2, default=str)
        if output:
            Path(output).write_text(text + "\n")
        else:
            click.echo(text)
        return
    rich_table = Table(show_lines=False, show_edge=False)
    for name in table.column_names:
        rich_table.add_column(name, no_wrap=True)
    for row in table.to_pylist():
        rich_table.add_row(*("" if v is None else _fmt(v) for v in row.values()))
    if output:
        with open(output, "w") as f:
            Console(file=f, width=200).print(rich_table)
    else:
        # Statistics tables are wide; never fold numbers into columns of two letters.
        Console(width=max(console.width, 400) if not console.is_terminal else None).print(
            rich_table, crop=False
        )


class RunProgress:
    """A rich progress bar fed by ``run(on_progress=...)``: one bar per run, started
    only once work starts (so errors before it print cleanly), removed at the end."""

    def __init__(self, *, disabled: bool = False, label: str = "attributing"):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.label = label
        self.progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            "errors: {task.fields[errors]}",
            TimeRemainingColumn(),
            console=err_console,
            disable=disabled,
            transient=True,
        )
        self.task = None
        self.errors = 0

    def __enter__(self) -> RunProgress:
        return self

    def __call__(self, done: int, total: int, summary: dict | None) -> None:
        if summary is None:  # a run starts: a new bar
            if self.task is None:
                self.progress.start()
            else:
                self.progress.remove_task(self.task)
            self.errors = 0
            self.task = self.progress.add_task(self.label, total=total, completed=done, errors=0)
            return
        if summary.get("status") == "error":
            self.errors += 1
        assert self.task is not None
        self.progress.update(self.task, completed=done, errors=self.errors)

    def __exit__(self, *exc) -> None:
        if self.task is not None:
            self.progress.stop()


def print_run_summary(result) -> None:
    """One line per run: counts, time, rate."""
    rate = result.computed / max(result.elapsed_s - result.ray_start_s, 1e-9)
    err_console.print(
        f"{result.run_dir}: {result.ok} ok, {result.errors} errors of {result.total} "
        f"({result.computed} computed, {result.skipped} already done) in "
        f"{result.elapsed_s:.1f}s (Ray start {result.ray_start_s:.1f}s, "
        f"{rate * 60:.0f} graphs/min)",
        soft_wrap=True,
    )


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table_output_options(command):
    """--format and --output, for every command that prints a table."""
    command = click.option("--output", type=click.Path(dir_okay=False), default=None)(command)
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["table", "csv", "json", "parquet"]),
        default="table",
        show_default=True,
    )(command)


def placement_options(command):
    """Ray placement and retry options of the commands that dispatch to actors."""
    options = [
        click.option(
            "--actors",
            type=click.IntRange(min=1),
            default=None,
            help="Actors (default: one per GPU, else one per CPU core).",
        ),
        click.option("--address", default=None, help="Ray address to join, e.g. auto."),
        click.option("--gpus-per-actor", type=float, default=1.0, show_default=True),
        click.option("--cpus-per-actor", type=float, default=None),
        click.option(
            "--batch-size",
            type=click.IntRange(min=1),
            default=8,
            show_default=True,
            help="Prompts per task and per part file.",
        ),
        click.option(
            "--max-attempts",
            type=click.IntRange(min=1),
            default=3,
            show_default=True,
            help="Tries per batch when actor processes die.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _parse_params(params: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for p in params:
        if "=" not in p:
            raise CircuitrayError(f"--param {p!r}: expected key=value")
        k, v = p.split("=", 1)
        out[k.strip()] = v
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def cli(verbose: bool) -> None:
    """Attribution graphs for many prompts on Ray, stored as Parquet, queried with DuckDB."""
    _setup_logging(verbose)


# -- prompts ---------------------------------------------------------------------
@cli.command("ws2")
@click.option("--n", "n", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help=".parquet/.jsonl/.csv")
@click.option("--types", default=None, help="Comma-separated constraint types (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print path and counts as JSON.")
def ws2_cmd(n: int, seed: int, out: str, types: str | None, as_json: bool) -> None:
    """Write a deterministic WS2 constraint corpus."""
    from circuitray.prompts.files import write_prompts
    from circuitray.prompts.ws2 import generate_ws2

    try:
        rows = generate_ws2(n=n, seed=seed, types=types.split(",") if types else None)
    except ValueError as e:
        raise CircuitrayError(str(e)) from None
    write_prompts(rows, out)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["constraint_type"]] = counts.get(r["constraint_type"], 0) + 1
    if as_json:
        click.echo(json.dumps({"path": out, "prompts": len(rows), "by_type": counts}, indent=2))
    else:
        err_console.print(f"wrote {len(rows)} prompts to {out}: {counts}")


# -- runs ------------------------------------------------------------------------
@cli.command("run")
@click.argument("prompts", type=click.Path())
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Run folder.")
@click.option(
    "--model",
    default="organism-tuned",
    show_default=True,
    help="Bundled name, local HF folder or hub id (google/gemma-2-2b).",
)
@click.option(
    "--transcoders",
    default=None,
    help=(
        "circuit-tracer transcoder ref (gemma, llama, org/repo); for a bundled model "
        "also per-layer (the default) or cross-layer (its cross-layer transcoder)."
    ),
)
@click.option("--transcoder-cache-dir", default=None, type=click.Path(file_okay=False))
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32")
@placement_options
@click.option("--node-threshold", type=click.FloatRange(0, 1), default=0.8, show_default=True)
@click.option("--edge-threshold", type=click.FloatRange(0, 1), default=0.98, show_default=True)
@click.option("--max-n-logits", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--desired-logit-prob", type=click.FloatRange(0, 1), default=0.95, show_default=True)
@click.option(
    "--attr-batch-size",
    type=click.IntRange(min=1),
    default=128,
    show_default=True,
    help="attribute() batch_size.",
)
@click.option("--max-feature-nodes", type=click.IntRange(min=1), default=None)
@click.option("--offload", type=click.Choice(["cpu", "disk"]), default=None)
@click.option("--update-interval", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=2), default=64, show_default=True)
@click.option("--retry-errors", is_flag=True, help="Recompute prompts with error rows.")
@click.option("--stats/--no-stats", default=True, help="Print constraint_stats at the end.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
def run_cmd(
    prompts,
    out,
    model,
    transcoders,
    transcoder_cache_dir,
    dtype,
    actors,
    address,
    gpus_per_actor,
    cpus_per_actor,
    batch_size,
    node_threshold,
    edge_threshold,
    max_n_logits,
    desired_logit_prob,
    attr_batch_size,
    max_feature_nodes,
    offload,
    update_interval,
    max_tokens,
    max_attempts,
    retry_errors,
    stats,
    as_json,
) -> None:
    """Attribute every prompt of PROMPTS on Ray into the run folder --out (resumable)."""
    from dataclasses import asdict

    from circuitray.graph.attribute import AttributionConfig
    from circuitray.graph.flatten import PruneConfig
    from circuitray.jobs.attribution_job import RunConfig, run
    from circuitray.models.loading import ModelSpec

    config = RunConfig(
        prompts=prompts,
        out=out,
        model=ModelSpec(
            model=model,
            transcoders=transcoders,
            transcoder_cache_dir=transcoder_cache_dir,
            dtype=dtype,
        ),
        attribution=AttributionConfig(
            max_n_logits=max_n_logits,
            desired_logit_prob=desired_logit_prob,
            batch_size=attr_batch_size,
            max_feature_nodes=max_feature_nodes,
            offload=offload,
            update_interval=update_interval,
            max_tokens=max_tokens,
        ),
        prune=PruneConfig(node_threshold=node_threshold, edge_threshold=edge_threshold),
        actors=actors,
        address=address,
        batch_size=batch_size,
        gpus_per_actor=gpus_per_actor,
        cpus_per_actor=cpus_per_actor,
        max_attempts=max_attempts,
        retry_errors=retry_errors,
    )
    with RunProgress(disabled=as_json) as on_progress:
        result = run(config, on_progress=on_progress)
    if as_json:
        click.echo(json.dumps(asdict(result), indent=2, default=str))
        return
    print_run_summary(result)
    if stats and result.ok:
        from circuitray.query.engine import run_query

        print_table(run_query("constraint_stats", [out]))


# -- interventions -------------------------------------------------------------
@cli.command("intervene")
@click.argument("run_dir", type=click.Path())
@click.option(
    "--out", "out", required=True, type=click.Path(file_okay=False), help="Intervention folder."
)
@click.option(
    "--features",
    "features",
    multiple=True,
    required=True,
    help="SPEC, repeatable (one intervention group each): 'L:F,L:F' pairs; "
    "'query:NAME?param=v&column=v' (a named query's layer/feature rows; keys that are "
    "not parameters filter rows); 'top:K[:BY]' (the graph's K feature nodes whose "
    "ablation it predicts lowers the target logit most, BY direct (default), total or "
    "influence); 'random:K' (K random active ones); 'single:K[:BY]' (each top-K node "
    "alone).",
)
@click.option(
    "--scale",
    type=float,
    default=0.0,
    show_default=True,
    help="Intervened activations become SCALE x their clean value (0 ablates).",
)
@click.option(
    "--constrained-layers",
    default=None,
    help="circuit-tracer constrained_layers: 'all' (direct effects), 'A-B' or 'A'; "
    "default none (effects propagate).",
)
@click.option("--freeze-attention/--no-freeze-attention", default=True, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds random:K.")
@click.option("--type", "types", multiple=True, help="Only graphs of this constraint type.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N graphs.")
@click.option("--retry-errors", is_flag=True, help="Recompute prompts with error rows.")
@placement_options
@click.option("--effects/--no-effects", default=True, help="Print intervention_effects.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def intervene_cmd(
    run_dir,
    out,
    features,
    scale,
    constrained_layers,
    freeze_attention,
    seed,
    types,
    limit,
    retry_errors,
    actors,
    address,
    gpus_per_actor,
    cpus_per_actor,
    batch_size,
    max_attempts,
    effects,
    as_json,
) -> None:
    """Apply feature interventions to the prompts of RUN_DIR on Ray (resumable)."""
    from dataclasses import asdict

    from circuitray.jobs.intervention_job import InterventionConfig, intervene

    config = InterventionConfig(
        run=run_dir,
        out=out,
        features=list(features),
        scale=scale,
        constrained_layers=constrained_layers,
        freeze_attention=freeze_attention,
        seed=seed,
        constraint_types=list(types) or None,
        limit=limit,
        retry_errors=retry_errors,
        actors=actors,
        address=address,
        batch_size=batch_size,
        gpus_per_actor=gpus_per_actor,
        cpus_per_actor=cpus_per_actor,
        max_attempts=max_attempts,
    )
    with RunProgress(disabled=as_json, label="intervening") as on_progress:
        result = intervene(config, on_progress=on_progress)
    if as_json:
        click.echo(json.dumps(asdict(result), indent=2, default=str))
        return
    err_console.print(
        f"{result.run_dir}: {result.ok} ok, {result.errors} errors of {result.total} prompts, "
        f"{result.results} result rows ({result.computed} computed, {result.skipped} already "
        f"done) in {result.elapsed_s:.1f}s (Ray start {result.ray_start_s:.1f}s)",
        soft_wrap=True,
    )
    if effects and result.ok:
        from circuitray.query.engine import run_query

        print_table(run_query("intervention_effects", [out]))


@cli.group("pipeline")
def pipeline_group() -> None:
    """Pipelines: prompts, runs, queries and comparisons from one YAML file."""


@pipeline_group.command("run")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--out-root", required=True, help="Folder (or s3:// / gs:// URI) for runs.")
@click.option("--address", default=None, help="Ray address to join, e.g. auto.")
@click.option("--actors", type=click.IntRange(min=1), default=None)
@click.option("--n", type=click.IntRange(min=1), default=None, help="Override prompts.ws2.n.")
@click.option("--seed", type=int, default=None, help="Override prompts.ws2.seed.")
@click.option("--json", "as_json", is_flag=True, help="Print runs and result paths as JSON.")
def pipeline_run_cmd(file, out_root, address, actors, n, seed, as_json) -> None:
    """Run the pipeline FILE: its runs (resumable), then its queries and comparisons,
    written to OUT_ROOT/results/*.parquet and printed."""
    from dataclasses import asdict

    from circuitray.jobs.pipeline import Pipeline, run_pipeline

    pipeline = Pipeline.load(file)
    with RunProgress(disabled=as_json, label=pipeline.name) as on_progress:
        result = run_pipeline(
            pipeline,
            out_root=out_root,
            address=address,
            actors=actors,
            n=n,
            seed=seed,
            on_progress=on_progress,
        )
    if as_json:
        record = {
            "pipeline": pipeline.name,
            "out_root": result.out_root,
            "runs": {k: asdict(r) for k, r in result.runs.items()},
            "results": {
                k: f"{result.out_root.rstrip('/')}/results/{k}.parquet" for k in result.tables
            },
        }
        click.echo(json.dumps(record, indent=2, default=str))
        return
    for r in result.runs.values():
        print_run_summary(r)
    for label, table in result.tables.items():
        console.print(f"[bold]{label}[/bold]")
        print_table(table)


@cli.command("compact")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--rows-per-file",
    type=click.IntRange(min=1),
    default=20_000_000,
    show_default=True,
    help="Edge rows per output file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the part counts as JSON.")
def compact_cmd(run_dir: str, rows_per_file: int, as_json: bool) -> None:
    """Merge a run's part files into large files sorted by graph_id (atomic)."""
    from circuitray.storage.run_store import RunStore

    store = RunStore(run_dir)
    store.read_meta()  # a clear error when RUN_DIR is not a run folder
    stats = store.compact(rows_per_file=rows_per_file)
    if as_json:
        click.echo(json.dumps({"run_dir": run_dir, **stats}, indent=2))
        return
    err_console.print(
        f"{run_dir}: {stats['parts_before']} parts -> {stats['parts_after']}", soft_wrap=True
    )


# -- queries ---------------------------------------------------------------------
@cli.command("query", context_settings={"ignore_unknown_options": False})
@click.argument("name", required=False)
@click.argument("run_dirs", nargs=-1, type=click.Path())
@click.option("--list", "list_", is_flag=True, help="List the named queries.")
@click.option("--param", "params", multiple=True, help="key=value, repeatable.")
@table_output_options
def query_cmd(name, run_dirs, list_, params, fmt, output) -> None:
    """Run the named query NAME (queries/NAME.sql) over one or more RUN_DIRs."""
    from circuitray.query.engine import list_queries, run_query

    if list_:
        queries = list_queries()
        if fmt == "json":
            click.echo(
                json.dumps(
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
                    ],
                    indent=2,
                )
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
        run_query(name, list(run_dirs), params=_parse_params(params)), fmt=fmt, output=output
    )


@cli.command("sql")
@click.argument("args", nargs=-1, required=True)
@table_output_options
def sql_cmd(args, fmt, output) -> None:
    """Read-only SQL over views graphs, nodes, edges, interventions: circuitray sql
    RUN_DIR... "SELECT ..." """
    from circuitray.query.engine import run_sql

    if len(args) < 2:
        raise CircuitrayError('usage: circuitray sql RUN_DIR [RUN_DIR ...] "SELECT ..."')
    print_table(run_sql(list(args[:-1]), args[-1]), fmt=fmt, output=output)


@cli.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--by", default="constraint_type", show_default=True, help="graphs column.")
@click.option("--metric", "metrics", multiple=True, help="Metric (repeatable); default all.")
@click.option("--n-boot", type=click.IntRange(min=100), default=2000, show_default=True)
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05)
@click.option("--seed", type=int, default=0, show_default=True)
@table_output_options
def compare_cmd(run_dirs, by, metrics, n_boot, alpha, seed, fmt, output) -> None:
    """BASELINE CANDIDATE: paired differences per --by group; one RUN: differences
    between its --by groups. Bootstrap CIs, effect sizes, Holm-adjusted verdicts."""
    from circuitray.query.compare import CompareConfig, compare_groups, compare_runs

    config = CompareConfig(
        by=by, metrics=tuple(metrics) or None, n_boot=n_boot, alpha=alpha, seed=seed
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


@cli.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="HTML file.")
@click.option("--top-k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--circuit-edges", type=click.IntRange(min=1), default=60, show_default=True)
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
    from circuitray.outputs.report import ReportConfig, build_report

    config = ReportConfig(top_k=top_k, circuit_edges=circuit_edges)
    status = console.status("building the report") if not as_json else contextlib.nullcontext()
    with status:
        record = build_report(list(run_dirs), out, config=config, interventions=list(interventions))
    if as_json:
        click.echo(json.dumps(record, indent=2))
    else:
        console.print(
            f"{record['path']}: {record['plots']} plots, {record['bytes'] / 1e6:.1f} MB "
            f"in {record['seconds']:.1f}s"
        )


@cli.command("export")
@click.argument("run_dir", type=click.Path())
@click.option("--graph", "graph_id", type=int, required=True, help="graph_id to export.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Viewer folder.")
@click.option("--slug", default=None, help="Name in the viewer (default RUN-gID).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def export_cmd(run_dir, graph_id, out, slug, as_json) -> None:
    """Write a stored graph in circuit-tracer's graph-viewer JSON format."""
    from circuitray.outputs.export import export_graph

    path = export_graph(run_dir, graph_id, out, slug=slug)
    data = json.loads(path.read_text())
    record = {
        "path": str(path),
        "slug": data["metadata"]["slug"],
        "nodes": len(data["nodes"]),
        "links": len(data["links"]),
    }
    if as_json:
        click.echo(json.dumps(record, indent=2))
    else:
        console.print(
            f"{path}: {record['nodes']} nodes, {record['links']} links; "
            f"view with: circuitray serve {out}"
        )


@cli.command("serve")
@click.argument("data_dir", type=click.Path())
@click.option("--port", type=click.IntRange(0, 65535), default=8032, show_default=True)
def serve_cmd(data_dir, port) -> None:
    """Serve exported graphs with circuit-tracer's own viewer on 127.0.0.1."""
    from circuitray.outputs.export import graph_slugs, serve

    server = serve(data_dir, port=port)
    port = server.server_address[1]
    console.print(
        f"http://127.0.0.1:{port}/index.html ({len(graph_slugs(data_dir))} graphs); Ctrl-C stops"
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()


@cli.group("bench")
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


# -- models ----------------------------------------------------------------------
@cli.group("model")
def model_group() -> None:
    """Build and inspect models."""


@model_group.command("build-tiny")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Rebuild even if the saved build is up to date.")
def build_tiny_cmd(seed: int, force: bool) -> None:
    """Build the random-weight tiny Gemma-2 model and its transcoders (seconds)."""
    from circuitray.models.tiny import build_tiny

    paths = build_tiny(seed=seed, force=force)
    err_console.print(f"tiny model: {paths['model']}\ntranscoders: {paths['transcoders']}")


@model_group.command("warm")
@click.option("--model", default="organism-tuned", show_default=True, help="As for run.")
@click.option("--transcoders", default=None, help="As for run; bundled default.")
@click.option("--transcoder-cache-dir", type=click.Path(file_okay=False), default=None)
@click.option("--address", default=None, help="Warm every node of this Ray cluster (auto).")
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
def warm_cmd(model, transcoders, transcoder_cache_dir, address, as_json) -> None:
    """Download MODEL and its transcoders into this node's caches (or every node's)."""
    from circuitray.models.loading import ModelSpec
    from circuitray.models.warm import warm_cluster, warm_model

    spec = ModelSpec(
        model=model, transcoders=transcoders, transcoder_cache_dir=transcoder_cache_dir
    )
    results = warm_cluster(spec, address=address) if address else [warm_model(spec)]
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    for r in results:
        console.print(
            f"{r['node']}: {r['model']} ({r['model_path']}) and transcoders "
            f"{r['transcoders']} ready in {r['seconds']:.1f}s"
        )


@cli.group("organism")
def organism_group() -> None:
    """The WS2 model organism: base and tuned tiny Gemma-2 with trained transcoders."""


@organism_group.command("build")
@click.option("--seed", type=int, default=None, help="Override the config's seed (default 0).")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="torch threads (default 2; same seed, threads and CPU: bit-identical weights).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    help="YAML/JSON file of OrganismConfig fields to change (transcoders: a mapping).",
)
@click.option("--force", is_flag=True, help="Rebuild even if the saved build is up to date.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
def organism_build_cmd(
    seed: int | None, threads: int | None, config_file: str | None, force: bool, as_json: bool
) -> None:
    """Train base and tuned checkpoints and their transcoders; write the report.

    A build whose config, code and torch are unchanged and whose artifacts still hash
    to the report's digests is reused in seconds (--force rebuilds).
    """
    from circuitray.organism import build_organism

    config = organism_config(config_file, seed=seed, threads=threads)
    with err_console.status("training the WS2 organism (base, tuned, transcoders)..."):
        report = build_organism(config, force=force)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    elif report.get("reused"):
        console.print(
            f"organism up to date (build {report['build']['key'][:12]}, "
            f"{report['timings']['total_s']:.0f}s when built): reused, nothing rebuilt"
        )
    else:
        print_organism_report(report)
    if not report["passed"]:
        failed = [k for k, v in report["acceptance"].items() if not v]
        raise CircuitrayError(f"organism report below thresholds: {', '.join(failed)}")


def _matrix_defaults():
    from circuitray.organism.matrix import MatrixConfig

    return MatrixConfig(out="")


@organism_group.command("matrix")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for the cells' builds and matrix.json "
    "[default: $CIRCUITRAY_HOME/organism-matrix].",
)
@click.option(
    "--capability",
    "capabilities",
    multiple=True,
    type=click.Choice(["default", "avx2", "avx512"]),
    help="ATEN_CPU_CAPABILITY of a column (repeat) "
    "[default: default, avx2, and avx512 where the CPU has it].",
)
@click.option(
    "--threads",
    "threads",
    multiple=True,
    type=click.IntRange(min=1),
    help=f"torch threads (repeat) [default: {', '.join(map(str, _matrix_defaults().threads))}].",
)
@click.option(
    "--seed",
    "seeds",
    multiple=True,
    type=int,
    help=f"Organism seed (repeat) [default: {', '.join(map(str, _matrix_defaults().seeds))}].",
)
@click.option("--env", "env", multiple=True, help="KEY=VALUE for every cell (e.g. MKL_CBWR=AVX2).")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Organism config file for every cell (as for build).",
)
@click.option("--markdown", type=click.Path(dir_okay=False), help="Also write the table here.")
def organism_matrix_cmd(out, capabilities, threads, seeds, env, config_file, markdown) -> None:
    """Build the organism under several CPU kernels, thread counts and seeds (fresh
    processes, one after another) and judge every cell with margin; exit 2 if any fails."""
    from circuitray.machine import aten_capabilities
    from circuitray.models.registry import circuitray_home
    from circuitray.organism.matrix import MatrixConfig, matrix_markdown, run_matrix

    missing = sorted(set(capabilities) - set(aten_capabilities()))
    if missing:
        raise CircuitrayError(
            f"--capability {', '.join(missing)}: this CPU has no such kernels (/proc/cpuinfo)"
        )
    extra = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CircuitrayError(f"--env {item!r}: expected KEY=VALUE")
        extra[key] = value
    defaults = _matrix_defaults()
    config = MatrixConfig(
        out=out or str(circuitray_home() / "organism-matrix"),
        capabilities=tuple(capabilities) or None,
        threads=tuple(threads) or defaults.threads,
        seeds=tuple(seeds) or defaults.seeds,
        env=extra,
        config_file=config_file,
    )

    def show(row: dict) -> None:
        verdict = "pass" if row["passed"] else "FAIL " + ", ".join(row["failed"])
        tuned = " ".join(f"{v:.3f}" for v in row.get("tuned", {}).values())
        err_console.print(f"{row['cell']}: tuned {tuned or '-'}, {row['wall_s']:.0f}s: {verdict}")

    result = run_matrix(config, on_cell=show)
    table = matrix_markdown(result)
    console.print(f"CPU: {result['cpu']}\n")
    click.echo(table)
    if markdown:
        Path(markdown).write_text(f"CPU: {result['cpu']}\n\n{table}")
    if not result["passed"]:
        failed = [r["cell"] for r in result["cells"] if not r["passed"]]
        raise CircuitrayError(f"organism matrix: {len(failed)} cell(s) failed: {', '.join(failed)}")


def organism_config(config_file: str | None, *, seed: int | None, threads: int | None):
    """OrganismConfig from its defaults, a config file's fields, then --seed/--threads."""
    import yaml

    from circuitray.organism import OrganismConfig

    values: dict = {}
    if config_file:
        try:
            loaded = yaml.safe_load(Path(config_file).read_text())
        except yaml.YAMLError as e:
            raise CircuitrayError(f"{config_file}: not YAML/JSON ({e.__class__.__name__})") from e
        if not isinstance(loaded, dict):
            raise CircuitrayError(f"{config_file}: expected a mapping of config fields")
        values.update(loaded)
    if seed is not None:
        values["seed"] = seed
    if threads is not None:
        values["threads"] = threads
    try:
        return OrganismConfig.from_dict(values)
    except (TypeError, ValueError) as e:
        raise CircuitrayError(f"{config_file or 'organism config'}: {e}") from e


def print_organism_report(report: dict) -> None:
    acc = Table(
        "constraint_type",
        "n",
        "chance",
        "base accuracy",
        "tuned accuracy",
        title="held-out accuracy among candidates",
    )
    for name, t in report["accuracy"]["tuned"].items():
        b = report["accuracy"]["base"][name]
        acc.add_row(
            name, str(t["n"]), f"{t['chance']:.3f}", f"{b['accuracy']:.3f}", f"{t['accuracy']:.3f}"
        )
    console.print(acc)
    tc = Table(
        "layer",
        "EV base",
        "EV tuned",
        "nMSE base",
        "L0",
        "L0 / dict",
        title=f"transcoders (d={report['transcoders']['d_transcoder']})",
    )
    for layer, m in report["transcoders"]["base"].items():
        mt = report["transcoders"]["tuned"][layer]
        tc.add_row(
            layer,
            f"{m['explained_variance']:.3f}",
            f"{mt['explained_variance']:.3f}",
            f"{m['nmse']:.4f}",
            f"{m['l0']:.1f}",
            f"{m['l0_fraction']:.3f}",
        )
    console.print(tc)
    g = report["graphs"]
    console.print(
        f"graphs (n={g['tuned']['n']}): replacement base {g['base']['mean_replacement']:.3f}"
        f" / tuned {g['tuned']['mean_replacement']:.3f}; completeness base "
        f"{g['base']['mean_completeness']:.3f} / tuned {g['tuned']['mean_completeness']:.3f}"
    )
    console.print(
        f"built in {report['timings']['total_s']:.0f}s, "
        f"{report['artifacts']['bytes'] / 1e6:.1f} MB; passed: {report['passed']}"
    )


def main() -> None:
    """Console entry point: one-line errors for user mistakes, exit code 2."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted; run the same command again to resume")
        sys.exit(130)
    except CircuitrayError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except OSError as e:  # e.g. --output into a folder that does not exist
        click.echo(f"error: {e.filename or ''}: {e.strerror or e}", err=True)
        sys.exit(2)
    except Exception as e:  # a bug: one line by default, the traceback with -v
        if "-v" in sys.argv[1:2] or "--verbose" in sys.argv[1:2]:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        click.echo(
            f"error: internal error {type(e).__name__}: {first} "
            "(rerun with circuitray -v ... for the traceback; please report it)",
            err=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
