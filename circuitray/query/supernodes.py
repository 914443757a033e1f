"""Supernodes: a grouping file that names sets of features, read and checked.

A researcher groups a circuit's features into named supernodes ("Say Austin",
"Texas"); the consensus queries then treat every member of a group as one node, and
an edge between two groups is the sum of their members' edges. The grouping is a file
with one row per (layer, feature) and its group's name:

1. Read the file by its suffix with the reader prompt files use
   (:func:`circuitray.prompts.files.read_table_file`): ``.csv`` / ``.tsv`` (a header
   row; a stray quote is refused naming its line, never read as a value swallowing
   the rows after it), ``.parquet``, or ``.jsonl`` (one JSON object per line).
2. Find the columns: ``layer``; the feature index as ``feature`` or ``index``; the
   name as ``name``, ``supernode`` or ``supernode_name`` (the names Neuronpedia's
   exports and its analysts' CSVs use). Other columns are ignored, so a file with one
   row per feature and probe prompt (the shared Dallas grouping) reads as it is.
3. Check every row: integer layer and feature in range, a non-empty name of at most
   200 characters; the same (layer, feature) may repeat with the same name, never
   with another (one line names the file, the row and both names).
4. Return one row per (layer, feature) as an Arrow table (``SUPERNODE_SCHEMA``), which
   :func:`circuitray.query.engine.connect` shows as the view ``supernodes``.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from circuitray.errors import CircuitrayError
from circuitray.prompts.files import read_table_file

__all__ = ["SUPERNODE_SCHEMA", "read_supernodes"]

SUPERNODE_SCHEMA = pa.schema(
    [("layer", pa.int16()), ("feature", pa.int32()), ("name", pa.string())]
)
COLUMNS = {
    "layer": ("layer",),
    "feature": ("feature", "index", "feature_index"),
    "name": ("name", "supernode", "supernode_name"),
}
MAX_NAME = 200
MAX_BYTES = 256 * 2**20


def _column(table: pa.Table, path: Path, what: str) -> list:
    for name in COLUMNS[what]:
        if name in table.column_names:
            return table.column(name).to_pylist()
    raise CircuitrayError(
        f"{path}: no {what} column (one of {', '.join(COLUMNS[what])}); "
        f"it has {', '.join(table.column_names) or 'none'}"
    )


def _integer(value, path: Path, row: int, column: str, bound: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < bound:
        raise CircuitrayError(
            f"{path}: row {row}, column {column}: {value!r} is not an integer in [0, {bound})"
        )
    return value


def read_supernodes(path: str | Path) -> pa.Table:
    """The grouping file at ``path`` as one row per (layer, feature): see the module
    docstring. Raises CircuitrayError (one line) for anything it cannot read."""
    path = Path(path)
    if not path.is_file():
        raise CircuitrayError(f"{path}: no such supernode file")
    if path.stat().st_size > MAX_BYTES:
        raise CircuitrayError(f"{path}: larger than {MAX_BYTES // 2**20} MiB; not read")
    table = read_table_file(path, what="supernode file", error=CircuitrayError)
    layers, features, names = (_column(table, path, what) for what in ("layer", "feature", "name"))
    groups: dict[tuple[int, int], str] = {}
    first_row: dict[tuple[int, int], int] = {}
    for i, (layer, feature, name) in enumerate(zip(layers, features, names, strict=True)):
        row = i + 1  # data rows from 1 (a CSV's header is line 1, this row line row + 1)
        key = (
            _integer(layer, path, row, "layer", 2**15),
            _integer(feature, path, row, "feature", 2**31),
        )
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
            raise CircuitrayError(
                f"{path}: row {row}, column name: a supernode name is 1-{MAX_NAME} characters"
            )
        name = name.strip()
        if groups.setdefault(key, name) != name:
            raise CircuitrayError(
                f"{path}: row {row}: layer {key[0]} feature {key[1]} is in supernode "
                f"{name!r} here and in {groups[key]!r} at row {first_row[key]}"
            )
        first_row.setdefault(key, row)
    rows = sorted(groups.items())
    return pa.Table.from_pydict(
        {
            "layer": [k[0] for k, _ in rows],
            "feature": [k[1] for k, _ in rows],
            "name": [n for _, n in rows],
        },
        schema=SUPERNODE_SCHEMA,
    )
