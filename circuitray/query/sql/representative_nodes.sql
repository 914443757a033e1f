-- The kept nodes of each representative graph (representative_graphs: per run and
-- constraint type, the ok graph with the median kept-edge count): every nodes column,
-- and a feature's label from the run's feature table (feature_label; NULL where there
-- is none). The report's circuit drawings place and name them.
-- uses: representative_graphs
SELECT n.*, f.label AS feature_label
FROM nodes n
SEMI JOIN representative_graphs r USING (run, graph_id)
LEFT JOIN features f
    ON f.run = n.run AND f.layer = n.layer AND f.feature = n.feature
    AND n.node_type = 'feature'
ORDER BY n.run, n.graph_id, n.node_id;
