"""Reading and writing prompt files.

A prompt file is Parquet, JSONL or CSV with at least ``prompt_id`` and ``prompt``
columns; ``constraint_type`` and ``target`` are optional and every other column is
kept as metadata. Reading validates every row and raises :class:`PromptFileError`
naming the file, row and column of the first problem.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from circuitray.errors import PromptFileError

__all__ = ["PROMPT_SCHEMA", "file_sha256", "read_prompts", "write_prompts"]

REQUIRED_COLUMNS = ("prompt_id", "prompt")

# The columns every loaded prompt table has, in this order, after normalisation.
PROMPT_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("prompt", pa.string()),
        ("constraint_type", pa.string()),
        ("target", pa.string()),
    ]
)


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    raise PromptFileError(
        f"{path}: unknown prompt file type {suffix!r} (use .parquet, .jsonl or .csv)"
    )


def file_sha256(path: str | Path) -> str:
    """The hex SHA-256 of a file, recorded in run.json to pin the exact prompt set."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_table(path: Path) -> pa.Table:
    fmt = _format_of(path)
    try:
        if fmt == "parquet":
            return pq.read_table(path)
        if fmt == "csv":
            parse = pacsv.ParseOptions(delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            # Read every column as text: ids like 007 must not become integers. The
            # header is parsed by pyarrow itself (quoted names included).
            with pacsv.open_csv(path, parse_options=parse) as reader:
                names = reader.schema.names
            convert = pacsv.ConvertOptions(column_types={n: pa.string() for n in names})
            return pacsv.read_csv(path, parse_options=parse, convert_options=convert)
        return _read_jsonl(path)
    except PromptFileError:
        raise
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PromptFileError(f"{path}: cannot read as {fmt}: {first}") from None


def _read_jsonl(path: Path) -> pa.Table:
    # pyarrow.json reports errors by byte offset; parse line by line to name the row.
    rows: list[dict] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptFileError(f"{path}: line {lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise PromptFileError(f"{path}: line {lineno}: expected a JSON object")
            rows.append(row)
    if not rows:
        return pa.table({c: pa.array([], pa.string()) for c in REQUIRED_COLUMNS})
    # Columns are the union over all rows, not just the first row's keys.
    names = list(dict.fromkeys(k for row in rows for k in row))
    try:
        return pa.table({n: pa.array([row.get(n) for row in rows]) for n in names})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise PromptFileError(f"{path}: inconsistent column types: {e}") from None


def read_prompts(path: str | Path) -> pa.Table:
    """Read and validate a prompt file.

    Returns a table whose first columns are :data:`PROMPT_SCHEMA` (``constraint_type``
    and ``target`` null where the file has none), followed by the file's other columns.

    Raises:
        PromptFileError: missing file, unknown type, missing column, empty or null
            prompt, duplicate prompt_id. The message names file, row and column.
    """
    path = Path(path)
    if not path.exists():
        raise PromptFileError(f"{path}: prompt file not found")
    if path.is_dir():
        raise PromptFileError(f"{path}: is a directory, expected a prompt file")
    table = _read_table(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise PromptFileError(
            f"{path}: missing required column {missing[0]!r} "
            f"(found: {', '.join(table.column_names) or 'none'})"
        )
    if table.num_rows == 0:
        raise PromptFileError(f"{path}: no prompts in file")

    columns: dict[str, pa.Array] = {}
    for field in PROMPT_SCHEMA:
        if field.name in table.column_names:
            col = table.column(field.name)
            try:
                columns[field.name] = col.cast(pa.string())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise PromptFileError(
                    f"{path}: column {field.name!r} must be text, found {col.type}"
                ) from None
        else:
            columns[field.name] = pa.nulls(table.num_rows, pa.string())

    # Row numbers are 1-based data rows (a CSV header is not counted).
    ids = columns["prompt_id"].to_pylist()
    prompts = columns["prompt"].to_pylist()
    seen: dict[str, int] = {}
    for i, (pid, text) in enumerate(zip(ids, prompts, strict=True), start=1):
        if pid is None or str(pid).strip() == "":
            raise PromptFileError(f"{path}: row {i}: column 'prompt_id' is empty")
        if text is None or text.strip() == "":
            raise PromptFileError(f"{path}: row {i} (prompt_id {pid}): column 'prompt' is empty")
        if pid in seen:
            raise PromptFileError(
                f"{path}: row {i}: duplicate prompt_id {pid!r} (first at row {seen[pid]})"
            )
        seen[pid] = i

    extra = {c: table.column(c) for c in table.column_names if c not in columns}
    return pa.table({**columns, **extra})


def write_prompts(rows: list[dict], path: str | Path) -> Path:
    """Write prompt rows to Parquet, JSONL or CSV (by extension), atomically."""
    path = Path(path)
    fmt = _format_of(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if fmt == "parquet":
        names = list(dict.fromkeys(k for row in rows for k in row))
        pq.write_table(pa.table({n: pa.array([r.get(n) for r in rows]) for n in names}), tmp)
    elif fmt == "jsonl":
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        flat = [
            {k: (json.dumps(v) if isinstance(v, list | dict) else v) for k, v in r.items()}
            for r in rows
        ]
        names = list(dict.fromkeys(k for row in flat for k in row))
        pacsv.write_csv(pa.table({n: pa.array([r.get(n) for r in flat]) for n in names}), tmp)
    tmp.replace(path)
    return path
