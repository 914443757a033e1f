"""``circuitray trace "PROMPT"``: one prompt's graph, the way circuit-tracer's CLI makes one.

A newcomer's first command, on the same path as a run of thousands, so SQL, export
and the viewer work on its result:

1. The trace folder (``--out``; default ``$CIRCUITRAY_HOME/traces/<words>-<hash>``,
   named by the prompt and model) holds ``prompt.jsonl`` (the one prompt),
   ``run/`` (a run folder) and ``viewer/`` (an export folder).
2. :func:`circuitray.run` attributes it with one actor (on a local Ray, or on the
   cluster ``$RAY_ADDRESS`` names); a trace of the same prompt and settings again
   finds it done (the run folder's fingerprint) and only exports.
3. :func:`circuitray.outputs.export.export_graph` writes it as ``viewer/trace.json``
   with its feature labels, ready for ``circuitray serve`` (``--serve``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from circuitray.errors import CircuitrayError
from circuitray.graph.config import AttributionConfig, PruneConfig
from circuitray.models.loading import ModelSpec
from circuitray.models.registry import circuitray_home

logger = logging.getLogger(__name__)

__all__ = ["TraceConfig", "TraceResult", "trace"]

SLUG = "trace"


@dataclass
class TraceConfig:
    """One prompt to trace.

    Attributes:
        prompt: The prompt text.
        out: Trace folder; None: ``$CIRCUITRAY_HOME/traces/<words>-<hash>``.
        target: The expected next word, to pick the target logit (else the most
            probable one).
        model: Model and transcoders to load.
        attribution: circuit-tracer ``attribute()`` arguments.
        prune: Node and edge thresholds.
    """

    prompt: str
    out: str | None = None
    target: str | None = None
    model: ModelSpec = field(default_factory=ModelSpec)
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)

    def __post_init__(self) -> None:
        if not self.prompt or not self.prompt.strip():
            raise CircuitrayError("trace: the prompt is empty")

    def folder(self) -> Path:
        """The trace folder (module docstring, step 1)."""
        if self.out:
            return Path(self.out)
        words = "-".join(re.findall(r"[A-Za-z0-9]+", self.prompt)[:5]).lower()[:40] or "prompt"
        # Every setting the run folder's fingerprint holds: other settings, another folder.
        key = json.dumps(
            [self.prompt, self.target, asdict(self.model), asdict(self.attribution),
             asdict(self.prune)],
            sort_keys=True,
            default=str,
        )  # fmt: skip
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        return circuitray_home() / "traces" / f"{words}-{digest}"


@dataclass
class TraceResult:
    """Where a trace's graph is.

    Attributes:
        folder: The trace folder.
        run_dir: Its one-row run folder (``circuitray sql RUN_DIR ...``).
        viewer_dir: The export folder (``circuitray serve VIEWER_DIR``).
        graph: The exported graph JSON.
        slug: Its name in the viewer.
        computed: Whether it was attributed now (False: found done).
        nodes: Kept nodes of the exported graph.
        links: Its links.
        labelled: Feature nodes with a label.
    """

    folder: str
    run_dir: str
    viewer_dir: str
    graph: str
    slug: str
    computed: bool
    nodes: int
    links: int
    labelled: int


def trace(config: TraceConfig) -> TraceResult:
    """Attribute and export one prompt (module docstring)."""
    from circuitray.jobs.attribution_job import RunConfig, run
    from circuitray.outputs.export import export_graph
    from circuitray.prompts.files import write_prompts

    folder = config.folder()
    folder.mkdir(parents=True, exist_ok=True)
    prompts = folder / "prompt.jsonl"
    row = {"prompt_id": "trace", "prompt": config.prompt}
    if config.target:
        row["target"] = config.target
    write_prompts([row], prompts)
    run_dir = folder / "run"
    result = run(
        RunConfig(
            prompts=str(prompts),
            out=str(run_dir),
            model=config.model,
            attribution=config.attribution,
            prune=config.prune,
            actors=1,
            retry_errors=True,
        )
    )
    if result.errors:
        import pyarrow.dataset as ds

        from circuitray.storage.run_store import RunStore

        rows = RunStore(str(run_dir)).dataset("graphs")
        error = "no error row"
        if rows is not None:
            failed = rows.to_table(columns=["error"], filter=ds.field("status") == "error")
            error = failed.column(0)[-1].as_py() if failed.num_rows else error
        first = str(error).strip().splitlines()[0] if str(error).strip() else "unknown"
        raise CircuitrayError(f"trace: attribution failed: {first}")
    viewer = folder / "viewer"
    path = export_graph(str(run_dir), 0, str(viewer), slug=SLUG)
    data = json.loads(path.read_text())
    labelled = sum(1 for n in data["nodes"] if n["feature_type"] != "logit" and n.get("clerp"))
    out = TraceResult(
        folder=str(folder),
        run_dir=str(run_dir),
        viewer_dir=str(viewer),
        graph=str(path),
        slug=SLUG,
        computed=bool(result.computed),
        nodes=len(data["nodes"]),
        links=len(data["links"]),
        labelled=labelled,
    )
    logger.info("traced %r: %s", config.prompt, out)
    return out
