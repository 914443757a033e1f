"""An N x N float32 matrix of zeros that is cheap to read where it stays zero.

Exact pruning must run circuit-tracer's dense ``compute_influence`` on the pruned
matrix, which is zero outside its K kept rows (K ~ N / 10): a dense buffer makes every
one of its ~7 vector-matrix products stream N^2 floats from memory. On Linux, pages of
a private anonymous mapping that were never written (or were handed back with
``MADV_DONTNEED``) read as the kernel's single shared zero page, which stays in cache:
the same products then read memory only for the K written rows. The values are the
same zeros, so every result is bit for bit what a dense zero buffer gives.

1. :meth:`ZeroMatrix.acquire` maps one matrix per thread, big enough for
   ``capacity`` floats, once (virtual memory only: untouched pages cost nothing).
2. The caller writes rows and a prefix of the flat view, and says which, with
   :meth:`ZeroMatrix.dirty_rows` / :meth:`ZeroMatrix.dirty_prefix`.
3. :meth:`ZeroMatrix.release` hands the written pages back (they read as zeros again
   and keep no memory); after an exception, the caller's or its own, the whole mapping
   is dropped.

Elsewhere (not Linux, or a device other than the CPU) the same interface keeps a plain
zero buffer and zeroes what was written, which keeps the "all zeros on entry" contract
at the cost of the bandwidth.
"""

from __future__ import annotations

import mmap
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

__all__ = ["ZeroMatrix"]

_FLOAT_BYTES = 4
_local = threading.local()
# Only Linux guarantees that MADV_DONTNEED makes private anonymous pages read as zeros.
_HAS_ZERO_PAGES = sys.platform == "linux" and hasattr(mmap, "MADV_DONTNEED")


class ZeroMatrix:
    """A per-thread float32 buffer that holds zeros between uses (see module docstring)."""

    def __init__(self, capacity: int, device: torch.device) -> None:
        self.capacity = capacity
        self.device = device
        self._mapping: mmap.mmap | None = None
        if device.type == "cpu" and _HAS_ZERO_PAGES:
            # Private: a shared anonymous mapping is shmem, whose pages keep their
            # contents after MADV_DONTNEED.
            self._mapping = mmap.mmap(
                -1, capacity * _FLOAT_BYTES, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
            )
            if hasattr(mmap, "MADV_NOHUGEPAGE"):
                # khugepaged could otherwise fill released ranges with real zeroed
                # huge pages (THP "always"), costing memory and the zero-page reads.
                self._mapping.madvise(mmap.MADV_NOHUGEPAGE)
            self.flat = torch.frombuffer(self._mapping, dtype=torch.float32)
        else:
            self.flat = torch.zeros(capacity, device=device)
        self._rows: list[tuple[torch.Tensor, int]] = []  # (row indices, row length)
        self._prefix = 0  # floats written at the front of the flat view

    @property
    def uses_zero_pages(self) -> bool:
        return self._mapping is not None

    @classmethod
    @contextmanager
    def acquire(cls, n: int, device: torch.device, *, capacity: int) -> Iterator[ZeroMatrix]:
        """This thread's zero matrix for ``device`` with room for an n x n view."""
        if n * n > capacity:
            raise ValueError(f"a {n} x {n} matrix does not fit in {capacity} floats")
        matrices: dict[torch.device, ZeroMatrix] = _local.__dict__.setdefault("matrices", {})
        matrix = matrices.get(device)
        if matrix is None or matrix.capacity < capacity:
            matrix = matrices[device] = cls(capacity, device)
        try:
            yield matrix
            matrix.release()
        except BaseException:
            # Never hand out a half-written buffer: not after the caller failed, nor
            # after release() itself was interrupted (a KeyboardInterrupt, an OSError).
            matrices.pop(device, None)
            raise

    def view(self, n: int) -> torch.Tensor:
        """The n x n matrix (a view of the first n^2 floats)."""
        return self.flat[: n * n].view(n, n)

    def dirty_rows(self, rows: torch.Tensor, n: int) -> None:
        """Rows ``rows`` of the n x n view have been (or will be) written."""
        self._rows.append((rows.detach().cpu(), n))

    def dirty_prefix(self, count: int) -> None:
        """The first ``count`` floats of the flat view have been (or will be) written."""
        self._prefix = max(self._prefix, count)

    def release(self) -> None:
        """Zero everything marked dirty: hand its pages back, or write zeros."""
        if self._mapping is None:
            for rows, n in self._rows:
                self.view(n).index_fill_(0, rows.to(self.device), 0.0)
            self.flat[: self._prefix] = 0.0
        else:
            for start, end in self._dirty_page_ranges():
                self._mapping.madvise(mmap.MADV_DONTNEED, start, end - start)
        self._rows.clear()
        self._prefix = 0

    def _dirty_page_ranges(self) -> list[tuple[int, int]]:
        """Byte ranges (page-aligned, merged, ascending) covering every dirty float.
        Rounding out to pages only reaches floats that are zero or dirty."""
        page = mmap.PAGESIZE
        starts, ends = [np.zeros(1, np.int64)], [np.array([self._prefix * _FLOAT_BYTES])]
        for rows, n in self._rows:
            r = rows.numpy().astype(np.int64)
            starts.append(r * n * _FLOAT_BYTES)
            ends.append((r + 1) * n * _FLOAT_BYTES)
        start = np.concatenate(starts) // page * page
        end = -(-np.concatenate(ends) // page) * page
        keep = end > start
        start, end = start[keep], end[keep]
        order = np.argsort(start, kind="stable")
        start, end = start[order], np.maximum.accumulate(end[order])
        # A range starts a new group unless it begins within the previous group's end.
        new_group = np.ones(len(start), bool)
        new_group[1:] = start[1:] > end[:-1]
        group_starts = start[new_group]
        group_ends = np.maximum.reduceat(end, np.flatnonzero(new_group)) if len(end) else end
        return list(zip(group_starts.tolist(), group_ends.tolist(), strict=True))
