-- Per run and constraint type: how much of each graph's influence on the logits flows
-- through error nodes (the part the transcoders do not explain): the mean, median and
-- spread over graphs of error-node influence / (feature + error + token influence) among
-- kept nodes, next to the mean of circuit-tracer's replacement score (1 - this share,
-- measured on the unpruned graph).
-- param: min_graphs int = 1 -- only report types with at least this many ok graphs
WITH ok AS (
    SELECT run, graph_id, coalesce(constraint_type, '(none)') AS constraint_type,
           replacement_score
    FROM graphs WHERE status = 'ok'
),
share AS (
    SELECT run, graph_id,
           sum(influence) FILTER (WHERE node_type = 'error')
               / nullif(sum(influence), 0) AS error_influence_share
    FROM nodes WHERE node_type IN ('feature', 'error', 'token')
    GROUP BY run, graph_id
)
SELECT run, constraint_type, count(*) AS graphs,
       round(avg(coalesce(error_influence_share, 0)), 4) AS mean_error_share,
       round(median(coalesce(error_influence_share, 0)), 4) AS median_error_share,
       round(stddev_samp(coalesce(error_influence_share, 0)), 4) AS sd_error_share,
       round(avg(replacement_score), 4) AS mean_replacement
FROM ok LEFT JOIN share USING (run, graph_id)
GROUP BY run, constraint_type
HAVING count(*) >= $min_graphs
ORDER BY run, constraint_type;
