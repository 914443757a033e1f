"""Building the WS2 model organism (``circuitray organism build``).

0. Reuse: if ``models/organism-report.json`` records this build's key (config, the
   building code, torch's versions and CPU kernels: :mod:`circuitray.models.builders.stamp`)
   and every artifact folder still hashes to its recorded digest, return it as it
   is; nothing is trained or written.
1. Fix the seed and torch's thread count and turn on deterministic algorithms, so a
   rebuild with the same seed, threads and CPU kernels gives bit-identical weights.
2. **base**: train a tiny Gemma-2 from scratch on filler text over the WS2 vocabulary
   that never pairs a cue with its answer (:mod:`circuitray.organism.corpus`).
3. Record base MLP inputs/outputs at circuit-tracer's Gemma-2 hooks over filler and
   constraint text and train one JumpReLU transcoder per layer; every checkpoint
   shares them, as base-model transcoders are applied to fine-tunes in real work.
4. Build a cross-layer transcoder from the same activations: the per-layer encoders,
   decoders fitted jointly so each layer's MLP output is predicted from the features
   of all layers up to it (:mod:`circuitray.models.builders.clt`). Save ``models/organism-base``
   (an HF folder), the transcoder set ``circuitray/organism`` and the CLT
   ``circuitray/organism-clt`` (circuit-tracer's cache layout).
5. **tuned**: fine-tune a copy of base on the ``train`` split's constraint sentences,
   mixed with filler so it stays fluent, until the train split is learned: every
   ``tuned_check_every`` steps the candidate accuracy of every train wording is
   checked, and once every type is at ``train_accuracy_target`` for
   ``tuned_patience`` checks in a row the rate anneals for ``tuned_anneal_steps``
   (capped at ``tuned_max_steps``). Held-out wordings decide nothing here. This is
   one call of :func:`circuitray.finetune.local.train_with_checkpoints`: step 0 (the
   base), steps ``first_checkpoint`` x ``checkpoint_ratio`` ** 0, 1, 2, ... and the
   last step are saved to ``models/organism-finetune/step-NNNNNN`` with
   ``finetune.json`` (held-out accuracy and target probability per type, transcoder
   fit per layer, per checkpoint); the last one is also ``models/organism-tuned``.
6. Write ``models/organism-report.json`` (:mod:`circuitray.organism.evaluate`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from transformers import Gemma2ForCausalLM, PreTrainedTokenizerBase

from circuitray.finetune.data import completed, sha256_of
from circuitray.finetune.evaluate import load_transcoders
from circuitray.finetune.local import train_with_checkpoints
from circuitray.finetune.manifest import FORMAT as MANIFEST_FORMAT
from circuitray.finetune.manifest import read_manifest
from circuitray.finetune.schedule import geometric_steps
from circuitray.finetune.train_lm import TrainingLog, train_lm
from circuitray.models.builders.artifacts import (
    CrossLayerTranscoderWeights,
    TranscoderWeights,
    save_cross_layer_transcoder,
    save_hf_model,
    save_transcoder_set,
)
from circuitray.models.builders.clt import clt_metrics, fit_cross_layer_transcoder
from circuitray.models.builders.hooks import record_mlp_io
from circuitray.models.builders.stamp import build_key, tree_sha256, unchanged
from circuitray.models.builders.tiny import tiny_gemma2_config
from circuitray.models.builders.tokenizer import build_tokenizer
from circuitray.models.builders.train_transcoders import (
    TranscoderTrainingConfig,
    metrics,
    train_transcoder,
)
from circuitray.models.registry import BUNDLED, circuitray_home, transcoder_cache_dir
from circuitray.organism.corpus import constraint_rows, filler_sentence
from circuitray.organism.evaluate import (
    acceptance,
    constraint_accuracy,
    graph_scores,
)
from circuitray.prompts.ws2 import VOCABULARY, generate_ws2

logger = logging.getLogger(__name__)

REPORT_NAME = "organism-report.json"


@dataclass(frozen=True)
class OrganismConfig:
    """How the organism is built; the defaults are what ``make setup`` builds.

    Attributes:
        seed: Seeds weights, data order and corpora.
        threads: torch threads (part of what makes weights bit-identical).
        n_layers: Transformer layers.
        d_model: Residual width.
        d_mlp: MLP width.
        n_filler: Filler sentences for the base stage.
        base_steps: Base-stage training steps (a fixed cosine schedule).
        base_lr: Base-stage peak learning rate.
        tuned_max_steps: Cap on fine-tuning steps, the final anneal included.
        tuned_lr: Fine-tuning learning rate (constant until the train split is learned).
        tuned_warmup: Fine-tuning warm-up steps.
        tuned_check_every: Steps between checks of train-split accuracy.
        tuned_patience: Consecutive checks at the target that count as learned.
        tuned_anneal_steps: Steps of cosine decay (to 0.1 x ``tuned_lr``) once learned.
        train_accuracy_target: Candidate top-1 accuracy on the train wordings that every
            constraint type must reach to count as learned.
        batch_size: Sentences per step.
        transcoders: Transcoder training settings.
        n_transcoder_texts: Sentences whose base activations train the transcoders.
        clt_ridge: Ridge of the cross-layer transcoder's decoder fit
            (:func:`circuitray.models.builders.clt.fit_cross_layer_transcoder`).
        n_graph_samples: Held-out prompts attributed for replacement scores (per type).
        first_checkpoint: The first fine-tuning step saved after step 0.
        checkpoint_ratio: Each later checkpoint step is this times the one before
            (rounded; sqrt 2: 8, 11, 16, 23, 32, ...); the last step is saved too.
    """

    seed: int = 0
    threads: int = 2
    n_layers: int = 4
    d_model: int = 64
    d_mlp: int = 256
    n_filler: int = 20000
    base_steps: int = 600
    base_lr: float = 3e-3
    tuned_max_steps: int = 2000
    tuned_lr: float = 2e-3
    tuned_warmup: int = 25
    tuned_check_every: int = 25
    tuned_patience: int = 2
    tuned_anneal_steps: int = 150
    train_accuracy_target: float = 1.0
    batch_size: int = 64
    transcoders: TranscoderTrainingConfig = field(
        default_factory=lambda: TranscoderTrainingConfig(l1=1e-2)
    )
    n_transcoder_texts: int = 4000
    clt_ridge: float = 1.0
    n_graph_samples: int = 6
    first_checkpoint: int = 8
    checkpoint_ratio: float = 2**0.5

    def __post_init__(self) -> None:
        positive = [
            "threads", "n_layers", "d_model", "d_mlp", "n_filler", "base_steps",
            "tuned_max_steps", "tuned_warmup", "tuned_check_every", "tuned_patience",
            "batch_size", "n_transcoder_texts", "n_graph_samples", "first_checkpoint",
        ]  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("base_lr", "tuned_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.tuned_anneal_steps < self.tuned_max_steps:
            raise ValueError("tuned_anneal_steps must be >= 0 and below tuned_max_steps")
        if not 0 < self.train_accuracy_target <= 1:
            raise ValueError("train_accuracy_target must be in (0, 1]")
        if not self.checkpoint_ratio > 1:
            raise ValueError("checkpoint_ratio must be > 1")
        if self.clt_ridge < 0:
            raise ValueError("clt_ridge must be >= 0")

    def with_seed(self, seed: int, *, threads: int | None = None) -> OrganismConfig:
        return replace(self, seed=seed, threads=threads or self.threads)

    @classmethod
    def from_dict(cls, values: dict) -> OrganismConfig:
        """A config from (a subset of) its fields, as a YAML/JSON file gives them:
        ``transcoders`` is a mapping; numbers are checked against each field's type
        (YAML reads ``2e-3`` as a string, which becomes a float here)."""
        defaults = cls()
        values = {k: _typed(k, v, getattr(defaults, k, None)) for k, v in _known(cls, values)}
        if "transcoders" in values:
            tc = values["transcoders"]
            if not isinstance(tc, dict):
                raise ValueError(f"transcoders: expected a mapping, got {tc!r}")
            base = defaults.transcoders
            values["transcoders"] = replace(
                base, **{k: _typed(f"transcoders.{k}", v, getattr(base, k)) for k, v in
                         _known(TranscoderTrainingConfig, tc, prefix="transcoders ")}
            )  # fmt: skip
        return replace(defaults, **values)


def _known(cls, values: dict, *, prefix: str = "") -> list[tuple[str, object]]:
    names = {f.name for f in fields(cls)}
    unknown = sorted(str(k) for k in set(values) - names)
    if unknown:
        what = f"{prefix}field(s)" if prefix else "organism config field(s)"
        raise ValueError(f"unknown {what}: {', '.join(unknown)}")
    return list(values.items())


def _typed(name: str, value, default):
    """``value`` as the type of the field's default (int or float), else unchanged."""
    if isinstance(default, bool) or not isinstance(default, int | float):
        return value
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if isinstance(default, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected a number, got {value!r}") from None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"{name}: expected an integer, got {value!r}")


# What decides the organism's bytes besides its config (circuitray.models.builders.stamp).
BUILD_MODULES = (
    "circuitray.organism",
    # Ray Train and the CLI's fine-tune are not part of the organism's bytes.
    "circuitray.finetune.data",
    "circuitray.finetune.evaluate",
    "circuitray.finetune.local",
    "circuitray.finetune.lora",
    "circuitray.finetune.manifest",
    "circuitray.finetune.schedule",
    "circuitray.finetune.train_lm",
    "circuitray.models.builders.artifacts",
    "circuitray.models.builders.clt",
    "circuitray.models.builders.hooks",
    "circuitray.models.loading",
    "circuitray.models.registry",
    "circuitray.models.builders.tiny",
    "circuitray.models.builders.tokenizer",
    "circuitray.models.builders.train_transcoders",
    "circuitray.prompts.ws2",
)


def organism_build_key(config: OrganismConfig) -> str:
    """The build key of ``config`` with this checkout's code and this torch."""
    return build_key(asdict(config), modules=BUILD_MODULES)


def _artifact_dirs() -> dict[str, Path]:
    """Where each artifact of the organism lives under the current home."""
    home, tc_cache = circuitray_home(), transcoder_cache_dir()
    bundled = BUNDLED["organism-tuned"]
    return {
        "organism-base": home / BUNDLED["organism-base"].subdir,
        "organism-tuned": home / bundled.subdir,
        "organism-finetune": home / "models" / "organism-finetune",
        "transcoders": tc_cache / bundled.transcoders,
        "cross_layer_transcoders": tc_cache / bundled.cross_layer_transcoders,
    }


def report_path() -> Path:
    return circuitray_home() / "models" / REPORT_NAME


def reusable_report(config: OrganismConfig) -> dict | None:
    """The saved report if it is of a complete build of ``config`` whose
    artifacts are unchanged on disk (step 0 of the module docstring), else None. A
    failed build is reused too: the same inputs would fail the same way again."""
    try:
        report = json.loads(report_path().read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or report.get("build", {}).get("key") != organism_build_key(
        config
    ):
        return None
    if not unchanged(report.get("artifacts", {}).get("sha256", {}), _artifact_dirs()):
        return None
    return report


def _write_report(report: dict) -> Path:
    out = report_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out)
    return out


def build_organism(config: OrganismConfig | None = None, *, force: bool = False) -> dict:
    """Build, save and evaluate the organism; returns the report (also saved).

    Args:
        config: The recipe (default: :class:`OrganismConfig`'s defaults).
        force: Rebuild even if the saved build is reusable (step 0).
    """
    config = config or OrganismConfig()
    if not force:
        report = reusable_report(config)
        if report is not None:
            logger.info("organism up to date (build key %s): reused", report["build"]["key"][:12])
            paths = {name: str(d) for name, d in _artifact_dirs().items()}
            return {**report, "artifacts": {**report["artifacts"], **paths}, "reused": True}
    threads_before = torch.get_num_threads()
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    try:
        return {**_build(config), "reused": False}
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(deterministic_before)


def _build(config: OrganismConfig) -> dict:
    """Steps 1-6 of the module docstring (0 is :func:`build_organism`'s)."""
    t_start = time.perf_counter()
    key = organism_build_key(config)
    torch.manual_seed(config.seed)  # step 1, with build_organism's threads
    timings: dict[str, float] = {}
    tokenizer = build_tokenizer(VOCABULARY)
    base, filler = _train_base(config, tokenizer, timings)
    texts = _texts(config, filler)
    with _timed(timings, "train_transcoders_s"):
        x, y = record_mlp_io(base.model, tokenizer, texts.tc_texts)
        layers = _train_transcoders(config, x, y)
    with _timed(timings, "fit_cross_layer_transcoder_s"):
        clt = fit_cross_layer_transcoder(x, y, layers, ridge=config.clt_ridge)
        del x, y
    dictionaries = _Dictionaries(layers, clt)
    folders = _save_base(base.model, tokenizer, dictionaries)
    with _timed(timings, "train_tuned_s"):
        tuned = _train_tuned(config, base.model, tokenizer, texts, folders)
        tuned_dir = save_hf_model(tuned.model, tokenizer, folders.dirs["organism-tuned"])
        folders = replace(folders, tuned=tuned_dir)
    with _timed(timings, "evaluate_s"):
        report = _report(config, tokenizer, texts, base, tuned, dictionaries, folders)
    timings["total_s"] = time.perf_counter() - t_start
    report["timings"] = timings
    report["artifacts"] = _artifacts(folders)
    report["build"] = {
        "key": key,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
    }
    report["acceptance"] = acceptance(report)
    report["passed"] = all(report["acceptance"].values())
    out = _write_report(report)
    logger.info("organism built in %.1fs; report %s", timings["total_s"], out)
    return report


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Record the seconds the block took as ``timings[name]``."""
    t = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t


@dataclass(frozen=True)
class _Stage:
    """A trained model and what its training did (steps 2 and 5)."""

    model: Gemma2ForCausalLM
    log: TrainingLog


@dataclass(frozen=True)
class _Texts:
    """The build's sentences.

    Attributes:
        filler: Step 2's filler text.
        mix: Step 5's training text: the train split's constraint sentences and half
            as many filler sentences.
        check_rows: Every distinct train wording, once: what "the train split is
            learned" means (step 5).
        heldout_rows: The held-out wordings (steps 5-6).
        tc_texts: The sentences whose base activations train the transcoders (step 3).
        val_texts: Filler and held-out sentences the report's transcoder fit is
            measured on (step 6).
    """

    filler: list[str]
    mix: list[str]
    check_rows: list[dict]
    heldout_rows: list[dict]
    tc_texts: list[str]
    val_texts: list[str]


@dataclass(frozen=True)
class _Dictionaries:
    """Steps 3-4's per-layer transcoders and cross-layer transcoder."""

    layers: dict[int, TranscoderWeights]
    clt: CrossLayerTranscoderWeights


@dataclass(frozen=True)
class _Folders:
    """Where steps 4-5 saved each artifact (the keys of :func:`_artifact_dirs`)."""

    dirs: dict[str, Path]
    base: Path
    transcoders: Path
    cross_layer_transcoders: Path
    tuned: Path | None = None


def _train_base(
    config: OrganismConfig, tokenizer: PreTrainedTokenizerBase, timings: dict[str, float]
) -> tuple[_Stage, list[str]]:
    """Step 2: a tiny Gemma-2 trained from scratch on filler text; and the filler."""
    model_config = tiny_gemma2_config(
        vocab_size=len(tokenizer),
        n_layers=config.n_layers,
        d_model=config.d_model,
        d_mlp=config.d_mlp,
    )
    base = Gemma2ForCausalLM(model_config)
    rng = random.Random(config.seed)
    filler = [filler_sentence(rng) for _ in range(config.n_filler)]
    with _timed(timings, "train_base_s"):
        log = train_lm(
            base,
            tokenizer,
            filler,
            steps=config.base_steps,
            batch_size=config.batch_size,
            lr=config.base_lr,
            seed=config.seed,
        )
    return _Stage(base, log), filler


def _texts(config: OrganismConfig, filler: list[str]) -> _Texts:
    """The sentences of steps 3-6 (see :class:`_Texts`)."""
    train_rows = constraint_rows(seed=config.seed, split="train")
    train_texts = [completed(r) for r in train_rows]
    heldout_rows = [
        r for r in generate_ws2(n=3000, seed=config.seed + 7) if r["split"] == "heldout"
    ]
    n_half = config.n_transcoder_texts // 2
    val_rng = random.Random(config.seed + 99)
    val_texts = [filler_sentence(val_rng) for _ in range(400)] + [
        f"{r['prompt']} {r['target']} ." for r in heldout_rows[:400]
    ]
    return _Texts(
        filler=filler,
        mix=train_texts + filler[: len(train_texts) // 2],
        check_rows=list({r["prompt"]: r for r in train_rows}.values()),
        heldout_rows=heldout_rows,
        tc_texts=filler[-n_half:] + train_texts[:n_half],
        val_texts=val_texts,
    )


def _train_transcoders(
    config: OrganismConfig, x: dict[int, torch.Tensor], y: dict[int, torch.Tensor]
) -> dict[int, TranscoderWeights]:
    """Step 3: one JumpReLU transcoder per layer on the base's MLP inputs/outputs."""
    return {
        layer: train_transcoder(
            x[layer], y[layer], config=config.transcoders, seed=config.seed * 1000 + layer
        )
        for layer in range(config.n_layers)
    }


def _save_base(
    base: Gemma2ForCausalLM, tokenizer: PreTrainedTokenizerBase, dictionaries: _Dictionaries
) -> _Folders:
    """Step 4's folders: ``models/organism-base``, the transcoder set and the CLT."""
    dirs = _artifact_dirs()
    bundled = BUNDLED["organism-tuned"]
    return _Folders(
        dirs=dirs,
        base=save_hf_model(base, tokenizer, dirs["organism-base"]),
        transcoders=save_transcoder_set(
            dictionaries.layers,
            dirs["transcoders"],
            scan=bundled.transcoders,
            model_name="organism-base",
        ),
        cross_layer_transcoders=save_cross_layer_transcoder(
            dictionaries.clt,
            dirs["cross_layer_transcoders"],
            scan=bundled.cross_layer_transcoders,
            model_name="organism-base",
        ),
    )


def _train_tuned(
    config: OrganismConfig,
    base: Gemma2ForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    texts: _Texts,
    folders: _Folders,
) -> _Stage:
    """Step 5: a copy of base fine-tuned with checkpoints until the train split is
    learned (saved to ``models/organism-finetune``)."""
    tuned = copy.deepcopy(base)

    def train_split_learned(model) -> bool:
        acc = constraint_accuracy(model, tokenizer, texts.check_rows)
        return all(a["accuracy"] >= config.train_accuracy_target for a in acc.values())

    # The base -> tuned stage is one fine-tune with checkpoints (circuitray.finetune):
    # log-spaced steps from 0 (the base itself) until the train split is learned.
    ft_dir = folders.dirs["organism-finetune"]
    shutil.rmtree(ft_dir, ignore_errors=True)
    tc_ref = BUNDLED["organism-tuned"].transcoders
    log = train_with_checkpoints(
        tuned,
        tokenizer,
        texts.mix,
        out=ft_dir,
        manifest=_tuned_manifest(config, texts),
        save_steps=geometric_steps(
            first=config.first_checkpoint, cap=config.tuned_max_steps, ratio=config.checkpoint_ratio
        ),
        base_path=os.path.relpath(folders.base, ft_dir),
        heldout_rows=texts.heldout_rows,
        transcoders=load_transcoders(tc_ref, cache_dir=str(transcoder_cache_dir())),
        examples_per_step=config.batch_size,
        steps=config.tuned_max_steps,
        batch_size=config.batch_size,
        lr=config.tuned_lr,
        seed=config.seed + 1,
        warmup=config.tuned_warmup,
        until=train_split_learned,
        check_every=config.tuned_check_every,
        patience=config.tuned_patience,
        anneal_steps=config.tuned_anneal_steps,
    )
    return _Stage(tuned, log)


def _tuned_manifest(config: OrganismConfig, texts: _Texts) -> dict:
    """Step 5's fine-tune manifest (its ``checkpoints`` are filled in as it trains)."""
    return {
        "format": MANIFEST_FORMAT,
        "base": "organism-base",
        "transcoders": BUNDLED["organism-tuned"].transcoders,
        "data": {
            "source": "ws2",
            "sha256": sha256_of(texts.mix),
            "n_train": len(texts.mix),
            "mix": "train split sentences + half as many filler sentences",
            "heldout": texts.heldout_rows,
        },
        "config": asdict(config),
        "schedule": (
            f"geometric from step {config.first_checkpoint}, ratio "
            f"{config.checkpoint_ratio:.4g}, and the last step"
        ),
    }


def _report(
    config: OrganismConfig,
    tokenizer: PreTrainedTokenizerBase,
    texts: _Texts,
    base: _Stage,
    tuned: _Stage,
    dictionaries: _Dictionaries,
    folders: _Folders,
) -> dict:
    """Step 6's figures (:mod:`circuitray.organism.evaluate`), before timings,
    artifacts, build and acceptance."""
    xb, yb = record_mlp_io(base.model, tokenizer, texts.val_texts)
    xt, yt = record_mlp_io(tuned.model, tokenizer, texts.val_texts)
    heldout, layers, clt = texts.heldout_rows, dictionaries.layers, dictionaries.clt
    sample = []
    for name in sorted({r["constraint_type"] for r in heldout}):
        sample += [r for r in heldout if r["constraint_type"] == name][: config.n_graph_samples]
    return {
        "config": asdict(config),
        "accuracy": {
            "split": "heldout",
            "base": constraint_accuracy(base.model, tokenizer, heldout),
            "tuned": constraint_accuracy(tuned.model, tokenizer, heldout),
        },
        "transcoders": {
            "d_transcoder": config.transcoders.d_transcoder,
            "base": {str(i): metrics(w, xb[i], yb[i]) for i, w in layers.items()},
            "tuned": {str(i): metrics(w, xt[i], yt[i]) for i, w in layers.items()},
        },
        "cross_layer_transcoders": {
            "d_transcoder": config.transcoders.d_transcoder,
            "ridge": config.clt_ridge,
            "base": clt_metrics(clt, xb, yb),
            "tuned": clt_metrics(clt, xt, yt),
        },
        "graphs": {
            "sample": [r["prompt_id"] for r in sample],
            "base": graph_scores("organism-base", sample),
            "tuned": graph_scores("organism-tuned", sample),
        },
        "training": {
            "base_final_loss": base.log.final_loss(),
            "tuned_final_loss": tuned.log.final_loss(),
            "tuned_steps": tuned.log.steps,
            "tuned_learned_at": tuned.log.learned_at,
            "tuned_capped": tuned.log.capped,
            "checkpoints": len(read_manifest(folders.dirs["organism-finetune"])["checkpoints"]),
            "tuned_train_accuracy": {
                k: v["accuracy"]
                for k, v in constraint_accuracy(tuned.model, tokenizer, texts.check_rows).items()
            },
        },
    }


def _artifacts(folders: _Folders) -> dict:
    """Step 6's record of the artifacts: their folders, digests and size."""
    assert folders.tuned is not None
    ft_dir = folders.dirs["organism-finetune"]
    saved = (folders.base, folders.tuned, folders.transcoders, folders.cross_layer_transcoders)
    return {
        "organism-base": str(folders.base),
        "organism-tuned": str(folders.tuned),
        "transcoders": str(folders.transcoders),
        "cross_layer_transcoders": str(folders.cross_layer_transcoders),
        "organism-finetune": str(ft_dir),
        "sha256": {name: tree_sha256(d) for name, d in folders.dirs.items()},
        "bytes": sum(
            f.stat().st_size for d in (*saved, ft_dir) for f in d.rglob("*") if f.is_file()
        ),
    }
