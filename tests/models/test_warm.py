"""circuitray model warm: bundled models are checked, hub models fail clearly offline,
and --address warms every node of a real multi-node cluster once."""

from __future__ import annotations

import pytest
import ray
from conftest import assert_one_line_error, circuitray
from ray.cluster_utils import Cluster

from circuitray.errors import ModelLoadError
from circuitray.models.loading import ModelSpec
from circuitray.models.warm import warm_cluster, warm_model


def test_warm_bundled_model():
    done = warm_model(ModelSpec(model="tiny"))
    assert done["bundled"] and done["transcoders"] == "circuitray/tiny"
    assert done["model_path"].endswith("models/tiny")


def test_warm_hub_model_offline_fails_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="cannot be reached") as e:
        warm_model(ModelSpec(model="google/gemma-2-2b", transcoders="gemma"))
    assert "google/gemma-2-2b" in str(e.value) and "\n" not in str(e.value)


def test_warm_cli_errors():
    import os

    env_offline = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        p = circuitray("model", "warm", "--model", "google/gemma-2-2b", "--transcoders", "gemma")
    finally:
        if env_offline is None:
            os.environ.pop("HF_HUB_OFFLINE")
        else:
            os.environ["HF_HUB_OFFLINE"] = env_offline
    assert p.returncode == 2
    assert_one_line_error(p, "google/gemma-2-2b", "Hugging Face hub")
    # A bundled model with hub transcoders: the transcoders are what is missing.
    p = circuitray("model", "warm", "--model", "tiny", "--transcoders", "no-such/transcoders")
    assert p.returncode == 2
    assert_one_line_error(p, "transcoders 'no-such/transcoders'")
    p = circuitray("model", "warm", "--model", "tiny", "--json")
    assert p.returncode == 0 and '"bundled": true' in p.stdout


def test_warm_every_node_of_a_cluster(monkeypatch):
    if ray.is_initialized():  # the session's local Ray: this test drives its own cluster
        ray.shutdown()
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS")  # the session's shared Ray ("auto" must find this one)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        results = warm_cluster(ModelSpec(model="tiny"), address=cluster.address)
        expected = {cluster.head_node.node_id} | {n.node_id for n in nodes}
        assert sorted(r["node_id"] for r in results) == sorted(expected)
        assert all(r["bundled"] and r["model"] == "tiny" for r in results)
        # A model a node cannot load fails the whole warm-up, naming a node.
        with pytest.raises(ModelLoadError, match="3 of 3 nodes failed"):
            warm_cluster(ModelSpec(model="tiny", transcoders="no-such/set"), address="auto")
    finally:
        ray.shutdown()
        cluster.shutdown()
