-- Per intervention folder (circuitray intervene), in the order given: its name in the
-- views (run), its path, and its error rows (results whose status is not ok): what the
-- report lists of each folder.
SELECT r.run, r.path, count(i.run) AS error_rows
FROM runs r
LEFT JOIN interventions i ON i.run = r.run AND i.status <> 'ok'
GROUP BY r.run, r.path, r.position
ORDER BY r.position;
