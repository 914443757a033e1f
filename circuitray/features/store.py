"""Feature tables: one Parquet file of labels and activation statistics per transcoder set.

A run records the transcoder reference its graphs were computed with (``run.json``:
``model.transcoders``, e.g. ``circuitray/organism`` or ``gemma``); the features of that
set live in one file found from the reference alone, so every run, query, report and
export of that set sees the same labels:

1. :func:`features_dir` is ``$CIRCUITRAY_FEATURES_DIR`` or ``$CIRCUITRAY_HOME/features``,
   beside the transcoder cache (``$CIRCUITRAY_HOME/transcoders``).
2. :func:`features_path` maps a reference to ``<features_dir>/<ref>.parquet``, the
   reference's ``/`` written as ``--`` (``circuitray--organism.parquet``).
3. The file holds :data:`FEATURE_SCHEMA`, one row per (layer, feature), sorted by
   them; its schema metadata (``circuitray``) records the reference, how the
   statistics were computed (corpus, token count) and where labels came from.
4. :func:`write_features` writes through a temporary file renamed into place, so a
   reader never sees half a table and an interrupted build leaves the old one.

Nothing here imports torch: queries, reports and exports read feature tables too.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from circuitray.errors import CircuitrayError
from circuitray.models.registry import circuitray_home

__all__ = [
    "EXAMPLE_TYPE",
    "FEATURE_SCHEMA",
    "features_dir",
    "features_path",
    "features_table_meta",
    "read_features",
    "run_features_path",
    "run_transcoders",
    "write_features",
]

logger = logging.getLogger(__name__)

METADATA_KEY = b"circuitray"

# One top-activating example: the context up to and including the token, the token,
# its position in the context, and the feature's activation there.
EXAMPLE_TYPE = pa.struct(
    [
        ("text", pa.string()),
        ("token", pa.string()),
        ("pos", pa.int32()),
        ("activation", pa.float64()),
    ]
)

FEATURE_SCHEMA = pa.schema(
    [
        ("layer", pa.int32()),
        ("feature", pa.int32()),
        # A short description; NULL where the feature has none.
        ("label", pa.string()),
        # Where the label came from: "heuristic: top tokens ..." for a built table,
        # "import: FILE" or "neuronpedia: FILE (explanation model)" for imported ones.
        ("source", pa.string()),
        # Tokens of the corpus the feature was active on (activation > 0), of n_tokens.
        ("n_active", pa.int64()),
        ("n_tokens", pa.int64()),
        # n_active / n_tokens: how often the feature fires.
        ("frequency", pa.float64()),
        # Mean activation over the tokens where it is active; its largest activation.
        ("mean_activation", pa.float64()),
        ("max_activation", pa.float64()),
        # The strongest activations, strongest first (one per context).
        ("top_examples", pa.list_(EXAMPLE_TYPE)),
    ]
)


def features_dir() -> Path:
    """Where feature tables live: ``$CIRCUITRAY_FEATURES_DIR`` or ``<home>/features``."""
    env = os.environ.get("CIRCUITRAY_FEATURES_DIR")
    return Path(env).expanduser().resolve() if env else circuitray_home() / "features"


_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")


def features_path(transcoders: str) -> Path:
    """The feature table of transcoder set ``transcoders`` (module docstring, step 2)."""
    if (
        not _REF.fullmatch(transcoders)
        or ".." in transcoders
        or "--" in transcoders
        or "-/" in transcoders
        or "/-" in transcoders
        or transcoders.endswith("-")
    ):
        raise CircuitrayError(
            f"transcoders {transcoders!r}: not a transcoder reference that names a feature "
            "table (letters, digits, '.', '_', '-' and '/')"
        )
    return features_dir() / f"{transcoders.replace('/', '--')}.parquet"


def run_transcoders(meta: dict) -> str | None:
    """The transcoder reference a run's ``run.json`` records (``model.transcoders``)."""
    transcoders = (meta.get("model") or {}).get("transcoders")
    return transcoders if isinstance(transcoders, str) else None


def run_features_path(meta: dict) -> Path | None:
    """The feature table of the transcoders a run's ``run.json`` records, if one exists
    and is one: a file that is not a feature table (torn, another schema) is left out
    with a warning, so queries that do not read ``features`` still run."""
    transcoders = run_transcoders(meta)
    if transcoders is None:
        return None
    try:
        path = features_path(transcoders)
    except CircuitrayError:
        return None
    if not path.is_file():
        return None
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as e:
        logger.warning("%s: unreadable feature table, left out (%s)", path, e)
        return None
    if not FEATURE_SCHEMA.equals(schema, check_metadata=False):
        logger.warning("%s: not a feature table of this circuitray, left out", path)
        return None
    return path


def features_table_meta(table: pa.Table) -> dict:
    """The ``circuitray`` schema metadata of a feature table (empty when it has none)."""
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def read_features(transcoders: str) -> pa.Table | None:
    """The feature table of ``transcoders``, or None when none was built or imported."""
    path = features_path(transcoders)
    if not path.is_file():
        return None
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise CircuitrayError(
            f"{path}: unreadable feature table ({str(e).splitlines()[0]}); rebuild it with "
            "`circuitray features build` or import labels again"
        ) from None


def write_features(table: pa.Table, transcoders: str, *, meta: dict) -> Path:
    """Write ``table`` (:data:`FEATURE_SCHEMA`) as the feature table of ``transcoders``,
    sorted by (layer, feature), with ``meta`` as its recorded provenance; atomic."""
    table = table.select(FEATURE_SCHEMA.names).cast(FEATURE_SCHEMA)
    table = table.sort_by([("layer", "ascending"), ("feature", "ascending")])
    record = {"format": "circuitray-features/1", "transcoders": transcoders, **meta}
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(record).encode()})
    path = features_path(transcoders)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.chmod(tmp, 0o644)  # readable by the actors and users sharing the home
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
