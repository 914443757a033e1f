"""Injection through named-query parameters and writes through ad-hoc SQL are refused.

The issue's acceptance: "Injection attempts through --param and write attempts through
sql are refused; tests show it". A named query casts every ``--param`` to the type its
header declares and lets DuckDB bind the value (never pasted into the SQL);
``circuitray sql`` runs plain queries only, with file access limited to the run folders.

Already covered elsewhere and not repeated here: ``run_sql`` refusing SET, ATTACH, COPY,
INSTALL, LOAD, CREATE, PRAGMA and reads outside the run (query/test_engine.py), and
``circuitray sql`` refusing COPY to a file (cli/test_cli.py). This file adds the command-line
level for the rest, statements no test refused yet (INSERT, EXPORT, DROP, a write after a
query, COPY into the run folder itself, EXPLAIN ANALYZE of a write), and the parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import N_RAY_PROMPTS, assert_refused, circuitray

from circuitray.errors import CircuitrayError
from circuitray.query.engine import run_query, run_sql

# Text that would change a query's meaning if it were pasted into the SQL.
EVIL_LABEL = "x'; DROP VIEW graphs; --"
INT_INJECTIONS = [
    "1; DROP TABLE graphs",
    "1 OR 1=1",
    "0); COPY graphs TO '{target}'; --",
]


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> content hash of every file under ``root``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def run_copy(ray_run, tmp_path_factory) -> Path:
    """A private copy of the shared run: a write that gets through cannot spoil the
    other tests' run."""
    copy = tmp_path_factory.mktemp("query_safety") / "run"
    shutil.copytree(ray_run.out, copy)
    return copy


@pytest.fixture
def untouched(run_copy):
    """Fails the test if anything under the run folder changed."""
    before = snapshot(run_copy)
    yield run_copy
    assert snapshot(run_copy) == before


# -- named queries: parameters are typed and bound --------------------------------------
@pytest.mark.parametrize("value", INT_INJECTIONS)
def test_query_int_param_injection_refused_cli(untouched, tmp_path, value):
    target = tmp_path / "x.csv"
    value = value.format(target=target)
    p = circuitray(
        "query", "constraint_stats", untouched, "--param", f"min_graphs={value}", cwd=tmp_path
    )
    line = assert_refused(p)
    assert line == (
        f"error: query constraint_stats: parameter 'min_graphs' must be int, got {value!r}"
    )
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", INT_INJECTIONS)
def test_run_query_int_param_injection_refused(untouched, tmp_path, value):
    target = tmp_path / "x.csv"
    value = value.format(target=target)
    with pytest.raises(CircuitrayError) as e:
        run_query("constraint_stats", [str(untouched)], params={"min_graphs": value})
    assert str(e.value) == (
        f"query constraint_stats: parameter 'min_graphs' must be int, got {value!r}"
    )
    assert not target.exists()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("graph_id", "-1 OR 1=1"),
        ("top_k", "3; DROP VIEW graphs"),
        ("beam", "8) UNION ALL SELECT * FROM graphs --"),
        ("max_graphs", "0 OR true"),
    ],
)
def test_paths_int_params_refused(untouched, name, value):
    with pytest.raises(CircuitrayError) as e:
        run_query("paths", [str(untouched)], params={name: value})
    assert str(e.value) == f"query paths: parameter {name!r} must be int, got {value!r}"
    # path_stats uses paths and accepts its parameters: the same check applies.
    with pytest.raises(CircuitrayError, match=f"parameter '{name}' must be int"):
        run_query("path_stats", [str(untouched)], params={name: value})


def test_paths_graph_id_injection_refused_cli(untouched):
    p = circuitray("query", "paths", untouched, "--param", "graph_id=-1 OR 1=1")
    assert_refused(p, "query paths", "'graph_id'", "must be int", "'-1 OR 1=1'")


def test_paths_graph_id_not_an_int(ray_run):
    with pytest.raises(CircuitrayError) as e:
        run_query("paths", [str(ray_run.out)], params={"graph_id": "abc"})
    assert "'graph_id'" in str(e.value) and "int" in str(e.value)
    assert str(e.value) == "query paths: parameter 'graph_id' must be int, got 'abc'"


def test_paths_int_param_is_bound_as_a_value(ray_run):
    """A valid graph_id selects that one graph: the bound value reaches the query."""
    t = run_query(
        "paths", [str(ray_run.out)], params={"graph_id": "3", "max_graphs": "0", "top_k": "2"}
    )
    assert set(t["graph_id"].to_pylist()) == {3}
    assert sorted(t["rank"].to_pylist()) == [1, 2]
    everything = run_query("paths", [str(ray_run.out)], params={"max_graphs": "0", "top_k": "2"})
    assert len(set(everything["graph_id"].to_pylist())) == N_RAY_PROMPTS


@pytest.mark.parametrize(
    "param",
    [
        "min_graphs) OR (1=1",
        "min_graphs; DROP TABLE graphs",
        "1=1; DROP TABLE graphs; --",
    ],
)
def test_unknown_param_names_refused(untouched, param):
    p = circuitray("query", "constraint_stats", untouched, "--param", f"{param}=1")
    name = param.split("=", 1)[0].strip()
    assert_refused(p, f"unknown parameter {name!r}", "(parameters: min_graphs)")
    with pytest.raises(CircuitrayError, match="unknown parameter"):
        run_query("constraint_stats", [str(untouched)], params={name: "1"})


@pytest.mark.parametrize("param", ["DROP TABLE graphs", "min_graphs 1", ""])
def test_param_without_equals_refused(untouched, param):
    p = circuitray("query", "constraint_stats", untouched, "--param", param)
    assert assert_refused(p) == f"error: --param {param!r}: expected key=value"


# -- a str parameter is bound, never pasted ---------------------------------------------
@pytest.fixture
def echo_dir(tmp_path) -> Path:
    """A query folder holding one throwaway query with a str parameter."""
    d = tmp_path / "queries"
    d.mkdir()
    (d / "echo_label.sql").write_text(
        "-- Echo a text parameter next to the number of graphs.\n"
        "-- param: label str = x -- any text\n"
        "SELECT $label AS label, (SELECT count(*) FROM graphs) AS graphs\n"
        "FROM graphs LIMIT 1\n"
    )
    return d


@pytest.mark.parametrize("label", [EVIL_LABEL, "'", "$label", "x\n; DROP VIEW graphs"])
def test_str_param_is_bound_run_query(untouched, echo_dir, monkeypatch, label):
    monkeypatch.setenv("CIRCUITRAY_QUERIES_DIR", str(echo_dir))
    run = [str(untouched)]
    t = run_query("echo_label", run, params={"label": label})
    assert t.to_pylist() == [{"label": label, "graphs": N_RAY_PROMPTS}]
    # graphs is still there, for the next query and for ad-hoc SQL.
    assert run_query("echo_label", run).to_pylist() == [{"label": "x", "graphs": N_RAY_PROMPTS}]
    assert run_sql(run, "SELECT count(*) AS n FROM graphs").to_pylist() == [{"n": N_RAY_PROMPTS}]


def test_str_param_is_bound_cli(untouched, echo_dir):
    env = {**os.environ, "CIRCUITRAY_QUERIES_DIR": str(echo_dir)}
    listed = circuitray("query", "--list", "--format", "json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [q["name"] for q in json.loads(listed.stdout)] == ["echo_label"]
    p = circuitray(
        "query",
        "echo_label",
        untouched,
        "--param",
        f"label={EVIL_LABEL}",
        "--format",
        "json",
        env=env,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == [{"label": EVIL_LABEL, "graphs": N_RAY_PROMPTS}]
    after = circuitray("sql", untouched, "SELECT count(*) AS n FROM graphs", "--format", "json")
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout) == [{"n": N_RAY_PROMPTS}]


# -- circuitray sql: read-only -------------------------------------------------------------
SQL_GUARD_ERROR = (
    "SQL: {kind} statements are not allowed; circuitray sql is read-only "
    "(SELECT queries over graphs, nodes, edges)"
)
# (sql, the statement type the error names); {tmp} is the test's tmp_path, {run} the run.
CLI_WRITES = [
    ("CREATE TABLE t AS SELECT * FROM graphs", "CREATE"),
    ("INSERT INTO graphs SELECT * FROM graphs", "INSERT"),
    ("DELETE FROM graphs", "DELETE"),
    ("DROP VIEW graphs", "DROP"),
    ("ATTACH '{tmp}/other.db' AS other", "ATTACH"),
    ("INSTALL httpfs", "LOAD"),
    ("LOAD httpfs", "LOAD"),
    ("SET enable_external_access = true", "SET"),
    ("PRAGMA enable_profiling", "PRAGMA"),
    ("EXPORT DATABASE '{tmp}/export'", "EXPORT"),
    ("CHECKPOINT", "CALL"),
    ("COPY graphs TO '{run}/graphs/copy.parquet'", "COPY"),  # into the run folder itself
    ("SELECT 1; COPY graphs TO '{tmp}/x.csv'", "COPY"),
    ("SELECT count(*) FROM graphs; ATTACH '{tmp}/other.db' AS other", "ATTACH"),
]
# The same guard in-process, for statements not refused by any test yet.
API_WRITES = [
    ("UPDATE graphs SET status = 'error'", "UPDATE"),
    ("CREATE MACRO evil(x) AS x", "CREATE"),
    ("CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')", "CREATE"),
    ("RESET allowed_directories", "SET"),
    ("USE memory", "SET"),
    ("IMPORT DATABASE '{tmp}'", "PRAGMA"),
    ("COPY FROM DATABASE memory TO other", "PRAGMA"),
    ("CALL force_checkpoint()", "CALL"),
    ("DETACH memory", "DETACH"),
    ("VACUUM", "VACUUM"),
    ("SELECT 1; INSERT INTO graphs SELECT * FROM graphs; SELECT 2", "INSERT"),
    ("INSERT INTO graphs SELECT * FROM graphs; SELECT 1", "INSERT"),
]
TRAVERSAL = "{run}/" + "../" * 16 + "etc/passwd"


@pytest.mark.parametrize(("sql", "kind"), CLI_WRITES, ids=[w[0][:40] for w in CLI_WRITES])
def test_sql_cli_refuses_writes(untouched, tmp_path, sql, kind):
    work = tmp_path / "cwd"
    work.mkdir()
    sql = sql.format(tmp=tmp_path, run=untouched)
    p = circuitray("sql", untouched, sql, cwd=work)
    assert assert_refused(p) == "error: " + SQL_GUARD_ERROR.format(kind=kind)
    assert [x.name for x in tmp_path.iterdir()] == ["cwd"]
    assert list(work.iterdir()) == []


@pytest.mark.parametrize(("sql", "kind"), API_WRITES, ids=[w[0][:40] for w in API_WRITES])
def test_run_sql_refuses_other_writes(untouched, tmp_path, sql, kind):
    with pytest.raises(CircuitrayError) as e:
        run_sql([str(untouched)], sql.format(tmp=tmp_path, run=untouched))
    assert str(e.value) == SQL_GUARD_ERROR.format(kind=kind)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/passwd')",
        f"SELECT * FROM read_blob('{TRAVERSAL}')",  # climbs out of the allowed folder
    ],
)
def test_sql_cli_refuses_reading_outside_the_run(untouched, sql):
    p = circuitray("sql", untouched, sql.format(run=untouched), "--format", "json")
    assert_refused(p, "error: SQL: Permission Error", "disabled by configuration")
    assert "root:" not in p.stdout + p.stderr


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM sniff_csv('/etc/passwd')",
        "SELECT * FROM parquet_metadata('/etc/passwd')",
        f"SELECT * FROM read_text('{TRAVERSAL}')",
        "SELECT * FROM glob('{run}/../*')",
    ],
)
def test_run_sql_refuses_other_reads_outside_the_run(untouched, sql):
    with pytest.raises(CircuitrayError, match="^SQL: Permission Error: .*disabled by config"):
        run_sql([str(untouched)], sql.format(run=untouched))


def test_sql_refuses_writes_through_a_relative_run_path(untouched, tmp_path):
    """Run folders given relative to the working directory are guarded the same way."""
    p = circuitray(
        "sql",
        os.path.relpath(untouched, tmp_path),
        "SELECT 1 AS a; COPY graphs TO 'x.csv'",
        cwd=tmp_path,
    )
    assert_refused(p, "COPY statements are not allowed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("sql", "rows"),
    [
        ("SELECT * FROM checkpoint()", []),
        ("SELECT write_log('circuitray') AS logged", [{"logged": None}]),
    ],
)
def test_sql_side_effect_functions_write_nothing(untouched, tmp_path, sql, rows):
    """DuckDB 2.0 has no SELECT-callable function that writes a file; the closest
    (checkpoint, the log) touch only the connection's in-memory database."""
    p = circuitray("sql", untouched, sql, "--format", "json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == rows
    assert list(tmp_path.iterdir()) == []


def test_sql_refuses_explain_analyze_of_a_write(ray_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ray_run.out, run)
    before = snapshot(run)
    part = sorted((run / "graphs").glob("*.parquet"))[0]
    sql = (
        f"EXPLAIN ANALYZE COPY (SELECT * FROM read_parquet('{part}') WHERE false) "
        f"TO '{part}' (FORMAT parquet)"
    )
    p = circuitray("sql", run, sql)
    assert_refused(p, "not allowed")
    assert snapshot(run) == before
    n = run_sql([str(run)], "SELECT count(*) AS n FROM graphs").to_pylist()
    assert n == [{"n": N_RAY_PROMPTS}]


def test_sql_explain_of_a_query_still_works(ray_run):
    for sql in ("EXPLAIN SELECT count(*) FROM graphs", "EXPLAIN ANALYZE SELECT 1"):
        table = run_sql([str(ray_run.out)], sql)
        assert table.num_rows >= 1 and "explain_key" in table.column_names
