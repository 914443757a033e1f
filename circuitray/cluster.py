"""Connecting a process to Ray: the one place runs, Ray Train fine-tunes and model
warming start or join a cluster.

1. The cluster to join (:func:`ray_address`): the address given, else ``$RAY_ADDRESS``
   (Ray's own variable, which ``ray job submit`` sets for its entrypoint), else none,
   and then a local Ray is started (``local`` asks for one too).
2. What the workers must see that the driver sees (:data:`FORWARDED_ENV`: model homes,
   hub and object-store credentials and endpoints) goes into the job's ``runtime_env``.
3. A local Ray (:func:`start_local_ray`) is always a new one (``address="local"``), never
   a stray cluster left on this machine, and is remembered as started here
   (:func:`started_local_ray`): it cannot grow, so work that does not fit it is refused,
   not waited for. Ray's own authentication default stands; its notice about it at
   every start is not printed.
4. A process already connected keeps its Ray (:func:`connect`).

Imports Ray only when called; no torch.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

__all__ = [
    "FORWARDED_ENV",
    "connect",
    "forwarded_env",
    "ray_address",
    "start_local_ray",
    "started_local_ray",
]

# Environment the actors need to see what the driver sees: model homes, hub and
# object-store credentials and endpoints.
FORWARDED_ENV = (
    "CIRCUITRAY_HOME",
    "CIRCUIT_TRACER_CACHE_DIR",
    "HF_HOME",
    "HF_TOKEN",
    "HF_HUB_OFFLINE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "GOOGLE_APPLICATION_CREDENTIALS",
)

# What Ray logs, as a warning, each time ``ray.init`` starts a cluster while
# ``RAY_AUTH_MODE`` is unset: it then turns token authentication on by itself.
TOKEN_AUTH_NOTICE = "Token authentication is enabled for this Ray cluster."

_LOCAL_RAY: list[str] = []  # the GCS addresses of the local Rays this process started


def forwarded_env() -> dict[str, str]:
    """The variables of FORWARDED_ENV set here, for the actors' runtime_env."""
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def ray_address(address: str | None) -> str | None:
    """The Ray cluster to join: ``address``, else ``$RAY_ADDRESS`` (Ray's own variable:
    ``ray.init`` reads it, ``ray job submit`` sets it for its entrypoint), else None
    (start a local Ray, as ``local`` asks too)."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    return None if address == "local" else address


def started_local_ray() -> bool:
    """Whether the Ray this process is connected to is a local one that
    :func:`start_local_ray` started (it cannot grow), not one joined or started by the
    caller."""
    import ray

    return ray.is_initialized() and ray.get_runtime_context().gcs_address in _LOCAL_RAY


class _NotTheTokenNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(TOKEN_AUTH_NOTICE)


def start_local_ray(*, num_cpus: int, **kwargs) -> None:
    """Start a new local Ray for this process (``address="local"``: never a stray
    cluster left on this machine) and remember it as started here.

    Ray's own default stands (token authentication, unless ``RAY_AUTH_MODE`` says
    otherwise), without the warning Ray logs about it at every start: on a Ray that
    circuitray starts, lives in this process and ends with it, the warning tells the
    user nothing they can act on. A cluster the user joins or starts keeps Ray's
    messages."""
    import ray

    quiet = _NotTheTokenNotice()
    ray_logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    ray_logger.addFilter(quiet)
    try:
        ray.init(address="local", num_cpus=num_cpus, **kwargs)
    finally:
        ray_logger.removeFilter(quiet)
    _LOCAL_RAY.append(ray.get_runtime_context().gcs_address)


def connect(address: str | None, *, local_cpus: int) -> bool:
    """Connect this process to Ray unless it already is: join :func:`ray_address`
    (``address``), else start a local Ray of ``local_cpus`` logical CPUs (scheduling
    slots, not cores). Workers get :func:`forwarded_env`; Ray logs at circuitray's
    level (the CLI's is quiet unless ``-v``), and workers' output reaches the driver
    only with ``CIRCUITRAY_RAY_LOGS=1``.

    Returns whether this call connected (a caller that did may shut Ray down)."""
    import ray

    if ray.is_initialized():
        return False
    env = forwarded_env()
    kwargs: dict = {
        "include_dashboard": False,
        "log_to_driver": os.environ.get("CIRCUITRAY_RAY_LOGS") == "1",
        "runtime_env": {"env_vars": env} if env else None,
        # ray.init sets Ray's logger to this level (importing ray resets it to INFO):
        # follow circuitray's own, so Ray is as quiet as the caller asked and a
        # one-line error stays one line.
        "logging_level": logger.getEffectiveLevel(),
    }
    joined = ray_address(address)
    if joined:
        ray.init(address=joined, **kwargs)
    else:
        start_local_ray(num_cpus=local_cpus, **kwargs)
    return True
