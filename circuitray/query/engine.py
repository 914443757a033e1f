"""DuckDB over run folders: views, the named query library, and read-only ad-hoc SQL.

1. :func:`connect` opens an in-memory DuckDB with views ``graphs``, ``nodes`` and
   ``edges`` over the committed Parquet parts of one or more run folders; every view
   has a ``run`` column (the folder's name) so one query can compare runs, and
   ``runs`` (run, position, path, step, series) keeps the order the folders were
   given in. Intervention folders (``circuitray intervene``) given among them feed the
   view ``interventions`` the same way. A series folder (``series.json``, no
   ``run.json``: one run folder per fine-tuning checkpoint) stands for its run folders
   in step order, named ``SERIES/RUN`` so that two series open together. ``graphs``
   ends with a column ``step`` (INTEGER: run.json's ``step``, else the step series.json
   lists the run at, else NULL), as does ``runs``, whose ``series`` is the series
   folder's name (NULL for a folder given itself); nodes and edges join graphs on
   (run, graph_id) for it. ``graphs`` reads its files by column name, so a folder
   (or part) written before a column was added (``precision_*``) gives NULL there.
   ``features`` holds, per run, the feature table (labels, activation statistics, top
   examples) of the transcoder set its run.json records, for joins on (run, layer,
   feature). ``supernodes`` (layer, feature, name) is empty unless a grouping file is
   given (:mod:`circuitray.query.supernodes`). Metrics that several queries, the
   comparison and the report compute are macros defined once beside the views
   (:data:`METRIC_MACROS`: ``top1(top_token, target_token)``, a graph's top-1 accuracy;
   ``layers_spanned(layer, node_type)``, an aggregate over nodes rows: the distinct
   layers of the kept features).
   For local folders the views are plain SQL (:func:`view_sql`), which any DuckDB
   process can run to get the same views.
2. Named queries are the ``*.sql`` files of the query folder: ``sql/`` beside this
   module (package data, so a wheel has them; ``queries/`` in a checkout links here),
   or ``$CIRCUITRAY_QUERIES_DIR``. A header of ``--`` comments says
   what a query answers and declares its parameters::

       -- Per constraint type: graph counts, kept nodes and edges ...
       -- param: min_graphs int = 1 -- only types with at least this many graphs
       -- uses: paths

   Parameters are bound by DuckDB (``$min_graphs`` in the SQL), never pasted in. A
   ``uses:`` line makes another named query's result a table of that name (computed
   first, with the parameters it declares, which the using query accepts too), so a
   summary can build on a detailed query without repeating its SQL.
   :func:`query_statements` gives the statements :func:`run_query` runs for a query.
3. :func:`run_sql` runs user SQL after checking that every statement is a plain
   query (SELECT / WITH / VALUES / EXPLAIN / DESCRIBE / SHOW / SUMMARIZE): writing files,
   attaching databases, installing extensions or changing settings is refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from circuitray.errors import CircuitrayError, RunDirError
from circuitray.features.store import FEATURE_SCHEMA, run_features_path, run_transcoders
from circuitray.query.supernodes import SUPERNODE_SCHEMA, read_supernodes
from circuitray.schema import EDGE_SCHEMA, GRAPH_SCHEMA, NODE_SCHEMA, RESULT_SCHEMA
from circuitray.storage.run_store import InterventionStore, PartStore, RunStore

__all__ = [
    "NamedQuery",
    "connect",
    "list_queries",
    "named_relation",
    "query_statements",
    "read_series",
    "run_queries",
    "run_query",
    "run_sql",
    "view_sql",
]

# View name -> schema; FOLDER_TABLE names a view's folder table where they differ.
SCHEMAS = {
    "graphs": GRAPH_SCHEMA,
    "nodes": NODE_SCHEMA,
    "edges": EDGE_SCHEMA,
    "interventions": RESULT_SCHEMA,
}
# Metrics every query, comparison and report section computes the same way, defined
# once as DuckDB macros created before the views (view_sql returns them too).
METRIC_MACROS = (
    # Top-1 accuracy of one graph: 1 when the model's top token is the prompt's target,
    # 0 when not, NULL when the prompt has no target (left out of a mean).
    "CREATE MACRO top1(top_token, target_token) AS "
    "CASE WHEN target_token IS NULL THEN NULL "
    "WHEN top_token = target_token THEN 1.0::DOUBLE ELSE 0.0::DOUBLE END",
    # Layers spanned by kept features, an aggregate over a group of nodes rows (one
    # graph's, or a prompt's at a step): how many distinct layers its feature nodes are
    # in; 0 for a group without feature nodes.
    "CREATE MACRO layers_spanned(layer, node_type) AS "
    "count(DISTINCT layer) FILTER (WHERE node_type = 'feature')",
)
FOLDER_TABLE = {"interventions": "results"}
# Views whose schema gained columns after folders were written (graphs: precision_*),
# read by column name so that old and new folders (and parts) share the view.
GROWN = {"graphs"}
MEMORY_LIMIT_RE = re.compile(r"[0-9]+(\.[0-9]+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)")
SERIES_FILE = "series.json"
SERIES_FORMAT = "circuitray-series/1"
# A run folder a series names: one folder inside the series folder, never a path.
SERIES_RUN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
PARAM_RE = re.compile(
    r"^--\s*param:\s*(?P<name>\w+)\s+(?P<type>int|float|str|bool)\s*=\s*(?P<default>.*?)\s*"
    r"(?:--\s+(?P<doc>.*))?$"
)
CASTS = {"int": int, "float": float, "str": str, "bool": lambda v: str(v).lower() in ("1", "true")}
USES_RE = re.compile(r"^--\s*uses:\s*(?P<names>[\w ,]+)$")
READ_ONLY_TYPES = {"SELECT", "EXPLAIN"}
# EXPLAIN ANALYZE runs the statement it explains: look inside every EXPLAIN.
EXPLAIN_RE = re.compile(
    r"^\s*EXPLAIN\s*(?:\([^)]*\)\s*)?(?:ANALY[SZ]E\b)?(?P<inner>.*)$", re.I | re.S
)


def queries_dir() -> Path:
    env = os.environ.get("CIRCUITRAY_QUERIES_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent / "sql"


@dataclass
class NamedQuery:
    """One ``queries/NAME.sql`` file.

    Attributes:
        name: File stem, used as ``circuitray query NAME``.
        description: The header's first comment paragraph.
        params: Parameter name -> (type name, default value, doc), the used queries'
            included.
        sql: The SQL text (header included; DuckDB ignores comments).
        uses: Named queries whose results this one reads as tables, in order.
    """

    name: str
    description: str
    params: dict[str, tuple[str, object, str]] = field(default_factory=dict)
    sql: str = ""
    uses: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> NamedQuery:
        text = path.read_text()
        desc: list[str] = []
        params: dict[str, tuple[str, object, str]] = {}
        uses: list[str] = []
        for line in text.splitlines():
            if not line.startswith("--"):
                break
            m = PARAM_RE.match(line)
            u = USES_RE.match(line)
            if re.match(r"^--\s*param:", line) and not m:
                raise CircuitrayError(
                    f"{path}: bad parameter line {line!r} "
                    "(expected: -- param: NAME int|float|str|bool = DEFAULT -- doc)"
                )
            if m:
                typ = m["type"]
                try:
                    default = CASTS[typ](m["default"].strip())
                except ValueError:
                    raise CircuitrayError(
                        f"{path}: parameter {m['name']}: default {m['default']!r} is not {typ}"
                    ) from None
                params[m["name"]] = (typ, default, m["doc"] or "")
            elif u:
                uses += [n.strip() for n in u["names"].split(",") if n.strip()]
            elif not params and not uses:
                desc.append(line.lstrip("-").strip())
        for used in uses:
            params = {**get_query(used).params, **params}
        return cls(path.stem, " ".join(d for d in desc if d), params, text, uses)

    def bind(self, overrides: dict[str, str]) -> dict[str, object]:
        unknown = sorted(set(overrides) - set(self.params))
        if unknown:
            known = ", ".join(self.params) or "none"
            raise CircuitrayError(
                f"query {self.name}: unknown parameter {unknown[0]!r} (parameters: {known})"
            )
        values: dict[str, object] = {}
        for name, (typ, default, _) in self.params.items():
            if name in overrides:
                try:
                    values[name] = CASTS[typ](overrides[name])
                except ValueError:
                    raise CircuitrayError(
                        f"query {self.name}: parameter {name!r} must be {typ}, "
                        f"got {overrides[name]!r}"
                    ) from None
            else:
                values[name] = default
        return values


def list_queries() -> list[NamedQuery]:
    d = queries_dir()
    return [NamedQuery.load(p) for p in sorted(d.glob("*.sql"))]


def get_query(name: str) -> NamedQuery:
    path = queries_dir() / f"{name}.sql"
    if not re.fullmatch(r"[A-Za-z0-9_]+", name) or not path.exists():
        known = ", ".join(q.name for q in list_queries())
        raise CircuitrayError(f"unknown query {name!r} (known: {known})")
    return NamedQuery.load(path)


def _folder_name(r: str) -> str:
    return str(r).rstrip("/").rsplit("/", 1)[-1] if "://" in str(r) else Path(r).resolve().name


def _child(r: str, name: str) -> str:
    return f"{str(r).rstrip('/')}/{name}" if "://" in str(r) else str(Path(r) / name)


def read_series(series_dir: str) -> list[tuple[int, str]] | None:
    """The (step, run folder name) pairs a series folder's ``series.json`` lists, in
    step order; None when ``series_dir`` holds no series.json. A series.json that is not
    a circuitray series (not JSON, another format, a run that is not a folder name,
    a step listed twice) is refused in one line."""
    probe = RunStore(series_dir)  # its filesystem: local or object storage
    path = probe.files.path(SERIES_FILE)
    if not probe.files.exists(path):
        return None
    where = _child(series_dir, SERIES_FILE)
    probe.files.refuse_link(path)  # a no-op on object storage (no links)
    try:
        meta = json.loads(probe.files.read_text(path))
    except json.JSONDecodeError as e:
        raise RunDirError(f"{where}: corrupt {SERIES_FILE} ({e.msg})") from None
    except UnicodeDecodeError:
        raise RunDirError(f"{where}: corrupt {SERIES_FILE} (not text)") from None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt != SERIES_FORMAT:
        raise RunDirError(
            f"{where}: not a circuitray series (format {fmt!r}, expected {SERIES_FORMAT!r})"
        )
    runs = meta.get("runs")
    if not isinstance(runs, list) or not runs:
        raise RunDirError(f"{where}: lists no runs (expected runs: [{{step, run}}, ...])")
    pairs: list[tuple[int, str]] = []
    for i, entry in enumerate(runs):
        step = entry.get("step") if isinstance(entry, dict) else None
        run = entry.get("run") if isinstance(entry, dict) else None
        if (
            not isinstance(step, int)
            or isinstance(step, bool)
            or not isinstance(run, str)
            or not SERIES_RUN_RE.fullmatch(run)
        ):
            raise RunDirError(
                f'{where}: runs[{i}] is not {{"step": INT, "run": FOLDER NAME}} '
                f"(got {json.dumps(entry)[:80]})"
            )
        pairs.append((step, run))
    steps = [step for step, _ in pairs]
    folders = [run for _, run in pairs]
    for what, listed in (("step", [str(v) for v in steps]), ("run", folders)):
        twice = sorted({v for v in listed if listed.count(v) > 1})
        if twice:
            raise RunDirError(f"{where}: {what} {twice[0]} is listed twice")
    return sorted(pairs)


@dataclass
class _OpenRun:
    """One folder the views read: its store, view name, series and step."""

    path: str
    store: PartStore
    name: str
    series: str | None
    step: int | None
    # (transcoder reference, feature table) once :func:`_run_features` read them.
    features: tuple[str | None, Path | None] | None = None


def _run_step(store: PartStore) -> int | None:
    step = store.read_meta().get("step")
    if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
        raise RunDirError(f"{store.meta_path}: step {step!r} is not an integer")
    return step


def _open_stores(run_dirs: list[str]) -> list[_OpenRun]:
    """The folders behind ``run_dirs`` (series expanded), opened and named: a run by its
    folder's name, a series' run ``SERIES/RUN``; the same folder name given twice
    numbers every name given (``NAME#i``, i the position given)."""
    if not run_dirs:
        raise CircuitrayError("give at least one run folder")
    names = [_folder_name(str(r)) for r in run_dirs]
    if len(set(names)) != len(names):  # same folder name in two places: number them
        names = [f"{n}#{i}" for i, n in enumerate(names)]
    runs: list[_OpenRun] = []
    for r, name in zip(map(str, run_dirs), names, strict=True):
        store = RunStore(r)
        series = None
        if not store.exists() and not InterventionStore(r).exists():
            series = read_series(r)
        if series is not None:
            for step, folder in series:
                path = _child(r, folder)
                if "://" not in r and os.path.islink(path):
                    raise RunDirError(
                        f"{path}: is a symbolic link; a series reads only the run folders "
                        "inside its own folder"
                    )
                member = RunStore(path)
                if not member.exists():
                    missing = (
                        "is missing" if not member.files.exists(member.base) else "has no run.json"
                    )
                    raise RunDirError(
                        f"series {_folder_name(r)} ({r}): step {step}'s run folder "
                        f"{folder} {missing}"
                    )
                member.check_confined()
                step_of = _run_step(member)
                if step_of is None:  # run.json without one: the series says which
                    step_of = step
                elif step_of != step:
                    raise RunDirError(
                        f"series {_folder_name(r)} ({r}): {SERIES_FILE} lists {folder} at "
                        f"step {step} but its run.json says step {step_of}"
                    )
                runs.append(_OpenRun(path, member, f"{name}/{folder}", name, step_of))
            continue
        if not store.exists():
            store = InterventionStore(r)
        if not store.exists():
            raise RunDirError(
                f"{r}: not a circuitray run folder (no run.json) nor an intervention "
                f"folder (no intervention.json) nor a series folder (no {SERIES_FILE})"
            )
        store.check_confined()  # a link in the folder could make a read leave it
        runs.append(_OpenRun(r, store, name, None, _run_step(store)))
    return runs


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# DuckDB reads every path it is given (one, or each of a list) as a glob pattern when
# it holds *, ? or [: a folder "run?x" also matches "runAx". Each such character is
# written as a class of itself ("[?]" matches "?" only), so a path names one file.
_GLOB_CHARS = re.compile(r"([*?\[])")


def _unglobbed(path: str) -> str:
    """``path`` as a DuckDB pattern that matches only ``path`` itself."""
    return _GLOB_CHARS.sub(r"[\1]", path)


def _path_literal(path: str) -> str:
    """A file path as a DuckDB string literal naming that file, never a pattern."""
    return _literal(_unglobbed(path))


def _sandbox_paths(paths: list[str]) -> list[str]:
    """``paths`` for DuckDB's ``allowed_directories``/``allowed_paths``, each also as
    :func:`_unglobbed` writes it: DuckDB checks the path as written in the SQL and
    every file it matches, so both must be allowed. The unglobbed form grants nothing
    more: as a pattern it matches only the path itself."""
    return sorted({*paths, *map(_unglobbed, paths)})


def _sql_type(t: pa.DataType) -> str:
    """DuckDB's name for an Arrow type of :mod:`circuitray.schema` (what DuckDB makes of
    a registered Arrow table with that type)."""
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _sql_type(t.value_type) + "[]"
    if pa.types.is_struct(t):
        fields = ", ".join(
            f'"{t.field(i).name}" {_sql_type(t.field(i).type)}' for i in range(t.num_fields)
        )
        return f"STRUCT({fields})"
    names = {
        pa.bool_(): "BOOLEAN",
        pa.int8(): "TINYINT",
        pa.int16(): "SMALLINT",
        pa.int32(): "INTEGER",
        pa.int64(): "BIGINT",
        pa.float32(): "FLOAT",
        pa.float64(): "DOUBLE",
        pa.string(): "VARCHAR",
        pa.large_string(): "VARCHAR",
    }
    if t not in names:
        raise TypeError(f"no DuckDB type for Arrow {t}")
    return names[t]


def _empty_select(schema: pa.Schema) -> str:
    """A SELECT of no rows with ``schema``'s columns and types."""
    columns = ", ".join(f'CAST(NULL AS {_sql_type(f.type)}) AS "{f.name}"' for f in schema)
    return f"SELECT {columns} LIMIT 0"


def _with_schema(table: str, source: str) -> str:
    """``source`` as a FROM item; for a table whose schema gained columns
    (:data:`GROWN`), with every column of the schema in its order, the ones a folder
    written before them lacks (in some or all of its files) as NULL."""
    if table not in GROWN:
        return source
    return f"(({_empty_select(SCHEMAS[table])}) UNION ALL BY NAME (SELECT * FROM {source}))"


def _int_literal(value: int | None) -> str:
    return "NULL" if value is None else str(int(value))


def _view_statements(
    runs: list[_OpenRun],
    *,
    register: Callable[[str, object], object] | None,
    supernodes: str | None = None,
) -> list[str]:
    """The CREATE VIEW statements over ``runs``; object storage is read through
    pyarrow datasets given to ``register`` (None: refused, there is no plain SQL).
    ``supernodes`` names a registered table for the ``supernodes`` view (else empty)."""
    # The order runs were given in: compare_runs takes position 0 as the baseline.
    rows = ", ".join(
        f"({_literal(run.name)}, CAST({i} AS BIGINT), {_literal(run.path)}, "
        f"CAST({_int_literal(run.step)} AS INTEGER), "
        f"CAST({'NULL' if run.series is None else _literal(run.series)} AS VARCHAR))"
        for i, run in enumerate(runs)
    )
    statements = [
        *METRIC_MACROS,
        f"CREATE VIEW runs AS SELECT * FROM (VALUES {rows}) "
        "AS _runs(run, position, path, step, series)",
    ]
    for table, schema in SCHEMAS.items():
        selects = []
        for run in runs:
            store = run.store
            folder_table = FOLDER_TABLE.get(table, table)
            files = store.part_files(folder_table) if folder_table in store.tables else []
            columns = f"{_literal(run.name)} AS run, *"
            if table == "graphs":  # last, so that existing column positions hold
                columns += f", CAST({_int_literal(run.step)} AS INTEGER) AS step"
            if files and not store.local:
                # Object storage: DuckDB scans a pyarrow dataset over pyarrow's S3/GCS
                # filesystem (no DuckDB extension to download).
                if register is None:
                    raise CircuitrayError(
                        f"{store.uri}: object storage is read through pyarrow, not plain SQL"
                    )
                alias = f"_{table}_{len(selects)}_{abs(hash(store.uri)) % 10**8}"
                register(alias, store.dataset(folder_table))
                selects.append(f"SELECT {columns} FROM {_with_schema(table, alias)}")
            elif files:
                file_list = ", ".join(_path_literal(f) for f in files)
                by_name = ", union_by_name = true" if table in GROWN else ""
                source = f"read_parquet([{file_list}]{by_name})"
                selects.append(f"SELECT {columns} FROM {_with_schema(table, source)}")
            else:
                selects.append(f"SELECT {columns} FROM ({_empty_select(schema)})")
        statements.append(f"CREATE VIEW {table} AS " + " UNION ALL ".join(selects))
    statements.append(_features_view(runs))
    statements.append(
        f"CREATE VIEW supernodes AS {_empty_select(SUPERNODE_SCHEMA)}"
        if supernodes is None
        else f"CREATE VIEW supernodes AS SELECT * FROM {supernodes}"
    )
    return statements


def _run_features(run: _OpenRun) -> tuple[str | None, Path | None]:
    """The transcoder reference a run folder records and its feature table, if any
    (intervention folders have none of their own); read once per opened run."""
    if run.features is None:
        if isinstance(run.store, InterventionStore):
            run.features = (None, None)
        else:
            meta = run.store.read_meta()
            run.features = (run_transcoders(meta), run_features_path(meta))
    return run.features


def _features_view(runs: list[_OpenRun]) -> str:
    """The ``features`` view: per run, the feature table of the transcoder set its
    run.json records (:mod:`circuitray.features.store`), with columns run and
    transcoders first; no rows for a run whose set has none."""
    columns = ", ".join(f'"{name}"' for name in FEATURE_SCHEMA.names)
    selects = []
    for run in runs:
        transcoders, path = _run_features(run)
        ref = "NULL" if transcoders is None else _literal(transcoders)
        head = f"{_literal(run.name)} AS run, CAST({ref} AS VARCHAR) AS transcoders"
        source = (
            f"({_empty_select(FEATURE_SCHEMA)})"
            if path is None
            else f"read_parquet({_path_literal(str(path))})"
        )
        selects.append(f"SELECT {head}, {columns} FROM {source}")
    return "CREATE VIEW features AS " + " UNION ALL ".join(selects)


def _feature_files(runs: list[_OpenRun]) -> list[str]:
    """The feature tables the runs' ``features`` view reads (and no other file)."""
    paths = {_run_features(run)[1] for run in runs}
    return sorted(str(p.resolve()) for p in paths if p is not None)


def view_sql(run_dirs: list[str]) -> list[str]:
    """The statements :func:`connect` runs to make its views over local run folders
    (series folders expanded): plain SQL, which a bare DuckDB connection can run to
    read the same views. Raises CircuitrayError for folders on object storage."""
    return _view_statements(_open_stores(run_dirs), register=None)


def connect(
    run_dirs: list[str], *, threads: int | None = None, supernodes: str | None = None
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with ``graphs``, ``nodes``, ``edges`` views over the runs
    (module docstring); ``supernodes``: a grouping file for the ``supernodes`` view."""
    return _connect(_open_stores(run_dirs), threads=threads, supernodes=supernodes)


def _connect(
    runs: list[_OpenRun], *, threads: int | None = None, supernodes: str | None = None
) -> duckdb.DuckDBPyConnection:
    groups = None if supernodes is None else read_supernodes(supernodes)
    con = duckdb.connect(":memory:")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    if groups is not None:
        con.register("_supernodes", groups)
    try:
        table = None if groups is None else "_supernodes"
        for statement in _view_statements(runs, register=con.register, supernodes=table):
            con.execute(statement)
    except duckdb.Error as e:
        con.close()
        raise _query_error("cannot open the runs", e, runs) from None
    return con


def _query_error(label: str, error: duckdb.Error, runs: list[_OpenRun]) -> CircuitrayError:
    """One line for a DuckDB error: a torn part file of the runs, named with the way
    out, when that is what failed; else DuckDB's first line."""
    text = str(error)
    if "parquet" in text.lower():
        for run in runs:
            bad = run.store.unreadable_parts()
            if bad:
                return run.store.unreadable(*next(iter(bad.values())))
    return CircuitrayError(f"{label}: {text.splitlines()[0]}")


def _params_of(con: duckdb.DuckDBPyConnection, sql: str, values: dict) -> dict:
    """The values that ``sql`` has placeholders for (DuckDB refuses extra ones)."""
    names = set().union(*(st.named_parameters for st in con.extract_statements(sql)))
    return {k: v for k, v in values.items() if k in names}


def _query_statements(
    con: duckdb.DuckDBPyConnection, query: NamedQuery, values: dict[str, object]
) -> list[tuple[str, dict[str, object]]]:
    statements = []
    for used_name in query.uses:
        used = get_query(used_name)
        sql = f"CREATE TEMP TABLE {used.name} AS {used.sql.strip().rstrip(';')}"
        statements.append((sql, _params_of(con, sql, values)))
    statements.append((query.sql, _params_of(con, query.sql, values)))
    return statements


def query_statements(
    name: str, *, params: dict[str, str] | None = None
) -> list[tuple[str, dict[str, object]]]:
    """What :func:`run_query` runs on the views for the named query, in order: one
    CREATE TEMP TABLE per ``uses:`` query, then the query, each with the values of the
    parameters it has placeholders for."""
    query = get_query(name)
    values = query.bind(params or {})
    con = duckdb.connect(":memory:")
    try:
        return _query_statements(con, query, values)
    except duckdb.Error as e:
        raise CircuitrayError(f"query {name}: {str(e).splitlines()[0]}") from None
    finally:
        con.close()


def _relation(
    con: duckdb.DuckDBPyConnection,
    query: NamedQuery,
    values: dict[str, object],
    *,
    made: set[str],
) -> duckdb.DuckDBPyRelation:
    """``query`` with bound ``values`` on ``con``, its ``uses:`` tables made first, each
    once per connection (``made`` holds the names already made)."""
    *setup, (sql, bound) = _query_statements(con, query, values)
    for used, (statement, statement_params) in zip(query.uses, setup, strict=True):
        if used not in made:
            con.execute(statement, statement_params)
            made.add(used)
    return con.sql(sql, params=bound)


def named_relation(
    con: duckdb.DuckDBPyConnection,
    name: str,
    *,
    params: dict[str, str] | None = None,
    made: set[str],
) -> duckdb.DuckDBPyRelation:
    """The named query ``name`` on an open connection (:func:`connect`), as a DuckDB
    relation (``.df()``, ``.to_arrow_table()``...): for a caller running several named
    queries on one connection, each ``uses:`` table made once (``made``)."""
    query = get_query(name)
    return _relation(con, query, query.bind(params or {}), made=made)


def run_query(
    name: str,
    run_dirs: list[str],
    *,
    params: dict[str, str] | None = None,
    supernodes: str | None = None,
) -> pa.Table:
    """Run the named query over ``run_dirs`` with ``params`` (strings, cast per header);
    ``supernodes``: a grouping file (:mod:`circuitray.query.supernodes`) for the
    ``supernodes`` view, which the consensus queries collapse features by."""
    query = get_query(name)
    values = query.bind(params or {})
    runs = _open_stores(run_dirs)
    con = _connect(runs, supernodes=supernodes)
    try:
        *setup, (sql, bound) = _query_statements(con, query, values)
        for statement, statement_params in setup:
            con.execute(statement, statement_params)
        return con.sql(sql, params=bound).to_arrow_table()
    except duckdb.Error as e:
        raise _query_error(f"query {name}", e, runs) from None
    finally:
        con.close()


def run_queries(
    names: list[str],
    run_dirs: list[str],
    *,
    params: dict[str, str] | None = None,
    supernodes: str | None = None,
    memory_limit: str | None = None,
) -> dict[str, pa.Table]:
    """Several named queries over one connection to ``run_dirs``: a query that several
    of them use is computed once. ``params`` go to every query that declares them (a
    name no query declares is refused); ``supernodes`` as for :func:`run_query`.
    ``memory_limit`` (DuckDB's, e.g. ``1GB``) bounds the connection's memory: what
    does not fit spills to a temporary folder of its own, removed afterwards."""
    if memory_limit is not None and not MEMORY_LIMIT_RE.fullmatch(memory_limit):
        raise CircuitrayError(f"memory limit {memory_limit!r}: a size such as 800MB or 2GB")
    queries = [get_query(name) for name in names]
    params = params or {}
    declared = set().union(*(q.params for q in queries))
    unknown = sorted(set(params) - declared)
    if unknown:
        raise CircuitrayError(
            f"queries {', '.join(names)}: unknown parameter {unknown[0]!r} "
            f"(parameters: {', '.join(sorted(declared)) or 'none'})"
        )
    runs = _open_stores(run_dirs)
    con = _connect(runs, supernodes=supernodes)
    done: set[str] = set()
    out: dict[str, pa.Table] = {}
    spill = None
    try:
        if memory_limit is not None:
            spill = tempfile.mkdtemp(prefix="circuitray-duckdb-")
            con.execute(f"SET memory_limit = '{memory_limit}'")
            con.execute(f"SET temp_directory = {_literal(spill)}")
            con.execute("SET preserve_insertion_order = false")
        for query in queries:
            values = query.bind({k: v for k, v in params.items() if k in query.params})
            out[query.name] = _relation(con, query, values, made=done).to_arrow_table()
    except duckdb.Error as e:
        raise _query_error(f"queries {', '.join(names)}", e, runs) from None
    finally:
        con.close()
        if spill is not None:
            shutil.rmtree(spill, ignore_errors=True)
    return out


def _check_read_only(con: duckdb.DuckDBPyConnection, statement) -> None:
    kind = statement.type.name
    if kind == "EXPLAIN":
        m = EXPLAIN_RE.match(statement.query)
        try:
            inner = con.extract_statements(m["inner"]) if m else []
        except duckdb.Error:
            inner = []
        if len(inner) != 1:
            raise CircuitrayError("SQL: EXPLAIN of this statement is not allowed")
        kind = inner[0].type.name
    if kind not in READ_ONLY_TYPES - {"EXPLAIN"}:
        raise CircuitrayError(
            f"SQL: {kind} statements are not allowed; circuitray sql is read-only "
            "(SELECT queries over graphs, nodes, edges)"
        )


def run_sql(run_dirs: list[str], sql: str) -> pa.Table:
    """Run read-only ad-hoc SQL over the runs' views (see module docstring)."""
    runs = _open_stores(run_dirs)
    con = _connect(runs)
    try:
        try:
            statements = con.extract_statements(sql)
        except duckdb.Error as e:
            raise CircuitrayError(f"SQL: {str(e).splitlines()[0]}") from None
        if not statements:
            raise CircuitrayError("SQL: no statement given")
        for st in statements:
            _check_read_only(con, st)
        # Only the run folders stay readable (a series' own, not the series folder);
        # then lock the configuration.
        dirs = [str(Path(r.path).resolve()) + "/" for r in runs if r.store.local]
        con.execute("SET allowed_directories = $dirs", {"dirs": _sandbox_paths(dirs)})
        # The features view reads the runs' feature tables: those files, not their folder.
        paths = _sandbox_paths(_feature_files(runs))
        con.execute("SET allowed_paths = $paths", {"paths": paths})
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        result = None
        for st in statements:
            result = con.sql(st.query).to_arrow_table()
        assert result is not None
        return result
    except duckdb.Error as e:
        raise _query_error("SQL", e, runs) from None
    finally:
        con.close()
