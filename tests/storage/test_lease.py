"""The S3 driver lease (issue 17, finding 6) against a real S3-compatible server on
127.0.0.1: interleaved drivers never both hold it, a driver whose lease was taken stops
writing, and release removes only its own lease.

The drivers are real: threads with their own clients for the races, and a separate
process that is frozen (SIGSTOP, as a long GC pause or a suspended VM would) for the
lease to expire under it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import pyarrow.fs as pafs
import pytest
from test_s3 import s3  # noqa: F401 - the moto server fixture

from circuitray.errors import RunDirError
from circuitray.storage.lease import LeaseLostError
from circuitray.storage.run_store import RunStore


def _lock(uri: str) -> dict | None:
    fs, path = pafs.FileSystem.from_uri(f"{uri}/.lock")
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None


def _race(stores: list[RunStore]) -> list[bool]:
    barrier = threading.Barrier(len(stores))
    won = [False] * len(stores)

    def take(i: int) -> None:
        barrier.wait()
        try:
            stores[i].acquire_lock()
            won[i] = True
        except RunDirError:
            pass

    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won


def test_drivers_racing_for_a_free_folder_never_both_win(s3):  # noqa: F811
    for round_ in range(8):
        uri = f"{s3}/race/{round_}"
        stores = [RunStore(uri) for _ in range(4)]
        won = _race(stores)
        assert sum(won) == 1, won
        winner = stores[won.index(True)]
        assert _lock(uri)["holder"] == winner._lock.holder
        winner.release_lock()
        assert _lock(uri) is None


def test_drivers_racing_for_an_expired_lease_never_both_win(s3):  # noqa: F811
    fs, base = pafs.FileSystem.from_uri(s3)
    for round_ in range(6):
        uri = f"{s3}/expired/{round_}"
        with fs.open_output_stream(f"{base}/expired/{round_}/.lock") as f:
            f.write(json.dumps({"holder": "killed:1:dead", "expires": time.time() - 1}).encode())
        stores = [RunStore(uri) for _ in range(3)]
        won = _race(stores)
        assert sum(won) == 1, won
        stores[won.index(True)].release_lock()


def test_a_frozen_driver_loses_its_lease_stops_and_leaves_the_new_one(s3, tmp_path):  # noqa: F811
    uri = f"{s3}/frozen"
    script = tmp_path / "driver.py"
    script.write_text(
        "import sys, time\n"
        "from circuitray.storage.run_store import RunStore\n"
        "from circuitray.errors import RunDirError\n"
        "store = RunStore(sys.argv[1]); store.lease_s = 3.0\n"
        "store.acquire_lock(); print('held', flush=True)\n"
        "try:\n"
        "    while True:\n"
        "        time.sleep(0.1)\n"
        "        store.write_meta({'status': 'running', 'by': 'first'})\n"
        "except RunDirError as e:\n"
        "    print(e, flush=True)\n"
        "    store.release_lock()\n"
        "    sys.exit(3)\n"
    )
    first = subprocess.Popen([sys.executable, str(script), uri], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "held"
        second = RunStore(uri)
        with pytest.raises(RunDirError, match="another circuitray driver"):
            second.acquire_lock()
        first.send_signal(signal.SIGSTOP)
        time.sleep(4.0)  # longer than its lease
        second.acquire_lock()  # takes over the expired lease
        holder = _lock(uri)["holder"]
        assert holder == second._lock.holder
        second.write_meta({"status": "running", "by": "second"})
        first.send_signal(signal.SIGCONT)
        out, _ = first.communicate(timeout=30)
        assert first.returncode == 3, out
        assert "lost the driver lease" in out and len(out.strip().splitlines()) == 1, out
        # The first driver wrote nothing after losing it, and its release left the
        # second driver's lease in place.
        assert second.read_meta()["by"] == "second"
        assert _lock(uri)["holder"] == holder
        second.check_lease()
        second.release_lock()
        assert _lock(uri) is None
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGCONT)
            first.kill()


def test_a_lease_that_cannot_be_renewed_is_lost_and_stops_writes(s3):  # noqa: F811
    store = RunStore(f"{s3}/unreachable")
    store.lease_s = 1.5
    store.acquire_lock()
    lease = store._lock
    # The store becomes unreachable for this driver: its client points at a closed port.
    from circuitray.storage.lease import s3_client

    lease.client = s3_client("s3://x?endpoint_override=127.0.0.1:9&scheme=http")
    assert lease.lost.wait(timeout=20)
    with pytest.raises(LeaseLostError, match="lost the driver lease"):
        store.write_meta({"status": "running"})
    store.release_lock()


def test_a_retried_create_that_had_landed_is_our_own_lease(s3):  # noqa: F811
    """botocore resends a conditional PUT whose answer timed out; the resend gets 412
    against the lease its first try wrote. That lease is ours, not another driver's."""
    from circuitray.storage.lease import Lease

    store = RunStore(f"{s3}/retried")
    lease = Lease(store.uri, store.base, lease_s=30)
    lease._put(IfNoneMatch="*")  # the first try, whose answer was lost
    lease.acquire()  # the resend: 412, then the read-back finds our holder
    assert _lock(f"{s3}/retried")["holder"] == lease.holder
    lease.check()
    lease.release()
    assert _lock(f"{s3}/retried") is None
