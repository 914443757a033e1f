"""``circuitray bench gpu`` end to end on the CPU: the main model cannot load (no hub), so
it says so and benchmarks the bundled fallback, writing JSON and Markdown with figures."""

from __future__ import annotations

import json

from bench_command import bench


def test_gpu_bench_falls_back_to_the_bundled_model(tmp_path):
    out, md = tmp_path / "gpu.json", tmp_path / "gpu.md"
    proc = bench(
        "gpu",
        "--device",
        "cpu",
        "--quick",
        "--fallback",
        "tiny",
        "--lengths",
        "8",
        "--tuned-batch-size",
        "32",
        "--tuned-update-interval",
        "4",
        "--out",
        out,
        "--md-out",
        md,
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["complete"] is True
    assert report["gemma_available"] is False
    assert "NOT google/gemma-2-2b" in report["summary"]
    main, fallback = report["models"]
    assert not main["loaded"] and main["error"]
    assert fallback["loaded"] and fallback["fallback"]
    cells = fallback["results"]
    assert {c["setting"] for c in cells} == {"circuit-tracer defaults", "tuned"}
    assert {c["batch_size"] for c in cells} == {512, 32}  # the defaults, then the tuned
    for cell in cells:
        assert cell["n_ok"] == cell["n_prompts"] == 1 and not cell["errors"]
        assert cell["n_tokens"] == [8]
        assert cell["s_per_graph"] > 0 and cell["graphs_per_hour"] > 0
        assert cell["N"] > cell["n_kept_nodes"] > 0 and cell["n_kept_edges"] > 0
    runs = fallback["prune_comparison"]["runs"]
    assert {r["method"] for r in runs} >= {
        "circuitray prune_graph_exact",
        "circuit-tracer prune_graph",
    }
    for run in runs:
        if "node_mask_diff_vs_circuitray_cpu" in run:
            assert run["node_mask_diff_vs_circuitray_cpu"] == 0
            assert run["edge_mask_diff_vs_circuitray_cpu"] == 0
    # Packing: real runs with 1 and 2 actors (quick) of the loaded model, every prompt.
    packing = report["packing"]
    assert [r["actors"] for r in packing["rows"]] == [1, 2]
    for r in packing["rows"]:
        assert "error" not in r, r["error"]
        assert r["ok"] == packing["prompts"] == 4 and r["errors"] == 0, r
        assert r["graphs_per_hour"] > 0
    assert packing["best_actors"] in (1, 2)
    text = md.read_text()
    assert "tiny (bundled fallback)" in text and "NOT google/gemma-2-2b" in text
    assert "Best packing:" in text
