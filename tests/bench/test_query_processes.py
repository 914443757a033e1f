"""Whole-process query timings: the bare DuckDB process runs circuitray's own statements
(views and named queries, from the engine) and gets circuitray's answers; the benchmark
record on a small real run; a missing run folder is one clear error."""

from __future__ import annotations

import json
import subprocess
import sys

import duckdb
import pyarrow as pa
import pytest
from conftest import assert_one_line_error, circuitray

from circuitray.bench.processes import (
    BARE_PROCESS,
    ProcessBenchConfig,
    _same,
    circuitray_command,
    time_query_processes,
)
from circuitray.errors import RunDirError
from circuitray.query.engine import (
    SCHEMAS,
    _empty_select,
    connect,
    list_queries,
    query_statements,
    run_query,
    view_sql,
)


def _describe(con: duckdb.DuckDBPyConnection, view: str) -> list[tuple]:
    return [tuple(r[:2]) for r in con.execute(f"DESCRIBE {view}").fetchall()]


def test_view_sql_makes_the_views_connect_makes(ray_run):
    run = str(ray_run.out)
    bare = duckdb.connect()
    for statement in view_sql([run]):
        bare.execute(statement)
    ours = connect([run])
    for view in ("runs", *SCHEMAS):
        assert _describe(bare, view) == _describe(ours, view), view
        count = f"SELECT count(*) FROM {view}"
        assert bare.execute(count).fetchone() == ours.execute(count).fetchone(), view
    # A run folder has no intervention results: that view is empty, with its columns.
    assert bare.execute("SELECT count(*) FROM interventions").fetchone() == (0,)
    assert bare.execute("SELECT * FROM runs").fetchall() == [("ws2run", 0, run, None, None)]


@pytest.mark.parametrize("table", sorted(SCHEMAS))
def test_empty_views_have_the_arrow_schema_types(table):
    """An empty view is typed as DuckDB types the schema's (empty) Arrow table."""
    schema = SCHEMAS[table]
    con = duckdb.connect()
    con.register("arrow_empty", pa.table({f.name: pa.array([], f.type) for f in schema}))
    con.execute(f"CREATE VIEW sql_empty AS {_empty_select(schema)}")
    assert _describe(con, "sql_empty") == _describe(con, "arrow_empty")
    assert con.execute("SELECT count(*) FROM sql_empty").fetchone() == (0,)


def _bare(spec: dict) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, "-c", BARE_PROCESS],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(proc.stdout)


def test_query_statements_give_run_query_answers(ray_run):
    """Every named query (path_stats with its ``uses: paths`` table) in a bare process."""
    run = str(ray_run.out)
    views = view_sql([run])
    names = [q.name for q in list_queries()]
    assert {"constraint_stats", "path_stats"} <= set(names)
    for name in names:
        statements = query_statements(name)
        assert len(statements) == 1 + len(next(q for q in list_queries() if q.name == name).uses)
        ours = json.loads(json.dumps(run_query(name, [run]).to_pylist(), default=str))
        assert _same(_bare({"views": views, "statements": statements}), ours), name
    stats = query_statements("constraint_stats", params={"min_graphs": "2"})
    assert stats[-1][1] == {"min_graphs": 2}


def test_time_query_processes_on_a_small_run(ray_run):
    run = str(ray_run.out)
    record = time_query_processes(run, config=ProcessBenchConfig(repeats=1))
    assert record["format"] == "circuitray-bench-processes/1"
    assert record["run_dir"] == run and record["config"]["repeats"] == 1
    assert {"cpu_count", "platform", "python", "versions"} <= set(record["machine"])
    con = duckdb.connect()
    n_edges = con.execute(f"SELECT count(*) FROM '{run}/edges/*.parquet'").fetchone()
    n_graphs = con.execute(f"SELECT count(*) FROM '{run}/graphs/*.parquet'").fetchone()
    assert n_edges and n_graphs and n_edges[0] > 0
    assert (record["graphs"], record["edges"]) == (n_graphs[0], n_edges[0])
    assert set(record["commands"]) == {"query constraint_stats", "sql"}
    for name, c in record["commands"].items():
        for side in ("circuitray", "bare"):
            assert len(c[side]["seconds"]) == 1 and c[side]["median_s"] > 0, (name, side)
        assert c["ratio"] == pytest.approx(c["circuitray"]["median_s"] / c["bare"]["median_s"])
        assert c["goal"] == "<= 3" and c["met"] == (c["ratio"] <= 3)
        assert c["same_answer"] is True
    assert record["ratios"] == {n: c["ratio"] for n, c in record["commands"].items()}
    assert record["goals_met"] == all(c["met"] for c in record["commands"].values())
    sql = record["commands"]["sql"]
    assert sql["circuitray"]["argv"] == [*circuitray_command(), "sql", run, ProcessBenchConfig.sql]
    # Both processes answered, and agreed, with what DuckDB counts in the Parquet files.
    assert sql["answer"] == [{"count_star()": n_edges[0]}] and sql["rows"] == 1
    stats = record["commands"]["query constraint_stats"]
    assert stats["rows"] == len(run_query("constraint_stats", [run])) > 0
    assert sum(row["graphs"] + row["errors"] for row in stats["answer"]) == n_graphs[0]
    assert record["floor"]["median_s"] > 0


def test_a_missing_run_folder_is_one_clear_error(tmp_path):
    with pytest.raises(RunDirError, match="make run"):
        time_query_processes(tmp_path / "absent")
    p = circuitray("bench", "processes", tmp_path / "absent")
    assert p.returncode == 2
    assert_one_line_error(p, "no run folder", "make run")
