"""The synthetic attribution actor of ``circuitray bench scale`` (:mod:`circuitray.bench.scale`).

:class:`SyntheticWorker` has :class:`circuitray.jobs.workers.AttributionWorker`'s
interface, which is what :func:`circuitray.jobs.dispatch.dispatch` calls: keyword
arguments plus ``session`` and ``torch_threads``, ``info()``, and
``process(part_name, items) -> summaries``, which checks that the folder still belongs
to its driver session and writes the batch as one part through
``RunStore.write_part`` (edges, nodes, then the graphs commit point), tables of the
real schemas. No model runs: each prompt's graph is a renumbered copy of one of a few
graphs made by :mod:`circuitray.bench.synthetic`'s generator (:class:`GraphShape`).

Its own module, importing neither torch nor the model code, so that an actor starts in
the time Ray takes (the benchmark starts new ones at every size).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from circuitray.errors import StaleSessionError
from circuitray.schema import GRAPH_SCHEMA, SUMMARY_FIELDS, graph_row
from circuitray.storage.run_store import RunStore

__all__ = ["GraphShape", "SyntheticWorker"]


@dataclass(frozen=True, kw_only=True)
class GraphShape:
    """The synthetic graphs the workers write (small: per-prompt costs of the machinery).

    Attributes:
        nodes: Kept nodes per graph (tokens, logits, errors, features).
        edges: Kept edges per graph.
        layers: Transcoder layers.
        tokens: Prompt length (token nodes).
        logits: Logit nodes per graph.
        templates: Distinct graphs generated per actor; prompt ``graph_id`` gets
            template ``graph_id % templates``, renumbered.
        seed: Seed of the generator.
    """

    nodes: int = 12
    edges: int = 24
    layers: int = 4
    tokens: int = 4
    logits: int = 2
    templates: int = 8
    seed: int = 0


def _stack(tables: list[pa.Table]) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """The tables one after another, with each one's first row and row count."""
    sizes = np.array([t.num_rows for t in tables], dtype=np.int64)
    return pa.concat_tables(tables), np.cumsum(sizes) - sizes, sizes


def _renumbered(
    stacked: pa.Table, starts: np.ndarray, sizes: np.ndarray, which: np.ndarray, gids: np.ndarray
) -> pa.Table:
    """The rows of template ``which[i]`` for every graph ``gids[i]``, in order, with
    their graph_id set (one ``take``, no loop over graphs)."""
    lens = sizes[which]
    ends = np.cumsum(lens)
    total = int(ends[-1]) if len(ends) else 0
    index = np.repeat(starts[which] - (ends - lens), lens) + np.arange(total)
    out = stacked.take(pa.array(index))
    col = out.schema.get_field_index("graph_id")
    return out.set_column(col, "graph_id", pa.array(np.repeat(gids, lens).astype(np.int32)))


class SyntheticWorker:
    """AttributionWorker's interface and write path with synthetic graphs (module doc).

    Plain class, like the real workers: dispatch wraps it with ``ray.remote``.
    """

    store_cls: type[RunStore] = RunStore

    def __init__(
        self,
        *,
        shape: dict,
        run_dir: str,
        torch_threads: int | None = None,
        session: str | None = None,
    ):
        from circuitray.bench.synthetic import (
            CONSTRAINT_TYPES,
            SyntheticSpec,
            _graph_tables,
            _type_pools,
        )

        del torch_threads  # nothing here runs torch
        self.store = self.store_cls(run_dir)
        self.session = session
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        g = GraphShape(**shape)
        spec = SyntheticSpec(
            edges=g.edges * g.templates,
            edges_per_graph=g.edges,
            nodes_per_graph=g.nodes,
            n_layers=g.layers,
            d_transcoder=512,
            n_tokens=g.tokens,
            n_logits=g.logits,
            pool_size=64,
            seed=g.seed,
        )
        rng = np.random.default_rng(g.seed)
        pools = _type_pools(spec, rng)
        nodes, edges = [], []
        self.fields: list[dict] = []
        # What attribution measures; a prompt's own columns come from its row.
        prompt_columns = {"graph_id", "prompt_id", "constraint_type", "prompt", "target", "worker"}
        for t in range(g.templates):
            kind = t % len(CONSTRAINT_TYPES)
            n, e, row = _graph_tables(
                spec,
                rng,
                graph_id=0,
                n_edges=g.edges,
                n_nodes=g.nodes,
                type_index=kind,
                pool=pools[kind],
            )
            nodes.append(n)
            edges.append(e)
            self.fields.append({k: v for k, v in row.items() if k not in prompt_columns})
        self.nodes = _stack(nodes)
        self.edges = _stack(edges)

    def info(self) -> dict:
        """Where this worker runs (the keys of ModelWorker.info)."""
        import ray

        node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        return {
            "worker": self.name,
            "node_id": node_id,
            "device": "synthetic",
            "gpu_ids": [],
            "torch_threads": None,
        }

    def check_session(self) -> None:
        """ModelWorker.check_session: refuse to write once another driver session has
        taken the folder."""
        if self.session is not None:
            current = self.store.current_session()
            if current != self.session:
                raise StaleSessionError(
                    f"folder now belongs to driver session {current}, not {self.session}"
                )

    def process(self, part_name: str, items: list[tuple[int, dict]]) -> list[dict]:
        """Write ``items`` ((graph_id, prompt row) pairs) as part ``part_name``."""
        t0 = time.perf_counter()
        gids = np.array([gid for gid, _ in items], dtype=np.int64)
        which = gids % len(self.fields)
        rows = [
            graph_row(gid, prompt, **self.fields[w], worker=self.name)
            for (gid, prompt), w in zip(items, which.tolist(), strict=True)
        ]
        tables = {
            "graphs": pa.Table.from_pylist(rows, schema=GRAPH_SCHEMA),
            "nodes": _renumbered(*self.nodes, which, gids),
            "edges": _renumbered(*self.edges, which, gids),
        }
        self.check_session()
        self.store.write_part(part_name, tables)
        each = (time.perf_counter() - t0) / max(1, len(rows))
        return [{**{k: r[k] for k in SUMMARY_FIELDS}, "total_s": each} for r in rows]
