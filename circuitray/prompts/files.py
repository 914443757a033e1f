"""Reading and writing prompt files.

A prompt file is Parquet, JSONL (or a ``.json`` array of objects) or CSV/TSV with at
least ``prompt_id`` and ``prompt`` columns; ``constraint_type`` and ``target`` are
optional and every other column is kept as metadata. Reading validates every row and
raises :class:`PromptFileError` naming the file, row and column of the first problem:

1. Decode: UTF-8 (a leading byte-order mark is allowed); CSV values are all text,
   quoted values may span lines (a quote inside one is written ``""``), header names
   are stripped of spaces; a quote never closed, or closed with text after it, is
   refused naming the line where it opens (:func:`_check_quotes`).
2. Columns: each named once; ``prompt`` must hold text (not numbers, booleans or
   nested values), ``prompt_id`` text or integers; a column whose rows mix types that
   Arrow cannot hold together is named.
3. Rows: a non-empty ``prompt_id`` and ``prompt``, ids unique.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from circuitray.errors import CircuitrayError, PromptFileError

__all__ = ["PROMPT_SCHEMA", "file_sha256", "read_prompts", "read_table_file", "write_prompts"]

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


def _format_of(
    path: Path, *, what: str = "prompt file", error: type[CircuitrayError] = PromptFileError
) -> str:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    raise error(f"{path}: unknown {what} type {suffix!r} (use .parquet, .jsonl or .csv)")


def file_sha256(path: str | Path) -> str:
    """The hex SHA-256 of a file, recorded in run.json to pin the exact prompt set."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_table_file(
    path: Path, *, what: str = "prompt file", error: type[CircuitrayError] = PromptFileError
) -> pa.Table:
    """A Parquet, JSONL (or JSON array) or CSV/TSV file as a table, every CSV value as
    text; a file that cannot be read raises ``error`` in one line naming it."""
    fmt = _format_of(path, what=what, error=error)
    try:
        if fmt == "parquet":
            return pq.read_table(path)
        if fmt == "csv":
            delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
            _check_quotes(path, delimiter=delimiter)
            # Read every column as text: ids like 007 must not become integers. The
            # header is parsed by pyarrow itself (quoted names included).
            parse = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
            with pacsv.open_csv(path, parse_options=parse) as reader:
                names = reader.schema.names
            _check_unique(path, names)
            convert = pacsv.ConvertOptions(column_types={n: pa.string() for n in names})
            table = pacsv.read_csv(path, parse_options=parse, convert_options=convert)
            stripped = [n.strip() for n in table.column_names]
            _check_unique(path, stripped)
            return table.rename_columns(stripped)
        return _read_jsonl(path)
    except CircuitrayError as e:
        raise error(str(e)) from None
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise error(f"{path}: cannot read as {fmt}: {first}") from None


def _check_quotes(path: Path, *, delimiter: str) -> None:
    """Refuse a CSV whose quotes do not pair up, naming the line where the bad quote opens.

    pyarrow (``newlines_in_values=True``) reads a quote left open as a value running to
    the end of the file: a stray quote on one row silently swallows every row after it.
    Python's csv reader in strict mode (RFC 4180 quoting, as pyarrow reads it: ``""``
    inside quotes, a quote inside an unquoted value is text) refuses the two shapes a
    stray quote leaves: a quoted value still open at the end of the file, and a quoted
    value closed by a quote followed by text (the stray quote pairs with the opening
    quote of a later value: ``z1,"blarf`` ... ``z3,"the boat"``). A quoted value that
    spans lines and closes cleanly is valid CSV, indistinguishable from a prompt that
    holds line breaks, and is read as written.
    """
    record: list[str] = []  # the lines of the record being read

    def lines():
        for line in f:
            record.append(line)
            yield line

    start = 1  # the line the record being read starts on
    limit = csv.field_size_limit(2**31 - 1)  # a prompt may exceed csv's 128 KiB default
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(lines(), delimiter=delimiter, strict=True)
            try:
                for _ in reader:
                    start, record = reader.line_num + 1, []
            except csv.Error as e:
                text = "".join(record)
                opened = _open_quote(text, delimiter)
                if opened is None:  # not a quoting error: name the record and csv's words
                    raise PromptFileError(f"{path}: line {start}: not valid CSV ({e})") from None
                line = start + text.count("\n", 0, opened)
                if str(e) == "unexpected end of data":
                    raise PromptFileError(
                        f"{path}: line {line}: a quoted field opened here is never closed "
                        '(a stray quote? a quote inside a quoted value is written "")'
                    ) from None
                raise PromptFileError(
                    f"{path}: line {line}: a quoted field opened here closes on line "
                    f"{reader.line_num} and is followed by text, not {delimiter!r} or a line end "
                    '(a stray quote? a quote inside a quoted value is written "")'
                ) from None
    finally:
        csv.field_size_limit(limit)


def _open_quote(text: str, delimiter: str) -> int | None:
    """The offset in one record's ``text`` of the quote opening the field that is never
    closed, or closed with text after it; None when every quoted field closes cleanly."""
    i, n = 0, len(text)
    while i < n:
        if text[i] == '"':  # a quoted field starts here
            j = i + 1
            while (j := text.find('"', j)) != -1 and text.startswith('""', j):
                j += 2
            if j == -1 or (j + 1 < n and text[j + 1] not in (delimiter, "\r", "\n")):
                return i
            i = j + 1
        ends = [k for k in (text.find(delimiter, i), text.find("\n", i)) if k != -1]
        if not ends:
            return None
        i = min(ends) + 1
    return None


def _check_unique(path: Path, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise PromptFileError(f"{path}: column {name!r} appears more than once")
        seen.add(name)


def _read_json_array(path: Path) -> list[dict]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise PromptFileError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(rows, list):
        raise PromptFileError(f"{path}: expected a JSON array of objects or JSON lines")
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise PromptFileError(f"{path}: row {i}: expected a JSON object")
    return rows


def _read_jsonl(path: Path) -> pa.Table:
    # pyarrow.json reports errors by byte offset; parse line by line to name the row.
    rows: list[dict] = []
    with open(path, encoding="utf-8-sig") as f:
        head = f.read(4096).lstrip()
    if path.suffix.lower() == ".json" and head.startswith("["):
        rows = _read_json_array(path)
    else:
        rows = _read_json_lines(path)
    if not rows:
        return pa.table({c: pa.array([], pa.string()) for c in REQUIRED_COLUMNS})
    # Columns are the union over all rows, not just the first row's keys.
    names = list(dict.fromkeys(k for row in rows for k in row))
    columns = {}
    for n in names:
        values = [row.get(n) for row in rows]
        try:
            columns[n] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as e:
            columns[n] = _mixed_column(path, n, values, e)
    return pa.table(columns)


def _mixed_column(path: Path, name: str, values: list, error: Exception) -> pa.Array:
    """A JSON column whose rows mix types: text mixed with integers becomes text (ids
    such as 7 and "a7"), other metadata JSON text; a prompt that mixes types, or a
    prompt_id, constraint_type or target mixing in other kinds, is refused."""
    ints_and_text = all(
        v is None or (isinstance(v, str | int) and not isinstance(v, bool)) for v in values
    )
    if ints_and_text and name != "prompt":
        return pa.array([None if v is None else str(v) for v in values], pa.string())
    if name not in PROMPT_SCHEMA.names:
        return pa.array([None if v is None else json.dumps(v) for v in values], pa.string())
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise PromptFileError(f"{path}: column {name!r}: values of mixed types ({first})")


def _read_json_lines(path: Path) -> list[dict]:
    rows: list[dict] = []
    with open(path, encoding="utf-8-sig") as f:
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
    return rows


def _textual(t: pa.DataType, *, integers: bool = False) -> bool:
    """Whether a column of type ``t`` holds text (or all nulls; integers if allowed)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_null(t) or pa.types.is_string(t) or pa.types.is_large_string(t):
        return True
    if pa.types.is_string_view(t):  # what Polars and DuckDB write by default
        return True
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return True  # UTF-8 is checked by the cast
    return integers and pa.types.is_integer(t)


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
    table = read_table_file(path)
    _check_unique(path, table.column_names)
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
            if field.name in REQUIRED_COLUMNS and not _textual(
                col.type, integers=field.name == "prompt_id"
            ):
                kind = "text or integers" if field.name == "prompt_id" else "text"
                raise PromptFileError(
                    f"{path}: column {field.name!r} must be {kind}, found {col.type}"
                )
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
