"""--target answer|contrast: stored graphs equal circuit-tracer's own ``attribute(
attribution_targets=...)`` + ``prune_graph`` (per-layer and cross-layer transcoders),
the logit node is what the mode says, and prompts without what a mode needs are one
error row each (a file without the column is refused before anything runs)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from circuit_tracer import attribute
from circuit_tracer.attribution.targets import CustomTarget
from circuit_tracer.graph import prune_graph
from conftest import assert_refused, circuitray

from circuitray.graph.attribute import attribute_prompt
from circuitray.graph.config import AttributionConfig, PruneConfig
from circuitray.prompts.ws2 import generate_ws2

PRUNE = PruneConfig()


@pytest.fixture(
    scope="module", params=["loaded_tiny", "loaded_tiny_clt"], ids=["per-layer", "cross-layer"]
)
def model(request):
    return request.getfixturevalue(request.param)


def _first_token(model, word: str) -> int:
    return model.tokenizer(" " + word, add_special_tokens=False).input_ids[0]


def _circuit_tracer_targets(model, prompt: dict, mode: str):
    """The same targets, built here from the prompt row and circuit-tracer's model;
    and the logit (answer) or logit difference (contrast) they stand for."""
    answer = _first_token(model, prompt["target"])
    with torch.inference_mode():
        out = model(model.ensure_tokenized(prompt["prompt"])[None])
        logits = getattr(out, "logits", out)[0, -1].float()
    if mode == "answer":
        return torch.tensor([answer]), float(logits[answer])
    alts = sorted(
        {_first_token(model, c) for c in prompt["candidates"] if c != prompt["target"]} - {answer}
    )
    w = model.unembed_proj  # (d_vocab, d_model) or (d_model, d_vocab)
    cols = w if w.shape[0] == model.tokenizer.vocab_size else w.T
    vec = cols[answer] - cols[alts].mean(dim=0)
    share = float(torch.softmax(logits[[answer, *alts]], dim=0)[0])
    diff = float(logits[answer] - logits[alts].mean())
    return [CustomTarget(token_str="answer vs alternatives", prob=share, vec=vec)], diff


@pytest.mark.parametrize("mode", ["answer", "contrast"])
def test_stored_edges_equal_circuit_tracer_with_the_same_targets(model, mode):
    for graph_id, prompt in enumerate(generate_ws2(n=6, seed=4)[:3]):
        config = AttributionConfig(target=mode, batch_size=64)
        row, nodes, edges = attribute_prompt(
            model, prompt, graph_id=graph_id, attribution=config, prune=PRUNE
        )
        assert row["status"] == "ok", row["error"]
        assert row["target_mode"] == mode and row["n_logits"] == 1
        targets, value = _circuit_tracer_targets(model, prompt, mode)
        graph = attribute(prompt["prompt"], model, attribution_targets=targets, batch_size=64)
        _, edge_mask, _ = prune_graph(
            graph, node_threshold=PRUNE.node_threshold, edge_threshold=PRUNE.edge_threshold
        )
        dst, src = (t.numpy() for t in torch.nonzero(edge_mask, as_tuple=True))
        stored = sorted(zip(edges["dst"].to_pylist(), edges["src"].to_pylist(), strict=True))
        assert stored == sorted(zip(dst.tolist(), src.tolist(), strict=True))
        weight = {
            (d, s): w
            for d, s, w in zip(
                edges["dst"].to_pylist(),
                edges["src"].to_pylist(),
                edges["weight"].to_numpy(),
                strict=True,
            )
        }
        expected = graph.adjacency_matrix[edge_mask].numpy().astype(np.float32)
        got = np.array([weight[(d, s)] for d, s in zip(dst.tolist(), src.tolist(), strict=True)])
        np.testing.assert_array_equal(got, expected)
        # The one logit node is the answer (answer) or a direction beyond the vocabulary
        # labelled with the answer and its alternatives (contrast).
        logit = nodes.filter(pc.equal(nodes["node_type"], "logit")).to_pylist()
        assert len(logit) == 1
        answer = _first_token(model, prompt["target"])
        assert row["target_token_id"] == answer
        if mode == "answer":
            assert logit[0]["token_id"] == answer and row["contrast_token_ids"] is None
        else:
            assert logit[0]["token_id"] >= model.tokenizer.vocab_size
            assert logit[0]["token"].startswith(prompt["target"] + " vs ")
            assert answer not in row["contrast_token_ids"] and row["contrast_token_ids"]
        assert row["target_logit"] == pytest.approx(value, rel=1e-5, abs=1e-6)
        assert row["target_first_token_only"] is False


def test_rows_without_what_the_mode_needs_are_error_rows(loaded_tiny):
    prompt = generate_ws2(n=1, seed=0)[0]
    cases = [
        ("answer", {**prompt, "target": None}, "has no target"),
        ("contrast", {**prompt, "candidates": [prompt["target"]]}, "no alternatives"),
        ("contrast", {**prompt, "candidates": None}, "no alternatives"),
    ]
    for mode, row_in, needle in cases:
        row, nodes, edges = attribute_prompt(
            loaded_tiny,
            row_in,
            graph_id=0,
            attribution=AttributionConfig(target=mode),
            prune=PRUNE,
        )
        assert row["status"] == "error" and needle in row["error"], (mode, row["error"])
        assert nodes.num_rows == edges.num_rows == 0
    # A contrast column, when the file has one, names the alternatives.
    row, _, _ = attribute_prompt(
        loaded_tiny,
        {**prompt, "contrast": ["happy", "sad"]},
        graph_id=0,
        attribution=AttributionConfig(target="contrast"),
        prune=PRUNE,
    )
    assert row["status"] == "ok"
    assert row["contrast_token_ids"] == [
        _first_token(loaded_tiny, "happy"),
        _first_token(loaded_tiny, "sad"),
    ]


def test_a_multi_token_answer_uses_its_first_token_and_says_so(loaded_tiny):
    prompt = {**generate_ws2(n=1, seed=0)[0], "target": "blarf happy"}
    row, nodes, _ = attribute_prompt(
        loaded_tiny, prompt, graph_id=0, attribution=AttributionConfig(target="answer"), prune=PRUNE
    )
    assert row["status"] == "ok"
    assert row["target_first_token_only"] is True
    assert row["target_token_id"] == _first_token(loaded_tiny, "blarf")


@pytest.mark.parametrize(
    ("mode", "drop", "needle"),
    [
        ("answer", "target", "needs a 'target' column"),
        ("contrast", "candidates", "needs a 'contrast' or 'candidates' column"),
    ],
)
def test_a_file_without_the_column_is_refused_before_anything_runs(tmp_path, mode, drop, needle):
    rows = [{k: v for k, v in r.items() if k != drop} for r in generate_ws2(n=3, seed=0)]
    prompts = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(rows), prompts)
    p = circuitray("run", prompts, "--out", tmp_path / "run", "--model", "tiny", "--target", mode)
    assert_refused(p, "p.parquet", needle)
    assert not (tmp_path / "run").exists()


def test_the_base_organism_explains_the_answer_only_in_answer_mode(organism_report):
    """The base organism ranks the answer near chance: its top-logit graphs explain
    other tokens, its answer-mode graph explains the answer (one logit node, edges in)."""
    from circuitray.models.loading import ModelSpec, load_replacement_model

    base = load_replacement_model(ModelSpec(model="organism-base", device="cpu"))
    checked = 0
    for graph_id, prompt in enumerate(generate_ws2(n=30, seed=9)):
        answer = _first_token(base, prompt["target"])
        top, top_nodes, _ = attribute_prompt(
            base, prompt, graph_id=graph_id, attribution=AttributionConfig(), prune=PRUNE
        )
        logits = top_nodes.filter(pc.equal(top_nodes["node_type"], "logit"))
        if answer in logits["token_id"].to_pylist():
            continue  # the answer is among the top logits here: not the case in question
        row, nodes, edges = attribute_prompt(
            base,
            prompt,
            graph_id=graph_id,
            attribution=AttributionConfig(target="answer"),
            prune=PRUNE,
        )
        assert row["status"] == "ok", row["error"]
        (logit,) = nodes.filter(pc.equal(nodes["node_type"], "logit")).to_pylist()
        assert logit["token_id"] == answer and row["n_logits"] == 1
        into = edges.filter(pc.equal(edges["dst"], logit["node_id"]))
        assert into.num_rows > 0 and row["n_kept_features"] > 0, row
        checked += 1
        if checked == 3:
            break
    assert checked == 3, "fewer than 3 of 30 base-organism graphs lack the answer in top mode"


def test_interventions_measure_the_contrast_the_graph_explains(tmp_path):
    """In the graph's frame (every layer constrained) removing one feature changes the
    answer's logit minus the alternatives' mean by minus its edge into the contrast
    node. (An answer-mode graph's node is the expected token: the path every
    intervention test of tests/graph/test_interventions.py takes.)"""
    mode = "contrast"
    from circuitray import ModelSpec, RunConfig, run
    from circuitray.jobs.intervention_job import InterventionConfig, intervene
    from circuitray.storage.run_store import InterventionStore, RunStore

    prompts = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(generate_ws2(n=2, seed=6)), prompts)
    out = tmp_path / "run"
    config = RunConfig(
        prompts=str(prompts),
        out=str(out),
        model=ModelSpec(model="tiny"),
        attribution=AttributionConfig(target=mode),
        actors=1,
    )
    assert run(config).ok == 2
    iv = tmp_path / "iv"
    intervene(
        InterventionConfig(
            run=str(out), out=str(iv), features=["single:3"], constrained_layers="all", actors=1
        )
    )
    rows = InterventionStore(iv).read_table("results").to_pylist()
    assert rows and all(r["status"] == "ok" for r in rows), rows[:1]
    assert {r["target_source"] for r in rows} == {"contrast"}
    store = RunStore(out)
    nodes, edges = store.read_table("nodes").to_pylist(), store.read_table("edges").to_pylist()
    target = {n["graph_id"]: n["node_id"] for n in nodes if n["node_type"] == "logit"}
    node_of = {
        (n["graph_id"], n["layer"], n["pos"], n["feature"]): n["node_id"]
        for n in nodes
        if n["node_type"] == "feature"
    }
    weight = {(e["graph_id"], e["src"], e["dst"]): e["weight"] for e in edges}
    for r in rows:
        (f,) = r["features"]
        src = node_of[(r["graph_id"], f["layer"], f["pos"], f["feature"])]
        edge = weight.get((r["graph_id"], src, target[r["graph_id"]]), 0.0)
        assert r["predicted_direct"] == pytest.approx(-edge, rel=1e-5, abs=1e-5)
        assert r["target_logit_change"] == pytest.approx(-edge, rel=1e-3, abs=1e-4), r

    # Export (and the viewer, which labels a node by its clerp) names the contrast node:
    # the answer against its alternatives, the one target logit of the graph.
    from circuitray.outputs.export import export_graph

    export_graph(str(out), 0, str(tmp_path / "export"), slug="contrast0")
    exported = json.loads((tmp_path / "export" / "contrast0.json").read_text())
    (logit,) = [n for n in exported["nodes"] if n["feature_type"] == "logit"]
    (stored,) = [n for n in nodes if n["graph_id"] == 0 and n["node_type"] == "logit"]
    answer = RunStore(out).read_graphs(["graph_id", "target"]).to_pylist()[0]["target"]
    assert stored["token"].startswith(f"{answer} vs ") and logit["is_target_logit"]
    assert logit["clerp"] == f'Output "{stored["token"]}" (p={stored["logit_prob"]:.3f})'


def test_list_columns_written_as_text_are_parsed_or_refused(loaded_tiny):
    """A CSV holds a list as JSON text (write_prompts writes it so): parsed, never read
    character by character; numbers are text; other text in candidates is refused."""
    prompt = generate_ws2(n=1, seed=0)[0]
    as_json = {**prompt, "candidates": json.dumps(prompt["candidates"])}
    numbers = {**prompt, "candidates": [prompt["target"], "sad", 7]}
    config = AttributionConfig(target="contrast")
    row, _, _ = attribute_prompt(loaded_tiny, prompt, graph_id=0, attribution=config, prune=PRUNE)
    again, _, _ = attribute_prompt(
        loaded_tiny, as_json, graph_id=0, attribution=config, prune=PRUNE
    )
    assert again["status"] == "ok" and again["contrast_token_ids"] == row["contrast_token_ids"]
    row, _, _ = attribute_prompt(loaded_tiny, numbers, graph_id=0, attribution=config, prune=PRUNE)
    assert row["status"] == "ok" and len(row["contrast_token_ids"]) >= 1
    text = {**prompt, "candidates": "happy sad"}
    row, _, _ = attribute_prompt(loaded_tiny, text, graph_id=0, attribution=config, prune=PRUNE)
    assert row["status"] == "error" and "holds text, not a list" in row["error"], row["error"]
