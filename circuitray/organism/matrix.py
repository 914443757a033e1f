"""The organism's robustness matrix (``circuitray organism matrix``).

Machines differ in their float kernels, so one passing build proves little. For each
cell of (CPU kernel set, torch threads, seed):

1. Build the organism from scratch in a fresh process (``circuitray organism build
   --force --json``) with ``ATEN_CPU_CAPABILITY`` set to the cell's kernels, into a
   home of its own under the matrix folder; ``avx512`` is tried only where
   ``/proc/cpuinfo`` lists ``avx512f`` (torch reports it even where it cannot run).
2. Read its report: held-out tuned and base accuracy per constraint type, transcoder
   explained variance and L0 on base, mean replacement of tuned graphs, fine-tuning
   steps, wall time, and the tuned weights' digest.
3. Judge the cell with margin over the build's own acceptance: tuned accuracy at
   least ``min_tuned_accuracy`` (0.97) for every type, base at most chance + 0.10,
   explained variance at least 0.8 on every layer, replacement at least 0.5, the
   build's own checks passed, and the build within ``max_build_s``.

Cells whose weights hash the same were bit-identical: same kernels and threads give
the same digest on one machine; different kernels are expected to differ.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from circuitray.machine import aten_capabilities, cpu_model

logger = logging.getLogger(__name__)

__all__ = ["MatrixConfig", "circuitray_command", "judge", "matrix_markdown", "run_matrix"]


@dataclass(frozen=True)
class MatrixConfig:
    """What the matrix builds and how it judges a cell.

    Attributes:
        out: Folder for the cells' homes and the results (``matrix.json``).
        capabilities: ``ATEN_CPU_CAPABILITY`` values (default:
            :func:`circuitray.machine.aten_capabilities`).
        threads: torch thread counts.
        seeds: Organism seeds.
        min_tuned_accuracy: Held-out tuned accuracy every type must reach.
        base_margin: How far above chance base accuracy may be.
        min_explained_variance: Per-layer transcoder EV on base.
        min_replacement: Mean replacement score of tuned graphs.
        max_build_s: Wall time allowed for one cell's build.
        env: Extra environment for every cell (e.g. ``MKL_CBWR``).
        config_file: An organism config file passed to every build (``--config``).
    """

    out: str
    capabilities: tuple[str, ...] | None = None
    threads: tuple[int, ...] = (1, 2)
    seeds: tuple[int, ...] = (0, 1)
    min_tuned_accuracy: float = 0.97
    base_margin: float = 0.10
    min_explained_variance: float = 0.8
    min_replacement: float = 0.5
    max_build_s: float = 300.0
    env: dict[str, str] = field(default_factory=dict)
    config_file: str | None = None


def circuitray_command() -> list[str]:
    """The ``circuitray`` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "circuitray"
    return [str(script)] if script.exists() else [sys.executable, "-m", "circuitray.cli"]


def _cell(config: MatrixConfig, cap: str, threads: int, seed: int) -> dict:
    name = f"{cap}-t{threads}-s{seed}"
    home = Path(config.out) / name
    env = {
        **os.environ,
        **config.env,
        "ATEN_CPU_CAPABILITY": cap,
        "CIRCUITRAY_HOME": str(home),
    }
    env.pop("CIRCUIT_TRACER_CACHE_DIR", None)  # each cell's transcoders in its own home
    cmd = [*circuitray_command(), "organism", "build", "--force", "--json"]
    cmd += ["--seed", str(seed), "--threads", str(threads)]
    if config.config_file:
        cmd += ["--config", config.config_file]
    row: dict = {"cell": name, "capability": cap, "threads": threads, "seed": seed}
    t = time.perf_counter()
    try:
        # A cell far past its budget is stuck (e.g. threads starved), not slow.
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=4 * config.max_build_s
        )
    except subprocess.TimeoutExpired:
        wall = time.perf_counter() - t
        return {
            **row,
            "wall_s": round(wall, 1),
            "error": f"killed after {wall:.0f}s",
            "passed": False,
            "failed": ["build did not finish"],
        }
    wall = time.perf_counter() - t
    row["wall_s"] = round(wall, 1)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {**row, "error": tail, "passed": False, "failed": ["build did not finish"]}
    return {**row, **judge(report, config, wall_s=wall)}


def judge(report: dict, config: MatrixConfig, *, wall_s: float) -> dict:
    """A cell's row from its build report: the figures and the matrix's verdict."""
    acc = report["accuracy"]
    tc = report["transcoders"]["base"]
    row: dict = {
        "kernels": report["build"]["cpu_capability"],
        "tuned": {k: v["accuracy"] for k, v in acc["tuned"].items()},
        "base": {k: v["accuracy"] for k, v in acc["base"].items()},
        "chance": {k: v["chance"] for k, v in acc["base"].items()},
        "ev_min": min(m["explained_variance"] for m in tc.values()),
        "l0_mean": sum(m["l0"] for m in tc.values()) / len(tc),
        "l0_fraction_max": max(m["l0_fraction"] for m in tc.values()),
        "replacement": report["graphs"]["tuned"]["mean_replacement"],
        "tuned_steps": report["training"]["tuned_steps"],
        "learned_at": report["training"]["tuned_learned_at"],
        "build_s": report["timings"]["total_s"],
        "tuned_sha256": report["artifacts"]["sha256"]["organism-tuned"],
    }
    failed = [k for k, ok in report["acceptance"].items() if not ok]
    failed += [
        f"tuned_{k}>={config.min_tuned_accuracy}"
        for k, a in row["tuned"].items()
        if a < config.min_tuned_accuracy
    ]
    failed += [
        f"base_{k}<=chance+{config.base_margin}"
        for k, a in row["base"].items()
        if a > row["chance"][k] + config.base_margin
    ]
    if row["ev_min"] < config.min_explained_variance:
        failed.append(f"ev>={config.min_explained_variance}")
    if row["replacement"] < config.min_replacement:
        failed.append(f"replacement>={config.min_replacement}")
    if wall_s > config.max_build_s:
        failed.append(f"build<={config.max_build_s:.0f}s")
    return {**row, "failed": sorted(set(failed)), "passed": not failed}


def run_matrix(config: MatrixConfig, *, on_cell: Callable[[dict], None] | None = None) -> dict:
    """Build every cell in turn (a fresh process each); returns and saves the results."""
    caps = list(config.capabilities or aten_capabilities())
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for cap in caps:
        for threads in config.threads:
            for seed in config.seeds:
                logger.info("matrix cell %s threads=%d seed=%d", cap, threads, seed)
                row = _cell(config, cap, threads, seed)
                rows.append(row)
                if on_cell is not None:
                    on_cell(row)
    result = {
        "cpu": cpu_model() or "unknown",
        "env": config.env,
        "cells": rows,
        "passed": all(r["passed"] for r in rows),
    }
    (out / "matrix.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def matrix_markdown(result: dict) -> str:
    """The matrix as a Markdown table (what docs/models.md records)."""
    types = sorted({t for r in result["cells"] for t in r.get("tuned", {})})
    short = {t: "".join(w[0] for w in t.split("_")) for t in types}
    head = ["kernels", "threads", "seed"]
    head += [f"tuned {short[t]}" for t in types] + [f"base {short[t]}" for t in types]
    head += ["EV min", "L0 mean", "replacement", "tuned steps", "build s", "pass"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["cells"]:
        if "tuned" not in r:
            cells = [r["capability"], str(r["threads"]), str(r["seed"])]
            cells += ["-"] * (len(head) - 4) + [f"no ({r.get('error', '')})"]
        else:
            cells = [r["kernels"], str(r["threads"]), str(r["seed"])]
            cells += [f"{r['tuned'][t]:.3f}" for t in types]
            cells += [f"{r['base'][t]:.3f}" for t in types]
            cells += [
                f"{r['ev_min']:.3f}",
                f"{r['l0_mean']:.1f}",
                f"{r['replacement']:.3f}",
                f"{r['tuned_steps']} (learned {r['learned_at']})"
                if r["learned_at"] is not None
                else f"{r['tuned_steps']} (capped)",
                f"{r['wall_s']:.0f}",
                "yes" if r["passed"] else "no: " + ", ".join(r["failed"]),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
