"""Ray jobs: many prompts over many actors, resumable exactly once.

1. :mod:`.session`: the one skeleton of every job over a folder of parts: lock,
   fingerprint check, crash clean-up, resume, dispatch, compaction, finish.
2. :mod:`.dispatch`: placement (:class:`~circuitray.jobs.dispatch.Placement`), actor
   creation, batches kept in flight, retries and actor restarts.
3. :mod:`.workers`: the actors, each with a loaded ``ReplacementModel``.
4. :mod:`.attribution_job` (``circuitray run``) and :mod:`.intervention_job`
   (``circuitray intervene``) are the two jobs; :mod:`.pipeline` chains jobs, queries
   and comparisons from one YAML file.
"""
