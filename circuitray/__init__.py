"""circuitray: attribution graphs for many prompts on Ray, stored as Parquet, queried in DuckDB.

The Python API is what the ``circuitray`` CLI calls::

    import circuitray
    rows = circuitray.generate_ws2(n=500, seed=0)
    circuitray.write_prompts(rows, "ws2.parquet")
    result = circuitray.run(circuitray.RunConfig(prompts="ws2.parquet", out="runs/ws2"))
    stats = circuitray.run_query("constraint_stats", ["runs/ws2"])

Names are imported on first use (PEP 562), so ``import circuitray.flatten`` on a GPU box
without Ray or DuckDB, or ``circuitray query`` without torch, load only what they need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "AttributionConfig": "circuitray.attribution",
    "attribute_prompt": "circuitray.attribution",
    "CompareConfig": "circuitray.compare",
    "compare_groups": "circuitray.compare",
    "compare_runs": "circuitray.compare",
    "RunConfig": "circuitray.driver",
    "RunResult": "circuitray.driver",
    "run": "circuitray.driver",
    "CircuitrayError": "circuitray.errors",
    "ModelLoadError": "circuitray.errors",
    "PromptFileError": "circuitray.errors",
    "RunDirError": "circuitray.errors",
    "PruneConfig": "circuitray.flatten",
    "flatten_graph": "circuitray.flatten",
    "InterventionConfig": "circuitray.intervene",
    "InterventionResult": "circuitray.intervene",
    "intervene": "circuitray.intervene",
    "ModelSpec": "circuitray.models.loading",
    "load_replacement_model": "circuitray.models.loading",
    "read_prompts": "circuitray.prompts",
    "write_prompts": "circuitray.prompts",
    "connect": "circuitray.queries",
    "list_queries": "circuitray.queries",
    "run_query": "circuitray.queries",
    "run_sql": "circuitray.queries",
    "InterventionStore": "circuitray.store",
    "RunStore": "circuitray.store",
    "AttributionWorker": "circuitray.worker",
    "InterventionWorker": "circuitray.worker",
    "generate_ws2": "circuitray.ws2",
}

__all__ = [
    "AttributionConfig",
    "AttributionWorker",
    "CircuitrayError",
    "CompareConfig",
    "InterventionConfig",
    "InterventionResult",
    "InterventionStore",
    "InterventionWorker",
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
    "intervene",
    "list_queries",
    "load_replacement_model",
    "read_prompts",
    "run",
    "run_query",
    "run_sql",
    "write_prompts",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'circuitray' has no attribute {name!r}")


if TYPE_CHECKING:
    from circuitray.attribution import AttributionConfig, attribute_prompt
    from circuitray.compare import CompareConfig, compare_groups, compare_runs
    from circuitray.driver import RunConfig, RunResult, run
    from circuitray.errors import CircuitrayError, ModelLoadError, PromptFileError, RunDirError
    from circuitray.flatten import PruneConfig, flatten_graph
    from circuitray.intervene import InterventionConfig, InterventionResult, intervene
    from circuitray.models.loading import ModelSpec, load_replacement_model
    from circuitray.prompts import read_prompts, write_prompts
    from circuitray.queries import connect, list_queries, run_query, run_sql
    from circuitray.store import InterventionStore, RunStore
    from circuitray.worker import AttributionWorker, InterventionWorker
    from circuitray.ws2 import generate_ws2
