"""Whole-process query timings (``circuitray bench processes RUN_DIR``): what a user
waits for when typing ``circuitray query`` or ``circuitray sql``, next to the least a
bare DuckDB process does for the same answer.

1. Commands (:class:`ProcessBenchConfig`): ``circuitray query constraint_stats RUN``
   and ``circuitray sql RUN "SELECT count(*) FROM edges"``, each run as its own process
   through the installed ``circuitray`` entry point, so the figure holds everything:
   interpreter start, imports, the CLI, the views, the query and printing its table.
2. Bare side: ``python -c`` :data:`BARE_PROCESS` (``import duckdb``, stdlib ``json``
   and nothing else), which runs the very statements circuitray runs, taken from its
   engine: the views of :func:`circuitray.query.engine.view_sql`, then for a named
   query the statements of :func:`circuitray.query.engine.query_statements` (its
   ``uses:`` tables, then the query, with the bound parameters), for ``sql`` the SQL
   as given. The statements come on stdin as JSON (no argv length limit); the rows go
   to stdout as JSON. Only circuitray's own guard of ``circuitray sql`` (checking the
   statements are read-only and locking the configuration) is not repeated.
3. Answers: each command first runs once untimed on both sides (this also warms the
   page cache), circuitray with ``--format json``; the two answers must be equal
   (floats to 1e-9 relative: DuckDB's parallel sums may differ in the last bits),
   else :class:`CircuitrayError`.
4. Timing: ``repeats`` rounds; in each, every command runs once on each side, fresh
   processes timed from spawn to exit, the side that goes first alternating between
   rounds so drift on a shared machine hits both. Each round also times the floor,
   ``python -c "import duckdb"``. Figures are medians; the ratio circuitray / bare of
   each command is measured side by side and compared with ``goal_ratio`` (3x).
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from circuitray.bench.environment import git_commit, host_info
from circuitray.errors import CircuitrayError, RunDirError
from circuitray.machine import cpu_model, package_versions

logger = logging.getLogger(__name__)

__all__ = [
    "BARE_PROCESS",
    "ProcessBenchConfig",
    "circuitray_command",
    "run_counts",
    "time_query_processes",
]

BARE_PROCESS = r"""
import json, sys
import duckdb
spec = json.load(sys.stdin)
con = duckdb.connect(":memory:")
for sql in spec["views"]:
    con.execute(sql)
for sql, params in spec["statements"]:
    cursor = con.execute(sql, params or None)
columns = [d[0] for d in cursor.description]
print(json.dumps([dict(zip(columns, row)) for row in cursor.fetchall()], default=str))
"""
FLOOR_PROCESS = "import duckdb"


@dataclass
class ProcessBenchConfig:
    """What :func:`time_query_processes` times.

    Attributes:
        query: Named query timed as ``circuitray query QUERY RUN_DIR``.
        sql: SQL timed as ``circuitray sql RUN_DIR SQL``.
        repeats: Timed rounds (each: every command once on each side).
        goal_ratio: Goal for each command's median time, circuitray / bare.
        timeout_s: Longest one process may take.
    """

    query: str = "constraint_stats"
    sql: str = "SELECT count(*) FROM edges"
    repeats: int = 5
    goal_ratio: float = 3.0
    timeout_s: float = 600.0


def circuitray_command() -> list[str]:
    """How to start circuitray's CLI: the console script next to this interpreter (what
    a user types), else ``python -m circuitray.cli``."""
    script = Path(sys.executable).with_name("circuitray")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "circuitray.cli"]


def _run(argv: list[str], *, stdin: str | None, timeout_s: float) -> tuple[float, str]:
    """Run one process to its end; (wall seconds from spawn to exit, stdout)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise CircuitrayError(f"{argv[:3]}... exited with {proc.returncode}: {tail}")
    return seconds, proc.stdout


def _same(a: Any, b: Any) -> bool:
    """Equal answers; floats to 1e-9 relative (parallel sums differ in the last bits)."""
    if isinstance(a, float) and isinstance(b, float):
        both_nan = math.isnan(a) and math.isnan(b)
        return both_nan or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


@dataclass
class _Command:
    """One command: circuitray's argv and the bare process's statements."""

    name: str
    argv: list[str]
    spec: str

    def check(self, *, timeout_s: float) -> list[dict]:
        """Run both sides once, untimed; the answer, if both gave the same."""
        _, theirs = _run([*self.argv, "--format", "json"], stdin=None, timeout_s=timeout_s)
        _, bare = _run([sys.executable, "-c", BARE_PROCESS], stdin=self.spec, timeout_s=timeout_s)
        answer, bare_answer = json.loads(theirs), json.loads(bare)
        if not _same(answer, bare_answer):
            raise CircuitrayError(
                f"{self.name}: circuitray and the bare DuckDB process disagree: "
                f"{str(answer)[:300]} vs {str(bare_answer)[:300]}"
            )
        return answer


def _spread(seconds: list[float]) -> dict[str, Any]:
    return {
        "seconds": seconds,
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
    }


def _time_rounds(
    commands: list[_Command], *, config: ProcessBenchConfig
) -> tuple[dict[str, dict[str, list[float]]], list[float]]:
    """Step 4: ``repeats`` rounds, each the floor process then, per command, circuitray
    ("c") and the bare process ("b") in alternating order; their wall times."""
    times: dict[str, dict[str, list[float]]] = {c.name: {"c": [], "b": []} for c in commands}
    floor: list[float] = []
    bare_argv = [sys.executable, "-c", BARE_PROCESS]
    for r in range(config.repeats):
        logger.info("round %d/%d", r + 1, config.repeats)
        floor.append(
            _run([sys.executable, "-c", FLOOR_PROCESS], stdin=None, timeout_s=config.timeout_s)[0]
        )
        for c in commands:
            sides = [("c", c.argv, None), ("b", bare_argv, c.spec)]
            order = sides if r % 2 == 0 else sides[::-1]
            for side, argv, stdin in order:
                times[c.name][side].append(_run(argv, stdin=stdin, timeout_s=config.timeout_s)[0])
    return times, floor


def time_query_processes(
    run_dir: str | Path, *, config: ProcessBenchConfig | None = None
) -> dict[str, Any]:
    """Steps 1-4 of the module docstring on ``run_dir``; a JSON-ready record with, per
    command, each side's argv and timings, the ratio, the goal and whether it is met."""
    from circuitray.query.engine import query_statements, view_sql
    from circuitray.storage.run_store import RunStore

    config = config or ProcessBenchConfig()
    run = str(run_dir)
    if not RunStore(run).exists():
        raise RunDirError(
            f"{run}: no run folder here (no run.json); make the default run first "
            "(make run), or give another RUN_DIR"
        )
    started = datetime.now(UTC)
    views = view_sql([run])
    cli = circuitray_command()
    commands = [
        _Command(
            f"query {config.query}",
            [*cli, "query", config.query, run],
            json.dumps({"views": views, "statements": query_statements(config.query)}),
        ),
        _Command(
            "sql",
            [*cli, "sql", run, config.sql],
            json.dumps({"views": views, "statements": [(config.sql, {})]}),
        ),
    ]
    answers = {}
    for c in commands:
        logger.info("%s: checking both answers (untimed)", c.name)
        answers[c.name] = c.check(timeout_s=config.timeout_s)

    times, floor = _time_rounds(commands, config=config)
    bare_argv = [sys.executable, "-c", BARE_PROCESS]
    graphs, edges = run_counts(run)
    results = {}
    for c in commands:
        ours, bare = _spread(times[c.name]["c"]), _spread(times[c.name]["b"])
        ratio = ours["median_s"] / bare["median_s"]
        results[c.name] = {
            "circuitray": {"argv": c.argv, **ours},
            "bare": {"argv": [*bare_argv[:2], "BARE_PROCESS"], **bare},
            "ratio": ratio,
            "round_ratios": [
                a / b for a, b in zip(times[c.name]["c"], times[c.name]["b"], strict=True)
            ],
            "goal": f"<= {config.goal_ratio:g}",
            "met": bool(ratio <= config.goal_ratio),
            "same_answer": True,
            "rows": len(answers[c.name]),
            "answer": answers[c.name] if len(answers[c.name]) <= 20 else None,
        }
    return {
        "format": "circuitray-bench-processes/1",
        "started_at": started.isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "machine": {
            **host_info(),
            "cpu_model": cpu_model(),
            "versions": package_versions(("circuitray", "duckdb", "pyarrow", "click", "rich")),
            "loadavg": list(os.getloadavg()),
        },
        "run_dir": run,
        "graphs": graphs,
        "edges": edges,
        "config": asdict(config),
        "floor": {"argv": [sys.executable, "-c", FLOOR_PROCESS], **_spread(floor)},
        "commands": results,
        "ratios": {name: v["ratio"] for name, v in results.items()},
        "goals_met": all(v["met"] for v in results.values()),
    }


def run_counts(run_dir: str) -> tuple[int, int]:
    """(graphs, edges) of the run folder ``run_dir``, as its views count them."""
    from circuitray.query.engine import connect

    con = connect([run_dir])
    try:
        counts = con.execute("SELECT count(*), (SELECT count(*) FROM edges) FROM graphs").fetchone()
    finally:
        con.close()
    graphs, edges = counts or (0, 0)
    return int(graphs), int(edges)
