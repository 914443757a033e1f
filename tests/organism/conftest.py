"""Shared by the organism tests: a seconds-long build recipe and the CLI command."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


@pytest.fixture
def micro() -> dict:
    """OrganismConfig fields that build in seconds, far below every threshold: for
    what the build does, not how well it learns."""
    return {
        "n_layers": 2,
        "d_model": 32,
        "d_mlp": 64,
        "n_filler": 400,
        "base_steps": 20,
        "tuned_max_steps": 60,
        "tuned_check_every": 10,
        "tuned_anneal_steps": 10,
        "batch_size": 16,
        "transcoders": {"d_transcoder": 64, "steps": 20, "batch_size": 128},
        "n_transcoder_texts": 100,
        "n_graph_samples": 1,
        "threads": 1,
    }


@pytest.fixture
def cli() -> list[str]:
    """The installed ``circuitray`` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "circuitray"
    return [str(script)] if script.exists() else [sys.executable, "-m", "circuitray.cli"]
