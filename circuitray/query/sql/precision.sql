-- Per run and constraint type (and '(all)' types): how far a reduced-precision run
-- (bfloat16, float16) is from float32 on the graphs that `circuitray run
-- --verify-precision K` attributed in both: how many were checked, the median and
-- largest relative error of the kept edge weights (||w - w_f32|| / ||w_f32|| over the
-- edges the float32 graph keeps), and how the pruned graphs differ: the mean and lowest
-- Jaccard index of the kept node sets and of the kept edge sets, and how many kept
-- nodes and edges are in only one of the two. Runs without checks report checked 0.
-- param: min_checked int = 0 -- only report groups with at least this many checked graphs
SELECT run,
       CASE WHEN grouping(constraint_type) = 1 THEN '(all)'
            ELSE coalesce(constraint_type, '(none)') END AS constraint_type,
       count(*) AS graphs,
       count(precision_node_jaccard) AS checked,
       median(precision_rel_error) AS median_rel_error,
       max(precision_rel_error) AS max_rel_error,
       round(avg(precision_node_jaccard), 4) AS mean_node_jaccard,
       round(min(precision_node_jaccard), 4) AS min_node_jaccard,
       round(avg(precision_edge_jaccard), 4) AS mean_edge_jaccard,
       round(min(precision_edge_jaccard), 4) AS min_edge_jaccard,
       sum(precision_nodes_diff) AS nodes_diff,
       sum(precision_edges_diff) AS edges_diff
FROM graphs
WHERE status = 'ok'
GROUP BY GROUPING SETS ((run, constraint_type), (run))
HAVING count(precision_node_jaccard) >= $min_checked
ORDER BY run, grouping(constraint_type), constraint_type;
