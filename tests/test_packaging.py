"""What an install gives: the wheel carries the query library, and the query side
(query, compare, storage, schema, the ``circuitray query``/``sql`` commands) runs
without torch, transformers or Ray."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SQL = REPO / "circuitray" / "query" / "sql"
STATIC = REPO / "circuitray" / "outputs" / "static"
HEAVY = ("torch", "transformers", "ray")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.pop("CIRCUITRAY_QUERIES_DIR", None)
    return {**env, **extra}


def test_queries_folder_is_the_package_library():
    """One set of files: ``queries/`` in a checkout is the package's ``query/sql``."""
    assert (REPO / "queries").resolve() == SQL.resolve()
    assert sorted(p.name for p in SQL.glob("*.sql"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from a copy of this checkout, installed into its own folder."""
    root = tmp_path_factory.mktemp("wheel")
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    src = root / "src"
    for name in filter(None, files):
        path = REPO / name
        if not path.exists() and not path.is_symlink():
            continue  # deleted in the working tree
        dst = src / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            dst.symlink_to(os.readlink(path))
        elif path.is_file():
            shutil.copy2(path, dst)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(root / "dist"), str(src)],
        check=True,
        capture_output=True,
        env=_clean_env(),
    )
    (wheel,) = (root / "dist").glob("circuitray-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"circuitray/query/sql/{p.name}" for p in SQL.glob("*.sql")} <= set(names)
    # circuitray serve's viewer: every file of it, d3 and its licence included.
    static = {
        f"circuitray/outputs/{p.relative_to(STATIC.parent)}"
        for p in STATIC.rglob("*")
        if p.is_file()
    }
    assert "circuitray/outputs/static/vendor/d3-7.9.0.min.js" in static
    assert static <= set(names), static - set(names)
    # The development benchmarks (benchmarks/) stay in the checkout; the wheel carries
    # the ones a user runs on their own machine (circuitray bench gpu, processes, scale,
    # make-edges) and nothing else of them.
    assert not [n for n in names if n.startswith("benchmarks/")]
    bench = {
        n.removeprefix("circuitray/bench/")
        for n in names
        if n.startswith("circuitray/bench/") and n.endswith(".py")
    }
    assert bench == {
        "__init__.py",
        "environment.py",
        "gpu.py",
        "gpu_report.py",
        "processes.py",
        "scale.py",
        "scale_worker.py",
        "synthetic.py",
    }, bench
    target = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target)]
        + [str(wheel)],
        check=True,
        capture_output=True,
        env=_clean_env(),
    )
    return target


def _from_install(target: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed ``circuitray`` console script, importing only from ``target``
    (the project's dependencies come from this environment)."""
    script = target / "bin" / "circuitray"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "circuitray.cli"]
    return subprocess.run(
        [*cmd, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_clean_env(PYTHONPATH=str(target)),
        timeout=300,
    )


def test_wheel_install_lists_and_answers_every_named_query(installed, ray_run, tmp_path):
    where = subprocess.run(
        [sys.executable, "-c", "import circuitray.query.engine as e; print(e.queries_dir())"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_clean_env(PYTHONPATH=str(installed)),
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(installed), where  # not this checkout

    p = _from_install(installed, "query", "--list", "--format", "json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    listed = {q["name"] for q in json.loads(p.stdout)}
    assert listed == {f.stem for f in SQL.glob("*.sql")}

    for name in sorted(listed - {"intervention_effects"}):  # that one reads interventions
        p = _from_install(
            installed, "query", name, str(ray_run.out), "--format", "json", cwd=tmp_path
        )
        assert p.returncode == 0, (name, p.stderr)
        rows = json.loads(p.stdout)
        assert isinstance(rows, list), name
        if name == "constraint_stats":
            assert sum(r["graphs"] for r in rows) == ray_run.result.ok
    p = _from_install(
        installed,
        "sql",
        str(ray_run.out),
        "SELECT count(*) AS n FROM graphs",
        "--format",
        "json",
        cwd=tmp_path,
    )
    assert p.returncode == 0 and json.loads(p.stdout) == [{"n": ray_run.result.total}], p.stderr


QUERY_SIDE = """
import json, sys
HEAVY = ("torch", "transformers", "ray")
from circuitray.query import run_query, run_sql
from circuitray.query.compare import CompareConfig, compare_groups
from circuitray.storage import RunStore
import circuitray.schema
import circuitray.cli.storage, circuitray.cli.outputs, circuitray.cli.prompts
run = sys.argv[1]
stats = run_query("constraint_stats", [run]).to_pylist()
n = run_sql([run], "SELECT count(*) AS n FROM edges").to_pylist()[0]["n"]
compare_groups(run, config=CompareConfig(n_boot=100))
RunStore(run).read_meta()
from circuitray.cli import main
sys.argv = ["circuitray", "query", "constraint_stats", run, "--format", "json"]
try:
    main()
except SystemExit as e:
    assert not e.code, e.code
print(json.dumps({"loaded": [m for m in HEAVY if m in sys.modules], "n_graphs":
    sum(r["graphs"] for r in stats), "edges": n}))
"""


def test_query_side_imports_no_torch_transformers_or_ray(ray_run, tmp_path):
    p = subprocess.run(
        [sys.executable, "-c", QUERY_SIDE, str(ray_run.out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_clean_env(),
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    record = json.loads(p.stdout.strip().splitlines()[-1])
    assert record["loaded"] == [], record
    assert record["n_graphs"] == ray_run.result.ok and record["edges"] > 0
