-- Two runs paired by prompt_id (the first run given is the baseline, e.g. before
-- fine-tuning; the second the candidate), per constraint type: how many prompts pair
-- up, the mean change (candidate - baseline) of replacement and completeness scores,
-- of kept nodes and edges, and of the target token's probability; top-1 accuracy in
-- each run; and the mean number of features (layer, feature) a prompt's graph gained
-- and lost, with the mean Jaccard similarity of its two feature sets; and the features
-- gained and lost in the most prompts (top_gained, top_lost: 'L1/250 label (n
-- prompts)', the label from the candidate's / baseline's feature table where it has one).
-- param: top_changes int = 3 -- features listed in top_gained and top_lost
-- param: min_pairs int = 1 -- only report types with at least this many pairs
WITH base AS (
    SELECT g.* FROM graphs g JOIN runs USING (run) WHERE runs.position = 0 AND status = 'ok'
),
cand AS (
    SELECT g.* FROM graphs g JOIN runs USING (run) WHERE runs.position = 1 AND status = 'ok'
),
pairs AS (
    SELECT coalesce(b.constraint_type, '(none)') AS constraint_type, b.prompt_id,
           b.run AS run_b, b.graph_id AS gid_b, c.run AS run_c, c.graph_id AS gid_c,
           c.replacement_score - b.replacement_score AS d_replacement,
           c.completeness_score - b.completeness_score AS d_completeness,
           c.n_kept_nodes - b.n_kept_nodes AS d_nodes,
           c.n_kept_edges - b.n_kept_edges AS d_edges,
           c.target_prob - b.target_prob AS d_target_prob,
           top1(b.top_token, b.target_token) AS top1_b,
           top1(c.top_token, c.target_token) AS top1_c
    FROM base b JOIN cand c USING (prompt_id)
),
feats AS (
    SELECT DISTINCT run, graph_id, layer, feature FROM nodes WHERE node_type = 'feature'
),
fb AS (
    SELECT p.prompt_id, f.layer, f.feature
    FROM pairs p JOIN feats f ON f.run = p.run_b AND f.graph_id = p.gid_b
),
fc AS (
    SELECT p.prompt_id, f.layer, f.feature
    FROM pairs p JOIN feats f ON f.run = p.run_c AND f.graph_id = p.gid_c
),
sets AS (
    SELECT coalesce(fb.prompt_id, fc.prompt_id) AS prompt_id,
           count(*) FILTER (WHERE fc.prompt_id IS NULL) AS lost,
           count(*) FILTER (WHERE fb.prompt_id IS NULL) AS gained,
           count(*) FILTER (WHERE fb.prompt_id IS NOT NULL AND fc.prompt_id IS NOT NULL)
               AS kept
    FROM fb FULL OUTER JOIN fc
        ON fb.prompt_id = fc.prompt_id AND fb.layer = fc.layer AND fb.feature = fc.feature
    GROUP BY coalesce(fb.prompt_id, fc.prompt_id)
),
changes AS (
    SELECT p.constraint_type, 'gained' AS kind, p.run_c AS run, fc.layer, fc.feature,
           count(*) AS n
    FROM fc JOIN pairs p USING (prompt_id)
    ANTI JOIN fb USING (prompt_id, layer, feature)
    GROUP BY ALL
    UNION ALL
    SELECT p.constraint_type, 'lost', p.run_b, fb.layer, fb.feature, count(*)
    FROM fb JOIN pairs p USING (prompt_id)
    ANTI JOIN fc USING (prompt_id, layer, feature)
    GROUP BY ALL
),
ranked AS (
    SELECT *, row_number() OVER (
        PARTITION BY constraint_type, kind ORDER BY n DESC, layer, feature
    ) AS r
    FROM changes
),
top_changes AS (
    SELECT c.constraint_type,
           list(format('L{}/{}', c.layer, c.feature) || coalesce(' ' || f.label, '')
                || format(' ({})', c.n) ORDER BY c.r) FILTER (WHERE c.kind = 'gained')
               AS top_gained,
           list(format('L{}/{}', c.layer, c.feature) || coalesce(' ' || f.label, '')
                || format(' ({})', c.n) ORDER BY c.r) FILTER (WHERE c.kind = 'lost')
               AS top_lost
    FROM ranked c
    LEFT JOIN features f ON f.run = c.run AND f.layer = c.layer AND f.feature = c.feature
    WHERE c.r <= $top_changes
    GROUP BY c.constraint_type
)
SELECT constraint_type, count(*) AS pairs,
       round(avg(d_replacement), 4) AS mean_d_replacement,
       round(avg(d_completeness), 4) AS mean_d_completeness,
       round(avg(d_nodes), 2) AS mean_d_nodes,
       round(avg(d_edges), 2) AS mean_d_edges,
       round(avg(d_target_prob), 4) AS mean_d_target_prob,
       round(avg(top1_b), 4) AS top1_baseline,
       round(avg(top1_c), 4) AS top1_candidate,
       round(avg(coalesce(gained, 0)), 2) AS mean_features_gained,
       round(avg(coalesce(lost, 0)), 2) AS mean_features_lost,
       round(avg(coalesce(kept / nullif(kept + gained + lost, 0), 1)), 4)
           AS mean_feature_jaccard,
       any_value(t.top_gained) AS top_gained, any_value(t.top_lost) AS top_lost
FROM pairs LEFT JOIN sets USING (prompt_id)
LEFT JOIN top_changes t USING (constraint_type)
GROUP BY constraint_type
HAVING count(*) >= $min_pairs
ORDER BY constraint_type;
