-- The consensus circuit of each group of graphs (per run and value of the graphs column
-- `by`), its edges: every edge of the group's graphs between nodes identified as
-- consensus_keys says (a feature by layer and feature at any position, or its
-- supernode; error and token nodes by position from the end of the prompt; logits by
-- token), its weight summed over the positions (and supernode members) it joins within
-- a graph; edges inside one supernode are left out. Per edge: the group's graphs that
-- hold it, their share of the group, and over those graphs the sum, mean and spread of
-- its weight; the most shared first, then the strongest. min_share and top_k keep the
-- circuit readable.
-- uses: consensus_keys
-- param: min_share float = 0.5 -- keep edges in at least this share of the group's graphs
-- param: top_k int = 0 -- per group, keep the k edges of largest absolute summed weight; 0 keeps all
WITH shared_keys AS (
    -- An edge is in a graph only where both its ends are: its share is at most theirs,
    -- so only edges between nodes at min_share or above are aggregated (exact).
    SELECT run, group_value, node_type, layer, feature, pos_from_end, token, supernode
    FROM consensus_keys
    GROUP BY ALL
    HAVING count(DISTINCT graph_id) / any_value(n_graphs) >= $min_share
),
kept AS (
    -- graph and node in one join key, so that the planner joins each end to the edges
    -- (joining the two ends to each other first, per graph, multiplies rows)
    SELECT k.*, k.graph_id::BIGINT * 4294967296 + k.node_id AS graph_node
    FROM consensus_keys k
    SEMI JOIN shared_keys s
        ON k.run = s.run AND k.group_value = s.group_value AND k.node_type = s.node_type
       AND k.layer IS NOT DISTINCT FROM s.layer AND k.feature IS NOT DISTINCT FROM s.feature
       AND k.pos_from_end IS NOT DISTINCT FROM s.pos_from_end
       AND k.token IS NOT DISTINCT FROM s.token
       AND k.supernode IS NOT DISTINCT FROM s.supernode
),
per_graph AS (
    SELECT e.run, s.group_by, s.group_value, s.n_graphs, e.graph_id,
           s.node_type AS src_type, s.layer AS src_layer, s.feature AS src_feature,
           s.pos_from_end AS src_pos_from_end, s.token AS src_token,
           s.supernode AS src_supernode,
           d.node_type AS dst_type, d.layer AS dst_layer, d.feature AS dst_feature,
           d.pos_from_end AS dst_pos_from_end, d.token AS dst_token,
           d.supernode AS dst_supernode,
           sum(e.weight) AS weight
    FROM edges e
    JOIN kept s ON s.run = e.run AND s.graph_node = e.graph_id::BIGINT * 4294967296 + e.src
    JOIN kept d ON d.run = e.run AND d.graph_node = e.graph_id::BIGINT * 4294967296 + e.dst
    WHERE s.supernode IS NULL OR s.supernode IS DISTINCT FROM d.supernode
    GROUP BY ALL
),
agg AS (
    SELECT run, group_by, group_value, n_graphs, src_type, src_layer, src_feature,
           src_pos_from_end, src_token, src_supernode, dst_type, dst_layer, dst_feature,
           dst_pos_from_end, dst_token, dst_supernode,
           count(*) AS graphs, sum(weight) AS sum_weight, avg(weight) AS mean_weight,
           stddev_samp(weight) AS sd_weight
    FROM per_graph
    GROUP BY ALL
    HAVING count(*) / n_graphs >= $min_share
),
ranked AS (
    SELECT *, row_number() OVER (
        PARTITION BY run, group_value
        ORDER BY abs(sum_weight) DESC, src_type, src_layer, src_feature, src_pos_from_end,
                 src_token, src_supernode, dst_type, dst_layer, dst_feature,
                 dst_pos_from_end, dst_token, dst_supernode) AS weight_rank
    FROM agg
)
SELECT run, group_by, group_value,
       src_type, src_layer, src_feature, src_pos_from_end, src_token, src_supernode,
       dst_type, dst_layer, dst_feature, dst_pos_from_end, dst_token, dst_supernode,
       graphs, n_graphs, round(graphs / n_graphs, 4) AS share,
       sum_weight, mean_weight, sd_weight, weight_rank
FROM ranked
WHERE $top_k <= 0 OR weight_rank <= $top_k
ORDER BY run, group_value, share DESC, abs(sum_weight) DESC, src_type, src_layer,
         src_feature, src_pos_from_end, src_token, src_supernode, dst_type, dst_layer,
         dst_feature, dst_pos_from_end, dst_token, dst_supernode;
