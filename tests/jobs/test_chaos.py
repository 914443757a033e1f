"""Chaos (issue 17): rounds of ``kill -9`` at random instants on a real Ray cluster,
each followed by a resume; after every round each prompt is stored exactly once, every
ok graph has exactly its nodes and edges, and nothing outside the run folder changed.

A head node (``ray.cluster_utils.Cluster``, real raylet and GCS on 127.0.0.1) outlives
the drivers, which are ``circuitray run`` processes joined to it. So a killed driver's
actors go on for a moment, as on a real cluster, and can write while its successor
resumes: the fence has to hold, not a quiet period. Each round (seeded) kills one
random actor, the driver, or both, either at a random instant or the moment a write
is under way (a temporary file in the folder; then every actor, so the writing one
is among them). The first rounds follow :data:`PLAN`, so even the CI-sized run (3
rounds) kills inside a write every time: the driver and every actor, actors alone,
and the driver alone (its successor resumes while the old actors still write); later
rounds draw their target and instant at random.
``CIRCUITRAY_CHAOS_ROUNDS`` (default 3) and ``CIRCUITRAY_CHAOS_LONG_ROUNDS`` (default
200, the ``long`` variant ``make test-long`` runs) choose how many rounds, and
``CIRCUITRAY_CHAOS_SEED`` (default 0) other instants;
``CIRCUITRAY_CHAOS_REPORT=FILE`` writes the figures as JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pytest
import ray
from ray._private import ray_constants
from ray.cluster_utils import Cluster

from circuitray import RunStore, generate_ws2, write_prompts

ROUNDS = int(os.environ.get("CIRCUITRAY_CHAOS_ROUNDS", "3"))
LONG_ROUNDS = int(os.environ.get("CIRCUITRAY_CHAOS_LONG_ROUNDS", "200"))
SEED = int(os.environ.get("CIRCUITRAY_CHAOS_SEED", "0"))
N_PROMPTS = 8
# (target, in_write) of the first rounds: each kind of kill at least once, inside a
# write (a driver killed at a random instant is a round of the long variant's).
PLAN = [("both", True), ("actor", True), ("driver", True)]
CLUSTER_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}


@pytest.fixture(scope="module")
def head(circuitray_home):
    if ray.is_initialized():  # the drivers join this cluster, not this process's Ray
        ray.shutdown()
    with pytest.MonkeyPatch.context() as env:  # a module-scoped monkeypatch
        for k, v in CLUSTER_ENV.items():
            env.setenv(k, v)
        env.delenv("RAY_ADDRESS")  # the session's shared Ray: this module has its own
        c = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 3, "num_gpus": 0, "include_dashboard": False},
        )
        yield c
        c.shutdown()


def _driver(prompts: Path, out: Path, address: str) -> subprocess.Popen:
    cmd = [
        str(Path(sys.executable).parent / "circuitray"),
        "run", str(prompts), "--out", str(out), "--model", "tiny", "--address", address,
        "--actors", "2", "--batch-size", "1", "--no-stats",
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _actor_pids(raylet: int) -> list[int]:
    """The attribution actors of this test's cluster (children of its raylet): never
    another test's, which may run beside it (make test runs two pytest workers)."""
    ps = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True)
    return [
        int(pid)
        for pid, ppid, args in (line.split(None, 2) for line in ps.stdout.splitlines())
        if int(ppid) == raylet and "ray::AttributionWorker" in args
    ]


def _writing(out: Path) -> bool:
    return any(
        p.name.endswith(".tmp")
        for d in (out, out / "edges", out / "nodes", out / "graphs")
        if d.is_dir()
        for p in d.iterdir()
    )


def _snapshot(root: Path, skip: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and skip not in p.parents
    }


def _check(out: Path, prompt_ids: list[str]) -> dict:
    store = RunStore(out)
    assert store.unreadable_parts() == {}
    graphs = store.read_graphs().to_pylist()
    counts = Counter(r["prompt_id"] for r in graphs)
    duplicates = sum(n - 1 for n in counts.values())
    missing = len(set(prompt_ids) - set(counts))
    assert duplicates == 0 and missing == 0 and set(counts) == set(prompt_ids), counts
    nodes = store.read_table("nodes", ["graph_id", "node_id"])
    edges = store.read_table("edges", ["graph_id", "dst", "src"])
    per_node = Counter(nodes["graph_id"].to_pylist())
    per_edge = Counter(edges["graph_id"].to_pylist())
    for table in (nodes, edges):  # no row twice
        assert table.group_by(table.column_names).aggregate([]).num_rows == table.num_rows
    gids = {r["graph_id"] for r in graphs}
    assert set(per_node) <= gids and set(per_edge) <= gids
    for r in graphs:
        if r["status"] == "ok":
            assert per_node[r["graph_id"]] == r["n_kept_nodes"] > 0
            assert per_edge[r["graph_id"]] == r["n_kept_edges"] > 0
        else:  # a batch out of tries (three kills of its actor) is an error row
            assert per_node[r["graph_id"]] == per_edge[r["graph_id"]] == 0
    ok = pc.sum(pc.equal(store.read_graphs(["status"])["status"], "ok")).as_py()
    return {"duplicates": duplicates, "missing": missing, "ok": ok}


@pytest.mark.parametrize(
    "rounds",
    [pytest.param(ROUNDS, id="ci"), pytest.param(LONG_ROUNDS, id="long", marks=pytest.mark.long)],
)
def test_chaos_kill_and_resume(head, tmp_path, rounds):
    rng = random.Random(SEED)
    raylet = head.head_node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    root = tmp_path / "chaos"
    root.mkdir()
    (root / "outside").mkdir()
    (root / "outside" / "keep.txt").write_text("nothing may touch this\n")
    figures = Counter()
    started = time.monotonic()
    for round_ in range(rounds):
        rows = generate_ws2(n=N_PROMPTS, seed=1000 * SEED + round_)
        prompts = write_prompts(rows, root / f"prompts-{round_}.jsonl")
        out = root / f"run-{round_}"
        before = _snapshot(root, out)
        target = rng.choice(["actor", "driver", "both"])
        in_write = rng.random() < 0.5
        if round_ < len(PLAN):
            target, in_write = PLAN[round_]
        wait_parts = rng.randrange(0, N_PROMPTS // 2)
        extra = rng.uniform(0, 1.0)

        driver = _driver(prompts, out, head.address)
        deadline = time.monotonic() + 180
        killed = []
        while time.monotonic() < deadline and driver.poll() is None:
            graphs = out / "graphs"
            n = len(list(graphs.glob("*.parquet"))) if graphs.is_dir() else 0
            if in_write:
                ready = _writing(out) and (target == "driver" or _actor_pids(raylet))
            else:
                ready = n >= wait_parts and (target == "driver" or len(_actor_pids(raylet)) >= 2)
            if ready:
                if not in_write:
                    time.sleep(extra)
                if target in ("actor", "both"):
                    pids = _actor_pids(raylet)
                    for pid in pids if in_write else rng.sample(pids, min(1, len(pids))):
                        with _quiet():
                            os.kill(pid, signal.SIGKILL)
                        killed.append("actor")
                if target in ("driver", "both"):
                    with _quiet():
                        driver.kill()
                    killed.append("driver")
                break
            time.sleep(0.001 if in_write else 0.02)
        assert time.monotonic() < deadline, "the driver made no progress"
        if "driver" in killed:
            driver.wait(timeout=60)
            driver = _driver(prompts, out, head.address)  # the resume, while old actors may live
        _, err = driver.communicate(timeout=300)
        assert driver.returncode == 0, (round_, target, in_write, err[-2000:])
        # One kill event per round: no batch runs out of its --max-attempts 3 tries.
        errors = RunStore(out).read_graphs(["status", "error"]).to_pylist()
        bad = [r for r in errors if r["status"] != "ok"]
        assert not bad, (round_, target, in_write, bad, err[-3000:])
        figures.update(killed)
        figures["rounds"] += 1
        figures["in_write_rounds"] += in_write and bool(killed)
        figures["rounds_without_a_kill"] += not killed  # the run ended first
        result = _check(out, [r["prompt_id"] for r in rows])
        figures["prompts"] += N_PROMPTS
        figures["duplicates"] += result["duplicates"]
        figures["missing"] += result["missing"]
        figures["error_rows"] += N_PROMPTS - result["ok"]
        assert _snapshot(root, out) == before, "something outside the run folder changed"
    figures["seconds"] = round(time.monotonic() - started)
    summary = dict(sorted(figures.items()), seed=SEED)
    print("chaos:", json.dumps(summary))
    if os.environ.get("CIRCUITRAY_CHAOS_REPORT"):
        Path(os.environ["CIRCUITRAY_CHAOS_REPORT"]).write_text(json.dumps(summary) + "\n")
    assert figures["rounds"] == rounds and figures["duplicates"] == figures["missing"] == 0
    assert figures["actor"] + figures["driver"] >= rounds // 2  # most rounds did kill
    if rounds >= len(PLAN):  # the planned rounds: actors and drivers killed, in a write
        assert figures["actor"] >= 1 and figures["driver"] >= 1, summary
        assert figures["in_write_rounds"] >= 1, summary


class _quiet:
    """Ignore a process that is already gone."""

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is ProcessLookupError
