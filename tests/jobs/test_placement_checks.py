"""Placement that cannot be satisfied fails at once in one line, never hangs; resource
options are validated by range (issue 17, finding 7)."""

from __future__ import annotations

import json
import os

import pytest
from conftest import assert_refused, circuitray

from circuitray.errors import CircuitrayError
from circuitray.jobs.attribution_job import RunConfig
from circuitray.jobs.dispatch import Placement, check_fits
from circuitray.jobs.intervention_job import InterventionConfig


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"prompt_id": f"q{i}", "prompt": "not tall but"} for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def local_ray(monkeypatch):
    """The driver starts a local Ray of its own (it cannot grow, so it refuses), not
    the session's shared one (a joined cluster may add nodes, so it waits)."""
    monkeypatch.delenv("RAY_ADDRESS")


def test_more_cpus_per_actor_than_any_node_is_refused_not_waited_for(local_ray, prompts, tmp_path):
    out = tmp_path / "run"
    # Before: Ray waited forever for a node with 8 CPUs and nothing was printed.
    p = circuitray("run", prompts, "--out", out, "--model", "tiny", "--cpus-per-actor", "8")
    assert_refused(p, "--cpus-per-actor 8", "no node of the Ray cluster has 8 CPUs")
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "failed" and "--cpus-per-actor 8" in meta["error"], meta


@pytest.mark.skipif((os.cpu_count() or 1) >= 12, reason="the local Ray would fit 3 x 4 CPUs")
def test_actors_that_do_not_fit_together_are_refused(local_ray, prompts, tmp_path):
    p = circuitray(
        "run", prompts, "--out", tmp_path / "run", "--model", "tiny", "--actors", "3",
        "--cpus-per-actor", "4", "--batch-size", "1",
    )  # fmt: skip
    assert_refused(p, "--actors 3 x --cpus-per-actor 4 = 12 CPUs", "the local Ray has")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("gpus_per_actor", 0.0),
        ("gpus_per_actor", -1.0),
        ("cpus_per_actor", -2.0),
        ("cpus_per_actor", 0.0),
        ("actors", 0),
        ("batch_size", 0),
        ("max_attempts", 0),
        ("restart_timeout_s", -1.0),
        ("start_timeout_s", 0.0),
    ],
)
def test_placement_values_out_of_range_are_refused(field, value):
    flag = "--" + field.replace("_", "-")
    with pytest.raises(CircuitrayError, match=flag):
        RunConfig("p.jsonl", "out", **{field: value})
    with pytest.raises(CircuitrayError, match=flag):
        InterventionConfig("run", "out", ["top:1"], **{field: value})


@pytest.mark.parametrize("option", ["--gpus-per-actor", "--cpus-per-actor"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_cli_refuses_resource_values_out_of_range(prompts, tmp_path, option, value):
    p = circuitray("run", prompts, "--out", tmp_path / "run", "--model", "tiny", option, value)
    assert p.returncode == 2 and option in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "run").exists()


def test_a_joined_cluster_may_grow_so_it_only_warns(caplog):
    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}]
    check_fits(Placement(address="auto"), {"num_cpus": 8}, nodes, n_actors=1)
    assert "no node of the Ray cluster has 8 CPUs" in caplog.text
    with pytest.raises(CircuitrayError, match="no node of the Ray cluster has 1 GPUs"):
        check_fits(Placement(), {"num_gpus": 1.0, "num_cpus": 1}, nodes, n_actors=1)


def test_actors_a_joined_cluster_never_places_fail_within_the_start_timeout(prompts, tmp_path):
    """On a Ray this process did not start (a cluster that might grow: the session's
    shared one, joined through RAY_ADDRESS), placement that is never satisfied fails
    after --start-timeout-s in one line naming what was asked and what the cluster
    has; before, the driver waited forever."""
    from conftest import SHARED_RAY_CPUS

    from circuitray import ModelSpec, run

    want = 2 * SHARED_RAY_CPUS
    config = RunConfig(
        str(prompts), str(tmp_path / "run"), model=ModelSpec(model="tiny"),
        actors=1, cpus_per_actor=want, start_timeout_s=3,
    )  # fmt: skip
    match = rf"not started within 3s.*CPU.*{SHARED_RAY_CPUS}"
    with pytest.raises(CircuitrayError, match=match) as e:
        run(config)
    assert "\n" not in str(e.value)
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["status"] == "failed" and "not started within" in meta["error"]


def test_a_driver_joins_the_ray_that_RAY_ADDRESS_names(prompts, tmp_path):
    """Without --address, `circuitray run` joins $RAY_ADDRESS (Ray's own variable,
    which `ray job submit` sets for its entrypoint): here the session's shared Ray, a
    cluster that may grow, so an actor no node holds is waited for (up to
    --start-timeout-s) on a cluster of SHARED_RAY_CPUS CPUs, not refused by a local
    Ray of the machine's cores."""
    from conftest import SHARED_RAY_CPUS

    assert os.environ["RAY_ADDRESS"]
    want = 2 * SHARED_RAY_CPUS
    p = circuitray(
        "run", prompts, "--out", tmp_path / "run", "--model", "tiny",
        "--cpus-per-actor", str(want), "--start-timeout-s", "3",
    )  # fmt: skip
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    # A local Ray would refuse at once ("no node of the Ray cluster has 16 CPUs" as the
    # error); a joined one warns, waits, and names the cluster it joined.
    assert "waiting for the cluster to add one" in p.stderr, p.stderr
    error = p.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and "not started within 3s" in error, p.stderr
    assert f"the Ray cluster has {{'CPU': {SHARED_RAY_CPUS:.1f}}}" in error, error
