"""The tiny model fine-tuned through Ray Train (2 CPU workers, DDP on gloo) on a real
local Ray cluster: a driver killed mid-run and resumed, then a worker killed.

A head node (``ray.cluster_utils.Cluster``: real raylet and GCS) outlives the drivers,
which are ``python -c`` processes joined to it, each in its own process group.

1. ``interrupted`` runs alone; once ``finetune.json`` has two non-zero checkpoints and
   Ray Train has registered one, its driver's process group is SIGKILLed, and every
   Ray Train process of the run must go.
2. It is run again with the same ``storage_path`` and ``name``. While every worker of
   the resumed run stages its part of the first checkpoint after the resume, one of
   them is SIGKILLed: the worker group restarts from the checkpoint its controller had
   (``FailureConfig``). Then ``whole`` (never interrupted) starts beside it on the same
   cluster. Nothing may be left in the temp folder, nor staged in either run folder.
3. The resumed run must have started at the checkpoint registered when the driver died
   and again at the one registered when the worker died; the final manifest must hold
   every scheduled step exactly once; every checkpoint must be bit-identical to the
   uninterrupted run's (same seeds, one thread per worker, a two-rank gloo sum is
   exact) and load as a ReplacementModel with the tiny transcoders and attribute.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray
from ray._private import ray_constants
from ray.cluster_utils import Cluster
from safetensors.torch import load_file

from circuitray.finetune.manifest import checkpoint_path, read_manifest
from circuitray.finetune.ray_train import STAGING
from circuitray.finetune.schedule import checkpoint_steps
from circuitray.models.registry import BUNDLED

CLUSTER_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
WORKERS = 2
CONFIG = {
    "base": "tiny",
    "steps": 60,
    "checkpoints": 6,
    "spacing": "linear",
    "batch_size": 8,
    "lr": 3e-3,
    "ws2_n": 400,
    "eval_per_type": 4,
}
SCHEDULE = checkpoint_steps(steps=60, k=6, spacing="linear")  # 0, 12, 24, 36, 48, 60
DRIVER = """
import json, sys
from circuitray.finetune.config import FinetuneConfig
from circuitray.finetune.ray_train import finetune_on_ray
finetune_on_ray(FinetuneConfig(**json.loads(sys.argv[1])), **json.loads(sys.argv[2]))
"""


@pytest.fixture(scope="module")
def head(circuitray_home):
    if ray.is_initialized():  # the drivers join this cluster, not this process's Ray
        ray.shutdown()
    with pytest.MonkeyPatch.context() as env:
        for k, v in CLUSTER_ENV.items():
            env.setenv(k, v)
        env.delenv("RAY_ADDRESS")  # the session's shared Ray: this module has its own
        c = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 2 * WORKERS, "include_dashboard": False},
        )
        yield c
        c.shutdown()


def _driver(out: Path, address: str, storage: Path, name: str) -> subprocess.Popen:
    config = {**CONFIG, "out": str(out)}
    kwargs = {"workers": WORKERS, "address": address, "storage_path": str(storage), "name": name}
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, json.dumps(config), json.dumps(kwargs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # The controller registers a reported checkpoint at its next poll of the
        # workers (2 s by default): poll often, so the kill finds one registered.
        env={**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"},
        start_new_session=True,  # its own process group, killed whole
    )


def _finish(proc: subprocess.Popen, timeout: float = 240) -> None:
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stderr[-3000:]


def _nonzero_steps(out: Path) -> list[int]:
    try:
        manifest = json.loads((out / "finetune.json").read_text())
    except (FileNotFoundError, ValueError):
        return []
    return [c["step"] for c in manifest["checkpoints"] if c["step"] > 0]


def _resumed(out: Path) -> list[int]:
    try:
        return json.loads((out / "finetune.json").read_text()).get("resumed_from", [])
    except (FileNotFoundError, ValueError):
        return []


def _registered_step(storage: Path, name: str) -> int | None:
    """The step of the last checkpoint Ray Train registered (its run snapshot)."""
    snapshot = storage / name / "checkpoint_manager_snapshot.json"
    if not snapshot.exists():
        return None
    latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]
    return None if latest is None else latest["metrics"]["step"]


def _train_processes(raylet_pid: int) -> list[str]:
    """Ray Train controllers and workers this cluster's raylet still runs."""
    ps = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True)
    return [
        line
        for line in ps.stdout.splitlines()
        if int(line.split()[1]) == raylet_pid
        and ("ray::RayTrainWorker" in line or "ray::TrainController" in line)
    ]


def _train_workers(raylet_pid: int) -> set[int]:
    """The Ray Train workers this cluster's raylet runs now."""
    ps = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True)
    return {
        int(pid)
        for pid, ppid, args in (line.split(None, 2) for line in ps.stdout.splitlines())
        if int(ppid) == raylet_pid and "ray::RayTrainWorker" in args
    }


def _weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def _wait(
    what: str, done, proc: subprocess.Popen, timeout: float = 180, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(interval)


def test_killed_driver_resumes_from_last_checkpoint(head, tmp_path):
    address = head.address
    raylet = head.head_node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    storage = tmp_path / "ray_results"
    cut, whole = tmp_path / "interrupted", tmp_path / "whole"
    temp_before = set(Path(tempfile.gettempdir()).iterdir())
    t0 = time.monotonic()

    # 1. The driver is killed mid-run; its controller and workers go with it.
    first = _driver(cut, address, storage, "interrupted")
    _wait(
        "two checkpoints, one registered",
        lambda: len(_nonzero_steps(cut)) >= 2 and _registered_step(storage, "interrupted"),
        first,
    )
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    deadline = time.monotonic() + 30
    while _train_processes(raylet):
        assert time.monotonic() < deadline, _train_processes(raylet)
        time.sleep(0.2)
    seen = _nonzero_steps(cut)
    registered = _registered_step(storage, "interrupted")
    assert registered in seen and seen[-1] < SCHEDULE[-1], (registered, seen)
    killed_at = time.monotonic() - t0

    # 2. The same storage_path and name: Ray Train restores the run; one of its workers
    # is killed while every worker stages its part of the first checkpoint after the
    # resume; another fine-tune runs beside it.
    second = _driver(cut, address, storage, "interrupted")
    _wait("the resumed run's workers", lambda: len(_train_workers(raylet)) == WORKERS, second)
    resumed_workers = _train_workers(raylet)
    temp_seen = set(Path(tempfile.gettempdir()).iterdir())
    staged_before = set((cut / STAGING).glob("rank-*"))  # what phase 1's kill left

    def staging() -> int:
        """Checkpoint folders the resumed run stages: in the run folder, or in the
        temp folder (where staging once was, and a killed worker left them)."""
        ours = set((cut / STAGING).glob("rank-*")) - staged_before
        temp = set(Path(tempfile.gettempdir()).iterdir()) - temp_seen
        return len(ours) + sum(p.name.startswith("circuitray-finetune") for p in temp)

    _wait(
        "every worker staging a checkpoint after the resume",
        lambda: bool(_resumed(cut)) and staging() >= WORKERS,
        second,
        interval=0.01,
    )
    os.kill(min(resumed_workers), signal.SIGKILL)
    at_worker_kill = _nonzero_steps(cut)[-1]
    other = _driver(whole, address, storage, "whole")
    _finish(second)
    _finish(other)
    total = time.monotonic() - t0

    # 3. Resumed where Ray Train stood, every step once, identical to the whole run.
    manifest = read_manifest(cut)
    assert manifest["resumed_from"][0] == registered
    assert len(manifest["resumed_from"]) == 2, manifest["resumed_from"]
    assert registered <= manifest["resumed_from"][1] <= at_worker_kill < SCHEDULE[-1], (
        manifest["resumed_from"],
        at_worker_kill,
    )
    assert manifest["ray_train"] == {
        "workers": WORKERS,
        "storage_path": str(storage),
        "name": "interrupted",
    }
    steps = [c["step"] for c in manifest["checkpoints"]]
    assert steps == SCHEDULE, steps
    for c in manifest["checkpoints"]:
        assert c["examples_seen"] == c["step"] * CONFIG["batch_size"] * WORKERS
        assert (c["train_loss"] is None) == (c["step"] == 0)
        assert set(c["heldout"]) and c["transcoder_fit"] is not None
    losses = [c["train_loss"] for c in manifest["checkpoints"][1:]]
    assert losses[-1] < losses[0], losses

    reference = read_manifest(whole)
    assert reference["resumed_from"] == []
    assert [c["step"] for c in reference["checkpoints"]] == SCHEDULE
    for ours, theirs in zip(manifest["checkpoints"][1:], reference["checkpoints"][1:], strict=True):
        a, b = _weights(checkpoint_path(cut, ours)), _weights(checkpoint_path(whole, theirs))
        assert a.keys() == b.keys()
        assert all(a[k].equal(b[k]) for k in a), ours["step"]
        assert ours["train_loss"] == theirs["train_loss"], ours["step"]

    deadline = time.monotonic() + 30  # nothing of either run is left running
    while _train_processes(raylet):
        assert time.monotonic() < deadline, _train_processes(raylet)
        time.sleep(0.5)
    # ... nor written outside the run folders (a worker killed mid-checkpoint included).
    leaked = {p.name for p in set(Path(tempfile.gettempdir()).iterdir()) - temp_before}
    assert not {n for n in leaked if n.startswith("circuitray-finetune")}, leaked
    assert not (cut / STAGING).exists() and not (whole / STAGING).exists()

    # Every checkpoint loads as a ReplacementModel with the tiny transcoders and attributes.
    from circuit_tracer import attribute

    from circuitray.models.loading import ModelSpec, load_replacement_model
    from circuitray.prompts.ws2 import generate_ws2

    prompt = generate_ws2(n=1, seed=3)[0]["prompt"]
    for c in manifest["checkpoints"]:
        spec = ModelSpec(
            model=str(checkpoint_path(cut, c)),
            transcoders=BUNDLED["tiny"].transcoders,
            device="cpu",
        )
        graph = attribute(prompt, load_replacement_model(spec), batch_size=64)
        assert graph.adjacency_matrix.shape[0] > 0
    print(f"\ndriver killed at {killed_at:.0f} s, both runs done at {total:.0f} s")


def test_a_busy_or_foreign_folder_is_refused_before_ray_starts(circuitray_home, tmp_path):
    import fcntl
    from dataclasses import asdict, replace

    from circuitray.errors import RunDirError
    from circuitray.finetune.config import FinetuneConfig
    from circuitray.finetune.manifest import write_manifest
    from circuitray.finetune.ray_train import finetune_on_ray

    out = (tmp_path / "ft").resolve()
    config = FinetuneConfig(**{**CONFIG, "out": str(out)})
    out.mkdir()
    with open(out / ".ray_train.lock", "w") as held:  # another driver's lock
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunDirError, match="another fine-tune driver"):
            finetune_on_ray(config, workers=WORKERS)
    other = json.loads(json.dumps(asdict(replace(config, steps=61))))
    write_manifest(out, {"config": other, "checkpoints": []})
    with pytest.raises(RunDirError, match="config differs in steps"):
        finetune_on_ray(config, workers=WORKERS)
    storage = str(out / ".ray_train")
    mine = json.loads(json.dumps(asdict(config)))
    ray_train = {"workers": WORKERS, "storage_path": storage, "name": "finetune"}
    write_manifest(out, {"config": mine, "ray_train": ray_train, "checkpoints": []})
    with pytest.raises(RunDirError, match=f"started with {WORKERS} workers") as e:
        finetune_on_ray(config, workers=WORKERS + 1)
    assert "\n" not in str(e.value)
    assert not ray.is_initialized()
