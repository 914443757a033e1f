"""One fine-tune as a Ray Train job (``TorchTrainer``), resumable from its last checkpoint.

The same fine-tune as :func:`circuitray.finetune.local.finetune`, with the same
``<out>/finetune.json`` and ``<out>/step-NNNNNN`` folders, trained data-parallel:

1. The driver resolves the base model and transcoders as ``circuitray run`` does
   (:class:`~circuitray.models.loading.ModelSpec`) and reads the data once, so a bad
   reference fails in one line before Ray starts. It locks ``<out>`` (``flock`` on
   ``<out>/.ray_train.lock``: one driver per fine-tune, any number side by side on
   other folders) and writes a fresh fence token to ``<out>/.ray_train.owner``.
2. Each of ``workers`` Ray Train workers loads the base and the data, adds the LoRA
   adapters (``method: lora``, same seed on every worker) and is wrapped in DDP by
   ``ray.train.torch.prepare_model`` (gloo on CPU, NCCL on GPU). Worker ``r`` draws its
   own batches (``seed + r``): a step sees ``batch_size x workers`` sentences.
3. At each checkpoint step every worker averages its loss since the last checkpoint
   with the others'; rank 0 checks the fence, saves the merged HF folder atomically,
   evaluates it (:func:`~circuitray.finetune.local.evaluate_model`) and rewrites the
   manifest; then every worker reports one Ray checkpoint (staged in a folder of its
   own under ``<out>/.ray_train.staging``, never the machine's temp folder, so a killed
   worker leaves nothing outside ``out``; the driver empties it before and after
   ``fit``; the files of all workers merge into one folder
   ``step-NNNNNN`` under ``<storage_path>/<name>``): rank 0's ``weights.pt``
   (the full state dict, or with LoRA the adapter weights only) and ``trainer.pt``
   (``train_lm``'s state: step, optimizer, schedule position; and the config), and
   each rank's ``rank-R.pt`` (its batch generator and its loss log).
4. Resume: Ray Train (V2, Ray's default) restores a run by ``storage_path`` and
   ``name``; ``TorchTrainer.restore`` / ``can_restore`` / ``resume_from_checkpoint``
   are deprecated there and raise. After a worker failure (``max_failures``) the new
   worker group, and after a killed driver the next ``finetune_on_ray`` call with the
   same ``storage_path`` and ``name``, get the last reported checkpoint from
   ``ray.train.get_checkpoint()``: the weights are loaded, ``train_lm(resume=...)``
   goes on from that step with the same batches and rates, and rank 0 keeps the
   manifest's entries up to that step (later ones are trained again) and appends the
   step to its ``resumed_from``. A finished run, run again, trains nothing.

A checkpoint counts once Ray Train's controller has registered it, at its next poll of
the workers (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``, 2 s by default): a driver killed
just after a checkpoint was written resumes from the one before, and the manifest
entries after that are trained and written again.

The fence: a driver killed mid-run can leave its workers running for a moment; its
rank 0 stops before its next write once the successor has written its own token. On a
multi-node cluster ``out`` (written by rank 0, wherever it runs, and read by the
driver) and ``storage_path`` must be shared by every node; the driver's lock is an
``flock``, which holds between drivers on one machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from circuitray.errors import CircuitrayError, RunDirError
from circuitray.finetune.config import FinetuneConfig
from circuitray.finetune.manifest import MANIFEST, write_manifest

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from circuitray.finetune.data import TrainingData
    from circuitray.finetune.train_lm import TrainingLog

logger = logging.getLogger(__name__)

__all__ = ["finetune_on_ray"]

LOCK = ".ray_train.lock"
OWNER = ".ray_train.owner"
# Where each rank writes the files of one Ray checkpoint before reporting it.
STAGING = ".ray_train.staging"
DEFAULT_NAME = "finetune"


def _is_uri(path: str) -> bool:
    return "://" in path


def _jsonable(config: FinetuneConfig) -> dict:
    """``asdict(config)`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(asdict(config)))


def _config_from(fields: dict) -> FinetuneConfig:
    return FinetuneConfig(**{**fields, "lora_targets": tuple(fields["lora_targets"])})


@contextlib.contextmanager
def _locked(out: Path):
    """Hold ``<out>/.ray_train.lock`` (released by the OS if this process dies)."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise RunDirError(
                f"{out}: another fine-tune driver (pid {holder}) is running on this folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _check_same_finetune(out: Path, config: FinetuneConfig, ray_train: dict) -> None:
    """Refuse an ``out`` that holds a different fine-tune's manifest, or this Ray Train
    run resumed with another number of workers (each has its own batch stream)."""
    file = out / MANIFEST
    if not file.exists():
        return
    try:
        manifest = json.loads(file.read_text())
        old, old_ray = manifest.get("config"), manifest.get("ray_train") or {}
    except (OSError, ValueError, AttributeError):
        raise RunDirError(f"{file}: exists and is not a fine-tune manifest") from None
    same_run = all(old_ray.get(k) == ray_train[k] for k in ("storage_path", "name"))
    if same_run and old_ray.get("workers") != ray_train["workers"]:
        raise RunDirError(
            f"{out}: Ray Train run {ray_train['name']!r} was started with "
            f"{old_ray.get('workers')} workers; resume it with as many"
        )
    mine = _jsonable(config)
    if old != mine:
        differ = sorted(k for k in mine if not isinstance(old, dict) or old.get(k) != mine[k])
        raise RunDirError(
            f"{out}: holds another fine-tune (config differs in {', '.join(differ) or 'keys'}); "
            "choose another out folder"
        )


def _failure_line(error: Exception) -> str:
    """The last line of the first worker's error (its exception type and message)."""
    failures = getattr(error, "worker_failures", None) or {}
    source = failures[min(failures)] if failures else error
    lines = [line.strip() for line in str(source).splitlines() if line.strip()]
    return lines[-1] if lines else type(source).__name__


def finetune_on_ray(
    config: FinetuneConfig,
    *,
    workers: int = 2,
    use_gpu: bool = False,
    address: str | None = None,
    storage_path: str | None = None,
    name: str | None = None,
    max_failures: int = 3,
) -> dict:
    """Run the fine-tune described by ``config`` as a Ray Train job (module docstring);
    returns the manifest, also written to ``<out>/finetune.json``.

    Args:
        workers: Ray Train workers (DDP ranks); each trains on ``batch_size`` sentences
            per step.
        use_gpu: One GPU per worker (NCCL); else CPU workers (gloo).
        address: Ray cluster to join (default: the Ray this process is connected to,
            else ``$RAY_ADDRESS``, else a new local one, shut down at the end).
        storage_path: Where Ray Train keeps its checkpoints (a folder or a URI every
            node reaches; default ``<out>/.ray_train``).
        name: The Ray Train run's name under ``storage_path`` (default ``finetune``);
            a later call with the same ``storage_path`` and ``name`` resumes it.
        max_failures: Worker-group failures retried from the last checkpoint.
    """
    from circuitray.cluster import connect
    from circuitray.finetune.manifest import read_manifest

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if max_failures < 0:
        raise ValueError(f"max_failures must be >= 0, got {max_failures}")
    job = _resolve(config, workers=workers, use_gpu=use_gpu, storage_path=storage_path, name=name)

    import ray
    import ray.train.torch  # Ray Train's modules load before Ray starts

    with _locked(job.out):
        _check_same_finetune(job.out, job.config, job.ray_train)  # under the lock: no race
        token = _take_over(job.out)
        started = connect(address, local_cpus=max(os.cpu_count() or 1, workers))
        try:
            _fit(job, token, use_gpu=use_gpu, max_failures=max_failures)
        finally:
            if started:
                ray.shutdown()
    return read_manifest(job.out)


@dataclass(frozen=True)
class _Job:
    """What the driver resolved (module docstring, step 1).

    Attributes:
        config: The fine-tune, its ``out`` made absolute.
        out: That folder.
        refs: The base model's and transcoders' references (``ModelSpec.resolved``).
        ray_train: The Ray Train run (``workers``, ``storage_path``, ``name``), as the
            manifest records it.
    """

    config: FinetuneConfig
    out: Path
    refs: dict
    ray_train: dict


def _resolve(
    config: FinetuneConfig,
    *,
    workers: int,
    use_gpu: bool,
    storage_path: str | None,
    name: str | None,
) -> _Job:
    """Step 1 before the lock: check the device, resolve the base and transcoders and
    read the data once, so a bad reference fails in one line before Ray starts."""
    from circuitray.finetune.data import load_data
    from circuitray.models.loading import ModelSpec, check_model_available

    wanted_device = "cuda" if use_gpu else "cpu"
    if config.device is not None and config.device != wanted_device:
        raise CircuitrayError(
            f"device {config.device!r}: Ray Train workers use "
            f"{'GPUs' if use_gpu else 'CPUs'} here (use_gpu={use_gpu})"
        )
    spec = ModelSpec(model=config.base, transcoders=config.transcoders)
    check_model_available(spec)
    refs = spec.resolved()
    if Path(refs["model_path"]).expanduser().exists():
        refs["model_path"] = str(Path(refs["model_path"]).expanduser().resolve())
    out = Path(config.out).expanduser().resolve()
    config = replace(config, out=str(out))
    load_data(config)  # bad data: one line here, not a worker traceback
    storage = storage_path or str(out / ".ray_train")
    if not _is_uri(storage):
        storage = str(Path(storage).expanduser().resolve())
    ray_train = {"workers": workers, "storage_path": storage, "name": name or DEFAULT_NAME}
    return _Job(config=config, out=out, refs=refs, ray_train=ray_train)


def _take_over(out: Path) -> str:
    """Write a fresh fence token to ``<out>/.ray_train.owner`` (atomically); the token."""
    token = uuid.uuid4().hex
    owner = out / OWNER
    tmp = owner.with_name(f"{OWNER}.tmp")
    tmp.write_text(token + "\n")
    os.replace(tmp, owner)
    return token


def _fit(job: _Job, token: str, *, use_gpu: bool, max_failures: int) -> None:
    """Run the Ray Train job (steps 2-4) to its end, with ``out``'s staging folder
    emptied before and after."""
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        RunConfig,
        ScalingConfig,
        TrainingFailedError,
    )
    from ray.train.torch import TorchTrainer

    from circuitray.cluster import forwarded_env

    env = forwarded_env()
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={
            "config": _jsonable(job.config),
            "refs": job.refs,
            "token": token,
            "ray_train": job.ray_train,
        },
        scaling_config=ScalingConfig(num_workers=job.ray_train["workers"], use_gpu=use_gpu),
        run_config=RunConfig(
            name=job.ray_train["name"],
            storage_path=job.ray_train["storage_path"],
            failure_config=FailureConfig(max_failures=max_failures),
            # The last checkpoint is all a resume needs.
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            worker_runtime_env={"env_vars": env} if env else None,
        ),
    )
    # What killed workers of earlier drivers left staged (this driver holds the lock
    # and the fence: they write nothing more).
    shutil.rmtree(job.out / STAGING, ignore_errors=True)
    try:
        trainer.fit()
    except TrainingFailedError as e:
        raise CircuitrayError(f"fine-tune on Ray failed: {_failure_line(e)}") from None
    finally:
        shutil.rmtree(job.out / STAGING, ignore_errors=True)


def _train_loop(loop_config: dict) -> None:
    """One Ray Train worker (module docstring, steps 2-4)."""
    import ray.train
    import ray.train.torch

    from circuitray.finetune.data import load_data
    from circuitray.finetune.local import load_trainable
    from circuitray.finetune.schedule import checkpoint_steps
    from circuitray.finetune.train_lm import train_lm

    config = _config_from(loop_config["config"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = ray.train.torch.get_device()
    data = load_data(config)
    # On the CPU: prepare_model moves it to the worker's device below.
    model, tokenizer = load_trainable(config, loop_config["refs"]["model_path"])
    resume: dict | None = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = _load_checkpoint(model, Path(d), rank=rank, lora=config.method == "lora")
    wrapped = ray.train.torch.prepare_model(model)  # moves ``model`` to ``device`` in place
    steps = checkpoint_steps(
        steps=config.steps,
        k=config.checkpoints,
        first=config.first_checkpoint,
        spacing=config.spacing,
    )
    worker = _Worker(
        loop_config=loop_config,
        config=config,
        rank=rank,
        world=ctx.get_world_size(),
        device=device,
        model=model,
        tokenizer=tokenizer,
        data=data,
        wanted=set(steps),
        last_loss_at=resume["step"] if resume is not None else 0,
    )
    if rank == 0:
        worker.open_manifest(resume)
    train_lm(
        wrapped,  # type: ignore[arg-type]  # DDP forwards the HF call and its output
        tokenizer,
        data.texts,
        steps=config.steps,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed + rank,
        max_len=config.max_len,
        weight_decay=config.weight_decay,
        warmup=config.warmup,
        on_step=worker.on_step,
        resume=resume,
    )


@dataclass
class _Worker:
    """What one Ray Train worker's checkpoint steps need (steps 3-4); rank 0 alone
    holds the transcoders and the manifest.

    Attributes:
        loop_config: What the driver passed (``config`` as JSON, ``refs``, the fence
            ``token``, ``ray_train``).
        wanted: The checkpoint steps.
        last_loss_at: The step up to which losses went into a checkpoint's mean.
    """

    loop_config: dict
    config: FinetuneConfig
    rank: int
    world: int
    device: torch.device
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    data: TrainingData
    wanted: set[int]
    last_loss_at: int
    transcoders: Any = None
    manifest: dict = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    def fence(self) -> None:
        """Stop if another driver has taken ``out`` over (module docstring)."""
        try:
            current = (self.out / OWNER).read_text().strip()
        except FileNotFoundError:
            current = None
        if current != self.loop_config["token"]:
            raise RunDirError(f"{self.out}: another fine-tune driver took over this folder")

    def open_manifest(self, resume: dict | None) -> None:
        """Rank 0: load the transcoders; start the manifest (with step 0 when it is a
        checkpoint), or on resume keep its entries up to the resumed step (step 4)."""
        from circuitray.finetune.evaluate import load_transcoders
        from circuitray.finetune.local import manifest_header

        refs = self.loop_config["refs"]
        self.transcoders = load_transcoders(
            refs["transcoders"], cache_dir=refs["transcoder_cache_dir"], device=str(self.device)
        )
        if resume is not None:
            self._resume_manifest(resume["step"])
            return
        self.manifest = {
            **manifest_header(self.loop_config["config"], refs, self.data, str(self.device)),
            "ray_train": self.loop_config["ray_train"],
            "resumed_from": [],
            "checkpoints": [],
        }
        if 0 in self.wanted:
            self._record_base()

    def _resume_manifest(self, at: int) -> None:
        out = self.out
        try:
            manifest = json.loads((out / MANIFEST).read_text())
        except (OSError, ValueError) as e:
            raise RunDirError(
                f"{out / MANIFEST}: cannot resume the Ray Train run "
                f"({str(e).splitlines()[0]}); remove "
                f"{self.loop_config['ray_train']['storage_path']} to start over"
            ) from None
        manifest["checkpoints"] = [c for c in manifest["checkpoints"] if c["step"] <= at]
        manifest["resumed_from"] = [*manifest.get("resumed_from", []), at]
        manifest["ray_train"] = self.loop_config["ray_train"]
        self.manifest = manifest
        self.fence()
        write_manifest(out, manifest)
        logger.info("resuming the fine-tune from step %d", at)

    def _record_base(self) -> None:
        from circuitray.finetune.local import base_reference
        from circuitray.finetune.lora import merged_copy

        base = base_reference(self.loop_config["refs"]["model_path"])
        t = time.perf_counter()
        self.record(0, base, None, t, merged_copy(self.model))
        if not Path(base).exists():  # a hub id: no folder to point at
            self.manifest["checkpoints"][0]["hub"] = True
            write_manifest(self.out, self.manifest)

    def record(
        self, step: int, path: str, train_loss: float | None, t: float, merged: PreTrainedModel
    ) -> None:
        """Rank 0: evaluate a checkpoint into the manifest and write it (fenced)."""
        from circuitray.finetune.local import checkpoint_entry

        self.manifest["checkpoints"].append(
            checkpoint_entry(
                step,
                path,
                examples_seen=step * self.config.batch_size * self.world,
                train_loss=train_loss,
                merged=merged,
                tokenizer=self.tokenizer,
                heldout_rows=self.data.heldout_rows,
                transcoders=self.transcoders,
                started=t,
            )
        )
        self.fence()
        write_manifest(self.out, self.manifest)

    def mean_loss(self, losses: list[float]) -> float | None:
        """The mean of every worker's mean loss over ``losses``' steps."""
        if not losses:
            return None
        mean = torch.tensor([sum(losses) / len(losses)], dtype=torch.float64, device=self.device)
        if self.world > 1:
            torch.distributed.all_reduce(mean)
            mean /= self.world
        return float(mean.item())

    def on_step(self, step: int, log: TrainingLog, state: Callable[[], dict]) -> None:
        """``train_lm``'s callback: at a checkpoint step, step 3."""
        import ray.train

        from circuitray.finetune.local import checkpoint_name

        if step not in self.wanted:
            return
        t = time.perf_counter()
        train_loss = self.mean_loss(log.losses[self.last_loss_at : step])
        self.last_loss_at = step
        s = state()
        # Inside the run folder, never the machine's temp folder: a worker killed
        # between here and the report leaves it there, and the next driver removes it.
        # A folder of its own, as a killed driver's workers may still be staging.
        (self.out / STAGING).mkdir(exist_ok=True)
        d = Path(tempfile.mkdtemp(dir=self.out / STAGING, prefix=f"rank-{self.rank}-"))
        try:
            if self.rank == 0:
                self._save(step, train_loss, t, s, d)
            torch.save({"generator": s["generator"], "log": s["log"]}, d / f"rank-{self.rank}.pt")
            ray.train.report(
                {"step": step, "train_loss": train_loss},
                checkpoint=ray.train.Checkpoint.from_directory(str(d)),
                checkpoint_dir_name=checkpoint_name(step),
            )
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def _save(self, step: int, train_loss: float | None, t: float, s: dict, d: Path) -> None:
        """Rank 0 at a checkpoint: the merged HF folder, its manifest entry, and this
        Ray checkpoint's ``weights.pt`` and ``trainer.pt`` staged in ``d``."""
        from circuitray.finetune.local import checkpoint_name
        from circuitray.finetune.lora import merged_copy
        from circuitray.models.builders.artifacts import save_hf_model

        self.fence()
        name = checkpoint_name(step)
        merged = merged_copy(self.model)
        save_hf_model(merged, self.tokenizer, self.out / name)
        self.record(step, name, train_loss, t, merged)
        del merged
        lora = self.config.method == "lora"
        torch.save(_weights(self.model, lora=lora), d / "weights.pt")
        trainer = {k: v for k, v in s.items() if k not in ("generator", "log")}
        torch.save({**trainer, "config": self.loop_config["config"]}, d / "trainer.pt")


def _weights(model, *, lora: bool) -> dict[str, torch.Tensor]:
    """What a Ray checkpoint keeps of the model: every weight, or the adapters."""
    if lora:
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(model)
    else:
        state = model.state_dict()
    return {k: v.detach().cpu() for k, v in state.items()}


def _load_checkpoint(model, folder: Path, *, rank: int, lora: bool) -> dict:
    """Load a Ray checkpoint's weights into ``model``; ``train_lm``'s resume state for
    this rank."""
    try:
        weights = torch.load(folder / "weights.pt", weights_only=True)
        trainer = torch.load(folder / "trainer.pt", weights_only=True)
        mine = torch.load(folder / f"rank-{rank}.pt", weights_only=True)
    except FileNotFoundError as e:
        raise RunDirError(
            f"Ray checkpoint {folder}: {Path(e.filename or '?').name} missing "
            "(a different number of workers than the run it resumes?)"
        ) from None
    if lora:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, weights)
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise RunDirError(f"Ray checkpoint {folder}: unexpected adapter keys {unexpected[:3]}")
    else:
        model.load_state_dict(weights)
    trainer.pop("config", None)
    return {**trainer, "generator": mine["generator"], "log": mine["log"]}
