"""Shared fixtures: an isolated CIRCUITRAY_HOME with the tiny model, and one Ray run.

- ``circuitray_home`` (session, autouse): points ``CIRCUITRAY_HOME`` at a temporary
  folder before anything reads it, builds the tiny model there once, and shuts Ray
  down at the end of the session if any test started it. Ray actors inherit the
  variable (the driver forwards it in ``runtime_env``), so they load the same model.
- ``loaded_tiny`` (session): the tiny ReplacementModel, for in-process tests.
- ``loaded_tiny_clt`` (session): the same model with its cross-layer transcoder.
- ``ray_run`` (session): 24 WS2 prompts attributed by 2 actors on a local Ray,
  reused by the driver, query and CLI tests.
- ``organism_report`` (session): the WS2 organism built by ``circuitray organism
  build`` in a fresh process on ``ATEN_CPU_CAPABILITY=default``; ``organism_runs``
  (session): the base-vs-tuned pipeline over it.
- ``circuitray(*args)``, ``assert_one_line_error``, ``assert_refused``: run the console
  script and check its one-line errors; ``intervention_dir`` (session): SPECS over
  ``ray_run`` (``build_interventions``).
- ``organism_features`` (session): the organism's feature table in a folder of its
  own (tests point ``CIRCUITRAY_FEATURES_DIR`` there).
- ``micro``: an organism recipe that builds in seconds (for what the build does);
  ``cli``: the ``circuitray`` console script.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# Before anything loads torch (libgomp reads it once): OpenMP threads that wait sleep
# instead of spinning. The suite runs two pytest workers, their Ray actors and CLI
# processes on a few cores, each with torch's threads; spinning waiters burn the
# cores the others need (two 2-thread processes of small matmuls on 2 cores: 23 s
# each spinning, 1 s passive). Same threads, same partition of work: same numbers.
# Subprocesses, Ray clusters the tests start and their actors inherit it.
OMP_WAIT_POLICY_GIVEN = os.environ.get("OMP_WAIT_POLICY")  # a caller's choice stands
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
TORCH_BEFORE_CONFTEST = "torch" in sys.modules

import pytest  # noqa: E402 (after OMP_WAIT_POLICY)
import torch  # noqa: E402

from circuitray.bench import SyntheticSpec, make_synthetic_run  # noqa: E402

N_RAY_PROMPTS = 24

REPO = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).parent / "circuitray"
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "circuitray.cli"]


def circuitray(
    *args, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    # os.environ carries CIRCUITRAY_HOME (set by the session fixture).
    return subprocess.run(
        [*CLI, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env if env is not None else dict(os.environ),
        timeout=timeout,
    )


def benchmarks(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m benchmarks ARGS`` from the checkout, as ``make bench*`` runs it."""
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ),
        timeout=timeout,
    )


def assert_one_line_error(p: subprocess.CompletedProcess, *needles: str) -> str:
    assert p.returncode != 0, p
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def assert_refused(p: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, nothing on stdout, one ``error: ...`` line on stderr holding ``needles``."""
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert p.stdout == ""
    line = assert_one_line_error(p, *needles)
    assert line.startswith("error: "), line
    return line


SPECS = ["top:2", "random:2", "single:2"]


@pytest.fixture(scope="session")
def intervention_dir(ray_run, tmp_path_factory) -> Path:
    """The session's intervention folder over ``ray_run`` (:func:`build_interventions`),
    built once for every test that only reads it."""
    return build_interventions(ray_run, tmp_path_factory)


def build_interventions(ray_run, tmp_path_factory) -> Path:
    """SPECS on every prompt of the session's Ray run (2 actors, batches of 4)."""
    from circuitray.jobs.intervention_job import InterventionConfig, intervene

    out = tmp_path_factory.mktemp("interventions") / "iv"
    result = intervene(
        InterventionConfig(
            run=str(ray_run.out), out=str(out), features=SPECS, actors=2, batch_size=4
        )
    )
    assert result.ok == result.total > 0, result
    return out


# Ray caches its auth mode per process: every Ray the suite starts (local, Cluster,
# CLI subprocesses) must agree, and a multi-process Cluster needs it disabled.
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

# One torch thread in the test process: the tiny model's many small ops run no faster
# on two threads, and with two threads on two busy cores OpenMP barriers can make a
# forward pass ~100x slower (seen: build_tiny 2 s -> 170 s next to another process).
torch.set_num_threads(1)


# Under `make test` (pytest-xdist) a fixture is built once per worker that asks for it:
# so that what is expensive is built once per run, the scheduler keeps together
# - every test file that reads one of a group's session fixtures (the organism's
#   pipeline runs and feature table; the shared Ray run: a file reading both goes
#   with the organism, so its worker builds the Ray run too),
# - every test of a file that has a module-scoped fixture,
# and sends every other test to whichever worker is free.
# (xdist's own --dist loadgroup cannot do this with pytest 9: it renames items through
# an attribute pytest 9 no longer reads, so its groups are silently ignored.)
SHARED_FIXTURES = {
    "organism": ("organism_report", "organism_runs", "organism_features", "features_dir"),
    "ray_run": ("ray_run", "intervention_dir"),
}


def scheduling_scopes(root: Path) -> dict[str, str]:
    """Test file (path as in node ids) -> the scope its tests run in, for the files
    that must not be split: a shared-fixture group's name, or the file itself."""
    scopes: dict[str, str] = {}
    for f in sorted(root.rglob("test_*.py")):
        text, rel = f.read_text(), str(f.relative_to(root.parent))
        group = next(
            (g for g, names in SHARED_FIXTURES.items() if any(n in text for n in names)), None
        )
        if group is not None:
            scopes[rel] = group
        elif re.search(r"""scope\s*=\s*["']module["']""", text):
            scopes[rel] = rel
    return scopes


# Seconds the slow tests take in `make test` (setup + call, two workers on 2 Intel
# cores, from --durations); every other test counts 1 s. The scheduler starts the
# scopes with the most seconds first (the organism's group, then the long end-to-end
# proofs), so a run does not end with one long test on one worker while the other
# idles: xdist's own order (most tests first) left the longest single-test scopes
# for last. A wrong or missing figure costs minutes, never a result.
SLOW_TESTS = {
    # make test-long's variants (alone on 2 Intel cores): the chaos soak first, the
    # organism's two beside it (xdist then hands the soak's worker the real-shape one
    # too, which runs after the soak: about 3 min more than the soak alone).
    "tests/jobs/test_chaos.py::test_chaos_kill_and_resume[long]": 4000,
    "tests/organism/test_learning_pipeline.py::"
    "test_learning_dynamics_pipeline_on_the_organism[long]": 600,
    "tests/organism/test_build.py::test_the_recipe_passes_on_portable_kernels": 490,
    "tests/jobs/test_real_shape.py::test_scaled_gemma_run_matches_circuit_tracer": 155,
    "tests/models/builders/test_gguf.py::test_gemma_3_270m_tokenizer_and_completions": 70,
    "tests/models/builders/test_real_commands.py::test_every_command_on_a_real_model[gemma": 2400,
    "tests/models/builders/test_real_commands.py::test_every_command_on_a_real_model[stories": 150,
    "tests/finetune/test_ray_train.py::test_killed_driver_resumes_from_last_checkpoint": 116,
    "tests/jobs/test_real_shape.py::test_scaled_gemma_graph_matches_circuit_tracer": 60,
    "tests/jobs/test_chaos.py::test_chaos_kill_and_resume[ci]": 85,
    "tests/jobs/test_job_submit.py::test_ray_job_submit_runs_the_readme_pipeline": 68,
    "tests/benchmarks/test_attribution.py::test_suite_quick_writes_every_figure": 48,
    "tests/jobs/test_fault_tolerance.py::test_killed_driver_resumes_without_recomputing": 31,
    "tests/organism/test_learning_pipeline.py::test_learning_dynamics_pipeline_on_the_organ": 54,
    "tests/graph/test_interventions.py::test_graph_top_features_beat_random_ones": 46,
    "tests/features/test_features.py::test_labels_in_queries_sql_and_export": 48,
    "tests/bench/test_gpu_bench.py::test_gpu_bench_falls_back_to_the_bundled_model": 46,
    "tests/benchmarks/test_aggregate_bench.py::test_bench_aggregate_times_a_synthetic_run": 11,
    "tests/jobs/test_pipeline_file.py::test_local_pipeline_runs_queries_compares_and_resu": 43,
    "tests/jobs/test_intervention_job.py::test_killed_actor_mid_intervention_then_resume": 38,
    "tests/benchmarks/test_real_shape_bench.py::test_real_shape_section_measures_and_prints": 44,
    "tests/jobs/test_trace.py::test_trace_prints_where_the_graph_is_and_serves_it": 44,
    "tests/organism/test_matrix.py::test_micro_cells_are_built_in_fresh_processes": 40,
    "tests/jobs/test_intervention_job.py::test_cli_prints_effects_and_json": 27,
    "tests/outputs/test_report.py::test_report_interventions_section": 26,
    "tests/bench/test_query_processes.py::test_view_sql_makes_the_views_connect_makes": 25,
    "tests/storage/test_s3.py::test_run_to_s3_exactly_once_and_queryable": 23,
    "tests/models/test_warm.py::test_warm_every_node_of_a_cluster": 23,
    "tests/jobs/test_series.py::test_a_two_step_series_reports_first_and_last": 9,
    "tests/jobs/test_multinode.py::test_one_actor_per_gpu_node": 23,
    "tests/jobs/test_multinode.py::test_losing_a_node_mid_run": 23,
    "tests/jobs/test_fault_tolerance.py::test_killed_actor_process_is_restarted": 23,
    "tests/jobs/test_series.py::test_every_checkpoint_is_a_run_of_the_same_prompts": 22,
    "tests/jobs/test_pipeline_file.py::test_pipeline_cli_json": 22,
    "tests/cli/test_cli.py::test_run_prints_why_prompts_failed": 21,
    "tests/models/builders/test_clt.py::test_cli_run_with_cross_layer_transcoders": 20,
    "tests/jobs/test_intervention_job.py::test_every_prompt_and_intervention_exactly_once": 20,
    "tests/benchmarks/test_attribution.py::test_circuitray_run_timings_and_rss": 20,
    "tests/test_readme.py::test_the_first_cli_examples_work_from_a_fresh_folder": 19,
    "tests/models/builders/test_llama2c.py::test_a_run_of_20_ws2_prompts_is_circuit": 35,
}


def expected_seconds(nodeid: str) -> float:
    """What SLOW_TESTS says a test takes (a key is a node id or its start), else 1 s."""
    return next((s for key, s in SLOW_TESTS.items() if nodeid.startswith(key)), 1.0)


def scope_of(nodeid: str, scopes: dict[str, str]) -> str:
    """The scheduling scope of a test: its file's (``scheduling_scopes``), or itself."""
    return scopes.get(nodeid.split("::", 1)[0], nodeid)


def longest_scopes_first(nodeids: list[str], scopes: dict[str, str]) -> list[str]:
    """``nodeids`` reordered so the scopes with the most seconds come first, each scope's
    tests together; within a scope, and between scopes of equal seconds, the
    collection's order."""
    seconds: dict[str, float] = {}
    for n in nodeids:
        seconds[scope_of(n, scopes)] = seconds.get(scope_of(n, scopes), 0.0) + expected_seconds(n)
    first: dict[str, int] = {}
    for i, n in enumerate(nodeids):
        first.setdefault(scope_of(n, scopes), i)
    order = {n: i for i, n in enumerate(nodeids)}
    return sorted(
        nodeids,
        key=lambda n: (-seconds[scope_of(n, scopes)], first[scope_of(n, scopes)], order[n]),
    )


def pytest_collection_modifyitems(config, items):
    """In a pytest-xdist worker: the collection in ``longest_scopes_first`` order, which
    the scheduler below keeps (every worker sorts the same collection the same way)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    scopes = scheduling_scopes(Path(__file__).resolve().parent)
    by_id = {item.nodeid: item for item in items}
    items[:] = [by_id[n] for n in longest_scopes_first(list(by_id), scopes)]


@pytest.hookimpl(optionalhook=True)  # pytest -p no:xdist runs the suite in one process
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    scopes = scheduling_scopes(Path(__file__).resolve().parent)
    # Scopes in the collection's order: pytest_collection_modifyitems's, longest first.
    config.option.loadscopereorder = False

    class SharedFixtureScheduling(LoadScopeScheduling):
        """Load scheduling by scope: a shared-fixture group, a file with a module
        fixture, or one test, the longest first."""

        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid, scopes)

    return SharedFixtureScheduling(config, log)


@pytest.fixture(scope="session", autouse=True)
def circuitray_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("circuitray_home")
    saved = {
        k: os.environ.get(k)
        for k in (
            "CIRCUITRAY_HOME",
            "CIRCUIT_TRACER_CACHE_DIR",
            "CIRCUITRAY_QUERIES_DIR",
            "HF_HUB_OFFLINE",
            "TRANSFORMERS_OFFLINE",
        )
    }
    os.environ["CIRCUITRAY_HOME"] = str(home)
    # Transcoders must come from CIRCUITRAY_HOME, queries from the repository.
    os.environ.pop("CIRCUIT_TRACER_CACHE_DIR", None)
    os.environ.pop("CIRCUITRAY_QUERIES_DIR", None)
    # Nothing in the suite may reach the hub: a missing artifact must fail fast.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"

    from circuitray.models.builders.tiny import build_tiny

    build_tiny(seed=0)
    yield home

    import ray

    if ray.is_initialized():
        ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# Real graphs made elsewhere (../shared/graphs, or $CIRCUITRAY_SHARED_GRAPHS): the
# import and consensus tests read them, and skip only where the folder is absent.
SHARED_GRAPHS = Path(os.environ.get("CIRCUITRAY_SHARED_GRAPHS", "../shared/graphs"))
if not SHARED_GRAPHS.is_absolute():
    SHARED_GRAPHS = Path(__file__).resolve().parents[1] / SHARED_GRAPHS


def json_feature_keys(doc: dict) -> dict[str, tuple[int, int]]:
    """node_id -> (layer, feature index) of a graph JSON file's feature nodes, read from
    the file directly (the tests' independent side of the import and consensus)."""
    return {
        n["node_id"]: (int(n["layer"]), int(n["node_id"].split("_")[1]))
        for n in doc["nodes"]
        if n["feature_type"] == "cross layer transcoder"
    }


# Logical CPUs of the shared Ray (scheduling slots, not cores): room for every test's
# actors, and for a killed driver's actors that linger a moment beside the next test's.
SHARED_RAY_CPUS = 8


@pytest.fixture(scope="session", autouse=True)
def shared_ray(circuitray_home):
    """One Ray head per pytest process (each xdist worker), joined through
    ``RAY_ADDRESS`` by every run, series, trace and pipeline the tests start, in this
    process or in CLI subprocesses, instead of a local Ray started and stopped by each
    (about 9 s of wall and 3 CPU-seconds a run). Tests about a driver's own local Ray
    remove ``RAY_ADDRESS`` (``monkeypatch.delenv``); those that need a cluster of
    their own (several nodes, kills by raylet) start one."""
    from ray.cluster_utils import Cluster

    saved = os.environ.pop("RAY_ADDRESS", None)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": SHARED_RAY_CPUS, "include_dashboard": False},
    )
    os.environ["RAY_ADDRESS"] = cluster.address
    yield cluster

    import ray

    if ray.is_initialized():
        ray.shutdown()
    cluster.shutdown()
    if saved is None:
        os.environ.pop("RAY_ADDRESS", None)
    else:
        os.environ["RAY_ADDRESS"] = saved


@pytest.fixture(scope="session")
def loaded_tiny(circuitray_home):
    from circuitray.models.loading import ModelSpec, load_replacement_model

    return load_replacement_model(ModelSpec(model="tiny"))


@pytest.fixture(scope="session")
def loaded_tiny_clt(circuitray_home):
    from circuitray.models.loading import ModelSpec, load_replacement_model

    return load_replacement_model(ModelSpec(model="tiny", transcoders="cross-layer"))


@dataclass
class RayRun:
    """The session's shared Ray run: its inputs, folder and result."""

    prompts: Path
    out: Path
    rows: list[dict]
    config: object
    result: object


@pytest.fixture(scope="session")
def ray_run(circuitray_home, tmp_path_factory) -> RayRun:
    from circuitray import ModelSpec, RunConfig, generate_ws2, run, write_prompts

    root = tmp_path_factory.mktemp("ray_run")
    rows = generate_ws2(n=N_RAY_PROMPTS, seed=5)
    prompts = write_prompts(rows, root / "ws2.parquet")
    out = root / "ws2run"
    config = RunConfig(
        prompts=str(prompts),
        out=str(out),
        model=ModelSpec(model="tiny"),
        actors=2,
        batch_size=4,
    )
    result = run(config)
    return RayRun(prompts=prompts, out=out, rows=rows, config=config, result=result)


# The home `make setup` built (the Makefile's CIRCUITRAY_HOME, or the one it recorded
# in this environment), read before the session fixture points CIRCUITRAY_HOME away.
from circuitray.models.registry import circuitray_home as _home  # noqa: E402

SETUP_HOME = _home()


@pytest.fixture
def micro() -> dict:
    """OrganismConfig fields that build in seconds, far below every threshold: for
    what the build does, not how well it learns."""
    return {
        "n_layers": 2,
        "d_model": 32,
        "d_mlp": 64,
        "n_filler": 400,
        "base_steps": 20,
        "tuned_max_steps": 60,
        "tuned_check_every": 10,
        "tuned_anneal_steps": 10,
        "batch_size": 16,
        "transcoders": {"d_transcoder": 64, "steps": 20, "batch_size": 128},
        "n_transcoder_texts": 100,
        "n_graph_samples": 1,
        "threads": 1,
    }


@pytest.fixture
def cli() -> list[str]:
    """The ``circuitray`` console script of the test interpreter's environment."""
    from circuitray.organism.matrix import circuitray_command

    return circuitray_command()


# What of a home the organism build owns (circuitray.organism.build._artifact_dirs).
ORGANISM_FILES = (
    "models/organism-report.json",
    "models/organism-base",
    "models/organism-tuned",
    "models/organism-finetune",
    "transcoders/circuitray/organism",
    "transcoders/circuitray/organism-clt",
)


# Gemma-3-270m as `make real` builds it (seeded where it was built; built otherwise).
GEMMA3_270M_FILES = (
    "models/gemma-3-270m-build.json",
    "models/gemma-3-270m-report.json",
    "models/gemma-3-270m",
    "transcoders/circuitray/gemma-3-270m",
)
# What `make setup` builds of llama2.c's stories260K (circuitray.models.builders.real).
STORIES260K_FILES = (
    "models/stories260k-build.json",
    "models/stories260k-report.json",
    "models/stories260k",
    "transcoders/circuitray/stories260k",
    "transcoders/circuitray/stories260k-clt",
)


def seed_organism(
    dst: Path, src: Path = SETUP_HOME, files: tuple[str, ...] = ORGANISM_FILES
) -> bool:
    """Copy the organism (or other ``files``) ``make setup`` built in ``src`` into the
    home ``dst``; whether anything was there to copy. The build in ``dst`` decides
    whether the copy is its own (its key: config, code, torch, CPU kernels; its
    digests) or rebuilds."""
    if src.resolve() == dst.resolve() or not (src / files[0]).is_file():
        return False
    for rel in files:
        source, target = src / rel, dst / rel
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        elif source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return True


@pytest.fixture(scope="session")
def stories260k(circuitray_home) -> Path:
    """stories260K's folder as ``make setup`` builds it (seeded from the set-up's home,
    reused through its key; built here otherwise); skipped only where this project's
    shared files are absent."""
    from circuitray.errors import CircuitrayError
    from circuitray.models.builders.real import REAL_MODELS, build_real, find_source

    try:
        find_source(REAL_MODELS["stories260k"])
    except CircuitrayError as e:
        pytest.skip(str(e))
    seed_organism(circuitray_home, files=STORIES260K_FILES)
    return build_real(name="stories260k")["model"]


@pytest.fixture(scope="session")
def organism_report(circuitray_home):
    """The WS2 organism as ``make setup`` builds it: ``circuitray organism build
    --json`` in a fresh process into the test home. Seeded with the organism the
    set-up built, it is reused in seconds when its build key matches (same recipe,
    code, torch and CPU kernels), and built here otherwise (~1.5 min on 2 Intel
    cores). The recipe on other kernels is ``tests/organism/test_build.py``'s."""
    import json

    from circuitray.organism.matrix import circuitray_command

    seed_organism(circuitray_home)
    proc = subprocess.run(
        [*circuitray_command(), "organism", "build", "--json"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=1800,
    )
    # Exit 2 is a build below thresholds: its report still says which, test by test.
    assert proc.returncode in (0, 2), proc.stderr[-3000:]
    return json.loads(proc.stdout)


@dataclass
class OrganismRuns:
    """pipelines/ws2_base_vs_tuned.py on 12 prompts: run folders and what it printed."""

    base: Path
    tuned: Path
    stdout: str


@pytest.fixture(scope="session")
def organism_runs(organism_report, tmp_path_factory) -> OrganismRuns:
    """The base-vs-tuned pipeline, run once per session as a user runs it."""
    import subprocess

    out = tmp_path_factory.mktemp("organism_runs") / "pipeline"
    script = Path(__file__).resolve().parents[1] / "pipelines" / "ws2_base_vs_tuned.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--n", "12", "--out-root", str(out), "--actors", "1"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return OrganismRuns(base=out / "base", tuned=out / "tuned", stdout=proc.stdout)


# A small synthetic run folder (circuitray.bench.synthetic) in the real schema: the
# synthetic-run tests and the query-timing benchmark's read it.
SYNTHETIC_SPEC = SyntheticSpec(edges=20_011, edges_per_graph=500, nodes_per_graph=120, n_layers=6)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, dict]:
    """(run folder, counts) of :data:`SYNTHETIC_SPEC`, written once per test module."""
    out = tmp_path_factory.mktemp("synthetic") / "syn"
    return out, make_synthetic_run(str(out), SYNTHETIC_SPEC)


# The 26-layer gemma-2-2b-shaped model at 1/16 width (circuitray.models.builders.synthetic),
# built once per session (as `python -m benchmarks suite` builds it).
SYNTHETIC_GEMMA = "synthetic-gemma-2-2b-s0.0625"


@pytest.fixture(scope="session")
def synthetic_gemma(circuitray_home) -> dict:
    from circuitray.models.builders.synthetic import build_synthetic

    return build_synthetic(like="gemma-2-2b", scale=0.0625)


@pytest.fixture(scope="session")
def organism_features(organism_report, tmp_path_factory) -> Path:
    """The organism's feature table (``circuitray features build``'s code, a small
    corpus: 60 WS2 prompts and 60 filler sentences) in a folder of its own: a test
    that wants labels points ``CIRCUITRAY_FEATURES_DIR`` there, the others see none."""
    from circuitray.features.build import build_features, organism_corpus
    from circuitray.models.loading import ModelSpec

    folder = tmp_path_factory.mktemp("features")
    saved = os.environ.get("CIRCUITRAY_FEATURES_DIR")
    os.environ["CIRCUITRAY_FEATURES_DIR"] = str(folder)
    try:
        build_features(
            spec=ModelSpec(model="organism-tuned", device="cpu"),
            texts=organism_corpus(n_prompts=60, n_filler=60),
            corpus_name="test corpus",
        )
    finally:
        if saved is None:
            os.environ.pop("CIRCUITRAY_FEATURES_DIR")
        else:
            os.environ["CIRCUITRAY_FEATURES_DIR"] = saved
    return folder
