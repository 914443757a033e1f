"""The Ray actor that owns one loaded ReplacementModel.

An :class:`AttributionWorker` loads the model once, then processes batches of prompts:
for each batch it attributes every prompt (:func:`attribute_prompt`), writes the
batch's graphs, nodes and edges as one part of the run folder itself, and returns
only a small summary per prompt. Graphs and dense matrices never enter Ray's object
store; the driver only sees ids, statuses and timings.
"""

from __future__ import annotations

import logging
import os
import socket

import pyarrow as pa
import torch

from circuitray.attribution import GRAPH_SCHEMA, AttributionConfig, attribute_prompt
from circuitray.flatten import EDGE_SCHEMA, NODE_SCHEMA, PruneConfig
from circuitray.models.loading import ModelSpec, load_replacement_model
from circuitray.store import RunStore

logger = logging.getLogger(__name__)


class StaleSessionError(RuntimeError):
    """This worker's driver no longer owns the run folder: its results are dropped."""


SUMMARY_FIELDS = (
    "graph_id",
    "prompt_id",
    "status",
    "error",
    "n_kept_edges",
    "total_s",
    "worker",
)


class AttributionWorker:
    """Holds one ReplacementModel and turns prompt batches into run-folder parts.

    Plain class: :func:`circuitray.driver.run` wraps it with ``ray.remote`` and the
    placement options of the run, and tests can also use it in-process.
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
    ):
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.attribution = attribution
        self.prune = prune
        self.store = RunStore(run_dir)
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
        return {
            "worker": self.name,
            "node_id": node_id,
            "device": str(self.model.device),
            "gpu_ids": gpu_ids,
            "torch_threads": torch.get_num_threads(),
        }

    def process(self, part_name: str, items: list[tuple[int, dict]]) -> list[dict]:
        """Attribute ``items`` ((graph_id, prompt row) pairs) and write part ``part_name``."""
        rows, nodes, edges = [], [], []
        for graph_id, prompt in items:
            row, n, e = attribute_prompt(
                self.model,
                prompt,
                graph_id=graph_id,
                attribution=self.attribution,
                prune=self.prune,
                worker=self.name,
            )
            rows.append(row)
            nodes.append(n)
            edges.append(e)
        if self.session is not None:
            current = self.store.read_meta().get("session")
            if current != self.session:
                raise StaleSessionError(
                    f"run folder now belongs to driver session {current}, not {self.session}"
                )
        self.store.write_part(
            part_name,
            {
                "graphs": pa.Table.from_pylist(rows, schema=GRAPH_SCHEMA),
                "nodes": pa.concat_tables(nodes) if nodes else NODE_SCHEMA.empty_table(),
                "edges": pa.concat_tables(edges) if edges else EDGE_SCHEMA.empty_table(),
            },
        )
        return [{k: r[k] for k in SUMMARY_FIELDS} for r in rows]
