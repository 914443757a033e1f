-- The consensus circuit of each group of graphs (per run and constraint type), its nodes:
-- every node of the group's graphs, identified across graphs as consensus_keys says (a
-- feature by layer and feature at any position; error and token nodes by position from
-- the end of the prompt; logits by token). Per node: the group's graphs that hold it,
-- their share of the group, and over those graphs the mean and spread of its cumulative
-- influence (the largest over its positions in a graph) and its mean activation
-- (features). With consensus_edges, the group's circuit; min_share keeps it readable.
-- uses: consensus_keys
-- param: min_share float = 0.0 -- keep nodes in at least this share of the group's graphs
WITH per_graph AS (
    SELECT run, constraint_type, graph_id, node_type, layer, feature, pos_from_end, token,
           n_graphs, max(cumulative_influence) AS influence, max(activation) AS activation
    FROM consensus_keys
    GROUP BY ALL
)
SELECT run, constraint_type, node_type, layer, feature, pos_from_end, token,
       count(*) AS graphs, n_graphs, round(count(*) / n_graphs, 4) AS share,
       avg(influence) AS mean_influence, stddev_samp(influence) AS sd_influence,
       avg(activation) AS mean_activation
FROM per_graph
GROUP BY run, constraint_type, node_type, layer, feature, pos_from_end, token, n_graphs
HAVING count(*) / n_graphs >= $min_share
ORDER BY run, constraint_type, share DESC, node_type, layer, feature, pos_from_end, token;
