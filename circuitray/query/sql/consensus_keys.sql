-- Each node of each ok graph with what identifies it across graphs (the key the
-- consensus queries group by): a feature by (layer, feature) at any position, or by its
-- supernode's name where the supernodes view groups it; an error node by (layer,
-- position counted from the end of the prompt, 0 = last); a token node by (token,
-- position from the end); a logit by its token. Also its graph's group: the run and
-- the value, as text, of the graphs column that `by` names (constraint_type, step,
-- prompt_id, target_token, run, ...; '(none)' where it is null), and the group's size (its ok graphs);
-- and where the node sits (layer, position from the end), its token id and logit
-- probability, for drawing.
-- param: by str = constraint_type -- the graphs column whose values group the graphs
WITH checked AS (
    SELECT CASE WHEN count(*) = 0 THEN error('by: graphs has no column ' || $by) END AS c
    FROM (DESCRIBE graphs) WHERE column_name = $by
),
ok AS (
    SELECT g.run, g.graph_id, coalesce(to_json(g) ->> $by, '(none)') AS group_value,
           g.n_tokens
    FROM graphs g, checked WHERE g.status = 'ok' AND checked.c IS NULL
),
sizes AS (SELECT run, group_value, count(*) AS n_graphs FROM ok GROUP BY ALL)
SELECT n.run, $by AS group_by, ok.group_value, n.graph_id, n.node_id,
       CASE WHEN s.name IS NOT NULL THEN 'supernode' ELSE n.node_type END AS node_type,
       CASE WHEN s.name IS NULL AND n.node_type IN ('feature', 'error') THEN n.layer END
           AS layer,
       CASE WHEN s.name IS NULL AND n.node_type = 'feature' THEN n.feature END AS feature,
       CASE WHEN n.node_type IN ('error', 'token') THEN n.pos - (ok.n_tokens - 1) END
           AS pos_from_end,
       CASE WHEN n.node_type IN ('token', 'logit') THEN n.token END AS token,
       s.name AS supernode,
       n.layer AS at_layer, n.pos - (ok.n_tokens - 1) AS at_pos_from_end,
       n.influence, n.activation, n.token_id, n.logit_prob, sizes.n_graphs
FROM nodes n
JOIN ok USING (run, graph_id)
JOIN sizes ON sizes.run = ok.run AND sizes.group_value = ok.group_value
LEFT JOIN supernodes s
    ON n.node_type = 'feature' AND s.layer = n.layer AND s.feature = n.feature;
