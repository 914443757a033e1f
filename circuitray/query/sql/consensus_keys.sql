-- Each node of each ok graph with what identifies it across graphs (the key the
-- consensus queries group by): a feature by (layer, feature) at any position; an error
-- node by (layer, position counted from the end of the prompt, 0 = last); a token node
-- by (token, position from the end); a logit by its token. Also its graph's group (run,
-- constraint type) and the group's size.
WITH ok AS (
    SELECT run, graph_id, coalesce(constraint_type, '(none)') AS constraint_type, n_tokens
    FROM graphs WHERE status = 'ok'
)
SELECT nodes.run, ok.constraint_type, nodes.graph_id, nodes.node_id, nodes.node_type,
       CASE WHEN nodes.node_type IN ('feature', 'error') THEN nodes.layer END AS layer,
       CASE WHEN nodes.node_type = 'feature' THEN nodes.feature END AS feature,
       CASE WHEN nodes.node_type IN ('error', 'token')
            THEN nodes.pos - (ok.n_tokens - 1) END AS pos_from_end,
       CASE WHEN nodes.node_type IN ('token', 'logit') THEN nodes.token END AS token,
       nodes.cumulative_influence, nodes.activation,
       count(DISTINCT nodes.graph_id) OVER (PARTITION BY nodes.run, ok.constraint_type)
           AS n_graphs
FROM nodes JOIN ok USING (run, graph_id)
ORDER BY nodes.run, nodes.graph_id, nodes.node_id;
