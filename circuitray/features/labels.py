"""``circuitray features import``: labels from a user's file into a transcoder set's table.

1. Read the file: CSV/TSV, Parquet or JSONL (or a JSON array) with columns ``layer``,
   ``feature`` and ``label`` (``source`` optional), through the prompt files' reader
   (:func:`circuitray.prompts.files.read_table_file`); or Neuronpedia's explanation
   export (:func:`neuronpedia_rows`), recognised by its ``modelId``/``index``/
   ``description`` fields, gzipped or not.
2. Check every row: ``layer`` and ``feature`` whole numbers >= 0, ``label`` non-empty
   text, each (layer, feature) once. The first bad row stops the import with one line
   naming the file, the row (1-based data rows: a CSV header is not counted; in JSON
   lines, the line) and the column; nothing is written.
3. Merge into the set's table (:mod:`circuitray.features.store`): imported labels
   replace the labels of those features (their statistics and examples are kept);
   features the table lacks are added with no statistics. A set with no table yet gets
   one of the imported rows alone. Written atomically.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pyarrow as pa

from circuitray.errors import CircuitrayError
from circuitray.features.store import (
    FEATURE_SCHEMA,
    features_table_meta,
    read_features,
    write_features,
)
from circuitray.models.registry import TRANSCODER_ALIASES
from circuitray.prompts.files import read_table_file

__all__ = ["LabelFileError", "import_labels", "neuronpedia_rows", "read_label_file"]

REQUIRED = ("layer", "feature", "label")
# Neuronpedia's explanation export: ``v1/<modelId>/<sourceId>/explanations/batch-N.jsonl.gz``,
# gzipped JSON lines, one row of its ``Explanation`` table each
# (https://docs.neuronpedia.org/api-and-data/exports; the fields are those of
# ``model Explanation`` in hijohnnylin/neuronpedia apps/webapp/prisma/schema.prisma):
# modelId, layer (the source id "<layer>-<set>", e.g. "20-gemmascope-transcoder-16k",
# whose leading number is the layer, as Neuronpedia's getLayerNumFromSource reads it),
# index (the feature, as text), description (the explanation), typeName and
# explanationModelName (how and by what it was written). A feature may have several;
# Neuronpedia's graph view prefers typeName "np_max-act-logits"
# (apps/webapp/components/provider/graph-provider.tsx), and so does this import.
NEURONPEDIA_FIELDS = {"modelId", "layer", "index", "description"}
NEURONPEDIA_PREFERRED_TYPE = "np_max-act-logits"
_SOURCE_LAYER = re.compile(r"^(\d+)-")


class LabelFileError(CircuitrayError):
    """A labels file is missing, unreadable or has a bad row."""


def _open_text(path: Path):
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig")
    return open(path, encoding="utf-8-sig")


def _json_records(path: Path) -> list[tuple[int, dict]] | None:
    """The objects of a JSON/JSONL file (gzipped or not) with their row numbers (the
    line of a JSON-lines file, the position in a JSON array), or None for other files."""
    name = path.name.lower().removesuffix(".gz")
    if not name.endswith((".json", ".jsonl", ".ndjson")):
        return None
    try:
        with _open_text(path) as f:
            text = f.read()
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise LabelFileError(f"{path}: cannot read ({e})") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise LabelFileError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(records, list):
            raise LabelFileError(f"{path}: expected a JSON array of objects or JSON lines")
        rows = list(enumerate(records, start=1))
    else:
        rows = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                raise LabelFileError(f"{path}: line {lineno}: invalid JSON ({e.msg})") from None
    for n, record in rows:
        if not isinstance(record, dict):
            raise LabelFileError(f"{path}: row {n}: expected a JSON object")
    return rows


def neuronpedia_rows(path: Path, records: list[tuple[int, dict]]) -> list[dict]:
    """Neuronpedia explanation records as label rows (module docstring, step 1): the
    layer is the leading number of the record's source id; of a feature's several
    explanations the first of type :data:`NEURONPEDIA_PREFERRED_TYPE`, else the first
    listed; records with an empty description are skipped."""
    rows: list[dict] = []
    seen: dict[tuple[int, int], int] = {}
    for i, record in records:
        source_id = record.get("layer")
        m = _SOURCE_LAYER.match(source_id) if isinstance(source_id, str) else None
        if m is None:
            raise LabelFileError(
                f"{path}: row {i}, column 'layer': {source_id!r} is not a Neuronpedia source "
                "id ('<layer>-<set>', e.g. '20-gemmascope-transcoder-16k')"
            )
        index = record.get("index")
        text = str(index).strip() if isinstance(index, str | int) else ""
        feature = int(text) if text.isdigit() and not isinstance(index, bool) else None
        if feature is None:
            raise LabelFileError(
                f"{path}: row {i}, column 'index': {index!r} is not a feature index"
            )
        description = record.get("description")
        if not isinstance(description, str) or not description.strip():
            continue
        key = (int(m[1]), feature)
        preferred = record.get("typeName") == NEURONPEDIA_PREFERRED_TYPE
        if key in seen and not (preferred and not rows[seen[key]]["_preferred"]):
            continue
        writer = record.get("explanationModelName") or "unknown explainer"
        row = {
            "layer": key[0],
            "feature": key[1],
            "label": description,
            "source": f"neuronpedia: {path.name} ({record.get('modelId')}, {writer})",
            "_row": i,
            "_label_column": "description",
            "_preferred": preferred,
        }
        if key in seen:
            rows[seen[key]] = row
        else:
            seen[key] = len(rows)
            rows.append(row)
    return rows


def read_label_file(path: str | Path) -> list[dict]:
    """The label rows of ``path`` (steps 1 and 2): dicts with layer, feature, label,
    source. Raises LabelFileError naming file, row and column."""
    path = Path(path)
    if not path.exists():
        raise LabelFileError(f"{path}: labels file not found")
    if path.is_dir():
        raise LabelFileError(f"{path}: is a directory, expected a labels file")
    records = _json_records(path)
    if records is not None and not records:
        raise LabelFileError(f"{path}: no labels in file")
    if records is not None and set(records[0][1]) >= NEURONPEDIA_FIELDS:
        rows = neuronpedia_rows(path, records)
    else:
        numbers = None
        if records is not None:
            names = list(dict.fromkeys(k for _, r in records for k in r))
            columns = {n: [r.get(n) for _, r in records] for n in names}
            numbers = [n for n, _ in records]
        else:
            table = read_table_file(path, what="labels file", error=LabelFileError)
            columns = {n: table.column(n).to_pylist() for n in table.column_names}
        missing = [c for c in REQUIRED if c not in columns]
        if missing:
            raise LabelFileError(
                f"{path}: missing required column {missing[0]!r} "
                f"(found: {', '.join(columns) or 'none'}; expected layer, feature, label)"
            )
        n = len(next(iter(columns.values()))) if columns else 0
        rows = [
            {
                "layer": columns["layer"][i],
                "feature": columns["feature"][i],
                "label": columns["label"][i],
                "source": (columns.get("source") or [None] * n)[i] or f"import: {path.name}",
                "_row": numbers[i] if numbers else i + 1,
                "_label_column": "label",
            }
            for i in range(n)
        ]
    if not rows:
        raise LabelFileError(f"{path}: no labels in file")
    seen: dict[tuple[int, int], int] = {}
    for row in rows:
        where = f"{path}: row {row['_row']}"
        for column in ("layer", "feature"):
            row[column] = _whole(row[column], f"{where}, column {column!r}")
        label = row["label"]
        col = row["_label_column"]
        if not isinstance(label, str):
            raise LabelFileError(f"{where}, column {col!r}: {label!r} is not text")
        if not label.strip():
            raise LabelFileError(f"{where}, column {col!r}: empty label (expected text)")
        row["label"] = label.strip()
        if not isinstance(row["source"], str):
            raise LabelFileError(f"{where}, column 'source': expected text")
        key = (row["layer"], row["feature"])
        if key in seen:
            raise LabelFileError(
                f"{where}: feature L{key[0]}/{key[1]} is labelled twice (first at row {seen[key]})"
            )
        seen[key] = row["_row"]
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


def _whole(value, where: str) -> int:
    """A layer or feature value as an int >= 0 (integers, or text of one)."""
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif (isinstance(value, float) and value.is_integer()) or (
        isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value)
    ):
        number = int(value)
    if number is None or number < 0 or number >= 2**31:
        raise LabelFileError(f"{where}: {value!r} is not a whole number >= 0")
    return number


def import_labels(path: str | Path, *, transcoders: str) -> dict:
    """Import the labels of ``path`` into ``transcoders``' feature table (step 3);
    returns a summary (path of the table, rows imported, replaced, added)."""
    if transcoders in TRANSCODER_ALIASES:
        raise LabelFileError(
            f"--transcoders {transcoders!r}: an alias of a bundled model's set; give the "
            "reference runs record (circuitray/organism, gemma, ...: run.json's "
            "model.transcoders)"
        )
    rows = read_label_file(path)
    current = read_features(transcoders)
    by_key: dict[tuple[int, int], dict] = {}
    meta: dict = {}
    if current is not None:
        meta = features_table_meta(current)
        for r in current.to_pylist():
            by_key[(r["layer"], r["feature"])] = r
    replaced = added = 0
    empty = {name: None for name in FEATURE_SCHEMA.names}
    for row in rows:
        key = (row["layer"], row["feature"])
        if key in by_key:
            replaced += 1
        else:
            added += 1
            by_key[key] = {**empty, "layer": key[0], "feature": key[1], "top_examples": []}
        by_key[key]["label"] = row["label"]
        by_key[key]["source"] = row["source"]
    imports = [*meta.pop("imports", []), {"file": str(Path(path).resolve()), "rows": len(rows)}]
    meta.pop("format", None)
    meta.pop("transcoders", None)
    table = pa.Table.from_pylist(list(by_key.values()), schema=FEATURE_SCHEMA)
    out = write_features(table, transcoders, meta={**meta, "imports": imports})
    return {
        "path": str(out),
        "transcoders": transcoders,
        "imported": len(rows),
        "replaced": replaced,
        "added": added,
        "features": table.num_rows,
    }
