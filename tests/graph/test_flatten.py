"""flatten_graph against circuit-tracer's own Graph, prune_graph and graph scores.

Every test runs on graphs of the tiny model with its per-layer transcoders and with
its cross-layer transcoder: both give circuit-tracer's same node layout.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from circuit_tracer import attribute
from circuit_tracer.graph import compute_graph_scores, compute_node_influence, prune_graph

from circuitray.graph.config import PruneConfig
from circuitray.graph.flatten import flatten_graph
from circuitray.prompts.ws2 import generate_ws2
from circuitray.schema import EDGE_SCHEMA, NODE_SCHEMA

GRAPH_ID = 7


@pytest.fixture(
    scope="module", params=["loaded_tiny", "loaded_tiny_clt"], ids=["per-layer", "cross-layer"]
)
def model(request):
    """The tiny ReplacementModel with each kind of transcoder."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def graphs(model):
    # One prompt of each type plus a longer one.
    rows = generate_ws2(n=6, seed=2)
    prompts = [r["prompt"] for r in rows[:3]] + ["the dog was blarf , so the dog was"]
    return [attribute(p, model, batch_size=64) for p in prompts]


def _expected_layout(graph) -> list[tuple[str, int, int, int | None]]:
    """(type, layer, pos, feature) of every node, from circuit-tracer's documented order."""
    n_pos = len(graph.input_tokens)
    n_layers = graph.cfg.n_layers
    sel = graph.selected_features.tolist()
    af = graph.active_features.tolist()
    out: list[tuple[str, int, int, int | None]] = []
    for i in sel:
        layer, pos, feat = af[i]
        out.append(("feature", layer, pos, feat))
    for layer in range(n_layers):
        for pos in range(n_pos):
            out.append(("error", layer, pos, None))
    for pos in range(n_pos):
        out.append(("token", -1, pos, None))
    for _ in graph.logit_targets:
        out.append(("logit", n_layers, n_pos - 1, None))
    return out


def _check_against_circuit_tracer(graph, flat, node_threshold, edge_threshold):
    adj = graph.adjacency_matrix
    node_mask, edge_mask, _ = prune_graph(
        graph, node_threshold=node_threshold, edge_threshold=edge_threshold
    )
    nodes, edges = flat.nodes, flat.edges
    assert nodes.schema == NODE_SCHEMA
    assert edges.schema == EDGE_SCHEMA
    assert set(nodes["graph_id"].to_pylist()) == {GRAPH_ID}
    assert set(edges["graph_id"].to_pylist()) <= {GRAPH_ID}

    # Edges: exactly the non-zero entries of edge_mask, weights bit-identical.
    dst = edges["dst"].to_numpy()
    src = edges["src"].to_numpy()
    exp_dst, exp_src = (t.numpy() for t in torch.nonzero(edge_mask, as_tuple=True))
    assert len(dst) == int(edge_mask.sum()) > 0
    assert set(zip(dst.tolist(), src.tolist(), strict=True)) == set(
        zip(exp_dst.tolist(), exp_src.tolist(), strict=True)
    )
    weights = edges["weight"].to_numpy()
    assert weights.dtype == np.float32
    dst_t, src_t = torch.from_numpy(dst.astype(np.int64)), torch.from_numpy(src.astype(np.int64))
    np.testing.assert_array_equal(weights, adj[dst_t, src_t].numpy())

    # Nodes: exactly node_mask.
    node_ids = nodes["node_id"].to_numpy()
    np.testing.assert_array_equal(node_ids, torch.nonzero(node_mask).squeeze(1).numpy())
    # Every kept edge connects kept nodes.
    kept = set(node_ids.tolist())
    assert set(src.tolist()) <= kept
    assert set(dst.tolist()) <= kept

    # Layout: type, layer, pos, feature of each kept node.
    layout = _expected_layout(graph)
    assert len(layout) == adj.shape[0]
    got = list(
        zip(
            nodes["node_type"].to_pylist(),
            nodes["layer"].to_pylist(),
            nodes["pos"].to_pylist(),
            nodes["feature"].to_pylist(),
            strict=True,
        )
    )
    assert got == [layout[i] for i in node_ids.tolist()]
    # Edge rows carry their endpoints' layers and types.
    assert edges["src_type"].to_pylist() == [layout[i][0] for i in src.tolist()]
    assert edges["dst_type"].to_pylist() == [layout[i][0] for i in dst.tolist()]
    assert edges["src_layer"].to_pylist() == [layout[i][1] for i in src.tolist()]
    assert edges["dst_layer"].to_pylist() == [layout[i][1] for i in dst.tolist()]

    # Per-type payloads.
    tokens = graph.input_tokens.tolist()
    n_sel = len(graph.selected_features)
    n_logits = len(graph.logit_targets)
    n = adj.shape[0]
    act_values = graph.activation_values.float().numpy()
    sel = graph.selected_features.tolist()
    for row in nodes.to_pylist():
        i = row["node_id"]
        kind = row["node_type"]
        if kind == "feature":
            assert row["activation"] == pytest.approx(float(act_values[sel[i]]), rel=1e-6)
            assert row["token_id"] is None and row["logit_prob"] is None
        elif kind == "token":
            assert row["token_id"] == tokens[row["pos"]]
            assert row["activation"] is None and row["logit_prob"] is None
        elif kind == "logit":
            k = i - (n - n_logits)
            assert row["token_id"] == graph.logit_targets[k].vocab_idx
            assert row["logit_prob"] == np.float32(graph.logit_probabilities[k].item())
        else:
            assert row["token_id"] is None and row["activation"] is None
            assert row["logit_prob"] is None
            assert n_sel <= i < n - n_logits - len(tokens)

    # Node influence is circuit-tracer's.
    logit_weights = torch.zeros(n)
    logit_weights[-n_logits:] = graph.logit_probabilities
    influence = compute_node_influence(adj, logit_weights).numpy()
    np.testing.assert_allclose(
        nodes["influence"].to_numpy(), influence[node_ids], rtol=1e-5, atol=1e-7
    )
    # Cumulative influence is prune_graph's own (what circuit-tracer's viewer shows).
    _, _, cumulative = prune_graph(graph, node_threshold=0.8, edge_threshold=0.98)
    assert nodes["cumulative_influence"].to_numpy().tolist() == (
        cumulative.numpy()[node_ids].tolist()
    )

    # Summary.
    replacement, completeness = compute_graph_scores(graph)
    s = flat.summary
    assert s["replacement_score"] == pytest.approx(float(replacement), abs=1e-7)
    assert s["completeness_score"] == pytest.approx(float(completeness), abs=1e-7)
    types = np.array([layout[i][0] for i in node_ids.tolist()])
    assert s["n_nodes_total"] == n
    assert s["n_kept_nodes"] == int(node_mask.sum())
    assert s["n_kept_edges"] == int(edge_mask.sum())
    assert s["n_kept_features"] == int((types == "feature").sum())
    assert s["n_kept_error_nodes"] == int((types == "error").sum())
    assert s["n_selected_features"] == n_sel
    assert s["n_active_features"] == graph.active_features.shape[0]
    assert s["n_logits"] == n_logits
    return node_mask, edge_mask


def test_graph_size_matches_circuit_tracer_layout(graphs, model):
    for g in graphs:
        n_pos = len(g.input_tokens)
        expected = (
            len(g.selected_features) + (model.cfg.n_layers + 1) * n_pos + len(g.logit_targets)
        )
        assert g.adjacency_matrix.shape == (expected, expected)
        assert g.input_tokens[0].item() == model.tokenizer.bos_token_id
        # Features in the layout are (layer, pos, feature) of this model's transcoders.
        features = g.active_features[g.selected_features]
        assert features[:, 0].max() < model.cfg.n_layers
        assert features[:, 1].max() < n_pos and features[:, 1].min() >= 1  # not BOS
        assert features[:, 2].max() < model.transcoders.d_transcoder


def test_default_thresholds_match_prune_graph(graphs):
    for g in graphs:
        flat = flatten_graph(g, graph_id=GRAPH_ID)
        _check_against_circuit_tracer(g, flat, 0.8, 0.98)


def test_custom_thresholds_match_prune_graph(graphs):
    for g in graphs:
        small = flatten_graph(g, graph_id=GRAPH_ID, prune=PruneConfig(0.5, 0.9))
        node_mask, edge_mask = _check_against_circuit_tracer(g, small, 0.5, 0.9)
        default = flatten_graph(g, graph_id=GRAPH_ID)
        # Lower thresholds keep fewer nodes and edges, and really differ from the default.
        assert small.nodes.num_rows <= default.nodes.num_rows
        assert small.edges.num_rows < default.edges.num_rows


def test_tokenizer_text(graphs, model):
    tok = model.tokenizer
    g = graphs[0]
    flat = flatten_graph(g, graph_id=GRAPH_ID, prune=PruneConfig(1.0, 1.0), tokenizer=tok)
    rows = flat.nodes.to_pylist()
    token_rows = [r for r in rows if r["node_type"] == "token"]
    logit_rows = [r for r in rows if r["node_type"] == "logit"]
    # Thresholds of 1.0 keep every token and logit node.
    assert len(token_rows) == len(g.input_tokens)
    assert len(logit_rows) == len(g.logit_targets)
    assert [r["token"] for r in token_rows] == [tok.decode([t]) for t in g.input_tokens.tolist()]
    assert [r["token"] for r in logit_rows] == [t.token_str for t in g.logit_targets]
    assert all(r["token"] is None for r in rows if r["node_type"] in ("feature", "error"))
    # Without a tokenizer the token text is null but ids are still there.
    bare = flatten_graph(g, graph_id=GRAPH_ID, prune=PruneConfig(1.0, 1.0))
    bare_tokens = [r for r in bare.nodes.to_pylist() if r["node_type"] == "token"]
    assert all(r["token"] is None for r in bare_tokens)
    assert [r["token_id"] for r in bare_tokens] == g.input_tokens.tolist()


def test_max_feature_nodes(model):
    g = attribute("the opposite of tall is", model, batch_size=64, max_feature_nodes=40)
    assert len(g.selected_features) == 40 < g.active_features.shape[0]
    flat = flatten_graph(g, graph_id=GRAPH_ID)
    _check_against_circuit_tracer(g, flat, 0.8, 0.98)
