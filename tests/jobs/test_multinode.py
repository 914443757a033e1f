"""A real multi-node Ray cluster on this machine: GPU placement and a lost node.

``ray.cluster_utils.Cluster`` starts a head and worker nodes as separate raylets on
127.0.0.1; worker nodes advertise ``num_gpus=1`` (Ray schedules on the resource; the
actor's torch sees no CUDA and runs on CPU), so placement is Ray's real behaviour.
"""

from __future__ import annotations

from collections import Counter

import pytest
import ray
from ray.cluster_utils import Cluster

from circuitray import ModelSpec, RunConfig, RunStore, generate_ws2, run, write_prompts

CLUSTER_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}


@pytest.fixture
def cluster(monkeypatch):
    if ray.is_initialized():  # the session's local Ray: this test drives its own cluster
        ray.shutdown()
    for k, v in CLUSTER_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("RAY_ADDRESS")  # the session's shared Ray ("auto" must find this one)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    yield c
    ray.shutdown()
    c.shutdown()


def _check_exactly_once_ok(out, n):
    rows = RunStore(out).read_graphs().to_pylist()
    counts = Counter(r["prompt_id"] for r in rows)
    assert len(counts) == n and set(counts.values()) == {1}, counts
    assert {r["status"] for r in rows} == {"ok"}, [r["error"] for r in rows]


def test_one_actor_per_gpu_node(cluster, tmp_path):
    gpu_nodes = [cluster.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    prompts = write_prompts(generate_ws2(n=16, seed=21), tmp_path / "p.parquet")
    result = run(
        RunConfig(
            prompts=str(prompts),
            out=str(tmp_path / "run"),
            model=ModelSpec(model="tiny"),
            address=cluster.address,
            batch_size=2,
        )
    )
    # actors=None: one per GPU in the cluster, each pinned to its own GPU node.
    assert len(result.workers) == 2
    assert {w["node_id"] for w in result.workers} == {n.node_id for n in gpu_nodes}
    assert all(w["gpu_ids"] == [0] for w in result.workers)
    _check_exactly_once_ok(tmp_path / "run", 16)


def test_losing_a_node_mid_run(cluster, tmp_path):
    gpu_nodes = [cluster.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    prompts = write_prompts(generate_ws2(n=24, seed=22), tmp_path / "p.parquet")
    events: list[str] = []

    def lose_a_node(done, total, summary):
        if summary and not events:
            # A spare GPU node joins, then a node running an actor disappears: Ray
            # restarts that actor on the spare node and its batches are retried.
            cluster.add_node(num_cpus=2, num_gpus=1)
            cluster.remove_node(gpu_nodes[0])
            events.append("removed")

    result = run(
        RunConfig(
            prompts=str(prompts),
            out=str(tmp_path / "run"),
            model=ModelSpec(model="tiny"),
            address=cluster.address,
            batch_size=2,
        ),
        on_progress=lose_a_node,
    )
    assert events == ["removed"]
    assert result.retried_batches >= 1
    _check_exactly_once_ok(tmp_path / "run", 24)
