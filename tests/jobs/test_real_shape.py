"""The gemma-2-2b shape end to end: 26 layers, N >= 5k nodes per graph, stored edges
equal to circuit-tracer's own ``prune_graph`` on the same attribution.

The CI variant runs the actors' own class (:class:`AttributionWorker`, its
``process``: ``attribute_prompt`` -> prune -> flatten -> part files) on one graph in
this process, and holds the unpruned Graph it flattened, so the oracle prunes that very
attribution: a prune, flatten or store defect at this size shows in its ~2M candidate
edges, for one attribution instead of two and no actor start. The ``long`` variant is
the whole path on a local Ray: two actors sharing two prompts, then circuit-tracer's
``attribute()`` again with run.json's settings for the oracle."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import torch
from conftest import SYNTHETIC_GEMMA

import circuitray.graph.attribute as attribution
import circuitray.jobs.workers as workers
from circuitray import ModelSpec, RunConfig, generate_ws2, run, write_prompts

# WS2 prompts of four words (five positions with BOS): N is 5-7k on this model.
PROMPT_IDS = ("ws2-s0-000006", "ws2-s0-000030")
N_LAYERS = 26


def _edges_and_sizes(out: Path):
    con = duckdb.connect()
    for t in ("graphs", "edges"):
        con.sql(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{out}/{t}/*.parquet')")
    sizes = con.sql(
        f"SELECT graph_id, n_selected_features + {N_LAYERS + 1} * n_tokens + n_logits "
        "FROM graphs ORDER BY graph_id"
    ).fetchall()
    assert all(n >= 5000 for _, n in sizes), sizes
    return con, sizes


def test_scaled_gemma_graph_matches_circuit_tracer(synthetic_gemma, tmp_path, monkeypatch):
    (prompt,) = [r for r in generate_ws2(n=40, seed=0) if r["prompt_id"] == PROMPT_IDS[0]]
    config = RunConfig(
        prompts=str(tmp_path / "p.parquet"), out=str(tmp_path / "run"),
        model=ModelSpec(model=SYNTHETIC_GEMMA),
    )  # fmt: skip
    worker = workers.AttributionWorker(
        model=config.model, attribution=config.attribution, prune=config.prune,
        run_dir=config.out,
    )  # fmt: skip
    assert worker.load_error is None, worker.load_error
    graphs = []  # the unpruned Graph attribute_prompt flattens, for the oracle
    real = attribution.attribute_prompt  # what the worker imports when it processes
    monkeypatch.setattr(
        attribution, "attribute_prompt", lambda *a, **k: real(*a, on_graph=graphs.append, **k)
    )
    (summary,) = worker.process("part-0-0-000000000000", [(0, prompt)])
    assert summary["status"] == "ok", summary
    con, sizes = _edges_and_sizes(Path(config.out))
    (graph,) = graphs
    assert graph.adjacency_matrix.shape[0] == sizes[0][1]
    _check_edges(graph, asdict(config.prune), con)


@pytest.mark.long
def test_scaled_gemma_run_matches_circuit_tracer(synthetic_gemma, tmp_path):
    rows = [r for r in generate_ws2(n=40, seed=0) if r["prompt_id"] in PROMPT_IDS]
    prompts = write_prompts(rows, tmp_path / "p.parquet")
    out = tmp_path / "run"
    result = run(
        RunConfig(
            prompts=str(prompts),
            out=str(out),
            model=ModelSpec(model=SYNTHETIC_GEMMA),
            actors=2,
            batch_size=1,
        )
    )
    assert result.ok == len(PROMPT_IDS), result
    con, sizes = _edges_and_sizes(out)

    # Oracle: the same model and settings from run.json, circuit-tracer's prune_graph,
    # on as many torch threads as the actor had (other thread counts change last bits,
    # and with ~2M kept edges one of them sits on the threshold).
    meta = json.loads((Path(out) / "run.json").read_text())
    threads = torch.get_num_threads()
    (actor_threads,) = {w["torch_threads"] for w in result.workers}
    torch.set_num_threads(actor_threads)
    try:
        _oracle(meta, prompts, con, sizes)
    finally:
        torch.set_num_threads(threads)


def _oracle(meta, prompts, con, sizes):
    from circuit_tracer import attribute

    from circuitray.models.loading import load_replacement_model

    model = load_replacement_model(ModelSpec(model=SYNTHETIC_GEMMA, device="cpu"))
    assert meta["attribution"]["target"] == "top"  # attribute()'s own logits
    kwargs = {k: v for k, v in meta["attribution"].items() if k not in ("max_tokens", "target")}
    prompt = pq.read_table(prompts).to_pylist()[0]["prompt"]
    graph = attribute(prompt, model, **kwargs)
    assert graph.adjacency_matrix.shape[0] == sizes[0][1]
    _check_edges(graph, meta["prune"], con)


def _check_edges(graph, prune: dict, con) -> None:
    """Graph 0's stored edges are exactly prune_graph's kept edges of ``graph``, with
    their adjacency weights."""
    from circuit_tracer.graph import prune_graph

    _, edge_mask, _ = prune_graph(graph, **prune)
    dst, src = torch.nonzero(edge_mask, as_tuple=True)
    expected = graph.adjacency_matrix[dst, src]
    stored = con.sql(
        "SELECT dst, src, weight FROM edges WHERE graph_id = 0 ORDER BY dst, src"
    ).fetchnumpy()
    order = torch.argsort(dst.long() * graph.adjacency_matrix.shape[0] + src.long())
    assert len(stored["dst"]) == len(dst) > 10_000
    assert (torch.from_numpy(stored["dst"].astype("int64")) == dst[order]).all()
    assert (torch.from_numpy(stored["src"].astype("int64")) == src[order]).all()
    w = torch.from_numpy(stored["weight"].astype("float32"))
    assert torch.allclose(w, expected[order], rtol=1e-6, atol=1e-7)
