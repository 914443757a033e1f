"""``circuitray finetune`` and ``circuitray series``: the learning-dynamics commands.

Options are built from :class:`FinetuneConfig` and :class:`SeriesConfig`
(:func:`circuitray.cli.options.config_option`): their defaults and help are the CLI's.
"""

from __future__ import annotations

import click

from circuitray.cli.options import config_option, config_values, placement_options
from circuitray.cli.printing import RunProgress, console, print_table
from circuitray.finetune.config import FinetuneConfig
from circuitray.graph.config import AttributionConfig, PruneConfig
from circuitray.graph.targets import TARGET_MODES
from circuitray.jobs.series import SeriesConfig, run_series

FRACTION = click.FloatRange(0, 1)
POSITIVE = click.IntRange(min=1)


@click.command("finetune")
@config_option(FinetuneConfig, "base", required=True)
@config_option(FinetuneConfig, "out", required=True, type=click.Path(file_okay=False))
@config_option(FinetuneConfig, "transcoders")
@config_option(FinetuneConfig, "data")
@config_option(FinetuneConfig, "ws2_n", type=POSITIVE)
@config_option(FinetuneConfig, "ws2_seed", type=int)
@config_option(FinetuneConfig, "method", type=click.Choice(["full", "lora"]))
@config_option(FinetuneConfig, "lora_r", type=POSITIVE)
@config_option(FinetuneConfig, "lora_alpha", type=POSITIVE)
@config_option(FinetuneConfig, "lora_dropout", type=click.FloatRange(0, 1, max_open=True))
@config_option(FinetuneConfig, "lora_targets", multiple=True)
@config_option(FinetuneConfig, "steps", type=POSITIVE)
@config_option(FinetuneConfig, "batch_size", type=POSITIVE)
@config_option(FinetuneConfig, "lr", type=click.FloatRange(min=0, min_open=True))
@config_option(FinetuneConfig, "warmup", type=click.IntRange(min=0))
@config_option(FinetuneConfig, "weight_decay", type=click.FloatRange(min=0))
@config_option(FinetuneConfig, "max_len", type=click.IntRange(min=2))
@config_option(FinetuneConfig, "checkpoints", type=click.IntRange(min=2))
@config_option(FinetuneConfig, "first_checkpoint", type=POSITIVE)
@config_option(FinetuneConfig, "spacing", type=click.Choice(["log", "linear"]))
@config_option(FinetuneConfig, "eval_per_type", type=POSITIVE)
@config_option(FinetuneConfig, "seed", type=int)
@config_option(FinetuneConfig, "threads", type=POSITIVE)
@config_option(FinetuneConfig, "device")
@click.option(
    "--ray-workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Run as a Ray Train job (TorchTrainer) with this many workers; 0: in this "
    "process on one device.",
)
@click.option(
    "--address", default=None, help="Ray cluster address for --ray-workers (default: $RAY_ADDRESS)."
)
@click.option("--use-gpu", is_flag=True, help="One GPU per Ray Train worker.")
@click.option(
    "--storage-path",
    default=None,
    help="Ray Train storage (checkpoints to resume from); default: <out>/ray-train.",
)
def finetune_cmd(
    ray_workers: int, address: str | None, use_gpu: bool, storage_path: str | None, **options
) -> None:
    """Fine-tune --base on constraint sentences, saving log-spaced checkpoints and
    finetune.json in --out (then: circuitray series OUT/finetune.json --out SERIES)."""
    values = config_values(FinetuneConfig, options)
    values["lora_targets"] = tuple(values["lora_targets"]) or FinetuneConfig.lora_targets
    try:
        config = FinetuneConfig(**values)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    if ray_workers:
        from circuitray.finetune.ray_train import finetune_on_ray

        manifest = finetune_on_ray(
            config,
            workers=ray_workers,
            use_gpu=use_gpu,
            address=address,
            storage_path=storage_path,
        )
    else:
        from circuitray.finetune.local import finetune

        manifest = finetune(config)
    _print_checkpoints(manifest)


def _print_checkpoints(manifest: dict) -> None:
    import pyarrow as pa

    rows = []
    for c in manifest["checkpoints"]:
        row = {"step": c["step"], "examples_seen": c.get("examples_seen")}
        row["train_loss"] = None if c.get("train_loss") is None else round(c["train_loss"], 4)
        for name, v in sorted(c.get("heldout", {}).items()):
            row[f"acc_{name}"] = round(v["accuracy"], 3)
        fit = c.get("transcoder_fit") or {}
        if fit:
            row["min_tc_explained_var"] = round(
                min(v["explained_variance"] for v in fit.values()), 3
            )
        rows.append(row)
    print_table(pa.Table.from_pylist(rows))


@click.command("series")
@click.argument("manifest", type=click.Path())
@click.option(
    "--out", "out", required=True, type=click.Path(file_okay=False), help="Series folder."
)
@config_option(SeriesConfig, "prompts", type=click.Path(dir_okay=False))
@config_option(SeriesConfig, "per_type", type=POSITIVE)
@config_option(SeriesConfig, "steps", "--step", "steps", multiple=True, type=int)
@config_option(SeriesConfig, "transcoders")
@config_option(SeriesConfig, "device")
@placement_options
@config_option(PruneConfig, "node_threshold", type=FRACTION)
@config_option(PruneConfig, "edge_threshold", type=FRACTION)
@config_option(AttributionConfig, "target", type=click.Choice(TARGET_MODES))
@config_option(AttributionConfig, "max_feature_nodes", type=POSITIVE)
@config_option(SeriesConfig, "retry_errors", is_flag=True)
@click.option(
    "--convergence/--no-convergence",
    default=True,
    help="Print the convergence table at the end.",
)
def series_cmd(manifest: str, out: str, convergence: bool, **options) -> None:
    """Attribute the same prompts at every checkpoint of MANIFEST (finetune.json): one
    run folder per step under --out (resumable); queries see a step column."""
    values = config_values(SeriesConfig, options)
    values["steps"] = list(values["steps"]) or None
    config = SeriesConfig(
        manifest=manifest,
        out=out,
        attribution=AttributionConfig(**config_values(AttributionConfig, options)),
        prune=PruneConfig(**config_values(PruneConfig, options)),
        **values,
    )
    with RunProgress() as on_progress:
        result = run_series(config, on_progress=on_progress)
    for step, r in sorted(result.runs.items()):
        console.print(f"step {step}: {r.ok} ok, {r.errors} errors, {r.elapsed_s:.1f}s")
    if convergence:
        from circuitray.query.engine import run_query

        print_table(run_query("convergence", [out]))
