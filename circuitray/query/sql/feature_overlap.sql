-- Jaccard similarity of feature sets between every pair of (run, constraint type): a
-- type's feature set holds the (layer, feature) pairs kept in at least min_graphs of its
-- graphs. Within one run it says how much two constraint types share their circuitry;
-- across runs (e.g. base vs tuned) how much a type's circuitry changed.
-- param: min_graphs int = 2 -- graphs a feature must occur in to join its type's set
WITH ok AS (
    SELECT run, graph_id, coalesce(constraint_type, '(none)') AS constraint_type
    FROM graphs WHERE status = 'ok'
),
sets AS (
    SELECT nodes.run, ok.constraint_type, nodes.layer, nodes.feature
    FROM nodes JOIN ok USING (run, graph_id)
    WHERE nodes.node_type = 'feature'
    GROUP BY nodes.run, ok.constraint_type, nodes.layer, nodes.feature
    HAVING count(DISTINCT nodes.graph_id) >= $min_graphs
),
sizes AS (SELECT run, constraint_type, count(*) AS n FROM sets GROUP BY run, constraint_type),
shared AS (
    SELECT a.run AS run_a, a.constraint_type AS type_a,
           b.run AS run_b, b.constraint_type AS type_b, count(*) AS shared
    FROM sets a JOIN sets b ON a.layer = b.layer AND a.feature = b.feature
    GROUP BY a.run, a.constraint_type, b.run, b.constraint_type
)
SELECT sa.run AS run_a, sa.constraint_type AS type_a,
       sb.run AS run_b, sb.constraint_type AS type_b,
       sa.n AS features_a, sb.n AS features_b, coalesce(s.shared, 0) AS shared,
       round(coalesce(s.shared, 0) / (sa.n + sb.n - coalesce(s.shared, 0)), 4) AS jaccard
FROM sizes sa CROSS JOIN sizes sb
LEFT JOIN shared s ON s.run_a = sa.run AND s.type_a = sa.constraint_type
    AND s.run_b = sb.run AND s.type_b = sb.constraint_type
ORDER BY run_a, type_a, run_b, type_b;
