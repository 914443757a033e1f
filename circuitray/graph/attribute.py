"""Attributing one prompt: ``attribute()`` -> prune -> flatten -> one graphs row.

1. Tokenise as circuit-tracer does (BOS prepended) and reject prompts longer than
   ``max_tokens`` before any heavy work.
2. Forward the tokens once for the full next-token distribution: the top token and
   the probability and rank of the expected ``target`` (which the logit nodes only
   cover in ``top`` mode when the target is among the top logits), and what the
   run's target mode attributes to (:mod:`circuitray.graph.targets`).
3. Run circuit-tracer's ``attribute()`` with the run's arguments and those targets.
4. Prune and flatten (:func:`circuitray.graph.flatten.flatten_graph`); the dense adjacency
   matrix is dropped here and never leaves the process (``on_graph`` may read it
   first: :mod:`circuitray.graph.precision` does).

Errors inside these steps become a graphs row with ``status='error'`` and the message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import torch

from circuitray.graph.config import AttributionConfig, PruneConfig
from circuitray.graph.flatten import flatten_graph
from circuitray.graph.targets import continuation_ids, resolve_target
from circuitray.schema import EDGE_SCHEMA, NODE_SCHEMA, graph_row

logger = logging.getLogger(__name__)


def _next_token_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """Logits for the next token after ``tokens`` from the unmodified model."""
    with torch.inference_mode():
        hf = getattr(model, "_model", None)  # nnsight backend wraps the HF module
        if hf is not None:
            out = hf(tokens[None].to(model.device))
            logits = out.logits if hasattr(out, "logits") else out[0]
        else:  # transformerlens backend
            logits = model(tokens[None])
    return logits[0, -1].float()


def context_length(model) -> int | None:
    """The model's maximum sequence length, where its config says."""
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if n_ctx:
        return int(n_ctx)
    hf_config = getattr(getattr(model, "_model", None), "config", None)
    return getattr(hf_config, "max_position_embeddings", None)


def target_token_id(tokenizer, target: str) -> int | None:
    """The first token of ``target`` as a continuation (a leading space, as in text)."""
    ids = continuation_ids(tokenizer, target)
    return int(ids[0]) if ids else None


def _check_length(model, tokens: torch.Tensor, *, max_tokens: int) -> None:
    """A prompt longer than ``max_tokens`` or the model's context is a prompt-level
    failure (ValueError)."""
    if tokens.numel() > max_tokens:
        raise ValueError(f"prompt has {tokens.numel()} tokens, more than max_tokens={max_tokens}")
    context = context_length(model)
    if context is not None and tokens.numel() > context:
        raise ValueError(
            f"prompt has {tokens.numel()} tokens, more than the model's context of {context}"
        )


def _next_token_columns(tokenizer, logits: torch.Tensor, *, target: str | None) -> dict:
    """The graphs row's next-token columns: the top token and its probability, and the
    target's token, probability and rank when the prompt names a target."""
    probs = torch.softmax(logits, dim=-1)
    top = int(probs.argmax())
    columns: dict[str, Any] = {"top_token": tokenizer.decode([top]), "top_prob": float(probs[top])}
    tid = target_token_id(tokenizer, target) if target else None
    if tid is not None:
        columns["target_token"] = tokenizer.decode([tid])
        columns["target_prob"] = float(probs[tid])
        columns["target_rank"] = int((probs > probs[tid]).sum())
    return columns


def attribute_prompt(
    model,
    prompt: dict,
    *,
    graph_id: int,
    attribution: AttributionConfig,
    prune: PruneConfig,
    worker: str = "",
    on_graph: Callable[[Any], None] | None = None,
) -> tuple[dict, pa.Table, pa.Table]:
    """Attribute one prompt row; returns (graphs row, nodes, edges). Never raises for
    prompt-level failures: those give an error row and empty tables.

    ``on_graph(graph)`` is called with the unpruned circuit-tracer Graph once it is
    flattened, before it is dropped; an exception there is logged and leaves the row
    as it is."""
    from circuit_tracer import attribute

    start = time.perf_counter()
    row = graph_row(graph_id, prompt, worker=worker)
    empty_nodes, empty_edges = NODE_SCHEMA.empty_table(), EDGE_SCHEMA.empty_table()
    try:
        tokens = model.ensure_tokenized(prompt["prompt"])
        row["n_tokens"] = int(tokens.numel())
        _check_length(model, tokens, max_tokens=attribution.max_tokens)
        logits = _next_token_logits(model, tokens)
        target = resolve_target(
            attribution.target,
            prompt,
            tokenizer=model.tokenizer,
            logits=logits,
            unembed=model.unembed_proj,
        )
        row.update(target.columns())
        t0 = time.perf_counter()
        graph = attribute(
            tokens, model, attribution_targets=target.targets, **attribution.attribute_kwargs()
        )
        row["attribute_s"] = time.perf_counter() - t0

        row.update(_next_token_columns(model.tokenizer, logits, target=row["target"]))

        t0 = time.perf_counter()
        flat = flatten_graph(graph, graph_id=graph_id, prune=prune, tokenizer=model.tokenizer)
        row["flatten_s"] = time.perf_counter() - t0
        if on_graph is not None:
            try:
                on_graph(graph)
            except Exception as e:  # noqa: BLE001 - a reader of the graph, not the graph
                logger.warning("prompt %s: on_graph failed: %s", prompt["prompt_id"], e)
        del graph
        row.update({k: v for k, v in flat.summary.items() if k in row})
        row["status"] = "ok"
        nodes, edges = flat.nodes, flat.edges
    except torch.cuda.OutOfMemoryError as e:
        torch.cuda.empty_cache()
        row.update(status="error", error=f"CUDA out of memory: {str(e).splitlines()[0]}")
        nodes, edges = empty_nodes, empty_edges
    except Exception as e:  # noqa: BLE001 - one bad prompt must not stop a run
        logger.warning("prompt %s failed: %s", prompt["prompt_id"], e)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        row.update(status="error", error=f"{type(e).__name__}: {msg}"[:2000])
        nodes, edges = empty_nodes, empty_edges
    row["total_s"] = time.perf_counter() - start
    return row, nodes, edges
