-- The kept edges of each representative graph (representative_graphs: per run and
-- constraint type, the ok graph with the median kept-edge count): every edges column.
-- The report's circuit drawings draw the strongest of them.
-- uses: representative_graphs
SELECT e.*
FROM edges e
SEMI JOIN representative_graphs r USING (run, graph_id)
ORDER BY e.run, e.graph_id, e.dst, e.src;
