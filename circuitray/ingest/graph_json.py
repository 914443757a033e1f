"""Reading an attribution graph made elsewhere: circuit-tracer's graph JSON, the format
its ``create_graph_files`` writes and Neuronpedia serves (``metadata``, ``qParams``,
``nodes``, ``links``), as circuitray's nodes, edges and graphs rows.

The file is data from strangers: it is parsed with :mod:`json` (nothing in it is
executed), no path or address in it is opened or fetched, and it is checked whole
before anything is written:

1. Refuse a file over ``max_bytes``, one that is not UTF-8 JSON (truncated included)
   or whose top level is not an object with ``metadata`` (an object), ``nodes`` and
   ``links`` (lists). Numbers must be finite; integers must fit their columns.
2. Each node becomes a key (type, layer, position, feature) from its fields, never
   from its id string alone: circuit-tracer writes an error node's id as
   ``0_<layer>_<pos>``, which a layer-0 feature's ``<layer>_<feature>_<pos>`` can
   equal. Feature nodes (``cross layer transcoder``, ``per layer transcoder``) take
   their feature index from the id (``<layer>_<feature>_<pos>``) and must agree with
   the ``feature`` field, circuit-tracer's Cantor pairing of layer and feature (raw
   indices are taken as they are); error nodes take ``layer`` and ``ctx_idx``;
   embedding nodes (``E_<token id>_<pos>``) are circuitray's token nodes (layer -1,
   the token text from ``prompt_tokens``); logit nodes (layer = layers + 1 in the
   file) get layer = the model's layer count, as circuitray's do, their token id from
   ``feature`` and their token text from the ``Output "..."`` label.
3. Node ids in the file must be unique, each link's source and target must be nodes
   of the file, a (source, target) pair may appear once, weights must be finite and
   the links acyclic; strings must be UTF-8 and bounded, and the file's settings and
   viewer state flat (what run.json keeps of them is checked like the rest).
4. circuitray's integer node ids follow circuit-tracer's layout over the nodes the
   file kept: features by (layer, position, feature), then errors by (layer,
   position), tokens by position, logits with the target logit first, then by
   probability. (The file holds the pruned graph only, so these are not indices into
   an unpruned graph.) The JSON's ``influence`` is circuit-tracer's cumulative
   influence (``cumulative_influence``); a node's ``influence`` is its share of the
   total derived from it (:func:`_derive_influence`). Links form no cycle.
5. What the file knows beyond the tables is kept: the prompt and tokens, model
   (``scan``), transcoder set, generator and version, thresholds and generation
   settings, ``clerp`` labels, and the viewer state (``qParams``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa

from circuitray.errors import CircuitrayError
from circuitray.schema import EDGE_SCHEMA, GRAPH_SCHEMA, NODE_SCHEMA

__all__ = ["GraphJsonError", "ImportedGraph", "MAX_BYTES", "read_graph_json"]

MAX_BYTES = 512 * 2**20  # larger files are refused before they are read
FEATURE_TYPES = {"cross layer transcoder", "per layer transcoder"}
KINDS = {
    **dict.fromkeys(FEATURE_TYPES, "feature"),
    "mlp reconstruction error": "error",
    "embedding": "token",
    "logit": "logit",
}
KIND_ORDER = {"feature": 0, "error": 1, "token": 2, "logit": 3}
INT16 = (-(2**15), 2**15 - 1)
INT32 = (-(2**31), 2**31 - 1)
LOGIT_LABEL = re.compile(r'Output "(?P<token>.*)" \(p=[^)]*\)', re.S)
# Identifiers (node ids, the slug) are names, never paths or markup: refused otherwise.
# Labels, prompts and tokens are text, kept as they are (outputs escape them).
NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


class GraphJsonError(CircuitrayError):
    """A graph JSON file circuitray cannot import, with the file and place named."""


@dataclass
class ImportedGraph:
    """One graph file read and checked: circuitray rows without a graph_id yet.

    Attributes:
        path: The file.
        sha256: Its SHA-256 (what makes a second import of it add nothing).
        size: Its size in bytes.
        source: What the file says about itself (slug, scan, transcoder set,
            generator, thresholds, settings, viewer state) for run.json.
        graph: The graphs row's fields.
        nodes: NODE_SCHEMA rows (graph_id left out).
        edges: EDGE_SCHEMA rows (graph_id left out).
        labels: ``clerp`` labels by circuitray node id.
    """

    path: str
    sha256: str
    size: int
    source: dict[str, Any]
    graph: dict[str, Any]
    nodes: list[dict[str, Any]] = field(default_factory=list)
    edges: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[int, str] = field(default_factory=dict)

    def tables(self, graph_id: int) -> tuple[pa.Table, pa.Table]:
        """(nodes, edges) as Arrow tables of ``graph_id``, sorted by their keys."""
        nodes = pa.Table.from_pylist(
            [{"graph_id": graph_id, **n} for n in self.nodes], schema=NODE_SCHEMA
        )
        edges = pa.Table.from_pylist(
            [{"graph_id": graph_id, **e} for e in self.edges], schema=EDGE_SCHEMA
        )
        return nodes, edges


def _uncantor(z: int) -> tuple[int, int]:
    """The (x, y) of circuit-tracer's Cantor pairing ``(x + y)(x + y + 1) / 2 + y``."""
    w = (math.isqrt(8 * z + 1) - 1) // 2
    y = z - w * (w + 1) // 2
    return w - y, y


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


class _Checker:
    """Field checks that raise one line naming the file, the row and the field."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, where: str, problem: str) -> GraphJsonError:
        return GraphJsonError(f"{self.path}: {where}: {problem}")

    def obj(self, value: Any, where: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(where, f"must be an object, not {type(value).__name__}")
        return value

    def string(
        self, row: dict, key: str, where: str, *, optional: bool = False, limit: int = 100_000
    ) -> str | None:
        value = row.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise self.fail(where, f"{key} must be a string, not {type(value).__name__}")
        return self.text(value, f"{where}.{key}", limit)

    def text(self, value: str, where: str, limit: int = 100_000) -> str:
        """A string Parquet and JSON can hold: UTF-8 (no lone surrogates), bounded."""
        if len(value) > limit:
            raise self.fail(where, f"{len(value):,} characters, more than {limit:,}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise self.fail(where, f"not UTF-8 text (character {e.start})") from None
        return value

    def flag(self, row: dict, key: str, where: str) -> bool:
        value = row.get(key, False)
        if not isinstance(value, bool):
            raise self.fail(where, f"{key} must be true or false, not {value!r}"[:300])
        return value

    def settings(self, value: Any, where: str) -> dict | None:
        """A flat object of scalars (thresholds, settings), or None."""
        if value is None:
            return None
        value = self.obj(value, where)
        if len(value) > 64:
            raise self.fail(where, f"{len(value)} fields, more than 64")
        for k, v in value.items():
            self.text(k, where, 200)
            if isinstance(v, str):
                self.text(v, f"{where}.{k}", 1000)
            elif v is not None and not isinstance(v, bool | int | float):
                raise self.fail(where, f"{k} must be a number, string or bool")
        return value

    def viewer_state(self, value: Any) -> dict | None:
        """circuit-tracer's QParams: pinned ids, supernodes (lists of names), strings."""
        if value is None:
            return None
        value = self.obj(value, "qParams")
        out: dict[str, Any] = {}
        for key in ("linkType", "clickedId", "sg_pos"):
            if value.get(key) is not None:
                out[key] = self.string(value, key, "qParams", limit=1000)
        pinned = value.get("pinnedIds", [])
        if not isinstance(pinned, list) or len(pinned) > 10_000:
            raise self.fail("qParams", "pinnedIds must be a list of at most 10,000 ids")
        out["pinnedIds"] = [
            self.text(self._str(x, "qParams.pinnedIds"), "qParams", 200) for x in pinned
        ]
        supernodes = value.get("supernodes", [])
        if not isinstance(supernodes, list) or len(supernodes) > 10_000:
            raise self.fail("qParams", "supernodes must be a list of at most 10,000 groups")
        out["supernodes"] = []
        for i, group in enumerate(supernodes):
            if not isinstance(group, list) or len(group) > 10_000:
                raise self.fail(f"qParams.supernodes[{i}]", "must be a list of names and ids")
            out["supernodes"].append(
                [
                    self.text(self._str(x, f"qParams.supernodes[{i}]"), "qParams", 1000)
                    for x in group
                ]
            )
        return out

    def _str(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise self.fail(where, f"must hold strings, not {type(value).__name__}")
        return value

    def integer(self, value: Any, key: str, where: str, bounds=INT32) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f"{key} must be an integer, not {value!r}"[:300])
        if not bounds[0] <= value <= bounds[1]:
            raise self.fail(where, f"{key} {value} is out of range")
        return value

    def number(self, row: dict, key: str, where: str) -> float | None:
        value = row.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(where, f"{key} must be a number, not {value!r}"[:300])
        value = float(value)
        if not math.isfinite(value) or abs(value) > 3.4e38:  # float32 columns
            raise self.fail(where, f"{key} {value} is not a finite float32")
        return value

    def layer(self, row: dict, where: str) -> int:
        value = row.get("layer")
        if isinstance(value, str) and re.fullmatch(r"\d{1,6}", value):
            value = int(value)
        return self.integer(value, "layer", where, (0, INT16[1]))


def _load(path: Path, max_bytes: int) -> tuple[dict, bytes]:
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise GraphJsonError(
                f"{path}: {size:,} bytes, more than the {max_bytes:,} a graph file may have"
            )
        data = path.read_bytes()
    except OSError as e:
        raise GraphJsonError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as e:
        raise GraphJsonError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise GraphJsonError(
            f"{path}: not JSON, or truncated (line {e.lineno}, column {e.colno}: {e.msg})"
        ) from None
    except (ValueError, RecursionError) as e:
        raise GraphJsonError(f"{path}: not a graph file ({str(e)[:200]})") from None
    return doc, data


def read_graph_json(path: str | Path, *, max_bytes: int = MAX_BYTES) -> ImportedGraph:
    """Read and check one graph JSON file (module docstring); raises
    :class:`GraphJsonError` naming the first problem."""
    path = Path(path)
    doc, data = _load(path, max_bytes)
    checker = _Checker(str(path))
    header = _read_header(doc, path=path, checker=checker)
    found = _read_nodes(doc["nodes"], path=path, checker=checker, tokens=header.tokens)
    nodes = _number_nodes(found)
    edges = _read_links(doc["links"], checker=checker, nodes=nodes)
    _check_acyclic(checker, len(nodes.rows), edges)
    _derive_influence(nodes.rows)
    graph = _graph_row(header, path=path, nodes=nodes.rows, n_edges=len(edges))
    imported = ImportedGraph(
        path=str(path),
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        source=_source(doc, header=header, path=path, checker=checker, n_layers=found.n_layers),
        graph=graph,
        nodes=nodes.rows,
        edges=sorted(edges.values(), key=lambda e: (e["dst"], e["src"])),
        labels=nodes.labels,
    )
    _check_columns(imported, path=path)
    return imported


class _Header(NamedTuple):
    """The file's top level, checked (step 1): what the later steps read of it."""

    meta: dict
    prompt: str
    slug: str | None
    tokens: list[str]


def _read_header(doc: Any, *, path: Path, checker: _Checker) -> _Header:
    """Step 1 after parsing: the top level's shape, the prompt, the slug, the tokens."""
    if not isinstance(doc, dict) or not {"metadata", "nodes", "links"} <= set(doc):
        raise GraphJsonError(
            f"{path}: not a graph file (an object with metadata, nodes and links is expected)"
        )
    meta = checker.obj(doc["metadata"], "metadata")
    if not isinstance(doc["nodes"], list) or not isinstance(doc["links"], list):
        raise GraphJsonError(f"{path}: nodes and links must be lists")
    prompt = checker.string(meta, "prompt", "metadata")
    assert prompt is not None
    slug = checker.string(meta, "slug", "metadata", optional=True)
    if slug is not None and (not SLUG.fullmatch(slug) or ".." in slug):
        raise checker.fail("metadata", f"slug {slug[:80]!r} is not a name (letters, digits, . _ -)")
    tokens = meta.get("prompt_tokens") or []
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise checker.fail("metadata", "prompt_tokens must be a list of strings")
    for t in tokens:
        checker.text(t, "metadata.prompt_tokens", 1000)
    return _Header(meta=meta, prompt=prompt, slug=slug, tokens=tokens)


class _Node(NamedTuple):
    """One node of the file, checked and keyed (step 2)."""

    node_id: str
    key: tuple
    fields: dict[str, Any]  # NODE_SCHEMA's, node_id left out; a logit's is_target too
    file_row: dict


class _FileNodes(NamedTuple):
    """The file's nodes, keyed (step 2), each once (step 3).

    Attributes:
        keyed: Node key -> its fields, in file order.
        by_string: The file's node id -> node key.
        labels: ``clerp`` labels by node key.
        n_layers: The model's layer count, as the logit nodes say.
    """

    keyed: dict[tuple, dict[str, Any]]
    by_string: dict[str, tuple]
    labels: dict[tuple, str]
    n_layers: int


def _read_nodes(raw_nodes: list, *, path: Path, checker: _Checker, tokens: list[str]) -> _FileNodes:
    """Steps 2 and 3 for the nodes: each checked and keyed; ids and keys unique; the
    logit nodes agree on the model's layers."""
    keyed: dict[tuple, dict[str, Any]] = {}
    by_string: dict[str, tuple] = {}
    labels: dict[tuple, str] = {}
    layer_counts: set[int] = set()
    for i, raw in enumerate(raw_nodes):
        where = f"nodes[{i}]"
        node = _read_node(raw, where=where, checker=checker, tokens=tokens)
        if node.fields["node_type"] == "logit":
            layer_counts.add(node.fields["layer"])
        if node.node_id in by_string:
            raise checker.fail(where, f"node_id {node.node_id!r} appears twice")
        if node.key in keyed:
            raise checker.fail(where, f"node {node.node_id!r} is the same node as another one")
        by_string[node.node_id] = node.key
        keyed[node.key] = node.fields
        label = checker.string(node.file_row, "clerp", where, optional=True, limit=1000)
        if label:
            labels[node.key] = label
    if len(layer_counts) > 1:
        raise GraphJsonError(f"{path}: logit nodes disagree on the model's layers")
    if not any(n["node_type"] == "logit" for n in keyed.values()):
        raise GraphJsonError(f"{path}: no logit node")
    return _FileNodes(keyed, by_string, labels, next(iter(layer_counts)))


def _read_node(raw: Any, *, where: str, checker: _Checker, tokens: list[str]) -> _Node:
    """One node's fields (step 2): what every kind has, then its kind's own."""
    row = checker.obj(raw, where)
    node_id = checker.string(row, "node_id", where)
    assert node_id is not None
    if not NODE_ID.fullmatch(node_id):
        raise checker.fail(
            where, f"node_id {node_id[:80]!r} is not a node id (letters, digits, _ -)"
        )
    kind_name = checker.string(row, "feature_type", where)
    if kind_name not in KINDS:
        raise checker.fail(where, f"feature_type {kind_name!r} is not one circuit-tracer writes")
    kind = KINDS[kind_name]
    pos = checker.integer(row.get("ctx_idx"), "ctx_idx", where, (0, INT16[1]))
    fields: dict[str, Any] = {
        "node_type": kind,
        "pos": pos,
        "feature": None,
        "activation": checker.number(row, "activation", where),
        "influence": None,  # _derive_influence
        "cumulative_influence": checker.number(row, "influence", where),
        "token_id": None,
        "token": None,
        "logit_prob": None,
    }
    if kind == "feature":
        fields.update(_feature_fields(row, node_id=node_id, pos=pos, where=where, checker=checker))
    elif kind == "error":
        fields.update(layer=checker.layer(row, where))
    elif kind == "token":
        fields.update(
            _token_fields(node_id=node_id, pos=pos, tokens=tokens, where=where, checker=checker)
        )
    else:
        fields.update(_logit_fields(row, where=where, checker=checker))
    key = (KIND_ORDER[kind], fields["layer"], pos, fields["feature"], fields["token_id"])
    return _Node(node_id=node_id, key=key, fields=fields, file_row=row)


def _feature_fields(
    row: dict, *, node_id: str, pos: int, where: str, checker: _Checker
) -> dict[str, Any]:
    """A feature node's layer and feature index: from its id ``<layer>_<feature>_<pos>``,
    which must agree with its fields (``feature``: the index or its Cantor pairing)."""
    parts = node_id.split("_")
    layer = checker.layer(row, where)
    if len(parts) != 3 or not parts[1].isdigit():
        raise checker.fail(where, f"feature node id {node_id!r} is not layer_feature_pos")
    if parts[0] != str(layer) or parts[2] != str(pos):
        raise checker.fail(
            where, f"node_id {node_id!r} disagrees with layer {layer}, ctx_idx {pos}"
        )
    index = checker.integer(int(parts[1]), "feature index", where)
    raw_feature = checker.integer(row.get("feature"), "feature", where, (0, 2**63 - 1))
    if raw_feature != index and _uncantor(raw_feature) != (layer, index):
        raise checker.fail(
            where, f"feature {raw_feature} is neither {index} nor layer {layer}'s pairing"
        )
    return {"layer": layer, "feature": index}


def _token_fields(
    *, node_id: str, pos: int, tokens: list[str], where: str, checker: _Checker
) -> dict[str, Any]:
    """An embedding node (``E_<token id>_<pos>``) as circuitray's token node: layer -1,
    its token id from the id, its text from the prompt's tokens."""
    parts = node_id.split("_")
    if len(parts) != 3 or parts[0] != "E" or not parts[1].isdigit():
        raise checker.fail(where, f"embedding node id {node_id!r} is not E_token_pos")
    return {
        "layer": -1,
        "token_id": checker.integer(int(parts[1]), "token id", where),
        "token": tokens[pos] if pos < len(tokens) else None,
    }


def _logit_fields(row: dict, *, where: str, checker: _Checker) -> dict[str, Any]:
    """A logit node's layer (the file's minus one: the model's layer count), token id
    (``feature``), token text (from the ``Output "..."`` label), probability and
    whether it is the target."""
    file_layer = checker.layer(row, where)
    if file_layer < 1:
        raise checker.fail(where, f"logit layer {file_layer}: must be the layer count + 1")
    label = checker.string(row, "clerp", where, optional=True, limit=1000) or ""
    match = LOGIT_LABEL.fullmatch(label or "")
    return {
        "layer": file_layer - 1,
        "token_id": checker.integer(row.get("feature"), "feature (token id)", where),
        "token": match["token"] if match else None,
        "logit_prob": checker.number(row, "token_prob", where),
        "is_target": checker.flag(row, "is_target_logit", where),
    }


class _Nodes(NamedTuple):
    """The nodes numbered in circuit-tracer's layout (step 4).

    Attributes:
        rows: NODE_SCHEMA rows (graph_id left out), in node_id order.
        ids: The file's node id -> circuitray's integer node id.
        labels: ``clerp`` labels by circuitray node id.
    """

    rows: list[dict[str, Any]]
    ids: dict[str, int]
    labels: dict[int, str]


def _layout_key(key: tuple, fields: dict[str, Any]) -> tuple:
    """Where a node sits in circuit-tracer's layout (step 4)."""
    if fields["node_type"] == "logit":
        return (3, not fields["is_target"], -(fields["logit_prob"] or 0.0), fields["token_id"])
    if fields["node_type"] == "token":
        return (2, key[2])
    return key[:4]


def _number_nodes(found: _FileNodes) -> _Nodes:
    """Step 4: circuitray's integer node ids, in circuit-tracer's layout."""
    ordered = sorted(found.keyed, key=lambda key: _layout_key(key, found.keyed[key]))
    index = {key: i for i, key in enumerate(ordered)}
    rows = []
    for key in ordered:
        fields = dict(found.keyed[key])
        fields.pop("is_target", None)
        rows.append({"node_id": index[key], **fields})
    return _Nodes(
        rows=rows,
        ids={name: index[key] for name, key in found.by_string.items()},
        labels={index[k]: v for k, v in found.labels.items()},
    )


def _read_links(
    raw_links: list, *, checker: _Checker, nodes: _Nodes
) -> dict[tuple[int, int], dict[str, Any]]:
    """Step 3 for the links: EDGE_SCHEMA rows by (dst, src), between nodes of the file,
    each pair once, with a finite weight."""
    edges: dict[tuple[int, int], dict[str, Any]] = {}
    for i, raw in enumerate(raw_links):
        where = f"links[{i}]"
        row = checker.obj(raw, where)
        ends = []
        for end in ("source", "target"):
            name = checker.string(row, end, where)
            if name not in nodes.ids:
                raise checker.fail(where, f"{end} {name!r} is not a node of the file"[:300])
            ends.append(nodes.ids[name])
        weight = checker.number(row, "weight", where)
        if weight is None:
            raise checker.fail(where, "weight is missing")
        src, dst = ends
        if (dst, src) in edges:
            raise checker.fail(where, "the same link appears twice")
        s, d = nodes.rows[src], nodes.rows[dst]
        edges[(dst, src)] = {
            "dst": dst,
            "src": src,
            "weight": weight,
            "src_layer": s["layer"],
            "dst_layer": d["layer"],
            "src_type": s["node_type"],
            "dst_type": d["node_type"],
        }
    return edges


def _graph_row(
    header: _Header, *, path: Path, nodes: list[dict[str, Any]], n_edges: int
) -> dict[str, Any]:
    """The graphs row's fields: prompt, counts of what was kept, the top logit."""
    logits = [n for n in nodes if n["node_type"] == "logit"]
    top = max(logits, key=lambda n: n["logit_prob"] or 0.0)
    kinds = [n["node_type"] for n in nodes]
    return {
        "prompt_id": header.slug or path.stem[:200],
        "prompt": header.prompt,
        "status": "ok",
        "n_tokens": len(header.tokens) or None,
        "n_kept_features": kinds.count("feature"),
        "n_kept_error_nodes": kinds.count("error"),
        "n_kept_nodes": len(nodes),
        "n_kept_edges": n_edges,
        "n_logits": len(logits),
        "top_token": top["token"],
        "top_prob": top["logit_prob"],
        "worker": "import",
    }


def _source(
    doc: dict, *, header: _Header, path: Path, checker: _Checker, n_layers: int
) -> dict[str, Any]:
    """Step 5: what the file says about itself, for run.json (checked like the rest)."""
    meta = header.meta
    info = _dict(meta.get("info"))
    generator = _dict(info.get("generator"))
    return {
        "file": str(path),
        "slug": header.slug,
        "scan": checker.string(meta, "scan", "metadata", optional=True, limit=200),
        "transcoder_set": checker.string(
            info, "transcoder_set", "metadata.info", optional=True, limit=500
        ),
        "generator": checker.string(
            generator, "name", "metadata.info.generator", optional=True, limit=500
        ),
        "generator_version": checker.string(
            generator, "version", "metadata.info.generator", optional=True, limit=200
        ),
        "schema_version": meta.get("schema_version")
        if isinstance(meta.get("schema_version"), int)
        else None,
        "node_threshold": checker.number(meta, "node_threshold", "metadata"),
        "generation_settings": checker.settings(
            meta.get("generation_settings"), "generation_settings"
        ),
        "pruning_settings": checker.settings(meta.get("pruning_settings"), "pruning_settings"),
        "prompt_tokens": header.tokens,
        "viewer_state": checker.viewer_state(doc.get("qParams")),
        "n_layers": n_layers,
    }


def _check_columns(imported: ImportedGraph, *, path: Path) -> None:
    """What Parquet will hold, converted once here: nothing fails after the checks."""
    try:
        imported.tables(0)
        pa.Table.from_pylist([{**imported.graph, "graph_id": 0}], schema=GRAPH_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as e:
        raise GraphJsonError(f"{path}: a value does not fit its column ({e})"[:500]) from None


def _check_acyclic(c: _Checker, n: int, edges: dict[tuple[int, int], dict]) -> None:
    """Attribution graphs run forward (earlier layers and positions to later ones): a
    cycle (a self-loop included) is refused, or path queries would never end."""
    out: list[list[int]] = [[] for _ in range(n)]
    indegree = [0] * n
    for dst, src in edges:
        out[src].append(dst)
        indegree[dst] += 1
    ready = [i for i in range(n) if indegree[i] == 0]
    seen = 0
    while ready:
        i = ready.pop()
        seen += 1
        for j in out[i]:
            indegree[j] -= 1
            if indegree[j] == 0:
                ready.append(j)
    if seen < n:
        raise c.fail("links", "the links form a cycle (an attribution graph has none)")


def _derive_influence(nodes: list[dict]) -> None:
    """Each node's share of the graph's total influence, from circuit-tracer's cumulative
    influence (the running share of nodes sorted by influence, largest first): along the
    nodes sorted by it, a node's share is its step. Only up to the largest cumulative
    value of a feature or error node, where the kept nodes are every node of the
    unpruned graph (the node threshold keeps a prefix); tokens beyond it, and logits,
    have none. A share, not circuit-tracer's raw influence: comparable within
    imported graphs, not in scale with a computed run's."""
    ranked = [n for n in nodes if n["cumulative_influence"] is not None]
    limit = max(
        (n["cumulative_influence"] for n in ranked if n["node_type"] in ("feature", "error")),
        default=None,
    )
    if limit is None:
        return
    previous = 0.0
    for n in sorted(ranked, key=lambda n: n["cumulative_influence"]):
        if n["cumulative_influence"] > limit:
            break
        n["influence"] = max(n["cumulative_influence"] - previous, 0.0)
        previous = n["cumulative_influence"]
