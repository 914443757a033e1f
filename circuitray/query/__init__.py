"""Queries: DuckDB over stored runs. No torch, no transformers, no Ray.

1. :mod:`.engine`: views over run folders, the named-query library (``sql/*.sql``,
   shipped in the package; ``queries/`` in a checkout), read-only user SQL.
2. :mod:`.compare`: paired comparisons of runs or groups with bootstrap intervals.
"""

from circuitray.query.engine import connect, get_query, list_queries, run_query, run_sql

__all__ = ["connect", "get_query", "list_queries", "run_query", "run_sql"]
