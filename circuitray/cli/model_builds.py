"""``circuitray model build-tiny`` and ``model build-synthetic``: the builders of the
project's random-weight models (their modules import torch, so this one is loaded
only when one of these commands runs: :data:`circuitray.cli.models.MODEL_BUILDS`)."""

from __future__ import annotations

import click

from circuitray.cli.options import config_option
from circuitray.cli.printing import err_console
from circuitray.models.builders.synthetic import SHAPES, build_synthetic
from circuitray.models.builders.tiny import build_tiny


@click.command("build-tiny")
@config_option(build_tiny, "seed", type=int)
@config_option(
    build_tiny, "force", is_flag=True, help="Rebuild even if the saved build is up to date."
)
def build_tiny_cmd(seed: int, force: bool) -> None:
    """Build the random-weight tiny Gemma-2 model and its transcoders (seconds)."""
    paths = build_tiny(seed=seed, force=force)
    err_console.print(f"tiny model: {paths['model']}\ntranscoders: {paths['transcoders']}")


@click.command("build-synthetic")
@config_option(build_synthetic, "like", type=click.Choice(sorted(SHAPES)))
@config_option(build_synthetic, "scale", type=float)
@config_option(build_synthetic, "seed", type=int)
@config_option(build_synthetic, "calibration_prompts", type=int)
@config_option(
    build_synthetic, "force", is_flag=True, help="Rebuild even if the saved build is up to date."
)
def build_synthetic_cmd(like: str, scale: float, seed: int, calibration_prompts: int, force: bool):
    """Build a random-weight model of a real model's shape, with its transcoders.

    The full shape (--scale 1) of gemma-2-2b is 2.6B parameters plus 26 x 16k
    transcoder features (about 18 GB on disk in float32): build it on a GPU node.
    """
    import json

    from circuitray.models.registry import synthetic_model_name

    paths = build_synthetic(
        like=like, scale=scale, seed=seed, calibration_prompts=calibration_prompts, force=force
    )
    manifest = json.loads((paths["model"] / "synthetic.json").read_text())
    err_console.print(
        f"model {synthetic_model_name(like, scale)}: {paths['model']}\n"
        f"transcoders: {paths['transcoders']}\n"
        "cross-layer transcoders: "
        f"{paths.get('cross_layer_transcoders', 'not built (too large)')}\n"
        f"L0 per token: {manifest['l0_measured_per_token']} measured, "
        f"{manifest['l0_target_per_token']} targeted"
    )
