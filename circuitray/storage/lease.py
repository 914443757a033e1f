"""The driver lock of a run folder on S3: a lease object kept by conditional writes.

A local folder is locked with ``flock``, which the OS releases when the driver dies.
An object store has no such lock, so the driver holds ``.lock`` as a lease with an
expiry, and every change to it is a compare-and-swap on the object's ETag (S3
conditional writes: ``If-None-Match`` / ``If-Match``, which AWS S3, MinIO, R2 and the
local test server honour). Two drivers that interleave in any order cannot both hold it:

1. Acquire: create ``.lock`` with ``If-None-Match: *``; of two drivers creating it at
   once, S3 lets exactly one succeed (412 Precondition Failed for the other).
2. Take over a lease whose expiry has passed (its driver was killed or partitioned):
   overwrite it with ``If-Match: <the ETag read>``; of two drivers taking over the
   same expired lease, exactly one succeeds. A lease not yet expired is refused,
   naming its holder.
3. Renew every ``lease_s / 4`` seconds with ``If-Match: <our ETag>``. A 412 means the
   lease is someone else's now (ours expired, e.g. while this process was paused):
   the lease is *lost* (unless the object read back is our own, written by a retried
   request whose first try had landed). A network error is retried until our own
   expiry is near; then it is lost too. Renewal never overwrites a lease it does not
   hold.
4. A lost lease stops the run: :meth:`Lease.check` raises, and the run store calls it
   before each of the driver's writes and the dispatch loop between batches. Writes
   stop a third of ``lease_s`` before our own expiry (measured on this machine's
   monotonic clock from before the request was sent), so a write in flight and some
   clock skew between machines cannot meet another driver's takeover. Workers need no
   lease: the new holder's fence (``manifest.json``) keeps their late writes invisible.
5. Release: stop renewing, then delete ``.lock`` with ``If-Match: <our ETag>``, so a
   lease another driver holds now is never removed.

Correctness assumes clocks on the drivers' machines agree to well within ``lease_s``
(60 s by default): a lease is judged expired by the reader's clock.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from urllib.parse import parse_qs, urlparse

from circuitray.errors import RunDirError

logger = logging.getLogger(__name__)

__all__ = ["LEASE_S", "Lease", "LeaseLostError"]

LEASE_S = 60.0  # a driver that stops renewing loses its lease after this


class LeaseLostError(RunDirError):
    """The driver no longer holds its run folder's lease: it must stop writing."""


def s3_client(uri: str):
    """A boto3 S3 client for the store at ``uri`` (the endpoint, region and keys a
    pyarrow ``s3://`` URI may carry; otherwise boto3's own environment and config:
    AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, credentials chain)."""
    import boto3
    from botocore.config import Config

    query = {k: v[-1] for k, v in parse_qs(urlparse(uri).query).items()}
    endpoint = query.get("endpoint_override")
    if endpoint and "://" not in endpoint:
        endpoint = f"{query.get('scheme', 'https')}://{endpoint}"
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=query.get("region"),
        aws_access_key_id=query.get("access_key"),
        aws_secret_access_key=query.get("secret_key"),
        config=Config(
            connect_timeout=5,
            read_timeout=10,
            retries={"max_attempts": 2, "mode": "standard"},
            # Checksums only where S3 requires them: some S3-compatible stores refuse
            # the CRC32 headers newer botocore sends by default.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


CONFLICT = ("PreconditionFailed", "ConditionalRequestConflict")  # 412, 409


def _code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class Lease:
    """The lease ``.lock`` of the folder ``bucket/prefix`` (see module docstring).

    Attributes:
        where: The folder, for messages.
        lease_s: How long a lease lasts without renewal.
        lost: Set once the lease is no longer ours.
    """

    def __init__(self, uri: str, base: str, *, lease_s: float = LEASE_S):
        self.where = uri
        self.bucket, _, prefix = base.partition("/")
        self.key = f"{prefix}/.lock" if prefix else ".lock"
        self.lease_s = lease_s
        self.client = s3_client(uri)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.etag: str | None = None
        self._sent = 0.0
        self.deadline = 0.0  # time.monotonic() past which our lease may be another's
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._mutex = threading.Lock()  # one change of the lease object at a time
        self._thread: threading.Thread | None = None

    # -- the conditional writes -----------------------------------------------------
    def _put(self, **condition) -> str:
        self._sent = time.monotonic()  # the lease runs from before the request is sent
        body = json.dumps({"holder": self.holder, "expires": time.time() + self.lease_s})
        response = self.client.put_object(
            Bucket=self.bucket, Key=self.key, Body=body.encode(), **condition
        )
        self.deadline = self._sent + self.lease_s
        return response["ETag"]

    def _read(self) -> tuple[str | None, float, str]:
        """The lease object now: (holder, expiry, ETag); an object that is not a lease
        has no holder and has expired."""
        current = self.client.get_object(Bucket=self.bucket, Key=self.key)
        try:
            lease = json.loads(current["Body"].read())
            return str(lease["holder"]), float(lease["expires"]), current["ETag"]
        except (ValueError, TypeError, KeyError):
            return None, 0.0, current["ETag"]

    def _ours(self, etag: str) -> None:
        """A retried request whose first try had landed wrote our own lease: keep it."""
        self.etag = etag
        self.deadline = self._sent + self.lease_s

    def acquire(self) -> None:
        """Steps 1-2; raises :class:`RunDirError` when another driver holds it."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            try:
                self.etag = self._put(IfNoneMatch="*")
            except ClientError as e:
                if _code(e) not in CONFLICT:
                    raise
                holder, expires, etag = self._read()
                if holder == self.holder:
                    self._ours(etag)
                elif expires > time.time():
                    raise RunDirError(
                        f"{self.where}: another circuitray driver is using this run folder "
                        f"({holder}; lease expires in {expires - time.time():.0f}s)"
                    ) from None
                else:
                    try:
                        self.etag = self._put(IfMatch=etag)
                    except ClientError as e2:
                        if _code(e2) not in CONFLICT:
                            raise
                        if self._read()[0] != self.holder:
                            raise RunDirError(
                                f"{self.where}: another circuitray driver took this run folder"
                            ) from None
                        self._ours(self._read()[2])
                    logger.warning("took over the expired lease of %s (%s)", self.where, holder)
        except (ClientError, BotoCoreError) as e:
            raise RunDirError(f"{self.where}: cannot take the driver lease ({e})") from None
        self._thread = threading.Thread(target=self._renew_loop, daemon=True, name="lease")
        self._thread.start()

    def _renew_loop(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        while not self._stop.wait(self.lease_s / 4):
            with self._mutex:
                if self._stop.is_set():
                    return
                try:
                    try:
                        self.etag = self._put(IfMatch=self.etag)
                    except ClientError as e:
                        if _code(e) not in (*CONFLICT, "NoSuchKey", "404"):
                            raise
                        holder, _, etag = self._read()
                        if holder != self.holder:
                            return self._lose("another driver holds it now")
                        self._ours(etag)
                except (ClientError, BotoCoreError) as e:  # retried while the lease runs
                    if time.monotonic() > self.deadline - self.lease_s / 3:
                        return self._lose(f"cannot renew it ({e})")
                    logger.warning("lease renewal of %s failed, retrying: %s", self.where, e)

    def _lose(self, why: str) -> None:
        self.why = why
        self.lost.set()
        logger.error("lost the driver lease of %s: %s", self.where, why)

    def check(self) -> None:
        """Raise :class:`LeaseLostError` once the lease is lost, or within a third of
        ``lease_s`` of its expiry without a renewal (step 4)."""
        late = self.etag is not None and time.monotonic() > self.deadline - self.lease_s / 3
        if self.lost.is_set() or late:
            why = getattr(self, "why", "not renewed in time")
            raise LeaseLostError(
                f"{self.where}: lost the driver lease ({why}); stopped without writing "
                "more; another driver may be resuming this folder"
            )

    def release(self) -> None:
        """Step 5: stop renewing, then delete the lease only while it is still ours."""
        from botocore.exceptions import BotoCoreError, ClientError

        self._stop.set()
        with self._mutex:  # a renewal under way finishes first
            if self.etag is None or self.lost.is_set():
                return
            try:
                self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
            except (ClientError, BotoCoreError) as e:
                logger.warning("did not remove the lease of %s: %s", self.where, e)
            self.etag = None
