"""``make bench``'s real-shape figures: the 26-layer gemma-shaped model in a fresh
process, per-graph time, flatten share and peak RSS, printed."""

from __future__ import annotations

import io

from rich.console import Console

from circuitray.bench.real_shape import real_shape_bench
from circuitray.bench.suite import print_real_shape


def test_real_shape_section_measures_and_prints(synthetic_gemma):
    section = real_shape_bench(n_prompts=1)
    (g,) = section["graphs"]
    assert g["n_nodes"] >= 5000 and g["kept_edges"] > 0
    assert g["attribute_s"] > 0 and 0 < g["flatten_share"] < 5
    assert g["flatten_share"] == g["flatten_s"] / g["attribute_s"]
    # Peak RSS of the child alone: above the dense N x N matrix, below 24 GiB.
    assert 4 * g["n_nodes"] ** 2 / 2**20 < section["peak_rss_mb"] < 24 * 1024
    buf = io.StringIO()
    print_real_shape(section, console=Console(file=buf, width=200))
    text = buf.getvalue()
    assert "synthetic-gemma-2-2b-s0.0625" in text and g["prompt_id"] in text
