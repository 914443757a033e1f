-- Per run, constraint type, layer and node type: the mean share of a graph's kept edge
-- weight (|w|, attributed to the source node's layer and type) and the mean share of
-- its node influence on the logits (feature, error and token nodes). Graphs without a
-- given (layer, node type) count as 0, so shares of one type sum to 1 over its rows.
-- Token nodes are layer -1 (the embedding).
-- param: min_graphs int = 1 -- only report types with at least this many ok graphs
WITH ok AS (
    SELECT run, graph_id, coalesce(constraint_type, '(none)') AS constraint_type
    FROM graphs WHERE status = 'ok'
),
per_type AS (
    SELECT run, constraint_type, count(*) AS n_graphs FROM ok GROUP BY ALL
),
weight AS (
    SELECT run, graph_id, src_layer AS layer, src_type AS node_type,
           sum(abs(weight)) / sum(sum(abs(weight))) OVER (PARTITION BY run, graph_id)
               AS share
    FROM edges GROUP BY run, graph_id, src_layer, src_type
),
influence AS (
    SELECT run, graph_id, layer, node_type,
           sum(influence) / nullif(sum(sum(influence)) OVER (PARTITION BY run, graph_id), 0)
               AS share
    FROM nodes WHERE node_type IN ('feature', 'error', 'token')
    GROUP BY run, graph_id, layer, node_type
),
cells AS (
    SELECT coalesce(w.run, i.run) AS run, coalesce(w.graph_id, i.graph_id) AS graph_id,
           coalesce(w.layer, i.layer) AS layer, coalesce(w.node_type, i.node_type) AS node_type,
           coalesce(w.share, 0) AS weight_share, coalesce(i.share, 0) AS influence_share
    FROM weight w FULL OUTER JOIN influence i
        ON w.run = i.run AND w.graph_id = i.graph_id AND w.layer = i.layer
        AND w.node_type = i.node_type
)
SELECT ok.run, ok.constraint_type, cells.layer, cells.node_type,
       round(sum(cells.weight_share) / any_value(per_type.n_graphs), 4) AS weight_share,
       round(sum(cells.influence_share) / any_value(per_type.n_graphs), 4) AS influence_share
FROM cells
JOIN ok USING (run, graph_id)
JOIN per_type ON per_type.run = ok.run AND per_type.constraint_type = ok.constraint_type
WHERE per_type.n_graphs >= $min_graphs
GROUP BY ok.run, ok.constraint_type, cells.layer, cells.node_type
ORDER BY ok.run, ok.constraint_type, cells.layer, cells.node_type;
