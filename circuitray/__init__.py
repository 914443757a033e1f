"""circuitray: attribution graphs for many prompts on Ray, stored as Parquet, queried in DuckDB.

The Python API is what the ``circuitray`` CLI calls::

    import circuitray
    rows = circuitray.generate_ws2(n=500, seed=0)
    circuitray.write_prompts(rows, "ws2.parquet")
    result = circuitray.run(circuitray.RunConfig(prompts="ws2.parquet", out="runs/ws2"))
    stats = circuitray.run_query("constraint_stats", ["runs/ws2"])
"""

from circuitray.attribution import AttributionConfig, attribute_prompt
from circuitray.compare import CompareConfig, compare_groups, compare_runs
from circuitray.driver import RunConfig, RunResult, run
from circuitray.errors import CircuitrayError, ModelLoadError, PromptFileError, RunDirError
from circuitray.flatten import PruneConfig, flatten_graph
from circuitray.models.loading import ModelSpec, load_replacement_model
from circuitray.prompts import read_prompts, write_prompts
from circuitray.queries import connect, list_queries, run_query, run_sql
from circuitray.store import RunStore
from circuitray.worker import AttributionWorker
from circuitray.ws2 import generate_ws2

__version__ = "0.1.0"

__all__ = [
    "AttributionConfig",
    "AttributionWorker",
    "CircuitrayError",
    "CompareConfig",
    "ModelLoadError",
    "ModelSpec",
    "PromptFileError",
    "PruneConfig",
    "RunConfig",
    "RunDirError",
    "RunResult",
    "RunStore",
    "attribute_prompt",
    "compare_groups",
    "compare_runs",
    "connect",
    "flatten_graph",
    "generate_ws2",
    "list_queries",
    "load_replacement_model",
    "read_prompts",
    "run",
    "run_query",
    "run_sql",
    "write_prompts",
]
