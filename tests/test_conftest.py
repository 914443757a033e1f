"""The suite's own set-up (tests/conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import conftest


def test_openmp_waiters_sleep_in_the_suite():
    """conftest sets OMP_WAIT_POLICY before anything loads torch (libgomp reads it
    once, at load: set later, it would silently do nothing); every subprocess, Ray
    cluster and actor the tests start inherits it."""
    assert not conftest.TORCH_BEFORE_CONFTEST
    assert os.environ["OMP_WAIT_POLICY"] == (conftest.OMP_WAIT_POLICY_GIVEN or "PASSIVE")


def test_longest_scopes_start_first_and_stay_together():
    scopes = {"tests/a.py": "group", "tests/b.py": "group", "tests/c.py": "tests/c.py"}
    slow = next(iter(conftest.SLOW_TESTS))
    ids = [
        "tests/d.py::test_alone",
        "tests/a.py::test_1",
        "tests/c.py::test_1",
        "tests/c.py::test_2",
        "tests/b.py::test_1",
        "tests/e.py::test_alone",
        slow,
    ]
    assert conftest.longest_scopes_first(ids, scopes) == [
        slow,  # one test, but the slowest known
        "tests/a.py::test_1",  # a group of 2 tests, in the collection's order
        "tests/b.py::test_1",
        "tests/c.py::test_1",
        "tests/c.py::test_2",
        "tests/d.py::test_alone",  # 1 s each: the collection's order
        "tests/e.py::test_alone",
    ]


def test_every_slow_test_named_exists():
    """A renamed or removed test must leave SLOW_TESTS too (else its figure is dead)."""
    root = Path(conftest.__file__).resolve().parents[1]
    for key in conftest.SLOW_TESTS:
        path, name = key.split("::", 1)
        name = name.split("[", 1)[0]
        assert f"def {name}" in (root / path).read_text(), key
