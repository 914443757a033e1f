-- The consensus circuit of each group of graphs (per run and value of the graphs column
-- `by`), its nodes: every node of the group's graphs, identified across graphs as
-- consensus_keys says (a feature by layer and feature at any position, or its
-- supernode; error and token nodes by position from the end of the prompt; logits by
-- token). Per node: the group's graphs that hold it, their share of the group; its
-- influence in a graph (its share of the graph's influence, summed over its positions
-- and a supernode's members) as the mean over the group's graphs (absent counts 0),
-- the mean and spread over the graphs that hold it; its mean activation; and where it
-- matters most (layer, position from the end) and its token id, for drawing; a
-- logit's mean probability. min_share and top_k keep it
-- readable.
-- uses: consensus_keys
-- param: min_share float = 0.5 -- keep nodes in at least this share of the group's graphs
-- param: top_k int = 0 -- per group, keep the k features, supernodes and error nodes of highest mean influence (tokens and logits stay); 0 keeps all
WITH per_graph AS (
    SELECT run, group_by, group_value, graph_id, node_type, layer, feature, pos_from_end,
           token, supernode, n_graphs, sum(influence) AS influence,
           max(activation) AS activation,
           arg_max(at_layer, coalesce(influence, 0)) AS at_layer,
           arg_max(at_pos_from_end, coalesce(influence, 0)) AS at_pos_from_end,
           max(token_id) AS token_id, max(logit_prob) AS logit_prob
    FROM consensus_keys
    GROUP BY run, group_by, group_value, graph_id, node_type, layer, feature,
             pos_from_end, token, supernode, n_graphs
),
agg AS (
    SELECT run, group_by, group_value, node_type, layer, feature, pos_from_end, token,
           supernode, count(*) AS graphs, n_graphs,
           round(count(*) / n_graphs, 4) AS share,
           coalesce(sum(influence), 0) / n_graphs AS influence,
           avg(influence) AS mean_influence, stddev_samp(influence) AS sd_influence,
           avg(activation) AS mean_activation,
           mode(at_layer) AS at_layer, mode(at_pos_from_end) AS at_pos_from_end,
           max(token_id) AS token_id, avg(logit_prob) AS mean_logit_prob
    FROM per_graph
    GROUP BY run, group_by, group_value, node_type, layer, feature, pos_from_end, token,
             supernode, n_graphs
    HAVING count(*) / n_graphs >= $min_share
),
ranked AS (
    SELECT *, CASE WHEN node_type IN ('token', 'logit') THEN NULL
                   ELSE row_number() OVER (
                       PARTITION BY run, group_value, node_type IN ('token', 'logit')
                       ORDER BY influence DESC, node_type, layer, feature, pos_from_end,
                                supernode) END AS influence_rank
    FROM agg
)
SELECT run, group_by, group_value, node_type, layer, feature, pos_from_end, token,
       supernode, graphs, n_graphs, share, influence, mean_influence, sd_influence,
       mean_activation, mean_logit_prob, at_layer, at_pos_from_end, token_id,
       influence_rank
FROM ranked
WHERE $top_k <= 0 OR influence_rank IS NULL OR influence_rank <= $top_k
ORDER BY run, group_value, share DESC, node_type, layer, feature, pos_from_end, token,
         supernode;
