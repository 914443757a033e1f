-- Per intervention folder, SPEC and constraint type (and '(all)' types pooled): how much
-- the interventions moved the target logit, with a percentile-bootstrap confidence
-- interval of the mean change, and how well the graphs predicted it: the Spearman rank
-- correlation between the stored graph's predicted change (direct + indirect effects of
-- the intervened features; `spearman`) and of its direct effects alone
-- (`spearman_direct`), and the measured one. Run it on `circuitray intervene`
-- folders. Resamples are drawn with a seeded hash, so the intervals are reproducible.
-- Change = the target's logit minus the mean logit, after - before (a logit node's value;
-- for a --target contrast graph: minus the alternatives' mean logit).
-- param: n_boot int = 1000 -- bootstrap resamples
-- param: alpha float = 0.05 -- two-sided: the interval covers 1 - alpha
-- param: seed int = 0 -- seeds the resampling
WITH ok AS (
    SELECT run, spec_index, spec, graph_id, rank,
           coalesce(constraint_type, '(none)') AS constraint_type,
           target_logit_change AS y, predicted_total AS x, predicted_direct AS xd,
           target_prob_before, target_prob_after, kl, n_features,
           top_token_before <> top_token_after AS flipped
    FROM interventions WHERE status = 'ok'
),
pooled AS (
    SELECT * FROM ok
    UNION ALL
    SELECT * REPLACE ('(all)' AS constraint_type) FROM ok
),
numbered AS (
    SELECT *,
           row_number() OVER (w ORDER BY graph_id, rank) - 1 AS i,
           count(*) OVER w AS n,
           -- Spearman: average ranks (ties share the mean of their positions) of x, and
           -- of y among the rows that have an x (likewise xd): a row without a
           -- prediction must not shift the others' ranks
           (rank() OVER (wx ORDER BY x) + count(*) OVER wx + 1
            - rank() OVER (wx ORDER BY x DESC)) / 2.0 AS rank_x,
           (rank() OVER (wx ORDER BY y) + count(*) OVER wx + 1
            - rank() OVER (wx ORDER BY y DESC)) / 2.0 AS rank_y_x,
           (rank() OVER (wxd ORDER BY xd) + count(*) OVER wxd + 1
            - rank() OVER (wxd ORDER BY xd DESC)) / 2.0 AS rank_xd,
           (rank() OVER (wxd ORDER BY y) + count(*) OVER wxd + 1
            - rank() OVER (wxd ORDER BY y DESC)) / 2.0 AS rank_y_xd
    FROM pooled
    WINDOW w AS (PARTITION BY run, spec_index, constraint_type),
           wx AS (PARTITION BY run, spec_index, constraint_type, x IS NULL),
           wxd AS (PARTITION BY run, spec_index, constraint_type, xd IS NULL)
),
groups AS (
    SELECT run, spec_index, constraint_type, any_value(n) AS n
    FROM numbered GROUP BY run, spec_index, constraint_type
),
draws AS (
    SELECT run, spec_index, constraint_type, b,
           hash(b, k, $seed, spec_index, constraint_type) % n AS i
    FROM (
        SELECT run, spec_index, constraint_type, n,
               unnest(range(n)) AS k
        FROM groups
    ), range($n_boot) AS boot(b)
),
boot AS (
    SELECT d.run, d.spec_index, d.constraint_type, d.b, avg(x.y) AS mean_y
    FROM draws d JOIN numbered x
      ON x.run = d.run AND x.spec_index = d.spec_index
     AND x.constraint_type = d.constraint_type AND x.i = d.i
    GROUP BY d.run, d.spec_index, d.constraint_type, d.b
),
ci AS (
    SELECT run, spec_index, constraint_type,
           quantile_cont(mean_y, $alpha / 2) AS ci_low,
           quantile_cont(mean_y, 1 - $alpha / 2) AS ci_high
    FROM boot GROUP BY run, spec_index, constraint_type
),
stats AS (
    SELECT run, spec_index, any_value(spec) AS spec, constraint_type,
           count(DISTINCT graph_id) AS prompts, count(*) AS n,
           avg(n_features) AS mean_features,
           avg(y) AS mean_change,
           avg(target_prob_before) AS prob_before,
           avg(target_prob_after) AS prob_after,
           avg(flipped::DOUBLE) AS top1_changed,
           avg(kl) AS mean_kl,
           avg(x) AS mean_predicted,
           count(x) AS n_predicted,
           corr(rank_x, rank_y_x) FILTER (WHERE x IS NOT NULL) AS spearman,
           corr(rank_xd, rank_y_xd) FILTER (WHERE xd IS NOT NULL) AS spearman_direct
    FROM numbered GROUP BY run, spec_index, constraint_type
)
SELECT s.run, s.spec, s.constraint_type, s.prompts, s.n,
       round(s.mean_features, 2) AS mean_features,
       round(s.mean_change, 4) AS mean_change,
       round(ci.ci_low, 4) AS ci_low,
       round(ci.ci_high, 4) AS ci_high,
       round(s.prob_before, 4) AS prob_before,
       round(s.prob_after, 4) AS prob_after,
       round(s.top1_changed, 3) AS top1_changed,
       round(s.mean_kl, 4) AS mean_kl,
       round(s.mean_predicted, 4) AS mean_predicted,
       s.n_predicted,
       -- undefined (NULL, not NaN) where either side is constant
       round(CASE WHEN NOT isnan(s.spearman) THEN s.spearman END, 3) AS spearman,
       round(CASE WHEN NOT isnan(s.spearman_direct) THEN s.spearman_direct END, 3)
           AS spearman_direct
FROM stats s LEFT JOIN ci USING (run, spec_index, constraint_type)
ORDER BY s.run, s.spec_index, s.constraint_type = '(all)', s.constraint_type;
