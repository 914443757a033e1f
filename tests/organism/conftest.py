"""Shared by the organism tests: a build recipe that takes seconds."""

from __future__ import annotations

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
