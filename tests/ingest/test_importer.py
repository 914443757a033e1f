"""``circuitray import-graphs`` on the real gemma-2-2b graphs in ``../shared/graphs``
(made on Neuronpedia with circuit-tracer 0.2.0; nobody on this project made them), and
on a corpus of malformed files. Counts are taken from the JSON independently."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import SHARED_GRAPHS, assert_refused, circuitray

from circuitray.ingest.graph_json import GraphJsonError
from circuitray.ingest.importer import ImportConfig, import_graphs
from circuitray.query.engine import run_query
from circuitray.storage.run_store import RunStore

GRAPHS = SHARED_GRAPHS / "neuronpedia-gemma-2-2b"
ANTONYM_EN = "the-opposite-of-20251026-175335.json"
ANTONYM_FR = "le-contraire-de-20251027-140230.json"

pytestmark = pytest.mark.skipif(not GRAPHS.is_dir(), reason=f"no {GRAPHS}")


def _json(name: str) -> dict:
    return json.loads((GRAPHS / name).read_text())


def _parts(out: Path) -> list[str]:
    return sorted(p.name for t in ("graphs", "nodes", "edges") for p in (out / t).glob("*"))


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "run"
    p = circuitray("import-graphs", GRAPHS, "--out", out, "--json")
    assert p.returncode == 0, p.stderr
    record = json.loads(p.stdout)
    assert record["total"] == 18 and len(record["imported"]) == 18, record
    return out


def test_every_graph_with_the_files_counts(imported):
    meta = json.loads((imported / "run.json").read_text())
    by_id = {e["graph_id"]: e for e in meta["sources"]}
    graphs = {r["graph_id"]: r for r in RunStore(imported).read_graphs().to_pylist()}
    nodes = pq.read_table(imported / "nodes").to_pylist()
    edges = pq.read_table(imported / "edges").to_pylist()
    assert sorted(graphs) == sorted(by_id) == list(range(18))
    for gid, entry in by_id.items():
        doc = json.loads(Path(entry["file"]).read_text())
        assert entry["sha256"] and entry["committed"] and entry["scan"] == "gemma-2-2b"
        assert entry["transcoder_set"] == "mntss/clt-gemma-2-2b-2.5M"
        assert entry["generator_version"].startswith("0.2.0")
        assert entry["viewer_state"] == doc["qParams"]
        row = graphs[gid]
        assert row["status"] == "ok" and row["prompt"] == doc["metadata"]["prompt"]
        assert row["n_kept_nodes"] == len(doc["nodes"])
        assert row["n_kept_edges"] == len(doc["links"])
        assert sum(n["graph_id"] == gid for n in nodes) == len(doc["nodes"])
        assert sum(e["graph_id"] == gid for e in edges) == len(doc["links"])
        kinds = [n["feature_type"] for n in doc["nodes"]]
        assert row["n_kept_features"] == kinds.count("cross layer transcoder")
        assert row["n_kept_error_nodes"] == kinds.count("mlp reconstruction error")
        assert row["n_logits"] == kinds.count("logit")
        labels = {n["clerp"] for n in doc["nodes"] if n["clerp"]}
        assert set(entry["labels"].values()) == labels


def test_a_second_import_adds_nothing(imported, tmp_path):
    before = _parts(imported)
    meta_before = json.loads((imported / "run.json").read_text())["sources"]
    copy = tmp_path / "renamed.json"  # the same bytes under another name
    shutil.copy(GRAPHS / ANTONYM_EN, copy)
    result = import_graphs(ImportConfig(sources=[str(GRAPHS), str(copy)], out=str(imported)))
    assert result.imported == [] and len(result.skipped) == 18 and result.total == 18
    assert _parts(imported) == before
    assert json.loads((imported / "run.json").read_text())["sources"] == meta_before


def test_export_gives_back_the_same_nodes_and_links(imported, tmp_path):
    meta = json.loads((imported / "run.json").read_text())
    (gid,) = [e["graph_id"] for e in meta["sources"] if e["file"].endswith(ANTONYM_EN)]
    p = circuitray("export", imported, "--graph", gid, "--out", tmp_path / "v", "--json")
    assert p.returncode == 0, p.stderr
    got = json.loads((tmp_path / "v" / f"{json.loads(p.stdout)['slug']}.json").read_text())
    want = _json(ANTONYM_EN)
    assert {n["node_id"] for n in got["nodes"]} == {n["node_id"] for n in want["nodes"]}
    links = {(x["source"], x["target"]): x["weight"] for x in got["links"]}
    original = {(x["source"], x["target"]): x["weight"] for x in want["links"]}
    assert links.keys() == original.keys()
    assert all(np.float32(links[k]) == np.float32(original[k]) for k in original)
    (target,) = [n["node_id"] for n in got["nodes"] if n["is_target_logit"]]
    assert target == next(n["node_id"] for n in want["nodes"] if n["is_target_logit"])


def test_named_queries_and_feature_overlap_of_english_and_french(tmp_path):
    runs = {}
    for name, file in (("en", ANTONYM_EN), ("fr", ANTONYM_FR)):
        runs[name] = tmp_path / name
        import_graphs(ImportConfig(sources=[str(GRAPHS / file)], out=str(runs[name])))
    rows = run_query(
        "feature_overlap", [str(runs["en"]), str(runs["fr"])], params={"min_graphs": "1"}
    ).to_pylist()
    (row,) = [r for r in rows if (r["run_a"], r["run_b"]) == ("en", "fr")]

    def features(file: str) -> set[tuple[int, int]]:  # from the JSON alone
        return {
            (int(n["layer"]), int(n["node_id"].split("_")[1]))
            for n in _json(file)["nodes"]
            if n["feature_type"] == "cross layer transcoder"
        }

    en, fr = features(ANTONYM_EN), features(ANTONYM_FR)
    assert (row["features_a"], row["features_b"], row["shared"]) == (len(en), len(fr), len(en & fr))
    assert row["jaccard"] == pytest.approx(len(en & fr) / len(en | fr), abs=1e-4)
    for query in ("constraint_stats", "layer_profile", "top_features", "error_share"):
        assert run_query(query, [str(runs["en"])]).num_rows > 0, query


def _corpus() -> dict[str, object]:
    """What is wrong -> the file's text or document (NEEDLES: what its line says)."""
    good = _json(ANTONYM_EN)

    def edit(change) -> dict:
        doc = json.loads(json.dumps(good))
        change(doc)
        return doc

    node0 = good["nodes"][0]["node_id"]
    return {
        "truncated": (GRAPHS / ANTONYM_EN).read_text()[:5000],
        "not a graph": json.dumps({"hello": "world"}),
        "dangling link": edit(lambda d: d["links"].append({**d["links"][0], "target": "9_9_9"})),
        "wrong type": edit(lambda d: d["nodes"][3].update(ctx_idx="three")),
        "huge number": edit(lambda d: d["links"][2].update(weight=1e300)),
        "huge integer": edit(lambda d: d["nodes"][1].update(ctx_idx=10**30)),
        "not a number": (GRAPHS / ANTONYM_EN)
        .read_text()
        .replace('"weight": 0.81640625', '"weight": NaN', 1),
        "duplicate node id": edit(lambda d: d["nodes"].append(dict(d["nodes"][0]))),
        "duplicate link": edit(lambda d: d["links"].append(d["links"][0])),
        "path in an id": edit(lambda d: d["nodes"][0].update(node_id="../../etc/passwd")),
        "script in the slug": edit(lambda d: d["metadata"].update(slug="<script>x</script>")),
        "unknown node type": edit(lambda d: d["nodes"][0].update(feature_type="eval(1)")),
        "feature not its id": edit(lambda d: d["nodes"][0].update(feature=12345)),
        "links not a list": edit(lambda d: d.update(links={"a": node0})),
        "a cycle": edit(
            lambda d: d["links"].append(
                {"source": d["links"][0]["target"], "target": d["links"][0]["source"], "weight": 1}
            )
        ),
        "lone surrogate": (GRAPHS / ANTONYM_EN)
        .read_text()
        .replace('"prompt": "', '"prompt": "\\ud800', 1),
        "not a bool": edit(lambda d: d["nodes"][-1].update(is_target_logit="false")),
        "id disagrees": edit(lambda d: d["nodes"][0].update(layer="5")),
        "deep viewer state": edit(lambda d: d["qParams"].update(pinnedIds=[[[["x"]]]])),
    }


NEEDLES = {
    "truncated": "not JSON, or truncated",
    "not a graph": "not a graph file",
    "dangling link": "is not a node of the file",
    "wrong type": "ctx_idx must be an integer",
    "huge number": "is not a finite float32",
    "huge integer": "is out of range",
    "not a number": "NaN is not a number JSON allows",
    "duplicate node id": "appears twice",
    "duplicate link": "the same link appears twice",
    "path in an id": "is not a node id",
    "script in the slug": "is not a name",
    "unknown node type": "is not one circuit-tracer writes",
    "feature not its id": "neither 23477 nor layer 0's pairing",
    "links not a list": "nodes and links must be lists",
    "a cycle": "the links form a cycle",
    "lone surrogate": "not UTF-8 text",
    "not a bool": "is_target_logit must be true or false",
    "id disagrees": "disagrees with layer 5",
    "deep viewer state": "must hold strings",
}


def test_malformed_files_are_one_line_and_write_nothing(tmp_path):
    """Each file of the corpus beside a good one: one line naming the file and what is
    wrong, nothing of either written. The API raises what the CLI prints (one CLI run
    checks the exit status and the single line; the rest stay in this process)."""
    corpus = _corpus()
    assert corpus.keys() == NEEDLES.keys()
    for i, (what, doc) in enumerate(corpus.items()):
        bad = tmp_path / f"bad{i}.json"
        bad.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        out = tmp_path / f"run{i}"
        if i == 0:
            p = circuitray("import-graphs", GRAPHS / ANTONYM_FR, bad, "--out", out)
            line = assert_refused(p, str(bad), NEEDLES[what])
        else:
            config = ImportConfig(sources=[str(GRAPHS / ANTONYM_FR), str(bad)], out=str(out))
            with pytest.raises(GraphJsonError) as e:
                import_graphs(config)
            line = str(e.value)
            assert str(bad) in line and NEEDLES[what] in line and "\n" not in line, (what, line)
        assert not out.exists(), (what, line)


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    p = circuitray(
        "import-graphs", GRAPHS / ANTONYM_EN, "--out", tmp_path / "r", "--max-bytes", 1000
    )
    assert_refused(p, ANTONYM_EN, "more than the 1,000 a graph file may have")
    assert not (tmp_path / "r").exists()


def test_a_computed_run_is_not_imported_into(ray_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(ray_run.out, copy)
    before = _parts(copy)
    meta = (copy / "run.json").read_text()
    p = circuitray("import-graphs", GRAPHS / ANTONYM_EN, "--out", copy)
    assert_refused(p, "holds a circuitray run, not imported graphs")
    assert _parts(copy) == before
    assert (copy / "run.json").read_text() == meta  # not marked failed either


def test_an_import_cut_between_its_log_and_its_commit_is_finished_once(tmp_path):
    """The state a crash after run.json's entry and before the graphs part (the commit
    point) leaves: the entry not committed, the nodes and edges parts orphaned. The
    next import writes that graph under the same id, once."""
    out = tmp_path / "run"
    import_graphs(ImportConfig(sources=[str(GRAPHS / ANTONYM_EN)], out=str(out)))
    meta = json.loads((out / "run.json").read_text())
    (entry,) = meta["sources"]
    entry["committed"] = False
    (out / "run.json").write_text(json.dumps(meta))
    (graphs_part,) = (out / "graphs").glob("*.parquet")
    graphs_part.unlink()
    assert RunStore(out).graph_ids().tolist() == []

    result = import_graphs(ImportConfig(sources=[str(GRAPHS)], out=str(out)))
    assert len(result.imported) == 18 and result.total == 18
    meta = json.loads((out / "run.json").read_text())
    ids = [e["graph_id"] for e in meta["sources"]]
    assert sorted(ids) == list(range(18)) and all(e["committed"] for e in meta["sources"])
    (again,) = [e for e in meta["sources"] if e["sha256"] == entry["sha256"]]
    assert again["graph_id"] == entry["graph_id"]
    nodes = pq.read_table(out / "nodes").to_pylist()
    n = len(_json(ANTONYM_EN)["nodes"])
    assert sum(r["graph_id"] == entry["graph_id"] for r in nodes) == n  # not twice
