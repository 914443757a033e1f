-- Per ok graph: run, graph_id, constraint type ('(none)' where it has none), kept
-- nodes and edges, replacement and completeness scores: what the report's
-- distributions per constraint type draw.
SELECT run, graph_id, coalesce(constraint_type, '(none)') AS constraint_type,
       n_kept_nodes, n_kept_edges, replacement_score, completeness_score
FROM graphs
WHERE status = 'ok';
