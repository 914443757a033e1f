"""Options shared by commands, built from the config dataclasses they fill."""

from __future__ import annotations

import click


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
