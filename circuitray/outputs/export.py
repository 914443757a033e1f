"""Export a stored graph to circuit-tracer's graph-viewer JSON, and serve it locally.

A graph found with SQL opens in a viewer (circuitray's offline viewer, or anything
that reads circuit-tracer's and Neuronpedia's format) without recomputing it:

1. Read the graph's row, kept nodes and kept edges from the run folder (a pyarrow
   dataset scan filtered on ``graph_id``).
2. Build circuit-tracer's own pydantic ``Node`` objects (``feature_node``,
   ``error_node``, ``token_node``, ``logit_node``) in node-index order, with the
   stored cumulative influence and activation, exactly as ``create_graph_files`` does
   from a Graph and ``prune_graph``'s masks; the first logit (the most probable) is
   the target logit.
3. Links are the stored edges in (target, source) order, weight as stored; nodes
   without a link are dropped, tokens and logits kept (``create_used_nodes_and_edges``).
4. Feature nodes carry their label in circuit-tracer's (and Neuronpedia's) ``clerp``
   field, from the feature table of the run's transcoders
   (:mod:`circuitray.features.store`); ``<slug>.features.json`` beside the graph holds
   those features' rows (label, source, statistics, top examples) for the viewer.
5. Write ``<slug>.json`` with circuit-tracer's ``Model`` and add it to the folder's
   ``graph-metadata.json`` with circuit-tracer's ``add_graph_metadata`` (its entry
   names the features file under ``features``).
6. :func:`circuitray.outputs.viewer.serve` shows the folder in circuitray's viewer.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds

from circuitray.errors import CircuitrayError
from circuitray.features.store import run_features_path, run_transcoders
from circuitray.outputs.viewer import SLUG
from circuitray.storage.run_store import RunStore

logger = logging.getLogger(__name__)

__all__ = ["export_graph"]


def _graph_tables(store: RunStore, graph_id: int) -> tuple[dict, list[dict], list[dict]]:
    sel = ds.field("graph_id") == graph_id
    tables = {}
    for name in ("graphs", "nodes", "edges"):
        dataset = store.dataset(name)
        tables[name] = dataset.to_table(filter=sel).to_pylist() if dataset else []
    if not tables["graphs"]:
        raise CircuitrayError(f"{store.root}: no graph with graph_id {graph_id}")
    row = tables["graphs"][0]
    if row["status"] != "ok":
        raise CircuitrayError(
            f"{store.root}: graph {graph_id} failed ({row['error']}); nothing to export"
        )
    nodes = sorted(tables["nodes"], key=lambda n: n["node_id"])
    edges = sorted(tables["edges"], key=lambda e: (e["dst"], e["src"]))
    return row, nodes, edges


def graph_features(meta: dict, nodes: list[dict]) -> dict[tuple[int, int], dict]:
    """The feature-table rows of a graph's feature nodes, by (layer, feature), from the
    table of the transcoders ``meta`` (run.json) records; empty when it has none."""
    path = run_features_path(meta)
    keys = {(n["layer"], n["feature"]) for n in nodes if n["node_type"] == "feature"}
    if path is None or not keys:
        return {}
    layers = sorted({layer for layer, _ in keys})
    table = ds.dataset(path).to_table(filter=pc.field("layer").isin(layers))
    return {
        (r["layer"], r["feature"]): r
        for r in table.to_pylist()
        if (r["layer"], r["feature"]) in keys
    }


def build_graph_model(store: RunStore, graph_id: int, *, slug: str):
    """circuit-tracer's frontend ``Model`` for a stored graph (see module docstring),
    and the feature-table rows of its features (:func:`graph_features`), whose labels
    fill the feature nodes' ``clerp``."""
    from circuit_tracer.frontend.graph_models import Metadata, Model, Node, QParams

    row, nodes, edges = _graph_tables(store, graph_id)
    features = graph_features(store.read_meta(), nodes)
    # Logit nodes carry no influence in circuit-tracer's files (graphs imported from
    # them have none); every other node needs it.
    if any(n.get("cumulative_influence") is None for n in nodes if n["node_type"] != "logit"):
        raise CircuitrayError(
            f"{store.root}: graph {graph_id} has no cumulative_influence (a run made by an "
            "older circuitray); recompute it to export"
        )
    meta = store.read_meta()
    logits = [n for n in nodes if n["node_type"] == "logit"]
    first_logit = min(n["node_id"] for n in logits)
    n_layers = logits[0]["layer"]
    by_id = {}
    for n in nodes:
        kind = n["node_type"]
        if kind == "feature":
            node = Node.feature_node(
                n["layer"],
                n["pos"],
                n["feature"],
                influence=n["cumulative_influence"],
                activation=n["activation"],
            )
            label = features.get((n["layer"], n["feature"]), {}).get("label")
            if label:
                node.clerp = label
        elif kind == "error":
            node = Node.error_node(n["layer"], n["pos"], influence=n["cumulative_influence"])
        elif kind == "token":
            node = Node.token_node(n["pos"], n["token_id"], influence=n["cumulative_influence"])
        else:
            node = Node.logit_node(
                pos=n["pos"],
                vocab_idx=n["token_id"],
                token=n["token"],
                target_logit=n["node_id"] == first_logit,
                token_prob=n["logit_prob"],
                num_layers=n_layers,
            )
        by_id[n["node_id"]] = node
    links = [
        {
            "source": by_id[e["src"]].node_id,
            "target": by_id[e["dst"]].node_id,
            "weight": e["weight"],
        }
        for e in edges
        if e["src"] in by_id and e["dst"] in by_id
    ]
    connected = {link["source"] for link in links} | {link["target"] for link in links}
    used = [
        node
        for node in by_id.values()
        if node.node_id in connected or node.feature_type in ("embedding", "logit")
    ]
    tokens = sorted((n for n in nodes if n["node_type"] == "token"), key=lambda n: n["pos"])
    scan = meta.get("scan") or meta.get("model", {}).get("transcoders") or "circuitray"
    metadata = Metadata(
        slug=slug,
        scan=scan,
        transcoder_list=[],
        prompt_tokens=[n["token"] or str(n["token_id"]) for n in tokens],
        prompt=row["prompt"],
        node_threshold=(meta.get("prune") or {}).get("node_threshold"),
    )
    qparams = QParams(pinnedIds=[], supernodes=[], linkType="both", clickedId="", sg_pos="")
    return Model(metadata=metadata, qParams=qparams, nodes=used, links=links), features


def _finite(value):
    """``value`` with NaN and infinities as None: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _write_atomic(path: Path, text: str) -> None:
    """A fresh temp file of our own (a planted name could be a link), renamed into
    place: atomic, so the viewer never reads half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # as open() would: readable by whoever serves the folder
    os.replace(tmp, path)


def export_graph(run_dir: str, graph_id: int, out_dir: str, *, slug: str | None = None) -> Path:
    """Write graph ``graph_id`` of ``run_dir`` as ``<out_dir>/<slug>.json`` in
    circuit-tracer's frontend format and register it in ``graph-metadata.json``."""
    from circuit_tracer.frontend.utils import add_graph_metadata

    store = RunStore(run_dir)
    if not store.exists():
        raise CircuitrayError(f"{run_dir}: not a circuitray run folder (no run.json)")
    store.check_confined()
    if slug is not None and (not SLUG.fullmatch(slug) or slug.endswith(".features")):
        raise CircuitrayError(
            f"--slug {slug!r}: letters, digits, '.', '_' and '-' only (it names a file), "
            "not ending in .features (a graph's features file)"
        )
    default = f"{Path(str(run_dir).rstrip('/')).name}-g{graph_id}"
    slug = slug or re.sub(r"[^A-Za-z0-9._-]", "-", default).lstrip(".-_") or f"g{graph_id}"
    model, features = build_graph_model(store, graph_id, slug=slug)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{slug}.json"
    _write_atomic(path, model.model_dump_json(indent=2))
    entry = model.metadata.model_dump()
    if features:
        sidecar = {
            "format": "circuitray-features/1",
            "transcoders": run_transcoders(store.read_meta()),
            "features": {f"{layer}/{feature}": r for (layer, feature), r in features.items()},
        }
        _write_atomic(out / f"{slug}.features.json", json.dumps(_finite(sidecar), indent=1))
        entry["features"] = f"{slug}.features.json"
    add_graph_metadata(entry, str(out.resolve()))  # it needs a folder name in the path
    logger.info("exported graph %d of %s to %s", graph_id, run_dir, path)
    return path
