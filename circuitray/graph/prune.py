"""circuit-tracer's pruning, with the same masks, without sorting all N^2 edge scores.

``circuit_tracer.graph.prune_graph`` sorts every one of the N^2 edge scores (values,
int64 indices, a cumulative sum and its quotient: about 32 bytes per matrix entry at
its peak), which is what runs long prompts out of memory. :func:`prune_masks` gives the
same node and edge masks (bit for bit: every float operation that decides a mask is
the one circuit-tracer performs, on the same values, in the same order) with one
N x N float32 work buffer, and storage for the K x K block of nodes above the node
threshold and its non-zero scores only:

1. Node influence: the work buffer holds |A| divided by its row sums (circuit-tracer's
   ``normalize_matrix``, done in place), then circuit-tracer's ``compute_influence``
   power series with the logit weights (:func:`_influence`: its very products, but
   not the last, which is exactly zero); the node threshold is circuit-tracer's
   ``find_threshold`` on these N values (tokens and logits always kept). K nodes pass.
2. Edge scores: the pruned matrix holds the K kept rows of |A|, pruned columns
   zeroed, divided by their row sums, and zeros elsewhere; its influence is computed.
   Graphs up to ``DENSE_ENTRIES`` entries write it into a
   :class:`~circuitray.graph.zeropage.ZeroMatrix`, whose untouched pages read as the
   kernel's zero page, so circuit-tracer's dense power series on it reads memory only
   for the K rows (the same zeros, so the same values); larger graphs zero the work
   buffer and refill it, to hold one N^2 buffer only. A score is
   ``normalised[i, j] * influence[i]``, an element-wise product;
   pruned rows and columns are zero, so every non-zero score lies in the K x K block,
   and computing the block gives the very values circuit-tracer's full product gives.
3. Edge threshold: circuit-tracer takes the score at the first index where
   ``cumsum(sorted) / sum(sorted)`` reaches the threshold. Only non-zero scores can be
   that score (unless the threshold is reached only among the zeros), so only they are
   gathered, to the front of the (zero or work) buffer, and sorted there (numpy, in place,
   no index array); ``sum(sorted)`` is taken over the full-length buffer holding them in
   that order and zeros after (the same tensor circuit-tracer sums, so the same float32
   rounding), and the cumulative sum over the non-zero prefix, written where the zeros
   were (on CPU torch accumulates a cumsum sequentially, so a prefix of the full cumsum
   is the cumsum of the prefix). Graphs up to ``DENSE_ENTRIES`` entries score the
   block at once, which saves passes where memory is no concern; larger ones score
   ROWS_PER_BLOCK rows at a time.
4. The edge mask is ``score >= threshold`` on the block: with a positive threshold no
   edge outside it is kept (a threshold of 0 keeps all N x N entries, and the block
   becomes the whole matrix). circuit-tracer's iterative removal of nodes without
   incoming or outgoing edges runs on the block, with the same boolean operations,
   written as byte max-reductions and index fills. ``PruneOutput.edge_mask`` expands
   the block to prune_graph's N x N mask for callers that want it.

Graphs up to ``DENSE_ENTRIES`` entries reuse one work buffer and one zero matrix per
thread. Memory at the peak: the N^2 float32 buffer, the K^2 block and one block of
rows (or the K rows of the zero matrix), against prune_graph's ~27-32 bytes per entry.
On CUDA the masks agree up to the rounding of torch's parallel prefix sum; the tests
compare on CPU.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from circuitray.graph.zeropage import ZeroMatrix

__all__ = ["PruneOutput", "prune_graph_exact", "prune_masks"]


@dataclass
class PruneOutput:
    """prune_graph's masks and cumulative scores, plus what step 1 gives for free.

    Attributes:
        node_mask: Kept nodes (N,).
        edge_nodes: Ascending node indices (K,) outside which no edge is kept.
        edge_block: Kept edges among ``edge_nodes`` (K, K), rows = targets: the kept
            edges are ``(edge_nodes[i], edge_nodes[j])`` for each true ``[i, j]``.
        cumulative_scores: prune_graph's third output (N,).
        node_influence: compute_node_influence of the unpruned graph (N,).
        replacement_score: compute_graph_scores' first value (None without n_layers).
        completeness_score: compute_graph_scores' second value (None without n_layers).
    """

    node_mask: torch.Tensor
    edge_nodes: torch.Tensor
    edge_block: torch.Tensor
    cumulative_scores: torch.Tensor
    node_influence: torch.Tensor
    replacement_score: float | None = None
    completeness_score: float | None = None

    @property
    def edge_mask(self) -> torch.Tensor:
        """prune_graph's edge mask (N, N), rows = targets, built from the block."""
        n = len(self.node_mask)
        if len(self.edge_nodes) == n:  # ascending and unique: every node
            return self.edge_block
        mask = torch.zeros((n, n), dtype=torch.bool, device=self.edge_block.device)
        mask[self.edge_nodes[:, None], self.edge_nodes] = self.edge_block
        return mask


ROWS_PER_BLOCK = 128  # rows of scores materialised at once (block x K floats)
# Up to this many adjacency entries (N = 3,000: 36 MB a matrix) the K x K scores are
# kept whole and sorted with torch: the same values and decisions, fewer passes.
DENSE_ENTRIES = 9_000_000


_workspace = threading.local()


def _work_buffer(n: int, device: torch.device) -> torch.Tensor:
    """An uninitialised N x N float32 work buffer. Up to DENSE_ENTRIES entries, each
    thread reuses one per device: on CPU a fresh 30 MB allocation costs ~3 ms of page
    faults on first touch, three times the pass that fills it. Larger graphs get their
    own, freed after the call, so that one long prompt does not hold memory for good."""
    if n * n > DENSE_ENTRIES:
        return torch.empty((n, n), device=device)
    buffers: dict[torch.device, torch.Tensor] = _workspace.__dict__.setdefault("buffers", {})
    flat = buffers.get(device)
    if flat is None or flat.numel() < n * n:
        flat = buffers[device] = torch.empty(n * n, device=device)
    return flat[: n * n].view(n, n)


def _divide_by_row_sums_(buf: torch.Tensor) -> torch.Tensor:
    """circuit-tracer's normalize_matrix for a matrix already holding |A|, in place:
    divide by the row sums (clamped at 1e-10). Returns the unclamped sums (N, 1)."""
    sums = buf.sum(dim=1, keepdim=True)
    buf.div_(sums.clamp(min=1e-10))
    return sums


def _rows_with_inputs(n: int, rows: torch.Tensor, sums: torch.Tensor) -> torch.Tensor | None:
    """Which of N nodes have a non-zero row (an input), from the row sums of |A| of
    ``rows`` (the others are zero rows); None when a sum is not finite, as then a zero
    row of the normalised matrix is not known to be all zeros."""
    if not bool(torch.isfinite(sums).all()):
        return None
    has_inputs = torch.zeros(n, dtype=torch.bool, device=sums.device)
    has_inputs[rows] = sums.flatten() != 0
    return has_inputs


def _influence(
    normalized: torch.Tensor,
    logit_weights: torch.Tensor,
    has_inputs: torch.Tensor | None,
    max_iter: int = 1000,
) -> torch.Tensor:
    """circuit-tracer's ``compute_influence``: the same products, sums and order, one
    product fewer. Its loop ends on a product that is exactly zero: once the current
    vector is finite and non-zero only on nodes without inputs (zero rows of a finite
    matrix), every term of the next product is 0 (0 times a finite value, or a finite
    value times 0), and adding it changes nothing. That product, one of the ~7 full
    passes over the matrix, is skipped here (``has_inputs`` None: never skipped)."""
    current = logit_weights @ normalized
    influence = current
    iterations = 0
    while current.any():
        if iterations >= max_iter:
            raise RuntimeError(
                f"Influence computation failed to converge after {iterations} iterations"
            )
        if (
            has_inputs is not None
            and not bool((current != 0).logical_and_(has_inputs).any())
            and bool(torch.isfinite(current).all())
        ):
            break  # the next product is exactly zero (see docstring)
        current = current @ normalized
        influence += current
        iterations += 1
    return influence


def _row_chunks(rows: torch.Tensor):
    """``rows`` (kept node indices, ascending) ROWS_PER_BLOCK at a time, with offsets."""
    for r0 in range(0, len(rows), ROWS_PER_BLOCK):
        yield r0, min(len(rows), r0 + ROWS_PER_BLOCK), rows[r0 : r0 + ROWS_PER_BLOCK]


def _pruned_normalized_(
    buf: torch.Tensor,
    adjacency: torch.Tensor,
    rows: torch.Tensor,
    node_mask: torch.Tensor,
    *,
    whole: bool,
    zeroed: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``buf`` := normalize_matrix(A with the rows and columns of pruned nodes zeroed).

    Only the kept rows are written after zeroing ``buf`` (a ``zeroed`` one holds zeros
    already): their |A| times the 0/1 mask of kept columns (circuit-tracer zeroes, then
    takes |.|, which gives 0.0 for every pruned entry, as this product does), divided
    by their row sums (pruned rows divide 0 by 1e-10, which leaves them 0, so they are
    skipped). Returns the kept rows' clamped and unclamped row sums (K, 1) and, with
    ``whole``, the normalised kept rows (K x N), done as one block rather than
    ROWS_PER_BLOCK rows at a time.

    The row sums are circuit-tracer's reduction on the same values: over the whole
    N x N buffer, or on CPU over the K x N block, as torch's CPU sum reduces each row of
    a contiguous matrix on its own, in the same order whatever the number of rows
    (``test_prune`` checks this; CUDA picks its reduction layout by shape).
    """
    if not zeroed:
        buf.zero_()
    kept_columns = node_mask.to(buf.dtype)[None, :]
    if whole and buf.device.type == "cpu":
        block = adjacency[rows].abs_().mul_(kept_columns)  # indexing copies
        sums = block.sum(dim=1, keepdim=True)
        row_sums = sums.clamp(min=1e-10)
        buf.index_copy_(0, rows, block.div_(row_sums))
        return row_sums, sums, block
    for _, _, chunk in _row_chunks(rows):
        buf.index_copy_(0, chunk, adjacency[chunk].abs_().mul_(kept_columns))
    sums = buf.sum(dim=1, keepdim=True)[rows]
    row_sums = sums.clamp(min=1e-10)
    for r0, r1, chunk in _row_chunks(rows):
        buf.index_copy_(0, chunk, buf[chunk].div_(row_sums[r0:r1]))
    return row_sums, sums, buf[rows] if whole else None


def _kept_scores(normalized: torch.Tensor, rows: torch.Tensor, influence: torch.Tensor):
    """Edge scores ``normalized * influence[:, None]`` restricted to kept rows and
    columns (the only place a score can be non-zero), ROWS_PER_BLOCK rows at a time."""
    for r0, r1, chunk in _row_chunks(rows):
        yield r0, r1, normalized[chunk][:, rows].mul_(influence[chunk, None])


def _edge_threshold(
    buf: torch.Tensor, rows: torch.Tensor, influence: torch.Tensor, threshold: float
) -> torch.Tensor:
    """circuit-tracer's ``find_threshold(edge_scores.flatten(), threshold)``; ``buf`` is
    the normalised pruned matrix and is overwritten (see module docstring, step 3)."""
    flat = buf.view(-1)
    nnz = 0
    # Gather the non-zero scores to the front of the buffer itself. After the block of
    # kept rows r0..r1 is read (a copy), at most r1 * K <= r1 * N scores are stored,
    # which ends before the next unread row, rows[r1] >= r1.
    for _, _, block in _kept_scores(buf, rows, influence):
        nonzero = block[block != 0]
        flat[nnz : nnz + len(nonzero)] = nonzero
        nnz += len(nonzero)
        del block, nonzero
    _sort_descending_(flat[:nnz])
    flat[nnz:] = 0
    return _threshold_of_sorted(flat, nnz, threshold)


def _sort_descending_(values: torch.Tensor) -> None:
    """Sort a 1-D tensor descending in place. On CPU with numpy (negation is exact; no
    copy, no index array, and ~30x faster than torch.sort on one thread)."""
    if values.device.type == "cpu":
        array = values.numpy()
        np.negative(array, out=array)
        array.sort()
        np.negative(array, out=array)
    else:
        values.copy_(torch.sort(values, descending=True).values)


def _threshold_of_sorted(flat: torch.Tensor, nnz: int, threshold: float) -> torch.Tensor:
    """find_threshold's value for ``flat``: all N^2 scores sorted descending, of which
    the first ``nnz`` are non-zero (the rest zeros)."""
    total = torch.sum(flat)  # the same length, values and order as circuit-tracer's sum
    if 2 * nnz <= flat.numel():  # the zeros are summed: the cumsum can go where they were
        prefix = torch.cumsum(flat[:nnz], dim=0, out=flat[nnz : 2 * nnz])
    else:
        prefix = torch.cumsum(flat[:nnz], dim=0)
    prefix.div_(total)
    index = int(torch.searchsorted(prefix, threshold).item())
    # Past the non-zero prefix the cumulative share stays at its last value: the
    # threshold then falls among the zeros (circuit-tracer: sorted_scores[index] == 0).
    if index < nnz:
        return flat[index].clone()
    # circuit-tracer clamps the index to the last entry: the smallest score.
    return flat[nnz - 1].clone() if nnz == flat.numel() else torch.zeros((), dtype=flat.dtype)


def _remove_unconnected_(
    node_mask: torch.Tensor, edge_mask: torch.Tensor, *, n_features: int, n_fixed: int
) -> None:
    """circuit-tracer's loop, in place: drop non-fixed nodes without outgoing edges and
    features without incoming ones, and their edges, until nothing changes. The same
    boolean operations, with ``any`` as a max over the mask's bytes and row removal as
    an index fill: on CPU 15-80x faster than bool ``any`` and boolean indexing, which
    made this loop half of the pruning time of a 2k-node graph."""
    as_bytes = edge_mask.view(torch.uint8)

    def drop_unconnected() -> None:
        node_mask[:-n_fixed] &= as_bytes.amax(0)[:-n_fixed].bool()  # has outgoing edges
        node_mask[:n_features] &= as_bytes[:n_features].amax(1).bool()  # has incoming

    old_node_mask = node_mask.clone()
    drop_unconnected()
    while not torch.all(node_mask == old_node_mask):
        old_node_mask[:] = node_mask
        edge_mask.index_fill_(0, torch.nonzero(~node_mask).flatten(), False)
        edge_mask &= node_mask[None, :]
        drop_unconnected()


def _dense_edge_block(
    adjacency: torch.Tensor,
    rows: torch.Tensor,
    node_mask: torch.Tensor,
    logit_weights: torch.Tensor,
    edge_threshold: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 2-3 for a graph of at most DENSE_ENTRIES entries: the edge-score threshold
    and the K x K block of ``scores >= threshold``.

    The pruned matrix goes into the thread's :class:`~circuitray.graph.zeropage.ZeroMatrix`,
    where only its K kept rows are written: circuit-tracer's ``compute_influence`` on it
    then reads memory only for those rows (the rest read as the kernel's zero page).
    The K x K scores are formed whole; their sorted non-zeros go to the front of the
    same matrix, its rows zeroed, for find_threshold's sum over N^2 values; at the end
    everything written is handed back as zeros."""
    n = adjacency.shape[0]
    with ZeroMatrix.acquire(n, adjacency.device, capacity=DENSE_ENTRIES) as zeros:
        pruned = zeros.view(n)
        zeros.dirty_rows(rows, n)
        _, sums, kept_rows = _pruned_normalized_(
            pruned, adjacency, rows, node_mask, whole=True, zeroed=True
        )
        assert kept_rows is not None  # whole=True
        pruned_influence = _influence(pruned, logit_weights, _rows_with_inputs(n, rows, sums))
        pruned_influence += logit_weights
        scores = kept_rows[:, rows].mul_(pruned_influence[rows, None])
        nonzero = scores[scores != 0]
        _sort_descending_(nonzero)
        # The pruned matrix is spent. Its rows are zeroed in place (their pages stay,
        # which saves faulting them in again for the sum below) and handed back with
        # the prefix when the block ends.
        pruned.index_fill_(0, rows, 0.0)
        flat = pruned.view(-1)
        nnz = len(nonzero)
        zeros.dirty_prefix(min(2 * nnz, n * n))  # the scores, then their cumulative sum
        flat[:nnz] = nonzero  # the sorted scores, then N^2 - nnz zeros
        score_threshold = _threshold_of_sorted(flat, nnz, edge_threshold)
    return score_threshold, scores >= score_threshold


def prune_graph_exact(
    graph, *, node_threshold: float = 0.8, edge_threshold: float = 0.98
) -> PruneOutput:
    """:func:`prune_masks` for a circuit-tracer Graph, with its graph scores."""
    return prune_masks(
        graph.adjacency_matrix,
        graph.logit_probabilities,
        n_tokens=len(graph.input_tokens),
        n_features=len(graph.selected_features),
        n_layers=graph.cfg.n_layers,
        node_threshold=node_threshold,
        edge_threshold=edge_threshold,
    )


def _graph_scores(
    normalized: torch.Tensor,
    influence: torch.Tensor,
    logit_weights: torch.Tensor,
    *,
    n_features: int,
    n_tokens: int,
    n_layers: int,
) -> tuple[float, float]:
    """circuit-tracer's compute_graph_scores from its normalised matrix and influence."""
    error_end = n_features + n_tokens * n_layers
    token_influence = influence[error_end : error_end + n_tokens].sum()
    error_influence = influence[n_features:error_end].sum()
    replacement = token_influence / (token_influence + error_influence)
    non_error_fractions = 1 - normalized[:, n_features:error_end].sum(dim=-1)
    output_influence = influence + logit_weights
    completeness = (non_error_fractions * output_influence).sum() / output_influence.sum()
    return replacement.item(), completeness.item()


def _chunked_edge_block(
    buf: torch.Tensor,
    adjacency: torch.Tensor,
    rows: torch.Tensor,
    node_mask: torch.Tensor,
    logit_weights: torch.Tensor,
    edge_threshold: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 2-3 for a large graph: the edge-score threshold and the K x K block's edge
    mask of the kept nodes ``rows``, the pruned matrix normalized in place in ``buf``
    (which then holds the sorted scores) and the block recomputed row chunk by chunk."""
    n = adjacency.shape[0]
    row_sums, sums, _ = _pruned_normalized_(buf, adjacency, rows, node_mask, whole=False)
    pruned_influence = _influence(buf, logit_weights, _rows_with_inputs(n, rows, sums))
    pruned_influence += logit_weights
    score_threshold = _edge_threshold(buf, rows, pruned_influence, edge_threshold)
    # The block's mask from recomputed scores (buf now holds the sorted scores):
    # normalize_matrix's division by the row sums, on the same values.
    edge_block = torch.empty((len(rows), len(rows)), dtype=torch.bool, device=buf.device)
    for r0, r1, chunk in _row_chunks(rows):
        block = torch.abs(adjacency[chunk][:, rows]).div_(row_sums[r0:r1])
        torch.ge(block.mul_(pruned_influence[chunk, None]), score_threshold, out=edge_block[r0:r1])
    return score_threshold, edge_block


def _cumulative_scores(node_influence: torch.Tensor) -> torch.Tensor:
    """prune_graph's cumulative scores: N values, its own operations."""
    sorted_scores, sorted_indices = torch.sort(node_influence, descending=True)
    cumulative = torch.cumsum(sorted_scores, dim=0) / torch.sum(sorted_scores)
    cumulative_scores = torch.zeros_like(node_influence)
    cumulative_scores[sorted_indices] = cumulative
    return cumulative_scores


def prune_masks(
    adjacency: torch.Tensor,
    logit_probabilities: torch.Tensor,
    *,
    n_tokens: int,
    n_features: int,
    n_layers: int | None = None,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
) -> PruneOutput:
    """circuit-tracer's ``prune_graph`` (masks, cumulative scores) for a graph with this
    adjacency matrix (rows = targets) and logit probabilities (the last nodes); with
    ``n_layers`` also ``compute_graph_scores``."""
    from circuit_tracer.graph import find_threshold

    if not 0.0 <= node_threshold <= 1.0 or not 0.0 <= edge_threshold <= 1.0:
        raise ValueError("node_threshold and edge_threshold must be between 0.0 and 1.0")
    n = adjacency.shape[0]
    n_logits = len(logit_probabilities)
    logit_weights = torch.zeros(n, device=adjacency.device)
    logit_weights[-n_logits:] = logit_probabilities

    # 1. Node influence and the node threshold.
    buf = torch.abs(adjacency, out=_work_buffer(n, adjacency.device))
    sums = _divide_by_row_sums_(buf)
    everything = torch.arange(n, device=adjacency.device)
    node_influence = _influence(buf, logit_weights, _rows_with_inputs(n, everything, sums))
    graph_scores = (None, None)
    if n_layers is not None:
        graph_scores = _graph_scores(
            buf,
            node_influence,
            logit_weights,
            n_features=n_features,
            n_tokens=n_tokens,
            n_layers=n_layers,
        )
    node_mask = node_influence >= find_threshold(node_influence, node_threshold)
    node_mask[-n_logits - n_tokens :] = True

    # 2-3. Scores of the pruned matrix and their threshold. Pruned rows and columns are
    # zero in it, so every non-zero score lies in the K x K block of kept nodes.
    rows = torch.nonzero(node_mask).flatten()
    if n * n <= DENSE_ENTRIES:  # small: the block at once, one sort of its non-zeros
        del buf
        score_threshold, edge_block = _dense_edge_block(
            adjacency, rows, node_mask, logit_weights, edge_threshold
        )
    else:  # large: in place in the work buffer, the block's mask in row chunks
        score_threshold, edge_block = _chunked_edge_block(
            buf, adjacency, rows, node_mask, logit_weights, edge_threshold
        )
        del buf
    if score_threshold <= 0:
        # Every score reaches the threshold, zeros included: all N x N edges, pruned
        # nodes' too (circuit-tracer's loop below may leave some of them).
        rows = torch.arange(n, device=adjacency.device)
        edge_block = torch.ones((n, n), dtype=torch.bool, device=adjacency.device)

    # 4. circuit-tracer's iterative pruning, on the block (nothing outside it is kept).
    # The fixed nodes (tokens, logits) are the last of ``rows``, features the first.
    block_nodes = node_mask[rows]
    _remove_unconnected_(
        block_nodes,
        edge_block,
        n_features=int((rows < n_features).sum()),
        n_fixed=n_logits + n_tokens,
    )
    node_mask[rows] = block_nodes

    return PruneOutput(
        node_mask=node_mask,
        edge_nodes=rows,
        edge_block=edge_block,
        cumulative_scores=_cumulative_scores(node_influence),
        node_influence=node_influence,
        replacement_score=graph_scores[0],
        completeness_score=graph_scores[1],
    )
