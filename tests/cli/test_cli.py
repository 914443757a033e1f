"""The ``circuitray`` command, run as a real subprocess."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import N_RAY_PROMPTS, assert_one_line_error, assert_refused, circuitray

from circuitray.prompts.ws2 import CONSTRAINTS


@pytest.fixture(scope="module")
def good_prompts(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("cli") / "ok.jsonl"
    p.write_text(json.dumps({"prompt_id": "a", "prompt": "not tall but"}) + "\n")
    return p


def test_missing_prompt_file(tmp_path):
    p = circuitray("run", tmp_path / "nope.parquet", "--out", tmp_path / "run", "--model", "tiny")
    assert_one_line_error(p, "nope.parquet", "not found")
    assert p.returncode == 2
    assert not (tmp_path / "run").exists()


def test_csv_without_prompt_column(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text("prompt_id,text\na,not tall but\n")
    p = circuitray("run", f, "--out", tmp_path / "run", "--model", "tiny")
    assert_one_line_error(p, "p.csv", "missing required column 'prompt'")


def test_jsonl_with_empty_prompt_names_the_row(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(
        json.dumps({"prompt_id": "a", "prompt": "not tall but"})
        + "\n"
        + json.dumps({"prompt_id": "b", "prompt": "not wet but"})
        + "\n"
        + json.dumps({"prompt_id": "c", "prompt": ""})
        + "\n"
    )
    p = circuitray("run", f, "--out", tmp_path / "run", "--model", "tiny")
    assert_one_line_error(p, "p.jsonl", "row 3", "prompt_id c", "'prompt' is empty")


def test_unknown_model_path(tmp_path, good_prompts):
    p = circuitray("run", good_prompts, "--out", tmp_path / "run", "--model", "/no/such/dir")
    assert_one_line_error(p, "/no/such/dir")
    assert not (tmp_path / "run").exists()


def test_ws2_is_deterministic(tmp_path):
    a, b, c = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"
    for out, seed in ((a, 1), (b, 1), (c, 2)):
        p = circuitray("ws2", "--n", 30, "--seed", seed, "--out", out)
        assert p.returncode == 0, p.stderr
        assert "wrote 30 prompts" in p.stderr
    ta, tb, tc = (pq.read_table(x) for x in (a, b, c))
    assert ta.num_rows == 30
    assert ta.equals(tb)
    assert not ta.equals(tc)
    assert ta["prompt"].to_pylist() != tc["prompt"].to_pylist()
    types = ta["constraint_type"].to_pylist()
    assert {t: types.count(t) for t in CONSTRAINTS} == {t: 10 for t in CONSTRAINTS}


def test_ws2_bad_type(tmp_path):
    p = circuitray("ws2", "--n", 3, "--types", "rhyme", "--out", tmp_path / "x.parquet")
    assert_one_line_error(p, "rhyme")
    assert not (tmp_path / "x.parquet").exists()


def test_sql_refuses_copy(ray_run, tmp_path):
    target = tmp_path / "x.csv"
    p = circuitray("sql", ray_run.out, f"COPY graphs TO '{target}'")
    assert_one_line_error(p, "COPY", "not allowed")
    assert not target.exists()


def test_sql_select_csv(ray_run):
    p = circuitray(
        "sql",
        ray_run.out,
        "SELECT count(*) AS n FROM graphs WHERE status = 'ok'",
        "--format",
        "csv",
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ['"n"', str(N_RAY_PROMPTS)]


def test_query_constraint_stats_json(ray_run):
    p = circuitray("query", "constraint_stats", ray_run.out, "--format", "json")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert {r["constraint_type"] for r in rows} == set(CONSTRAINTS)
    assert sum(r["graphs"] for r in rows) == N_RAY_PROMPTS
    assert all(r["run"] == ray_run.out.name for r in rows)


def test_query_two_runs_relative_paths(ray_run, tmp_path):
    shutil.copytree(ray_run.out, tmp_path / "second")
    shutil.copytree(ray_run.out, tmp_path / "first")
    p = circuitray("query", "constraint_stats", "first", "second", "--format", "json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert sorted({r["run"] for r in rows}) == ["first", "second"]
    assert len(rows) == 2 * len(CONSTRAINTS)


def test_query_errors(ray_run):
    assert_one_line_error(circuitray("query", "nope", ray_run.out), "unknown query 'nope'")
    assert_one_line_error(
        circuitray("query", "constraint_stats", ray_run.out, "--param", "bogus=1"),
        "unknown parameter 'bogus'",
    )
    assert_one_line_error(
        circuitray("query", "constraint_stats", ray_run.out, "--param", "min_graphs"),
        "expected key=value",
    )


def test_query_list_json():
    p = circuitray("query", "--list", "--format", "json")
    assert p.returncode == 0, p.stderr
    queries = {q["name"]: q for q in json.loads(p.stdout)}
    assert queries["constraint_stats"]["params"]["min_graphs"]["default"] == 1


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        (["ws2"], "--json"),
        (["run"], "--json"),
        (["compact"], "--json"),
        (["query"], "--format"),
        (["sql"], "--format"),
        (["compare"], "--format"),
        (["pipeline", "run"], "--json"),
        (["model", "warm"], "--json"),
        (["organism", "build"], "--json"),
        (["report"], "--json"),
        (["export"], "--json"),
        (["bench", "processes"], "--json-out"),
        (["bench", "scale"], "--json-out"),
    ],
)
def test_machine_readable_output(command, flag):
    p = circuitray(*command, "--help")
    assert p.returncode == 0 and flag in p.stdout, p.stdout


def test_ws2_and_compact_json(ray_run, tmp_path):
    p = circuitray("ws2", "--n", 4, "--out", tmp_path / "w.parquet", "--json")
    assert p.returncode == 0
    assert json.loads(p.stdout)["prompts"] == 4
    copy = tmp_path / "run"
    shutil.copytree(ray_run.out, copy)
    p = circuitray("compact", copy, "--json")
    assert p.returncode == 0, p.stderr
    assert set(json.loads(p.stdout)) == {"run_dir", "parts_before", "parts_after"}


def test_run_prints_why_prompts_failed(tmp_path, good_prompts):
    """A run that ends with error rows says why on stderr, not only how many."""
    out = tmp_path / "run"
    p = circuitray("run", good_prompts, "--out", out, "--model", "tiny", "--max-tokens", 2)
    assert p.returncode == 0, p.stderr
    assert "a: error: ValueError: prompt has" in p.stderr
    assert "more than max_tokens=2" in p.stderr
    assert "0 ok, 1 errors of 1" in p.stderr


def test_csv_with_stray_quote_names_the_line(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text(
        "prompt_id,prompt\n"
        'z1,"the word blarf\n'
        "z2,the kite will glide so it moves\n"
        "z3,the boat is not rich so the boat is\n"
    )
    p = circuitray("run", f, "--out", tmp_path / "run", "--model", "tiny")
    assert_refused(p, f"{f}: line 2: a quoted field opened here is never closed")
    assert not (tmp_path / "run").exists()


JOIN = (
    "SELECT g.graph_id, n.graph_id, n.node_id FROM graphs g JOIN nodes n "
    "ON g.graph_id = n.graph_id ORDER BY 1 DESC, 3 LIMIT 2"
)


def _rich_rows(text: str) -> list[list[str]]:
    """The cells of a rich table as print_table draws it (no outer edge)."""
    lines = [line for line in text.splitlines() if "┃" in line or "│" in line]
    return [[cell.strip() for cell in re.split("[┃│]", line)] for line in lines]


def test_sql_repeated_column_names_in_every_format(ray_run, tmp_path):
    """A name the query repeats is kept once; each repeat gets the first free _1, _2..."""
    p = circuitray(
        "sql", ray_run.out, JOIN.replace("n.graph_id,", "n.graph_id AS g2,"), "--format", "json"
    )
    assert p.returncode == 0, p.stderr
    expected = [[r["graph_id"], r["g2"], r["node_id"]] for r in json.loads(p.stdout)]
    assert len(expected) == 2 and expected[0][0] == N_RAY_PROMPTS - 1
    names = ["graph_id", "graph_id_1", "node_id"]

    p = circuitray("sql", ray_run.out, JOIN)
    assert p.returncode == 0, p.stderr
    assert _rich_rows(p.stdout) == [names] + [[str(v) for v in row] for row in expected]

    p = circuitray("sql", ray_run.out, JOIN, "--format", "json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == [dict(zip(names, row, strict=True)) for row in expected]

    p = circuitray("sql", ray_run.out, JOIN, "--format", "csv")
    assert p.returncode == 0, p.stderr
    assert list(csv.reader(p.stdout.splitlines())) == [names] + [
        [str(v) for v in row] for row in expected
    ]

    out = tmp_path / "j.parquet"
    p = circuitray("sql", ray_run.out, JOIN, "--format", "parquet", "--output", out)
    assert p.returncode == 0, p.stderr
    t = pq.read_table(out)
    assert t.column_names == names
    assert [list(r.values()) for r in t.to_pylist()] == expected


def test_sql_repeated_names_never_take_a_name_the_query_gave(ray_run):
    p = circuitray(
        "sql", ray_run.out, "SELECT 1 AS a, 2 AS a, 3 AS b, 4 AS a_1, 5 AS a", "--format", "json"
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == [{"a": 1, "a_2": 2, "b": 3, "a_1": 4, "a_3": 5}]
