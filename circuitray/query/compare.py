"""Differences between runs or between constraint types, with bootstrap confidence
intervals, effect sizes, and a multiple-comparison-aware verdict.

1. Read one row per ok graph with its metrics (:data:`METRICS`: scores, circuit size,
   the target's probability, top-1 accuracy, the error nodes' share of influence) from
   the runs' tables through DuckDB.
2. Two runs (:func:`compare_runs`): pair graphs by ``prompt_id`` within each group of
   ``by`` (and over all groups), and take candidate - baseline per prompt. The effect
   size is Cohen's d_z (mean difference / SD of the differences); the confidence
   interval is the percentile bootstrap of the mean difference, resampling prompts.
3. One run (:func:`compare_groups`): every pair of groups of ``by`` (e.g. constraint
   types), unpaired. The effect size is Hedges' g; the bootstrap resamples each group
   on its own.
4. The bootstrap p-value is twice the smaller tail of the resampled differences
   around 0 (floored at 1 / n_boot). A difference is ``beyond_noise`` when its
   Holm-adjusted p-value over all rows of the table is below ``alpha``, so a table of
   30 comparisons does not cry wolf at 5% per row. A metric that is the same for every
   pair (e.g. two identical runs) has p = 1.
5. Every random draw comes from ``numpy.random.default_rng(seed)``: the same inputs
   and seed give the same table.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from circuitray.errors import CircuitrayError
from circuitray.query.engine import connect
from circuitray.schema import GRAPH_SCHEMA

__all__ = ["METRICS", "CompareConfig", "compare_groups", "compare_runs"]

# Per-graph metric -> SQL over graphs g joined with the per-graph error share e.
METRICS = {
    "target_prob": "g.target_prob",
    "top1": "top1(g.top_token, g.target_token)",
    "replacement_score": "g.replacement_score",
    "completeness_score": "g.completeness_score",
    "n_kept_nodes": "g.n_kept_nodes",
    "n_kept_edges": "g.n_kept_edges",
    "n_kept_features": "g.n_kept_features",
    "error_influence_share": "e.error_share",
}
BOOT_CHUNK = 256  # resamples drawn at once: bounds memory at 256 x n indices


@dataclass(frozen=True)
class CompareConfig:
    """How differences are tested.

    Attributes:
        by: graphs column to group by (constraint_type by default).
        metrics: Metric names from :data:`METRICS`; None means all.
        n_boot: Bootstrap resamples per row.
        alpha: Family-wise error rate for ``beyond_noise`` (Holm) and the CI level
            (1 - alpha).
        seed: Seed of the bootstrap.
        mixed_targets: Compare two runs attributed to different targets (--target)
            anyway; refused otherwise, since their graphs explain different outputs.
    """

    by: str = "constraint_type"
    metrics: tuple[str, ...] | None = None
    n_boot: int = 2000
    alpha: float = 0.05
    seed: int = 0
    mixed_targets: bool = False

    def metric_names(self) -> list[str]:
        names = list(self.metrics or METRICS)
        unknown = [m for m in names if m not in METRICS]
        if unknown:
            raise CircuitrayError(f"unknown metric {unknown[0]!r} (metrics: {', '.join(METRICS)})")
        return names


def _per_graph(run_dirs: list[str], config: CompareConfig) -> pa.Table:
    """One row per ok graph: run position, prompt_id, group, metrics."""
    if config.by not in GRAPH_SCHEMA.names:
        raise CircuitrayError(
            f"--by {config.by!r}: not a graphs column (columns: {', '.join(GRAPH_SCHEMA.names)})"
        )
    cols = ", ".join(f"({METRICS[m]})::DOUBLE AS {m}" for m in config.metric_names())
    sql = f"""
        WITH e AS (
            SELECT run, graph_id,
                   coalesce(sum(influence) FILTER (WHERE node_type = 'error'), 0)
                       / nullif(sum(influence), 0) AS error_share
            FROM nodes WHERE node_type IN ('feature', 'error', 'token')
            GROUP BY run, graph_id
        )
        SELECT runs.position, g.prompt_id,
               coalesce(CAST(g."{config.by}" AS VARCHAR), '(none)') AS grp,
               coalesce(g.target_mode, 'top') AS target_mode, {cols}
        FROM graphs g JOIN runs USING (run) LEFT JOIN e USING (run, graph_id)
        WHERE g.status = 'ok'
        ORDER BY runs.position, grp, g.prompt_id
    """
    con = connect(run_dirs)
    try:
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()


def _boot_means(rng: np.random.Generator, x: np.ndarray, n_boot: int) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of ``x``."""
    out = np.empty(n_boot)
    for start in range(0, n_boot, BOOT_CHUNK):
        k = min(BOOT_CHUNK, n_boot - start)
        idx = rng.integers(0, len(x), size=(k, len(x)))
        out[start : start + k] = x[idx].mean(axis=1)
    return out


def _p_value(boot: np.ndarray) -> float:
    """Two-sided bootstrap p-value of 'the difference is 0'."""
    if np.all(boot == 0):
        return 1.0
    tail = min(float(np.mean(boot <= 0)), float(np.mean(boot >= 0)))
    return float(min(1.0, max(2 * tail, 1.0 / len(boot))))


def _holm(p: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values."""
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def _finish(rows: list[dict], config: CompareConfig) -> pa.Table:
    if not rows:
        raise CircuitrayError("nothing to compare: no group has graphs on both sides")
    p = np.array([r["p_value"] for r in rows])
    adjusted = _holm(p)
    for r, a in zip(rows, adjusted, strict=True):
        r["p_holm"] = float(a)
        r["beyond_noise"] = bool(a < config.alpha)
    return pa.Table.from_pylist(rows)


def _effect(diff: float, sd: float) -> float | None:
    """diff / sd; None (undefined) when every value is the same but diff is not 0."""
    if sd > 0:
        return diff / sd
    return 0.0 if diff == 0 else None


def _interval(boot: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def compare_runs(baseline: str, candidate: str, *, config: CompareConfig | None = None) -> pa.Table:
    """Paired differences candidate - baseline per group of ``config.by`` and overall.

    Columns: group, metric, n (pairs), baseline, candidate (means), diff, ci_low,
    ci_high, effect_size (d_z), p_value, p_holm, beyond_noise.
    """
    config = config or CompareConfig()
    table = _per_graph([baseline, candidate], config).to_pandas()
    base, cand = table[table.position == 0], table[table.position == 1]
    pairs = base.merge(cand, on="prompt_id", suffixes=("_b", "_c"))
    if pairs.empty:
        raise CircuitrayError(
            f"{baseline} and {candidate} share no prompt_id with an ok graph in both"
        )
    modes = [sorted(set(side.target_mode)) for side in (base, cand)]
    if modes[0] != modes[1] and not config.mixed_targets:
        raise CircuitrayError(
            f"{baseline} attributes to {'/'.join(modes[0])}, {candidate} to "
            f"{'/'.join(modes[1])} (--target): their graphs explain different outputs; "
            "--mixed-targets compares them anyway"
        )
    rng = np.random.default_rng(config.seed)
    rows = []
    groups = [("(all)", pairs)] + list(pairs.groupby("grp_b", sort=True))
    for group, frame in groups:
        for metric in config.metric_names():
            b = frame[f"{metric}_b"].to_numpy(float)
            c = frame[f"{metric}_c"].to_numpy(float)
            keep = ~(np.isnan(b) | np.isnan(c))
            b, c = b[keep], c[keep]
            if len(b) < 2:
                continue
            d = c - b
            boot = _boot_means(rng, d, config.n_boot)
            lo, hi = _interval(boot, config.alpha)
            sd = float(d.std(ddof=1))
            rows.append(
                {
                    "group": str(group),
                    "metric": metric,
                    "n": int(len(d)),
                    "baseline": float(b.mean()),
                    "candidate": float(c.mean()),
                    "diff": float(d.mean()),
                    "ci_low": lo,
                    "ci_high": hi,
                    "effect_size": _effect(float(d.mean()), sd),
                    "p_value": _p_value(boot),
                }
            )
    return _finish(rows, config)


def compare_groups(run: str, *, config: CompareConfig | None = None) -> pa.Table:
    """Unpaired differences between every pair of groups (b - a) of ``config.by``.

    Columns: group_a, group_b, metric, n_a, n_b, mean_a, mean_b, diff, ci_low, ci_high,
    effect_size (Hedges' g), p_value, p_holm, beyond_noise.
    """
    config = config or CompareConfig()
    table = _per_graph([run], config).to_pandas()
    groups = dict(list(table.groupby("grp", sort=True)))
    if len(groups) < 2:
        raise CircuitrayError(f"{run}: --by {config.by} has fewer than two groups with graphs")
    rng = np.random.default_rng(config.seed)
    rows = []
    for (ga, fa), (gb, fb) in itertools.combinations(groups.items(), 2):
        for metric in config.metric_names():
            a = fa[metric].to_numpy(float)
            b = fb[metric].to_numpy(float)
            a, b = a[~np.isnan(a)], b[~np.isnan(b)]
            if len(a) < 2 or len(b) < 2:
                continue
            boot = _boot_means(rng, b, config.n_boot) - _boot_means(rng, a, config.n_boot)
            lo, hi = _interval(boot, config.alpha)
            na, nb = len(a), len(b)
            pooled = np.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
            diff = float(b.mean() - a.mean())
            # Hedges' small-sample correction of Cohen's d.
            g = _effect(diff, pooled * 1 / (1 - 3 / (4 * (na + nb) - 9)))
            rows.append(
                {
                    "group_a": str(ga),
                    "group_b": str(gb),
                    "metric": metric,
                    "n_a": na,
                    "n_b": nb,
                    "mean_a": float(a.mean()),
                    "mean_b": float(b.mean()),
                    "diff": diff,
                    "ci_low": lo,
                    "ci_high": hi,
                    "effect_size": g,
                    "p_value": _p_value(boot),
                }
            )
    return _finish(rows, config)
