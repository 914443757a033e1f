-- Per run and constraint type: its representative graph, the ok graph whose kept-edge
-- count is the type's median (of an even count, the lower middle one; among equal
-- counts the lowest graph_id), with that count. The report draws these graphs' circuits.
SELECT run, constraint_type, graph_id, n_kept_edges
FROM (
    SELECT run, coalesce(constraint_type, '(none)') AS constraint_type, graph_id,
           n_kept_edges,
           row_number() OVER (PARTITION BY run, constraint_type
                              ORDER BY n_kept_edges, graph_id) AS k,
           count(*) OVER (PARTITION BY run, constraint_type) AS n
    FROM graphs
    WHERE status = 'ok'
)
WHERE k = (n + 1) // 2
ORDER BY run, constraint_type;
