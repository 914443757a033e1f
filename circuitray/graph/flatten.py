"""Flattening a circuit-tracer Graph: prune it, then its kept nodes and edges as Arrow rows.

1. Prune with :func:`circuitray.graph.prune.prune_graph_exact`: circuit-tracer's
   ``prune_graph`` (node threshold on influence, then cumulative edge-score
   threshold), giving exactly its masks without sorting all N^2 edge scores, so kept
   nodes and edges are the ones circuit-tracer's tools would show.
2. The same pass gives ``compute_graph_scores`` (replacement, completeness), each
   node's influence on the logits (``compute_node_influence``) and ``prune_graph``'s
   cumulative influence (the share of total influence held by the nodes at least as
   influential), which circuit-tracer's viewer shows.
3. Emit one row per kept node and one per kept edge. Node ids are circuit-tracer's
   node indices in the unpruned graph (features, errors layer-major, tokens, logits),
   so a stored edge ``(src, dst)`` is ``graph.adjacency_matrix[dst, src]``: rows are
   targets, columns are sources, and the weight is src's direct effect on dst.

Layers: token nodes get layer -1 (the embedding), logit nodes get ``n_layers``; a
feature or error node gets the layer of the transcoder it belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from circuitray.graph.config import PruneConfig
from circuitray.graph.prune import prune_graph_exact
from circuitray.schema import EDGE_SCHEMA, NODE_SCHEMA, NODE_TYPES

__all__ = ["FlatGraph", "flatten_graph"]


@dataclass
class FlatGraph:
    """A pruned graph as Arrow tables plus its per-graph summary values."""

    nodes: pa.Table
    edges: pa.Table
    summary: dict


def _node_layout(graph) -> dict[str, np.ndarray]:
    """Per-node type, layer, pos, feature for every node of the unpruned graph."""
    n_sel = len(graph.selected_features)
    n_pos = graph.n_pos
    n_layers = graph.cfg.n_layers
    n_logits = len(graph.logit_targets)
    feats = graph.active_features[graph.selected_features].cpu().numpy().astype(np.int64)
    n_err = n_layers * n_pos

    node_type = np.concatenate(
        [
            np.full(n_sel, 0, np.int8),
            np.full(n_err, 1, np.int8),
            np.full(n_pos, 2, np.int8),
            np.full(n_logits, 3, np.int8),
        ]
    )
    layer = np.concatenate(
        [
            feats[:, 0] if n_sel else np.zeros(0, np.int64),
            np.repeat(np.arange(n_layers), n_pos),
            np.full(n_pos, -1),
            np.full(n_logits, n_layers),
        ]
    ).astype(np.int16)
    pos = np.concatenate(
        [
            feats[:, 1] if n_sel else np.zeros(0, np.int64),
            np.tile(np.arange(n_pos), n_layers),
            np.arange(n_pos),
            np.full(n_logits, n_pos - 1),
        ]
    ).astype(np.int16)
    feature = np.concatenate(
        [
            feats[:, 2] if n_sel else np.zeros(0, np.int64),
            np.full(n_err + n_pos + n_logits, -1),
        ]
    ).astype(np.int32)
    return {"type": node_type, "layer": layer, "pos": pos, "feature": feature}


def _type_names(codes: np.ndarray) -> pa.Array:
    """NODE_TYPES names of type codes, without a Python string per row."""
    return _TYPE_NAMES.take(pa.array(codes, pa.int8()))


_TYPE_NAMES = pa.array(NODE_TYPES, pa.string())


def _token_text(
    graph, token_id: np.ndarray, kept: np.ndarray, first_logit: int, tokenizer
) -> pa.Array:
    """Text of the kept token and logit nodes (null for the others): a logit node's
    ``token_str`` when circuit-tracer set one, else the tokenizer's decoding of its id
    (one batch call for all of them), else null."""
    text: list[str | None] = [None] * len(kept)
    rows = np.flatnonzero(token_id[kept] >= 0)
    undecoded = []
    for r in rows.tolist():
        node = int(kept[r])
        if node >= first_logit and graph.logit_targets[node - first_logit].token_str:
            text[r] = graph.logit_targets[node - first_logit].token_str
        else:
            undecoded.append(r)
    if tokenizer is not None and undecoded:
        ids = [[int(token_id[kept[r]])] for r in undecoded]
        for r, decoded in zip(undecoded, tokenizer.batch_decode(ids), strict=True):
            text[r] = decoded
    return pa.array(text, pa.string())


def _kept_edges(nodes: torch.Tensor, block: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(dst, src) node ids of the true entries of ``block``, row-major. numpy's
    flatnonzero: on CPU several times faster than torch.nonzero on a bool matrix."""
    positions = np.flatnonzero(block.cpu().numpy())
    ids = nodes.cpu().numpy().astype(np.int32)
    rows, cols = np.divmod(positions, block.shape[1])
    return ids[rows], ids[cols]


def _node_values(graph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per node of the unpruned graph: the feature activation (NaN elsewhere), the token
    or logit vocabulary id (-1 elsewhere) and the logit probability (NaN elsewhere)."""
    n_nodes = graph.adjacency_matrix.shape[0]
    n_logits, n_pos = len(graph.logit_targets), graph.n_pos
    n_sel = len(graph.selected_features)
    first_token = n_nodes - n_logits - n_pos
    activation = np.full(n_nodes, np.nan, np.float32)
    # activation_values covers every active feature; index it like active_features.
    sel = graph.selected_features.cpu()
    activation[:n_sel] = graph.activation_values.cpu()[sel].float().numpy()
    token_id = np.full(n_nodes, -1, np.int32)
    token_id[first_token : first_token + n_pos] = graph.input_tokens.cpu().numpy()
    token_id[n_nodes - n_logits :] = [t.vocab_idx for t in graph.logit_targets]
    logit_prob = np.full(n_nodes, np.nan, np.float32)
    logit_prob[n_nodes - n_logits :] = graph.logit_probabilities.float().cpu().numpy()
    return activation, token_id, logit_prob


def flatten_graph(
    graph,
    *,
    graph_id: int,
    prune: PruneConfig | None = None,
    tokenizer=None,
) -> FlatGraph:
    """Prune ``graph`` and flatten the kept nodes and edges (see module docstring).

    Args:
        graph: A ``circuit_tracer.graph.Graph`` (on any device).
        graph_id: The id written on every row.
        prune: Thresholds; circuit-tracer's defaults (0.8, 0.98) when None.
        tokenizer: Decodes token and logit ids to text; None leaves text null.
    """
    prune = prune or PruneConfig()
    adj = graph.adjacency_matrix
    n_nodes = adj.shape[0]
    n_logits = len(graph.logit_targets)

    pruned = prune_graph_exact(
        graph, node_threshold=prune.node_threshold, edge_threshold=prune.edge_threshold
    )
    node_mask, cumulative = pruned.node_mask, pruned.cumulative_scores
    replacement, completeness = pruned.replacement_score, pruned.completeness_score
    assert replacement is not None and completeness is not None  # n_layers was given
    influence = pruned.node_influence

    layout = _node_layout(graph)
    kept = torch.nonzero(node_mask).squeeze(1).cpu().numpy().astype(np.int32)
    dst, src = _kept_edges(pruned.edge_nodes, pruned.edge_block)  # sorted by dst, src
    index = torch.from_numpy(np.stack([dst, src])).to(adj.device, torch.long)
    weights = adj[index[0], index[1]].float().cpu().numpy()

    activation, token_id, logit_prob = _node_values(graph)
    is_feature = layout["type"][kept] == 0
    nodes = pa.table(
        {
            "graph_id": pa.array(np.full(len(kept), graph_id, np.int32)),
            "node_id": pa.array(kept),
            "node_type": _type_names(layout["type"][kept]),
            "layer": pa.array(layout["layer"][kept]),
            "pos": pa.array(layout["pos"][kept]),
            "feature": pa.array(layout["feature"][kept], mask=~is_feature),
            "activation": pa.array(activation[kept], mask=~is_feature),
            "influence": pa.array(influence.float().cpu().numpy()[kept].astype(np.float32)),
            "cumulative_influence": pa.array(cumulative.float().cpu().numpy()[kept]),
            "token_id": pa.array(token_id[kept], mask=token_id[kept] < 0),
            "token": _token_text(graph, token_id, kept, n_nodes - n_logits, tokenizer),
            "logit_prob": pa.array(logit_prob[kept], mask=np.isnan(logit_prob[kept])),
        },
        schema=NODE_SCHEMA,
    )
    edges = pa.table(
        {
            "graph_id": pa.array(np.full(len(dst), graph_id, np.int32)),
            "dst": pa.array(dst),
            "src": pa.array(src),
            "weight": pa.array(weights.astype(np.float32)),
            "src_layer": pa.array(layout["layer"][src]),
            "dst_layer": pa.array(layout["layer"][dst]),
            "src_type": _type_names(layout["type"][src]),
            "dst_type": _type_names(layout["type"][dst]),
        },
        schema=EDGE_SCHEMA,
    )
    kept_types = layout["type"][kept]
    summary = {
        "n_nodes_total": int(n_nodes),
        "n_selected_features": len(graph.selected_features),
        "n_active_features": int(graph.active_features.shape[0]),
        "n_kept_features": int((kept_types == 0).sum()),
        "n_kept_error_nodes": int((kept_types == 1).sum()),
        "n_kept_nodes": int(len(kept)),
        "n_kept_edges": int(len(dst)),
        "n_logits": int(n_logits),
        "replacement_score": float(replacement),
        "completeness_score": float(completeness),
    }
    return FlatGraph(nodes=nodes, edges=edges, summary=summary)
