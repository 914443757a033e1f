-- Per series, constraint type and checkpoint step: how the type's circuit forms over
-- fine-tuning. Its feature set at each step, compared with the final circuit (the set
-- at the last step) and with the previous step: size, Jaccard similarities, features
-- gained and lost, the share of the final circuit present; when the final features
-- first appear; and the activation change of the features present at every step.
-- param: min_graphs int = 2 -- ok graphs of a type at a step a feature must be kept in to join its set
-- param: final_listed int = 8 -- final-circuit features listed in final_features
--
-- The type's feature set at a step holds the (layer, feature) pairs kept in at least
-- min_graphs of its ok graphs at that step; the final circuit is the set at the
-- series' last step. Steps come from the runs that have one (the run folders of a
-- series folder; runs given outside a series with a step in run.json are pooled as
-- series '(none)'; runs of a series at the same step are pooled). A step where the
-- type has no graphs has an empty set.
-- Per step: graphs (ok graphs), n_features (set size), jaccard_final and jaccard_prev
-- (Jaccard similarity to the final set and to the previous step's set; NULL when both
-- are empty, jaccard_prev at the first step), gained / lost (features that entered /
-- left the set since the previous step; NULL at the first step), final_share (share
-- of the final set in this step's set) and appeared_share (share of the final set that
-- has been in the set at this step or before).
-- Per type (the same on each of its rows): n_final (final set size),
-- median_first_step (the median over final features of the first step a feature is
-- in the set), half_step and all_step (the first step by which half / all of the final
-- features have been in the set), n_stable (features in the set at every step of the
-- series); and per step mean_activation_change: over the stable features, the mean of
-- (the feature's mean activation over its kept nodes in the type's ok graphs at this
-- step - the same at the first step).
WITH ok AS (
    SELECT g.run, g.graph_id, coalesce(r.series, '(none)') AS series, g.step,
           coalesce(g.constraint_type, '(none)') AS constraint_type
    FROM graphs g JOIN runs r USING (run)
    WHERE g.status = 'ok' AND g.step IS NOT NULL
),
steps AS (
    SELECT DISTINCT coalesce(series, '(none)') AS series, step FROM runs
    WHERE step IS NOT NULL
),
bounds AS (
    SELECT series, min(step) AS first_step, max(step) AS last_step, count(*) AS n_steps
    FROM steps GROUP BY series
),
grid AS (
    SELECT t.series, t.constraint_type, s.step,
           lag(s.step) OVER (PARTITION BY t.series, t.constraint_type ORDER BY s.step)
               AS prev_step
    FROM (SELECT DISTINCT series, constraint_type FROM ok) t JOIN steps s USING (series)
),
counts AS (SELECT series, constraint_type, step, count(*) AS graphs FROM ok GROUP BY ALL),
sets AS MATERIALIZED (
    SELECT ok.series, ok.constraint_type, ok.step, n.layer, n.feature,
           avg(n.activation) AS activation
    FROM nodes n JOIN ok USING (run, graph_id)
    WHERE n.node_type = 'feature'
    GROUP BY ok.series, ok.constraint_type, ok.step, n.layer, n.feature
    HAVING count(DISTINCT (ok.run, n.graph_id)) >= $min_graphs
),
final AS (
    SELECT s.series, s.constraint_type, s.layer, s.feature
    FROM sets s JOIN bounds b ON b.series = s.series AND b.last_step = s.step
),
n_final AS (SELECT series, constraint_type, count(*) AS n_final FROM final GROUP BY ALL),
per_step AS (
    SELECT g.series, g.constraint_type, g.step, g.prev_step,
           count(s.layer) AS n_features, count(f.layer) AS in_final,
           count(p.layer) AS shared_prev
    FROM grid g
    LEFT JOIN sets s USING (series, constraint_type, step)
    LEFT JOIN final f ON f.series = s.series AND f.constraint_type = s.constraint_type
        AND f.layer = s.layer AND f.feature = s.feature
    LEFT JOIN sets p ON p.series = s.series AND p.constraint_type = s.constraint_type
        AND p.step = g.prev_step AND p.layer = s.layer AND p.feature = s.feature
    GROUP BY ALL
),
first_seen AS (
    SELECT f.series, f.constraint_type, f.layer, f.feature, min(s.step) AS first_step
    FROM final f JOIN sets s USING (series, constraint_type, layer, feature)
    GROUP BY ALL
),
appeared AS (
    SELECT g.series, g.constraint_type, g.step, count(fs.first_step) AS appeared
    FROM grid g LEFT JOIN first_seen fs ON fs.series = g.series
        AND fs.constraint_type = g.constraint_type AND fs.first_step <= g.step
    GROUP BY ALL
),
summary AS (
    SELECT nf.series, nf.constraint_type, nf.n_final,
           (SELECT median(first_step) FROM first_seen fs
            WHERE fs.series = nf.series AND fs.constraint_type = nf.constraint_type)
               AS median_first_step,
           (SELECT min(step) FROM appeared a
            WHERE a.series = nf.series AND a.constraint_type = nf.constraint_type
              AND 2 * a.appeared >= nf.n_final) AS half_step,
           (SELECT max(first_step) FROM first_seen fs
            WHERE fs.series = nf.series AND fs.constraint_type = nf.constraint_type)
               AS all_step
    FROM n_final nf
),
series_labels AS (
    SELECT coalesce(r.series, '(none)') AS series, f.layer, f.feature,
           any_value(f.label) AS label
    FROM features f JOIN runs r USING (run)
    WHERE f.label IS NOT NULL
    GROUP BY ALL
),
final_list AS (
    SELECT fs.series, fs.constraint_type,
           list(format('L{}/{}', fs.layer, fs.feature) || coalesce(' ' || l.label, '')
                || format(' (step {})', fs.first_step)
                ORDER BY fs.first_step, fs.layer, fs.feature)[1:$final_listed]
               AS final_features
    FROM first_seen fs
    LEFT JOIN series_labels l USING (series, layer, feature)
    GROUP BY fs.series, fs.constraint_type
),
stable AS (
    SELECT s.series, s.constraint_type, s.layer, s.feature
    FROM sets s JOIN bounds b USING (series)
    GROUP BY s.series, s.constraint_type, s.layer, s.feature, b.n_steps
    HAVING count(*) = b.n_steps
),
activation AS (
    SELECT s.series, s.constraint_type, s.step, count(*) AS n_stable,
           avg(s.activation - s0.activation) AS mean_activation_change
    FROM stable st
    JOIN sets s USING (series, constraint_type, layer, feature)
    JOIN bounds b USING (series)
    JOIN sets s0 ON s0.series = s.series AND s0.constraint_type = s.constraint_type
        AND s0.layer = s.layer AND s0.feature = s.feature AND s0.step = b.first_step
    GROUP BY ALL
)
SELECT p.series, p.constraint_type, p.step,
       coalesce(c.graphs, 0) AS graphs,
       p.n_features,
       coalesce(sm.n_final, 0) AS n_final,
       round(p.in_final / nullif(p.n_features + coalesce(sm.n_final, 0) - p.in_final, 0), 4)
           AS jaccard_final,
       CASE WHEN p.prev_step IS NOT NULL THEN round(p.shared_prev / nullif(
           p.n_features + lag(p.n_features) OVER w - p.shared_prev, 0), 4) END
           AS jaccard_prev,
       CASE WHEN p.prev_step IS NOT NULL THEN p.n_features - p.shared_prev END AS gained,
       CASE WHEN p.prev_step IS NOT NULL THEN lag(p.n_features) OVER w - p.shared_prev END
           AS lost,
       round(p.in_final / nullif(sm.n_final, 0), 4) AS final_share,
       round(a.appeared / nullif(sm.n_final, 0), 4) AS appeared_share,
       sm.median_first_step, sm.half_step, sm.all_step,
       coalesce(st.n_stable, 0) AS n_stable,
       round(st.mean_activation_change, 4) AS mean_activation_change,
       fl.final_features
FROM per_step p
LEFT JOIN counts c USING (series, constraint_type, step)
LEFT JOIN summary sm USING (series, constraint_type)
LEFT JOIN appeared a USING (series, constraint_type, step)
LEFT JOIN activation st USING (series, constraint_type, step)
LEFT JOIN final_list fl USING (series, constraint_type)
WINDOW w AS (PARTITION BY p.series, p.constraint_type ORDER BY p.step)
ORDER BY p.series, p.constraint_type, p.step;
