"""GPU benchmark (``circuitray bench gpu``): attribution graphs per hour for one model
on one device.

Measures what one GPU (or, for a smoke check, the CPU) gives per graph when circuitray
attributes a prompt with circuit-tracer and prunes/flattens it (the production path,
:func:`circuitray.graph.attribute.attribute_prompt`), at several prompt lengths, with
circuit-tracer's default ``attribute()`` arguments and with tuned ones.

1. Probe the hub (a TCP connection to huggingface.co with a short timeout). If it is
   unreachable, set ``HF_HUB_OFFLINE=1`` before anything imports huggingface_hub, so
   the loaders fail at once instead of retrying.
2. Try the main model (``google/gemma-2-2b`` with the ``gemma`` transcoders, bf16 on
   CUDA). If it cannot be loaded (no hub and nothing cached), record why, in the log and
   in the JSON, and benchmark the bundled fallback (``organism-tuned``, a 4-layer toy
   Gemma-2 built by ``make models``) instead, labelled as such. ``with_fallback``
   benchmarks the bundled model too when the main one loads.
3. Build WS2 prompts (:func:`circuitray.prompts.ws2.generate_ws2`) preceded by the organism's
   filler sentences and trimmed word by word until the model's tokenizer gives exactly
   the target number of tokens (BOS included, as circuit-tracer counts); the real count
   is reported.
4. Tuned setting: unless given in the config, sweep ``batch_size`` (and
   ``update_interval`` when the feature count is capped) at the longest length, timing
   ``attribute()`` alone on one prompt after a warm-up, and keep the fastest.
5. For each length and each setting (circuit-tracer's defaults, read from
   ``attribute``'s signature; tuned): reset the peak-memory counter, attribute one
   warm-up prompt, then time ``prompts`` prompts end to end (attribute, next-token
   probabilities, exact pruning and flattening) with ``torch.cuda.synchronize``.
   Report seconds per graph, graphs per hour, peak GPU memory, nodes N, kept nodes and
   kept edges.
6. At the longest length, prune one unpruned graph (all features) with circuit-tracer's
   ``prune_graph`` and with circuitray's exact pruning, on the CPU (where ``attribute``
   leaves the adjacency matrix) and on the GPU: time, peak memory, identical masks.
7. Packing: for each k of ``packing`` (1, 2, 4, 8), a real ``circuitray run`` of
   ``packing_prompts`` WS2 prompts with k actors at ``--gpus-per-actor 1/k`` (on CPU,
   k CPU actors), each loading its own copy of the model; graphs per hour from the
   run's dispatch time (Ray start-up and model loads excluded, reported apart); the
   best k is recorded. A k whose run fails (out of GPU memory) is recorded as such.
8. Write everything, with the GPU name and library versions
   (:func:`circuitray.bench.environment.gpu_environment`), to the JSON file ``out``
   after every step (``"complete": false`` until the end). Rendering is apart:
   :mod:`circuitray.bench.gpu_report` prints the tables and writes the Markdown summary
   of a record, this run's or an earlier one's.

Local smoke check (no GPU, bundled model, well under a minute)::

    CIRCUITRAY_HOME=$PWD/.circuitray .venv/bin/circuitray bench gpu \\
        --device cpu --quick --out bench/results/gpu-bench-cpu.json
"""

from __future__ import annotations

import concurrent.futures
import inspect
import json
import logging
import os
import random
import socket
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from circuitray.bench.environment import RssPeak, gpu_environment, mem_available_bytes
from circuitray.errors import CircuitrayError

logger = logging.getLogger(__name__)

__all__ = [
    "FALLBACK_MODEL",
    "MAIN_MODEL",
    "GpuBenchConfig",
    "run_gpu_bench",
]

MAIN_MODEL = "google/gemma-2-2b"
MAIN_TRANSCODERS = "gemma"
FALLBACK_MODEL = "organism-tuned"
# Tuned caps: circuit-tracer's CLI uses 7500 feature nodes; 4096 keeps the influential
# part of a gemma-2-2b graph at a fraction of the cost. The bundled model keeps all.
MAIN_TUNED_MAX_FEATURE_NODES = 4096
SWEEP_BATCH_SIZES = {"cuda": (512, 1024, 2048, 4096), "cpu": (64, 128, 256)}
SWEEP_BATCH_SIZES_LARGE_MODEL = {"cuda": (256, 512, 1024, 2048), "cpu": (32, 64, 128)}
SWEEP_UPDATE_INTERVALS = (4, 16)
DEFAULT_LENGTHS = (16, 32, 64)
QUICK_CPU_LENGTHS = (8, 16)


# -- the hub --------------------------------------------------------------------------
def probe_hub(timeout: float = 5.0) -> dict:
    """Whether the hub answers a TCP connection (DNS included) within ``timeout``."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return {"reachable": False, "detail": "HF_HUB_OFFLINE is set", "forced_offline": False}
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"

    def connect() -> None:
        socket.create_connection((host, 443), timeout=timeout).close()

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(connect).result(timeout=timeout + 1)
        result = {"reachable": True, "detail": f"{host}:443 answered", "forced_offline": False}
    except Exception as e:  # noqa: BLE001 - any failure means "not reachable"
        why = str(e) or type(e).__name__
        result = {"reachable": False, "detail": f"{host}:443: {why}", "forced_offline": True}
    finally:
        pool.shutdown(wait=False)
    if result["forced_offline"]:
        os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported
    return result


def hub_cached(repo_id: str) -> bool:
    """Whether the hub cache holds ``repo_id``'s config.json (a model that loads offline)."""
    if Path(repo_id).expanduser().exists():
        return True
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001
        return False


# -- timing helpers -------------------------------------------------------------------
def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _mb(b: float | int | None) -> float | None:
    return None if b is None else round(b / 2**20, 1)


# -- prompts --------------------------------------------------------------------------
def build_prompt(model, row: dict, length: int, seed: int) -> tuple[str, int]:
    """``row``'s WS2 prompt preceded by filler sentences, trimmed word by word so the
    model's tokenizer gives ``length`` tokens (BOS included); returns (text, real count)."""
    from circuitray.organism.corpus import filler_sentence

    rng = random.Random(seed)

    def count(words: list[str]) -> int:
        return int(model.ensure_tokenized(" ".join(words)).numel())

    words = row["prompt"].split()
    while count(words) > length and len(words) > 1:
        words.pop(0)  # the prompt alone is too long: keep its end (the constraint)
    prefix: list[str] = []
    while count(prefix + words) < length:
        prefix = filler_sentence(rng).split() + prefix
    while count(prefix + words) > length and prefix:
        prefix.pop(0)
    # Multi-token words can leave a short prompt: pad with single filler words.
    pads = ["the", "a", "and", "it", "very", "there", "."]
    tries = 0
    while count(prefix + words) < length and tries < 4 * length:
        tries += 1
        for pad in pads:
            if count([pad] + prefix + words) <= length:
                prefix.insert(0, pad)
                break
        else:
            break
    text = " ".join(prefix + words)
    return text, count(prefix + words)


def make_prompts(model, n: int, length: int, seed: int) -> list[dict]:
    """``n`` WS2 rows (round-robin over constraint types) brought to ``length`` tokens."""
    from circuitray.prompts.ws2 import generate_ws2

    out = []
    for i, row in enumerate(generate_ws2(n=n, seed=seed)):
        text, n_tok = build_prompt(model, row, length, seed * 1000 + length * 10 + i)
        out.append(
            {
                "prompt_id": f"{row['prompt_id']}-L{length}",
                "prompt": text,
                "constraint_type": row["constraint_type"],
                "target": row["target"],
                "n_tokens": n_tok,
            }
        )
    return out


# -- model ----------------------------------------------------------------------------
def try_load(model: str, *, transcoders: str | None, dtype: str, device: str) -> dict:
    """Load a ReplacementModel; on failure return the reason instead of raising."""
    import torch

    from circuitray.models.loading import ModelSpec, load_replacement_model

    info: dict[str, Any] = {
        "model": model,
        "transcoders": transcoders,
        "dtype": dtype,
        "loaded": False,
        "error": None,
    }
    if device == "cuda":
        torch.cuda.empty_cache()
    t0 = time.perf_counter()
    try:
        spec = ModelSpec(model=model, transcoders=transcoders, dtype=dtype, device=device)
        info["resolved"] = spec.resolved()
        rm = load_replacement_model(spec)
    except Exception as e:  # noqa: BLE001 - the reason is the result
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        info["error"] = f"{type(e).__name__}: {msg}"
        if device == "cuda":
            torch.cuda.empty_cache()
        return info
    _sync(device)
    info["load_s"] = round(time.perf_counter() - t0, 2)
    info["loaded"] = True
    info["object"] = rm
    cfg = rm.model_config
    info["n_layers"] = int(cfg.n_layers)
    info["d_model"] = int(getattr(cfg, "d_model", 0) or 0) or None
    info["d_transcoder"] = getattr(rm.transcoders, "d_transcoder", None)
    if device == "cuda":
        info["model_memory_mb"] = _mb(torch.cuda.memory_allocated())
    return info


def public(info: dict) -> dict:
    return {k: v for k, v in info.items() if k != "object"}


# -- measurements ---------------------------------------------------------------------
def attribute_defaults() -> dict:
    """circuit-tracer's own defaults for the arguments the tuned setting changes."""
    from circuit_tracer.attribution.attribute import attribute

    sig = inspect.signature(attribute).parameters
    return {
        k: sig[k].default
        for k in ("batch_size", "max_feature_nodes", "update_interval", "max_n_logits")
        if k in sig
    }


def time_attribute(model, prompt: str, device: str, **kwargs) -> dict:
    """circuit-tracer's ``attribute()`` alone, timed (used by the sweep)."""
    import torch
    from circuit_tracer import attribute

    _sync(device)
    t0 = time.perf_counter()
    try:
        graph = attribute(prompt, model, **kwargs)
        _sync(device)
    except torch.cuda.OutOfMemoryError as e:
        torch.cuda.empty_cache()
        return {"ok": False, "error": f"CUDA out of memory: {str(e).splitlines()[0]}"}
    s = time.perf_counter() - t0
    n = int(graph.adjacency_matrix.shape[0])
    del graph
    return {"ok": True, "attribute_s": round(s, 3), "N": n}


def sweep(model, prompt: str, device: str, *, batch_sizes, update_intervals, cap) -> dict:
    """Fastest (batch_size, update_interval) for ``attribute()`` on ``prompt``."""
    import torch

    runs = []
    warmed = False
    for bs in batch_sizes:
        for ui in update_intervals:
            # update_interval only matters while features are re-ranked: with every
            # feature kept there is no ranking; with a cap, one queue of
            # update_interval * batch_size covering the cap means one ranking either way.
            if ui != update_intervals[0] and (cap is None or bs * update_intervals[0] >= cap):
                continue
            kwargs = {"batch_size": bs, "max_feature_nodes": cap, "update_interval": ui}
            if not warmed:
                time_attribute(model, prompt, device, **kwargs)
                warmed = True
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            r = time_attribute(model, prompt, device, **kwargs)
            if device == "cuda":
                r["peak_gpu_mb"] = _mb(torch.cuda.max_memory_allocated())
            r.update(kwargs)
            logger.info("sweep %s -> %s", kwargs, r.get("attribute_s", r.get("error")))
            runs.append(r)
    ok = [r for r in runs if r["ok"]]
    best = min(ok, key=lambda r: r["attribute_s"]) if ok else None
    return {"runs": runs, "best": best}


def bench_cell(
    model,
    prompts: list[dict],
    warmup: list[dict],
    *,
    device: str,
    n_layers: int,
    setting: dict,
    max_tokens: int,
) -> dict:
    """Warm up, then time ``attribute_prompt`` (attribute + prune + flatten) per prompt."""
    import torch

    from circuitray.graph.attribute import attribute_prompt
    from circuitray.graph.config import AttributionConfig, PruneConfig

    cfg = AttributionConfig(
        batch_size=setting["batch_size"],
        max_feature_nodes=setting["max_feature_nodes"],
        update_interval=setting["update_interval"],
        max_tokens=max_tokens,
    )
    prune = PruneConfig()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    for p in warmup:
        attribute_prompt(model, p, graph_id=-1, attribution=cfg, prune=prune)
    rows = []
    for i, p in enumerate(prompts):
        _sync(device)
        t0 = time.perf_counter()
        row, _nodes, _edges = attribute_prompt(model, p, graph_id=i, attribution=cfg, prune=prune)
        _sync(device)
        row["wall_s"] = time.perf_counter() - t0
        rows.append(row)
    ok = [r for r in rows if r["status"] == "ok"]
    out: dict[str, Any] = {
        "n_prompts": len(prompts),
        "n_ok": len(ok),
        "errors": sorted({r["error"] for r in rows if r["status"] != "ok"}),
        "n_tokens": sorted({int(r["n_tokens"]) for r in rows if r["n_tokens"] is not None}),
        "peak_gpu_mb": _mb(torch.cuda.max_memory_allocated()) if device == "cuda" else None,
    }
    if ok:
        out.update(_cell_figures(ok, n_layers=n_layers))
    return out


def _cell_figures(ok: list[dict], *, n_layers: int) -> dict[str, Any]:
    """A cell's figures from its successful rows: wall time per graph (mean, median,
    range) and graphs per hour, the medians of the stage times and graph sizes (N, the
    unpruned graph's nodes), and each prompt's own figures."""

    def med(key: str) -> float:
        return float(statistics.median(float(r[key]) for r in ok))

    walls = [r["wall_s"] for r in ok]
    n_nodes = [
        int(r["n_selected_features"]) + (n_layers + 1) * int(r["n_tokens"]) + int(r["n_logits"])
        for r in ok
    ]
    return dict(
        s_per_graph=round(statistics.mean(walls), 3),
        s_per_graph_median=round(statistics.median(walls), 3),
        s_per_graph_min=round(min(walls), 3),
        s_per_graph_max=round(max(walls), 3),
        graphs_per_hour=round(3600 / statistics.mean(walls), 1),
        attribute_s=round(med("attribute_s"), 3),
        flatten_s=round(med("flatten_s"), 3),
        N=int(statistics.median(n_nodes)),
        n_active_features=int(med("n_active_features")),
        n_selected_features=int(med("n_selected_features")),
        n_kept_nodes=int(med("n_kept_nodes")),
        n_kept_edges=int(med("n_kept_edges")),
        per_prompt=[
            {
                "prompt_id": r["prompt_id"],
                "n_tokens": r["n_tokens"],
                "wall_s": round(r["wall_s"], 3),
                "attribute_s": round(float(r["attribute_s"]), 3),
                "flatten_s": round(float(r["flatten_s"]), 3),
                "n_kept_edges": r["n_kept_edges"],
            }
            for r in ok
        ],
    )


def _prune_run(method: str, graph, where: str) -> dict:
    """One pruning of ``graph`` (already on ``where``): time, peak memory, masks."""
    import torch

    from circuitray.graph.prune import prune_graph_exact

    out: dict[str, Any] = {"method": method, "on": where}
    base = 0
    if where == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    try:
        with RssPeak() as rss:
            t0 = time.perf_counter()
            if method == "circuit-tracer prune_graph":
                from circuit_tracer.graph import prune_graph

                node_mask, edge_mask, _ = prune_graph(graph)
            else:
                pruned = prune_graph_exact(graph)
                node_mask, edge_mask = pruned.node_mask, pruned.edge_mask
            _sync(where)
            out["s"] = round(time.perf_counter() - t0, 3)
    except torch.cuda.OutOfMemoryError as e:
        torch.cuda.empty_cache()
        out["error"] = f"CUDA out of memory: {str(e).splitlines()[0]}"
        return out
    if where == "cuda":
        out["peak_extra_gpu_mb"] = _mb(torch.cuda.max_memory_allocated() - base)
    else:
        out["peak_extra_rss_mb"] = round(rss.extra_mb, 1)
    out["kept_nodes"] = int(node_mask.sum())
    out["kept_edges"] = int(edge_mask.sum())
    out["_masks"] = (node_mask.cpu(), edge_mask.cpu())
    return out


def prune_comparison(model, prompt: dict, *, device: str, batch_size: int) -> dict:
    """circuit-tracer's prune_graph against circuitray's exact pruning on one graph."""
    import torch
    from circuit_tracer import attribute

    graph = attribute(prompt["prompt"], model, batch_size=batch_size, max_feature_nodes=None)
    n = int(graph.adjacency_matrix.shape[0])
    out: dict[str, Any] = {
        "prompt_id": prompt["prompt_id"],
        "n_tokens": len(graph.input_tokens),
        "N": n,
        "adjacency_mb": _mb(graph.adjacency_matrix.numel() * 4),
        "note": "unpruned graph with every active feature (max_feature_nodes=None)",
        "runs": [],
    }
    places = ["cpu"] + (["cuda"] if device == "cuda" else [])
    for where in places:
        if where == "cuda":
            graph.to("cuda")
        for method in ("circuitray prune_graph_exact", "circuit-tracer prune_graph"):
            need = 32 * n * n if method.startswith("circuit-tracer") else 6 * n * n
            if where == "cpu" and need > 0.6 * mem_available_bytes():
                out["runs"].append(
                    {
                        "method": method,
                        "on": where,
                        "skipped": f"needs about {need / 2**30:.1f} GiB, more than 60% "
                        f"of the {mem_available_bytes() / 2**30:.1f} GiB available",
                    }
                )
                continue
            r = _prune_run(method, graph, where)
            logger.info("prune %s on %s: %s s", method, where, r.get("s", r.get("error")))
            out["runs"].append(r)
        if where == "cuda":
            graph.to("cpu")
            torch.cuda.empty_cache()
    # Same masks? Compare each run with circuitray's CPU run.
    ref = next((r for r in out["runs"] if "_masks" in r and r["on"] == "cpu"), None)
    for r in out["runs"]:
        if "_masks" in r and ref is not None and r is not ref:
            nm, em = r["_masks"]
            r["node_mask_diff_vs_circuitray_cpu"] = int((nm != ref["_masks"][0]).sum())
            r["edge_mask_diff_vs_circuitray_cpu"] = int((em != ref["_masks"][1]).sum())
    for r in out["runs"]:
        r.pop("_masks", None)
    del graph
    return out


def _tuned_setting(
    model,
    info: dict,
    *,
    args: dict,
    device: str,
    prompt: dict,
    longest: int,
    res: dict,
    save: Callable[[], None],
) -> dict:
    """Step 4: the tuned ``attribute()`` setting, as given or swept on ``prompt`` (the
    first of the ``longest`` length), the sweep recorded in ``res``."""
    defaults = attribute_defaults()
    bundled = info["bundled"]
    cap = None if bundled else args["tuned_max_feature_nodes"]
    tuned = {
        "batch_size": args["tuned_batch_size"],
        "max_feature_nodes": cap,
        "update_interval": args["tuned_update_interval"] or defaults["update_interval"],
    }
    if tuned["batch_size"] is None and args["sweep"]:
        table = SWEEP_BATCH_SIZES if bundled else SWEEP_BATCH_SIZES_LARGE_MODEL
        sizes = table[device]
        if args["quick"]:
            sizes = sizes[:2]
        intervals = (
            (args["tuned_update_interval"],)
            if args["tuned_update_interval"]
            else SWEEP_UPDATE_INTERVALS
        )
        logger.info("%s: sweeping batch_size %s at %d tokens", info["model"], sizes, longest)
        sw = sweep(
            model,
            prompt["prompt"],
            device,
            batch_sizes=sizes,
            update_intervals=intervals,
            cap=cap,
        )
        res["sweep"] = {"length": longest, **sw}
        save()
        if sw["best"]:
            tuned["batch_size"] = sw["best"]["batch_size"]
            tuned["update_interval"] = sw["best"]["update_interval"]
    if tuned["batch_size"] is None:
        tuned["batch_size"] = 2 * defaults["batch_size"] if device == "cuda" else 128
    return tuned


def bench_model(
    info: dict, *, args: dict, device: str, res: dict, save: Callable[[], None]
) -> None:
    """Sweep, the (length x setting) grid and the pruning comparison for one model,
    filled into ``res``; ``save()`` writes the report so far after each step."""
    import torch

    from circuitray.graph.attribute import context_length

    model = info["object"]
    n_layers = info["n_layers"]
    ctx = context_length(model)
    lengths = [L for L in args["lengths"] if ctx is None or ctx >= L]
    skipped = [L for L in args["lengths"] if L not in lengths]
    res.update(context_length=ctx, lengths=lengths, results=[])
    if skipped:
        res["lengths_skipped"] = f"{skipped}: longer than the model's context of {ctx}"
        logger.warning("%s: lengths %s exceed its context of %s", info["model"], skipped, ctx)
    if not lengths:
        return
    longest = max(lengths)
    n_p, n_w = args["prompts"], args["warmup"]
    prompts = {L: make_prompts(model, n_p + n_w, L, args["seed"]) for L in lengths}
    res["prompts"] = {
        str(L): [{"prompt": p["prompt"], "n_tokens": p["n_tokens"]} for p in ps]
        for L, ps in prompts.items()
    }

    defaults = attribute_defaults()
    tuned = _tuned_setting(
        model,
        info,
        args=args,
        device=device,
        prompt=prompts[longest][0],
        longest=longest,
        res=res,
        save=save,
    )
    settings = {
        "circuit-tracer defaults": {
            "batch_size": defaults["batch_size"],
            "max_feature_nodes": defaults["max_feature_nodes"],
            "update_interval": defaults["update_interval"],
        },
        "tuned": tuned,
    }
    res["settings"] = settings
    for L in lengths:
        for name, setting in settings.items():
            logger.info("%s: %d tokens, %s %s", info["model"], L, name, setting)
            cell = bench_cell(
                model,
                prompts[L][n_w:],
                prompts[L][:n_w],
                device=device,
                n_layers=n_layers,
                setting=setting,
                max_tokens=max(args["lengths"]) + 8,
            )
            cell.update(length=L, setting=name, **setting)
            figures = ("s_per_graph", "graphs_per_hour", "N", "n_kept_edges", "peak_gpu_mb")
            logger.info(
                "  -> %s s/graph, %s graphs/h, N=%s, kept edges %s, peak GPU %s MB %s",
                *(cell.get(k) for k in figures),
                cell["errors"] or "",
            )
            res["results"].append(cell)
            save()
            if device == "cuda":
                torch.cuda.empty_cache()
    if args["prune_compare"]:
        logger.info("%s: pruning comparison at %d tokens", info["model"], longest)
        try:
            res["prune_comparison"] = prune_comparison(
                model, prompts[longest][0], device=device, batch_size=tuned["batch_size"]
            )
        except Exception as e:  # noqa: BLE001 - keep the grid's results
            logger.exception("pruning comparison failed")
            res["prune_comparison"] = {"error": f"{type(e).__name__}: {e}"}
        save()


# -- the benchmark --------------------------------------------------------------------
@dataclass
class GpuBenchConfig:
    """What :func:`run_gpu_bench` measures, and where.

    Attributes:
        device: auto (cuda when torch sees a GPU), cuda or cpu.
        main_model: The model to benchmark (a hub id or folder).
        main_transcoders: Its transcoders.
        dtype: Main model dtype (None: bfloat16 on CUDA, float32 on the CPU).
        fallback: Bundled model benchmarked when the main one cannot load.
        with_fallback: Also benchmark the bundled model when the main one loads.
        lengths: Prompt lengths in tokens, BOS included.
        prompts: Timed prompts per cell (None: 3, or 1 with quick).
        warmup: Warm-up prompts per cell (None: 1).
        tuned_batch_size: batch_size of the tuned setting; skips the sweep.
        tuned_max_feature_nodes: Feature cap of the tuned setting (not for bundled models).
        tuned_update_interval: update_interval of the tuned setting (None: swept).
        sweep: Sweep batch_size (and update_interval) for the tuned setting.
        prune_compare: Compare circuit-tracer's prune_graph with circuitray's pruning.
        seed: Prompt seed.
        quick: Smoke check: 1 prompt, short lengths on CPU.
        packing: Actors packed on the one device for the packing step (``0``: skip;
            ``quick`` keeps 1 and 2).
        packing_prompts: Prompts per packing run (None: 48, or 4 with quick).
    """

    device: str = "auto"
    main_model: str = MAIN_MODEL
    main_transcoders: str = MAIN_TRANSCODERS
    dtype: str | None = None
    fallback: str = FALLBACK_MODEL
    with_fallback: bool = False
    lengths: tuple[int, ...] = DEFAULT_LENGTHS
    prompts: int | None = None
    warmup: int | None = None
    tuned_batch_size: int | None = None
    tuned_max_feature_nodes: int = MAIN_TUNED_MAX_FEATURE_NODES
    tuned_update_interval: int | None = None
    sweep: bool = True
    prune_compare: bool = True
    seed: int = 0
    quick: bool = False
    packing: tuple[int, ...] = (1, 2, 4, 8)
    packing_prompts: int | None = None

    def resolved(self, device: str) -> dict[str, Any]:
        """The settings as run on ``device`` (the report's ``args``): defaults filled,
        lengths 8 and 16 for a quick CPU run with the default lengths."""
        lengths = list(self.lengths)
        if self.quick and device == "cpu" and tuple(self.lengths) == DEFAULT_LENGTHS:
            lengths = list(QUICK_CPU_LENGTHS)
        return {
            "lengths": lengths,
            "prompts": self.prompts if self.prompts is not None else (1 if self.quick else 3),
            "warmup": self.warmup if self.warmup is not None else 1,
            "tuned_batch_size": self.tuned_batch_size,
            "tuned_max_feature_nodes": self.tuned_max_feature_nodes,
            "tuned_update_interval": self.tuned_update_interval,
            "sweep": self.sweep,
            "prune_compare": self.prune_compare,
            "seed": self.seed,
            "quick": self.quick,
            "packing": [k for k in self.packing if k > 0 and not (self.quick and k > 2)],
            "packing_prompts": self.packing_prompts or (4 if self.quick else 48),
        }


def _resolve_device(device: str) -> str:
    """``auto`` as ``cuda`` where torch sees a GPU, else ``cpu``; ``cuda`` without one is
    an error a user can fix."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise CircuitrayError("--device cuda: torch sees no GPU")
    return device


def _load_main(config: GpuBenchConfig, *, hub: dict, device: str) -> tuple[dict, str]:
    """Step 2 for the main model: its load record (why not, when it did not load) and
    the note the summary starts with."""
    from circuitray.models.registry import bundled_model

    main_dtype = config.dtype or ("bfloat16" if device == "cuda" else "float32")
    cached = hub_cached(config.main_model)
    logger.info("trying %s with %s transcoders", config.main_model, config.main_transcoders)
    main_info = try_load(
        config.main_model, transcoders=config.main_transcoders, dtype=main_dtype, device=device
    )
    main_info.update(
        cached=cached,
        bundled=bundled_model(config.main_model) is not None,
        fallback=False,
        label=config.main_model,
    )
    if not main_info["loaded"]:
        if not hub["reachable"] and not cached:
            main_info["error"] = (
                f"hub unreachable ({hub['detail']}) and not cached; {main_info['error']}"
            )
        logger.warning("%s not loaded: %s", config.main_model, main_info["error"])
    main_note = (
        f"{config.main_model} loaded"
        if main_info["loaded"]
        else f"{config.main_model} NOT available ({main_info['error']})"
    )
    return main_info, main_note


def run_gpu_bench(config: GpuBenchConfig, *, out: Path) -> dict:
    """Steps 1-7 of the module docstring; returns the report written to ``out``."""
    t_start = time.perf_counter()
    hub = probe_hub()  # 1. before huggingface_hub is imported
    logger.info("hub: %s", hub)

    import torch

    device = _resolve_device(config.device)
    args = config.resolved(device)
    env = gpu_environment(device)
    logger.info("device %s, GPU %s, torch %s", device, env["gpu_name"], env["torch"])

    # 2. The main model, else (or also) the bundled one; 3-6 for each, one at a time.
    from circuitray.models.registry import bundled_model

    main_info, main_note = _load_main(config, hub=hub, device=device)

    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "benchmark": "circuitray bench gpu",
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "argv": sys.argv[1:],
        "args": args,
        "environment": env,
        "hub": hub,
        "gemma_available": bool(main_info["loaded"] and "gemma" in config.main_model.lower()),
        "attribute_defaults": None,
        "models": [],
        "complete": False,
        "summary": f"INCOMPLETE (the benchmark was still running); {main_note}",
    }

    def save() -> None:
        report["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        out.write_text(json.dumps(report, indent=2, default=str) + "\n")

    def run(info: dict) -> None:
        entry = public(info)
        report["models"].append(entry)
        save()
        if info["loaded"]:
            report["attribute_defaults"] = attribute_defaults()
            bench_model(info, args=args, device=device, res=entry, save=save)
            info.pop("object", None)  # free the model before the next one loads
            if device == "cuda":
                torch.cuda.empty_cache()

    run(main_info)
    if not main_info["loaded"] or config.with_fallback:
        fb = try_load(config.fallback, transcoders=None, dtype="float32", device=device)
        fb.update(
            bundled=bundled_model(config.fallback) is not None, fallback=not main_info["loaded"]
        )
        fb["label"] = f"{config.fallback} (bundled{' fallback' if fb['fallback'] else ''})"
        if not fb["loaded"]:
            logger.error("fallback %s not loaded: %s", config.fallback, fb["error"])
        run(fb)

    packed = next((m for m in report["models"] if m["loaded"]), None)
    if args["packing"] and packed is not None:
        report["packing"] = bench_packing(
            packed, args=args, device=device, work=out.parent / f"{out.stem}-packing"
        )
        save()
    benched = [m["label"] for m in report["models"] if m["loaded"]]
    if main_info["loaded"]:
        summary = f"{main_note} and benchmarked on {env['gpu_name'] or 'CPU'}."
    else:
        summary = (
            f"{main_note}; figures are for {', '.join(benched) or 'no model'}, "
            f"NOT {config.main_model}."
        )
    report.update(complete=True, summary=summary)
    save()
    logger.info("wrote %s in %.1f s", out, report["elapsed_s"])
    return report


def bench_packing(model: dict, *, args: dict, device: str, work: Path) -> dict:
    """Step 7: graphs per hour with k actors sharing the device, for each k."""
    import shutil

    from circuitray.jobs.attribution_job import RunConfig
    from circuitray.jobs.attribution_job import run as run_job
    from circuitray.models.loading import ModelSpec
    from circuitray.prompts.files import write_prompts
    from circuitray.prompts.ws2 import generate_ws2

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    prompts = write_prompts(
        generate_ws2(n=args["packing_prompts"], seed=args["seed"]), work / "prompts.parquet"
    )
    spec = ModelSpec(
        model=model["model"],
        transcoders=model["transcoders"],
        dtype=model["dtype"],
        device=None if device == "cuda" else "cpu",
    )
    rows = []
    for k in args["packing"]:
        row: dict[str, Any] = {"actors": k, "gpus_per_actor": 1 / k if device == "cuda" else 0}
        try:
            result = run_job(
                RunConfig(
                    prompts=str(prompts),
                    out=str(work / f"k{k}"),
                    model=spec,
                    actors=k,
                    gpus_per_actor=1 / k if device == "cuda" else 1.0,
                    batch_size=max(1, args["packing_prompts"] // (4 * k)),
                )
            )
            row.update(
                ok=result.ok,
                errors=result.errors,
                ray_start_s=round(result.ray_start_s, 2),
                dispatch_s=round(result.dispatch_s, 2),
                graphs_per_hour=round(3600 * result.ok / max(result.dispatch_s, 1e-9)),
            )
        except Exception as e:  # noqa: BLE001 - recorded: out of memory at large k
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        logger.info("packing %s", row)
        rows.append(row)
    done = [r for r in rows if r.get("graphs_per_hour")]
    best = max(done, key=lambda r: r["graphs_per_hour"]) if done else None
    return {
        "model": model["label"],
        "prompts": args["packing_prompts"],
        "rows": rows,
        "best_actors": best["actors"] if best else None,
        "best_graphs_per_hour": best["graphs_per_hour"] if best else None,
    }
