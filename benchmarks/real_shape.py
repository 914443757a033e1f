"""The gemma-2-2b shape, and the real models, on this machine: per-graph time, peak
memory, flatten share.

1. Build (or reuse) the synthetic gemma-2-2b-shaped model at ``scale``
   (:func:`circuitray.models.builders.synthetic.build_synthetic`: 26 layers, GemmaScope-like
   L0, so graphs have the real model's N of 5-15k nodes). The real-model section
   (:func:`real_models_bench`) takes each real model ``circuitray model build-real``
   has built instead (stories260K, Gemma-3-270m) and skips, saying so, the others.
2. In a fresh Python process (so its peak RSS is this work's alone), load it through
   :func:`circuitray.models.loading.load_replacement_model` and run circuitray's
   per-prompt path (:func:`circuitray.graph.attribute.attribute_prompt`: attribute,
   next-token probabilities, exact pruning, flattening) on WS2 prompts of 4, 5, 6... words.
3. Report per graph: N, kept nodes and edges, ``attribute()`` seconds, flatten
   seconds (pruning included) and their share, and the process's peak RSS; with
   circuit-tracer's ``prune_graph`` estimate (32 bytes per matrix entry) beside it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["real_models_bench", "real_shape_bench"]

CHECKOUT = Path(__file__).resolve().parents[1]

logger = logging.getLogger(__name__)

# Four to eight words: N of about 5-15k nodes on the 26-layer model.
PROMPT_WORDS = (4, 8)


def _child(model: str, n_prompts: int) -> dict[str, Any]:
    """Step 2, inside the child process."""
    import resource
    import time

    import torch

    from circuitray.graph.attribute import attribute_prompt
    from circuitray.graph.config import AttributionConfig, PruneConfig
    from circuitray.models.loading import ModelSpec, load_replacement_model
    from circuitray.prompts.ws2 import generate_ws2

    t0 = time.perf_counter()
    m = load_replacement_model(ModelSpec(model=model, device="cpu"))
    load_s = time.perf_counter() - t0
    lo, hi = PROMPT_WORDS
    # One prompt of each length from ``lo`` words up: the first is the cheapest.
    by_words: dict[int, dict] = {}
    for r in generate_ws2(n=200, seed=1):
        by_words.setdefault(len(r["prompt"].split()), r)
    rows = [by_words[k] for k in sorted(by_words) if lo <= k <= hi]
    graphs = []
    for i, prompt in enumerate(rows[:n_prompts]):
        row, _, _ = attribute_prompt(
            m, prompt, graph_id=i, attribution=AttributionConfig(), prune=PruneConfig()
        )
        if row["status"] != "ok":
            raise RuntimeError(f"prompt {prompt['prompt_id']}: {row['error']}")
        n = row["n_selected_features"] + (m.cfg.n_layers + 1) * row["n_tokens"] + row["n_logits"]
        graphs.append(
            {
                "prompt_id": prompt["prompt_id"],
                "n_tokens": row["n_tokens"],
                "n_nodes": n,
                "kept_nodes": row["n_kept_nodes"],
                "kept_edges": row["n_kept_edges"],
                "attribute_s": row["attribute_s"],
                "flatten_s": row["flatten_s"],
                "total_s": row["total_s"],
                "flatten_share": row["flatten_s"] / row["attribute_s"],
                "prune_graph_peak_mb_estimate": 32 * n * n / 2**20,
            }
        )
    return {
        "model": model,
        "n_layers": m.cfg.n_layers,
        "torch_threads": torch.get_num_threads(),
        "load_s": load_s,
        "graphs": graphs,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def measure_in_child(model: str, *, n_prompts: int) -> dict[str, Any]:
    """Steps 2-3 for one model: its graphs, measured in a fresh process, and their
    summary."""
    code = (
        "import json, sys; from benchmarks.real_shape import _child; "
        f"print(json.dumps(_child({model!r}, {n_prompts})))"
    )
    p = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        cwd=CHECKOUT,  # benchmarks/ imports from the checkout, wherever this runs from
    )
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{model}: bench child failed: {tail}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    g = out["graphs"]
    out["summary"] = {
        "n_nodes_min": min(x["n_nodes"] for x in g),
        "n_nodes_max": max(x["n_nodes"] for x in g),
        "per_graph_s_mean": sum(x["total_s"] for x in g) / len(g),
        "flatten_share_mean": sum(x["flatten_s"] for x in g) / sum(x["attribute_s"] for x in g),
    }
    return out


def real_shape_bench(*, scale: float = 0.0625, n_prompts: int = 3) -> dict[str, Any]:
    """Steps 1-3; the section ``python -m benchmarks suite`` records as ``real_shape``."""
    from circuitray.models.builders.synthetic import build_synthetic
    from circuitray.models.registry import synthetic_model_name

    build_synthetic(like="gemma-2-2b", scale=scale)
    return measure_in_child(synthetic_model_name("gemma-2-2b", scale), n_prompts=n_prompts)


def real_models_bench(*, names: tuple[str, ...] | None = None, n_prompts: int = 3) -> dict:
    """Steps 2-3 for each real model (default: every one ``build-real`` knows) that is
    built, model and transcoders; the section ``python -m benchmarks suite`` records as
    ``real_models``: by name, its figures, ``{"skipped": why}``, or ``{"error": ...}``
    when its measurement failed (the other sections are kept)."""
    from circuitray.errors import ModelLoadError
    from circuitray.models.builders.real import REAL_MODELS
    from circuitray.models.loading import ModelSpec, check_model_available
    from circuitray.models.registry import BUNDLED, transcoder_cache_dir

    out: dict[str, dict] = {}
    for name in names or tuple(REAL_MODELS):
        model = BUNDLED[name]
        try:
            check_model_available(ModelSpec(model=name))  # what a run checks first
        except ModelLoadError as e:
            out[name] = {"skipped": str(e)}
            continue
        if not (transcoder_cache_dir() / model.transcoders).is_dir():  # a build cut short
            out[name] = {"skipped": f"{name}: no transcoders; run `{model.build_command}`"}
            continue
        try:
            out[name] = measure_in_child(name, n_prompts=n_prompts)
        except RuntimeError as e:
            logger.warning("real-model bench: %s", e)
            out[name] = {"error": str(e)}
    return out
