"""The Ray actors that own one loaded ReplacementModel.

Both load the model once (:class:`ModelWorker`), then process batches of prompts and
write each batch as one part of their folder themselves, returning only a small
summary per prompt; the driver only sees ids, statuses and timings.

- :class:`AttributionWorker` attributes every prompt (:func:`attribute_prompt`) and
  writes graphs, nodes and edges to the run folder. Graphs and dense matrices never
  enter Ray's object store. The prompts the run samples for ``--verify-precision``
  are also attributed in float32 (:func:`circuitray.graph.precision.attribute_checked`)
  by a second model that a worker loads when it first gets one of them.
- :class:`InterventionWorker` reads each prompt's stored graph, applies the planned
  feature interventions (:func:`circuitray.graph.interventions.intervene_prompt`) and writes
  result rows to the intervention folder.

torch, circuit-tracer and the attribution code are imported where an actor first uses
them, in the actor's process: a driver wraps these classes with ``ray.remote`` without
importing torch (about 2.4 CPU-seconds a driver process).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

import pyarrow as pa

from circuitray.errors import StaleSessionError
from circuitray.models.loading import ModelSpec, load_replacement_model
from circuitray.schema import EDGE_SCHEMA, GRAPH_SCHEMA, NODE_SCHEMA, RESULT_SCHEMA, SUMMARY_FIELDS
from circuitray.storage.run_store import InterventionStore, PartStore, RunStore

if TYPE_CHECKING:
    from circuitray.graph.config import AttributionConfig, PruneConfig
    from circuitray.graph.intervention_plan import InterventionPlan

logger = logging.getLogger(__name__)


class ModelWorker:
    """Loads one ReplacementModel and guards the folder it writes to.

    Plain class: :func:`circuitray.jobs.dispatch.dispatch` wraps a subclass with
    ``ray.remote`` and the placement options of the run, and tests can also use it
    in-process.
    """

    store_cls: type[PartStore] = RunStore

    def __init__(
        self,
        *,
        model: ModelSpec,
        run_dir: str,
        torch_threads: int | None = None,
        session: str | None = None,
    ):
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.store = self.store_cls(run_dir)
        self.session = session
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        # A failed load is kept and raised from info(): an exception in an actor's
        # constructor reaches the driver as ActorDiedError, without the cause.
        self.load_error: Exception | None = None
        try:
            self.model = load_replacement_model(model)
        except Exception as e:  # noqa: BLE001 - re-raised from info()
            self.load_error = e

    def info(self) -> dict:
        """Where this worker runs: host, pid, device, GPUs Ray gave it, torch threads."""
        if self.load_error is not None:
            raise self.load_error
        gpu_ids: list = []
        node_id = None
        try:
            import ray

            if ray.is_initialized():
                gpu_ids = list(ray.get_gpu_ids())
                node_id = ray.get_runtime_context().get_node_id()
        except Exception:  # noqa: BLE001 - info only
            pass
        import torch

        return {
            "worker": self.name,
            "node_id": node_id,
            "device": str(self.model.device),
            "gpu_ids": gpu_ids,
            "torch_threads": torch.get_num_threads(),
        }

    def check_session(self) -> None:
        """Refuse to write when another driver session has taken the folder (saves the
        work; the fence in manifest.json is what keeps a late write invisible)."""
        if self.session is not None:
            current = self.store.current_session()
            if current != self.session:
                raise StaleSessionError(
                    f"folder now belongs to driver session {current}, not {self.session}"
                )


class AttributionWorker(ModelWorker):
    """Turns prompt batches into run-folder parts (graphs, nodes, edges).

    ``verify_precision``: the graph ids also attributed in float32 and compared (the
    run's sample); the float32 model is loaded, through the same loader, on the first
    of them this worker gets, and kept for the others.
    """

    def __init__(
        self,
        *,
        model: ModelSpec,
        attribution: AttributionConfig,
        prune: PruneConfig,
        run_dir: str,
        torch_threads: int | None = None,
        session: str | None = None,
        verify_precision: Iterable[int] = (),
    ):
        super().__init__(model=model, run_dir=run_dir, torch_threads=torch_threads, session=session)
        self.attribution = attribution
        self.prune = prune
        self.spec = model
        self.verify = frozenset(verify_precision)
        self._reference = None
        self._reference_error: str | None = None

    def reference_model(self):
        """The float32 ReplacementModel of this worker's spec (loaded once); None, with
        a warning once, when it cannot be loaded: those graphs stay unchecked."""
        if self._reference is None and self._reference_error is None:
            try:
                self._reference = load_replacement_model(replace(self.spec, dtype="float32"))
            except Exception as e:  # noqa: BLE001 - the run goes on unchecked
                self._reference_error = str(e).strip().splitlines()[0] if str(e) else repr(e)
                logger.warning("float32 model for --verify-precision: %s", self._reference_error)
        return self._reference

    def process(self, part_name: str, items: list[tuple[int, dict]]) -> list[dict]:
        """Attribute ``items`` ((graph_id, prompt row) pairs) and write part ``part_name``."""
        from circuitray.graph.attribute import attribute_prompt
        from circuitray.graph.precision import attribute_checked

        rows, nodes, edges = [], [], []
        for graph_id, prompt in items:
            args = {
                "graph_id": graph_id,
                "attribution": self.attribution,
                "prune": self.prune,
                "worker": self.name,
            }
            reference = self.reference_model() if graph_id in self.verify else None
            if reference is not None:
                row, n, e = attribute_checked(self.model, reference, prompt, **args)
            else:
                row, n, e = attribute_prompt(self.model, prompt, **args)
            rows.append(row)
            nodes.append(n)
            edges.append(e)
        self.check_session()
        self.store.write_part(
            part_name,
            {
                "graphs": pa.Table.from_pylist(rows, schema=GRAPH_SCHEMA),
                "nodes": pa.concat_tables(nodes) if nodes else NODE_SCHEMA.empty_table(),
                "edges": pa.concat_tables(edges) if edges else EDGE_SCHEMA.empty_table(),
            },
        )
        return [{k: r[k] for k in SUMMARY_FIELDS} for r in rows]


class InterventionWorker(ModelWorker):
    """Turns prompt batches into intervention-folder parts (one ``results`` table)."""

    store_cls = InterventionStore

    def __init__(
        self,
        *,
        model: ModelSpec,
        plan: InterventionPlan,
        source_run: str,
        run_dir: str,
        torch_threads: int | None = None,
        session: str | None = None,
    ):
        super().__init__(model=model, run_dir=run_dir, torch_threads=torch_threads, session=session)
        self.plan = plan
        self.source = RunStore(source_run)

    def process(self, part_name: str, items: list[tuple[int, dict]]) -> list[dict]:
        """Intervene on ``items`` ((graph_id, graphs row) pairs); write part ``part_name``."""
        from circuitray.graph.interventions import intervene_prompt, read_stored_graphs

        graphs = read_stored_graphs(self.source, [gid for gid, _ in items])
        rows: list[dict] = []
        summaries: list[dict] = []
        for graph_id, graph in items:
            t0 = time.perf_counter()
            out = intervene_prompt(
                self.model, graph, stored=graphs.get(graph_id), plan=self.plan, worker=self.name
            )
            rows += out
            errors = [r["error"] for r in out if r["status"] == "error"]
            summaries.append(
                {
                    "graph_id": graph_id,
                    "prompt_id": graph["prompt_id"],
                    "status": "error" if errors else "ok",
                    "error": errors[0] if errors else None,
                    "n_results": len(out),
                    "total_s": time.perf_counter() - t0,
                    "worker": self.name,
                }
            )
        self.check_session()
        self.store.write_part(
            part_name, {"results": pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)}
        )
        return summaries
