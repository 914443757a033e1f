-- Per run and constraint type: how long and how strong the strongest token-to-target
-- path of a graph is (the rank-1 path of the paths query, whose parameters apply):
-- mean, median and spread of its hops, the share of graphs where it is a direct token
-- -> logit edge and where it passes through an error node, its mean strength, and
-- the mean share of the top_k paths' total strength that the strongest one holds.
-- uses: paths
WITH per_graph AS (
    SELECT run, constraint_type, graph_id,
           any_value(hops) FILTER (WHERE rank = 1) AS hops,
           any_value(via_error) FILTER (WHERE rank = 1) AS via_error,
           max(strength) AS strength,
           max(strength) / nullif(sum(strength), 0) AS top_share
    FROM paths
    GROUP BY run, constraint_type, graph_id
)
SELECT run, constraint_type, count(*) AS graphs,
       round(avg(hops), 3) AS mean_hops,
       median(hops) AS median_hops,
       round(stddev_samp(hops), 3) AS sd_hops,
       round(avg((hops = 1)::INT), 4) AS direct_share,
       round(avg(via_error::INT), 4) AS via_error_share,
       round(avg(strength), 6) AS mean_strength,
       round(avg(top_share), 4) AS mean_top_path_share
FROM per_graph
GROUP BY run, constraint_type
ORDER BY run, constraint_type;
