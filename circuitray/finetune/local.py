"""One fine-tune on one device, saving K checkpoints and ``finetune.json``.

1. Resolve the base model and its transcoders as ``circuitray run`` does
   (:class:`circuitray.models.loading.ModelSpec`), load the base as a plain HF causal
   LM, and read the data (:mod:`circuitray.finetune.data`).
2. With ``method: lora``, wrap the model in peft adapters (:mod:`circuitray.finetune.lora`).
3. Evaluate the base as checkpoint 0 (:mod:`circuitray.finetune.evaluate`); its path
   is the base model's own folder, nothing is copied.
4. Train with :func:`circuitray.finetune.train_lm.train_lm` (AdamW, warm-up then
   cosine, a seeded batch generator); at every step of the schedule
   (:mod:`circuitray.finetune.schedule`) and at the last step, save the weights
   (adapters merged) as an HF folder ``step-NNNNNN`` with the tokenizer, evaluate
   them, and rewrite the manifest (:mod:`circuitray.finetune.manifest`).

:func:`train_with_checkpoints` is steps 3-4 for a model already in memory: the
organism's base -> tuned stage calls it with its own texts and stopping rule.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from circuitray.errors import CircuitrayError
from circuitray.finetune.config import FinetuneConfig
from circuitray.finetune.data import TrainingData, completed, load_data
from circuitray.finetune.evaluate import constraint_accuracy, load_transcoders, transcoder_fit
from circuitray.finetune.lora import add_lora, merged_copy
from circuitray.finetune.manifest import FORMAT, MANIFEST, read_manifest, write_manifest
from circuitray.finetune.schedule import checkpoint_steps
from circuitray.finetune.train_lm import TrainingLog, train_lm
from circuitray.models.builders.artifacts import save_hf_model
from circuitray.models.loading import ModelSpec, check_model_available

logger = logging.getLogger(__name__)

__all__ = ["checkpoint_name", "evaluate_model", "finetune", "train_with_checkpoints"]


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def base_reference(model_path: str) -> str:
    """Step 0's path: a local base folder, absolute; else the hub id as given."""
    local = Path(model_path).expanduser()
    return str(local.resolve()) if local.exists() else model_path


def manifest_header(config: dict, refs: dict, data: TrainingData, device: str) -> dict:
    """What ``finetune.json`` says before its checkpoints: base, transcoders, data and
    every hyper-parameter (``config``: a FinetuneConfig as a dict)."""
    return {
        "format": FORMAT,
        "base": refs["model_path"],
        "transcoders": refs["transcoders"],
        "transcoder_cache_dir": refs["transcoder_cache_dir"],
        "data": {
            "source": config["data"],
            "sha256": data.sha256,
            "n_train": len(data.texts),
            "heldout": data.heldout_rows,
        },
        "config": config,
        "device": device,
    }


def evaluate_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    heldout_rows: list[dict],
    transcoders=None,
) -> dict:
    """Held-out accuracy and target probability per type, and the transcoder fit per
    layer on the held-out sentences (None without transcoders)."""
    was_training = model.training
    model.eval()
    try:
        out: dict[str, object] = {"heldout": constraint_accuracy(model, tokenizer, heldout_rows)}
        texts = [completed(r) for r in heldout_rows]
        out["transcoder_fit"] = (
            transcoder_fit(model, tokenizer, texts, transcoders)
            if transcoders is not None and texts
            else None
        )
    finally:
        model.train(was_training)
    return out


def checkpoint_entry(
    step: int,
    path: str,
    *,
    examples_seen: int,
    train_loss: float | None,
    merged: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    heldout_rows: list[dict],
    transcoders,
    started: float,
) -> dict:
    """One checkpoint's manifest entry, ``merged`` evaluated (:func:`evaluate_model`):
    the model as saved, whose MLPs sit at the hook points the transcoder fit reads (a
    peft wrapper hides them). ``started``: when saving began (``save_s``)."""
    entry = {
        "step": step,
        "path": path,
        "examples_seen": examples_seen,
        "train_loss": train_loss,
        **evaluate_model(merged, tokenizer, heldout_rows=heldout_rows, transcoders=transcoders),
        "save_s": round(time.perf_counter() - started, 3),
    }
    accuracy = {k: round(v["accuracy"], 3) for k, v in entry["heldout"].items()}
    logger.info("checkpoint step %d: held-out accuracy %s", step, accuracy)
    return entry


def train_with_checkpoints(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    *,
    out: Path,
    manifest: dict,
    save_steps: list[int],
    base_path: str,
    heldout_rows: list[dict],
    transcoders=None,
    examples_per_step: int,
    save: Callable[[PreTrainedModel, Path], None] | None = None,
    **train_args,
) -> TrainingLog:
    """Train ``model`` in place (``train_args`` go to ``train_lm``), saving and
    evaluating a checkpoint at every step of ``save_steps`` and at the last step, and
    writing ``manifest`` (its ``checkpoints`` filled in) after each.

    Args:
        save: How a checkpoint's merged model is written (default: with the tokenizer
            as an HF folder).
    """
    out = Path(out)
    manifest = {**manifest, "checkpoints": []}
    wanted = set(save_steps)
    last_loss_at = 0

    def record(step: int, path: str, log: TrainingLog | None, t: float, merged) -> None:
        nonlocal last_loss_at
        losses = log.losses[last_loss_at:step] if log else []
        last_loss_at = step
        manifest["checkpoints"].append(
            checkpoint_entry(
                step,
                path,
                examples_seen=step * examples_per_step,
                train_loss=sum(losses) / len(losses) if losses else None,
                merged=merged,
                tokenizer=tokenizer,
                heldout_rows=heldout_rows,
                transcoders=transcoders,
                started=t,
            )
        )
        write_manifest(out, manifest)

    def checkpoint(step: int, log: TrainingLog) -> None:
        t = time.perf_counter()
        name = checkpoint_name(step)
        merged = merged_copy(model)
        if save is not None:
            save(merged, out / name)
        else:
            save_hf_model(merged, tokenizer, out / name)
        record(step, name, log, t, merged)

    if 0 in wanted:
        record(0, base_path, None, time.perf_counter(), merged_copy(model))
        if not Path(base_path).is_absolute() and not (out / base_path).exists():
            manifest["checkpoints"][0]["hub"] = True  # a hub id: no folder to point at
            write_manifest(out, manifest)

    def on_step(step: int, log: TrainingLog, state) -> None:
        if step in wanted:
            checkpoint(step, log)

    log = train_lm(model, tokenizer, texts, on_step=on_step, **train_args)
    if log.steps not in wanted:
        checkpoint(log.steps, log)
    return log


def load_trainable(config: FinetuneConfig, model_path: str, *, device=None):
    """(model, tokenizer) to fine-tune: the base in float32 (on ``device`` when given,
    before adapters are made, so they are initialised there), with ``config``'s LoRA
    adapters for ``method: lora``; ``torch.manual_seed(config.seed)`` first."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    torch.manual_seed(config.seed)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if device is not None:
        model.to(device)  # type: ignore[arg-type]
    if config.method == "lora":
        model = add_lora(
            model,
            r=config.lora_r,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
            targets=config.lora_targets,
        )
    return model, tokenizer


def _check_out(config: FinetuneConfig) -> None:
    """Refuse an output folder that holds another fine-tune (same config: redone)."""
    if not (Path(config.out) / MANIFEST).exists():
        return
    old = read_manifest(config.out)
    if old.get("config") != json.loads(json.dumps(asdict(config))):
        raise CircuitrayError(
            f"{config.out}: holds another fine-tune (its finetune.json config differs); "
            "use a new folder"
        )


def finetune(config: FinetuneConfig) -> dict:
    """Run the fine-tune described by ``config`` (module docstring); returns the
    manifest, also written to ``<out>/finetune.json``."""

    spec = ModelSpec(model=config.base, transcoders=config.transcoders)
    check_model_available(spec)
    refs = spec.resolved()
    data = load_data(config)
    _check_out(config)
    threads_before = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, tokenizer = load_trainable(config, refs["model_path"], device=device)
        transcoders = load_transcoders(
            refs["transcoders"], cache_dir=refs["transcoder_cache_dir"], device=str(device)
        )
        manifest = manifest_header(asdict(config), refs, data, str(device))
        steps = checkpoint_steps(
            steps=config.steps,
            k=config.checkpoints,
            first=config.first_checkpoint,
            spacing=config.spacing,
        )
        train_with_checkpoints(
            model,
            tokenizer,
            data.texts,
            out=Path(config.out),
            manifest=manifest,
            save_steps=steps,
            base_path=base_reference(refs["model_path"]),
            heldout_rows=data.heldout_rows,
            transcoders=transcoders,
            examples_per_step=config.batch_size,
            steps=config.steps,
            batch_size=config.batch_size,
            lr=config.lr,
            seed=config.seed,
            max_len=config.max_len,
            weight_decay=config.weight_decay,
            warmup=config.warmup,
        )
    finally:
        torch.set_num_threads(threads_before)
    return read_manifest(config.out)
