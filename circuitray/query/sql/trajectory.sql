-- Per ok graph of a checkpoint series (the run folders of a series folder, each at its
-- step): its step, constraint type and prompt, whether its top token is the target
-- (top1), its kept nodes, the layers its kept features span (layers_spanned) and the
-- Jaccard similarity of its prompt's feature set (layer, feature) to the same prompt's
-- at the series' last step (jaccard_final). The report's trajectory section draws
-- their means per type and step.
--
-- A prompt's feature set at a step pools its ok graphs there. jaccard_final is NULL
-- where the prompt has no ok graph at the last step (nothing to compare). Runs outside
-- a series are left out.
WITH g AS (
    SELECT g.run, r.series, g.step, g.graph_id, g.prompt_id,
           coalesce(g.constraint_type, '(none)') AS constraint_type,
           top1(g.top_token, g.target_token) AS top1,
           g.n_kept_nodes
    FROM graphs g JOIN runs r USING (run)
    WHERE g.status = 'ok' AND g.step IS NOT NULL AND r.series IS NOT NULL
),
kept AS (
    SELECT g.series, g.step, g.prompt_id, n.node_type, n.layer, n.feature
    FROM nodes n JOIN g USING (run, graph_id)
),
f AS (
    SELECT DISTINCT series, step, prompt_id, layer, feature
    FROM kept WHERE node_type = 'feature'
),
last AS (SELECT series, max(step) AS step FROM runs WHERE series IS NOT NULL GROUP BY series),
fl AS (SELECT f.* FROM f JOIN last USING (series, step)),
sizes AS (SELECT series, step, prompt_id, count(*) AS n FROM f GROUP BY ALL),
lsizes AS (SELECT series, prompt_id, count(*) AS n FROM fl GROUP BY ALL),
shared AS (
    SELECT f.series, f.step, f.prompt_id, count(*) AS n
    FROM f JOIN fl USING (series, prompt_id, layer, feature) GROUP BY ALL
),
span AS (
    SELECT series, step, prompt_id, layers_spanned(layer, node_type) AS layers_spanned
    FROM kept GROUP BY ALL
)
SELECT g.series, g.step, g.constraint_type, g.prompt_id, g.top1, g.n_kept_nodes,
       coalesce(span.layers_spanned, 0) AS layers_spanned,
       CASE WHEN lp.prompt_id IS NOT NULL THEN
           coalesce(shared.n, 0) / nullif(coalesce(sizes.n, 0) + coalesce(lsizes.n, 0)
                                          - coalesce(shared.n, 0), 0) END AS jaccard_final
FROM g
LEFT JOIN span USING (series, step, prompt_id)
LEFT JOIN sizes USING (series, step, prompt_id)
LEFT JOIN lsizes USING (series, prompt_id)
LEFT JOIN (SELECT series, prompt_id FROM g JOIN last USING (series, step)) lp
    USING (series, prompt_id)
LEFT JOIN shared USING (series, step, prompt_id)
ORDER BY g.series, g.constraint_type, g.step, g.prompt_id;
