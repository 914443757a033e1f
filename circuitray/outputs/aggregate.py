"""``circuitray aggregate``: the consensus circuit of each group of graphs, as tables
and as graphs the viewer opens.

1. Run the named queries ``consensus_nodes`` and ``consensus_edges`` in one DuckDB
   connection over the runs (their keys, ``consensus_keys``, computed once; a
   streaming GROUP BY over the edge tables): per group (run and value of the graphs
   column ``by``), nodes and edges with the share of the group's graphs holding them,
   mean influence and weight, spread. ``min_share`` and ``top_k`` (nodes) and
   ``edge_top_k`` keep each group's circuit readable; a supernode file collapses
   features into named nodes (:mod:`circuitray.query.supernodes`).
2. Keep an edge only where both its ends are kept nodes of its group.
3. Place every node on one token axis per group: positions from the end of the prompt
   become positions in a prompt as long as the group needs (a feature, supernode or
   error at the layer and position where it carries the most influence); each
   position's token is the kept token node there with the highest share.
4. Write ``nodes.parquet`` and ``edges.parquet`` (every kept row, with its group and
   its node id in the group's graph) for SQL, ``aggregate.json`` (what was asked, the
   groups and their sizes), and per group ``<slug>.json`` in circuit-tracer's graph
   format: nodes with their mean influence made cumulative as circuit-tracer's files
   have it, labels (``clerp``) ``[share] label`` from the runs' feature tables or the
   supernode's name, links weighted by the mean over the group's graphs (absent
   counts 0); each graph registered in ``graph-metadata.json``, so ``circuitray serve
   OUT`` opens them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from circuitray.errors import CircuitrayError
from circuitray.outputs.export import _finite, _write_atomic
from circuitray.outputs.viewer import SLUG

if TYPE_CHECKING:
    from circuit_tracer.frontend.graph_models import Model, Node

logger = logging.getLogger(__name__)

__all__ = ["AggregateConfig", "AggregateResult", "aggregate_circuits"]

FORMAT = "circuitray-aggregate/1"
# How consensus_nodes and consensus_edges identify a node (an edge's ends: src_, dst_).
CONSENSUS_KEY = ("node_type", "layer", "feature", "pos_from_end", "token", "supernode")


@dataclass(kw_only=True)
class AggregateConfig:
    """What ``circuitray aggregate`` aggregates, and where it writes.

    Attributes:
        runs: Run folders (or series folders) whose ok graphs are grouped.
        out: Output folder (local): tables, ``aggregate.json`` and one viewer graph per
            group. New, empty, or an earlier aggregate's (whose files are replaced);
            any other folder is refused.
        by: The ``graphs`` column whose values group the graphs (``constraint_type``,
            ``step``, ``run``, ``prompt_id``, ``target_token``, ...).
        min_share: Keep nodes and edges held by at least this share of a group's graphs.
        top_k: Per group, keep the k features, supernodes and error nodes of highest
            mean influence (token and logit nodes stay); 0 keeps all.
        edge_top_k: Per group, keep the k edges of largest absolute summed weight
            among those whose ends are kept nodes; 0 keeps all.
        supernodes: A grouping file (layer, feature -> name: CSV, Parquet or JSONL)
            whose groups become single nodes.
        memory_limit: DuckDB's memory limit for the aggregation (what does not fit
            spills to a temporary folder): memory stays about this high however many
            graphs the runs hold.
    """

    runs: list[str]
    out: str
    by: str = "constraint_type"
    min_share: float = 0.5
    top_k: int = 40
    edge_top_k: int = 0
    supernodes: str | None = None
    memory_limit: str = "1GB"

    def __post_init__(self) -> None:
        if not self.runs:
            raise CircuitrayError("aggregate: give at least one run folder")
        if not 0.0 <= self.min_share <= 1.0:
            raise CircuitrayError(f"--min-share {self.min_share}: a share in [0, 1]")
        if self.top_k < 0 or self.edge_top_k < 0:
            raise CircuitrayError("--top-k and --edge-top-k: 0 (all) or more")
        if "://" in self.out:
            raise CircuitrayError(f"{self.out}: aggregates are written to a local folder")


@dataclass
class AggregateResult:
    """What :func:`aggregate_circuits` wrote: per group its slug, graph count and kept
    node and edge counts."""

    out: str
    groups: list[dict] = field(default_factory=list)


def _slug(run: str, by: str, value: str) -> str:
    """A file name for a group's graph: readable, and unique by a hash of the group
    (values differing only in punctuation or past 120 characters read alike)."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", f"consensus-{run}-{by}-{value}")
    digest = hashlib.sha256(json.dumps([run, by, value]).encode()).hexdigest()[:8]
    return f"{text.strip('.-_')[:120]}-{digest}"


def _prepare_out(out: Path) -> None:
    """Make ``out`` ready: a new or empty folder, or one an earlier aggregate wrote,
    whose graphs and metadata are removed (the new groups may differ); any other
    folder is refused, so nothing of anyone else's is mixed in or overwritten."""
    if out.exists() and not out.is_dir():
        raise CircuitrayError(f"{out}: not a folder")
    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        return
    try:
        earlier = json.loads((out / "aggregate.json").read_text())
        if earlier.get("format") != FORMAT:
            raise ValueError(earlier.get("format"))
        slugs = [g["slug"] for g in earlier["groups"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise CircuitrayError(
            f"{out}: holds files but no earlier aggregate (aggregate.json); give an empty "
            "or new --out folder"
        ) from None
    for slug in slugs:
        if isinstance(slug, str) and SLUG.fullmatch(slug):
            (out / f"{slug}.json").unlink(missing_ok=True)
    (out / "graph-metadata.json").unlink(missing_ok=True)


def consensus_key(row: dict, prefix: str = "") -> tuple:
    """A node's key in a consensus_nodes row, or an edge end's (prefix ``src_`` or
    ``dst_``, whose type column is ``src_type``) in a consensus_edges row."""
    names = [("type" if prefix and k == "node_type" else k) for k in CONSENSUS_KEY]
    return tuple(row[f"{prefix}{k}"] for k in names)


def consensus_tokens(nodes: list[dict]) -> dict[int, str]:
    """Each position from the end of the prompt's token: the kept token node there with
    the highest share (the first of equals)."""
    best: dict[int, tuple[str, float]] = {}
    for n in nodes:
        if n["node_type"] == "token" and n["share"] > best.get(n["pos_from_end"], ("", -1.0))[1]:
            best[n["pos_from_end"]] = (n["token"] or "", n["share"])
    return {pos: token for pos, (token, _) in best.items()}


def _labels(runs: list[str], keys: set[tuple[int, int]]) -> dict[tuple[int, int], str]:
    """Labels of (layer, feature) from the runs' feature tables (the first that has
    one), through the ``features`` view."""
    if not keys:
        return {}
    from circuitray.query.engine import connect

    con = connect(runs)
    try:
        con.register(
            "_keys", pa.table({"layer": [k[0] for k in keys], "feature": [k[1] for k in keys]})
        )
        rows = con.execute(
            "SELECT f.layer, f.feature, any_value(f.label) FROM features f "
            "JOIN _keys k ON f.layer = k.layer AND f.feature = k.feature "
            "WHERE f.label IS NOT NULL AND f.label <> '' GROUP BY ALL"
        ).fetchall()
    finally:
        con.close()
    return {(layer, feature): label for layer, feature, label in rows}


def _cumulative_influence(nodes: list[dict]) -> dict[tuple, float]:
    """Each non-logit node's cumulative influence share, as circuit-tracer's viewer
    reads it (smaller is more important): the running sum of the mean influences in
    descending order over their total."""
    ranked = sorted(
        (n for n in nodes if n["node_type"] != "logit"), key=lambda n: -(n["influence"] or 0.0)
    )
    total = sum(max(n["influence"] or 0.0, 0.0) for n in ranked) or 1.0
    cumulative, running = {}, 0.0
    for n in ranked:
        running += max(n["influence"] or 0.0, 0.0)
        cumulative[consensus_key(n)] = min(running / total, 1.0)
    return cumulative


def _viewer_node(
    n: dict,
    *,
    last: int,
    influence: float,
    label: str | None,
    supernode_index: int,
    is_target: bool,
    n_layers: int,
) -> Node:
    """The viewer ``Node`` of one consensus node ``n`` (its kind's constructor; a
    feature's or supernode's label carries the share of graphs that hold it)."""
    from circuit_tracer.frontend.graph_models import Node

    kind, pos = n["node_type"], last + n["at_pos_from_end"]
    share = f"[{n['share']:.0%}]"
    if kind == "feature":
        node = Node.feature_node(
            n["layer"], pos, n["feature"], influence=influence, activation=n["mean_activation"]
        )
        node.clerp = f"{share} {label}" if label else share
        return node
    if kind == "supernode":
        return Node(
            node_id=f"{n['at_layer']}_S{supernode_index}_{pos}",
            feature=-1,
            layer=str(n["at_layer"]),
            ctx_idx=pos,
            feature_type="cross layer transcoder",
            influence=influence,
            activation=n["mean_activation"],
            clerp=f"{share} supernode {n['supernode']}",
        )
    if kind == "error":
        return Node.error_node(n["layer"], pos, influence=influence)
    if kind == "token":
        return Node.token_node(pos, n["token_id"] or 0, influence=influence)
    return Node.logit_node(
        pos=last,
        vocab_idx=n["token_id"] or 0,
        token=n["token"] or "",
        target_logit=is_target,
        token_prob=n["mean_logit_prob"] or 0.0,
        num_layers=n_layers,
    )


def _group_graph(
    nodes: list[dict], edges: list[dict], labels: dict, *, slug: str, prompt: str
) -> tuple[Model, dict[tuple, str]]:
    """circuit-tracer's frontend ``Model`` of one group's consensus circuit, and each
    node key's node id in it (module docstring, steps 3-4)."""
    from circuit_tracer.frontend.graph_models import Metadata, Model, QParams

    length = 1 - min((n["at_pos_from_end"] for n in nodes), default=0)
    last = length - 1
    tokens = [""] * length
    for pos_from_end, token in consensus_tokens(nodes).items():
        tokens[last + pos_from_end] = token
    cumulative = _cumulative_influence(nodes)
    logits = [n for n in nodes if n["node_type"] == "logit"]
    n_layers = max((n["at_layer"] for n in logits), default=0)
    target = max(logits, key=lambda n: n["share"] * (n["mean_logit_prob"] or 0.0), default=None)
    ids: dict[tuple, str] = {}
    out_nodes = []
    taken: set[str] = set()
    supernode_index = 0
    # Features first: an error node's id "0_<layer>_<pos>" can equal a layer-0
    # feature's "<layer>_<feature>_<pos>"; the feature keeps the id the viewer parses.
    for n in sorted(nodes, key=lambda n: n["node_type"] != "feature"):
        key = consensus_key(n)
        if n["node_type"] == "supernode":
            supernode_index += 1
        node = _viewer_node(
            n,
            last=last,
            influence=cumulative.get(key, 0.0),
            label=labels.get((n["layer"], n["feature"])) if n["node_type"] == "feature" else None,
            supernode_index=supernode_index,
            is_target=n is target,
            n_layers=n_layers,
        )
        if node.node_id in taken:  # circuit-tracer's error and feature ids can clash
            node.node_id = node.jsNodeId = f"{node.node_id}_{len(out_nodes)}"
        taken.add(node.node_id)
        ids[key] = node.node_id
        out_nodes.append(node)
    links = [
        {
            "source": ids[consensus_key(e, "src_")],
            "target": ids[consensus_key(e, "dst_")],
            "weight": e["sum_weight"] / e["n_graphs"],
        }
        for e in edges
    ]
    metadata = Metadata(
        slug=slug,
        scan="circuitray-consensus",
        transcoder_list=[],
        prompt_tokens=tokens,
        prompt=prompt,
        node_threshold=None,
    )
    qparams = QParams(pinnedIds=[], supernodes=[], linkType="both", clickedId="", sg_pos="")
    return Model(metadata=metadata, qParams=qparams, nodes=out_nodes, links=links), ids


def _by_group(
    tables: dict[str, pa.Table], *, top_k: int | None
) -> tuple[dict[tuple, list[dict]], dict[tuple, list[dict]]]:
    """The consensus nodes (the ``top_k`` most influential, if given) and edges of each
    (run, group value)."""
    nodes_by_group: dict[tuple, list[dict]] = {}
    for row in tables["consensus_nodes"].to_pylist():
        if top_k and row["influence_rank"] is not None and row["influence_rank"] > top_k:
            continue
        nodes_by_group.setdefault((row["run"], row["group_value"]), []).append(row)
    edges_by_group: dict[tuple, list[dict]] = {}
    for row in tables["consensus_edges"].to_pylist():
        edges_by_group.setdefault((row["run"], row["group_value"]), []).append(row)
    return nodes_by_group, edges_by_group


def _write_tables(
    out: Path, *, nodes: list[dict], edges: list[dict], tables: dict[str, pa.Table]
) -> None:
    """nodes.parquet and edges.parquet of every group: the consensus queries' columns
    plus each group's slug and the viewer's node ids, each file written whole, then
    renamed."""
    for name, rows, like in (
        ("nodes", nodes, tables["consensus_nodes"]),
        ("edges", edges, tables["consensus_edges"]),
    ):
        extra = ["slug", "node_id"] if name == "nodes" else ["slug", "src", "dst"]
        schema = like.schema
        for column in extra:
            schema = schema.append(pa.field(column, pa.string()))
        table = pa.Table.from_pylist(rows, schema=schema)
        tmp = out / f".{name}.parquet.tmp"
        pq.write_table(table, tmp)
        tmp.replace(out / f"{name}.parquet")


def aggregate_circuits(config: AggregateConfig) -> AggregateResult:
    """Aggregate ``config.runs`` into ``config.out`` (module docstring)."""
    from circuit_tracer.frontend.utils import add_graph_metadata

    from circuitray.query.engine import run_queries

    tables = run_queries(
        ["consensus_nodes", "consensus_edges"],
        config.runs,
        params={"by": config.by, "min_share": str(config.min_share)},
        supernodes=config.supernodes,
        memory_limit=config.memory_limit,
    )
    nodes_by_group, edges_by_group = _by_group(tables, top_k=config.top_k)
    if not nodes_by_group:
        raise CircuitrayError(
            f"aggregate: no ok graphs in {', '.join(config.runs)} (or none at share "
            f">= {config.min_share})"
        )
    labels = _labels(
        config.runs,
        {
            (n["layer"], n["feature"])
            for group in nodes_by_group.values()
            for n in group
            if n["node_type"] == "feature"
        },
    )
    out = Path(config.out)
    _prepare_out(out)
    result = AggregateResult(out=str(out))
    node_rows, edge_rows = [], []
    for (run, value), nodes in sorted(nodes_by_group.items()):
        kept = {consensus_key(n) for n in nodes}
        edges = [
            e
            for e in edges_by_group.get((run, value), [])  # strongest first (weight_rank)
            if consensus_key(e, "src_") in kept and consensus_key(e, "dst_") in kept
        ]
        edges.sort(key=lambda e: e["weight_rank"])
        if config.edge_top_k:
            edges = edges[: config.edge_top_k]
        slug = _slug(run, config.by, value)
        n_graphs = nodes[0]["n_graphs"]
        prompt = f"consensus of {n_graphs} graphs of {run}: {config.by} = {value}"
        model, ids = _group_graph(nodes, edges, labels, slug=slug, prompt=prompt)
        _write_atomic(out / f"{slug}.json", model.model_dump_json(indent=1))
        add_graph_metadata(model.metadata.model_dump(), str(out.resolve()))
        node_rows += [{**n, "slug": slug, "node_id": ids[consensus_key(n)]} for n in nodes]
        edge_rows += [
            {
                **e,
                "slug": slug,
                "src": ids[consensus_key(e, "src_")],
                "dst": ids[consensus_key(e, "dst_")],
            }
            for e in edges
        ]
        result.groups.append(
            {
                "run": run,
                "group_value": value,
                "slug": slug,
                "graphs": n_graphs,
                "nodes": len(nodes),
                "edges": len(edges),
            }
        )
    _write_tables(out, nodes=node_rows, edges=edge_rows, tables=tables)
    summary = {"format": FORMAT, "config": asdict(config), "groups": result.groups}
    _write_atomic(out / "aggregate.json", json.dumps(_finite(summary), indent=1))
    logger.info("aggregated %d groups into %s", len(result.groups), out)
    return result
