"""``make bench``'s real-shape figures: the 26-layer gemma-shaped model in a fresh
process, per-graph time, flatten share and peak RSS, printed."""

from __future__ import annotations

import io

from rich.console import Console

from benchmarks.real_shape import real_shape_bench
from benchmarks.suite import print_real_shape


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


def test_real_model_section_measures_each_built_model(stories260k):
    from benchmarks.real_shape import real_models_bench

    section = real_models_bench(names=("stories260k",), n_prompts=1)
    stories = section["stories260k"]
    (g,) = stories["graphs"]
    assert stories["model"] == "stories260k" and stories["n_layers"] == 5
    assert g["n_nodes"] > g["kept_nodes"] > 0 and g["kept_edges"] > 0
    assert g["attribute_s"] > 0 and stories["peak_rss_mb"] > 0
    buf = io.StringIO()
    print_real_shape(stories, console=Console(file=buf, width=200))
    assert "stories260k (5 layers)" in buf.getvalue()


def test_real_models_not_built_are_skipped_and_say_how_to_build(tmp_path, monkeypatch):
    from benchmarks.real_shape import real_models_bench

    monkeypatch.setenv("CIRCUITRAY_HOME", str(tmp_path))  # an empty home
    monkeypatch.delenv("CIRCUIT_TRACER_CACHE_DIR", raising=False)
    assert real_models_bench(n_prompts=1) == {
        name: {
            "skipped": f"bundled model {name!r} not built at {tmp_path / 'models' / name}; "
            f"run `circuitray model build-real --name {name}`"
        }
        for name in ("stories260k", "gemma-3-270m")
    }
    # A build cut short after its model folder, before its transcoders: still skipped.
    (tmp_path / "models" / "gemma-3-270m").mkdir(parents=True)
    (tmp_path / "models" / "gemma-3-270m" / "config.json").write_text("{}")
    assert real_models_bench(names=("gemma-3-270m",)) == {
        "gemma-3-270m": {
            "skipped": "gemma-3-270m: no transcoders; "
            "run `circuitray model build-real --name gemma-3-270m`"
        }
    }
    # One whose measurement fails is an error of its own, not the end of the suite.
    (tmp_path / "transcoders" / "circuitray" / "gemma-3-270m").mkdir(parents=True)
    (failed,) = real_models_bench(names=("gemma-3-270m",)).values()
    assert set(failed) == {"error"} and "gemma-3-270m: bench child failed" in failed["error"]
