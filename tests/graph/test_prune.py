"""prune_masks gives prune_graph's masks and cumulative scores bit for bit: random
graphs (with many exact ties, dense and sparse, extreme thresholds) and real graphs."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from circuit_tracer import attribute
from circuit_tracer.graph import compute_graph_scores, compute_node_influence, prune_graph

import circuitray.graph.prune
from circuitray.graph.prune import DENSE_ENTRIES, prune_graph_exact, prune_masks
from circuitray.graph.zeropage import ZeroMatrix
from circuitray.prompts.ws2 import generate_ws2


@pytest.fixture(params=["dense", "blocked"])
def path(request, monkeypatch):
    """Both ways prune_masks finds the edge threshold: whole score matrix (small graphs)
    and block by block with the sorted scores in the work buffer (large graphs)."""
    if request.param == "blocked":
        monkeypatch.setattr(circuitray.graph.prune, "DENSE_ENTRIES", 0)
        monkeypatch.setattr(circuitray.graph.prune, "ROWS_PER_BLOCK", 64)
    return request.param


THRESHOLDS = [(0.8, 0.98), (0.5, 0.9), (0.3, 0.999), (1.0, 1.0), (0.0, 0.0)]


@dataclass
class FakeGraph:
    """The attributes prune_graph reads."""

    adjacency_matrix: torch.Tensor
    logit_probabilities: torch.Tensor
    input_tokens: torch.Tensor
    logit_targets: list
    selected_features: torch.Tensor


def random_graph(n: int, *, density: float, ties: bool, seed: int) -> FakeGraph:
    g = torch.Generator().manual_seed(seed)
    n_tok, n_log = 8, 4
    a = torch.randn(n, n, generator=g)
    if ties:
        a = torch.round(a * 2) / 2  # a handful of distinct magnitudes
    a = torch.tril(a * (torch.rand(n, n, generator=g) < density), -1)
    return FakeGraph(
        adjacency_matrix=a,
        logit_probabilities=torch.softmax(torch.randn(n_log, generator=g), 0),
        input_tokens=torch.arange(n_tok),
        logit_targets=[None] * n_log,
        selected_features=torch.arange(n - n_tok - n_log - 3 * n_tok),
    )


def _ours(graph: FakeGraph, node_t: float, edge_t: float):
    return prune_masks(
        graph.adjacency_matrix,
        graph.logit_probabilities,
        n_tokens=len(graph.input_tokens),
        n_features=len(graph.selected_features),
        node_threshold=node_t,
        edge_threshold=edge_t,
    )


@pytest.mark.parametrize("n", [40, 300, 900])
@pytest.mark.parametrize("density", [0.05, 0.4, 1.0])
@pytest.mark.parametrize("ties", [False, True])
def test_random_graphs_identical(path, n, density, ties):
    for seed, (node_t, edge_t) in enumerate(THRESHOLDS):
        graph = random_graph(n, density=density, ties=ties, seed=seed)
        node_mask, edge_mask, cumulative = prune_graph(graph, node_t, edge_t)  # type: ignore[arg-type]
        ours = _ours(graph, node_t, edge_t)
        assert torch.equal(ours.node_mask, node_mask), (n, density, ties, node_t, edge_t)
        assert torch.equal(ours.edge_mask, edge_mask), (n, density, ties, node_t, edge_t)
        assert torch.equal(ours.cumulative_scores, cumulative)


def test_tied_threshold_keeps_every_tied_edge(path):
    # All scores equal: whatever the threshold, the cut falls inside one tie.
    graph = random_graph(60, density=1.0, ties=True, seed=7)
    graph.adjacency_matrix = torch.tril(torch.ones(60, 60), -1)
    node_mask, edge_mask, _ = prune_graph(graph, 0.5, 0.5)  # type: ignore[arg-type]
    ours = _ours(graph, 0.5, 0.5)
    assert torch.equal(ours.edge_mask, edge_mask) and torch.equal(ours.node_mask, node_mask)


def test_work_buffers_reused_across_sizes(path):
    # Each thread reuses its work buffer: a graph after a larger or smaller one must
    # not see the previous graph's values.
    for seed, n in enumerate([300, 40, 900, 40, 300]):
        graph = random_graph(n, density=0.4, ties=seed % 2 == 0, seed=seed)
        node_mask, edge_mask, _ = prune_graph(graph, 0.8, 0.98)  # type: ignore[arg-type]
        ours = _ours(graph, 0.8, 0.98)
        assert torch.equal(ours.node_mask, node_mask) and torch.equal(ours.edge_mask, edge_mask)
    if path == "dense":  # the pruned matrices went through the thread's zero matrix
        with ZeroMatrix.acquire(1, torch.device("cpu"), capacity=DENSE_ENTRIES) as zeros:
            assert not zeros.flat.any()


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_row_sums_do_not_depend_on_the_other_rows(threads):
    # prune_masks takes the kept rows' sums on a K x N copy of them; that is exact only
    # because torch's CPU sum reduces each row on its own (see _pruned_normalized_).
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(threads)
        for n in (40, 333, 1500, 3000):
            m = torch.randn(n, n, generator=g).abs() * (torch.rand(n, n, generator=g) < 0.3)
            full = m.sum(dim=1, keepdim=True)
            for k in (2, 7, n // 10, n - 1):
                rows = torch.randperm(n, generator=g)[:k].sort().values
                assert torch.equal(m[rows].sum(dim=1, keepdim=True), full[rows]), (n, k)
    finally:
        torch.set_num_threads(old_threads)


@pytest.mark.parametrize("density", [0.05, 0.4, 1.0])
def test_influence_is_compute_influence_bit_for_bit(density):
    # _influence stops one product before circuit-tracer's loop does (that product is
    # exactly zero): the same influence, bit for bit, on DAGs with zero rows.
    from circuit_tracer.graph import compute_influence

    for seed in range(4):
        graph = random_graph(500, density=density, ties=seed % 2 == 0, seed=seed)
        a = graph.adjacency_matrix.abs()
        a[:: 7 + seed] = 0.0  # more nodes without inputs
        sums = a.sum(dim=1, keepdim=True)
        normalized = a / sums.clamp(min=1e-10)
        weights = torch.zeros(500)
        weights[-4:] = graph.logit_probabilities
        has_inputs = circuitray.graph.prune._rows_with_inputs(500, torch.arange(500), sums)
        assert has_inputs is not None and not has_inputs.all()
        ours = circuitray.graph.prune._influence(normalized, weights, has_inputs)
        assert torch.equal(ours, compute_influence(normalized, weights))


def test_influence_with_non_finite_values_is_not_shortened():
    from circuit_tracer.graph import compute_influence

    sums = torch.tensor([[1.0], [0.0], [float("inf")]])
    assert circuitray.graph.prune._rows_with_inputs(3, torch.arange(3), sums) is None
    # A cycle never converges: both loops give up after max_iter.
    cycle = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    with pytest.raises(RuntimeError, match="failed to converge"):
        circuitray.graph.prune._influence(cycle, torch.tensor([1.0, 0.0]), None, max_iter=50)
    # A non-finite vector is never taken as the end: circuit-tracer gives up too.
    zero_rows = torch.zeros(2, 2)
    nan_weights = torch.tensor([float("nan"), 0.0])
    has_inputs = circuitray.graph.prune._rows_with_inputs(2, torch.arange(2), zero_rows.sum(1))
    assert has_inputs is not None and not has_inputs.any()
    with pytest.raises(RuntimeError, match="failed to converge"):
        compute_influence(zero_rows, nan_weights, max_iter=50)
    with pytest.raises(RuntimeError, match="failed to converge"):
        circuitray.graph.prune._influence(zero_rows, nan_weights, has_inputs, max_iter=50)


def test_bad_thresholds():
    graph = random_graph(60, density=0.5, ties=False, seed=0)
    with pytest.raises(ValueError, match="between 0.0 and 1.0"):
        _ours(graph, 1.5, 0.9)


@pytest.fixture(scope="module")
def real_graphs(loaded_tiny):
    return [attribute(p["prompt"], loaded_tiny, batch_size=64) for p in generate_ws2(n=6, seed=9)]


@pytest.mark.parametrize(("node_t", "edge_t"), THRESHOLDS[:3])
def test_real_graphs_identical(path, real_graphs, node_t, edge_t):
    for graph in real_graphs:
        node_mask, edge_mask, cumulative = prune_graph(graph, node_t, edge_t)
        ours = prune_graph_exact(graph, node_threshold=node_t, edge_threshold=edge_t)
        assert torch.equal(ours.node_mask, node_mask)
        assert torch.equal(ours.edge_mask, edge_mask)
        assert torch.equal(ours.cumulative_scores, cumulative)
        assert int(edge_mask.sum()) > 0
        # The kept edges come as a block over the nodes above the node threshold.
        assert len(ours.edge_nodes) < len(node_mask)
        assert ours.edge_block.shape == (len(ours.edge_nodes), len(ours.edge_nodes))


def test_real_graph_scores_and_influence(real_graphs):
    for graph in real_graphs:
        ours = prune_graph_exact(graph)
        assert (ours.replacement_score, ours.completeness_score) == compute_graph_scores(graph)
        n = graph.adjacency_matrix.shape[0]
        weights = torch.zeros(n)
        weights[-len(graph.logit_targets) :] = graph.logit_probabilities
        expected = compute_node_influence(graph.adjacency_matrix, weights)
        assert torch.equal(ours.node_influence, expected)
