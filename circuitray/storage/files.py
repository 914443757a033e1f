"""The file layer of a run or intervention folder: where a local disk and an object
store differ, behind one interface, so that :mod:`.run_store`'s protocol code reads
the same for both.

Both kinds wrap a ``pyarrow.fs`` filesystem (:attr:`Files.fs`, which readers and
writers of Parquet use directly) and differ only in the operations below:

============================  ===========================  ==============================
operation                     :class:`LocalFiles`          :class:`ObjectFiles`
============================  ===========================  ==============================
:meth:`~Files.put`            temp file, ``fsync``,        one PUT (an object appears
                              rename, ``fsync`` the folder whole or not at all)
:meth:`~Files.sync_dir`       ``fsync`` the folder         nothing (no folders)
:meth:`~Files.refuse_link`,   a symbolic link is refused   nothing (no links)
:meth:`~Files.names`
:meth:`~Files.lock`           an advisory ``flock`` on     a lease object kept by S3
                              ``.lock``                    conditional writes
                                                           (:mod:`.lease`)
:attr:`~Files.uri`            the resolved path            the URI as given
============================  ===========================  ==============================

:func:`open_files` picks the kind from the folder's name: a path, or a URI
(``s3://bucket/prefix``, anything else ``pyarrow.fs`` reaches).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.fs as pafs

from circuitray.errors import RunDirError
from circuitray.storage.lease import LEASE_S, Lease

__all__ = ["Files", "LocalFiles", "Lock", "ObjectFiles", "open_files"]


class Lock(Protocol):
    """A folder's driver lock, held until :meth:`release`."""

    def check(self) -> None:
        """Raise once the lock is no longer held (a lost lease)."""

    def release(self) -> None: ...


def open_files(root: str | Path, what: str) -> Files:
    """The file layer of the folder ``root`` (a local path or a URI); ``what`` names
    the folder's kind in messages (``circuitray run folder``)."""
    text = str(root)
    return LocalFiles(text, what) if "://" not in text else ObjectFiles(text, what)


class Files:
    """One folder on a ``pyarrow.fs`` filesystem.

    Attributes:
        root: The folder as given (a :class:`~pathlib.Path` locally), for messages.
        fs: The filesystem; paths on it are :attr:`base` plus names (:meth:`path`).
        base: The folder's path on :attr:`fs`.
        what: The folder's kind, for messages.
    """

    local = False
    root: Path | str
    fs: pafs.FileSystem
    base: str

    def __init__(self, what: str):
        self.what = what

    @property
    def uri(self) -> str:
        """What another process (a worker) passes to open the same folder."""
        raise NotImplementedError

    def child(self, name: str) -> Path | str:
        """``name`` inside :attr:`root`, as a user would write it."""
        return f"{self.root}/{name}"

    def path(self, *parts: str) -> str:
        """The path on :attr:`fs` of ``parts`` inside the folder."""
        return "/".join([self.base, *parts])

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def names(self, directory: str) -> list[str]:
        """The files (not folders) in ``directory``, sorted; none if it is missing."""
        sel = pafs.FileSelector(directory, allow_not_found=True)
        return sorted(
            i.base_name for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File
        )

    def refuse_link(self, path: str) -> None:
        """Raise :class:`RunDirError` if ``path`` is a symbolic link."""

    def read_text(self, path: str) -> str:
        with self.fs.open_input_stream(path) as f:
            return f.read().decode()

    def read_head(self, path: str, size: int) -> str:
        """The first ``size`` bytes of ``path`` as text (what does not decode replaced)."""
        with self.fs.open_input_stream(path) as f:
            return f.read(size).decode(errors="replace")

    def delete(self, path: str) -> None:
        """Remove a file; one that is not there is no error."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(path)

    def put(self, path: str, write: Callable[[str], None]) -> None:
        """Make ``path`` appear whole: ``write(p)`` writes the file at ``p`` on :attr:`fs`."""
        raise NotImplementedError

    def sync_dir(self, directory: str) -> None:
        """Make the renames in ``directory`` survive a power loss."""

    def lock(self, lease_s: float = LEASE_S) -> Lock:
        """Take the folder's driver lock or raise :class:`RunDirError` if it is held."""
        raise NotImplementedError


class LocalFiles(Files):
    """A folder on the local disk: atomic by rename, durable by ``fsync``, locked by
    ``flock``, and confined (a symbolic link inside it could make a read, write or
    delete reach outside it)."""

    local = True

    def __init__(self, text: str, what: str):
        super().__init__(what)
        self.root = Path(text)
        self.fs = pafs.LocalFileSystem()
        self.base = str(Path(text).expanduser().resolve())

    @property
    def uri(self) -> str:
        return self.base

    def child(self, name: str) -> Path | str:
        assert isinstance(self.root, Path)
        return self.root / name

    def names(self, directory: str) -> list[str]:
        names = super().names(directory)
        for name in names:
            self.refuse_link(f"{directory}/{name}")
        return names

    def refuse_link(self, path: str) -> None:
        if os.path.islink(path):
            raise RunDirError(
                f"{path}: is a symbolic link; circuitray reads and writes only the files "
                f"of the {self.what} itself (replace the link by the file or folder)"
            )

    def put(self, path: str, write: Callable[[str], None]) -> None:
        directory, name = path.rsplit("/", 1)
        self.fs.create_dir(directory, recursive=True)
        tmp = f"{directory}/.{name}.{uuid.uuid4().hex}.tmp"
        write(tmp)
        _fsync(tmp)  # the data is on disk before the name says it is there
        os.replace(tmp, path)
        _fsync(directory)  # and the rename itself survives a power loss

    def sync_dir(self, directory: str) -> None:
        if self.exists(directory):
            _fsync(directory)

    def lock(self, lease_s: float = LEASE_S) -> Lock:
        """An advisory ``flock`` on ``.lock``, released by the OS if the driver dies."""
        Path(self.base).mkdir(parents=True, exist_ok=True)
        path = self.path(".lock")
        # O_NOFOLLOW: a link put there after a confinement check is refused too, never
        # truncated.
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise RunDirError(f"{path}: cannot open the lock ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirError(
                f"{self.root}: another circuitray driver is using this run folder"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return FileLock(fd)


class FileLock:
    """A held ``flock``: never lost while the process lives."""

    def __init__(self, fd: int):
        self.fd = fd

    def check(self) -> None:
        pass

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


class ObjectFiles(Files):
    """A folder on an object store: a PUT is atomic, so files are written in place;
    there are no folders to flush and no links to refuse; the lock is an S3 lease."""

    def __init__(self, text: str, what: str):
        super().__init__(what)
        self.root = text.rstrip("/")
        try:
            self.fs, base = pafs.FileSystem.from_uri(_one_put_per_file(text))
        except (pa.ArrowInvalid, OSError) as e:
            raise RunDirError(f"{text}: cannot open storage: {e}") from None
        self.base = base.rstrip("/")

    @property
    def uri(self) -> str:
        return str(self.root)

    def put(self, path: str, write: Callable[[str], None]) -> None:
        write(path)

    def lock(self, lease_s: float = LEASE_S) -> Lock:
        """A lease object kept by S3 conditional writes (:mod:`.lease`)."""
        scheme = str(self.root).split("://", 1)[0]
        if scheme != "s3":
            raise RunDirError(
                f"{self.root}: circuitray locks object-store folders on s3:// only (S3 "
                "conditional writes); write to an s3:// or local folder"
            )
        lease = Lease(str(self.root), self.base, lease_s=lease_s)
        lease.acquire()
        return lease


def _one_put_per_file(uri: str) -> str:
    """An ``s3://`` URI with ``allow_delayed_open=true`` unless it says otherwise: then
    pyarrow writes an object smaller than its upload part size with one PUT, instead
    of a multipart upload (create, part, complete: three requests per part file)."""
    if not uri.startswith("s3://") or "allow_delayed_open=" in uri:
        return uri
    return f"{uri}{'&' if '?' in uri else '?'}allow_delayed_open=true"


def _fsync(path: str) -> None:
    """Flush a local file's or folder's data and metadata to disk. Some filesystems
    (FUSE mounts, CIFS) cannot fsync a folder (EINVAL): there only files are flushed."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if not (e.errno in (errno.EINVAL, errno.ENOTSUP) and os.path.isdir(path)):
            raise
    finally:
        os.close(fd)
