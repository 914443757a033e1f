"""ZeroMatrix holds zeros between uses, hands written pages back, and never hands out a
half-written buffer."""

from __future__ import annotations

import mmap
import sys

import pytest
import torch

import circuitray.graph.zeropage
from circuitray.graph.zeropage import ZeroMatrix

CPU = torch.device("cpu")
CAPACITY = 3_000 * 3_000


@pytest.fixture(params=["zero pages", "plain buffer"])
def mode(request, monkeypatch):
    """Both implementations of the contract: Linux zero pages and the zeroing fallback."""
    if request.param == "plain buffer":
        monkeypatch.setattr(circuitray.graph.zeropage, "_HAS_ZERO_PAGES", False)
    circuitray.graph.zeropage._local.__dict__.pop("matrices", None)
    yield request.param
    circuitray.graph.zeropage._local.__dict__.pop("matrices", None)


def _anon_rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


def test_written_rows_and_prefix_read_as_zeros_again(mode):
    g = torch.Generator().manual_seed(0)
    # Row lengths that are and are not multiples of a page, rows at both ends.
    for n in (1024, 2737, 3000, 17, 2066):
        with ZeroMatrix.acquire(n, CPU, capacity=CAPACITY) as zeros:
            assert zeros.uses_zero_pages == (mode == "zero pages")
            matrix = zeros.view(n)
            assert not matrix.any()
            rows = torch.randperm(n, generator=g)[: max(1, n // 9)].sort().values
            rows = torch.unique(torch.cat([rows, torch.tensor([0, n - 1])]))
            zeros.dirty_rows(rows, n)
            matrix[rows] = torch.rand(len(rows), n, generator=g) + 1.0
            zeros.release()
            assert not matrix.any(), n
            prefix = min(n * n, 5 * n + 3)
            zeros.dirty_prefix(prefix)
            matrix.view(-1)[:prefix] = 7.0
        with ZeroMatrix.acquire(n, CPU, capacity=CAPACITY) as zeros:
            assert not zeros.flat.any(), n


def test_an_exception_drops_the_half_written_matrix(mode):
    with pytest.raises(RuntimeError), ZeroMatrix.acquire(100, CPU, capacity=CAPACITY) as zeros:
        zeros.view(100)[3] = 1.0  # written but never marked dirty: only a drop clears it
        raise RuntimeError("fails half-way")
    with ZeroMatrix.acquire(100, CPU, capacity=CAPACITY) as zeros:
        assert not zeros.flat.any()


def test_an_interrupted_release_drops_the_matrix(mode, monkeypatch):
    # A KeyboardInterrupt (or an OSError from madvise) inside release() must not leave
    # a dirty matrix cached for the next caller.
    def interrupted(self):
        raise KeyboardInterrupt

    with ZeroMatrix.acquire(100, CPU, capacity=CAPACITY) as zeros:
        pass
    monkeypatch.setattr(ZeroMatrix, "release", interrupted)
    with pytest.raises(KeyboardInterrupt), ZeroMatrix.acquire(100, CPU, capacity=CAPACITY) as z:
        z.dirty_prefix(50)
        z.view(100).view(-1)[:50] = 3.0
    monkeypatch.undo()
    with ZeroMatrix.acquire(100, CPU, capacity=CAPACITY) as fresh:
        assert fresh is not zeros and not fresh.flat.any()


def test_too_large_a_matrix_is_refused():
    with (
        pytest.raises(ValueError, match="does not fit"),
        ZeroMatrix.acquire(3_001, CPU, capacity=CAPACITY),
    ):
        pass


@pytest.fixture
def fresh():
    circuitray.graph.zeropage._local.__dict__.pop("matrices", None)
    yield
    circuitray.graph.zeropage._local.__dict__.pop("matrices", None)


def test_released_pages_cost_no_memory(fresh):
    # The project runs on Linux (Ray, /proc): there the mapping must be zero pages.
    assert circuitray.graph.zeropage._HAS_ZERO_PAGES, sys.platform
    n = 3_000
    with ZeroMatrix.acquire(n, CPU, capacity=CAPACITY) as zeros:
        matrix = zeros.view(n)
        assert float(matrix.sum()) == 0.0  # reading maps the zero page, not memory
        before = _anon_rss_kb()
        rows = torch.arange(0, n, 2)
        zeros.dirty_rows(rows, n)
        matrix[rows] = 1.0  # 18 MB of rows
        written = _anon_rss_kb() - before
        zeros.release()
        released = _anon_rss_kb() - before
    assert written > 15_000, written
    assert released < 2_000, released


def test_dirty_page_ranges_are_aligned_merged_and_cover_every_write(fresh):
    n = 2_737
    with ZeroMatrix.acquire(n, CPU, capacity=CAPACITY) as zeros:
        zeros.dirty_rows(torch.tensor([0, 1, 2, 500, 501, 2_736]), n)
        zeros.dirty_prefix(10)
        ranges = zeros._dirty_page_ranges()
        zeros.release()
    page = mmap.PAGESIZE
    assert all(s % page == 0 and e % page == 0 and e > s for s, e in ranges)
    assert all(e0 < s1 for (_, e0), (s1, _) in zip(ranges, ranges[1:], strict=False))
    covered = [(s // 4, e // 4) for s, e in ranges]
    for row in (0, 1, 2, 500, 501, 2_736):
        first, last = row * n, (row + 1) * n - 1
        assert any(s <= first and last < e for s, e in covered), row
