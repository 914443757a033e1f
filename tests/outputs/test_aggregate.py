"""``circuitray aggregate`` and the supernode queries on the 13 real gemma-2-2b graphs of
the "capital of the state containing Dallas" prompt and its prefixed variants
(``../shared/graphs``), with one analyst's supernode grouping of their features, each
checked against the JSON files directly; ``--by`` over a computed run's columns."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import SHARED_GRAPHS, assert_refused, circuitray, json_feature_keys

from circuitray.errors import CircuitrayError
from circuitray.ingest.importer import ImportConfig, import_graphs
from circuitray.outputs.aggregate import AggregateConfig, aggregate_circuits
from circuitray.query.engine import run_query, run_sql
from circuitray.query.supernodes import read_supernodes

GRAPHS = SHARED_GRAPHS / "neuronpedia-gemma-2-2b"
SUPERNODES = SHARED_GRAPHS / "neuronpedia-gemma-2-2b-dallas-supernodes.csv"

needs_graphs = pytest.mark.skipif(not GRAPHS.is_dir(), reason=f"no {GRAPHS}")


@pytest.fixture(scope="module")
def dallas(tmp_path_factory) -> tuple[Path, list[dict]]:
    if not GRAPHS.is_dir():
        pytest.skip(f"no {GRAPHS}")
    files = [f for f in sorted(GRAPHS.glob("*.json")) if "Dallas" in f.read_text()]
    assert len(files) == 13, files
    out = tmp_path_factory.mktemp("dallas") / "run"
    import_graphs(ImportConfig(sources=[str(f) for f in files], out=str(out)))
    return out, [json.loads(f.read_text()) for f in files]


@needs_graphs
def test_the_dallas_familys_consensus_keeps_the_features_of_every_graph(dallas, tmp_path):
    run, docs = dallas
    out = tmp_path / "agg"
    p = circuitray(
        "aggregate", run, "--out", out, "--by", "run", "--min-share", "1", "--top-k", "0",
        "--json",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    groups = json.loads(p.stdout)["groups"]
    assert [(g["graphs"], g["group_value"]) for g in groups] == [(13, "run")]
    nodes = pq.read_table(out / "nodes.parquet").to_pylist()
    expected = set.intersection(*(set(json_feature_keys(d).values()) for d in docs))
    got = {(n["layer"], n["feature"]) for n in nodes if n["node_type"] == "feature"}
    assert got == expected and len(expected) > 50
    assert all(n["share"] == 1.0 for n in nodes)

    # The viewer's graph: every kept node once, a link per kept edge whose ends are
    # kept, weights the mean over the 13 graphs, feature ids circuit-tracer's.
    graph = json.loads((out / f"{groups[0]['slug']}.json").read_text())
    assert len(graph["nodes"]) == len(nodes) == len({n["node_id"] for n in graph["nodes"]})
    drawn = {
        (int(n["layer"]), int(n["node_id"].split("_")[1]))
        for n in graph["nodes"]
        if n["feature_type"] == "cross layer transcoder"
    }
    assert drawn == expected
    edges = pq.read_table(out / "edges.parquet").to_pylist()
    assert len(graph["links"]) == len(edges) > 0
    feature_links = defaultdict(float)  # independently: summed over positions, per graph
    for d in docs:
        keys = json_feature_keys(d)
        for link in d["links"]:
            if link["source"] in keys and link["target"] in keys:
                feature_links[(keys[link["source"]], keys[link["target"]])] += link["weight"]
    ids = {n["node_id"]: n for n in graph["nodes"]}
    for link in graph["links"]:
        src, dst = ids[link["source"]], ids[link["target"]]
        if src["feature_type"] == dst["feature_type"] == "cross layer transcoder":
            key = tuple((int(n["layer"]), int(n["node_id"].split("_")[1])) for n in (src, dst))
            assert link["weight"] == pytest.approx(feature_links[key] / 13, rel=1e-4, abs=1e-5)
    assert any(n["is_target_logit"] for n in graph["nodes"])
    meta = json.loads((out / "graph-metadata.json").read_text())
    assert [g["slug"] for g in meta["graphs"]] == [groups[0]["slug"]]


@needs_graphs
def test_supernodes_collapse_members_and_sum_their_edges(dallas, tmp_path):
    run, docs = dallas
    groups = read_supernodes(SUPERNODES).to_pylist()
    member = {(g["layer"], g["feature"]): g["name"] for g in groups}
    assert len(member) == 39 and len(set(member.values())) == 13

    # Independently: per graph, each supernode pair's edges summed over members and
    # positions (edges inside one supernode left out); then over the 13 graphs.
    per_pair: dict[tuple[str, str], list[float]] = defaultdict(list)
    for d in docs:
        keys = json_feature_keys(d)
        sums: dict[tuple[str, str], float] = defaultdict(float)
        for link in d["links"]:
            a, b = member.get(keys.get(link["source"])), member.get(keys.get(link["target"]))
            if a and b and a != b:
                sums[(a, b)] += link["weight"]
        for pair, w in sums.items():
            per_pair[pair].append(w)
    everything = {"by": "run", "min_share": "0"}
    rows = run_query("consensus_edges", [str(run)], params=everything, supernodes=SUPERNODES)
    got = {
        (r["src_supernode"], r["dst_supernode"]): r
        for r in rows.to_pylist()
        if r["src_type"] == r["dst_type"] == "supernode"
    }
    assert set(got) == set(per_pair) and len(got) > 10
    for pair, weights in per_pair.items():
        assert got[pair]["graphs"] == len(weights)
        assert got[pair]["sum_weight"] == pytest.approx(sum(weights), rel=1e-4, abs=1e-5)
    # No member is left as a feature node of its own.
    nodes = run_query("consensus_nodes", [str(run)], params=everything, supernodes=SUPERNODES)
    features = {(r["layer"], r["feature"]) for r in nodes.to_pylist() if r["feature"] is not None}
    assert not features & set(member)
    names = {r["supernode"] for r in nodes.to_pylist() if r["node_type"] == "supernode"}
    assert names == set(member.values())

    # The aggregate draws them as named nodes of the viewer's graph.
    result = aggregate_circuits(
        AggregateConfig(
            runs=[str(run)], out=str(tmp_path / "agg"), by="run", min_share=0.9,
            supernodes=str(SUPERNODES),
        )
    )  # fmt: skip
    graph = json.loads((tmp_path / "agg" / f"{result.groups[0]['slug']}.json").read_text())
    drawn = [n["clerp"] for n in graph["nodes"] if "supernode" in n["clerp"]]
    assert any("Say (Austin)" in c for c in drawn), drawn


@needs_graphs
def test_diff_of_english_and_french_antonym_graphs(tmp_path):
    files = {"en": "the-opposite-of-20251026-175335", "fr": "le-contraire-de-20251027-140230"}
    run = tmp_path / "run"
    import_graphs(
        ImportConfig(sources=[str(GRAPHS / f"{f}.json") for f in files.values()], out=str(run))
    )
    edges = {}
    for lang, stem in files.items():
        doc = json.loads((GRAPHS / f"{stem}.json").read_text())
        keys = json_feature_keys(doc)
        edges[lang] = {
            (keys[link["source"]], keys[link["target"]])
            for link in doc["links"]
            if link["source"] in keys and link["target"] in keys
        }
    rows = run_query(
        "consensus_diff",
        [str(run)],
        params={
            "by": "prompt_id",
            "group_a": files["en"],
            "group_b": files["fr"],
            "min_share": "0",
        },
    ).to_pylist()
    change = {
        ((r["src_layer"], r["src_feature"]), (r["dst_layer"], r["dst_feature"])): r
        for r in rows
        if r["src_type"] == r["dst_type"] == "feature"
    }
    want = {
        "gained": edges["fr"] - edges["en"],
        "lost": edges["en"] - edges["fr"],
        "shared": edges["en"] & edges["fr"],
    }
    for kind, keys in want.items():
        assert {k for k, r in change.items() if r["change"] == kind} == keys, kind
    assert want["shared"] and want["gained"] and want["lost"]
    for r in change.values():
        assert r["delta"] == pytest.approx(r["weight_b"] - r["weight_a"])


def test_by_any_graphs_column_of_a_computed_run(ray_run, tmp_path):
    result = aggregate_circuits(
        AggregateConfig(runs=[str(ray_run.out)], out=str(tmp_path / "agg"), min_share=0.5)
    )
    per_type = run_sql(
        [str(ray_run.out)],
        "SELECT constraint_type, count(*) AS n FROM graphs WHERE status = 'ok' GROUP BY 1",
    ).to_pylist()
    assert {g["group_value"]: g["graphs"] for g in result.groups} == {
        r["constraint_type"]: r["n"] for r in per_type
    }
    # Every graph is its own group by prompt_id: its consensus is the graph itself.
    one = run_query(
        "consensus_nodes", [str(ray_run.out)], params={"by": "prompt_id", "min_share": "1"}
    ).to_pylist()
    stored = run_sql(
        [str(ray_run.out)],
        "SELECT count(*) AS n FROM nodes JOIN graphs USING (run, graph_id) "
        "WHERE status = 'ok' AND node_type IN ('token', 'logit', 'error')",
    ).to_pylist()[0]["n"]
    assert sum(r["node_type"] in ("token", "logit", "error") for r in one) == stored
    for g in result.groups:
        assert g["nodes"] > 0 and (tmp_path / "agg" / f"{g['slug']}.json").is_file()


def test_bad_supernode_files_and_groupings_are_one_line(tmp_path, ray_run):
    cases = {
        "twice.csv": ("layer,feature,name\n1,5,a\n2,7,b\n1,5,c\n", "row 3", "'c'", "'a'"),
        "nolayer.csv": ("l,feature,name\n1,5,a\n", "no layer column"),
        "text.csv": ("layer,feature,name\n1,x,a\n", "row 1, column feature"),
        "quote.csv": ('layer,feature,name\n1,5,"open\n2,6,b\n', "line 2", "never closed"),
        "empty.jsonl": ('{"layer": 1, "feature": 2, "name": ""}\n', "row 1, column name"),
        "g.txt": ("layer,feature,name\n", "unknown supernode file type '.txt'"),
    }
    for name, (text, *needles) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(CircuitrayError) as e:
            read_supernodes(path)
        for needle in needles:
            assert needle in str(e.value), (name, str(e.value))
        out = tmp_path / f"out-{name}"
        p = circuitray("aggregate", ray_run.out, "--out", out, "--supernodes", path)
        assert_refused(p, name)
        assert not out.exists()
    p = circuitray("aggregate", ray_run.out, "--out", tmp_path / "o", "--by", "no_such_column")
    assert_refused(p, "no column no_such_column")
    p = circuitray("query", "consensus_nodes", ray_run.out, "--param", "by=nope")
    assert_refused(p, "no column nope")


def _retyped(ray_run, tmp_path, names: dict[str, str]) -> Path:
    """A copy of the shared Ray run whose constraint types are renamed."""
    import shutil

    import pyarrow.compute as pc

    run = tmp_path / "retyped"
    shutil.copytree(ray_run.out, run)
    for f in (run / "graphs").glob("*.parquet"):
        t = pq.read_table(f)
        types = t["constraint_type"]
        for old, new in names.items():
            types = pc.replace_substring(types, old, new)
        pq.write_table(
            t.set_column(t.column_names.index("constraint_type"), "constraint_type", types), f
        )
    return run


def test_groups_alike_but_for_punctuation_get_their_own_graphs(ray_run, tmp_path):
    types = sorted(
        r["constraint_type"]
        for r in run_sql(
            [str(ray_run.out)], "SELECT DISTINCT constraint_type FROM graphs"
        ).to_pylist()
    )
    run = _retyped(ray_run, tmp_path, {types[0]: "x!", types[1]: "x?", types[2]: "x."})
    out = tmp_path / "agg"
    result = aggregate_circuits(AggregateConfig(runs=[str(run)], out=str(out)))
    slugs = [g["slug"] for g in result.groups]
    assert sorted(g["group_value"] for g in result.groups) == ["x!", "x.", "x?"]
    assert len(set(slugs)) == 3 and all((out / f"{s}.json").is_file() for s in slugs)
    meta = json.loads((out / "graph-metadata.json").read_text())
    assert sorted(g["slug"] for g in meta["graphs"]) == sorted(slugs)

    # Again into the same folder, grouped another way: only the new groups are there.
    again = aggregate_circuits(AggregateConfig(runs=[str(run)], out=str(out), by="run"))
    assert [g["graphs"] for g in again.groups] == [24]
    meta = json.loads((out / "graph-metadata.json").read_text())
    assert [g["slug"] for g in meta["graphs"]] == [again.groups[0]["slug"]]
    assert sorted(p.name for p in out.glob("consensus-*.json")) == [
        f"{again.groups[0]['slug']}.json"
    ]
    # A folder holding anything else is refused, and left as it was.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    p = circuitray("aggregate", run, "--out", other)
    assert_refused(p, "no earlier aggregate")
    assert [f.name for f in other.iterdir()] == ["notes.txt"]


def test_a_feature_keeps_its_id_where_an_error_nodes_would_equal_it():
    from circuitray.outputs.aggregate import _group_graph

    def node(kind, **kw):
        row = dict.fromkeys(
            ["layer", "feature", "pos_from_end", "token", "supernode", "token_id",
             "mean_activation", "mean_logit_prob"],
        )  # fmt: skip
        row.update(node_type=kind, share=1.0, influence=0.1, at_layer=0, at_pos_from_end=0)
        row.update(kw)
        return row

    nodes = [
        node("error", layer=5, pos_from_end=0, at_layer=5),  # "0_5_3": as a feature's
        node("feature", layer=0, feature=5, at_layer=0),  # "0_5_3"
        node("token", token="x", token_id=7, pos_from_end=-3, at_pos_from_end=-3, at_layer=-1),
        node("logit", token="y", token_id=8, mean_logit_prob=0.5, at_layer=26),
    ]
    model, ids = _group_graph(nodes, [], {}, slug="s", prompt="p")
    by_type = {n.feature_type: n.node_id for n in model.nodes}
    assert by_type["cross layer transcoder"] == "0_5_3"
    assert by_type["mlp reconstruction error"] != "0_5_3"
    assert len({n.node_id for n in model.nodes}) == 4


def test_diff_shares_are_exact_below_min_share(ray_run):
    types = sorted(
        r["constraint_type"]
        for r in run_sql(
            [str(ray_run.out)], "SELECT DISTINCT constraint_type FROM graphs"
        ).to_pylist()
    )
    a, b = types[:2]
    every = run_query("consensus_edges", [str(ray_run.out)], params={"min_share": "0"})
    share = {
        (r["group_value"], tuple(v for k, v in r.items() if k.startswith(("src_", "dst_")))): r
        for r in every.to_pylist()
    }
    rows = run_query(
        "consensus_diff",
        [str(ray_run.out)],
        params={"group_a": a, "group_b": b, "min_share": "0.5"},
    ).to_pylist()
    assert rows
    for r in rows:
        edge = tuple(v for k, v in r.items() if k.startswith(("src_", "dst_")))
        for side, group in (("a", a), ("b", b)):
            theirs = share.get((group, edge))
            assert r[f"share_{side}"] == (theirs["share"] if theirs else 0), (side, r)
            weight = theirs["sum_weight"] / theirs["n_graphs"] if theirs else 0
            assert r[f"weight_{side}"] == pytest.approx(weight, rel=1e-5, abs=1e-6)
        assert max(r["share_a"], r["share_b"]) >= 0.5
        assert r["change"] == {
            (True, True): "shared", (False, True): "gained", (True, False): "lost"
        }[(r["share_a"] >= 0.5, r["share_b"] >= 0.5)]  # fmt: skip
    # Every edge at 0.5 in either group is there.
    wanted = {e for (g, e), r in share.items() if g in (a, b) and r["share"] >= 0.5}
    assert wanted == {
        tuple(v for k, v in r.items() if k.startswith(("src_", "dst_"))) for r in rows
    }
    assert any(0 < r["share_a"] < 0.5 or 0 < r["share_b"] < 0.5 for r in rows)
    p = circuitray("query", "consensus_diff", ray_run.out, "--param", f"group_a={a}",
                   "--param", f"group_b={a}")  # fmt: skip
    assert_refused(p, "the same group")
