-- Per run and constraint type: the transcoder features (keyed by layer and feature
-- index, whatever the position) kept in the most graphs of that type, with the share of
-- the type's graphs they occur in, their mean influence (summed over positions within a
-- graph), and their lift: that share divided by the share of the other types' graphs
-- they occur in (add-one smoothed, so features unique to one type get a finite lift),
-- and its label from the run's feature table (NULL where the set has none).
-- param: top_k int = 10 -- features per run and constraint type
-- param: min_graphs int = 1 -- only report types with at least this many ok graphs
WITH ok AS (
    SELECT run, graph_id, coalesce(constraint_type, '(none)') AS constraint_type
    FROM graphs WHERE status = 'ok'
),
per_type AS (SELECT run, constraint_type, count(*) AS n FROM ok GROUP BY run, constraint_type),
per_run AS (SELECT run, count(*) AS n FROM ok GROUP BY run),
occurrences AS (
    SELECT nodes.run, nodes.graph_id, ok.constraint_type, nodes.layer, nodes.feature,
           sum(nodes.influence) AS influence
    FROM nodes JOIN ok USING (run, graph_id)
    WHERE nodes.node_type = 'feature'
    GROUP BY nodes.run, nodes.graph_id, ok.constraint_type, nodes.layer, nodes.feature
),
by_type AS (
    SELECT run, constraint_type, layer, feature, count(*) AS graphs,
           avg(influence) AS mean_influence
    FROM occurrences GROUP BY run, constraint_type, layer, feature
),
overall AS (
    SELECT run, layer, feature, count(*) AS graphs
    FROM occurrences GROUP BY run, layer, feature
)
SELECT b.run, b.constraint_type, b.layer, b.feature, b.graphs,
       round(b.graphs / pt.n, 4) AS frequency,
       round(b.mean_influence, 5) AS mean_influence,
       round((b.graphs / pt.n) / ((o.graphs - b.graphs + 1.0) / (pr.n - pt.n + 1.0)), 3)
           AS lift,
       f.label
FROM by_type b
JOIN per_type pt ON pt.run = b.run AND pt.constraint_type = b.constraint_type
JOIN overall o ON o.run = b.run AND o.layer = b.layer AND o.feature = b.feature
JOIN per_run pr ON pr.run = b.run
LEFT JOIN features f ON f.run = b.run AND f.layer = b.layer AND f.feature = b.feature
WHERE pt.n >= $min_graphs
QUALIFY row_number() OVER (
    PARTITION BY b.run, b.constraint_type
    ORDER BY b.graphs DESC, b.mean_influence DESC, b.layer, b.feature
) <= $top_k
ORDER BY b.run, b.constraint_type, b.graphs DESC, b.mean_influence DESC, b.layer, b.feature;
