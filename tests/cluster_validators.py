"""The checks of :mod:`test_cluster_files`: loaders, shell-command parsing and validators
for the cluster launch files in ``cluster/`` (Ray cluster-launcher configs and KubeRay
manifests), with no cloud and no Kubernetes. What they check is listed in that module's
docstring.

Each check is a plain function raising AssertionError, so that the tests can feed it
broken copies of the real files and show that it can fail.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import jsonschema
import ray
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
DOCKERFILE = KUBERAY / "Dockerfile"
RAY_SCHEMA = Path(os.path.dirname(ray.__file__)) / "autoscaler" / "ray-schema.json"

_SCRIPT = Path(sys.executable).parent / "circuitray"
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "circuitray.cli"]

REQUIRED_LAUNCHERS = {"aws-gpu.yaml", "gcp-gpu.yaml"}
RSYNC_EXCLUDES = {".venv", ".circuitray", "**/__pycache__", "runs"}
TOKEN_MOUNT = "~/.cache/huggingface/token"
# Arguments that name a file of the repository when relative (or under the image's
# checkout folder), e.g. pipelines/ws2_constraint_comparison.yaml.
FILE_SUFFIXES = (".yaml", ".yml", ".parquet", ".jsonl", ".csv", ".sql", ".py")
# Paths written in any cluster file that must exist in the repository.
REPO_PATH = re.compile(r"(?<![\w/.~-])(?:pipelines|cluster|queries)/[\w./-]*\w")
HF_TOKEN_LITERAL = re.compile(r"hf_[A-Za-z0-9]{20,}")
AWS_KEY_LITERAL = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
# GPUs per machine for the types these files use (extend when adding types).
AWS_GPUS = {"g5.xlarge": 1, "g5.2xlarge": 1, "g5.4xlarge": 1, "g6.xlarge": 1, "g6e.xlarge": 1}
GCP_GPUS = {"g2-standard-4": 1, "g2-standard-8": 1, "g2-standard-12": 1, "g2-standard-16": 1}
GCP_GPU_SERIES = ("a2-", "a3-", "a4-", "g2-", "g4-")


# ---------------------------------------------------------------- loading


def load_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None  # test_every_cluster_yaml_parses reports it


def _launcher_paths() -> list[Path]:
    """cluster/*.yaml files that are cluster-launcher configs (they have a provider)."""
    paths = []
    for path in sorted(CLUSTER.glob("*.yaml")):
        doc = load_yaml(path)
        if isinstance(doc, dict) and "provider" in doc:
            paths.append(path)
    return paths


LAUNCHERS = _launcher_paths()
MANIFESTS = sorted(KUBERAY.glob("*.yaml"))


def manifest_docs() -> list[tuple[str, dict]]:
    docs = []
    for path in MANIFESTS:
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                docs.append((f"{path.name}[{i}]", doc))
    return docs


@functools.cache
def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


@functools.cache
def pins() -> dict[str, str]:
    """``name: version`` for every ``name==version`` dependency of pyproject.toml."""
    out = {}
    for dep in _pyproject()["project"]["dependencies"]:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^\s;,]+)", dep.strip())
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


@functools.cache
def ray_schema() -> dict:
    return json.loads(RAY_SCHEMA.read_text())


@functools.cache
def app_dir() -> str:
    """Where the Dockerfile puts the checkout (its last WORKDIR)."""
    workdirs = re.findall(r"^WORKDIR\s+(\S+)", DOCKERFILE.read_text(), flags=re.M)
    assert workdirs, f"{DOCKERFILE}: no WORKDIR"
    return workdirs[-1].rstrip("/")


def runtime_env_vars() -> dict:
    return (load_yaml(CLUSTER / "runtime_env.yaml") or {}).get("env_vars") or {}


# ---------------------------------------------------------------- shell and commands


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell line, as argument lists; leading ``VAR=value``
    assignments and ``env``/``sudo`` prefixes are dropped. Quoted text stays one word."""
    lex = shlex.shlex(script, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = ""
    commands, current = [], []
    for tok in lex:
        if tok and set(tok) <= set("();<>|&"):
            commands.append(current)
            current = []
        else:
            current.append(tok)
    commands.append(current)
    out = []
    for cmd in commands:
        while cmd and (re.match(r"^[A-Za-z_]\w*=", cmd[0]) or cmd[0] in ("env", "sudo")):
            cmd = cmd[1:]
        if cmd:
            out.append(cmd)
    return out


def circuitray_invocations(commands: list[list[str]]) -> list[list[str]]:
    """The argument lists after ``circuitray`` of the commands that run it."""
    return [cmd[1:] for cmd in commands if cmd and Path(cmd[0]).name == "circuitray"]


def command_words(args: list[str]) -> list[str]:
    """The subcommand words: leading arguments up to the first option or path."""
    words = []
    for a in args:
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", a):
            break
        words.append(a)
    return words


@functools.cache
def cli_help(words: tuple[str, ...]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *words, "--help"], capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )


def repo_file_args(args: list[str]) -> list[str]:
    """Arguments naming repository files, as paths relative to the repository."""
    out = []
    for a in args:
        if a.startswith(("-", "~")) or "://" in a or not a.endswith(FILE_SUFFIXES):
            continue
        if a.startswith(app_dir() + "/"):
            a = a[len(app_dir()) + 1 :]
        if not a.startswith("/"):
            out.append(a)
    return out


def check_circuitray_command(args: list[str], where: str) -> None:
    """``circuitray ARGS`` is a real command with real options and existing files."""
    words = command_words(args)
    p = cli_help(tuple(words))
    shown = " ".join(["circuitray", *words])
    assert p.returncode == 0 and "Usage:" in p.stdout, (
        f"{where}: `{shown}` is not a circuitray command "
        f"(`{shown} --help` exited {p.returncode}: {(p.stderr or p.stdout).strip()[-300:]})"
    )
    rest = args[len(words) :]
    for a in rest:
        if a.startswith("--"):
            opt = a.split("=", 1)[0]
            assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", p.stdout), (
                f"{where}: `{shown}` has no option {opt}"
            )
    for rel in repo_file_args(rest):
        assert (REPO / rel).exists(), f"{where}: `{shown}` names {rel}, not in the repository"


def documented_commands(text: str) -> list[list[str]]:
    """``circuitray`` commands shown in comments: after `` -- `` (``ray job submit ...
    -- circuitray ...``, continuation lines joined) or in backticks."""
    lines, buf = [], ""
    for line in text.splitlines():
        s = line.strip()
        if not s.startswith("#"):
            continue
        s = s.lstrip("#").strip()
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        lines.append(buf + s)
        buf = ""
    found = []
    for line in lines:
        snippets = re.findall(r"`(circuitray [^`]+)`", line)
        m = re.search(r"(?:^|\s)--\s+(circuitray\s.*)$", line)
        if m:
            snippets.append(m.group(1))
        for s in snippets:
            found.extend(circuitray_invocations(shell_commands(s)))
    return found


def options(args: list[str]) -> dict[str, str]:
    """``--name value`` and ``--name=value`` pairs of an argument list (flags left out)."""
    out, i = {}, 0
    while i < len(args):
        a = args[i]
        if a.startswith("--") and "=" in a:
            key, value = a.split("=", 1)
            out[key] = value
        elif a.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("-"):
            out[a] = args[i + 1]
            i += 1
        i += 1
    return out


def warmed_models(invocations: list[list[str]]) -> set[tuple[str, str | None]]:
    """(model, transcoders) of the ``circuitray model warm`` invocations."""
    out = set()
    for args in invocations:
        if command_words(args) == ["model", "warm"]:
            opts = options(args[2:])
            # organism-tuned: `circuitray model warm`'s default --model.
            out.add((opts.get("--model", "organism-tuned"), opts.get("--transcoders")))
    return out


def pipeline_files(invocations: list[list[str]]) -> list[str]:
    """Repository paths of the pipeline files that ``circuitray pipeline run`` gets."""
    return [
        f
        for args in invocations
        if command_words(args)[:2] == ["pipeline", "run"]
        for f in repo_file_args(args[2:])
    ]


def check_pipelines_warmed(pipelines: list[str], warmed: set, where: str) -> None:
    """Every run of the pipelines uses a model (and transcoders) the nodes warm."""
    assert pipelines, f"{where}: names no pipeline file"
    for rel in pipelines:
        assert (REPO / rel).is_file(), f"{where}: pipeline {rel} is not in the repository"
        doc = yaml.safe_load((REPO / rel).read_text())
        for name, run in (doc.get("runs") or {}).items():
            key = (run.get("model"), run.get("transcoders"))
            assert key in warmed, (
                f"{where}: {rel} run {name!r} uses {key}, the nodes warm {sorted(warmed)}"
            )


# ---------------------------------------------------------------- launcher checks


def node_types(cfg: dict) -> tuple[str, dict, dict[str, dict]]:
    types = cfg["available_node_types"]
    head = cfg["head_node_type"]
    return head, types[head], {k: v for k, v in types.items() if k != head}


def hardware_gpus(provider: str, node_config: dict) -> int:
    """GPUs the machine of ``node_config`` has, from its type (and GCP accelerators)."""
    if provider == "aws":
        itype = node_config["InstanceType"]
        if itype in AWS_GPUS:
            return AWS_GPUS[itype]
        assert not itype.startswith(("g", "p")), f"{itype}: add its GPU count to AWS_GPUS"
        return 0
    if provider == "gcp":
        mtype = node_config["machineType"].rsplit("/", 1)[-1]
        attached = sum(int(a["acceleratorCount"]) for a in node_config.get("guestAccelerators", []))
        if mtype in GCP_GPUS:
            assert attached in (0, GCP_GPUS[mtype]), (
                f"{mtype} has {GCP_GPUS[mtype]} GPU(s), guestAccelerators say {attached}"
            )
            return GCP_GPUS[mtype]
        assert not mtype.startswith(GCP_GPU_SERIES), f"{mtype}: add its GPU count to GCP_GPUS"
        return attached
    raise AssertionError(f"provider {provider!r}: no GPU table in this test")


def is_spot(provider: str, node_config: dict) -> bool:
    if provider == "aws":
        market = (node_config.get("InstanceMarketOptions") or {}).get("MarketType")
        return str(market).lower() == "spot"
    sched = node_config.get("scheduling")
    if not isinstance(sched, dict):
        return False
    return sched.get("preemptible") is True or sched.get("provisioningModel") == "SPOT"


def check_schema(cfg: dict) -> None:
    jsonschema.validate(cfg, ray_schema())


def check_ray_prepares(cfg: dict) -> None:
    """ray's own steps before it contacts the cloud: defaults merged, then validated."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cfg)))


def check_node_types(cfg: dict) -> None:
    provider = cfg["provider"]["type"]
    head_name, head, workers = node_types(cfg)
    assert head.get("resources", {}).get("GPU", 0) == 0, f"head {head_name!r} advertises GPUs"
    assert hardware_gpus(provider, head["node_config"]) == 0, f"head {head_name!r} has a GPU"
    gpu_types = {}
    for name, t in workers.items():
        res = t.get("resources", {})
        hw = hardware_gpus(provider, t["node_config"])
        assert res.get("GPU", 0) == hw, (
            f"{name}: declares GPU {res.get('GPU', 0)}, machine has {hw}"
        )
        if hw:
            gpu_types[name] = t
            assert res.get("GPU") == 1, f"{name}: a GPU worker type declares GPU: 1"
            assert isinstance(res.get("CPU"), int) and res["CPU"] > 0, f"{name}: declare its CPUs"
        lo, hi = t.get("min_workers"), t.get("max_workers")
        assert isinstance(lo, int) and isinstance(hi, int), f"{name}: set min_workers, max_workers"
        assert 0 <= lo <= hi <= cfg["max_workers"], f"{name}: needs 0 <= min <= max <= global max"
        assert "worker_setup_commands" not in t, (
            f"{name}: a node type's worker_setup_commands replace the global setup_commands"
        )
    assert gpu_types, "no GPU worker type"
    if provider == "gcp":
        for name, t in gpu_types.items():
            sched = t["node_config"].get("scheduling")
            assert isinstance(sched, dict), f"{name}: scheduling must be a mapping (Compute API)"
            assert sched.get("onHostMaintenance") == "TERMINATE", (
                f"{name}: GPU VMs need scheduling.onHostMaintenance TERMINATE"
            )
            if is_spot(provider, t["node_config"]):
                assert sched.get("automaticRestart") is not True, f"{name}: spot cannot restart"
    assert sum(t["max_workers"] for t in workers.values()) <= cfg["max_workers"], (
        "the global max_workers cuts the worker types below their max_workers"
    )
    assert any(is_spot(provider, t["node_config"]) for t in gpu_types.values()), (
        "no spot/preemptible GPU worker type"
    )
    # circuitray picks GPU actors only when the cluster has GPUs as a run starts.
    assert any(t["min_workers"] >= 1 for t in gpu_types.values()), (
        "no GPU worker type with min_workers >= 1: a run would start CPU actors on the head"
    )


def check_file_mounts(cfg: dict) -> None:
    mounts = cfg.get("file_mounts") or {}
    assert mounts.get("~/circuitray") == ".", "file_mounts: '~/circuitray': '.' (the checkout)"
    assert mounts.get(TOKEN_MOUNT) == TOKEN_MOUNT, f"file_mounts: the HF token file {TOKEN_MOUNT}"
    missing = RSYNC_EXCLUDES - set(cfg.get("rsync_exclude") or [])
    assert not missing, f"rsync_exclude lacks {sorted(missing)}"
    assert ".gitignore" in (cfg.get("rsync_filter") or []), "rsync_filter: ['.gitignore']"


def all_commands(cfg: dict) -> dict[str, list[str]]:
    keys = (
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    )
    return {k: list(cfg.get(k) or []) for k in keys}


def check_setup(cfg: dict) -> None:
    setup = cfg.get("setup_commands") or []
    torch_pin = pins()["torch"]

    def first(pred: Callable[[str], bool], what: str) -> int:
        hits = [i for i, c in enumerate(setup) if pred(c)]
        assert hits, f"setup_commands: no {what}"
        return hits[0]

    torch_at = first(
        lambda c: (
            re.search(
                rf"pip install torch=={re.escape(torch_pin)} "
                r"--index-url https://download\.pytorch\.org/whl/cu\d+\b",
                c,
            )
            is not None
        ),
        f"`pip install torch=={torch_pin} --index-url https://download.pytorch.org/whl/cuXXX`",
    )
    install_at = first(
        lambda c: "pip install -e ~/circuitray" in c, "`pip install -e ~/circuitray`"
    )
    check_at = first(
        lambda c: "import circuitray" in c and "__version__" in c, "circuitray version check"
    )
    warm_at = first(lambda c: "circuitray model warm" in c, "`circuitray model warm`")
    assert torch_at < install_at < check_at < warm_at, (
        "setup order: CUDA torch, pip install -e ~/circuitray, version check, model warm"
    )
    for key, cmds in all_commands(cfg).items():
        for c in cmds:
            for cmd in shell_commands(c):
                if cmd[:2] == ["pip", "install"] and any(
                    re.fullmatch(r"torch([=<>!~].*)?", a) for a in cmd[2:]
                ):
                    assert any(
                        re.match(r"https://download\.pytorch\.org/whl/cu\d", a) for a in cmd
                    ), f"{key}: `{c}` installs torch without PyTorch's CUDA index"
            assert "HF_TOKEN=" not in c, f"{key}: the token comes from the mounted token file"
    head_setup = " ".join(cfg.get("head_setup_commands") or [])
    client = {"aws": "boto3", "gcp": "google-api-python-client"}[cfg["provider"]["type"]]
    assert client in head_setup, f"head_setup_commands: install {client} for the autoscaler"
    head_start = " ".join(cfg.get("head_start_ray_commands") or [])
    worker_start = " ".join(cfg.get("worker_start_ray_commands") or [])
    assert "ray start --head" in head_start and "--port=6379" in head_start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker_start
    for start in (head_start, worker_start):
        assert "RAY_USAGE_STATS_ENABLED=0" in start, "ray start: RAY_USAGE_STATS_ENABLED=0"


CACHE_VARS = ("HF_HOME", "CIRCUIT_TRACER_CACHE_DIR", "CIRCUITRAY_HOME")


def check_cache_dirs(cfg: dict) -> None:
    """Warming and the actors use the same caches: a cache variable has one value across
    the commands and cluster/runtime_env.yaml, and wherever it is set it is also
    exported in ~/.bashrc, so that ``ray start``, hence the actors, see it too."""
    commands = [c for cmds in all_commands(cfg).values() for c in cmds]
    text = "\n".join(commands)
    bashrc = "\n".join(c for c in commands if ">> ~/.bashrc" in c)
    runtime_env = runtime_env_vars()
    for var in CACHE_VARS:
        exported = set(re.findall(rf"export {var}=([^\s'\"\\;]+)", bashrc))
        values = set(re.findall(rf"(?<!\w){var}=([^\s'\"\\;]+)", text))
        if var in runtime_env:
            values.add(runtime_env[var])
        assert len(values) <= 1, f"{var} has several values {sorted(values)}"
        assert values <= exported, (
            f"{var}={sorted(values)[0]} is set for some commands or in runtime_env.yaml but "
            "not exported for all: warming would fill a cache the actors do not read"
        )


def check_launcher(cfg: dict) -> None:
    """Every check of a launcher config that needs no subprocess."""
    check_schema(cfg)
    check_ray_prepares(cfg)
    check_node_types(cfg)
    check_file_mounts(cfg)
    check_setup(cfg)
    check_cache_dirs(cfg)
    check_no_secrets(yaml.safe_dump(cfg), "config")


# ---------------------------------------------------------------- KubeRay checks


def _str_map(value, where: str) -> None:
    assert isinstance(value, dict), f"{where}: must be a mapping"
    for k, v in value.items():
        assert isinstance(v, str), f"{where}.{k}: must be a string, got {v!r}"


def _python_ok(tag: str) -> bool:
    m = re.search(r"-py3(\d+)", tag)
    if not m:
        return False
    minor = int(m.group(1))
    spec = _pyproject()["project"]["requires-python"]
    lo = re.search(r">=\s*3\.(\d+)", spec)
    hi = re.search(r"<\s*3\.(\d+)", spec)
    return (not lo or minor >= int(lo.group(1))) and (not hi or minor < int(hi.group(1)))


def pod_specs(spec: dict) -> list[tuple[str, dict]]:
    out = [("head", spec["headGroupSpec"]["template"]["spec"])]
    for g in spec.get("workerGroupSpecs") or []:
        out.append((g.get("groupName", "?"), g["template"]["spec"]))
    return out


def _gpu_limit(container: dict) -> int:
    limits = (container.get("resources") or {}).get("limits") or {}
    return int(str(limits.get("nvidia.com/gpu", 0)))


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env") or []}


def check_token_env(container: dict, where: str) -> None:
    for name, e in _env(container).items():
        if "TOKEN" in name or "SECRET" in name or "KEY" in name:
            assert "value" not in e, f"{where}: {name} as a literal value; use a secretKeyRef"
            ref = (e.get("valueFrom") or {}).get("secretKeyRef") or {}
            assert ref.get("name") and ref.get("key"), f"{where}: {name} needs secretKeyRef"


def check_ray_cluster_spec(spec: dict, where: str, pvcs: dict[str, dict]) -> None:
    assert spec.get("rayVersion") == pins()["ray"], (
        f"{where}: rayVersion {spec.get('rayVersion')!r}, pyproject pins ray {pins()['ray']}"
    )
    head = spec.get("headGroupSpec") or {}
    _str_map(head.get("rayStartParams"), f"{where}.headGroupSpec.rayStartParams")
    assert head["rayStartParams"].get("dashboard-host") == "0.0.0.0"
    assert head["rayStartParams"].get("num-gpus", "0") == "0", f"{where}: head advertises GPUs"
    groups = spec.get("workerGroupSpecs")
    assert isinstance(groups, list) and groups, f"{where}: no workerGroupSpecs"
    for g in groups:
        gw = f"{where}.workerGroupSpecs[{g.get('groupName')}]"
        assert g.get("groupName"), f"{gw}: groupName"
        _str_map(g.get("rayStartParams"), f"{gw}.rayStartParams")
        counts = [g.get(k) for k in ("minReplicas", "replicas", "maxReplicas")]
        assert all(isinstance(c, int) for c in counts), f"{gw}: integer min/replicas/max"
        assert 0 <= counts[0] <= counts[1] <= counts[2], f"{gw}: minReplicas<=replicas<=max"
    cache_values: dict[str, set[str]] = {}
    images = set()
    for name, pod in pod_specs(spec):
        pw = f"{where}.{name}"
        containers = pod.get("containers")
        assert isinstance(containers, list) and containers, f"{pw}: template.spec.containers"
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        for c in [*(pod.get("initContainers") or []), *containers]:
            cw = f"{pw}.{c.get('name')}"
            assert c.get("name") and c.get("image"), f"{cw}: name and image"
            if c["image"].startswith("rayproject/ray:"):
                tag = c["image"].split(":", 1)[1]
                assert tag.startswith(pins()["ray"] + "-"), f"{cw}: image {tag} != ray pin"
                assert _python_ok(tag), f"{cw}: image Python outside requires-python"
            check_token_env(c, cw)
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts") or []}
            for m_name in mounts.values():
                assert m_name in volumes, f"{cw}: mounts undefined volume {m_name}"
            for var in ("HF_HOME", "CIRCUIT_TRACER_CACHE_DIR"):
                value = (_env(c).get(var) or {}).get("value")
                if value is None:
                    continue
                cache_values.setdefault(var, set()).add(value)
                under = [p for p in mounts if value == p or value.startswith(p.rstrip("/") + "/")]
                assert under, f"{cw}: {var}={value} is on no volume"
                assert "emptyDir" in volumes[mounts[under[0]]], f"{cw}: {var} not on an emptyDir"
        images.add(containers[0]["image"])
        for v in volumes.values():
            claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
            if claim:
                assert claim in pvcs, f"{pw}: PVC {claim} is not defined in cluster/kuberay"
                assert "ReadWriteMany" in pvcs[claim]["spec"]["accessModes"], (
                    f"PVC {claim}: pods on several nodes need ReadWriteMany"
                )
    assert len(images) == 1, f"{where}: head and workers run different images {images}"
    for var, values in cache_values.items():
        assert len(values) == 1, f"{where}: {var} differs between containers: {values}"
    head_c = head["template"]["spec"]["containers"][0]
    ports = {p.get("containerPort") for p in head_c.get("ports") or []}
    assert {6379, 8265, 10001} <= ports, f"{where}: head ports 6379, 8265, 10001"
    assert _gpu_limit(head_c) == 0, f"{where}: head container requests a GPU"
    gpu_groups = [g for g in groups if "gpu" in g["groupName"]]
    assert gpu_groups, f"{where}: no GPU worker group"
    for g in gpu_groups:
        gw = f"{where}.{g['groupName']}"
        pod = g["template"]["spec"]
        assert _gpu_limit(pod["containers"][0]) >= 1, f"{gw}: limits nvidia.com/gpu"
        keys = {t.get("key") for t in pod.get("tolerations") or []}
        assert "nvidia.com/gpu" in keys, f"{gw}: tolerate the nvidia.com/gpu taint"
        env = _env(pod["containers"][0])
        assert "secretKeyRef" in (env.get("HF_TOKEN", {}).get("valueFrom") or {}), (
            f"{gw}: HF_TOKEN from a Secret (gated model)"
        )
        warms = [
            c
            for c in pod.get("initContainers") or []
            if "circuitray model warm" in " ".join(c.get("command", []) + c.get("args", []))
        ]
        assert warms, f"{gw}: warm the model per pod (circuitray model warm init container)"
    assert any(g["minReplicas"] >= 1 for g in gpu_groups), (
        f"{where}: no GPU group with minReplicas >= 1: a run would start CPU actors"
    )


def check_ray_job(doc: dict, where: str, pvcs: dict[str, dict]) -> None:
    spec = doc.get("spec") or {}
    entry = spec.get("entrypoint")
    assert isinstance(entry, str) and entry.strip(), f"{where}: spec.entrypoint"
    assert isinstance(spec.get("rayClusterSpec"), dict), f"{where}: spec.rayClusterSpec"
    check_ray_cluster_spec(spec["rayClusterSpec"], f"{where}.rayClusterSpec", pvcs)
    if spec.get("shutdownAfterJobFinishes"):
        ttl = spec.get("ttlSecondsAfterFinished")
        assert isinstance(ttl, int) and ttl >= 0, f"{where}: ttlSecondsAfterFinished"
    env = {}
    if "runtimeEnvYAML" in spec:
        runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
        assert isinstance(runtime_env, dict), f"{where}: runtimeEnvYAML is a mapping"
        assert "working_dir" not in runtime_env, f"{where}: the code is in the image"
        env = runtime_env.get("env_vars") or {}
        _str_map(env, f"{where}.runtimeEnvYAML.env_vars")
    pod_env = {}
    for _, pod in pod_specs(spec["rayClusterSpec"]):
        for c in pod["containers"]:
            pod_env.update({k: e.get("value") for k, e in _env(c).items() if "value" in e})
    for var in ("HF_HOME", "CIRCUIT_TRACER_CACHE_DIR"):
        if var in env:
            assert env[var] == pod_env.get(var), f"{where}: runtime env {var} != the pods'"
    # Actors write part files themselves: a local run folder must be on a volume every
    # pod mounts from one shared claim.
    for cmd in circuitray_invocations(shell_commands(entry)):
        opts = options(cmd)
        for a in ("--out-root", "--out"):
            value = opts.get(a)
            if value is None or "://" in value:
                continue
            claims_per_pod = []
            for name, pod in pod_specs(spec["rayClusterSpec"]):
                volumes = {v["name"]: v for v in pod.get("volumes") or []}
                claims = {
                    volumes[m["name"]]["persistentVolumeClaim"]["claimName"]
                    for m in pod["containers"][0].get("volumeMounts") or []
                    if value.startswith(m["mountPath"].rstrip("/") + "/")
                    and "persistentVolumeClaim" in volumes.get(m["name"], {})
                }
                assert claims, f"{where}: {a} {value} is not on a shared volume in {name}"
                claims_per_pod.append(claims)
            assert set.intersection(*claims_per_pod), (
                f"{where}: {a} {value} is on different claims in different pods"
            )


def check_manifests(docs: list[tuple[str, dict]]) -> None:
    """Every check of the KubeRay manifests that needs no subprocess."""
    pvcs = {d["metadata"]["name"]: d for _, d in docs if d.get("kind") == "PersistentVolumeClaim"}
    kinds = {d.get("kind") for _, d in docs}
    assert {"RayCluster", "RayJob"} <= kinds, f"cluster/kuberay has {kinds}"
    for where, doc in docs:
        meta = doc.get("metadata") or {}
        assert meta.get("name") or meta.get("generateName"), f"{where}: metadata.name"
        if doc.get("kind") in ("RayCluster", "RayJob"):
            assert doc.get("apiVersion") == "ray.io/v1", f"{where}: apiVersion ray.io/v1"
        if doc.get("kind") == "RayCluster":
            assert meta.get("name"), f"{where}: metadata.name"
            check_ray_cluster_spec(doc.get("spec") or {}, where, pvcs)
        elif doc.get("kind") == "RayJob":
            check_ray_job(doc, where, pvcs)
        check_no_secrets(yaml.safe_dump(doc), where)


def manifest_commands(doc: dict) -> list[list[str]]:
    """circuitray invocations a manifest runs: RayJob entrypoint, container commands."""
    found = []
    spec = doc.get("spec") or {}
    if isinstance(spec.get("entrypoint"), str):
        found += circuitray_invocations(shell_commands(spec["entrypoint"]))
    cluster_spec = spec.get("rayClusterSpec", spec) if doc.get("kind") == "RayJob" else spec
    if "headGroupSpec" in cluster_spec:
        for _, pod in pod_specs(cluster_spec):
            for c in [*(pod.get("initContainers") or []), *pod.get("containers", [])]:
                argv = [*(c.get("command") or []), *(c.get("args") or [])]
                if len(argv) >= 3 and Path(argv[0]).name in ("sh", "bash") and "-c" in argv:
                    found += circuitray_invocations(shell_commands(argv[argv.index("-c") + 1]))
                else:
                    found += circuitray_invocations([argv])
    return found


# ---------------------------------------------------------------- secrets


def check_no_secrets(text: str, where: str) -> None:
    assert not HF_TOKEN_LITERAL.search(text), f"{where}: a literal Hugging Face token"
    assert not AWS_KEY_LITERAL.search(text), f"{where}: a literal AWS access key"
