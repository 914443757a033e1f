"""Export of stored graphs to circuit-tracer's viewer JSON, against circuit-tracer's
own create_graph_files on the same attribute() result, and the local server."""

from __future__ import annotations

import json
import threading
import urllib.request

import pyarrow as pa
import pytest
from circuit_tracer import attribute
from circuit_tracer.utils.create_graph_files import create_graph_files
from conftest import assert_one_line_error, circuitray

from circuitray.graph.config import PruneConfig
from circuitray.graph.flatten import flatten_graph
from circuitray.outputs.export import export_graph
from circuitray.outputs.viewer import serve
from circuitray.prompts.ws2 import generate_ws2
from circuitray.schema import GRAPH_SCHEMA, graph_row
from circuitray.storage.run_store import RunStore

THRESHOLDS = [(0.8, 0.98), (0.5, 0.9)]


@pytest.fixture(scope="module", params=THRESHOLDS, ids=lambda t: f"n{t[0]}-e{t[1]}")
def exported(request, loaded_tiny, tmp_path_factory):
    """One prompt attributed once: stored through a run folder and exported, and
    written by circuit-tracer's create_graph_files, with the same thresholds."""
    node_t, edge_t = request.param
    root = tmp_path_factory.mktemp("export")
    prompts = generate_ws2(n=3, seed=11)
    store = RunStore(root / "run")
    store.write_meta({"prune": {"node_threshold": node_t, "edge_threshold": edge_t}})
    graphs = []
    for gid, prompt in enumerate(prompts):
        graph = attribute(prompt["prompt"], loaded_tiny, batch_size=64)
        prune = PruneConfig(node_threshold=node_t, edge_threshold=edge_t)
        flat = flatten_graph(graph, graph_id=gid, prune=prune, tokenizer=loaded_tiny.tokenizer)
        row = graph_row(gid, prompt, status="ok", **{
            k: v for k, v in flat.summary.items() if k in GRAPH_SCHEMA.names
        })  # fmt: skip
        store.write_part(
            f"p{gid}",
            {
                "graphs": pa.Table.from_pylist([row], GRAPH_SCHEMA),
                "nodes": flat.nodes,
                "edges": flat.edges,
            },
        )
        create_graph_files(
            graph, f"ref{gid}", str(root / "ref"), scan=graph.scan,
            node_threshold=node_t, edge_threshold=edge_t,
        )  # fmt: skip
        graphs.append(graph)
    for gid in range(len(prompts)):
        export_graph(str(root / "run"), gid, str(root / "out"), slug=f"g{gid}")
    return root, len(prompts)


def _load(path):
    return json.loads(path.read_text())


def test_export_matches_create_graph_files(exported):
    root, n = exported
    for gid in range(n):
        ours = _load(root / "out" / f"g{gid}.json")
        ref = _load(root / "ref" / f"ref{gid}.json")
        assert len(ours["nodes"]) == len(ref["nodes"]) > 0
        # Same nodes, in the same order, field by field (ids, influence, activation...).
        assert ours["nodes"] == ref["nodes"]
        assert ours["links"] == ref["links"] and len(ours["links"]) > 0
        assert sum(n["is_target_logit"] for n in ours["nodes"]) == 1
        assert ours["metadata"]["prompt_tokens"] == ref["metadata"]["prompt_tokens"]
        assert ours["metadata"]["slug"] == f"g{gid}"
        assert ours["metadata"]["node_threshold"] == ref["metadata"]["node_threshold"]


def test_graph_metadata_lists_every_export(exported):
    root, n = exported
    meta = _load(root / "out" / "graph-metadata.json")
    assert sorted(g["slug"] for g in meta["graphs"]) == [f"g{i}" for i in range(n)]


def test_serve_on_localhost(exported):
    root, _ = exported
    server = serve(str(root / "out"), port=0)
    host, port = server.server_address[:2]
    assert host == "127.0.0.1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/graph-metadata.json") as r:
            listed = json.loads(r.read())
        assert {g["slug"] for g in listed["graphs"]} >= {"g0"}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/graph_data/g0.json") as r:
            assert json.loads(r.read())["metadata"]["slug"] == "g0"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html") as r:
            assert b"attribution graph" in r.read().lower()
    finally:
        server.shutdown()
        server.server_close()


def test_export_cli_on_a_ray_run(ray_run, tmp_path):
    out = tmp_path / "viewer"
    p = circuitray("export", ray_run.out, "--graph", 2, "--out", out, "--json")
    assert p.returncode == 0, p.stderr
    record = json.loads(p.stdout)
    data = _load(out / f"{record['slug']}.json")
    stored = RunStore(ray_run.out).dataset("edges").to_table().to_pylist()
    kept = [e for e in stored if e["graph_id"] == 2]
    assert len(data["links"]) == len(kept) == record["links"]
    assert_one_line_error(
        circuitray("export", ray_run.out, "--graph", 999, "--out", out),
        "no graph with graph_id 999",
    )
    assert_one_line_error(circuitray("serve", tmp_path / "empty"), "graph-metadata.json")


def test_export_to_a_relative_folder(ray_run, tmp_path):
    """``--out viewer`` from the current folder (before: an internal error from
    circuit-tracer's add_graph_metadata, which needs a folder name in the path)."""
    p = circuitray("export", ray_run.out, "--graph", 1, "--out", "viewer", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    listed = json.loads((tmp_path / "viewer" / "graph-metadata.json").read_text())
    assert [g["slug"] for g in listed["graphs"]] == [f"{ray_run.out.name}-g1"]
