-- Per run and constraint type: how many graphs, how big their pruned circuits are
-- (mean, median and spread of kept nodes and edges), how well the replacement model
-- explains them (mean replacement and completeness scores), the share of kept edge
-- weight (|w|) that comes from error nodes, the mean number of distinct layers the
-- kept features span, and how often the model's top token is the expected target.
-- param: min_graphs int = 1 -- only report types with at least this many ok graphs
WITH ok AS (
    SELECT * FROM graphs WHERE status = 'ok'
),
error_share AS (
    SELECT run, graph_id,
           sum(abs(weight)) FILTER (WHERE src_type = 'error')
               / nullif(sum(abs(weight)), 0) AS error_weight_share
    FROM edges
    GROUP BY run, graph_id
),
span AS (
    SELECT run, graph_id, layers_spanned(layer, node_type) AS layers_spanned
    FROM nodes
    GROUP BY run, graph_id
),
failed AS (
    SELECT run, coalesce(constraint_type, '(none)') AS constraint_type, count(*) AS errors
    FROM graphs WHERE status = 'error'
    GROUP BY ALL
)
SELECT
    ok.run,
    coalesce(ok.constraint_type, '(none)') AS constraint_type,
    count(*) AS graphs,
    coalesce(any_value(failed.errors), 0) AS errors,
    round(avg(n_kept_nodes), 1) AS mean_nodes,
    median(n_kept_nodes) AS median_nodes,
    round(stddev_samp(n_kept_nodes), 1) AS sd_nodes,
    round(avg(n_kept_edges), 1) AS mean_edges,
    median(n_kept_edges) AS median_edges,
    round(stddev_samp(n_kept_edges), 1) AS sd_edges,
    round(avg(replacement_score), 3) AS mean_replacement,
    round(avg(completeness_score), 3) AS mean_completeness,
    round(avg(coalesce(error_weight_share, 0)), 3) AS error_weight_share,
    round(avg(coalesce(layers_spanned, 0)), 2) AS mean_layers_spanned,
    round(avg(top1(top_token, target_token)), 3) AS top1_accuracy,
    round(avg(target_prob), 3) AS mean_target_prob
FROM ok
LEFT JOIN error_share USING (run, graph_id)
LEFT JOIN span USING (run, graph_id)
LEFT JOIN failed ON failed.run = ok.run
    AND failed.constraint_type = coalesce(ok.constraint_type, '(none)')
GROUP BY ok.run, coalesce(ok.constraint_type, '(none)')
HAVING count(*) >= $min_graphs
ORDER BY ok.run, constraint_type;
