"""Synthetic run folders in the real schema, for benchmarking the query library at scale.

Attributing 100M edges takes hours even on GPUs; timing SQL on them should not. This
writes a run folder that :func:`circuitray.query.engine.connect` reads like any other:

1. Graphs get the WS2 constraint types in turn, ``n_tokens`` token nodes (layer -1),
   ``n_logits`` logit nodes (layer ``n_layers``), some error nodes, and feature nodes
   drawn from a per-type Zipf-like pool of (layer, feature) pairs, so features recur
   within a type and are shared across types as in real runs.
2. Node ids follow circuit-tracer's order (features layer-major, errors, tokens,
   logits). Every edge goes from a node of a lower layer to one of a higher layer, as
   in a transcoder graph, with no duplicate (dst, src) pair. Graph sizes vary: each
   graph's edge and node counts are the spec's means times one factor drawn
   uniformly from [0.5, 1.5]; the last graph takes what remains of ``edges``.
3. Weights are signed log-normal, influences positive log-normal; the first logit is
   the target, with the highest probability.
4. Graphs are generated in chunks with numpy and written one Parquet part per chunk
   through :class:`RunStore`, so memory stays at one chunk.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from circuitray.errors import CircuitrayError
from circuitray.prompts.ws2 import CONSTRAINTS
from circuitray.schema import EDGE_SCHEMA, GRAPH_SCHEMA, NODE_SCHEMA, NODE_TYPES
from circuitray.storage.run_store import RunStore

logger = logging.getLogger(__name__)

CONSTRAINT_TYPES = list(CONSTRAINTS)
_NAMES = np.array(NODE_TYPES, dtype=object)

__all__ = ["SyntheticSpec", "make_synthetic_run"]


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape of a synthetic run (defaults: gemma-2-2b-like graphs).

    Attributes:
        edges: Total edge rows to write.
        edges_per_graph: Mean kept edges per graph.
        nodes_per_graph: Mean kept nodes per graph (tokens, logits, errors, features).
        n_layers: Transcoder layers.
        d_transcoder: Features per layer.
        n_tokens: Prompt length (token nodes; positions of the other nodes).
        n_logits: Logit nodes per graph.
        error_share: Fraction of non-token, non-logit nodes that are error nodes.
        pool_size: Distinct (layer, feature) pairs each constraint type draws from.
        graphs_per_part: Graphs per Parquet part (bounds memory while writing).
        seed: numpy seed; the same spec writes the same tables.
    """

    edges: int = 100_000_000
    edges_per_graph: int = 5_000
    nodes_per_graph: int = 400
    n_layers: int = 26
    d_transcoder: int = 16_384
    n_tokens: int = 16
    n_logits: int = 5
    error_share: float = 0.15
    pool_size: int = 4_000
    graphs_per_part: int = 1_000
    seed: int = 0


def _type_pools(spec: SyntheticSpec, rng: np.random.Generator) -> list[np.ndarray]:
    """Per constraint type, the (layer, feature) pool as int64 keys layer*d + feature.
    Half of each pool is shared by all types, half is the type's own."""
    d = spec.d_transcoder
    shared = rng.choice(spec.n_layers * d, size=spec.pool_size // 2, replace=False)
    pools = []
    for _ in CONSTRAINT_TYPES:
        own = rng.choice(spec.n_layers * d, size=spec.pool_size - len(shared), replace=False)
        pool = np.concatenate([shared, own])
        rng.shuffle(pool)  # Zipf ranks: mix shared and own features over the ranks
        pools.append(pool)
    return pools


@dataclass
class _Nodes:
    """One synthetic graph's kept nodes, in circuit-tracer's order (features
    layer-major, errors, tokens, logits), as parallel arrays."""

    node_type: np.ndarray  # index into NODE_TYPES
    layer: np.ndarray
    pos: np.ndarray
    node_id: np.ndarray
    feature: np.ndarray  # feature index of the first n_feat nodes
    n_feat: int
    n_err: int
    n_sel: int  # selected features of the unpruned graph the ids are numbered in

    def __len__(self) -> int:
        return len(self.node_id)


def _draw_nodes(
    spec: SyntheticSpec, rng: np.random.Generator, *, n_nodes: int, pool: np.ndarray
) -> _Nodes:
    """Steps 1-2 of the module docstring for the nodes of one graph."""
    n_tok, n_log, n_layers = spec.n_tokens, spec.n_logits, spec.n_layers
    inner = max(n_nodes - n_tok - n_log, 4)
    n_err = max(1, int(inner * spec.error_share))
    n_feat = inner - n_err
    # Features: Zipf-ranked draws from the type's pool, distinct within the graph.
    ranks = np.unique(np.minimum(rng.zipf(1.3, size=3 * n_feat), len(pool)) - 1)
    extra = rng.choice(len(pool), size=n_feat, replace=False)
    ranks = np.unique(np.concatenate([ranks[:n_feat], extra]))[:n_feat]
    keys = pool[ranks]
    f_layer, f_index = keys // spec.d_transcoder, keys % spec.d_transcoder
    f_pos = rng.integers(0, n_tok, size=len(keys))
    order = np.lexsort((f_index, f_pos, f_layer))  # circuit-tracer: layer-major
    f_layer, f_pos, f_index = f_layer[order], f_pos[order], f_index[order]
    n_feat = len(keys)
    # Errors: distinct (layer, pos) cells; circuit-tracer numbers them layer*n_pos + pos.
    cells = np.sort(rng.choice(n_layers * n_tok, size=n_err, replace=False))
    e_layer, e_pos = cells // n_tok, cells % n_tok
    node_type = np.concatenate(
        [np.zeros(n_feat), np.ones(n_err), np.full(n_tok, 2), np.full(n_log, 3)]
    ).astype(np.int8)
    layer = np.concatenate([f_layer, e_layer, np.full(n_tok, -1), np.full(n_log, n_layers)])
    pos = np.concatenate([f_pos, e_pos, np.arange(n_tok), np.full(n_log, n_tok - 1)])
    # Ids as in the unpruned graph: selected features first, then every (layer, pos)
    # error cell, tokens, logits; kept features get sparse ids below the error block.
    n_sel = 4 * n_feat
    node_id = np.concatenate(
        [
            np.sort(rng.choice(n_sel, size=n_feat, replace=False)),
            n_sel + cells,
            n_sel + n_layers * n_tok + np.arange(n_tok),
            n_sel + n_layers * n_tok + n_tok + np.arange(n_log),
        ]
    ).astype(np.int32)
    return _Nodes(
        node_type=node_type,
        layer=layer.astype(np.int16),
        pos=pos.astype(np.int16),
        node_id=node_id,
        feature=f_index,
        n_feat=n_feat,
        n_err=n_err,
        n_sel=n_sel,
    )


def _draw_edges(
    rng: np.random.Generator, nodes: _Nodes, *, n_edges: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 2's edges and step 3's weights: (dst index, src index, weight), sorted by
    (dst, src) id. dst is any non-token node; src any node of a strictly lower layer."""
    n_nodes, layer = len(nodes), nodes.layer
    by_layer = np.argsort(layer, kind="stable")
    below = np.searchsorted(layer[by_layer], layer, side="left")  # nodes under each layer
    dst_candidates = np.flatnonzero(nodes.node_type != 2)
    dst_idx = np.zeros(0, np.int64)
    src_idx = np.zeros(0, np.int64)
    while len(dst_idx) < n_edges:
        d = rng.choice(dst_candidates, size=2 * n_edges)
        d = d[below[d] > 0]
        s = by_layer[(rng.random(len(d)) * below[d]).astype(np.int64)]
        pair = np.unique(np.concatenate([dst_idx * n_nodes + src_idx, d * n_nodes + s]))
        pair = rng.permutation(pair)[:n_edges]
        dst_idx, src_idx = pair // n_nodes, pair % n_nodes
    order = np.lexsort((nodes.node_id[src_idx], nodes.node_id[dst_idx]))
    weight = rng.lognormal(-3.0, 1.5, size=n_edges) * np.where(rng.random(n_edges) < 0.8, 1, -1)
    return dst_idx[order], src_idx[order], weight


def _node_table(
    spec: SyntheticSpec, rng: np.random.Generator, nodes: _Nodes, *, graph_id: int
) -> tuple[pa.Table, np.ndarray]:
    """Step 3 for the nodes: their table, and the logits' probabilities (descending)."""
    n_nodes, n_feat, n_log = len(nodes), nodes.n_feat, spec.n_logits
    is_feat = nodes.node_type == 0
    feature = np.concatenate([nodes.feature, np.full(n_nodes - n_feat, -1)]).astype(np.int32)
    token_id = np.concatenate(
        [np.full(n_feat + nodes.n_err, -1), rng.integers(2, 200, size=spec.n_tokens + n_log)]
    ).astype(np.int32)
    has_token = token_id >= 0
    logit_prob = np.full(n_nodes, np.nan, np.float32)
    probs = np.sort(rng.dirichlet(np.ones(n_log)))[::-1]
    logit_prob[-n_log:] = probs
    token_text = [f"t{t}" if t >= 0 else None for t in token_id]
    influence = rng.lognormal(-4, 1.5, n_nodes).astype(np.float32)
    order = np.argsort(-influence, kind="stable")
    cumulative = np.empty(n_nodes, np.float32)
    cumulative[order] = np.cumsum(influence[order]) / influence.sum()
    table = pa.table(
        {
            "graph_id": pa.array(np.full(n_nodes, graph_id, np.int32)),
            "node_id": pa.array(nodes.node_id),
            "node_type": pa.array(_NAMES[nodes.node_type].tolist(), pa.string()),
            "layer": pa.array(nodes.layer),
            "pos": pa.array(nodes.pos),
            "feature": pa.array(feature, mask=~is_feat),
            "activation": pa.array(rng.lognormal(0, 1, n_nodes).astype(np.float32), mask=~is_feat),
            "influence": pa.array(influence),
            "cumulative_influence": pa.array(cumulative),
            "token_id": pa.array(token_id, mask=~has_token),
            "token": pa.array(token_text, pa.string()),
            "logit_prob": pa.array(logit_prob, mask=np.isnan(logit_prob)),
        },
        schema=NODE_SCHEMA,
    )
    return table, probs


def _edge_table(
    nodes: _Nodes, *, graph_id: int, dst: np.ndarray, src: np.ndarray, weight: np.ndarray
) -> pa.Table:
    """The edges drawn by :func:`_draw_edges` as a table of the edge schema."""
    return pa.table(
        {
            "graph_id": pa.array(np.full(len(dst), graph_id, np.int32)),
            "dst": pa.array(nodes.node_id[dst]),
            "src": pa.array(nodes.node_id[src]),
            "weight": pa.array(weight.astype(np.float32)),
            "src_layer": pa.array(nodes.layer[src]),
            "dst_layer": pa.array(nodes.layer[dst]),
            "src_type": pa.array(_NAMES[nodes.node_type[src]].tolist(), pa.string()),
            "dst_type": pa.array(_NAMES[nodes.node_type[dst]].tolist(), pa.string()),
        },
        schema=EDGE_SCHEMA,
    )


def _graph_tables(
    spec: SyntheticSpec,
    rng: np.random.Generator,
    *,
    graph_id: int,
    n_edges: int,
    n_nodes: int,
    type_index: int,
    pool: np.ndarray,
) -> tuple[pa.Table, pa.Table, dict]:
    """Steps 1-3 for one graph: its nodes and edges tables and its graphs row (the
    random draws in a fixed order, so the same spec writes the same tables)."""
    nodes = _draw_nodes(spec, rng, n_nodes=n_nodes, pool=pool)
    dst, src, weight = _draw_edges(rng, nodes, n_edges=n_edges)
    node_table, probs = _node_table(spec, rng, nodes, graph_id=graph_id)
    edges = _edge_table(nodes, graph_id=graph_id, dst=dst, src=src, weight=weight)
    target = node_table["token"][len(nodes) - spec.n_logits].as_py()
    replacement = float(rng.beta(8, 3))
    row = {
        "graph_id": graph_id,
        "prompt_id": f"synthetic-{graph_id:08d}",
        "constraint_type": CONSTRAINT_TYPES[type_index],
        "prompt": f"synthetic prompt {graph_id}",
        "target": target,
        "status": "ok",
        "n_tokens": spec.n_tokens,
        "n_active_features": 10 * nodes.n_sel,
        "n_selected_features": nodes.n_sel,
        "n_kept_features": nodes.n_feat,
        "n_kept_error_nodes": nodes.n_err,
        "n_kept_nodes": len(nodes),
        "n_kept_edges": n_edges,
        "n_logits": spec.n_logits,
        "replacement_score": replacement,
        "completeness_score": min(1.0, replacement + 0.1),
        "top_token": target,
        "top_prob": float(probs[0]),
        "target_token": target,
        "target_prob": float(probs[0]),
        "target_rank": 0,
        "worker": "synthetic",
    }
    return node_table, edges, row


def make_synthetic_run(out: str, spec: SyntheticSpec | None = None) -> dict:
    """Write a synthetic run folder at ``out``; returns counts (graphs, nodes, edges)."""
    spec = spec or SyntheticSpec()
    # A graph cannot hold more distinct lower-to-higher layer pairs than this.
    smallest = max(int(0.5 * spec.nodes_per_graph), spec.n_tokens + spec.n_logits + 4)
    if 1.5 * spec.edges_per_graph > smallest**2 / 4:
        raise CircuitrayError(
            f"edges_per_graph={spec.edges_per_graph} is too many for "
            f"nodes_per_graph={spec.nodes_per_graph}: raise nodes_per_graph"
        )
    if spec.edges < 1:
        raise CircuitrayError(f"edges must be at least 1, got {spec.edges}")
    store = RunStore(out)
    store.acquire_lock()
    try:
        meta = {"kind": "synthetic", "status": "running", "synthetic": asdict(spec)}
        store.write_meta(meta)
        rng = np.random.default_rng(spec.seed)
        pools = _type_pools(spec, rng)
        totals = {"graphs": 0, "nodes": 0, "edges": 0}
        gid = 0
        while totals["edges"] < spec.edges:
            rows, node_parts, edge_parts = [], [], []
            first = gid
            while len(rows) < spec.graphs_per_part and totals["edges"] < spec.edges:
                scale = rng.uniform(0.5, 1.5)
                n_edges = min(int(scale * spec.edges_per_graph), spec.edges - totals["edges"])
                t = gid % len(CONSTRAINT_TYPES)
                nodes, edges, row = _graph_tables(
                    spec,
                    rng,
                    graph_id=gid,
                    n_edges=n_edges,
                    n_nodes=int(scale * spec.nodes_per_graph),
                    type_index=t,
                    pool=pools[t],
                )
                rows.append(row)
                node_parts.append(nodes)
                edge_parts.append(edges)
                totals["edges"] += n_edges
                gid += 1
            graphs = pa.Table.from_pylist(
                [{f.name: r.get(f.name) for f in GRAPH_SCHEMA} for r in rows], GRAPH_SCHEMA
            )
            tables = {
                "graphs": graphs,
                "nodes": pa.concat_tables(node_parts),
                "edges": pa.concat_tables(edge_parts),
            }
            store.write_part(f"synthetic-{first:08d}", tables)
            totals["graphs"] += graphs.num_rows
            totals["nodes"] += tables["nodes"].num_rows
            logger.info("synthetic: %d of %d edges", totals["edges"], spec.edges)
        meta.update(status="done", counts=totals)
        store.write_meta(meta)
        return totals
    finally:
        store.release_lock()
