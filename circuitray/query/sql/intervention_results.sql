-- Per ok result row of the intervention folders (circuitray intervene): run, SPEC, the
-- graph-predicted change of the target logit (total: direct + indirect effects of the
-- intervened features; direct alone) and the measured one (target_logit_change). The
-- report's scatter draws predicted against measured.
SELECT run, spec, predicted_total, predicted_direct, target_logit_change
FROM interventions
WHERE status = 'ok';
