-- Per series, constraint type and checkpoint step: how the model and its circuits
-- change over fine-tuning: top-1 accuracy, target probability, replacement and
-- completeness scores, circuit size (kept nodes, edges, features), the error nodes'
-- share of edge weight, the layers the features span and the strongest path's length.
-- param: top_k int = 1 -- paths searched per graph (only the strongest is used)
-- param: max_graphs int = 100 -- graphs per run and type whose strongest path is searched (0: all)
-- uses: paths
--
-- Steps come from the runs that have one (the run folders of a series folder; runs
-- given outside a series with a step in run.json are pooled as series '(none)'; runs
-- of a series at the same step are pooled). Columns: run (the run folder(s) of the
-- step), graphs (ok graphs), accuracy (share of ok graphs, among those with a target
-- token, whose top token is the target), mean_target_prob, mean_replacement,
-- mean_completeness, mean_nodes, mean_edges, mean_features (kept), error_weight_share
-- (mean over graphs of the share of kept edge |weight| that comes from error nodes, as
-- constraint_stats computes it), mean_layers_spanned (distinct layers of the kept
-- features), and mean_path_hops: the mean hops of the strongest token-to-target path
-- (rank 1 of the paths query, whose parameters apply), over path_graphs graphs (the
-- paths query's sample of max_graphs per run and type: the same prompts at each step).
WITH ok AS (
    SELECT g.run, g.graph_id, coalesce(r.series, '(none)') AS series, g.step,
           coalesce(g.constraint_type, '(none)') AS constraint_type,
           top1(g.top_token, g.target_token) AS top1,
           g.target_prob, g.replacement_score, g.completeness_score,
           g.n_kept_nodes, g.n_kept_edges, g.n_kept_features
    FROM graphs g JOIN runs r USING (run)
    WHERE g.status = 'ok' AND g.step IS NOT NULL
),
error_share AS (
    SELECT run, graph_id,
           sum(abs(weight)) FILTER (WHERE src_type = 'error')
               / nullif(sum(abs(weight)), 0) AS error_weight_share
    FROM edges SEMI JOIN ok USING (run, graph_id)
    GROUP BY run, graph_id
),
span AS (
    SELECT run, graph_id, layers_spanned(layer, node_type) AS layers_spanned
    FROM nodes SEMI JOIN ok USING (run, graph_id)
    GROUP BY run, graph_id
),
strongest AS (
    SELECT run, graph_id, any_value(hops) FILTER (WHERE rank = 1) AS hops
    FROM paths
    GROUP BY run, graph_id
)
SELECT series, constraint_type, step,
       string_agg(DISTINCT run, ', ' ORDER BY run) AS run,
       count(*) AS graphs,
       round(avg(top1), 4) AS accuracy,
       round(avg(target_prob), 4) AS mean_target_prob,
       round(avg(replacement_score), 4) AS mean_replacement,
       round(avg(completeness_score), 4) AS mean_completeness,
       round(avg(n_kept_nodes), 2) AS mean_nodes,
       round(avg(n_kept_edges), 2) AS mean_edges,
       round(avg(n_kept_features), 2) AS mean_features,
       round(avg(coalesce(error_weight_share, 0)), 4) AS error_weight_share,
       round(avg(coalesce(layers_spanned, 0)), 3) AS mean_layers_spanned,
       round(avg(hops), 3) AS mean_path_hops,
       count(hops) AS path_graphs
FROM ok
LEFT JOIN error_share USING (run, graph_id)
LEFT JOIN span USING (run, graph_id)
LEFT JOIN strongest USING (run, graph_id)
GROUP BY series, constraint_type, step
ORDER BY series, constraint_type, step;
