"""Feature interventions on the bundled organism, for both transcoder kinds: graphs that
say which features matter are right about it (top vs random ablations, direct effects
under circuit-tracer's constrained setting); SPEC parsing; graph-predicted changes."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from circuitray import ModelSpec, RunConfig, run, write_prompts
from circuitray.errors import CircuitrayError
from circuitray.graph.intervention_plan import parse_feature_spec
from circuitray.graph.interventions import StoredGraph
from circuitray.jobs.intervention_job import InterventionConfig, intervene
from circuitray.prompts.ws2 import generate_ws2
from circuitray.storage.run_store import InterventionStore, RunStore

KINDS = ["per-layer", "cross-layer"]
PER_TYPE = 6


# -- SPECs ------------------------------------------------------------------------
def test_parse_feature_spec():
    s = parse_feature_spec(" 3:120, 2:45,3:120 ")
    assert (s.kind, s.features) == ("features", ((3, 120), (2, 45)))
    assert (parse_feature_spec("top:5").k, parse_feature_spec("top:5").rank_by) == (5, "direct")
    assert parse_feature_spec("single:2:total").rank_by == "total"
    assert parse_feature_spec("top:2:influence").rank_by == "influence"
    assert parse_feature_spec("random:3").kind == "random"
    assert parse_feature_spec("single:2").kind == "single"
    q = parse_feature_spec("query:top_features?top_k=3&constraint_type=antonym")
    assert (q.kind, q.query) == ("query", "top_features")
    assert q.params == (("top_k", "3"), ("constraint_type", "antonym"))
    bad_specs = ["", "top:0", "top:x", "3", "3:4:5", "query:", "query:x?y", "a:b"]
    for bad in [*bad_specs, "top:2:best", "random:2:direct"]:
        with pytest.raises(CircuitrayError, match="--features"):
            parse_feature_spec(bad)


# -- graph predictions ----------------------------------------------------------------
def _reference_change(nodes, edges, clamped, target, scale):
    """Plain-Python step 5 of circuitray.graph.interventions: relative changes r, features in
    layer order, floored at -1; clamped nodes fixed at scale - 1."""
    r = {n["id"]: 0.0 for n in nodes}
    for c in clamped:
        r[c] = scale - 1.0
    into = defaultdict(list)
    for s, d, w in edges:
        into[d].append((s, w))
    for n in sorted((n for n in nodes if n["type"] == "feature"), key=lambda n: n["layer"]):
        if n["id"] in clamped:
            continue
        change = sum(w * r[s] for s, w in into[n["id"]]) / n["act"]
        r[n["id"]] = max(change, -1.0)
    direct = sum(w * (scale - 1.0) for s, w in into[target] if s in clamped)
    total = sum(w * r[s] for s, w in into[target])
    return direct, total


def _random_graph(rng: np.random.Generator):
    nodes, edges = [], []
    nid = 0
    layers = 4
    for layer in range(layers):
        for _ in range(rng.integers(3, 7)):
            nodes.append({"id": nid, "type": "feature", "layer": layer, "act": rng.uniform(0.2, 3)})
            nid += 1
    for layer in range(layers):
        nodes.append({"id": nid, "type": "error", "layer": layer, "act": 0.0})
        nid += 1
    nodes.append({"id": nid, "type": "token", "layer": -1, "act": 0.0})
    nid += 1
    target = nid
    nodes.append({"id": target, "type": "logit", "layer": layers, "act": 0.0})
    for d in nodes:
        for s in nodes:
            lower = s["layer"] < d["layer"] and s["type"] != "logit"
            if lower and d["type"] in ("feature", "logit") and rng.random() < 0.5:
                edges.append((s["id"], d["id"], float(rng.normal(0, 2))))
    perm = rng.permutation(len(nodes))  # stored order is not layer order
    nodes = [nodes[i] for i in perm]
    graph = StoredGraph(
        node_id=np.array([n["id"] for n in nodes]),
        node_type=np.array([n["type"] for n in nodes]),
        layer=np.array([n["layer"] for n in nodes]),
        pos=np.zeros(len(nodes), dtype=np.int64),
        feature=np.array([n["id"] if n["type"] == "feature" else -1 for n in nodes]),
        activation=np.array([n["act"] for n in nodes]),
        token_id=np.array([7 if n["type"] == "logit" else -1 for n in nodes]),
        logit_prob=np.array([1.0 if n["type"] == "logit" else 0.0 for n in nodes]),
        influence=np.array([n["act"] / 10 for n in nodes]),
        src=np.array([e[0] for e in edges]),
        dst=np.array([e[1] for e in edges]),
        weight=np.array([e[2] for e in edges]),
    )
    return graph, nodes, edges, target


@pytest.mark.parametrize("seed", range(5))
def test_predicted_changes_match_a_plain_implementation(seed):
    rng = np.random.default_rng(seed)
    graph, nodes, edges, target = _random_graph(rng)
    features = [n["id"] for n in nodes if n["type"] == "feature"]
    sets = [[f] for f in features] + [list(rng.choice(features, 3, replace=False))]
    for scale in (0.0, 0.5, 2.0):
        direct, total = graph.predicted_changes(sets, target, scale)
        for j, clamped in enumerate(sets):
            want = _reference_change(nodes, edges, {int(c) for c in clamped}, target, scale)
            assert direct[j] == pytest.approx(want[0], abs=1e-9)
            assert total[j] == pytest.approx(want[1], abs=1e-9)
    direct, total = graph.predicted_changes([[f] for f in features], target, 0.0)
    for by, want in (("direct", -direct), ("total", -total)):
        drops = graph.ablation_effects(target, by=by, chunk=3)
        assert [drops[f] for f in features] == pytest.approx(list(want))
    drops = graph.ablation_effects(target, by="influence")
    assert [drops[f] for f in features] == pytest.approx(
        [graph.influence[graph.index[f]] for f in features]
    )
    assert graph.logit_node(7) == target and graph.top_logit_token() == 7


# -- on the organism, both transcoder kinds ----------------------------------------------
@pytest.fixture(scope="module")
def organism_prompts(organism_report, tmp_path_factory):
    rows = [r for r in generate_ws2(n=600, seed=21) if r["split"] == "heldout"]
    chosen = []
    for t in sorted({r["constraint_type"] for r in rows}):
        chosen += [r for r in rows if r["constraint_type"] == t][:PER_TYPE]
    return write_prompts(chosen, tmp_path_factory.mktemp("iv_prompts") / "p.parquet")


@pytest.fixture(scope="module", params=KINDS)
def organism_run(request, organism_prompts, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"organism_{request.param}") / "run"
    result = run(
        RunConfig(
            prompts=str(organism_prompts),
            out=str(out),
            model=ModelSpec(model="organism-tuned", transcoders=request.param),
            actors=1,
        )
    )
    assert result.ok == result.total, result
    return request.param, out


def _by_spec(out) -> dict[str, list[dict]]:
    rows = InterventionStore(out).read_table("results")
    assert rows is not None
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows.to_pylist():
        assert r["status"] == "ok", r
        groups[r["spec"]].append(r)
    return groups


def test_graph_top_features_beat_random_ones_for_every_type(organism_run, tmp_path):
    kind, run_dir = organism_run
    out = tmp_path / "iv"
    intervene(
        InterventionConfig(run=str(run_dir), out=str(out), features=["top:3", "random:3"], actors=1)
    )
    rows = _by_spec(out)
    assert {r["target_source"] for r in rows["top:3"]} == {"expected"}
    report = {}
    for t in sorted({r["constraint_type"] for r in rows["top:3"]}):
        drop = {
            spec: -float(
                np.mean([r["target_logit_change"] for r in rows[spec] if r["constraint_type"] == t])
            )
            for spec in ("top:3", "random:3")
        }
        report[t] = drop
    # Far more: the graph's top 3 take at least a logit off and 5x what 3 random
    # active features take, in every constraint type.
    msg = f"{kind}: mean drop of the target logit (top vs random) per type: {report}"
    for drop in report.values():
        assert drop["top:3"] > 1.0, msg
        assert drop["top:3"] > 5 * max(drop["random:3"], 0.05), msg


def test_single_feature_direct_effects_match_edge_weights(organism_run, tmp_path):
    kind, run_dir = organism_run
    out = tmp_path / "iv"
    intervene(
        InterventionConfig(
            run=str(run_dir),
            out=str(out),
            features=["single:3"],
            constrained_layers="all",
            actors=1,
        )
    )
    rows = _by_spec(out)["single:3"]
    assert len(rows) >= 3 * 3 * PER_TYPE // 2 and {r["frame"] for r in rows} == {"graph"}
    # The stored edge (feature node -> target logit node), read straight from the run.
    store = RunStore(run_dir)
    nodes = store.read_table("nodes").to_pylist()
    edges = store.read_table("edges").to_pylist()
    node_of = {
        (n["graph_id"], n["layer"], n["pos"], n["feature"]): n["node_id"]
        for n in nodes
        if n["node_type"] == "feature"
    }
    logit_of = {
        (n["graph_id"], n["token_id"]): n["node_id"] for n in nodes if n["node_type"] == "logit"
    }
    weight = {(e["graph_id"], e["src"], e["dst"]): e["weight"] for e in edges}
    worst = 0.0
    for r in rows:
        (f,) = r["features"]
        src = node_of[(r["graph_id"], f["layer"], f["pos"], f["feature"])]
        dst = logit_of[(r["graph_id"], r["target_token_id"])]
        edge = weight.get((r["graph_id"], src, dst), 0.0)
        # Ablation removes the feature's direct contribution: change = -edge weight.
        err = abs(r["target_logit_change"] + edge)
        worst = max(worst, err / max(1.0, abs(edge)))
        assert r["predicted_direct"] == pytest.approx(-edge, rel=1e-5, abs=1e-5)
    assert worst < 1e-4, f"{kind}: worst relative mismatch {worst:.2e} over {len(rows)} rows"
