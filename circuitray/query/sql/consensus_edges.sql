-- The consensus circuit of each group of graphs (per run and constraint type), its edges:
-- every edge of the group's graphs between nodes identified as consensus_keys says (a
-- feature by layer and feature at any position; error and token nodes by position from
-- the end of the prompt; logits by token), its weight summed over the positions it joins
-- within a graph. Per edge: the group's graphs that hold it, their share of the group,
-- and over those graphs the sum, mean and spread of its weight; the most shared first,
-- then the strongest. min_share keeps the circuit readable.
-- uses: consensus_keys
-- param: min_share float = 0.0 -- keep edges in at least this share of the group's graphs
WITH per_graph AS (
    SELECT e.run, s.constraint_type, s.n_graphs, e.graph_id,
           s.node_type AS src_type, s.layer AS src_layer, s.feature AS src_feature,
           s.pos_from_end AS src_pos_from_end, s.token AS src_token,
           d.node_type AS dst_type, d.layer AS dst_layer, d.feature AS dst_feature,
           d.pos_from_end AS dst_pos_from_end, d.token AS dst_token,
           sum(e.weight) AS weight
    FROM edges e
    JOIN consensus_keys s ON s.run = e.run AND s.graph_id = e.graph_id AND s.node_id = e.src
    JOIN consensus_keys d ON d.run = e.run AND d.graph_id = e.graph_id AND d.node_id = e.dst
    GROUP BY ALL
),
agg AS (
    SELECT run, constraint_type, n_graphs, src_type, src_layer, src_feature, src_pos_from_end,
           src_token, dst_type, dst_layer, dst_feature, dst_pos_from_end, dst_token,
           count(*) AS graphs, sum(weight) AS sum_weight, avg(weight) AS mean_weight,
           stddev_samp(weight) AS sd_weight
    FROM per_graph
    GROUP BY ALL
)
SELECT a.run, a.constraint_type,
       a.src_type, a.src_layer, a.src_feature, a.src_pos_from_end, a.src_token,
       a.dst_type, a.dst_layer, a.dst_feature, a.dst_pos_from_end, a.dst_token,
       a.graphs, a.n_graphs, round(a.graphs / a.n_graphs, 4) AS share,
       a.sum_weight, a.mean_weight, a.sd_weight
FROM agg a
WHERE a.graphs / a.n_graphs >= $min_share
ORDER BY a.run, a.constraint_type, share DESC, abs(a.sum_weight) DESC, a.src_type,
         a.src_layer, a.src_feature, a.src_pos_from_end, a.src_token, a.dst_type,
         a.dst_layer, a.dst_feature, a.dst_pos_from_end, a.dst_token;
