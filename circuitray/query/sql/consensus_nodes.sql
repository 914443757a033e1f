-- The consensus circuit of each group of graphs (per run and constraint type), its nodes:
-- every node of the group's graphs, identified across graphs by what it is, not by its
-- id: a feature by (layer, feature) at any position; an error node by (layer, position
-- counted from the end of the prompt, 0 = last); a token node by (token, position from
-- the end); a logit by its token. Per node: the group's graphs that hold it, their share
-- of the group, and over those graphs the mean and spread of its cumulative influence
-- (the largest over its positions in a graph) and its mean activation (features). With
-- consensus_edges, the group's circuit; min_share keeps it readable.
-- param: min_share float = 0.0 -- keep nodes in at least this share of the group's graphs
WITH ok AS (
    SELECT run, graph_id, coalesce(constraint_type, '(none)') AS constraint_type, n_tokens
    FROM graphs WHERE status = 'ok'
),
sizes AS (
    SELECT run, constraint_type, count(*) AS n_graphs FROM ok GROUP BY run, constraint_type
),
per_graph AS (
    SELECT nodes.run, ok.constraint_type, nodes.graph_id, nodes.node_type,
           CASE WHEN nodes.node_type IN ('feature', 'error') THEN nodes.layer END AS layer,
           CASE WHEN nodes.node_type = 'feature' THEN nodes.feature END AS feature,
           CASE WHEN nodes.node_type IN ('error', 'token')
                THEN nodes.pos - (ok.n_tokens - 1) END AS pos_from_end,
           CASE WHEN nodes.node_type IN ('token', 'logit') THEN nodes.token END AS token,
           max(nodes.cumulative_influence) AS influence, max(nodes.activation) AS activation
    FROM nodes JOIN ok USING (run, graph_id)
    GROUP BY ALL
)
SELECT p.run, p.constraint_type, p.node_type, p.layer, p.feature, p.pos_from_end, p.token,
       count(*) AS graphs, s.n_graphs, round(count(*) / s.n_graphs, 4) AS share,
       avg(p.influence) AS mean_influence, stddev_samp(p.influence) AS sd_influence,
       avg(p.activation) AS mean_activation
FROM per_graph p JOIN sizes s USING (run, constraint_type)
GROUP BY p.run, p.constraint_type, p.node_type, p.layer, p.feature, p.pos_from_end, p.token,
         s.n_graphs
HAVING count(*) / s.n_graphs >= $min_share
ORDER BY p.run, p.constraint_type, share DESC, p.node_type, p.layer, p.feature,
         p.pos_from_end, p.token;
