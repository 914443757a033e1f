"""WS2 constraint comparison before and after fine-tuning.

1. Write one WS2 corpus (``--n`` prompts, ``--seed``).
2. Attribute it on the organism's base checkpoint, then on the tuned checkpoint
   (the same transcoders serve both), each into its own run folder, to the same
   output: ``--target answer`` (the default here) makes each graph's one logit node
   the prompt's expected answer, which the base model ranks far below its top
   tokens; ``contrast`` attributes the answer against the other candidates, ``top``
   each model's own top logits (then the two runs explain different outputs).
3. Print ``constraint_stats`` for both runs in one table (a ``run`` column tells
   them apart), so circuits per constraint type can be compared before and after.

Runs unchanged locally (a local Ray) or on a cluster (``--address auto``); rerunning
resumes both runs. Usage::

    python pipelines/ws2_base_vs_tuned.py --n 300 --out-root runs/ws2-organism
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from circuitray import ModelSpec, RunConfig, generate_ws2, run, run_query, write_prompts
from circuitray.cli.printing import print_table
from circuitray.errors import CircuitrayError
from circuitray.graph.config import AttributionConfig
from circuitray.graph.targets import TARGET_MODES


@click.command()
@click.option("--n", type=click.IntRange(min=1), default=300, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--out-root", type=click.Path(file_okay=False), default="runs/ws2-organism", show_default=True
)
@click.option("--base", "base_model", default="organism-base", show_default=True)
@click.option("--tuned", "tuned_model", default="organism-tuned", show_default=True)
@click.option("--transcoders", default=None, help="Shared transcoders (bundled default).")
@click.option("--actors", type=click.IntRange(min=1), default=None)
@click.option("--address", default=None, help="Ray address, e.g. auto on a cluster.")
@click.option(
    "--target",
    type=click.Choice(TARGET_MODES),
    default="answer",
    show_default=True,
    help="What both runs' graphs explain (one output for both models unless top).",
)
def main(n, seed, out_root, base_model, tuned_model, transcoders, actors, address, target):
    root = Path(out_root)
    prompts = root / f"ws2-n{n}-s{seed}.parquet"
    if not prompts.exists():
        write_prompts(generate_ws2(n=n, seed=seed), prompts)
    runs = []
    for label, model in (("base", base_model), ("tuned", tuned_model)):
        out = root / label
        result = run(
            RunConfig(
                prompts=str(prompts),
                out=str(out),
                actors=actors,
                address=address,
                model=ModelSpec(model=model, transcoders=transcoders),
                attribution=AttributionConfig(target=target),
            )
        )
        click.echo(
            f"{label}: {result.ok} ok, {result.errors} errors in {result.elapsed_s:.1f}s -> {out}",
            err=True,
        )
        runs.append(str(out))
    print_table(run_query("constraint_stats", runs))


if __name__ == "__main__":
    try:
        main(standalone_mode=False)
    except CircuitrayError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
