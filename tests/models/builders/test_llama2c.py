"""stories260K, a real pretrained llama2.c model, converted to a Hugging Face Llama
with transcoders trained here: its logits equal llama2.c's forward pass (numpy, on the
unconverted weights), it continues "Once upon a time" as llama2.c's own test expects,
its tokenizer encodes as llama2.c's ``encode`` on thousands of strings, every tensor
maps back, a run of 20 WS2 prompts stores what circuit-tracer's own ``attribute`` and
``prune_graph`` give, and bad files are one line."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from conftest import assert_one_line_error, circuitray

from circuitray.errors import CircuitrayError
from circuitray.models.builders.llama2c import (
    encode_llama2c,
    forward_llama2c,
    read_checkpoint,
    read_tokenizer,
    to_hf_rotary,
)
from circuitray.models.builders.real import REAL_MODELS, build_real, find_source
from circuitray.prompts.ws2 import generate_ws2

MODEL = REAL_MODELS["stories260k"]


@pytest.fixture(scope="module")
def source() -> Path:
    try:
        return find_source(MODEL)
    except CircuitrayError as e:  # only where this project's shared files are absent
        pytest.skip(str(e))


def test_the_default_source_is_next_to_the_checkout(monkeypatch):
    """Without CIRCUITRAY_SHARED_MODELS the source is ``<checkout>/../shared/models``,
    wherever the module lives in the package (the fixture above skips when it is
    absent, so a wrong default would skip the whole file, not fail it)."""
    monkeypatch.delenv("CIRCUITRAY_SHARED_MODELS", raising=False)
    checkout = Path(__file__).resolve().parents[3]
    expected = checkout.parent / "shared" / "models" / MODEL.folder
    try:
        assert find_source(MODEL) == expected
    except CircuitrayError as e:
        assert str(expected) in str(e), str(e)


@pytest.fixture(scope="module")
def converted(source, stories260k) -> Path:
    """The build ``make setup`` made, reused through its key (built here otherwise)."""
    return stories260k


@pytest.fixture(scope="module")
def hf(converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(converted)


@pytest.fixture(scope="module")
def reference(source):
    ckpt = read_checkpoint(source / "checkpoint_legacy.bin")
    return ckpt, read_tokenizer(source / "tokenizer.bin", vocab_size=ckpt.vocab_size)


def test_logits_equal_llama2c_forward(hf, reference):
    model, tokenizer = hf
    ckpt, tok = reference
    prompts = ["Once upon a time", "The cat sat on the mat. It was"]
    prompts += [r["prompt"] for r in generate_ws2(n=6, seed=0)]
    for prompt in prompts:
        ids = tokenizer(prompt)["input_ids"]
        assert ids == encode_llama2c(tok, prompt), prompt
        with torch.no_grad():
            ours = model(torch.tensor([ids])).logits[0].double().numpy()
        theirs = forward_llama2c(ckpt, ids)
        # float32 against float64 over 5 layers: logits of size ~20 agree to ~1e-5.
        assert np.abs(ours - theirs).max() < 1e-3 * max(1.0, np.abs(theirs).max()), prompt
        assert (ours.argmax(-1) == theirs.argmax(-1)).all(), prompt


def test_greedy_continuation_is_llama2cs(hf):
    model, tokenizer = hf
    ids = tokenizer("Once upon a time", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=32, do_sample=False, pad_token_id=2)
    text = tokenizer.decode(out[0], skip_special_tokens=True)
    # llama2.c's own test expectation for this model (../shared/models/README.md).
    assert text.startswith(
        "Once upon a time, there was a little girl named Lily. She loved to play outside "
        "in the park"
    ), text


def test_tokenizer_encodes_as_llama2c(hf, reference):
    _, tokenizer = hf
    _, tok = reference
    rng = random.Random(0)
    chars = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,!?'\"-\n\t")
    chars += ["  ", "é", "ü", "ß", "—", "日本", "😀", "\x00", "<s>", "</s>", "<0x41>", "<unk>"]
    pieces = tok.pieces[259:]
    cases = ["", " ", "  ", "a", " leading", "trailing ", "x\ny", "12 345 6789", "naïve café"]
    for _ in range(3000):
        pool = chars if rng.random() < 0.5 else pieces
        cases.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 12))))
    for case in cases:
        ids = tokenizer(case)["input_ids"]
        assert ids == encode_llama2c(tok, case), repr(case)
        assert tokenizer.decode(ids, skip_special_tokens=True) == case, repr(case)


def test_every_tensor_maps_back(converted, reference):
    from safetensors.torch import load_file

    ckpt, _ = reference
    state = load_file(str(converted / "model.safetensors"))
    t = ckpt.tensors
    expected = {
        "model.embed_tokens.weight": t["token_embedding"],
        "model.norm.weight": t["rms_final"],
    }
    names = {
        "input_layernorm": "rms_att",
        "self_attn.v_proj": "wv",
        "self_attn.o_proj": "wo",
        "post_attention_layernorm": "rms_ffn",
        "mlp.gate_proj": "w1",
        "mlp.down_proj": "w2",
        "mlp.up_proj": "w3",
    }
    for i in range(ckpt.n_layers):
        for hf_name, ours in names.items():
            expected[f"model.layers.{i}.{hf_name}.weight"] = t[ours][i]
        # q/k: rows of each head reordered from adjacent pairs to halves, nothing else.
        qk = (("q_proj", "wq", ckpt.n_heads), ("k_proj", "wk", ckpt.n_kv_heads))
        for hf_name, ours, heads in qk:
            w = state[f"model.layers.{i}.self_attn.{hf_name}.weight"].numpy()
            head = ckpt.head_dim
            for h in range(heads):
                for j in range(head // 2):
                    assert (w[h * head + j] == t[ours][i][h * head + 2 * j]).all()
                    assert (w[h * head + head // 2 + j] == t[ours][i][h * head + 2 * j + 1]).all()
            expected[f"model.layers.{i}.self_attn.{hf_name}.weight"] = to_hf_rotary(
                t[ours][i], heads
            )
    assert set(state) == set(expected)  # tied embeddings: no separate lm_head
    for name, want in expected.items():
        assert state[name].shape == want.shape and (state[name].numpy() == want).all(), name
    config = json.loads((converted / "config.json").read_text())
    assert config["tie_word_embeddings"] and config["num_key_value_heads"] == 4


def test_the_transcoders_report(converted):
    report = json.loads((converted.parent / "stories260k-report.json").read_text())
    assert report["corpus"]["licence"].startswith("PSF")
    assert report["tokens"]["train"] > 50_000 and report["tokens"]["heldout"] > 5_000
    per_layer = report["transcoders"]["per_layer"]
    assert sorted(per_layer) == [str(i) for i in range(5)]
    for layer, m in per_layer.items():
        # Far from GemmaScope's, but they explain most of each MLP's output.
        assert m["explained_variance"] > 0.5 and 0 < m["l0"] < 100, (layer, m)
    # known completions: the answer's own first token (not the lone "▁" that " time"
    # alone tokenizes to), which a TinyStories model ranks first
    once = {r["prompt"]: r for r in report["completions"]}["Once upon a"]
    assert once["rank"] == 1 and once["p"] > 0.9, once
    weights = converted / "model.safetensors"
    before = weights.stat().st_mtime_ns
    build_real(name="stories260k")  # a second build is a no-op
    assert weights.stat().st_mtime_ns == before


def test_fine_tuning_reads_the_transcoders_at_their_own_hook(converted, hf):
    """What every fine-tune checkpoint records (``transcoder_fit``), on a Llama: the
    transcoders as circuit-tracer loads them, fed at their own hook (``mlp.hook_in``),
    fit the held-out texts exactly as the build measured."""
    from circuitray.finetune.evaluate import load_transcoders, transcoder_fit
    from circuitray.models.builders.real import RealBuildConfig, corpus
    from circuitray.models.registry import transcoder_cache_dir

    report = json.loads((converted.parent / "stories260k-report.json").read_text())
    _, heldout, _ = corpus(RealBuildConfig())
    sets = load_transcoders("circuitray/stories260k", cache_dir=str(transcoder_cache_dir()))
    fit = transcoder_fit(*hf, heldout, sets)
    assert fit is not None and sorted(fit) == [str(i) for i in range(5)]
    for layer, built in report["transcoders"]["per_layer"].items():
        ev = fit[layer]["explained_variance"]
        assert ev == pytest.approx(built["explained_variance"], abs=1e-4), (layer, ev, built)


def test_a_run_of_20_ws2_prompts_is_circuit_tracers_graph(converted, tmp_path):
    from circuit_tracer import attribute
    from circuit_tracer.graph import prune_graph

    from circuitray import ModelSpec, RunConfig, run, write_prompts
    from circuitray.models.loading import load_replacement_model
    from circuitray.storage.run_store import RunStore

    ws2 = generate_ws2(n=120, seed=5)
    per_type = (("antonym", 7), ("simple_mapping", 7), ("spatial_relationship", 6))
    rows = [r for t, k in per_type for r in [r for r in ws2 if r["constraint_type"] == t][:k]]
    prompts = write_prompts(rows, tmp_path / "p.parquet")
    out = tmp_path / "run"
    result = run(
        RunConfig(
            prompts=str(prompts), out=str(out), model=ModelSpec(model="stories260k"), actors=1
        )
    )
    assert result.ok == 20, result
    meta = json.loads((out / "run.json").read_text())
    kwargs = {k: v for k, v in meta["attribution"].items() if k not in ("max_tokens", "target")}
    (threads,) = {w["torch_threads"] for w in result.workers}
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)  # the actor's: other counts change last bits
    try:
        model = load_replacement_model(ModelSpec(model="stories260k", device="cpu"))
        store = RunStore(out)
        graphs, edges = store.read_table("graphs"), store.read_table("edges")
        assert graphs is not None and edges is not None
        graphs = graphs.to_pylist()
        for g in graphs[::3]:  # 7 of the 20, every type: ~1 s of attribution each
            graph = attribute(g["prompt"], model, **kwargs)
            _, edge_mask, _ = prune_graph(graph, **meta["prune"])
            dst, src = torch.nonzero(edge_mask, as_tuple=True)
            n = graph.adjacency_matrix.shape[0]
            order = torch.argsort(dst.long() * n + src.long())
            mine = edges.filter(pc.equal(edges["graph_id"], g["graph_id"])).sort_by(
                [("dst", "ascending"), ("src", "ascending")]
            )
            assert mine.num_rows == len(dst) > 0, g["prompt_id"]
            assert (torch.tensor(mine["dst"].to_numpy()) == dst[order]).all()
            assert (torch.tensor(mine["src"].to_numpy()) == src[order]).all()
            weight = torch.tensor(mine["weight"].to_numpy(), dtype=torch.float32)
            want = graph.adjacency_matrix[dst, src][order]
            assert torch.allclose(weight, want, rtol=1e-6, atol=1e-7), g["prompt_id"]
    finally:
        torch.set_num_threads(saved)


def test_bad_sources_are_one_line(source, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(source, bad)
    ckpt = bad / "checkpoint_legacy.bin"
    data = bytearray(ckpt.read_bytes())
    data[-1] ^= 1
    ckpt.write_bytes(bytes(data))
    p = circuitray("model", "build-real", "--name", "stories260k", "--source", bad)
    assert_one_line_error(p, "checkpoint_legacy.bin", "SHA-256")
    shutil.copy(source / "checkpoint_legacy.bin", ckpt)
    (bad / "tokenizer.bin").unlink()
    with pytest.raises(CircuitrayError, match="tokenizer.bin: missing"):
        build_real(name="stories260k", source=bad)
    with pytest.raises(CircuitrayError, match="no source folder"):
        build_real(name="stories260k", source=tmp_path / "no")
    # The converter itself, given other formats or a truncated file.
    with pytest.raises(CircuitrayError, match="not a legacy llama2.c checkpoint"):
        read_checkpoint(source / "tokenizer.bin")
    ckpt.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CircuitrayError, match="truncated"):
        read_checkpoint(ckpt)
    with pytest.raises(CircuitrayError, match="not a llama2.c tokenizer"):
        read_tokenizer(source / "checkpoint_legacy.bin", vocab_size=512)
