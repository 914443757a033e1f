"""``consensus_nodes`` / ``consensus_edges``: the circuit a group of graphs shares, on
the 13 real gemma-2-2b graphs of the "capital of the state containing Dallas" prompt
and its prefixed variants (``../shared/graphs``), against the JSON files directly."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import SHARED_GRAPHS, json_feature_keys

from circuitray.ingest.importer import ImportConfig, import_graphs
from circuitray.query.engine import run_query

GRAPHS = SHARED_GRAPHS / "neuronpedia-gemma-2-2b"

pytestmark = pytest.mark.skipif(not GRAPHS.is_dir(), reason=f"no {GRAPHS}")


def _dallas() -> list[Path]:
    files = [f for f in sorted(GRAPHS.glob("*.json")) if "Dallas" in f.read_text()]
    assert len(files) == 13, files
    return files


@pytest.fixture(scope="module")
def dallas(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("dallas") / "run"
    files = _dallas()
    import_graphs(ImportConfig(sources=[str(f) for f in files], out=str(out)))
    return out, [json.loads(f.read_text()) for f in files]


def test_features_in_every_graph_of_the_family(dallas):
    out, docs = dallas
    rows = run_query("consensus_nodes", [str(out)], params={"min_share": "1.0"}).to_pylist()
    got = {(r["layer"], r["feature"]) for r in rows if r["node_type"] == "feature"}
    expected = set.intersection(*(set(json_feature_keys(d).values()) for d in docs))
    assert got == expected and len(expected) > 50
    assert all(r["graphs"] == r["n_graphs"] == 13 and r["share"] == 1.0 for r in rows)
    # Below share 1, more: every feature of any graph at share > 0.
    everything = run_query("consensus_nodes", [str(out)], params={"min_share": "0"}).to_pylist()
    union = set.union(*(set(json_feature_keys(d).values()) for d in docs))
    assert {(r["layer"], r["feature"]) for r in everything if r["node_type"] == "feature"} == union


def test_feature_edges_shared_by_every_graph_with_their_weights(dallas):
    out, docs = dallas
    per_graph = []
    for d in docs:
        keys = json_feature_keys(d)
        weights: dict[tuple, float] = defaultdict(float)
        for link in d["links"]:
            if link["source"] in keys and link["target"] in keys:
                weights[(keys[link["source"]], keys[link["target"]])] += link["weight"]
        per_graph.append(weights)
    shared = set.intersection(*(set(w) for w in per_graph))
    rows = run_query("consensus_edges", [str(out)], params={"min_share": "1.0"}).to_pylist()
    got = {
        ((r["src_layer"], r["src_feature"]), (r["dst_layer"], r["dst_feature"])): r
        for r in rows
        if r["src_type"] == r["dst_type"] == "feature"
    }
    assert set(got) == shared and len(shared) > 50
    for key, r in got.items():
        values = [w[key] for w in per_graph]
        assert r["sum_weight"] == pytest.approx(sum(values), rel=1e-5, abs=1e-6)
        assert r["mean_weight"] == pytest.approx(sum(values) / 13, rel=1e-5, abs=1e-6)
