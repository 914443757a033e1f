"""The README's commands as printed: after ``make setup``, its first CLI examples run
from a fresh folder outside the checkout, with the environment a user's shell has (no
``CIRCUITRAY_HOME``: the CLI finds the home the set-up recorded in its environment)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from circuitray import RunStore
from circuitray.models.registry import recorded_home_file

README = Path(__file__).resolve().parents[1] / "README.md"
# What the suite sets for itself and a user's shell would not have (RAY_ADDRESS: the
# suite's shared Ray).
SUITE_ONLY = (
    "CIRCUITRAY_HOME",
    "CIRCUIT_TRACER_CACHE_DIR",
    "CIRCUITRAY_FEATURES_DIR",
    "RAY_ADDRESS",
    "RAY_AUTH_MODE",  # a new user has not chosen: Ray's default (token) applies
)


def readme_cli_commands() -> list[str]:
    """The commands of the README's first CLI block, comments dropped."""
    section = README.read_text().split("## The CLI", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_the_first_cli_examples_work_from_a_fresh_folder(tmp_path):
    recorded = recorded_home_file()
    assert recorded.is_file(), f"{recorded} missing: run make setup first"
    ws2, run = readme_cli_commands()[:2]
    assert ws2.startswith("circuitray ws2 --n 500 ") and run.startswith("circuitray run "), (
        ws2,
        run,
    )
    ws2 = ws2.replace("--n 500 ", "--n 4 ", 1)  # as printed, on 4 prompts
    env = {k: v for k, v in os.environ.items() if k not in SUITE_ONLY}
    env["HOME"] = str(tmp_path / "user")  # a new user: nothing in ~/.cache yet
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    folder = tmp_path / "fresh"
    folder.mkdir()
    for command in (ws2, run):
        proc = subprocess.run(
            command, shell=True, cwd=folder, env=env, capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, (command, proc.stderr[-2000:])
        # Ray's notice about the authentication it turned on, at every start of the
        # local Ray circuitray starts itself, is not printed (nothing to act on).
        assert "Token authentication is enabled" not in proc.stderr + proc.stdout, proc.stderr
    graphs = RunStore(folder / "runs" / "tuned").read_graphs(["status"]).to_pylist()
    assert [g["status"] for g in graphs] == ["ok"] * 4
    assert not (tmp_path / "user" / ".cache" / "circuitray").exists()  # nothing rebuilt
