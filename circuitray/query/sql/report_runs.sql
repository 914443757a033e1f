-- The folders opened, in the order given (the report's run list): run (its name in
-- the views), path, series (NULL for a folder given itself), step, and shown: whether
-- the report's per-run sections show it (every folder outside a series; a series' first
-- and last step).
SELECT run, path, series, step,
       series IS NULL
           OR step = min(step) OVER (PARTITION BY series)
           OR step = max(step) OVER (PARTITION BY series) AS shown
FROM runs
ORDER BY position;
