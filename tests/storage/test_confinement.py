"""A hostile or foreign run folder: nothing outside it is read, written or deleted, and
a folder whose parts nothing describes is not adopted (issue 17, findings 2 and 3).

Each case is run through the ``circuitray`` command, as a user would, on a small run
folder written with the storage API (no Ray needed to make it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import assert_refused, circuitray
from test_run_store import _part

from circuitray.storage.run_store import RunStore


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run folder of two committed parts (compaction has work to do)."""
    store = RunStore(tmp_path / "run")
    store.write_meta({"format": "circuitray-run/1", "status": "complete"})
    store.write_part("part-a", _part([0, 1]))
    store.write_part("part-b", _part([2, 3]))
    return tmp_path / "run"


@pytest.fixture
def victim(tmp_path) -> Path:
    """A file outside the run folder that nothing may touch."""
    outside = tmp_path / "outside"
    outside.mkdir()
    path = outside / "victim.parquet"
    path.write_text("precious\n")
    return path


def test_compaction_log_cannot_name_files_outside_the_folder(run_dir, victim):
    log = {"token": "x", "new": [], "old": ["../../outside/victim"]}
    (run_dir / "compaction.json").write_text(json.dumps(log))
    p = circuitray("compact", run_dir)
    assert_refused(p, "compaction.json", "../../outside/victim")
    assert victim.read_text() == "precious\n"
    p = circuitray("sql", run_dir, "SELECT count(*) FROM graphs")
    assert_refused(p, "compaction.json")
    assert victim.read_text() == "precious\n"


def test_compaction_log_that_is_not_one_is_named(run_dir):
    (run_dir / "compaction.json").write_text("{not json")
    assert_refused(circuitray("compact", run_dir), "compaction.json", "not JSON")


@pytest.mark.parametrize(
    "log",
    [{"old": ["part-a"]}, {"old": ["part-a"], "new": "part-b"}, {"old": [1], "new": []}, []],
)
def test_compaction_log_without_both_lists_is_named(run_dir, log):
    (run_dir / "compaction.json").write_text(json.dumps(log))
    for args in (["compact", run_dir], ["sql", run_dir, "SELECT count(*) FROM graphs"]):
        assert_refused(circuitray(*args), "compaction.json", "no old/new part names")


def test_lock_that_is_a_link_is_not_followed(run_dir, victim):
    (run_dir / ".lock").symlink_to(victim)
    p = circuitray("compact", run_dir)
    assert_refused(p, ".lock", "symbolic link")
    assert victim.read_text() == "precious\n"


def test_table_folder_that_is_a_link_is_not_cleaned(run_dir, victim):
    # An orphan-looking file behind a linked table folder: clean-up would delete it.
    real_nodes = run_dir / "nodes"
    os.rename(real_nodes, run_dir / "nodes-moved")
    (run_dir / "nodes").symlink_to(victim.parent, target_is_directory=True)
    p = circuitray("compact", run_dir)
    assert_refused(p, "nodes", "symbolic link")
    assert victim.read_text() == "precious\n"


def test_part_file_that_is_a_link_is_not_read(run_dir, victim):
    graphs = run_dir / "graphs"
    (graphs / "part-a.parquet").unlink()
    (graphs / "part-a.parquet").symlink_to(victim)
    assert_refused(circuitray("sql", run_dir, "SELECT 1"), "part-a.parquet", "symbolic link")


def test_folder_with_parts_but_no_run_json_is_not_adopted(run_dir, tmp_path):
    (run_dir / "run.json").unlink()
    prompts = tmp_path / "other.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt_id": f"q{i}", "prompt": "not tall but"}) + "\n" for i in range(4)
        )
    )
    before = sorted(str(p) for p in run_dir.rglob("*"))
    p = circuitray("run", prompts, "--out", run_dir, "--model", "tiny", "--json")
    assert_refused(p, str(run_dir), "no run.json")
    assert sorted(str(p) for p in run_dir.rglob("*") if p.name != ".lock") == [
        b for b in before if not b.endswith(".lock")
    ]
    assert not (run_dir / "run.json").exists()


@pytest.mark.parametrize("table", ["graphs", "edges"])
def test_a_torn_part_is_named_and_set_aside_by_repair(run_dir, table):
    """Issue 17, finding 5: a 0-byte part gave "internal error ArrowInvalid" on sql
    and resume, and compact reported success doing nothing."""
    (run_dir / table / "part-b.parquet").write_bytes(b"")
    for args in (["sql", run_dir, f"SELECT count(*) FROM {table}"], ["compact", run_dir]):
        p = circuitray(*args)
        assert_refused(p, f"{table}/part-b.parquet", "unreadable part", "compact --repair")
    p = circuitray("compact", run_dir, "--repair", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["quarantined"] == ["part-b"]
    assert (run_dir / "quarantine" / table / "part-b.parquet").exists()
    store = RunStore(run_dir)
    assert sorted(store.graph_status()) == [0, 1]  # part-b's prompts are pending again
    p = circuitray("sql", run_dir, "SELECT count(*) AS n FROM graphs", "--format", "json")
    assert p.returncode == 0 and json.loads(p.stdout) == [{"n": 2}], p.stderr


def test_repair_does_not_follow_a_quarantine_link(run_dir, victim):
    (run_dir / "nodes" / "part-b.parquet").write_bytes(b"")
    (run_dir / "quarantine").symlink_to(victim.parent, target_is_directory=True)
    assert_refused(circuitray("compact", run_dir, "--repair"), "quarantine", "symbolic link")
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim.parquet"]
    assert (run_dir / "graphs" / "part-b.parquet").exists()


@pytest.mark.parametrize("entry", ["graphs", "run.json"])
def test_read_only_commands_refuse_a_linked_entry(run_dir, tmp_path, entry):
    """sql, query and export read only the folder's own files: a table folder or
    run.json that is a link elsewhere is refused, not read through."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / entry
    os.replace(run_dir / entry, target)
    (run_dir / entry).symlink_to(target, target_is_directory=target.is_dir())
    for args in (
        ["sql", run_dir, "SELECT count(*) FROM graphs"],
        ["query", "constraint_stats", run_dir],
        ["export", run_dir, "--graph", "0", "--out", tmp_path / "view"],
    ):
        assert_refused(circuitray(*args), entry, "symbolic link")


def test_export_slug_cannot_name_a_path(run_dir, tmp_path):
    p = circuitray("export", run_dir, "--graph", "0", "--out", tmp_path / "v", "--slug", "../x")
    assert_refused(p, "--slug", "letters, digits")
    assert not (tmp_path / "x.json").exists()
