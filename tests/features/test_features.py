"""Feature tables (issue 20): the organism's built table checked against an independent
recomputation of its activations; label files imported, bad rows refused in one line;
labels in the query views, named queries and the exported graph."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import assert_refused, circuitray
from safetensors.torch import load_file

from circuitray.features.build import default_corpus, organism_corpus
from circuitray.features.labels import LabelFileError, import_labels
from circuitray.features.store import features_path, read_features
from circuitray.models.registry import circuitray_home, transcoder_cache_dir

TEXTS = organism_corpus(n_prompts=60, n_filler=60)  # what the fixture built from


@pytest.fixture
def features_dir(organism_features, monkeypatch) -> Path:
    monkeypatch.setenv("CIRCUITRAY_FEATURES_DIR", str(organism_features))
    return organism_features


def _recompute(layer: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per text, the layer's transcoder activations ``[positions, features]`` (and the
    pre-activations' margins over the thresholds) computed
    without circuit-tracer: transformers' Gemma-2 with a hook on the MLP's input norm,
    its output divided by the norm's gain (``1 + weight``): the transcoders' input,
    TransformerLens' ``ln2.hook_normalized``, is the normalised residual before the
    gain. The encoder is read from its safetensors file, JumpReLU applied by hand.
    BOS first, as attribution tokenizes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = circuitray_home() / "models" / "organism-tuned"
    # Eager attention: the only one that applies Gemma-2's attention logit soft-cap.
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    weights = load_file(
        transcoder_cache_dir() / "circuitray" / "organism" / f"layer_{layer}.safetensors"
    )
    w_enc, b_enc = weights["W_enc"], weights["b_enc"]
    threshold = weights["activation_function.threshold"]
    captured = {}
    norm = model.model.layers[layer].pre_feedforward_layernorm
    hook = norm.register_forward_hook(
        lambda _m, _i, out: captured.__setitem__("x", out[0] / (1.0 + norm.weight))
    )
    out, margins = [], []
    try:
        with torch.no_grad():
            for text in TEXTS:
                ids = tokenizer(text).input_ids
                if ids[0] != tokenizer.bos_token_id:
                    ids = [tokenizer.bos_token_id, *ids]
                model(torch.tensor([ids]))
                pre = captured["x"] @ w_enc.T + b_enc
                out.append(torch.where(pre > threshold, pre, 0.0))
                margins.append(pre - threshold)
    finally:
        hook.remove()
    return out, margins


@pytest.mark.parametrize("layer", [1, 3])
def test_top_examples_match_an_independent_recomputation(features_dir, layer):
    table = read_features("circuitray/organism")
    assert table is not None and table.num_rows == 4 * 512
    rows = [r for r in table.to_pylist() if r["layer"] == layer and r["n_active"]]
    # The feature with the highest maximum, and one that fires on fewer tokens.
    strongest = max(rows, key=lambda r: r["max_activation"])
    sparse = min((r for r in rows if r["n_active"] >= 5), key=lambda r: r["n_active"])
    acts, pre = _recompute(layer)
    for row in (strongest, sparse):
        f = row["feature"]
        per_text = [a[1:, f] for a in acts]  # BOS left out, as the build does
        margin = torch.cat([p[1:, f] for p in pre])  # pre-activation - threshold
        active = torch.cat(per_text)
        active = active[active > 0]
        # Exact but for tokens within float error of the threshold (CPU kernels differ).
        assert (margin > 1e-4).sum() <= row["n_active"] <= (margin > -1e-4).sum()
        assert row["n_tokens"] == sum(p.numel() for p in per_text)
        assert row["mean_activation"] == pytest.approx(active.double().mean().item(), rel=1e-3)
        assert row["max_activation"] == pytest.approx(active.max().item(), rel=1e-4)
        # Each context's strongest token, strongest contexts first.
        best = sorted(
            (
                (p.max().item(), i, int(p.argmax()) + 1)
                for i, p in enumerate(per_text)
                if p.max() > 0
            ),
            key=lambda t: -t[0],
        )
        examples = row["top_examples"]
        assert len(examples) == min(8, len(best))
        for example, (value, _, _) in zip(examples, best, strict=False):
            assert example["activation"] == pytest.approx(value, rel=1e-4, abs=1e-5)
            close = [b for b in best if abs(b[0] - example["activation"]) <= 1e-4 * value + 1e-5]
            # The same context and token (any of those tied within float error).
            assert any(TEXTS[j].startswith(example["text"].strip()[:8]) for _, j, _ in close)
            assert example["pos"] in {p for _, _, p in close}
        assert row["label"] and row["source"].startswith("heuristic:")
        # The label starts with the token it fires on most among those contexts.
        tokens = [e["token"].strip() for e in examples]
        most = max(tokens, key=lambda t: (tokens.count(t), -tokens.index(t)))
        assert row["label"].startswith(f"fires on {most} ({tokens.count(most)}/{len(tokens)})")


def test_import_merges_labels_and_keeps_statistics(features_dir, tmp_path, monkeypatch):
    before = read_features("circuitray/organism")
    assert before is not None
    built = {(r["layer"], r["feature"]): r for r in before.to_pylist()}
    copy = tmp_path / "copy"
    copy.mkdir()
    # Import into a copy of the table, so the session's built labels stay as they are.
    (copy / features_path("circuitray/organism").name).write_bytes(
        features_path("circuitray/organism").read_bytes()
    )
    monkeypatch.setenv("CIRCUITRAY_FEATURES_DIR", str(copy))
    labels = tmp_path / "labels.csv"
    labels.write_text('layer,feature,label\n1,250,moves upward\n3,7,"quoted, label"\n')
    summary = import_labels(labels, transcoders="circuitray/organism")
    assert summary["imported"] == 2 and summary["replaced"] == 2 and summary["added"] == 0
    after = {
        (r["layer"], r["feature"]): r for r in read_features("circuitray/organism").to_pylist()
    }
    assert after[(1, 250)]["label"] == "moves upward"
    assert after[(3, 7)]["label"] == "quoted, label"
    assert after[(1, 250)]["source"] == "import: labels.csv"
    assert after[(1, 250)]["top_examples"] == built[(1, 250)]["top_examples"]
    assert after[(0, 0)] == built[(0, 0)]
    # Parquet and JSONL; a set with no table yet gets the imported rows alone.
    pq.write_table(pa.table({"layer": [0], "feature": [9], "label": ["p"]}), tmp_path / "l.parquet")
    assert import_labels(tmp_path / "l.parquet", transcoders="org/other")["added"] == 1
    (tmp_path / "l.jsonl").write_text('{"layer": 2, "feature": 5, "label": "j", "source": "me"}\n')
    import_labels(tmp_path / "l.jsonl", transcoders="org/other")
    other = read_features("org/other").to_pylist()
    assert [(r["layer"], r["feature"], r["label"], r["source"]) for r in other] == [
        (0, 9, "p", "import: l.parquet"),
        (2, 5, "j", "me"),
    ]


def test_neuronpedia_export_is_imported(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITRAY_FEATURES_DIR", str(tmp_path / "features"))
    # Two explanations of feature 4232 (the preferred type wins), one of 17, one empty.
    records = [
        {"modelId": "gemma-2-2b", "layer": "12-gemmascope-transcoder-16k", "index": "4232",
         "description": "first", "typeName": "oai_token-act-pair",
         "explanationModelName": "gpt-4o-mini"},
        {"modelId": "gemma-2-2b", "layer": "12-gemmascope-transcoder-16k", "index": "4232",
         "description": "starts of things", "typeName": "np_max-act-logits",
         "explanationModelName": "gemini-2.0-flash"},
        {"modelId": "gemma-2-2b", "layer": "3-gemmascope-transcoder-16k", "index": "17",
         "description": "French words", "typeName": "oai_token-act-pair"},
        {"modelId": "gemma-2-2b", "layer": "3-gemmascope-transcoder-16k", "index": "18",
         "description": ""},
    ]  # fmt: skip
    path = tmp_path / "batch-0.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    p = circuitray("features", "import", path, "--transcoders", "gemma", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["imported"] == 2
    rows = read_features("gemma").to_pylist()
    assert [(r["layer"], r["feature"], r["label"]) for r in rows] == [
        (3, 17, "French words"),
        (12, 4232, "starts of things"),
    ]
    assert rows[1]["source"] == "neuronpedia: batch-0.jsonl.gz (gemma-2-2b, gemini-2.0-flash)"


@pytest.mark.parametrize(
    ("name", "text", "needles"),
    [
        ("l.csv", "layer,feature,label\n1,2,a\n1,x,b\n", ["l.csv: row 2", "column 'feature'"]),
        ("l.csv", "layer,feature,label\n1,2,a\n-1,3,b\n", ["row 2", "column 'layer'"]),
        ("l.csv", "layer,feature,label\n1,2,a\n1,3,\n", ["row 2", "column 'label'"]),
        ("l.csv", "layer,feature,label\n1,2,a\n1,2,b\n", ["row 2", "L1/2", "first at row 1"]),
        ("l.csv", "layer,feature\n1,2\n", ["missing required column 'label'"]),
        ("l.jsonl", '{"layer": 1, "feature": 2, "label": "a"}\n{"layer": 1.5, "feature": 2, '
         '"label": "b"}\n', ["l.jsonl: row 2", "column 'layer'"]),
        ("l.jsonl", '{"layer": 1, "feature": 2, "label": "a"}\nnot json\n', ["line 2"]),
        ("l.jsonl", '{"modelId": "m", "layer": "5-x", "index": "one", "description": "d"}\n',
         ["row 1", "column 'index'"]),
        ("l.txt", "layer,feature,label\n", ["unknown labels file type '.txt'"]),
        ("l.jsonl", '{"layer": 1, "feature": 2, "label": "a"}\n\n\n{"layer": 1, "feature": 3, '
         '"label": 5}\n', ["l.jsonl: row 4", "column 'label'", "5 is not text"]),
        ("l.jsonl", '{"layer": 1, "feature": true, "label": "a"}\n', ["row 1", "True is not"]),
        ("l.json", "[]", ["no labels in file"]),
    ],
)  # fmt: skip
def test_a_bad_labels_file_is_refused_in_one_line(tmp_path, name, text, needles):
    path = tmp_path / name
    path.write_text(text)
    env_dir = tmp_path / "features"
    env = {**os.environ, "CIRCUITRAY_FEATURES_DIR": str(env_dir)}
    p = circuitray("features", "import", path, "--transcoders", "circuitray/organism", env=env)
    assert_refused(p, str(path), *needles)
    assert not env_dir.exists()  # nothing written
    with pytest.raises(LabelFileError):
        import_labels(path, transcoders="x")


def test_an_alias_is_not_a_transcoder_reference(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("layer,feature,label\n1,2,a\n")
    env = {**os.environ, "CIRCUITRAY_FEATURES_DIR": str(tmp_path / "features")}
    p = circuitray("features", "import", path, "--transcoders", "per-layer", env=env)
    assert_refused(p, "'per-layer'", "model.transcoders")
    assert not (tmp_path / "features").exists()


def test_labels_in_queries_sql_and_export(features_dir, organism_runs, tmp_path):
    tuned = organism_runs.tuned
    p = circuitray("query", "top_features", tuned, "--format", "json")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert rows and all(r["label"] for r in rows), rows[:2]
    p = circuitray("query", "top_features", tuned)
    assert "label" in p.stdout.splitlines()[0]
    p = circuitray("sql", tuned, "SELECT * FROM features LIMIT 5", "--format", "json")
    assert p.returncode == 0, p.stderr
    five = json.loads(p.stdout)
    assert len(five) == 5 and five[0]["transcoders"] == "circuitray/organism"
    assert {"label", "source", "frequency", "top_examples"} <= set(five[0])
    p = circuitray("query", "paths", tuned, "--param", "max_graphs=3", "--format", "json")
    assert any("L" in r["label"] and " [fires on " in r["label"] for r in json.loads(p.stdout))
    p = circuitray("query", "compare_runs", organism_runs.base, tuned, "--format", "json")
    gained = [g for r in json.loads(p.stdout) for g in (r["top_gained"] or [])]
    assert gained and all(g.startswith("L") and "fires on" in g for g in gained), gained[:3]
    # Export: clerp on every feature node the table labels, and the features file.
    first = "SELECT min(graph_id) AS g FROM graphs WHERE status = 'ok'"
    graph_id = json.loads(circuitray("sql", tuned, first, "--format", "json").stdout)[0]["g"]
    p = circuitray("export", tuned, "--graph", graph_id, "--out", tmp_path / "viewer", "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(Path(json.loads(p.stdout)["path"]).read_text())
    feats = [n for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert feats and all(n["clerp"].startswith("fires on") for n in feats)
    meta = json.loads((tmp_path / "viewer" / "graph-metadata.json").read_text())
    sidecar = json.loads((tmp_path / "viewer" / meta["graphs"][0]["features"]).read_text())
    layer, feat, _ = feats[0]["node_id"].split("_")
    assert sidecar["features"][f"{layer}/{feat}"]["label"] == feats[0]["clerp"]
    assert sidecar["features"][f"{layer}/{feat}"]["top_examples"]


def test_sql_reads_the_runs_feature_table_and_nothing_beside_it(ray_run, tmp_path, monkeypatch):
    from circuitray.errors import CircuitrayError
    from circuitray.query.engine import run_sql

    monkeypatch.setenv("CIRCUITRAY_FEATURES_DIR", str(tmp_path))
    labels = tmp_path / "labels.csv"
    labels.write_text("layer,feature,label\n0,1,tiny one\n")
    import_labels(labels, transcoders="circuitray/tiny")  # the ray_run's transcoders
    import_labels(labels, transcoders="someone/else")
    rows = run_sql([str(ray_run.out)], "SELECT transcoders, label FROM features").to_pylist()
    assert rows == [{"transcoders": "circuitray/tiny", "label": "tiny one"}]
    other = features_path("someone/else")
    with pytest.raises(CircuitrayError, match="Permission|not allowed|disabled"):
        run_sql([str(ray_run.out)], f"SELECT * FROM read_parquet('{other}')")


def test_a_torn_feature_table_leaves_the_other_views_working(ray_run, tmp_path, monkeypatch):
    from circuitray.query.engine import run_sql

    monkeypatch.setenv("CIRCUITRAY_FEATURES_DIR", str(tmp_path))
    features_path("circuitray/tiny").write_bytes(b"PAR1 torn")
    n = run_sql([str(ray_run.out)], "SELECT count(*) AS n FROM graphs").to_pylist()[0]["n"]
    assert n > 0
    assert run_sql([str(ray_run.out)], "SELECT * FROM features").num_rows == 0


def test_a_real_models_table_defaults_to_its_transcoders_corpus():
    """Real prose for a pretrained model (what its transcoders were trained on), the
    organism corpus for the project's own models, nothing for a folder."""
    from circuitray.models.builders.real import RealBuildConfig, corpus

    train, heldout, _ = corpus(RealBuildConfig())
    texts, name = default_corpus("gemma-3-270m", n_prompts=4, n_filler=4)
    assert texts == train + heldout and name.startswith("gemma-3-270m's transcoder corpus")
    texts, name = default_corpus("organism-tuned", n_prompts=4, n_filler=4)
    assert texts == organism_corpus(n_prompts=4, n_filler=4) and "organism" in name
    assert default_corpus("/models/mine", n_prompts=4, n_filler=4) is None
