"""Every Arrow table circuitray stores: its schema and its sort key (pyarrow only).

A run folder holds three tables written by the attribution job, an intervention
folder one; storage, queries and workers all read their columns from here.

1. ``graphs``: one row per prompt (:data:`GRAPH_SCHEMA`), ``status`` ok or error;
   its part file is the commit point of a batch. The ``precision_*`` columns (last)
   are null except for the graphs ``circuitray run --verify-precision`` checked
   against float32; run folders written before them lack them.
2. ``nodes``: the kept nodes of each graph (:data:`NODE_SCHEMA`), ``node_id`` the
   node's index in circuit-tracer's unpruned graph.
3. ``edges``: the kept edges (:data:`EDGE_SCHEMA`), ``(src, dst)`` =
   ``adjacency_matrix[dst, src]``, weight = src's direct effect on dst.
4. ``results``: one row per (prompt, intervention) (:data:`RESULT_SCHEMA`).
"""

from __future__ import annotations

import pyarrow as pa

__all__ = [
    "EDGE_SCHEMA",
    "GRAPH_SCHEMA",
    "NODE_SCHEMA",
    "NODE_STRUCT",
    "NODE_TYPES",
    "RESULT_SCHEMA",
    "RESULT_SORT_KEYS",
    "SCHEMAS",
    "SORT_KEYS",
    "SUMMARY_FIELDS",
    "TABLES",
    "graph_row",
    "unique_column_names",
]

NODE_TYPES = ("feature", "error", "token", "logit")
# What a worker returns to the driver per prompt (graphs-row fields plus its time).
SUMMARY_FIELDS = ("graph_id", "prompt_id", "status", "error", "n_kept_edges", "total_s", "worker")

GRAPH_SCHEMA = pa.schema(
    [
        ("graph_id", pa.int32()),
        ("prompt_id", pa.string()),
        ("constraint_type", pa.string()),
        ("prompt", pa.string()),
        ("target", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("n_tokens", pa.int32()),
        ("n_active_features", pa.int32()),
        ("n_selected_features", pa.int32()),
        ("n_kept_features", pa.int32()),
        ("n_kept_error_nodes", pa.int32()),
        ("n_kept_nodes", pa.int32()),
        ("n_kept_edges", pa.int32()),
        ("n_logits", pa.int32()),
        ("replacement_score", pa.float32()),
        ("completeness_score", pa.float32()),
        ("top_token", pa.string()),
        ("top_prob", pa.float32()),
        ("target_token", pa.string()),
        ("target_prob", pa.float32()),
        ("target_rank", pa.int32()),
        ("attribute_s", pa.float32()),
        ("flatten_s", pa.float32()),
        ("total_s", pa.float32()),
        ("worker", pa.string()),
        # --verify-precision (circuitray.graph.precision): null unless this graph was
        # checked against float32. Last, so that folders written before them read as
        # a prefix; the query views give them as nulls there.
        ("precision_rel_error", pa.float32()),
        ("precision_node_jaccard", pa.float32()),
        ("precision_edge_jaccard", pa.float32()),
        ("precision_nodes_diff", pa.int32()),
        ("precision_edges_diff", pa.int32()),
        # --target (circuitray.graph.targets): what the logit nodes are. Null in folders
        # written before targets existed (they attributed to the top logits).
        ("target_mode", pa.string()),
        ("target_token_id", pa.int32()),
        ("target_logit", pa.float32()),
        ("contrast_token_ids", pa.list_(pa.int32())),
        ("target_first_token_only", pa.bool_()),
    ]
)

NODE_SCHEMA = pa.schema(
    [
        ("graph_id", pa.int32()),
        ("node_id", pa.int32()),
        ("node_type", pa.string()),
        ("layer", pa.int16()),
        ("pos", pa.int16()),
        ("feature", pa.int32()),
        ("activation", pa.float32()),
        ("influence", pa.float32()),
        ("cumulative_influence", pa.float32()),
        ("token_id", pa.int32()),
        ("token", pa.string()),
        ("logit_prob", pa.float32()),
    ]
)

EDGE_SCHEMA = pa.schema(
    [
        ("graph_id", pa.int32()),
        ("dst", pa.int32()),
        ("src", pa.int32()),
        ("weight", pa.float32()),
        ("src_layer", pa.int16()),
        ("dst_layer", pa.int16()),
        ("src_type", pa.string()),
        ("dst_type", pa.string()),
    ]
)

NODE_STRUCT = pa.struct([("layer", pa.int16()), ("pos", pa.int16()), ("feature", pa.int32())])

RESULT_SCHEMA = pa.schema(
    [
        ("graph_id", pa.int32()),
        ("prompt_id", pa.string()),
        ("constraint_type", pa.string()),
        ("spec_index", pa.int16()),
        ("spec", pa.string()),
        ("rank", pa.int16()),
        ("scale", pa.float32()),
        ("n_features", pa.int32()),
        ("n_in_graph", pa.int32()),
        ("features", pa.list_(NODE_STRUCT)),
        ("target_token", pa.string()),
        ("target_token_id", pa.int32()),
        ("target_source", pa.string()),
        ("target_logit_before", pa.float32()),
        ("target_logit_after", pa.float32()),
        ("target_logit_change", pa.float32()),
        ("target_prob_before", pa.float32()),
        ("target_prob_after", pa.float32()),
        ("top_token_before", pa.string()),
        ("top_token_after", pa.string()),
        ("kl", pa.float32()),
        ("predicted_direct", pa.float32()),
        ("predicted_total", pa.float32()),
        ("frame", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("worker", pa.string()),
        ("total_s", pa.float32()),
    ]
)

TABLES = ("graphs", "nodes", "edges")
SORT_KEYS = {
    "graphs": [("graph_id", "ascending")],
    "nodes": [("graph_id", "ascending"), ("node_id", "ascending")],
    "edges": [("graph_id", "ascending"), ("dst", "ascending"), ("src", "ascending")],
}
RESULT_SORT_KEYS = {
    "results": [("graph_id", "ascending"), ("spec_index", "ascending"), ("rank", "ascending")]
}
SCHEMAS = {
    "graphs": GRAPH_SCHEMA,
    "nodes": NODE_SCHEMA,
    "edges": EDGE_SCHEMA,
    "results": RESULT_SCHEMA,
}


def graph_row(graph_id: int, prompt: dict, **fields) -> dict:
    """A graphs row for ``prompt``: every GRAPH_SCHEMA column, null unless given."""
    row: dict = {f.name: None for f in GRAPH_SCHEMA}
    row.update(
        graph_id=graph_id,
        prompt_id=prompt["prompt_id"],
        constraint_type=prompt.get("constraint_type"),
        prompt=prompt["prompt"],
        target=prompt.get("target"),
        **fields,
    )
    return row


def unique_column_names(table: pa.Table) -> pa.Table:
    """``table`` with every column under a name of its own, for output that keys values
    by name (JSON objects, Parquet fields, a printed table's header).

    A query may return a name twice (``SELECT g.graph_id, n.graph_id``, ``SELECT 1 AS
    a, 2 AS a``): the first keeps it, each repeat gets the first of ``NAME_1``,
    ``NAME_2``... that no column of the table has, so no value is lost or shown under
    another column's name. Columns keep their order.
    """
    names = table.column_names
    if len(set(names)) == len(names):
        return table
    taken = set(names)
    seen: set[str] = set()
    unique: list[str] = []
    for name in names:
        if name in seen:
            k = 1
            while f"{name}_{k}" in taken:
                k += 1
            name = f"{name}_{k}"
            taken.add(name)
        seen.add(name)
        unique.append(name)
    return table.rename_columns(unique)
