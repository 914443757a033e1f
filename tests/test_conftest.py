"""The suite's own set-up (tests/conftest.py)."""

from __future__ import annotations

import os

import conftest


def test_openmp_waiters_sleep_in_the_suite():
    """conftest sets OMP_WAIT_POLICY before anything loads torch (libgomp reads it
    once, at load: set later, it would silently do nothing); every subprocess, Ray
    cluster and actor the tests start inherits it."""
    assert not conftest.TORCH_BEFORE_CONFTEST
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
