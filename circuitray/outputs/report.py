"""A self-contained HTML report of one or more runs: plots with matplotlib, no network.

1. Query the runs with the named-query library (every query the report runs is one
   of it) and the compare API: the runs (``report_runs``), graph-level distributions
   (``report_graphs``: kept nodes and edges, replacement and completeness scores) per
   run and constraint type, ``constraint_stats``, ``layer_profile``, ``top_features``,
   ``feature_overlap``, and for two runs ``circuitray.compare_runs`` (baseline = first
   run).
2. Pick a representative graph per run and type (``representative_graphs``: the ok
   graph whose kept-edge count is the type's median) and draw its strongest edges
   (``representative_nodes``, ``representative_edges``, its ``paths``): token position
   on the x axis, layer on the y axis (tokens at the bottom, logits on top), line
   width by |weight|, colour by sign.
3. With ``interventions`` (``circuitray intervene`` folders, listed by
   ``intervention_folders``): the ``intervention_effects`` query per SPEC and
   constraint type, drawn as the mean target-logit change with its bootstrap CI (the
   query's numbers), a scatter of the graphs' predicted change (total and direct)
   against the measured one over every ok result row (``intervention_results``), with
   the query's Spearman correlations, and the table itself.
4. For a checkpoint series (runs with a ``step``: :mod:`circuitray.jobs.series`), a
   trajectory section: per constraint type and step, accuracy, kept nodes, layers
   spanned by kept features and the Jaccard of each graph's feature set to the same
   prompt's graph at the series' last step (the ``trajectory`` query's rows), each a
   mean over graphs with a percentile bootstrap band (prompts resampled, seeded), on a
   symmetric-log step axis; then the ``convergence`` table. The per-run sections above
   show only each series' first and last step, and the before/after comparison is
   first vs last step.
5. Render every figure to PNG with matplotlib's Agg backend and inline it as a data
   URI; the page has no external asset, script or font. A small inline script marks
   the body with how many images decoded (``data-plots-drawn``) and any script errors,
   which the headless-browser test reads.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from circuitray.errors import CircuitrayError
from circuitray.query.compare import CompareConfig, compare_runs
from circuitray.query.engine import connect, named_relation, run_query
from circuitray.storage.run_store import InterventionStore

logger = logging.getLogger(__name__)

__all__ = ["ReportConfig", "build_report"]

DISTRIBUTIONS = [
    ("n_kept_nodes", "kept nodes"),
    ("n_kept_edges", "kept edges"),
    ("replacement_score", "replacement score"),
    ("completeness_score", "completeness score"),
]
COMPARE_METRICS = (
    "target_prob",
    "top1",
    "replacement_score",
    "completeness_score",
    "n_kept_features",
    "error_influence_share",
)


@dataclass(frozen=True)
class ReportConfig:
    """What the report shows.

    Attributes:
        top_k: Features per run and type in the top-features plots.
        circuit_edges: Strongest edges drawn per representative or consensus circuit.
        consensus_share: The share of a type's graphs a node or edge of its consensus
            circuit is in, at least.
        consensus_nodes: Features, supernodes and error nodes drawn per consensus
            circuit (the most influential).
        dpi: Resolution of the inlined PNGs (size vs sharpness).
        n_boot: Bootstrap resamples of the before/after comparison.
        seed: Bootstrap seed.
    """

    top_k: int = 10
    circuit_edges: int = 60
    consensus_share: float = 0.5
    consensus_nodes: int = 20
    dpi: int = 80
    n_boot: int = 1000
    seed: int = 0


def _plain(text: object) -> str:
    """Text from a run folder (run and folder names, constraint types, tokens, labels,
    SPECs) as matplotlib should draw it: as written. Matplotlib parses text between two
    ``$`` as mathtext ("price $a^$" stopped the report with ValueError), so every ``$``
    is escaped; turning mathtext off for the whole figure would break the symlog axes'
    own tick labels (10^k), which are mathtext."""
    return str(text).replace("$", r"\$")


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img class="plot" alt="plot" src="data:image/png;base64,{data}">'


def _table_html(table: pa.Table, *, max_rows: int = 40) -> str:
    """A table in a box that scrolls sideways when it is wider than the page; long
    cells (labels, feature lists) wrap."""
    cols = table.column_names
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    rows = []
    for r in table.slice(0, max_rows).to_pylist():
        cells = []
        for c in cols:
            v = r[c]
            text = f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))
            cells.append(f"<td>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="table-wrap"><table><tr>{head}</tr>{"".join(rows)}</table></div>'


def _distributions(graphs, runs: list[str], dpi: int) -> str:
    import matplotlib.pyplot as plt

    types = sorted(graphs.constraint_type.unique())
    fig, axes = plt.subplots(1, len(DISTRIBUTIONS), figsize=(4 * len(DISTRIBUTIONS), 3.4), dpi=dpi)
    for ax, (col, label) in zip(axes, DISTRIBUTIONS, strict=True):
        data, labels = [], []
        for run in runs:
            for t in types:
                v = graphs[(graphs.run == run) & (graphs.constraint_type == t)][col].dropna()
                if len(v):
                    data.append(v.to_numpy())
                    labels.append(_plain(f"{run}\n{t}" if len(runs) > 1 else t))
        if data:
            ax.boxplot(data, showmeans=True)
            ax.set_xticks(range(1, len(labels) + 1), labels, rotation=45, ha="right", fontsize=7)
        ax.set_title(label)
    fig.tight_layout()
    return _png(fig)


def _layer_profile(profile, run: str, dpi: int) -> str:
    import matplotlib.pyplot as plt

    sub = profile[profile.run == run]
    types = sorted(sub.constraint_type.unique())
    kinds = ["feature", "error", "token"]
    fig, axes = plt.subplots(1, len(types), figsize=(4.2 * len(types), 3.2), dpi=dpi, squeeze=False)
    for ax, t in zip(axes[0], types, strict=True):
        part = sub[sub.constraint_type == t]
        layers = sorted(part.layer.unique())
        bottom = np.zeros(len(layers))
        for kind in kinds:
            values = [
                part[(part.layer == layer) & (part.node_type == kind)].influence_share.sum()
                for layer in layers
            ]
            ax.bar([str(x) for x in layers], values, bottom=bottom, label=kind)
            bottom += np.array(values)
        ax.set_title(_plain(f"{run}: {t}"), fontsize=9)
        ax.set_xlabel("layer (-1: tokens)")
        ax.set_ylabel("share of influence")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _top_features(top, run: str, dpi: int) -> str:
    import matplotlib.pyplot as plt

    sub = top[top.run == run]
    types = sorted(sub.constraint_type.unique())
    fig, axes = plt.subplots(1, len(types), figsize=(4.2 * len(types), 3.6), dpi=dpi, squeeze=False)
    for ax, t in zip(axes[0], types, strict=True):
        part = sub[sub.constraint_type == t].iloc[::-1]
        labels = [f"L{r.layer}/{r.feature}" for r in part.itertuples()]
        ax.barh(labels, part.frequency, color="tab:purple")
        ax.set_xlim(0, 1)
        ax.set_title(_plain(f"{run}: {t}"), fontsize=9)
        ax.set_xlabel("share of graphs")
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return _png(fig)


def _overlap(overlap, dpi: int) -> str:
    import matplotlib.pyplot as plt

    keys = sorted({(r.run_a, r.type_a) for r in overlap.itertuples()})
    index = {k: i for i, k in enumerate(keys)}
    m = np.zeros((len(keys), len(keys)))
    for r in overlap.itertuples():
        m[index[(r.run_a, r.type_a)], index[(r.run_b, r.type_b)]] = r.jaccard
    size = 1.2 + 0.7 * len(keys)
    fig, ax = plt.subplots(figsize=(size + 1.5, size), dpi=dpi)
    im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
    labels = [_plain(f"{run}: {t}") for run, t in keys]
    ax.set_xticks(range(len(keys)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(keys)), labels, fontsize=7)
    for i in range(len(keys)):
        for j in range(len(keys)):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(im, ax=ax, label="Jaccard")
    fig.tight_layout()
    return _png(fig)


def _compare_plot(table, dpi: int) -> str:
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(table.metric))
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(3.2 * len(metrics), 3.2), dpi=dpi, squeeze=False
    )
    for ax, metric in zip(axes[0], metrics, strict=True):
        part = table[table.metric == metric]
        y = np.arange(len(part))
        colors = ["tab:red" if b else "tab:gray" for b in part.beyond_noise]
        ax.hlines(y, part.ci_low, part.ci_high, colors=colors, lw=2)
        ax.scatter(part["diff"], y, c=colors, zorder=3)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(y, [_plain(g) for g in part.group], fontsize=7)
        ax.set_title(_plain(metric), fontsize=9)
    fig.suptitle("candidate - baseline, 95% bootstrap CI (red: beyond noise, Holm)", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def _short(text: str, n: int = 34) -> str:
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def _node_name(r) -> str:
    """A node as the paths query names it, with the feature's label where it has one."""
    if r.node_type == "feature":
        label = r.feature_label if isinstance(r.feature_label, str) else ""
        return f"L{r.layer}/{r.feature}" + (f" {_short(label)}" if label else "")
    if r.node_type == "error":
        return f"err L{r.layer}"
    tok = r.token if isinstance(r.token, str) else str(r.token_id)
    return f"tok {tok}" if r.node_type == "token" else f"logit {tok}"


# How the circuit drawings mark each kind of node, and box a node's name.
MARKER = {"feature": "o", "supernode": "h", "error": "s", "token": "^", "logit": "D"}
COLOR = {
    "feature": "tab:purple",
    "supernode": "tab:brown",
    "error": "tab:gray",
    "token": "tab:green",
    "logit": "tab:orange",
}
LABEL_BOX = {"boxstyle": "round,pad=0.2", "fc": "white", "ec": "0.7", "alpha": 0.85}


def _finish_circuit(fig, ax, title: str) -> None:
    """A circuit drawing's layer axis, title, legend and margins."""
    ax.set_ylabel("layer")
    ax.set_title(_plain(title), fontsize=9)
    ax.legend(fontsize=6, loc="lower right")
    ax.autoscale()
    ax.margins(x=0.12, y=0.08)
    fig.tight_layout()


def _circuit(nodes, edges, paths, title: str, n_edges: int, dpi: int) -> str:
    """One graph's drawing: its strongest edges faint, its strongest token -> target
    paths (the ``paths`` query) bold with every node on them named (features with
    their labels), and the paths listed below."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    pos = {r.node_id: (r.pos, r.layer, r.node_type) for r in nodes.itertuples()}
    names = {r.node_id: _node_name(r) for r in nodes.itertuples()}
    strongest = edges.reindex(edges.weight.abs().sort_values(ascending=False).index)
    strongest = strongest.head(n_edges)
    used = set(strongest.src) | set(strongest.dst)
    fig, ax = plt.subplots(figsize=(8.5, 5.2), dpi=dpi)
    if len(strongest):
        wmax = float(strongest.weight.abs().max()) or 1.0
        segs, widths, colors = [], [], []
        for e in strongest.itertuples():
            (x0, y0, _), (x1, y1, _) = pos[e.src], pos[e.dst]
            segs.append([(x0, y0), (x1, y1)])
            widths.append(0.3 + 3 * abs(e.weight) / wmax)
            colors.append("tab:blue" if e.weight > 0 else "tab:red")
        ax.add_collection(LineCollection(segs, linewidths=widths, colors=colors, alpha=0.25))
    on_path: list[int] = []
    path_segs = []
    for rank, path in enumerate(paths.path if len(paths) else []):
        ids = [int(i) for i in path if int(i) in pos]
        on_path += [i for i in ids if i not in on_path]
        xy = [pos[i][:2] for i in ids]
        path_segs += [(a, b, rank) for a, b in zip(xy, xy[1:], strict=False)]
    if path_segs:
        ax.add_collection(
            LineCollection(
                [[a, b] for a, b, _ in path_segs],
                linewidths=[3.2 - 0.8 * min(rank, 2) for *_, rank in path_segs],
                colors="black",
                alpha=0.8,
                zorder=2,
            )
        )
    shown = used | set(on_path)
    for kind in MARKER:
        pts = [(x, y) for nid, (x, y, k) in pos.items() if k == kind and nid in shown]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.scatter(xs, ys, marker=MARKER[kind], c=COLOR[kind], s=30, label=kind, zorder=3)
    for i, nid in enumerate(on_path):
        x, y, kind = pos[nid]
        if kind == "token":
            continue  # the axis names the tokens
        ax.annotate(
            _plain(names[nid]),
            (x, y),
            xytext=(6, 6 if i % 2 == 0 else -10),
            textcoords="offset points",
            fontsize=7,
            zorder=4,
            bbox=LABEL_BOX,
        )
    tokens = nodes[nodes.node_type == "token"].sort_values("pos")
    ax.set_xticks(list(tokens.pos), [_plain(t) for t in tokens.token], rotation=45, fontsize=8)
    _finish_circuit(fig, ax, title)
    listed = "".join(
        f'<li>{html.escape(r.label)} <span class="strength">(strength {r.strength:.3g})</span></li>'
        for r in paths.itertuples()
    )
    caption = f'<ol class="paths">{listed}</ol>' if listed else ""
    return _png(fig) + caption


def _consensus(nodes, edges, title: str, n_edges: int, dpi: int) -> str:
    """One group's consensus circuit (``consensus_nodes`` / ``consensus_edges`` rows):
    nodes where they carry the most influence (position from the end of the prompt,
    layer; tokens below, logits above), sized by the share of the group's graphs that
    hold them; its strongest edges by mean weight over the group's graphs, coloured by
    sign; the most influential features named."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    from circuitray.outputs.aggregate import consensus_key as key
    from circuitray.outputs.aggregate import consensus_tokens

    top_layer = max([int(n["at_layer"]) for n in nodes if n["node_type"] != "logit"] or [0])

    def y(n: dict) -> float:
        kind = n["node_type"]
        return -1.0 if kind == "token" else top_layer + 1.5 if kind == "logit" else n["at_layer"]

    where = {key(n): (n["at_pos_from_end"], y(n)) for n in nodes}
    kept = [e for e in edges if key(e, "src_") in where and key(e, "dst_") in where]
    kept.sort(key=lambda e: -abs(e["sum_weight"]))
    kept = kept[:n_edges]
    fig, ax = plt.subplots(figsize=(8.5, 5.2), dpi=dpi)
    if kept:
        wmax = max(abs(e["sum_weight"] / e["n_graphs"]) for e in kept) or 1.0
        segments: list[Any] = [[where[key(e, "src_")], where[key(e, "dst_")]] for e in kept]
        ax.add_collection(
            LineCollection(
                segments,
                linewidths=[0.3 + 3 * abs(e["sum_weight"] / e["n_graphs"]) / wmax for e in kept],
                colors=["tab:blue" if e["sum_weight"] > 0 else "tab:red" for e in kept],
                alpha=0.35,
            )
        )
    for kind in MARKER:
        group = [n for n in nodes if n["node_type"] == kind]
        if group:
            ax.scatter(
                [where[key(n)][0] for n in group],
                [where[key(n)][1] for n in group],
                s=[12 + 60 * n["share"] for n in group],
                marker=MARKER[kind],
                c=COLOR[kind],
                label=kind,
                zorder=3,
            )
    named = sorted(
        (n for n in nodes if n["node_type"] in ("feature", "supernode")),
        key=lambda n: -(n["influence"] or 0.0),
    )[:6]
    for i, n in enumerate(named):
        text = n["supernode"] or f"L{n['layer']}/{n['feature']}"
        ax.annotate(
            _plain(f"{_short(text)} ({n['share']:.0%})"),
            where[key(n)],
            xytext=(6, 6 if i % 2 == 0 else -10),
            textcoords="offset points",
            fontsize=7,
            zorder=4,
            bbox=LABEL_BOX,
        )
    tokens = consensus_tokens(nodes)
    ax.set_xticks(list(tokens), [_plain(t) for t in tokens.values()], rotation=45, fontsize=8)
    ax.set_xlabel("position from the end of the prompt (most common token)")
    _finish_circuit(fig, ax, title)
    return _png(fig)


def _consensus_section(run_dirs: list[str], config: ReportConfig) -> list[str]:
    """Per run and constraint type, the consensus circuit at ``consensus_share``."""
    from circuitray.query.engine import run_queries

    tables = run_queries(
        ["consensus_nodes", "consensus_edges"],
        run_dirs,
        params={"min_share": str(config.consensus_share)},
    )
    nodes: dict[tuple, list[dict]] = {}
    for n in tables["consensus_nodes"].to_pylist():
        rank = n["influence_rank"]
        if rank is None or rank <= config.consensus_nodes:
            nodes.setdefault((n["run"], n["group_value"]), []).append(n)
    edges: dict[tuple, list[dict]] = {}
    for e in tables["consensus_edges"].to_pylist():
        edges.setdefault((e["run"], e["group_value"]), []).append(e)
    plots = [
        _consensus(
            group,
            edges.get(g, []),
            f"{g[0]}: {g[1]}, {group[0]['n_graphs']} graphs",
            config.circuit_edges,
            config.dpi,
        )
        for g, group in sorted(nodes.items())
    ]
    return [
        f"<h2>Consensus circuits (nodes and edges in at least {config.consensus_share:.0%} of "
        f"a type's graphs; the {config.consensus_nodes} most influential features and "
        "error nodes; size: share of graphs; circuitray aggregate writes them for the "
        "viewer)</h2>",
        *(plots or ["<p>no ok graphs</p>"]),
    ]


def _effect_label(run: str, spec: str, several: bool) -> str:
    return f"{run}: {spec}" if several else spec


def _intervention_effects(effects, dpi: int) -> str:
    """Mean target-logit change per constraint type with the query's bootstrap CI, one
    panel per (folder, SPEC); the panels of one folder share their y axis."""
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(zip(effects.run, effects.spec, strict=True)))
    several = len({run for run, _ in keys}) > 1
    ncols = min(4, len(keys))
    nrows = -(-len(keys) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.6 * ncols, 3.4 * nrows), dpi=dpi, squeeze=False
    )
    by_run: dict[str, list] = {}
    for ax, (run, spec) in zip(axes.flat, keys, strict=False):
        part = effects[(effects.run == run) & (effects.spec == spec)]
        x = np.arange(len(part))
        mean = part.mean_change.to_numpy(dtype=float)
        low = part.ci_low.to_numpy(dtype=float)
        high = part.ci_high.to_numpy(dtype=float)
        # Rounded bounds can sit a hair inside the rounded mean; no CI (n_boot 0): none.
        err = np.nan_to_num(np.clip([mean - low, high - mean], 0, None))
        colors = ["tab:gray" if t == "(all)" else "tab:blue" for t in part.constraint_type]
        ax.bar(x, mean, yerr=err, color=colors, capsize=4, ecolor="k")
        ax.axhline(0, color="k", lw=0.8)
        labels = [_plain(f"{t} (n={n})") for t, n in zip(part.constraint_type, part.n, strict=True)]
        ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=7)
        ax.set_title(_plain(_effect_label(run, spec, several)), fontsize=9)
        ax.set_ylabel("target logit change", fontsize=8)
        by_run.setdefault(run, []).append(ax)
    for group in by_run.values():
        lows, highs = zip(*(ax.get_ylim() for ax in group), strict=True)
        for ax in group:
            ax.set_ylim(min(lows), max(highs))
    for ax in axes.flat[len(keys) :]:
        ax.set_visible(False)
    fig.suptitle("mean change of the target logit (minus mean logit), 95% bootstrap CI")
    fig.tight_layout()
    return _png(fig)


def _intervention_scatter(rows, effects, dpi: int) -> str:
    """Predicted (total, direct) vs measured target-logit change, one point per ok
    result row, coloured by (folder, SPEC); the legend holds the query's Spearman
    correlations of the pooled ('(all)') rows."""
    import matplotlib.pyplot as plt

    pooled = effects[effects.constraint_type == "(all)"]
    several = pooled.run.nunique() > 1
    panels = [
        ("predicted_total", "spearman", "total"),
        ("predicted_direct", "spearman_direct", "direct"),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), dpi=dpi)
    cmap = plt.get_cmap("tab10")
    for ax, (col, rho_col, name) in zip(axes, panels, strict=True):
        shown = []
        for k, r in enumerate(pooled.itertuples()):
            part = rows[(rows.run == r.run) & (rows.spec == r.spec)].dropna(subset=[col])
            rho = getattr(r, rho_col)
            rho_text = "n/a" if rho is None or np.isnan(rho) else f"{rho:.2f}"
            ax.scatter(
                part[col],
                part.target_logit_change,
                s=14,
                alpha=0.6,
                color=cmap(k % 10),
                marker="os^Dv<>P*X"[k % 10],
                label=_plain(
                    f"{_effect_label(r.run, r.spec, several)}: rho = {rho_text} (n={len(part)})"
                ),
            )
            shown += [part[col].to_numpy(float), part.target_logit_change.to_numpy(float)]
        values = np.concatenate(shown) if shown else np.zeros(0)
        values = values[np.isfinite(values)]
        if len(values):
            # Predictions can exceed the measured change by orders of magnitude: symlog
            # both axes alike (linear up to the power of ten above the values' median
            # size), so the dashed diagonal is "predicted = measured".
            nonzero = np.abs(values[values != 0])
            linthresh = 10.0 ** np.ceil(np.log10(np.median(nonzero))) if len(nonzero) else 1.0
            ax.set_xscale("symlog", linthresh=linthresh)
            ax.set_yscale("symlog", linthresh=linthresh)
            lo, hi = float(values.min()), float(values.max())
            ax.plot([lo, hi], [lo, hi], ls="--", color="k", lw=0.8, label="predicted = measured")
        ax.axhline(0, color="gray", lw=0.5)
        ax.axvline(0, color="gray", lw=0.5)
        ax.set_xlabel(f"graph-predicted change ({col})")
        ax.set_ylabel("measured target_logit_change")
        ax.set_title(f"{name} effect vs measured (Spearman rho per SPEC, all types)", fontsize=9)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _png(fig)


def _interventions_section(dirs: list[str], config: ReportConfig) -> list[str]:
    """Step 3: the folders listed, the ``intervention_effects`` plot and table, and the
    predicted-vs-measured scatter of the ``intervention_results`` rows."""
    effects = run_query(
        "intervention_effects",
        dirs,
        params={"n_boot": str(config.n_boot), "seed": str(config.seed)},
    )
    con = connect(dirs)
    try:
        queries = _Queries(con)
        folders = queries.df("intervention_folders")
        rows = queries.df("intervention_results")
    finally:
        con.close()
    items = [_intervention_item(f.run, f.path, int(f.error_rows)) for f in folders.itertuples()]
    out = ["<h2>Interventions</h2>", "<ul>" + "".join(items) + "</ul>"]
    if effects.num_rows == 0:
        return [*out, "<p>no ok intervention results</p>"]
    frame = effects.to_pandas()
    return [
        *out,
        "<h3>Mean target-logit change per SPEC and constraint type</h3>",
        _intervention_effects(frame, config.dpi),
        "<h3>Graph-predicted vs measured change</h3>",
        _intervention_scatter(rows, frame, config.dpi),
        _table_html(effects, max_rows=500),
    ]


def _intervention_item(name: str, path: str, errors: int) -> str:
    """One intervention folder in the list: what its intervention.json says of it."""
    meta = InterventionStore(path).read_meta()
    plan = meta.get("plan") or {}
    specs = ", ".join(s.get("text", "?") for s in plan.get("specs") or [])
    return (
        f"<li>{html.escape(name)}: {html.escape(path)} (source run "
        f"{html.escape(str(meta.get('source_run')))}; SPECs {html.escape(specs)}; scale "
        f"{html.escape(str(plan.get('scale')))}; constrained layers "
        f"{html.escape(str(plan.get('constrained_layers')))}; "
        f"{html.escape(str(meta.get('status')))}; {errors} error rows)</li>"
    )


TRAJECTORY = [
    ("top1", "accuracy (top-1 = target)"),
    ("n_kept_nodes", "kept nodes"),
    ("layers_spanned", "layers spanned by kept features"),
    ("jaccard_final", "Jaccard of feature set to the last step"),
]


def _band(values: np.ndarray, *, n_boot: int, rng: np.random.Generator) -> tuple:
    """Mean and 95% percentile-bootstrap interval of ``values`` (NaNs dropped)."""
    v = values[~np.isnan(values)]
    if len(v) == 0:
        return (np.nan, np.nan, np.nan)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    return (float(v.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975)))


def trajectory_bands(rows, *, n_boot: int, seed: int):
    """Per series, type, step and metric: mean, lo, hi over graphs (a DataFrame)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    out = []
    for (series, ctype, step), grp in rows.groupby(["series", "constraint_type", "step"]):
        for metric, _ in TRAJECTORY:
            mean, lo, hi = _band(grp[metric].to_numpy(dtype=float), n_boot=n_boot, rng=rng)
            out.append(
                {"series": series, "constraint_type": ctype, "step": int(step),
                 "metric": metric, "mean": mean, "lo": lo, "hi": hi, "n": len(grp)}
            )  # fmt: skip
    return pd.DataFrame(out)


def _trajectory_plot(bands, series: str, dpi: int) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TRAJECTORY), figsize=(4.2 * len(TRAJECTORY), 3.4), dpi=dpi)
    sub = bands[bands["series"] == series]
    for ax, (metric, label) in zip(axes, TRAJECTORY, strict=True):
        m = sub[sub["metric"] == metric]
        for ctype, g in m.groupby("constraint_type"):
            g = g.sort_values("step")
            (line,) = ax.plot(g["step"], g["mean"], marker="o", ms=3, label=_plain(ctype))
            ax.fill_between(g["step"], g["lo"], g["hi"], alpha=0.2, color=line.get_color())
        ax.set_xscale("symlog", linthresh=8)
        ax.set_xlabel("fine-tuning step")
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(_plain(f"{series}: mean per type, 95% bootstrap band over prompts"), fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _trajectory_section(rows, run_dirs: list[str], config: ReportConfig) -> list[str]:
    """Step 4: the ``trajectory`` rows' bands per series, then ``convergence``; nothing
    unless some series has two steps."""
    if rows.empty or rows["step"].nunique() < 2:
        return []
    bands = trajectory_bands(rows, n_boot=config.n_boot, seed=config.seed)
    sections = ["<h2>Trajectory over fine-tuning</h2>"]
    for series in sorted(bands["series"].unique()):
        sections.append(f"<h3>{html.escape(str(series))}</h3>")
        sections.append(_trajectory_plot(bands, series, config.dpi))
    try:
        sections += ["<h3>Convergence</h3>", _table_html(run_query("convergence", run_dirs))]
    except CircuitrayError as e:
        sections.append(f"<p>{html.escape(str(e))}</p>")
    return sections


class _Queries:
    """Named queries on one open connection (:func:`connect`), as DataFrames (DuckDB's
    own conversion, which keeps integer columns with NULLs integers); a table that a
    query ``uses:`` is made once per connection."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.made: set[str] = set()

    def df(self, name: str, params: dict[str, str] | None = None):
        return named_relation(self.con, name, params=params, made=self.made).df()


def build_report(
    run_dirs: list[str],
    out: str,
    *,
    config: ReportConfig | None = None,
    interventions: list[str] | None = None,
) -> dict:
    """Write the report for ``run_dirs`` (and ``interventions`` folders, if any) to
    ``out``; returns path, bytes, plots, seconds."""
    import matplotlib

    matplotlib.use("Agg")
    config = config or ReportConfig()
    t0 = time.perf_counter()
    interventions = [str(d) for d in interventions or []]
    for d in interventions:  # before the slow part
        if not InterventionStore(d).exists():
            raise CircuitrayError(
                f"{d}: not a circuitray intervention folder (no intervention.json)"
            )
    trajectory, run_dirs = _series(run_dirs, config)
    con = connect(run_dirs)
    try:
        queries = _Queries(con)
        runs = list(queries.df("report_runs")["run"])
        graphs = queries.df("report_graphs")
        if graphs.empty:
            raise CircuitrayError("no ok graphs in " + ", ".join(run_dirs) + ": nothing to report")
        circuits = _circuits(queries, config)
    finally:
        con.close()
    sections = [
        *_run_sections(runs, run_dirs, graphs, config),
        *_compare_section(runs, run_dirs, config),
        *trajectory,
        "<h2>Representative circuits (strongest edges; bold: the strongest paths to the "
        "target, features with their labels)</h2>",
        *circuits,
        *_consensus_section(run_dirs, config),
    ]
    if interventions:
        sections += _interventions_section(interventions, config)
    return _write_page(sections, runs=runs, out=out, started=t0)


def _series(run_dirs: list[str], config: ReportConfig) -> tuple[list[str], list[str]]:
    """Step 4's trajectory section over every folder given, and the folders the per-run
    sections show (``report_runs``: of a series only its first and last step)."""
    con = connect(run_dirs)
    try:
        queries = _Queries(con)
        trajectory = _trajectory_section(queries.df("trajectory"), run_dirs, config)
        listed = queries.df("report_runs")
    finally:
        con.close()
    if listed["series"].notna().any():
        run_dirs = [r.path for r in listed.itertuples() if r.shown]
    return trajectory, run_dirs


def _circuits(queries: _Queries, config: ReportConfig) -> list[str]:
    """Step 2: each ``representative_graphs`` graph drawn from its nodes and edges
    (``representative_nodes`` / ``representative_edges``) and its strongest paths."""
    reps = queries.df("representative_graphs")
    nodes = queries.df("representative_nodes")
    edges = queries.df("representative_edges")

    def of(frame, r):
        mine = (frame["run"] == r.run) & (frame["graph_id"] == r.graph_id)
        return frame[mine].reset_index(drop=True)

    circuits = []
    for r in reps.itertuples():
        one = {"graph_id": str(r.graph_id), "run": r.run, "top_k": "3", "max_graphs": "0"}
        paths = queries.df("paths", one)
        title = f"{r.run}: {r.constraint_type}, graph {r.graph_id} (median: {r.n_kept_edges} edges)"
        circuits.append(
            _circuit(of(nodes, r), of(edges, r), paths, title, config.circuit_edges, config.dpi)
        )
    return circuits


def _run_sections(runs: list[str], run_dirs: list[str], graphs, config: ReportConfig) -> list[str]:
    """Step 1's sections: the runs with ``constraint_stats``, the distributions,
    ``layer_profile``, ``top_features`` and ``feature_overlap``."""
    profile = run_query("layer_profile", run_dirs).to_pandas()
    top = run_query("top_features", run_dirs, params={"top_k": str(config.top_k)}).to_pandas()
    overlap = run_query("feature_overlap", run_dirs).to_pandas()
    stats = run_query("constraint_stats", run_dirs)
    listed = "".join(
        f"<li>{html.escape(r)}: {html.escape(d)}</li>" for r, d in zip(runs, run_dirs, strict=True)
    )
    return [
        "<h2>Runs</h2>",
        f"<ul>{listed}</ul>",
        _table_html(stats),
        "<h2>Distributions per constraint type</h2>",
        _distributions(graphs, runs, config.dpi),
        "<h2>Layer profile of influence</h2>",
        *[_layer_profile(profile, run, config.dpi) for run in runs],
        f"<h2>Top shared features (top {config.top_k} per type)</h2>",
        *[_top_features(top, run, config.dpi) for run in runs],
        "<h2>Feature overlap (Jaccard of feature sets)</h2>",
        _overlap(overlap, config.dpi) if len(overlap) else "<p>no features</p>",
    ]


def _compare_section(runs: list[str], run_dirs: list[str], config: ReportConfig) -> list[str]:
    """Step 1's before/after comparison of the first two runs (nothing for one run)."""
    if len(run_dirs) < 2:
        return []
    cmp_config = CompareConfig(metrics=COMPARE_METRICS, n_boot=config.n_boot, seed=config.seed)
    try:
        diff = compare_runs(run_dirs[0], run_dirs[1], config=cmp_config)
    except CircuitrayError as e:  # e.g. the runs share no prompt
        return [f"<h2>Before / after</h2><p>{html.escape(str(e))}</p>"]
    return [
        f"<h2>Before / after: {html.escape(runs[1])} - {html.escape(runs[0])}</h2>",
        _compare_plot(diff.to_pandas(), config.dpi),
        _table_html(diff, max_rows=200),
    ]


def _write_page(sections: list[str], *, runs: list[str], out: str, started: float) -> dict:
    """Step 5: the page written whole (a temporary file renamed); path, bytes, plots,
    seconds."""
    page = PAGE.format(
        title=html.escape("circuitray report: " + ", ".join(runs)), body="\n".join(sections)
    )
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(page)
    tmp.replace(path)
    n_plots = page.count('class="plot"')
    seconds = time.perf_counter() - started
    logger.info(
        "report %s: %d plots, %d bytes in %.1fs", path, n_plots, path.stat().st_size, seconds
    )
    return {"path": str(path), "bytes": path.stat().st_size, "plots": n_plots, "seconds": seconds}


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1400px; }}
h3 {{ font-size: 1em; }}
.table-wrap {{ overflow-x: auto; max-width: 100%; margin: 1em 0; }}
table {{ border-collapse: collapse; font-size: 12px; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
td {{ max-width: 32em; overflow-wrap: anywhere; }}
ol.paths {{ font-size: 12px; margin-top: 0; }}
ol.paths .strength {{ color: #666; }}
img.plot {{ display: block; margin: 1em 0; max-width: 100%; }}
</style></head>
<body data-plots-drawn="0" data-errors="">
<h1>{title}</h1>
{body}
<script>
window.addEventListener("error", function (e) {{
  document.body.dataset.errors += (e.message || "error") + ";";
}});
window.addEventListener("load", function () {{
  var imgs = document.querySelectorAll("img.plot"), drawn = 0;
  imgs.forEach(function (img) {{ if (img.complete && img.naturalWidth > 0) drawn++; }});
  document.body.dataset.plotsDrawn = String(drawn);
  document.body.dataset.plotsTotal = String(imgs.length);
}});
</script>
</body></html>
"""
