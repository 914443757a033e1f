"""llama2.c checkpoints as Hugging Face Llama folders (``stories260K`` and its kin).

1. Read the legacy checkpoint (:func:`read_checkpoint`): a header of 7 int32 (dim,
   hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size -- negative when the
   classifier is not the embedding --, seq_len), then float32 tensors in llama2.c's
   order: token embedding, attention norms, wq, wk, wv, wo, FFN norms, w1, w2, w3,
   final norm, the rotary table (real, imaginary), and the classifier if not shared.
   Every projection is stored ``[out, in]``, as ``torch.nn.Linear`` keeps it.
2. Undo llama2.c's rotary layout (:func:`to_hf_rotary`): its wq/wk rows rotate in
   adjacent pairs (2i, 2i+1) of each head; Hugging Face's Llama rotates halves
   (i, i + head_dim / 2), so each head's rows are reordered (llama2.c's own
   ``export.py`` does the same for its HF export).
3. Read the tokenizer (:func:`read_tokenizer`): int32 max token length, then per token
   a float32 score, an int32 length and the bytes. Ids 0-2 are ``<unk>``, ``<s>``,
   ``</s>``; 3-258 are the bytes ``<0x00>``-``<0xFF>``.
4. Build the Hugging Face tokenizer (:func:`hf_tokenizer`): a ``tokenizers`` BPE whose
   merges are every split of a piece into two pieces, ranked by the merged piece's
   score -- SentencePiece's rule (merge the adjacent pair whose merged piece scores
   highest) in BPE's terms --, with byte fallback, spaces as ``▁`` and one ``▁``
   before the text (llama2.c's dummy prefix), ``<s>`` first. Where two adjacent pairs
   make the same piece, llama2.c merges the leftmost and BPE the split it ranks first:
   a string needing that choice could encode differently (3,000 test strings did not).
5. Write the folder (:func:`convert_llama2c`): ``config.json`` (LlamaForCausalLM),
   ``model.safetensors`` (float32), the tokenizer files, and ``llama2c.json`` with the
   sources' SHA-256.

The reference implementations the checks compare against, written from llama2.c's
``run.c`` and not from Hugging Face: :func:`encode_llama2c` (its ``encode``) and
:func:`forward_llama2c` (its ``forward``, in float64 numpy on the unconverted weights).
"""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from circuitray.errors import CircuitrayError
from circuitray.prompts.files import file_sha256

__all__ = [
    "Llama2cCheckpoint",
    "Llama2cTokenizer",
    "convert_llama2c",
    "encode_llama2c",
    "forward_llama2c",
    "hf_tokenizer",
    "read_checkpoint",
    "read_tokenizer",
    "to_hf_rotary",
]

HEADER = struct.Struct("<7i")
SPACE = "\u2581"  # SentencePiece's "▁"
N_SPECIAL = 3  # <unk>, <s>, </s>
BOS, EOS = 1, 2


@dataclass
class Llama2cCheckpoint:
    """A legacy llama2.c checkpoint (step 1): its shape and float32 tensors, each
    ``[layer, ...]`` where llama2.c stacks layers."""

    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool
    tensors: dict[str, np.ndarray]

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


def read_checkpoint(path: Path) -> Llama2cCheckpoint:
    """Step 1; one line naming the file when it is not a legacy llama2.c checkpoint."""
    data = Path(path).read_bytes()
    if len(data) < HEADER.size:
        raise CircuitrayError(f"{path}: not a llama2.c checkpoint (shorter than its header)")
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = HEADER.unpack_from(data)
    shared = vocab > 0
    vocab = abs(vocab)
    sane = (
        0 < dim <= 65536
        and 0 < hidden <= 1 << 20
        and 0 < n_layers <= 1024
        and 0 < n_heads <= dim
        and dim % n_heads == 0
        and 0 < n_kv <= n_heads
        and n_heads % n_kv == 0
        and 0 < vocab <= 1 << 22
        and 0 < seq_len <= 1 << 20
        and (dim // n_heads) % 2 == 0
    )
    if not sane:
        raise CircuitrayError(
            f"{path}: not a legacy llama2.c checkpoint (header "
            f"{[dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len]})"
        )
    head = dim // n_heads
    kv_dim = n_kv * head
    shapes = [
        ("token_embedding", (vocab, dim)),
        ("rms_att", (n_layers, dim)),
        ("wq", (n_layers, dim, dim)),
        ("wk", (n_layers, kv_dim, dim)),
        ("wv", (n_layers, kv_dim, dim)),
        ("wo", (n_layers, dim, dim)),
        ("rms_ffn", (n_layers, dim)),
        ("w1", (n_layers, hidden, dim)),
        ("w2", (n_layers, dim, hidden)),
        ("w3", (n_layers, hidden, dim)),
        ("rms_final", (dim,)),
        ("freq_cis_real", (seq_len, head // 2)),
        ("freq_cis_imag", (seq_len, head // 2)),
    ]
    if not shared:
        shapes.append(("wcls", (vocab, dim)))
    n = sum(int(np.prod(s)) for _, s in shapes)
    if len(data) != HEADER.size + 4 * n:
        raise CircuitrayError(
            f"{path}: {len(data)} bytes, but its header describes {HEADER.size + 4 * n} "
            "(truncated, or not a legacy llama2.c checkpoint)"
        )
    flat = np.frombuffer(data, dtype="<f4", offset=HEADER.size)
    tensors, at = {}, 0
    for name, shape in shapes:
        size = int(np.prod(shape))
        tensors[name] = flat[at : at + size].reshape(shape).copy()
        at += size
    return Llama2cCheckpoint(
        dim=dim,
        hidden_dim=hidden,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        vocab_size=vocab,
        seq_len=seq_len,
        shared_classifier=shared,
        tensors=tensors,
    )


def to_hf_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Step 2: rows of a ``[n_heads * head_dim, in]`` projection from llama2.c's
    adjacent-pair rotary layout to Hugging Face's half-split one."""
    rows, cols = w.shape
    head = rows // n_heads
    return w.reshape(n_heads, head // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


@dataclass
class Llama2cTokenizer:
    """A llama2.c ``tokenizer.bin`` (step 3)."""

    pieces: list[str]
    scores: list[float]
    max_token_length: int

    def byte_id(self, b: int) -> int:
        return N_SPECIAL + b


def read_tokenizer(path: Path, *, vocab_size: int) -> Llama2cTokenizer:
    """Step 3 (``vocab_size`` from the checkpoint: the file does not say it)."""
    data = Path(path).read_bytes()
    try:
        (max_len,) = struct.unpack_from("<i", data)
        pieces, scores, at = [], [], 4
        for _ in range(vocab_size):
            score, length = struct.unpack_from("<fi", data, at)
            at += 8
            if not 0 < length <= max(max_len, 1) or at + length > len(data):
                raise ValueError(length)
            pieces.append(data[at : at + length].decode("utf-8"))
            scores.append(score)
            at += length
    except (struct.error, ValueError, UnicodeDecodeError):
        raise CircuitrayError(f"{path}: not a llama2.c tokenizer of {vocab_size} tokens") from None
    if at != len(data):
        raise CircuitrayError(
            f"{path}: not a llama2.c tokenizer of {vocab_size} tokens "
            f"({len(data) - at} bytes after them)"
        )
    wanted = ["<unk>", "\n<s>\n", "\n</s>\n"] + [f"<0x{b:02X}>" for b in range(256)]
    if pieces[: len(wanted)] != wanted:
        raise CircuitrayError(f"{path}: ids 0-258 are not <unk>, <s>, </s> and the 256 bytes")
    return Llama2cTokenizer(pieces=pieces, scores=scores, max_token_length=max_len)


def _vocab(tok: Llama2cTokenizer) -> dict[str, int]:
    """Piece -> id as Hugging Face spells them: spaces as ``▁``, specials by name."""
    names = ["<unk>", "<s>", "</s>"] + tok.pieces[N_SPECIAL:]
    vocab: dict[str, int] = {}
    for i, p in enumerate(names):
        vocab.setdefault(p.replace(" ", SPACE), i)
    return vocab


def hf_tokenizer(tok: Llama2cTokenizer):
    """Step 4: a ``transformers`` fast tokenizer that encodes as llama2.c does."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = _vocab(tok)
    first = N_SPECIAL + 256
    merges: list[tuple[float, int, tuple[str, str]]] = []
    for i in range(first, len(tok.pieces)):
        piece = tok.pieces[i].replace(" ", SPACE)
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((-tok.scores[i], i, (left, right)))
    merges.sort()
    bpe = models.BPE(
        vocab=vocab,
        merges=[m for _, _, m in merges],
        unk_token="<unk>",
        fuse_unk=True,
        byte_fallback=True,
    )
    t = Tokenizer(bpe)
    t.normalizer = normalizers.Sequence(
        [normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)]
    )
    t.decoder = decoders.Sequence(
        [
            decoders.Replace(SPACE, " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    t.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=t,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",  # batches are right-padded; padded positions are never read
        add_bos_token=True,
        clean_up_tokenization_spaces=False,
        # "<s>" typed in a prompt is text, as llama2.c encodes it, not a BOS.
        split_special_tokens=True,
        model_input_names=["input_ids", "attention_mask"],
    )


def encode_llama2c(tok: Llama2cTokenizer, text: str, *, bos: bool = True) -> list[int]:
    """llama2.c's ``encode`` (reference for step 4): a dummy-prefix space, each
    character's piece or its UTF-8 bytes, then repeatedly merge the adjacent pair whose
    merged piece has the highest score (the leftmost of equals)."""
    ids_of = {p: i for i, p in reversed(list(enumerate(tok.pieces)))}
    ids = [BOS] if bos else []
    body: list[int] = []
    if text:
        body.append(ids_of[" "])
    for ch in text:
        if ch in ids_of and ids_of[ch] >= N_SPECIAL + 256:
            body.append(ids_of[ch])
        else:
            body.extend(tok.byte_id(b) for b in ch.encode("utf-8"))
    while True:
        best, best_at = -1e10, -1
        for j in range(len(body) - 1):
            merged = tok.pieces[body[j]] + tok.pieces[body[j + 1]]
            k = ids_of.get(merged)
            if k is not None and k >= N_SPECIAL + 256 and tok.scores[k] > best:
                best, best_at = tok.scores[k], j
        if best_at < 0:
            break
        merged = tok.pieces[body[best_at]] + tok.pieces[body[best_at + 1]]
        body[best_at : best_at + 2] = [ids_of[merged]]
    return ids + body


def forward_llama2c(ckpt: Llama2cCheckpoint, tokens: list[int]) -> np.ndarray:
    """llama2.c's ``forward`` over ``tokens`` (reference for step 2): float64, the
    checkpoint's own weights and rotary table; logits ``[len(tokens), vocab]``."""
    t = {k: v.astype(np.float64) for k, v in ckpt.tensors.items()}
    n, dim, head = len(tokens), ckpt.dim, ckpt.head_dim
    group = ckpt.n_heads // ckpt.n_kv_heads

    def rmsnorm(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * w

    def rope(v, n_h):  # v [n, n_h * head]: rotate pairs (2i, 2i+1) by position
        v = v.reshape(n, n_h, head // 2, 2)
        cos = t["freq_cis_real"][:n, None, :]
        sin = t["freq_cis_imag"][:n, None, :]
        a, b = v[..., 0], v[..., 1]
        return np.stack([a * cos - b * sin, a * sin + b * cos], -1).reshape(n, n_h * head)

    x = t["token_embedding"][tokens]
    causal = np.triu(np.full((n, n), -np.inf), 1)
    for layer in range(ckpt.n_layers):
        h = rmsnorm(x, t["rms_att"][layer])
        q = rope(h @ t["wq"][layer].T, ckpt.n_heads).reshape(n, ckpt.n_heads, head)
        k = rope(h @ t["wk"][layer].T, ckpt.n_kv_heads).reshape(n, ckpt.n_kv_heads, head)
        v = (h @ t["wv"][layer].T).reshape(n, ckpt.n_kv_heads, head)
        out = np.empty((n, ckpt.n_heads, head))
        for i in range(ckpt.n_heads):
            s = q[:, i] @ k[:, i // group].T / np.sqrt(head) + causal
            p = np.exp(s - s.max(-1, keepdims=True))
            out[:, i] = (p / p.sum(-1, keepdims=True)) @ v[:, i // group]
        x = x + out.reshape(n, dim) @ t["wo"][layer].T
        h = rmsnorm(x, t["rms_ffn"][layer])
        a = h @ t["w1"][layer].T
        x = x + ((a / (1 + np.exp(-a))) * (h @ t["w3"][layer].T)) @ t["w2"][layer].T
    x = rmsnorm(x, t["rms_final"])
    return x @ t["wcls" if "wcls" in t else "token_embedding"].T


def convert_llama2c(checkpoint: Path, tokenizer: Path, out: Path) -> Path:
    """Steps 1-5: ``out`` becomes a Hugging Face Llama folder (written beside it and
    renamed into place, so a failure leaves no half folder)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    from circuitray.models.builders.artifacts import _replace_dir

    ckpt = read_checkpoint(checkpoint)
    tok = read_tokenizer(tokenizer, vocab_size=ckpt.vocab_size)
    # llama2.c's rotary table is theta 10000's: check it rather than assume it.
    head = ckpt.head_dim
    freqs = 1.0 / 10000.0 ** (np.arange(0, head, 2) / head)
    angles = np.outer(np.arange(ckpt.seq_len), freqs)
    # (float32 tables of long contexts differ from float64's by ~1e-4 at the far end)
    if not np.allclose(ckpt.tensors["freq_cis_real"], np.cos(angles), atol=1e-3):
        raise CircuitrayError(f"{checkpoint}: its rotary table is not theta 10000's")
    config = LlamaConfig(
        architectures=["LlamaForCausalLM"],  # circuit-tracer reads the architecture here
        vocab_size=ckpt.vocab_size,
        hidden_size=ckpt.dim,
        intermediate_size=ckpt.hidden_dim,
        num_hidden_layers=ckpt.n_layers,
        num_attention_heads=ckpt.n_heads,
        num_key_value_heads=ckpt.n_kv_heads,
        max_position_embeddings=ckpt.seq_len,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        hidden_act="silu",
        tie_word_embeddings=ckpt.shared_classifier,
        bos_token_id=BOS,
        eos_token_id=EOS,
        torch_dtype="float32",
    )
    t = ckpt.tensors
    state = {"model.embed_tokens.weight": t["token_embedding"], "model.norm.weight": t["rms_final"]}
    for i in range(ckpt.n_layers):
        p = f"model.layers.{i}."
        state[p + "input_layernorm.weight"] = t["rms_att"][i]
        state[p + "self_attn.q_proj.weight"] = to_hf_rotary(t["wq"][i], ckpt.n_heads)
        state[p + "self_attn.k_proj.weight"] = to_hf_rotary(t["wk"][i], ckpt.n_kv_heads)
        state[p + "self_attn.v_proj.weight"] = t["wv"][i]
        state[p + "self_attn.o_proj.weight"] = t["wo"][i]
        state[p + "post_attention_layernorm.weight"] = t["rms_ffn"][i]
        state[p + "mlp.gate_proj.weight"] = t["w1"][i]
        state[p + "mlp.down_proj.weight"] = t["w2"][i]
        state[p + "mlp.up_proj.weight"] = t["w3"][i]
    state["lm_head.weight"] = t["wcls"] if "wcls" in t else t["token_embedding"]
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).clone() for k, v in state.items()}
    if ckpt.shared_classifier:
        del tensors["lm_head.weight"]  # tied: safetensors keeps one copy
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(tmp)
    hf_tokenizer(tok).save_pretrained(tmp)
    sources = {"checkpoint": Path(checkpoint), "tokenizer": Path(tokenizer)}
    (tmp / "llama2c.json").write_text(
        json.dumps(
            {
                "format": "llama2c-legacy",
                "sources": {
                    k: {"file": p.name, "sha256": file_sha256(p)} for k, p in sources.items()
                },
            },
            indent=2,
        )
        + "\n"
    )
    _replace_dir(tmp, out)  # the old folder moved aside first: never a half one
    return out
