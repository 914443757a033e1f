"""Warming a node's model and transcoder caches before actors start.

Every actor on a node loads from the same caches: the Hugging Face hub cache
(``$HF_HOME``, for hub models and hub transcoders) and circuit-tracer's transcoder
cache (``$CIRCUIT_TRACER_CACHE_DIR``, for the bundled sets). Warming downloads into
them once per node, so N actors starting together do not download N times.

1. Bundled models: check that the model folder and its transcoder set are built
   (nothing to download; the error names the build command).
2. Hub models: ``huggingface_hub.snapshot_download`` of the model's config, tokenizer
   and weights; cached files are not fetched again.
3. Transcoders: circuit-tracer's own ``load_transcoder_from_hub`` with lazy encoders
   and decoders, the call workers make, so exactly the files they read get fetched.
4. On a cluster (:func:`warm_cluster`), one task per alive node, pinned to it with
   Ray's ``NodeAffinitySchedulingStrategy``, does steps 1-3 there.

Where the hub cannot be reached (offline machines, ``HF_HUB_OFFLINE=1``) and the files
are not cached, this fails with one line naming the model; a gated model without a
token fails naming the token.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from circuitray.errors import ModelLoadError
from circuitray.models.loading import ModelSpec, check_model_available
from circuitray.models.registry import resolve_model

logger = logging.getLogger(__name__)

__all__ = ["warm_cluster", "warm_model"]

# What from_pretrained and the tokenizer read; not the .bin / .gguf / original/ copies.
MODEL_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]


def _hub_reachable(timeout_s: float = 5.0) -> bool:
    """Whether the hub's host accepts a TCP connection (fails fast where the hub
    client would retry for half a minute)."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
        with socket.create_connection((url.hostname or "", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _hub_error(what: str, e: Exception) -> ModelLoadError:
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError

    if isinstance(e, GatedRepoError):
        return ModelLoadError(
            f"{what}: gated on the Hugging Face hub; accept its license and set HF_TOKEN "
            "(or ~/.cache/huggingface/token) on every node"
        )
    if isinstance(e, LocalEntryNotFoundError) or "offline" in str(e).lower():
        return ModelLoadError(
            f"{what}: not cached and the Hugging Face hub cannot be reached from "
            f"{socket.gethostname()}; warm on a machine with hub access and copy the "
            "cache, or use a bundled model"
        )
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ModelLoadError(f"{what}: cannot download: {first}")


def warm_model(spec: ModelSpec) -> dict:
    """Fill this machine's caches for ``spec`` (see module docstring); returns what was
    done: node, model, transcoders, model_path, bundled, seconds."""
    t0 = time.perf_counter()
    path, bundled = resolve_model(spec.model)
    refs = spec.resolved()
    check_model_available(spec)  # bundled built, local folder present
    model_path = path
    if bundled is None and not os.path.isdir(os.path.expanduser(path)):
        from huggingface_hub import snapshot_download

        try:
            model_path = snapshot_download(path, allow_patterns=MODEL_FILES)
        except Exception as e:  # hub errors come in many types
            raise _hub_error(f"model {spec.model!r}", e) from None
    import torch
    from circuit_tracer.utils.caching import is_cached
    from circuit_tracer.utils.hf_utils import load_transcoder_from_hub

    if not is_cached(refs["transcoders"], refs["transcoder_cache_dir"]) and not _hub_reachable():
        from huggingface_hub.errors import LocalEntryNotFoundError

        raise _hub_error(f"transcoders {refs['transcoders']!r}", LocalEntryNotFoundError("offline"))
    try:
        load_transcoder_from_hub(
            refs["transcoders"],
            device=torch.device("cpu"),
            lazy_encoder=True,
            lazy_decoder=True,
            cache_dir=refs["transcoder_cache_dir"],
        )
    except Exception as e:
        raise _hub_error(f"transcoders {refs['transcoders']!r}", e) from None
    return {
        "node": socket.gethostname(),
        "model": spec.model,
        "model_path": str(model_path),
        "transcoders": refs["transcoders"],
        "bundled": bundled is not None,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def warm_cluster(spec: ModelSpec, *, address: str) -> list[dict]:
    """Warm every alive node of the Ray cluster at ``address``: one task per node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from circuitray.cluster import forwarded_env

    if not ray.is_initialized():
        env = forwarded_env()
        ray.init(
            address=address,
            log_to_driver=False,
            runtime_env={"env_vars": env} if env else None,
        )

    @ray.remote(num_cpus=0, max_retries=0)
    def warm_here(spec: ModelSpec) -> dict:
        try:
            return {**warm_model(spec), "node_id": ray.get_runtime_context().get_node_id()}
        except ModelLoadError as e:
            return {"error": str(e), "node": socket.gethostname()}

    nodes = [n for n in ray.nodes() if n["Alive"]]
    refs = [
        warm_here.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(spec)
        for n in nodes
    ]
    results = ray.get(refs)
    failed = [r for r in results if "error" in r]
    if failed:
        raise ModelLoadError(
            f"{len(failed)} of {len(results)} nodes failed; {failed[0]['node']}: "
            f"{failed[0]['error']}"
        )
    return results
