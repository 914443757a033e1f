"""The Ray jobs: ``circuitray run``, ``intervene``, ``pipeline run``, ``compact``."""

from __future__ import annotations

import json

import click

from circuitray.cli.options import placement_options
from circuitray.cli.output import (
    RunProgress,
    console,
    err_console,
    print_run_summary,
    print_table,
)


@click.command("run")
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


@click.command("intervene")
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


@click.group("pipeline")
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


@click.command("compact")
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
