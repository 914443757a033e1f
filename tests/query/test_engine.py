"""DuckDB views, the constraint_stats query, and the read-only guard of run_sql."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from statistics import mean, median

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import N_RAY_PROMPTS, assert_refused, circuitray

from circuitray.errors import CircuitrayError, RunDirError
from circuitray.prompts.ws2 import CONSTRAINTS
from circuitray.query.engine import connect, get_query, list_queries, run_query, run_sql
from circuitray.storage.run_store import RunStore


def _parquet_rows(out, table):
    """Rows of a run folder's table straight from its Parquet files."""
    rows = []
    for f in sorted((out / table).glob("*.parquet")):
        rows += pq.read_table(f).to_pylist()
    return rows


@pytest.fixture(scope="module")
def stats(ray_run):
    rows = run_query("constraint_stats", [str(ray_run.out)]).to_pylist()
    return {r["constraint_type"]: r for r in rows}


@pytest.fixture(scope="module")
def two_runs(ray_run, tmp_path_factory):
    """The shared run and a copy of it under another folder name."""
    copy = tmp_path_factory.mktemp("queries") / "copyrun"
    shutil.copytree(ray_run.out, copy)
    return [str(ray_run.out), str(copy)]


def test_constraint_stats_counts(ray_run, stats):
    graphs = _parquet_rows(ray_run.out, "graphs")
    assert set(stats) == set(CONSTRAINTS)
    expected = defaultdict(int)
    for g in graphs:
        expected[g["constraint_type"]] += 1
    assert {t: s["graphs"] for t, s in stats.items()} == expected
    assert sum(s["graphs"] for s in stats.values()) == N_RAY_PROMPTS
    assert all(s["errors"] == 0 for s in stats.values())
    assert all(s["run"] == ray_run.out.name for s in stats.values())


def test_constraint_stats_sizes_and_scores(ray_run, stats):
    by_type = defaultdict(list)
    for g in _parquet_rows(ray_run.out, "graphs"):
        by_type[g["constraint_type"]].append(g)
    for t, gs in by_type.items():
        s = stats[t]
        edges = [g["n_kept_edges"] for g in gs]
        nodes = [g["n_kept_nodes"] for g in gs]
        assert s["mean_edges"] == pytest.approx(mean(edges), abs=0.051)
        assert s["median_edges"] == pytest.approx(median(edges))
        assert s["mean_nodes"] == pytest.approx(mean(nodes), abs=0.051)
        assert s["mean_replacement"] == pytest.approx(
            mean(g["replacement_score"] for g in gs), abs=6e-4
        )
        assert s["mean_completeness"] == pytest.approx(
            mean(g["completeness_score"] for g in gs), abs=6e-4
        )
        top1 = mean(1.0 if g["top_token"] == g["target_token"] else 0.0 for g in gs)
        assert s["top1_accuracy"] == pytest.approx(top1, abs=6e-4)


def test_constraint_stats_error_weight_share_and_layers(ray_run, stats):
    graphs = _parquet_rows(ray_run.out, "graphs")
    edges = _parquet_rows(ray_run.out, "edges")
    nodes = _parquet_rows(ray_run.out, "nodes")
    total = defaultdict(float)
    from_error = defaultdict(float)
    for e in edges:
        total[e["graph_id"]] += abs(e["weight"])
        if e["src_type"] == "error":
            from_error[e["graph_id"]] += abs(e["weight"])
    layers = defaultdict(set)
    for n in nodes:
        if n["node_type"] == "feature":
            layers[n["graph_id"]].add(n["layer"])
    for t in CONSTRAINTS:
        ids = [g["graph_id"] for g in graphs if g["constraint_type"] == t]
        share = mean(from_error[i] / total[i] if total[i] else 0.0 for i in ids)
        assert 0 < share < 1
        assert stats[t]["error_weight_share"] == pytest.approx(share, abs=6e-4)
        spanned = mean(len(layers[i]) for i in ids)
        assert stats[t]["mean_layers_spanned"] == pytest.approx(spanned, abs=6e-3)


def test_min_graphs_parameter(ray_run):
    per_type = N_RAY_PROMPTS // len(CONSTRAINTS)
    out = [str(ray_run.out)]

    def n_rows(min_graphs: int) -> int:
        return run_query("constraint_stats", out, params={"min_graphs": str(min_graphs)}).num_rows

    assert n_rows(per_type) == 3
    assert n_rows(per_type + 1) == 0


def test_two_runs_have_a_run_column(two_runs, ray_run):
    t = run_query("constraint_stats", two_runs)
    assert sorted(set(t["run"].to_pylist())) == sorted([ray_run.out.name, "copyrun"])
    assert t.num_rows == 2 * len(CONSTRAINTS)
    rows = run_sql(two_runs, "SELECT run, count(*) AS n FROM graphs GROUP BY run ORDER BY run")
    assert rows.to_pylist() == sorted(
        [{"run": ray_run.out.name, "n": N_RAY_PROMPTS}, {"run": "copyrun", "n": N_RAY_PROMPTS}],
        key=lambda r: r["run"],
    )


def test_same_folder_name_twice_is_numbered(ray_run, tmp_path):
    other = tmp_path / ray_run.out.name
    shutil.copytree(ray_run.out, other)
    t = run_sql([str(ray_run.out), str(other)], "SELECT DISTINCT run FROM graphs ORDER BY run")
    assert t["run"].to_pylist() == [f"{ray_run.out.name}#0", f"{ray_run.out.name}#1"]


def test_views_skip_orphans_and_empty_runs(ray_run, tmp_path):
    run = tmp_path / "withorphan"
    shutil.copytree(ray_run.out, run)
    # Orphan parts (no graphs part) must not show up in the views.
    first = sorted((run / "nodes").glob("*.parquet"))[0]
    shutil.copy(first, run / "nodes" / "part-orphan.parquet")
    shutil.copy(sorted((run / "edges").glob("*.parquet"))[0], run / "edges" / "part-orphan.parquet")
    empty = tmp_path / "emptyrun"
    RunStore(empty).write_meta({"format": "circuitray-run/1"})
    con = connect([str(ray_run.out), str(run), str(empty)])
    try:
        counts = dict(con.sql("SELECT run, count(*) FROM nodes GROUP BY run").fetchall())
        assert counts[run.name] == counts[ray_run.out.name] > 0
        assert "emptyrun" not in counts
        cols = [c[0] for c in con.sql("DESCRIBE edges").fetchall()]
        assert cols[:4] == ["run", "graph_id", "dst", "src"]
    finally:
        con.close()
    t = run_query("constraint_stats", [str(empty)])
    assert t.num_rows == 0


def test_not_a_run_folder(tmp_path):
    with pytest.raises(RunDirError, match="no run.json"):
        run_query("constraint_stats", [str(tmp_path)])
    with pytest.raises(CircuitrayError):
        connect([])


def test_run_sql_select(ray_run):
    t = run_sql([str(ray_run.out)], "SELECT count(*) AS n FROM graphs WHERE status = 'ok'")
    assert t.to_pylist() == [{"n": N_RAY_PROMPTS}]
    # Several statements: the last one's result.
    t = run_sql([str(ray_run.out)], "SELECT 1 AS a; SELECT count(*) AS n FROM edges")
    assert t.column_names == ["n"] and t["n"][0].as_py() > 0
    # Reading the run's own files directly is allowed.
    f = str(sorted((ray_run.out / "graphs").glob("*.parquet"))[0])
    t = run_sql([str(ray_run.out)], f"SELECT count(*) AS n FROM read_parquet('{f}')")
    assert t["n"][0].as_py() > 0


@pytest.mark.parametrize(
    "sql",
    [
        "SET threads = 1",
        "SET enable_external_access = true",
        "ATTACH '/tmp/circuitray-test.db' AS other",
        "COPY graphs TO '/tmp/circuitray-test.csv'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "CREATE TABLE t AS SELECT * FROM graphs",
        "PRAGMA version",
        "SELECT 1; SET threads = 1",
    ],
)
def test_run_sql_refuses_non_queries(ray_run, sql):
    with pytest.raises(CircuitrayError, match="not allowed"):
        run_sql([str(ray_run.out)], sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM read_parquet('{prompts}')",  # outside the run folder
        "SELECT * FROM read_text('{out}2/x')",  # a sibling whose name starts alike
    ],
)
def test_run_sql_refuses_files_outside_the_run(ray_run, sql):
    sql = sql.format(prompts=ray_run.prompts, out=ray_run.out)
    with pytest.raises(CircuitrayError, match="Permission|disabled"):
        run_sql([str(ray_run.out)], sql)


def test_run_sql_bad_sql(ray_run):
    with pytest.raises(CircuitrayError, match="^SQL: "):
        run_sql([str(ray_run.out)], "SELEKT 1")
    with pytest.raises(CircuitrayError, match="no statement"):
        run_sql([str(ray_run.out)], "  ")
    with pytest.raises(CircuitrayError, match="^SQL: "):
        run_sql([str(ray_run.out)], "SELECT nope FROM graphs")


def test_unknown_query_and_parameters(ray_run):
    out = [str(ray_run.out)]
    with pytest.raises(CircuitrayError, match="unknown query 'nope' \\(known: .*constraint_stats"):
        run_query("nope", out)
    with pytest.raises(CircuitrayError, match="unknown query"):
        run_query("../queries/constraint_stats", out)
    with pytest.raises(CircuitrayError, match="unknown parameter 'min_graph'"):
        run_query("constraint_stats", out, params={"min_graph": "2"})
    with pytest.raises(CircuitrayError, match="'min_graphs' must be int"):
        run_query("constraint_stats", out, params={"min_graphs": "two"})


def test_query_library_header():
    names = [q.name for q in list_queries()]
    assert "constraint_stats" in names
    q = get_query("constraint_stats")
    assert q.description.startswith("Per run and constraint type")
    assert q.params == {
        "min_graphs": ("int", 1, "only report types with at least this many ok graphs")
    }


# -- layer_profile and error_share, recomputed in plain Python ---------------------------
def _ok_types(out):
    return {
        g["graph_id"]: g["constraint_type"]
        for g in _parquet_rows(out, "graphs")
        if g["status"] == "ok"
    }


def test_layer_profile_matches_python(ray_run):
    out = ray_run.out
    types = _ok_types(out)
    n_per_type = defaultdict(int)
    for t in types.values():
        n_per_type[t] += 1
    weight = defaultdict(lambda: defaultdict(float))  # graph -> (layer, type) -> |w|
    for e in _parquet_rows(out, "edges"):
        weight[e["graph_id"]][(e["src_layer"], e["src_type"])] += abs(e["weight"])
    infl = defaultdict(lambda: defaultdict(float))
    for n in _parquet_rows(out, "nodes"):
        if n["node_type"] != "logit":
            infl[n["graph_id"]][(n["layer"], n["node_type"])] += n["influence"]
    expected = defaultdict(lambda: [0.0, 0.0])
    for gid, ctype in types.items():
        tw, ti = sum(weight[gid].values()), sum(infl[gid].values())
        for key, w in weight[gid].items():
            expected[(ctype, *key)][0] += w / tw / n_per_type[ctype]
        for key, i in infl[gid].items():
            expected[(ctype, *key)][1] += i / ti / n_per_type[ctype]
    rows = run_query("layer_profile", [out]).to_pylist()
    got = {(r["constraint_type"], r["layer"], r["node_type"]): r for r in rows}
    assert got.keys() == expected.keys()
    for key, (w, i) in expected.items():
        assert got[key]["weight_share"] == pytest.approx(w, abs=1e-4), key
        assert got[key]["influence_share"] == pytest.approx(i, abs=1e-4), key
    for ctype in n_per_type:  # shares of one type sum to one
        assert sum(r["weight_share"] for r in rows if r["constraint_type"] == ctype) == (
            pytest.approx(1.0, abs=1e-3)
        )


def test_error_share_matches_python(ray_run):
    out = ray_run.out
    types = _ok_types(out)
    err, tot = defaultdict(float), defaultdict(float)
    for n in _parquet_rows(out, "nodes"):
        if n["node_type"] != "logit":
            tot[n["graph_id"]] += n["influence"]
            if n["node_type"] == "error":
                err[n["graph_id"]] += n["influence"]
    per_type = defaultdict(list)
    for gid, ctype in types.items():
        per_type[ctype].append(err[gid] / tot[gid] if tot[gid] else 0.0)
    got = {r["constraint_type"]: r for r in run_query("error_share", [out]).to_pylist()}
    assert got.keys() == per_type.keys()
    for ctype, shares in per_type.items():
        assert got[ctype]["graphs"] == len(shares)
        assert got[ctype]["mean_error_share"] == pytest.approx(mean(shares), abs=1e-4)
        assert got[ctype]["median_error_share"] == pytest.approx(median(shares), abs=1e-4)
        assert 0 < got[ctype]["mean_error_share"] < 1


def _feature_occurrences(out):
    """graph -> {(layer, feature): summed influence} over kept feature nodes of ok graphs."""
    types = _ok_types(out)
    occ = defaultdict(lambda: defaultdict(float))
    for n in _parquet_rows(out, "nodes"):
        if n["node_type"] == "feature" and n["graph_id"] in types:
            occ[n["graph_id"]][(n["layer"], n["feature"])] += n["influence"]
    return types, occ


def test_top_features_matches_python(ray_run):
    out = ray_run.out
    types, occ = _feature_occurrences(out)
    n_type = defaultdict(int)
    for t in types.values():
        n_type[t] += 1
    count = defaultdict(lambda: defaultdict(int))
    infl = defaultdict(lambda: defaultdict(list))
    for gid, feats in occ.items():
        for key, i in feats.items():
            count[types[gid]][key] += 1
            infl[types[gid]][key].append(i)
    rows = run_query("top_features", [out], params={"top_k": "5"}).to_pylist()
    for ctype in n_type:
        ranked = sorted(
            count[ctype],
            key=lambda k: (-count[ctype][k], -mean(infl[ctype][k]), k[0], k[1]),
        )[:5]
        got = [r for r in rows if r["constraint_type"] == ctype]
        assert [(r["layer"], r["feature"]) for r in got] == ranked, ctype
        for r in got:
            key = (r["layer"], r["feature"])
            others = sum(count[t].get(key, 0) for t in n_type if t != ctype)
            n_other = len(types) - n_type[ctype]
            freq = count[ctype][key] / n_type[ctype]
            assert r["graphs"] == count[ctype][key]
            assert r["frequency"] == pytest.approx(freq, abs=1e-4)
            assert r["mean_influence"] == pytest.approx(mean(infl[ctype][key]), abs=1e-5)
            assert r["lift"] == pytest.approx(freq / ((others + 1) / (n_other + 1)), abs=1e-3)


def test_feature_overlap_matches_python(ray_run):
    out = ray_run.out
    types, occ = _feature_occurrences(out)
    graphs_with = defaultdict(lambda: defaultdict(int))
    for gid, feats in occ.items():
        for key in feats:
            graphs_with[types[gid]][key] += 1
    sets = {t: {k for k, c in d.items() if c >= 2} for t, d in graphs_with.items()}
    rows = run_query("feature_overlap", [out]).to_pylist()
    assert len(rows) == len(sets) ** 2
    for r in rows:
        a, b = sets[r["type_a"]], sets[r["type_b"]]
        assert (r["features_a"], r["features_b"], r["shared"]) == (len(a), len(b), len(a & b))
        assert r["jaccard"] == pytest.approx(len(a & b) / len(a | b), abs=1e-4)
    assert all(r["jaccard"] == 1.0 for r in rows if r["type_a"] == r["type_b"])


def test_feature_overlap_across_runs(two_runs):
    rows = run_query("feature_overlap", two_runs).to_pylist()
    runs = {r["run_a"] for r in rows}
    assert len(runs) == 2
    # The same prompts and model: the same sets, so a type matches itself across runs.
    for r in rows:
        if r["type_a"] == r["type_b"]:
            assert r["jaccard"] == 1.0, r


def test_compare_runs_of_identical_runs_shows_no_change(two_runs):
    rows = run_query("compare_runs", two_runs).to_pylist()
    assert sum(r["pairs"] for r in rows) == N_RAY_PROMPTS
    for r in rows:
        for col in (
            "mean_d_replacement",
            "mean_d_completeness",
            "mean_d_nodes",
            "mean_d_edges",
            "mean_d_target_prob",
            "mean_features_gained",
            "mean_features_lost",
        ):
            assert r[col] == 0, (col, r)
        assert r["mean_feature_jaccard"] == 1.0


@pytest.mark.parametrize(
    ("name", "sibling"),
    [("run?x", "runAx"), ("run[1]x", "run1x"), ("run*x", "run-other-x"), ("it's", None)],
)
def test_folder_names_are_paths_not_patterns(ray_run, tmp_path, name, sibling):
    """A folder name holding DuckDB's glob characters (or a quote) reads that folder,
    not a sibling its name matches as a pattern, in query and in sandboxed sql."""
    run = tmp_path / name
    shutil.copytree(ray_run.out, run)
    if sibling is not None:  # a run folder the name matches as a pattern, of 4 graphs
        other = tmp_path / sibling
        shutil.copytree(ray_run.out, other)
        for f in (other / "graphs").glob("*.parquet"):
            pq.write_table(pq.read_table(f).filter(pc.field("graph_id") < 4), f)
    p = circuitray(
        "sql", run, "SELECT run, count(*) AS n FROM graphs GROUP BY run", "--format", "json"
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == [{"run": name, "n": N_RAY_PROMPTS}]
    p = circuitray("query", "constraint_stats", run, "--format", "json")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert {r["run"] for r in rows} == {name}
    assert sum(r["graphs"] for r in rows) == N_RAY_PROMPTS
    if sibling is not None:  # the sandbox still confines sql to the run folder
        sql = f"SELECT count(*) FROM read_parquet('{tmp_path / sibling}/graphs/*.parquet')"
        assert_refused(circuitray("sql", run, sql), "Permission Error")
