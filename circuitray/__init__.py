"""circuitray: attribution graphs for many prompts on Ray, stored as Parquet, queried in DuckDB.

The Python API is what the ``circuitray`` CLI calls::

    import circuitray
    rows = circuitray.generate_ws2(n=500, seed=0)
    circuitray.write_prompts(rows, "ws2.parquet")
    result = circuitray.run(circuitray.RunConfig(prompts="ws2.parquet", out="runs/ws2"))
    stats = circuitray.run_query("constraint_stats", ["runs/ws2"])
    # Learning dynamics: checkpoints of a fine-tune, one run per checkpoint.
    circuitray.finetune(circuitray.FinetuneConfig(base="organism-base", out="ft"))
    circuitray.run_series(circuitray.SeriesConfig(manifest="ft", out="runs/series"))
    curves = circuitray.run_query("learning_curves", ["runs/series"])
    # Graphs made elsewhere (graph JSON files) as a run folder.
    circuitray.import_graphs(circuitray.ImportConfig(sources=["graphs/"], out="runs/np"))
    # The circuit each constraint type's graphs share, as tables and viewer graphs.
    circuitray.aggregate_circuits(circuitray.AggregateConfig(runs=["runs/ws2"], out="agg"))

Subpackages follow the data path: :mod:`circuitray.prompts` -> :mod:`circuitray.jobs`
(Ray actors) -> :mod:`circuitray.graph` (one prompt: attribute, prune, flatten) ->
:mod:`circuitray.storage` -> :mod:`circuitray.query` -> :mod:`circuitray.outputs`;
:mod:`circuitray.schema` holds every table's schema. Graphs made elsewhere (circuit-tracer's
and Neuronpedia's graph JSON) enter the same storage through :mod:`circuitray.ingest`.

Import layers, lowest first (a module imports only from its own subpackage and the
layers below it, in functions too; ``tests/test_layers.py`` checks every import)::

    errors, schema, machine, cluster < prompts < storage < graph < models < finetune
    < organism < features < query, ingest < outputs < jobs < bench < cli

The data path runs the other way where a stage drives those after it: :mod:`circuitray.jobs`
starts Ray actors that attribute (:mod:`~circuitray.graph`), store and query, so it sits
above them; :mod:`circuitray.cluster` is how every Ray job starts or joins Ray.

Names are imported on first use (PEP 562), so ``import circuitray.graph.flatten`` on a
GPU box without Ray or DuckDB, or ``circuitray query`` without torch, load only what
they need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "AttributionConfig": "circuitray.graph.config",
    "attribute_prompt": "circuitray.graph.attribute",
    "CompareConfig": "circuitray.query.compare",
    "compare_groups": "circuitray.query.compare",
    "compare_runs": "circuitray.query.compare",
    "RunConfig": "circuitray.jobs.attribution_job",
    "RunResult": "circuitray.jobs.attribution_job",
    "run": "circuitray.jobs.attribution_job",
    "CircuitrayError": "circuitray.errors",
    "ModelLoadError": "circuitray.errors",
    "PromptFileError": "circuitray.errors",
    "RunDirError": "circuitray.errors",
    "PruneConfig": "circuitray.graph.config",
    "flatten_graph": "circuitray.graph.flatten",
    "InterventionConfig": "circuitray.jobs.intervention_job",
    "InterventionResult": "circuitray.jobs.intervention_job",
    "intervene": "circuitray.jobs.intervention_job",
    "ModelSpec": "circuitray.models.loading",
    "load_replacement_model": "circuitray.models.loading",
    "read_prompts": "circuitray.prompts.files",
    "write_prompts": "circuitray.prompts.files",
    "connect": "circuitray.query.engine",
    "list_queries": "circuitray.query.engine",
    "run_query": "circuitray.query.engine",
    "run_sql": "circuitray.query.engine",
    "InterventionStore": "circuitray.storage.run_store",
    "RunStore": "circuitray.storage.run_store",
    "AttributionWorker": "circuitray.jobs.workers",
    "InterventionWorker": "circuitray.jobs.workers",
    "generate_ws2": "circuitray.prompts.ws2",
    "FinetuneConfig": "circuitray.finetune.config",
    "finetune": "circuitray.finetune.local",
    "finetune_on_ray": "circuitray.finetune.ray_train",
    "read_manifest": "circuitray.finetune.manifest",
    "SeriesConfig": "circuitray.jobs.series",
    "SeriesResult": "circuitray.jobs.series",
    "run_series": "circuitray.jobs.series",
    "ImportConfig": "circuitray.ingest.importer",
    "ImportResult": "circuitray.ingest.importer",
    "import_graphs": "circuitray.ingest.importer",
    "read_graph_json": "circuitray.ingest.graph_json",
    "AggregateConfig": "circuitray.outputs.aggregate",
    "AggregateResult": "circuitray.outputs.aggregate",
    "aggregate_circuits": "circuitray.outputs.aggregate",
    "run_queries": "circuitray.query.engine",
    "read_supernodes": "circuitray.query.supernodes",
}

__all__ = [
    "AggregateConfig",
    "AggregateResult",
    "AttributionConfig",
    "AttributionWorker",
    "CircuitrayError",
    "CompareConfig",
    "FinetuneConfig",
    "ImportConfig",
    "ImportResult",
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
    "SeriesConfig",
    "SeriesResult",
    "aggregate_circuits",
    "attribute_prompt",
    "compare_groups",
    "compare_runs",
    "connect",
    "finetune",
    "finetune_on_ray",
    "flatten_graph",
    "generate_ws2",
    "import_graphs",
    "intervene",
    "list_queries",
    "load_replacement_model",
    "read_graph_json",
    "read_manifest",
    "read_prompts",
    "read_supernodes",
    "run",
    "run_queries",
    "run_query",
    "run_series",
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
    from circuitray.errors import CircuitrayError, ModelLoadError, PromptFileError, RunDirError
    from circuitray.finetune.config import FinetuneConfig
    from circuitray.finetune.local import finetune
    from circuitray.finetune.manifest import read_manifest
    from circuitray.finetune.ray_train import finetune_on_ray
    from circuitray.graph.attribute import attribute_prompt
    from circuitray.graph.config import AttributionConfig, PruneConfig
    from circuitray.graph.flatten import flatten_graph
    from circuitray.ingest.graph_json import read_graph_json
    from circuitray.ingest.importer import ImportConfig, ImportResult, import_graphs
    from circuitray.jobs.attribution_job import RunConfig, RunResult, run
    from circuitray.jobs.intervention_job import InterventionConfig, InterventionResult, intervene
    from circuitray.jobs.series import SeriesConfig, SeriesResult, run_series
    from circuitray.jobs.workers import AttributionWorker, InterventionWorker
    from circuitray.models.loading import ModelSpec, load_replacement_model
    from circuitray.outputs.aggregate import AggregateConfig, AggregateResult, aggregate_circuits
    from circuitray.prompts.files import read_prompts, write_prompts
    from circuitray.prompts.ws2 import generate_ws2
    from circuitray.query.compare import CompareConfig, compare_groups, compare_runs
    from circuitray.query.engine import connect, list_queries, run_queries, run_query, run_sql
    from circuitray.query.supernodes import read_supernodes
    from circuitray.storage.run_store import InterventionStore, RunStore
