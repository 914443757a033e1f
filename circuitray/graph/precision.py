"""How far a run's dtype (bfloat16, float16) is from float32 on the same prompt.

``circuitray run --verify-precision K`` attributes K sampled prompts of a reduced
precision run a second time with a float32 model (:class:`circuitray.jobs.workers.
AttributionWorker`) and compares the two graphs here. No Ray, no model: numpy on
circuit-tracer Graphs and flattened tables, so the comparison is testable by hand.

1. Sampling (:func:`sample_graph_ids`): K graph ids drawn with a seeded RNG, one
   constraint type after another (round robin over the types in shuffled order), so
   that every type is checked once K reaches the number of types. The driver draws them
   before dispatch and records them in run.json; a resumed run reads them back.
2. Node identity (:func:`node_keys`): node indices differ between the two graphs (a
   feature active in one dtype and not the other shifts every index after it), so
   nodes are matched by what they are, packed into one int64: type, layer, position,
   and the feature index (features) or the vocabulary id (logit nodes, which all sit
   at the last position after the last layer). Tokens and error nodes need no more.
3. Weights (:func:`weights_at`): the run dtype's adjacency-matrix entries at the
   edges the float32 graph keeps, looked up by identity in the unpruned run-dtype
   graph. An edge one of whose nodes the run-dtype graph lacks altogether (a feature
   whose activation crosses its threshold in one dtype only) has no counterpart.
4. :func:`compare_kept` gives :class:`PrecisionCheck`: the relative error
   ``||w_run - w_f32||_2 / ||w_f32||_2`` over the float32 graph's kept edges that have
   a counterpart (the arithmetic's error), and how the pruned graphs differ (where
   features that fire in one dtype only show): kept nodes and kept edges in only one
   of the two (counts) and the Jaccard index of the two sets.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
from numpy.typing import ArrayLike

from circuitray.schema import NODE_TYPES

logger = logging.getLogger(__name__)

__all__ = [
    "PRECISION_COLUMNS",
    "PrecisionCheck",
    "attribute_checked",
    "compare_kept",
    "graph_node_keys",
    "node_keys",
    "sample_graph_ids",
    "summarise_checks",
    "table_edge_keys",
    "table_node_keys",
    "weights_at",
]

# graphs columns a check fills (null for graphs not checked); GRAPH_SCHEMA holds them.
PRECISION_COLUMNS = (
    "precision_rel_error",
    "precision_node_jaccard",
    "precision_edge_jaccard",
    "precision_nodes_diff",
    "precision_edges_diff",
)

_TYPE_CODE = {name: i for i, name in enumerate(NODE_TYPES)}
# Bit layout of a node key: type 2 bits | layer+1 14 bits | pos 16 bits | value+1 32 bits.
_LAYER_SHIFT, _POS_SHIFT, _TYPE_SHIFT = 48, 32, 62


def sample_graph_ids(constraint_types: Sequence[str | None], k: int, seed: int) -> list[int]:
    """``k`` distinct graph ids (row indices of ``constraint_types``), sorted: a seeded
    shuffle, then one id per constraint type in turn (module docstring, step 1)."""
    if not 0 <= k <= len(constraint_types):
        raise ValueError(f"cannot sample {k} of {len(constraint_types)} graphs")
    ids = list(range(len(constraint_types)))
    random.Random(seed).shuffle(ids)
    queues: dict[str | None, list[int]] = {}
    for gid in ids:  # types in the order the shuffle first meets them
        queues.setdefault(constraint_types[gid], []).append(gid)
    picked: list[int] = []
    while len(picked) < k:
        for queue in queues.values():
            if queue and len(picked) < k:
                picked.append(queue.pop(0))
    return sorted(picked)


def node_keys(
    node_type: ArrayLike, layer: ArrayLike, pos: ArrayLike, value: ArrayLike
) -> np.ndarray:
    """One int64 per node (module docstring, step 2): ``node_type`` codes (index in
    NODE_TYPES), ``layer`` (-1 for tokens), ``pos``, ``value`` (feature index for
    features, vocabulary id for logits, -1 otherwise)."""
    t = np.asarray(node_type, np.int64)
    lay = np.asarray(layer, np.int64) + 1
    p = np.asarray(pos, np.int64)
    v = np.asarray(value, np.int64) + 1
    if lay.size and (lay.min() < 0 or lay.max() >= 1 << 14 or p.min() < 0 or p.max() >= 1 << 16):
        raise ValueError("layer or position out of the node key's range")
    return (t << _TYPE_SHIFT) | (lay << _LAYER_SHIFT) | (p << _POS_SHIFT) | v


def graph_node_keys(graph) -> np.ndarray:
    """The key of every node of an unpruned circuit-tracer Graph, by node index."""
    from circuitray.graph.flatten import _node_layout

    layout = _node_layout(graph)
    value = layout["feature"].astype(np.int64)
    n_logits = len(graph.logit_targets)
    if n_logits:
        value[-n_logits:] = [t.vocab_idx for t in graph.logit_targets]
    return node_keys(layout["type"], layout["layer"], layout["pos"], value)


def table_node_keys(nodes: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(node_id, key) of every row of a NODE_SCHEMA table."""
    codes = np.array([_TYPE_CODE[t] for t in nodes["node_type"].to_pylist()], np.int64)
    feature = nodes["feature"].fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    token = nodes["token_id"].fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    value = np.where(codes == _TYPE_CODE["logit"], token, feature)
    layer = nodes["layer"].to_numpy(zero_copy_only=False)
    pos = nodes["pos"].to_numpy(zero_copy_only=False)
    ids = nodes["node_id"].to_numpy(zero_copy_only=False).astype(np.int64)
    return ids, node_keys(codes, layer, pos, value)


def table_edge_keys(nodes: pa.Table, edges: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dst key, src key, weight) of every row of an EDGE_SCHEMA table, its node ids
    looked up in ``nodes`` (the same graph's kept nodes, which hold every kept edge's
    ends)."""
    ids, keys = table_node_keys(nodes)
    order = np.argsort(ids)
    ids, keys = ids[order], keys[order]

    def lookup(col: str) -> np.ndarray:
        wanted = edges[col].to_numpy(zero_copy_only=False).astype(np.int64)
        at = np.searchsorted(ids, wanted)
        if len(wanted) and (at.max() >= len(ids) or not np.array_equal(ids[at], wanted)):
            raise ValueError(f"an edge's {col} is not among the graph's kept nodes")
        return keys[at]

    weight = edges["weight"].to_numpy(zero_copy_only=False).astype(np.float64)
    return lookup("dst"), lookup("src"), weight


def weights_at(graph, dst: np.ndarray, src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``graph.adjacency_matrix`` at the edges (dst key, src key) of another graph:
    (weights, found); an edge one of whose nodes ``graph`` lacks reads 0, not found."""
    import torch

    keys = graph_node_keys(graph)
    order = np.argsort(keys)
    sorted_keys = keys[order]

    def index(wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        at = np.minimum(np.searchsorted(sorted_keys, wanted), max(len(keys) - 1, 0))
        found = sorted_keys[at] == wanted if len(keys) else np.zeros(len(wanted), bool)
        return order[at], found

    d, d_found = index(np.asarray(dst, np.int64))
    s, s_found = index(np.asarray(src, np.int64))
    found = d_found & s_found
    adj = graph.adjacency_matrix
    idx = torch.from_numpy(np.stack([d[found], s[found]])).to(adj.device, torch.long)
    weights = np.zeros(len(found), np.float64)
    weights[found] = adj[idx[0], idx[1]].float().cpu().numpy()
    return weights, found


@dataclass(frozen=True)
class PrecisionCheck:
    """A run-dtype graph against the float32 graph of the same prompt.

    Attributes:
        precision_rel_error: ``||w_run - w_f32||_2 / ||w_f32||_2`` over the edges the
            float32 graph keeps whose two nodes the run-dtype graph has (its weights
            read from its unpruned matrix); None when there is no such edge of
            non-zero float32 weight.
        precision_node_jaccard: Kept nodes in both / kept nodes in either.
        precision_edge_jaccard: Kept edges in both / kept edges in either.
        precision_nodes_diff: Kept nodes in only one of the two graphs.
        precision_edges_diff: Kept edges in only one of the two graphs.
    """

    precision_rel_error: float | None
    precision_node_jaccard: float
    precision_edge_jaccard: float
    precision_nodes_diff: int
    precision_edges_diff: int

    def columns(self) -> dict:
        return asdict(self)


def _pairs(dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    """Edges as a unique structured array, sortable and comparable as pairs."""
    out = np.empty(len(dst), dtype=[("dst", np.int64), ("src", np.int64)])
    out["dst"], out["src"] = dst, src
    return np.unique(out)


def _overlap(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """(Jaccard index, size of the symmetric difference) of two unique arrays."""
    both = len(np.intersect1d(a, b, assume_unique=True))
    either = len(a) + len(b) - both
    return (1.0 if either == 0 else both / either), either - both


def compare_kept(
    ref_nodes: np.ndarray,
    ref_edges: tuple[np.ndarray, np.ndarray, np.ndarray],
    test_nodes: np.ndarray,
    test_edges: tuple[np.ndarray, np.ndarray],
    test_weights: np.ndarray,
    found: np.ndarray | None = None,
) -> PrecisionCheck:
    """Compare a run-dtype graph (``test``) with the float32 one (``ref``).

    Args:
        ref_nodes: Keys of the float32 graph's kept nodes.
        ref_edges: (dst keys, src keys, weights) of its kept edges.
        test_nodes: Keys of the run-dtype graph's kept nodes.
        test_edges: (dst keys, src keys) of its kept edges.
        test_weights: The run dtype's weights at ``ref_edges`` (:func:`weights_at`).
        found: Which of ``ref_edges`` the run-dtype graph has both nodes of (None:
            all); the relative error is taken over those.
    """
    r_dst, r_src, r_w = (np.asarray(a) for a in ref_edges)
    r_w = r_w.astype(np.float64)
    w = np.asarray(test_weights, np.float64)
    if w.shape != r_w.shape:
        raise ValueError(f"{len(w)} run-dtype weights for {len(r_w)} float32 edges")
    if found is not None:
        w, r_w = w[found], r_w[found]
    norm = float(np.linalg.norm(r_w))
    rel = float(np.linalg.norm(w - r_w) / norm) if norm > 0 else None
    node_j, node_d = _overlap(np.unique(ref_nodes), np.unique(test_nodes))
    edge_j, edge_d = _overlap(_pairs(r_dst, r_src), _pairs(*test_edges))
    return PrecisionCheck(rel, node_j, edge_j, node_d, edge_d)


def summarise_checks(rows: list[dict], *, sampled: list[int]) -> dict:
    """run.json's ``precision`` record from the graphs rows (``graph_id`` and the
    PRECISION_COLUMNS) of the sampled graphs: how many were checked, which were not
    (an error row, or a float32 attribution that failed), the median and worst
    relative error and Jaccard indices, and the total mask differences."""
    checked = sorted(
        (r for r in rows if r.get("precision_node_jaccard") is not None),
        key=lambda r: r["graph_id"],
    )
    done = {r["graph_id"] for r in checked}

    def spread(column: str, worst) -> dict:
        values = [r[column] for r in checked if r[column] is not None]
        if not values:
            return {"median": None, "worst": None}
        return {"median": float(np.median(values)), "worst": float(worst(values))}

    return {
        "checked": len(checked),
        "unchecked_graph_ids": [g for g in sampled if g not in done],
        "rel_error": spread("precision_rel_error", max),
        "node_jaccard": spread("precision_node_jaccard", min),
        "edge_jaccard": spread("precision_edge_jaccard", min),
        "nodes_diff": int(sum(r["precision_nodes_diff"] for r in checked)),
        "edges_diff": int(sum(r["precision_edges_diff"] for r in checked)),
    }


def attribute_checked(
    model, reference, prompt: dict, *, graph_id: int, attribution, prune, worker: str = ""
) -> tuple[dict, pa.Table, pa.Table]:
    """:func:`circuitray.graph.attribute.attribute_prompt` with ``model`` (the run's
    dtype), its row carrying the PRECISION_COLUMNS from a comparison with the graph
    of the float32 ``reference`` model on the same prompt. The float32 graph is made
    first and only its kept nodes and edges are held while the run-dtype graph is made,
    so one dense matrix is alive at a time. A prompt that fails in float32 gets the
    run-dtype row without a check (columns null)."""
    from circuitray.graph.attribute import attribute_prompt

    args = {"graph_id": graph_id, "attribution": attribution, "prune": prune, "worker": worker}
    ref_row, ref_nodes, ref_edges = attribute_prompt(reference, prompt, **args)
    if ref_row["status"] != "ok":
        logger.warning(
            "prompt %s: float32 attribution failed, not checked: %s",
            prompt["prompt_id"],
            ref_row["error"],
        )
        return attribute_prompt(model, prompt, **args)
    ref_dst, ref_src, ref_w = table_edge_keys(ref_nodes, ref_edges)
    captured: dict[str, np.ndarray] = {}

    def read_weights(graph) -> None:
        captured["weights"], captured["found"] = weights_at(graph, ref_dst, ref_src)

    row, nodes, edges = attribute_prompt(model, prompt, **args, on_graph=read_weights)
    if row["status"] == "ok" and "weights" in captured:
        dst, src, _ = table_edge_keys(nodes, edges)
        check = compare_kept(
            table_node_keys(ref_nodes)[1],
            (ref_dst, ref_src, ref_w),
            table_node_keys(nodes)[1],
            (dst, src),
            captured["weights"],
            captured["found"],
        )
        row.update(check.columns())
    return row, nodes, edges
