-- Per series and constraint type: the first checkpoint step from which the type's mean
-- metric (accuracy, target_prob or replacement) stays at or above criterion, with a
-- bootstrap interval over prompts; and for every two types of a series the difference
-- of those steps (a - b) with its interval, whether it is beyond noise, and which
-- type converges first.
-- param: metric str = accuracy -- accuracy (top-1), target_prob or replacement (score)
-- param: criterion float = 0.9 -- level the type's mean metric must reach and keep
-- param: n_boot int = 1000 -- bootstrap replicates
-- param: ci float = 0.95 -- level of the percentile intervals
-- param: seed int = 0 -- seed of the bootstrap draws
--
-- A type's metric at a step is the mean over its ok graphs at that step (accuracy:
-- top token = target token, among graphs with a target). Its convergence step is the
-- first step at which the metric is >= criterion and stays so at every later step of
-- the series (a step where the type has no value counts as below); NULL when the last
-- step is below. Steps come from the runs that have one (the run folders of a series
-- folder; runs given outside a series with a step in run.json are pooled as series
-- '(none)'; runs of a series at the same step are pooled).
-- Bootstrap: replicate r = 1..n_boot resamples a type's prompt_ids with replacement
-- (as many as it has: draw j picks prompt number hash(seed, type, r, j) mod n, so the
-- same seed gives the same table) and keeps each drawn prompt's whole trajectory over
-- the steps; the metric at a step is then the mean weighted by how often each prompt
-- was drawn. Intervals are percentile intervals (level ci) of the replicates'
-- convergence steps, a replicate that never converges counting as later than every
-- step (a bound there is NULL: beyond the series).
-- One table, two kinds of rows (kind), 'type' rows first in each series:
--   'type': type_a, its prompts n_a, last_step, final_a (its metric at the last step),
--           step_a (the convergence step; estimate = step_a), ci_low / ci_high, and
--           never_a (share of replicates that never converge); the b columns are NULL.
--   'pair': every two types a < b of a series: n_b, final_b, step_b as for a;
--           estimate = step_a - step_b (NULL when either never converges), ci_low /
--           ci_high over the same replicates paired by replicate (each type resampled
--           on its own; replicates where neither converges left out), never_a,
--           never_b, beyond_noise (the interval excludes 0; no multiple-comparison
--           correction) and converges_first (the type with the earlier step; 'tie'
--           when equal; NULL when neither converges).
WITH checked AS (
    SELECT CASE WHEN $metric IN ('accuracy', 'target_prob', 'replacement') THEN $metric
                ELSE error('convergence: unknown metric ''' || $metric
                           || ''' (metrics: accuracy, target_prob, replacement)')
           END AS metric
),
per_prompt AS (
    -- One value per prompt and step (the mean where runs pool at a step).
    SELECT coalesce(r.series, '(none)') AS series,
           coalesce(g.constraint_type, '(none)') AS constraint_type, g.prompt_id, g.step,
           avg(CASE c.metric
                   WHEN 'accuracy' THEN top1(g.top_token, g.target_token)
                   WHEN 'target_prob' THEN g.target_prob::DOUBLE
                   WHEN 'replacement' THEN g.replacement_score::DOUBLE
               END) AS value
    FROM graphs g JOIN runs r USING (run) CROSS JOIN checked c
    WHERE g.status = 'ok' AND g.step IS NOT NULL
    GROUP BY ALL
),
steps AS (
    SELECT DISTINCT coalesce(series, '(none)') AS series, step FROM runs
    WHERE step IS NOT NULL
),
last AS (SELECT series, max(step) AS last_step FROM steps GROUP BY series),
prompts AS (
    SELECT series, constraint_type, prompt_id,
           row_number() OVER (PARTITION BY series, constraint_type ORDER BY prompt_id) - 1
               AS idx,
           count(*) OVER (PARTITION BY series, constraint_type) AS n
    FROM (SELECT DISTINCT series, constraint_type, prompt_id FROM per_prompt)
),
types AS (SELECT DISTINCT series, constraint_type, n FROM prompts),
draws AS (
    SELECT t.series, t.constraint_type, b.range + 1 AS rep,
           hash($seed, t.constraint_type, b.range + 1, d.range) % t.n AS idx
    FROM types t CROSS JOIN range($n_boot) b CROSS JOIN LATERAL range(t.n) d
),
weights AS (
    -- Replicate 0 is the sample itself: every prompt once.
    SELECT series, constraint_type, 0 AS rep, prompt_id, 1 AS w FROM prompts
    UNION ALL
    SELECT d.series, d.constraint_type, d.rep, p.prompt_id, count(*) AS w
    FROM draws d JOIN prompts p USING (series, constraint_type, idx)
    GROUP BY ALL
),
curve AS (
    SELECT w.series, w.constraint_type, w.rep, pp.step,
           sum(w.w * pp.value) / nullif(sum(w.w) FILTER (WHERE pp.value IS NOT NULL), 0)
               AS value
    FROM weights w JOIN per_prompt pp USING (series, constraint_type, prompt_id)
    GROUP BY ALL
),
grid AS (
    SELECT t.series, t.constraint_type, t.rep, s.step, c.value,
           max(s.step) FILTER (WHERE c.value IS NULL OR c.value < $criterion) OVER (
               PARTITION BY t.series, t.constraint_type, t.rep
           ) AS last_below
    FROM (SELECT DISTINCT series, constraint_type, rep FROM weights) t
    JOIN steps s USING (series)
    LEFT JOIN curve c USING (series, constraint_type, rep, step)
),
conv AS (
    SELECT g.series, g.constraint_type, g.rep,
           min(g.step) FILTER (WHERE g.last_below IS NULL OR g.step > g.last_below) AS step,
           any_value(g.value) FILTER (WHERE g.step = l.last_step) AS final
    FROM grid g JOIN last l USING (series)
    GROUP BY g.series, g.constraint_type, g.rep
),
type_rows AS (
    SELECT c.series, c.constraint_type AS type_a, t.n AS n_a, c.final AS final_a,
           c.step AS step_a,
           quantile_disc(coalesce(b.step::DOUBLE, 'inf'::DOUBLE), (1 - $ci) / 2) AS lo,
           quantile_disc(coalesce(b.step::DOUBLE, 'inf'::DOUBLE), (1 + $ci) / 2) AS hi,
           avg((b.step IS NULL)::DOUBLE) FILTER (WHERE b.rep IS NOT NULL) AS never_a
    FROM conv c JOIN types t USING (series, constraint_type)
    LEFT JOIN conv b ON b.series = c.series AND b.constraint_type = c.constraint_type
        AND b.rep > 0
    WHERE c.rep = 0
    GROUP BY c.series, c.constraint_type, t.n, c.final, c.step
),
pair_boot AS (
    SELECT a.series, a.constraint_type AS type_a, b.constraint_type AS type_b, a.rep,
           CASE WHEN a.step IS NULL AND b.step IS NULL THEN NULL
                ELSE coalesce(a.step::DOUBLE, 'inf'::DOUBLE)
                     - coalesce(b.step::DOUBLE, 'inf'::DOUBLE) END AS diff,
           a.step IS NULL AS never_a, b.step IS NULL AS never_b
    FROM conv a JOIN conv b ON a.series = b.series AND a.rep = b.rep
        AND a.constraint_type < b.constraint_type
    WHERE a.rep > 0
),
pair_ci AS (
    SELECT series, type_a, type_b,
           quantile_disc(diff, (1 - $ci) / 2) AS lo,
           quantile_disc(diff, (1 + $ci) / 2) AS hi,
           avg(never_a::DOUBLE) AS never_a, avg(never_b::DOUBLE) AS never_b
    FROM pair_boot
    GROUP BY ALL
),
pair_rows AS (
    SELECT a.series, a.type_a, b.type_a AS type_b, a.n_a, b.n_a AS n_b,
           a.final_a, b.final_a AS final_b, a.step_a, b.step_a AS step_b,
           p.lo, p.hi, p.never_a, p.never_b
    FROM type_rows a JOIN type_rows b ON a.series = b.series AND a.type_a < b.type_a
    LEFT JOIN pair_ci p ON p.series = a.series AND p.type_a = a.type_a
        AND p.type_b = b.type_a
)
SELECT 'type' AS kind, series, type_a, NULL::VARCHAR AS type_b, c.metric,
       $criterion::DOUBLE AS criterion, n_a, NULL::BIGINT AS n_b, l.last_step,
       round(final_a, 4) AS final_a, NULL::DOUBLE AS final_b,
       step_a, NULL::INTEGER AS step_b, step_a::DOUBLE AS estimate,
       CASE WHEN isinf(lo) THEN NULL ELSE lo END AS ci_low,
       CASE WHEN isinf(hi) THEN NULL ELSE hi END AS ci_high,
       round(never_a, 4) AS never_a, NULL::DOUBLE AS never_b,
       NULL::BOOLEAN AS beyond_noise, NULL::VARCHAR AS converges_first
FROM type_rows JOIN last l USING (series) CROSS JOIN checked c
UNION ALL
SELECT 'pair', series, type_a, type_b, c.metric, $criterion::DOUBLE, n_a, n_b, l.last_step,
       round(final_a, 4), round(final_b, 4), step_a, step_b,
       (step_a - step_b)::DOUBLE,
       CASE WHEN isinf(lo) THEN NULL ELSE lo END,
       CASE WHEN isinf(hi) THEN NULL ELSE hi END,
       round(never_a, 4), round(never_b, 4),
       coalesce(lo > 0 OR hi < 0, false),
       CASE WHEN step_a IS NULL AND step_b IS NULL THEN NULL
            WHEN step_b IS NULL OR step_a < step_b THEN type_a
            WHEN step_a IS NULL OR step_b < step_a THEN type_b
            ELSE 'tie' END
FROM pair_rows JOIN last l USING (series) CROSS JOIN checked c
ORDER BY series, kind DESC, type_a, type_b NULLS FIRST;
