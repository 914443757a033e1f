"""Static checks of the cluster launch files in ``cluster/``: no cloud, no Kubernetes.

1. Ray cluster-launcher configs (``cluster/*.yaml`` with a ``provider``): valid against
   the JSON schema of the installed ray package and accepted by ray's own config
   preparation (what ``ray up`` runs before it contacts a cloud); then what the schema
   cannot say: a CPU-only head, GPU worker types declaring the GPUs their machines have
   (``GPU: 1``), a spot/preemptible type, a GPU up when a run starts (circuitray picks
   GPU or CPU actors from the GPUs present then), the checkout and the Hugging Face
   token file mounted, the CUDA torch wheel at pyproject's pin installed before
   ``pip install -e ~/circuitray``, and every node warmed with ``circuitray model warm``.
2. KubeRay manifests (``cluster/kuberay/*.yaml``): the fields KubeRay requires for
   RayCluster and RayJob (head and worker groups, containers, replica bounds, GPU limits
   and tolerations), Ray version and image tags matching pyproject's pins, one cache
   folder per pod shared by its processes, and run folders on a volume every pod shares.
3. Commands: every ``circuitray ...`` command the files run or document is a real one
   (``circuitray WORDS --help`` exits 0 and lists the options used), and the repository
   files they name (``pipelines/*.yaml``...) exist.
4. Secrets: the Hugging Face token only through a mounted token file or a
   ``secretKeyRef``, never a literal ``hf_`` value, anywhere in ``cluster/``.

The checks are plain functions raising AssertionError, in :mod:`cluster_validators`;
``test_*_checks_catch`` feed them broken copies of the real files, so each check is
shown to be able to fail.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable

import jsonschema
import pytest
import yaml
from cluster_validators import (
    CLUSTER,
    DOCKERFILE,
    KUBERAY,
    LAUNCHERS,
    MANIFESTS,
    RAY_SCHEMA,
    REPO,
    REPO_PATH,
    REQUIRED_LAUNCHERS,
    TOKEN_MOUNT,
    all_commands,
    app_dir,
    check_cache_dirs,
    check_circuitray_command,
    check_file_mounts,
    check_launcher,
    check_manifests,
    check_no_secrets,
    check_node_types,
    check_pipelines_warmed,
    check_ray_prepares,
    check_setup,
    circuitray_invocations,
    command_words,
    documented_commands,
    load_yaml,
    manifest_commands,
    manifest_docs,
    pins,
    pipeline_files,
    pod_specs,
    ray_schema,
    runtime_env_vars,
    shell_commands,
    warmed_models,
)

# ================================================================ tests: launcher


def test_every_cluster_yaml_parses():
    paths = [*CLUSTER.glob("*.yaml"), *MANIFESTS]
    for path in paths:
        list(yaml.safe_load_all(path.read_text()))  # raises on bad YAML


def test_launcher_configs_present():
    names = {p.name for p in LAUNCHERS}
    assert names >= REQUIRED_LAUNCHERS, f"cluster launcher configs: {sorted(names)}"


@pytest.fixture(params=LAUNCHERS, ids=lambda p: p.name)
def launcher(request) -> tuple[str, dict]:
    return request.param.name, load_yaml(request.param)


def test_launcher_valid_for_ray_schema(launcher):
    _, cfg = launcher
    assert RAY_SCHEMA.is_file(), RAY_SCHEMA
    jsonschema.validate(cfg, ray_schema())


def test_launcher_accepted_by_ray_prepare_config(launcher):
    check_ray_prepares(launcher[1])


def test_launcher_node_types(launcher):
    check_node_types(launcher[1])


def test_launcher_file_mounts(launcher):
    check_file_mounts(launcher[1])


def test_launcher_setup_commands(launcher):
    check_setup(launcher[1])


def test_launcher_cache_dirs_consistent(launcher):
    check_cache_dirs(launcher[1])


def test_launcher_circuitray_commands_exist(launcher):
    name, cfg = launcher
    found = []
    for key, cmds in all_commands(cfg).items():
        for c in cmds:
            for args in circuitray_invocations(shell_commands(c)):
                found.append(args)
                check_circuitray_command(args, f"{name}: {key}")
    assert any(command_words(a) == ["model", "warm"] for a in found)


@pytest.mark.parametrize(
    "path", [*LAUNCHERS, *MANIFESTS, DOCKERFILE], ids=lambda p: str(p.relative_to(CLUSTER))
)
def test_documented_commands_and_paths_exist(path):
    text = path.read_text()
    for args in documented_commands(text):
        check_circuitray_command(args, f"{path.name} (comment)")
    for rel in sorted(set(REPO_PATH.findall(text.replace(app_dir() + "/", "")))):
        assert (REPO / rel).exists(), f"{path.name} names {rel}, not in the repository"


def test_launcher_pipelines_use_warmed_models(launcher):
    name, cfg = launcher
    setup = [a for c in cfg["setup_commands"] for a in circuitray_invocations(shell_commands(c))]
    documented = documented_commands((CLUSTER / name).read_text())
    check_pipelines_warmed(pipeline_files(documented), warmed_models(setup), name)


def test_kuberay_pipelines_use_warmed_models():
    for path in MANIFESTS:
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if (doc or {}).get("kind") not in ("RayCluster", "RayJob"):
                continue
            found = manifest_commands(doc) + documented_commands(path.read_text())
            check_pipelines_warmed(pipeline_files(found), warmed_models(found), f"{path.name}[{i}]")


def test_pipeline_check_catches_unwarmed_models(tmp_path):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("runs:\n  a: {model: google/gemma-2-2b, transcoders: gemma}\n")
    check_pipelines_warmed([str(pipeline)], {("google/gemma-2-2b", "gemma")}, "test")
    with pytest.raises(AssertionError, match="the nodes warm"):
        check_pipelines_warmed([str(pipeline)], {("google/gemma-2-2b", "llama")}, "test")
    with pytest.raises(AssertionError, match="not in the repository"):
        check_pipelines_warmed(["pipelines/no-such.yaml"], set(), "test")


def test_runtime_env_values_are_strings():
    for k, v in runtime_env_vars().items():
        assert isinstance(v, str), f"runtime_env.yaml: {k}={v!r} must be a string for Ray"


def test_no_secret_literals_anywhere_in_cluster():
    for path in sorted(p for p in CLUSTER.rglob("*") if p.is_file()):
        check_no_secrets(path.read_text(errors="replace"), str(path.relative_to(REPO)))


def _aws() -> dict:
    return copy.deepcopy(load_yaml(CLUSTER / "aws-gpu.yaml"))


def _gcp() -> dict:
    return copy.deepcopy(load_yaml(CLUSTER / "gcp-gpu.yaml"))


def _set(cfg: dict, dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    node = cfg
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    node[last] = value
    return cfg


def _del(cfg: dict, dotted: str) -> dict:
    *parents, last = dotted.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    del node[last]
    return cfg


def _replace_setup(cfg: dict, old: str, new: str | None) -> dict:
    cmds = [c.replace(old, new) if new is not None else c for c in cfg["setup_commands"]]
    cfg["setup_commands"] = [c for c in cmds if new is not None or old not in c]
    return cfg


def _without_mount(remote: str) -> dict:
    cfg = _aws()
    del cfg["file_mounts"][remote]
    return cfg


# case: (broken copy of a real config, what the failure says)
BROKEN_LAUNCHERS: dict[str, tuple[Callable[[], dict], str]] = {
    "top-level typo": (lambda: {**_aws(), "setup_command": []}, "setup_command"),
    "fractional GPU": (
        lambda: _set(_aws(), "available_node_types.gpu_spot.resources.GPU", 0.5),
        "is not of type 'integer'",
    ),
    "head advertises GPU": (
        lambda: _set(_aws(), "available_node_types.head.resources.GPU", 1),
        "advertises GPUs",
    ),
    "head on a GPU machine": (
        lambda: _set(_aws(), "available_node_types.head.node_config.InstanceType", "g5.xlarge"),
        "has a GPU",
    ),
    "GPU type without GPU": (
        lambda: _del(_aws(), "available_node_types.gpu_spot.resources.GPU"),
        "declares GPU 0, machine has 1",
    ),
    "min above max": (
        lambda: _set(_aws(), "available_node_types.gpu_ondemand.min_workers", 3),
        "min <= max",
    ),
    "no GPU at start": (
        lambda: _set(_aws(), "available_node_types.gpu_ondemand.min_workers", 0),
        "min_workers >= 1",
    ),
    "no spot": (
        lambda: _del(_aws(), "available_node_types.gpu_spot.node_config.InstanceMarketOptions"),
        "spot/preemptible",
    ),
    "gcp scheduling list": (
        lambda: _set(
            _gcp(), "available_node_types.gpu_spot.node_config.scheduling", [{"preemptible": True}]
        ),
        "must be a mapping",
    ),
    "gcp GPU migrates": (
        lambda: _set(
            _gcp(),
            "available_node_types.gpu_ondemand.node_config.scheduling.onHostMaintenance",
            "MIGRATE",
        ),
        "onHostMaintenance TERMINATE",
    ),
    "per-type setup override": (
        lambda: _set(_aws(), "available_node_types.gpu_spot.worker_setup_commands", ["true"]),
        "replace the global setup_commands",
    ),
    "head_node_type unknown": (lambda: _set(_aws(), "head_node_type", "nope"), "head_node_type"),
    "checkout not mounted": (lambda: _without_mount("~/circuitray"), "the checkout"),
    "token not mounted": (lambda: _without_mount(TOKEN_MOUNT), "HF token file"),
    "venv synced": (lambda: _set(_aws(), "rsync_exclude", ["runs"]), "rsync_exclude lacks"),
    "CPU torch wheel": (
        lambda: _replace_setup(_aws(), " --index-url https://download.pytorch.org/whl/cu128", ""),
        "no `pip install torch",
    ),
    "CPU torch index elsewhere": (
        lambda: _set(
            _aws(),
            "head_setup_commands",
            ["pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"],
        ),
        "without PyTorch's CUDA index",
    ),
    "torch off the pin": (
        lambda: _replace_setup(_aws(), "torch==2.13.0", "torch==2.12.0"),
        "no `pip install torch",
    ),
    "no warm": (
        lambda: _replace_setup(_aws(), "circuitray model warm", None),
        "no `circuitray model warm`",
    ),
    "no boto3 for the autoscaler": (
        lambda: _set(_aws(), "head_setup_commands", []),
        "install boto3",
    ),
    "cache only for warming": (
        lambda: _replace_setup(
            _aws(), "circuitray model warm", "HF_HOME=/mnt/hf circuitray model warm"
        ),
        "warming would fill a cache",
    ),
    "token literal": (
        lambda: _set(
            _aws(), "initialization_commands", ["echo hf_abcdefghijklmnopqrstuvwxyz0123 > t"]
        ),
        "literal Hugging Face token",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN_LAUNCHERS))
def test_launcher_checks_catch(case):
    make, message = BROKEN_LAUNCHERS[case]
    with pytest.raises((AssertionError, jsonschema.ValidationError, ValueError), match=message):
        check_launcher(make())


def test_real_launchers_pass_check_launcher(launcher):
    check_launcher(launcher[1])  # the same function the broken copies fail


# ================================================================ tests: KubeRay


def test_kuberay_manifests():
    check_manifests(manifest_docs())


def test_kuberay_circuitray_commands_exist():
    found = []
    for where, doc in manifest_docs():
        for args in manifest_commands(doc):
            found.append(args)
            check_circuitray_command(args, where)
    assert any(command_words(a) == ["pipeline", "run"] for a in found), "RayJob entrypoint"
    assert any(command_words(a) == ["model", "warm"] for a in found), "warm init container"


def test_dockerfile_matches_manifests():
    text = DOCKERFILE.read_text()
    base = re.search(r"^FROM\s+(\S+)", text, flags=re.M)
    assert base, "Dockerfile: FROM"
    images = {
        c["image"]
        for _, doc in manifest_docs()
        if doc.get("kind") in ("RayCluster", "RayJob")
        for _, pod in pod_specs(doc["spec"].get("rayClusterSpec", doc["spec"]))
        for c in pod["containers"]
    }
    assert images == {base.group(1)}, f"manifests run {images}, the Dockerfile builds on {base}"
    torch_pin = pins()["torch"]
    assert re.search(
        rf"pip install torch=={re.escape(torch_pin)} "
        r"--index-url https://download\.pytorch\.org/whl/cu\d+",
        text,
    ), f"Dockerfile: CUDA torch {torch_pin}"
    assert re.search(r"pip install -e \.", text), "Dockerfile: pip install -e ."
    assert re.search(rf"^COPY\s.*\s{re.escape(app_dir())}/?\s*$", text, flags=re.M)
    ignore = (KUBERAY / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".circuitray"} <= set(ignore), "Dockerfile.dockerignore"


def _manifests_with(change: Callable[[dict], None], kind: str = "RayJob") -> list:
    docs = copy.deepcopy(manifest_docs())
    change(next(d for _, d in docs if d.get("kind") == kind))
    return docs


def _job_workers(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]


def _job_worker_container(doc: dict) -> dict:
    return _job_workers(doc)["template"]["spec"]["containers"][0]


# case: (broken copy of the real manifests, what the failure says)
BROKEN_MANIFESTS: dict[str, tuple[Callable[[], list], str]] = {
    "replicas above max": (
        lambda: _manifests_with(lambda d: _job_workers(d).update(replicas=9)),
        "minReplicas<=replicas<=max",
    ),
    "no rayStartParams": (
        lambda: _manifests_with(lambda d: _job_workers(d).pop("rayStartParams")),
        "rayStartParams: must be a mapping",
    ),
    "int rayStartParams": (
        lambda: _manifests_with(
            lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].update(
                {"num-cpus": 4}
            )
        ),
        "must be a string",
    ),
    "no GPU limit": (
        lambda: _manifests_with(
            lambda d: _job_worker_container(d)["resources"]["limits"].pop("nvidia.com/gpu")
        ),
        "limits nvidia.com/gpu",
    ),
    "no toleration": (
        lambda: _manifests_with(lambda d: _job_workers(d)["template"]["spec"].pop("tolerations")),
        "tolerate the nvidia.com/gpu taint",
    ),
    "token literal": (
        lambda: _manifests_with(
            lambda d: _job_worker_container(d).update(env=[{"name": "HF_TOKEN", "value": "x"}])
        ),
        "as a literal value",
    ),
    "rayVersion off the pin": (
        lambda: _manifests_with(lambda d: d["spec"]["rayClusterSpec"].update(rayVersion="2.9.0")),
        "rayVersion",
    ),
    "cluster image off the pin": (
        lambda: _manifests_with(
            lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].update(
                image="rayproject/ray:2.9.0-py311-gpu"
            ),
            "RayCluster",
        ),
        "!= ray pin",
    ),
    "working_dir": (
        lambda: _manifests_with(lambda d: d["spec"].update(runtimeEnvYAML="working_dir: .\n")),
        "the code is in the image",
    ),
    "int env var": (
        lambda: _manifests_with(
            lambda d: d["spec"].update(runtimeEnvYAML="env_vars: {CIRCUITRAY_RAY_LOGS: 1}\n")
        ),
        "must be a string",
    ),
    "runs on a pod-local path": (
        lambda: _manifests_with(
            lambda d: d["spec"].update(
                entrypoint="circuitray pipeline run p.yaml --address auto --out-root /tmp/runs"
            )
        ),
        "not on a shared volume",
    ),
    "no head ports": (
        lambda: _manifests_with(
            lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].pop("ports"),
            "RayCluster",
        ),
        "head ports",
    ),
    "no warm": (
        lambda: _manifests_with(
            lambda d: _job_workers(d)["template"]["spec"].pop("initContainers")
        ),
        "warm the model per pod",
    ),
    "no RayJob": (
        lambda: [(w, d) for w, d in manifest_docs() if d.get("kind") != "RayJob"],
        "cluster/kuberay has",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN_MANIFESTS))
def test_manifest_checks_catch(case):
    make, message = BROKEN_MANIFESTS[case]
    with pytest.raises(AssertionError, match=message):
        check_manifests(make())


def test_command_check_catches_unknown_commands_options_and_files():
    with pytest.raises(AssertionError, match="not a circuitray command"):
        check_circuitray_command(["no-such-command", "--x"], "test")
    with pytest.raises(AssertionError, match="no option"):
        check_circuitray_command(["model", "warm", "--no-such-option", "1"], "test")
    with pytest.raises(AssertionError, match="not in the repository"):
        check_circuitray_command(["run", "pipelines/no-such-file.yaml"], "test")
