"""The Ray jobs: ``circuitray run``, ``intervene``, ``pipeline run`` and ``trace``.

Options that fill a config field are built from it (:func:`config_option`): the
defaults and help of :class:`RunConfig`, :class:`ModelSpec`, :class:`AttributionConfig`,
:class:`PruneConfig`, :class:`InterventionConfig` and :class:`Placement` are the CLI's.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import asdict

import click

from circuitray.cli.options import config_option, config_values, placement_options
from circuitray.cli.printing import (
    RunProgress,
    console,
    err_console,
    print_json,
    print_result,
    print_run_summary,
    print_table,
)
from circuitray.graph.config import AttributionConfig, PruneConfig
from circuitray.graph.targets import TARGET_MODES
from circuitray.jobs.attribution_job import RunConfig, run
from circuitray.jobs.intervention_job import InterventionConfig, intervene
from circuitray.jobs.pipeline import Pipeline, run_pipeline
from circuitray.jobs.trace import TraceConfig, trace
from circuitray.models.loading import ModelSpec
from circuitray.outputs.viewer import serve

FRACTION = click.FloatRange(0, 1)


def run_config(prompts: str, out: str, options: dict) -> RunConfig:
    """The RunConfig that ``circuitray run``'s options (keyword arguments) describe."""
    return RunConfig(
        prompts=prompts,
        out=out,
        model=ModelSpec(**config_values(ModelSpec, options)),
        attribution=AttributionConfig(**config_values(AttributionConfig, options)),
        prune=PruneConfig(**config_values(PruneConfig, options)),
        **config_values(RunConfig, options),
    )


def intervention_config(run_dir: str, out: str, options: dict) -> InterventionConfig:
    """The InterventionConfig that ``circuitray intervene``'s options describe."""
    values = config_values(InterventionConfig, options)
    values["features"] = list(values["features"])
    values["constraint_types"] = list(values["constraint_types"]) or None
    return InterventionConfig(run=run_dir, out=out, **values)


@click.command("run")
@click.argument("prompts", type=click.Path())
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Run folder.")
@config_option(ModelSpec, "model")
@config_option(ModelSpec, "transcoders")
@config_option(ModelSpec, "transcoder_cache_dir", type=click.Path(file_okay=False))
@config_option(ModelSpec, "dtype", type=click.Choice(["float32", "bfloat16", "float16"]))
@placement_options
@config_option(PruneConfig, "node_threshold", type=FRACTION)
@config_option(PruneConfig, "edge_threshold", type=FRACTION)
@config_option(AttributionConfig, "target", type=click.Choice(TARGET_MODES))
@config_option(AttributionConfig, "max_n_logits", type=click.IntRange(min=1))
@config_option(AttributionConfig, "desired_logit_prob", type=FRACTION)
@config_option(
    AttributionConfig,
    "batch_size",
    "--attr-batch-size",
    "attr_batch_size",
    type=click.IntRange(min=1),
    help="attribute() batch_size: source nodes per backward pass.",
)
@config_option(AttributionConfig, "max_feature_nodes", type=click.IntRange(min=1))
@config_option(AttributionConfig, "offload", type=click.Choice(["cpu", "disk"]))
@config_option(AttributionConfig, "update_interval", type=click.IntRange(min=1))
@config_option(AttributionConfig, "max_tokens", type=click.IntRange(min=2))
@config_option(RunConfig, "retry_errors", is_flag=True)
# A plain int: a bad K is refused in one line (RunConfig, AttributionJob), not by click.
@config_option(RunConfig, "verify_precision", metavar="K", type=int)
@click.option("--stats/--no-stats", default=True, help="Print constraint_stats at the end.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
def run_cmd(prompts: str, out: str, stats: bool, as_json: bool, **options) -> None:
    """Attribute every prompt of PROMPTS on Ray into the run folder --out (resumable)."""
    config = run_config(prompts, out, options)
    with RunProgress(disabled=as_json) as on_progress:
        result = run(config, on_progress=on_progress)
    if as_json:
        print_json(asdict(result))
        return
    print_run_summary(result)
    if result.precision is not None:
        print_precision_summary(result.precision)
    if stats and result.ok:
        from circuitray.query.engine import run_query

        print_table(run_query("constraint_stats", [out]))


def print_precision_summary(p: dict) -> None:
    """One line: what --verify-precision measured (run.json's ``precision``)."""

    def g(v) -> str:
        return "n/a" if v is None else f"{v:.3g}"

    unchecked = p["unchecked_graph_ids"]
    err_console.print(
        f"precision: {p['checked']} of {p['k']} sampled graphs checked, {p['dtype']} vs "
        f"{p['reference_dtype']}: kept-edge weight relative error median "
        f"{g(p['rel_error']['median'])}, max {g(p['rel_error']['worst'])}; kept-node "
        f"Jaccard min {g(p['node_jaccard']['worst'])}, kept-edge Jaccard min "
        f"{g(p['edge_jaccard']['worst'])}" + (f"; not checked: {unchecked}" if unchecked else ""),
        soft_wrap=True,
    )


@click.command("intervene")
@click.argument("run_dir", type=click.Path())
@click.option(
    "--out", "out", required=True, type=click.Path(file_okay=False), help="Intervention folder."
)
@config_option(
    InterventionConfig,
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
@config_option(InterventionConfig, "scale", type=float)
@config_option(
    InterventionConfig,
    "constrained_layers",
    help="circuit-tracer constrained_layers: 'all' (direct effects), 'A-B' or 'A'; "
    "default none (effects propagate).",
)
@config_option(InterventionConfig, "freeze_attention", "--freeze-attention/--no-freeze-attention")
@config_option(InterventionConfig, "seed", type=int)
@config_option(
    InterventionConfig,
    "constraint_types",
    "--type",
    "constraint_types",
    multiple=True,
    help="Only graphs of this constraint type (repeatable).",
)
@config_option(InterventionConfig, "limit", type=click.IntRange(min=1))
@config_option(InterventionConfig, "retry_errors", is_flag=True)
@placement_options
@click.option("--effects/--no-effects", default=True, help="Print intervention_effects.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def intervene_cmd(run_dir: str, out: str, effects: bool, as_json: bool, **options) -> None:
    """Apply feature interventions to the prompts of RUN_DIR on Ray (resumable)."""
    config = intervention_config(run_dir, out, options)
    with RunProgress(disabled=as_json, label="intervening") as on_progress:
        result = intervene(config, on_progress=on_progress)
    if as_json:
        print_json(asdict(result))
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


@click.group("pipeline")
def pipeline_group() -> None:
    """Pipelines: prompts, runs, queries and comparisons from one YAML file."""


@pipeline_group.command("run")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--out-root", required=True, help="Folder (or s3:// / gs:// URI) for runs.")
@config_option(run_pipeline, "address", help="Ray address to join, e.g. auto.")
@config_option(run_pipeline, "actors", type=click.IntRange(min=1), help="Actors of every run.")
@config_option(run_pipeline, "n", type=click.IntRange(min=1), help="Override prompts.ws2.n.")
@config_option(run_pipeline, "seed", type=int, help="Override prompts.ws2.seed.")
@click.option("--json", "as_json", is_flag=True, help="Print runs and result paths as JSON.")
def pipeline_run_cmd(file, out_root, address, actors, n, seed, as_json) -> None:
    """Run the pipeline FILE: its runs (resumable), then its queries and comparisons,
    written to OUT_ROOT/results/*.parquet and printed."""
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
        print_json(record)
        return
    for r in result.runs.values():
        print_run_summary(r)
    for label, table in result.tables.items():
        console.print(f"[bold]{label}[/bold]")
        print_table(table)


@click.command("trace")
@click.argument("prompt")
@config_option(TraceConfig, "out", type=click.Path(file_okay=False))
@config_option(TraceConfig, "target")
# --target is the trace's answer text; what the graph explains is --target-mode.
@config_option(
    AttributionConfig, "target", "--target-mode", "target_mode", type=click.Choice(TARGET_MODES)
)
@config_option(ModelSpec, "model")
@config_option(ModelSpec, "transcoders")
@config_option(ModelSpec, "transcoder_cache_dir", type=click.Path(file_okay=False))
@config_option(ModelSpec, "dtype", type=click.Choice(["float32", "bfloat16", "float16"]))
@config_option(PruneConfig, "node_threshold", type=FRACTION)
@config_option(PruneConfig, "edge_threshold", type=FRACTION)
@click.option("--serve", "serve_it", is_flag=True, help="Then serve it in the viewer.")
@config_option(serve, "port", type=click.IntRange(0, 65535))
@click.option("--json", "as_json", is_flag=True, help="Print where it went as JSON.")
def trace_cmd(prompt, serve_it, port, as_json, **options) -> None:
    """Attribute one PROMPT (a one-row run folder), export it, optionally serve it."""
    config = TraceConfig(
        prompt=prompt,
        model=ModelSpec(**config_values(ModelSpec, options)),
        attribution=AttributionConfig(**config_values(AttributionConfig, options)),
        prune=PruneConfig(**config_values(PruneConfig, options)),
        **config_values(TraceConfig, options),
    )
    status = console.status("tracing the prompt") if not as_json else contextlib.nullcontext()
    with status:
        result = trace(config)
    record = asdict(result)
    text = (
        f"graph: {result.graph} ({result.nodes} nodes, {result.links} links, "
        f"{result.labelled} labelled features); run folder: {result.run_dir} "
        f'(circuitray sql {result.run_dir} "SELECT * FROM nodes")'
    )
    if not serve_it:
        print_result(record, text, as_json=as_json)
        return
    server = serve(result.viewer_dir, port=port)
    url = f"http://127.0.0.1:{server.server_address[1]}/?slug={result.slug}"
    print_result({**record, "url": url}, f"{text}\nviewer: {url} (Ctrl-C stops)", as_json=as_json)
    sys.stdout.flush()
    try:
        server.serve_forever()
    finally:
        server.server_close()
