"""Feature interventions on one prompt, measured on the model and predicted by its graph.

An attribution graph is a hypothesis about which features carry the model's answer;
an intervention tests it. For one prompt of a run:

1. Plan: every ``--features`` SPEC
   (:func:`circuitray.graph.intervention_plan.parse_feature_spec`) names which feature
   nodes ``(layer, pos, feature)`` to set to ``scale`` x their clean activation:
   - ``L:F,L:F``: explicit (layer, feature) pairs (or a named query's rows, resolved
     to pairs by the driver), at every position where the feature is active;
   - ``top:K[:BY]``: the K feature nodes of the prompt's stored graph whose ablation
     the graph predicts lowers the target logit most: by their edge into it
     (``direct``, the default), also through the graph's other features (``total``,
     step 5), or by circuit-tracer's unsigned influence on the logits (``influence``);
   - ``random:K``: K active feature nodes drawn uniformly, the control for ``top:K``
     (seeded by the plan's seed, the graph id and the SPEC's index);
   - ``single:K[:BY]``: each of the ``top:K[:BY]`` nodes alone, one intervention each.
2. Clean pass: ``model.get_activations`` gives the logits and every transcoder
   activation (BOS zeroed, as attribution does).
3. Each intervention runs circuit-tracer's ``feature_intervention`` with the plan's
   ``constrained_layers`` and ``freeze_attention``. When the constrained layers cover
   the whole model (circuit-tracer's direct-effect setting) logits are measured in
   the graph's frame: final logit soft-capping off, as attribution linearises it.
4. Measure: the target token's logit and probability before and after, the change of
   its logit minus the mean logit (what a graph's logit node is), the top-1 token
   before and after, and KL(before || after) of the next-token distribution.
5. Predict from the stored (pruned) graph, with edge weights ``w(src -> dst)``:
   ``direct = (scale - 1) * sum_s w(s -> target)`` over the intervened nodes, and
   ``total``: the same change propagated through the graph's other feature nodes, a
   node's outgoing weights scaling with its relative change of activation
   (``r_m = sum_n w(n -> m) r_n / a_m``; error and token nodes stay frozen).

The target is what the graph was attributed to. A ``--target contrast`` graph's one
logit node is the answer against its alternatives: what is measured is the change of
the answer's logit minus the alternatives' mean logit (``target_source`` ``contrast``).
Otherwise it is the prompt's expected completion (its first token) when the stored
graph has it as a logit node (or there is no stored graph; ``expected``), else the
graph's most probable logit (``graph_top``), so that every SPEC can rank features by
their effect on it (``model_top`` for a prompt without an expected completion).
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow.dataset as ds
import torch

from circuitray.errors import CircuitrayError
from circuitray.graph.attribute import target_token_id
from circuitray.graph.intervention_plan import FeatureSpec, InterventionPlan
from circuitray.storage.run_store import RunStore

logger = logging.getLogger(__name__)

__all__ = ["StoredGraph", "intervene_prompt", "read_stored_graphs"]


@dataclass
class StoredGraph:
    """One graph's kept nodes and edges, as arrays (edges: ``w(src -> dst)``)."""

    node_id: np.ndarray
    node_type: np.ndarray
    layer: np.ndarray
    pos: np.ndarray
    feature: np.ndarray
    activation: np.ndarray
    token_id: np.ndarray
    logit_prob: np.ndarray
    influence: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    weight: np.ndarray
    index: dict[int, int] = field(default_factory=dict)
    _layer_mats: list | None = None

    def __post_init__(self):
        self.index = {int(n): i for i, n in enumerate(self.node_id)}

    def logit_node(self, token_id: int) -> int | None:
        hit = np.nonzero((self.node_type == "logit") & (self.token_id == token_id))[0]
        return int(self.node_id[hit[0]]) if len(hit) else None

    def only_logit_node(self) -> int | None:
        """The node id of the graph's logit node when it has exactly one."""
        hit = np.nonzero(self.node_type == "logit")[0]
        return int(self.node_id[hit[0]]) if len(hit) == 1 else None

    def top_logit_token(self) -> int | None:
        """Token id of the graph's most probable logit node."""
        logits = np.nonzero(self.node_type == "logit")[0]
        if not len(logits):
            return None
        return int(self.token_id[logits[np.argmax(self.logit_prob[logits])]])

    def feature_node_ids(self, nodes: Iterable[tuple[int, int, int]]) -> list[int]:
        """Node ids of the given (layer, pos, feature) triples that the graph kept."""
        is_f = self.node_type == "feature"
        key = {
            (int(la), int(p), int(f)): int(n)
            for la, p, f, n in zip(
                self.layer[is_f],
                self.pos[is_f],
                self.feature[is_f],
                self.node_id[is_f],
                strict=True,
            )
        }
        return [key[t] for t in nodes if t in key]

    def _layers(self) -> list[tuple[np.ndarray, torch.Tensor]]:
        """Per feature layer, ascending: (node indices, sparse weights of the edges
        into them, rows = those nodes, columns = all nodes)."""
        if self._layer_mats is None:
            src_i = np.array([self.index[int(s)] for s in self.src], dtype=np.int64)
            dst_i = np.array([self.index[int(d)] for d in self.dst], dtype=np.int64)
            is_feature = self.node_type == "feature"
            mats = []
            for layer in sorted(set(self.layer[is_feature].tolist())):
                rows = np.nonzero(is_feature & (self.layer == layer))[0]
                local = np.full(len(self.node_id), -1)
                local[rows] = np.arange(len(rows))
                sel = local[dst_i] >= 0
                idx = torch.from_numpy(np.stack([local[dst_i[sel]], src_i[sel]]))
                mat = torch.sparse_coo_tensor(
                    idx,
                    torch.from_numpy(self.weight[sel]),
                    (len(rows), len(self.node_id)),
                    check_invariants=False,
                ).coalesce()
                mats.append((rows, mat))
            self._layer_mats = mats
        return self._layer_mats

    def _into(self, target: int) -> torch.Tensor:
        """Dense weights of the edges into ``target`` (one per node)."""
        w = np.zeros(len(self.node_id))
        hit = self.dst == target
        np.add.at(w, [self.index[int(s)] for s in self.src[hit]], self.weight[hit])
        return torch.from_numpy(w)

    def predicted_changes(
        self, clamped: list[list[int]], target: int, scale: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """(direct, total) predicted change of ``target`` for each set of ``clamped``
        node ids set to ``scale`` x their activation (module docstring, step 5).

        A propagated relative change is floored at -1: a feature cannot go below zero
        activity, and without the floor a few features whose inputs far exceed their
        activation (a strongly negative encoder bias) make the linear series explode.
        """
        n, c = len(self.node_id), len(clamped)
        r = torch.zeros(n, c, dtype=torch.float64)
        fixed = torch.zeros(n, c, dtype=torch.bool)
        for j, nodes in enumerate(clamped):
            for node in nodes:
                r[self.index[node], j] = scale - 1.0
                fixed[self.index[node], j] = True
        w_t = self._into(target)
        direct = (w_t @ r).numpy()
        act = torch.from_numpy(self.activation)
        for rows, mat in self._layers():
            rows_t = torch.from_numpy(rows)
            change = (mat @ r) / act[rows_t, None]
            r[rows_t] = torch.where(fixed[rows_t], r[rows_t], change.clamp(min=-1.0))
        return direct, (w_t @ r).numpy()

    def ablation_effects(self, target: int, *, by: str, chunk: int = 256) -> dict[int, float]:
        """Each kept feature node's predicted drop of ``target`` when it alone is
        ablated: its edge into the target (``direct``), or also through the graph's
        other features (``total``, :meth:`predicted_changes` at scale 0); or its
        circuit-tracer influence on the logits (``influence``, unsigned)."""
        features = [int(n) for n in self.node_id[self.node_type == "feature"]]
        if by == "influence":
            return {f: float(self.influence[self.index[f]]) for f in features}
        out: dict[int, float] = {}
        for i in range(0, len(features), chunk):
            part = features[i : i + chunk]
            direct, total = self.predicted_changes([[f] for f in part], target, 0.0)
            drop = -(direct if by == "direct" else total)
            out.update(zip(part, drop.tolist(), strict=True))
        return out


def read_stored_graphs(store: RunStore, graph_ids: list[int]) -> dict[int, StoredGraph]:
    """Kept nodes and edges of ``graph_ids`` from a run folder (one scan per table,
    pruned by the files' graph_id statistics)."""
    nodes_ds, edges_ds = store.dataset("nodes"), store.dataset("edges")
    if nodes_ds is None or edges_ds is None or not graph_ids:
        return {}
    wanted = ds.field("graph_id").isin(graph_ids)
    nodes = nodes_ds.to_table(
        filter=wanted,
        columns=[
            "graph_id",
            "node_id",
            "node_type",
            "layer",
            "pos",
            "feature",
            "activation",
            "token_id",
            "logit_prob",
            "influence",
        ],
    ).sort_by([("graph_id", "ascending"), ("node_id", "ascending")])
    edges = edges_ds.to_table(filter=wanted, columns=["graph_id", "src", "dst", "weight"])
    ncols = {c: nodes[c].to_numpy(zero_copy_only=False) for c in nodes.column_names}
    ecols = {c: edges[c].to_numpy(zero_copy_only=False) for c in edges.column_names}
    # With an edge threshold that falls among zero scores circuit-tracer keeps edges of
    # nodes it pruned; they have no node row and cannot carry a prediction.
    node_keys = ncols["graph_id"].astype(np.int64) << 32 | ncols["node_id"].astype(np.int64)
    gid64 = ecols["graph_id"].astype(np.int64) << 32
    known = np.isin(gid64 | ecols["src"].astype(np.int64), node_keys) & np.isin(
        gid64 | ecols["dst"].astype(np.int64), node_keys
    )
    ecols = {c: v[known] for c, v in ecols.items()}
    out: dict[int, StoredGraph] = {}
    for gid in graph_ids:
        nm, em = ncols["graph_id"] == gid, ecols["graph_id"] == gid
        if not nm.any():
            continue
        out[gid] = StoredGraph(
            node_id=ncols["node_id"][nm],
            node_type=ncols["node_type"][nm].astype(str),
            layer=np.nan_to_num(ncols["layer"][nm].astype(float), nan=-2).astype(np.int64),
            pos=np.nan_to_num(ncols["pos"][nm].astype(float), nan=-1).astype(np.int64),
            feature=np.nan_to_num(ncols["feature"][nm].astype(float), nan=-1).astype(np.int64),
            activation=np.nan_to_num(ncols["activation"][nm].astype(float), nan=0.0),
            token_id=np.nan_to_num(ncols["token_id"][nm].astype(float), nan=-1).astype(np.int64),
            logit_prob=np.nan_to_num(ncols["logit_prob"][nm].astype(float), nan=0.0),
            influence=np.nan_to_num(ncols["influence"][nm].astype(float), nan=0.0),
            src=ecols["src"][em],
            dst=ecols["dst"][em],
            weight=ecols["weight"][em].astype(np.float64),
        )
    return out


@contextlib.contextmanager
def _logit_softcap_off(model):
    """Final logit soft-capping off, as attribution linearises the logits.

    circuit-tracer 0.5.0's ``zero_softcap`` edits a copy of the HF config on the
    nnsight backend, which the forward pass does not read; edit the live one.
    """
    configs = [getattr(getattr(model, "_model", None), "config", None)]
    configs += [getattr(c, "text_config", None) for c in configs if c is not None]
    saved = [
        (c, c.final_logit_softcapping)
        for c in configs
        if c is not None and getattr(c, "final_logit_softcapping", None) is not None
    ]
    try:
        for c, _ in saved:
            c.final_logit_softcapping = None
        with model.zero_softcap():  # the transformerlens backend's own switch
            yield
    finally:
        for c, v in saved:
            c.final_logit_softcapping = v


def _plan_nodes(
    spec: FeatureSpec,
    *,
    spec_index: int,
    graph_id: int,
    acts: torch.Tensor,
    stored: StoredGraph | None,
    target_node: int | None,
    seed: int,
) -> list[tuple[int, list[tuple[int, int, int]]]]:
    """(rank, nodes) interventions of one SPEC for one prompt; rank 0 for a group."""
    if spec.kind == "features":
        nodes = []
        for layer, feat in spec.features:
            if not (0 <= layer < acts.shape[0] and 0 <= feat < acts.shape[2]):
                raise CircuitrayError(
                    f"--features {spec.text!r}: no feature {layer}:{feat} in a model of "
                    f"{acts.shape[0]} layers x {acts.shape[2]} features"
                )
            for pos in torch.nonzero(acts[layer, :, feat] > 0).flatten().tolist():
                nodes.append((layer, int(pos), feat))
        return [(0, nodes)]
    if spec.kind == "random":
        active = [(int(la), int(p), int(f)) for la, p, f in torch.nonzero(acts > 0).tolist()]
        rng = random.Random(f"{seed}:{graph_id}:{spec_index}")
        return [(0, sorted(rng.sample(active, min(spec.k or 0, len(active)))))]
    if spec.kind in ("top", "single"):
        if stored is None:
            raise ValueError("no stored graph for this prompt")
        if target_node is None:
            raise ValueError("the target token is not a logit node of the stored graph")
        drops = stored.ablation_effects(target_node, by=spec.rank_by or "direct")
        ranked = sorted(drops.items(), key=lambda kv: (-kv[1], kv[0]))[: spec.k]
        chosen = []
        for node, drop in ranked:
            if drop <= 0:
                break
            i = stored.index[node]
            chosen.append((int(stored.layer[i]), int(stored.pos[i]), int(stored.feature[i])))
        if spec.kind == "top":
            return [(0, chosen)]
        # No node to ablate still gives a row, so the prompt counts as done.
        return [(r + 1, [node]) for r, node in enumerate(chosen)] or [(0, [])]
    raise ValueError(f"unresolved SPEC kind {spec.kind!r}")


def intervene_prompt(
    model,
    graph: dict,
    *,
    stored: StoredGraph | None,
    plan: InterventionPlan,
    worker: str = "",
) -> list[dict]:
    """Result rows of every planned intervention on one prompt (a graphs row of the
    source run). Never raises for prompt-level failures: a failing SPEC gives one row
    with ``status='error'``."""
    base = {
        "graph_id": graph["graph_id"],
        "prompt_id": graph["prompt_id"],
        "constraint_type": graph.get("constraint_type"),
        "scale": plan.scale,
        "worker": worker,
    }
    n_layers = int(model.cfg.n_layers)
    graph_frame = plan.graph_frame(n_layers)
    frame = _logit_softcap_off(model) if graph_frame else contextlib.nullcontext()
    rows: list[dict] = []
    with frame:
        try:
            t0 = time.perf_counter()
            clean = _clean_pass(model, graph, stored)
            setup_s = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - one bad prompt must not stop a run
            return [_error_row(base, i, spec, e) for i, spec in enumerate(plan.specs)]

        for spec_index, spec in enumerate(plan.specs):
            try:
                planned = _plan_nodes(
                    spec,
                    spec_index=spec_index,
                    graph_id=graph["graph_id"],
                    acts=clean.acts,
                    stored=stored,
                    target_node=clean.target_node,
                    seed=plan.seed,
                )
            except Exception as e:  # noqa: BLE001
                rows.append(_error_row(base, spec_index, spec, e))
                continue
            for rank, nodes in planned:
                t0 = time.perf_counter()
                row = {**base, "spec_index": spec_index, "spec": spec.text, "rank": rank}
                row["target_source"] = clean.target_source
                try:
                    row.update(_run_one(model, clean, nodes, plan=plan, stored=stored))
                    row.update(status="ok", frame="graph" if graph_frame else "model")
                except Exception as e:  # noqa: BLE001
                    logger.warning("intervention %s on %s failed: %s", spec.text, base, e)
                    row.update(status="error", error=_one_line(e))
                row["total_s"] = time.perf_counter() - t0 + setup_s / max(1, len(plan.specs))
                rows.append(row)
    return rows


@dataclass
class _CleanPass:
    """One prompt without intervention (module docstring, step 2) and its target."""

    tokens: torch.Tensor
    acts: torch.Tensor  # (layers, positions, features), dense
    logits: torch.Tensor  # next-token logits, float64
    target_id: int
    target_source: str
    target_node: int | None
    measured: dict
    contrast: list[int] | None = None  # the alternatives of a contrast target


def _clean_pass(model, graph: dict, stored: StoredGraph | None) -> _CleanPass:
    tokens = model.ensure_tokenized(graph["prompt"])
    logits, acts = model.get_activations(tokens)
    before = logits[0, -1].double()
    contrast = graph.get("contrast_token_ids") if graph.get("target_mode") == "contrast" else None
    if contrast:
        tid, source = int(graph["target_token_id"]), "contrast"
        node = stored.only_logit_node() if stored is not None else None
    else:
        contrast = None
        tid, source = _target(model, graph, stored, before)
        node = stored.logit_node(tid) if stored is not None else None
    return _CleanPass(
        tokens=tokens,
        acts=acts.to_dense() if acts.is_sparse else acts,
        logits=before,
        target_id=tid,
        target_source=source,
        target_node=node,
        measured=_measure(model, before, tid, contrast),
        contrast=contrast,
    )


def _target(model, graph: dict, stored: StoredGraph | None, logits) -> tuple[int, str]:
    """(token id, source) of the target (module docstring)."""
    if graph.get("target_mode") == "answer" and graph.get("target_token_id") is not None:
        return int(graph["target_token_id"]), "expected"
    tid = target_token_id(model.tokenizer, graph["target"]) if graph.get("target") else None
    if tid is not None and (stored is None or stored.logit_node(tid) is not None):
        return tid, "expected"
    top = stored.top_logit_token() if stored is not None else None
    if top is not None:
        return top, "graph_top"
    return (tid, "expected") if tid is not None else (int(logits.argmax()), "model_top")


def _run_one(
    model, clean: _CleanPass, nodes: list, *, plan: InterventionPlan, stored: StoredGraph | None
) -> dict:
    """Steps 3-5 of the module docstring for one intervention."""
    tid = clean.target_id
    out: dict = {
        "n_features": len(nodes),
        "features": [{"layer": la, "pos": p, "feature": f} for la, p, f in nodes],
        "target_token": model.tokenizer.decode([tid]),
        "target_token_id": tid,
    }
    if nodes:
        interventions = [(la, p, f, plan.scale * float(clean.acts[la, p, f])) for la, p, f in nodes]
        logits, _ = model.feature_intervention(
            clean.tokens,
            interventions,
            constrained_layers=plan.layer_range(),
            freeze_attention=plan.freeze_attention,
            return_activations=False,
        )
        after = logits[0, -1].double()
    else:  # nothing to change in this prompt (e.g. none of the features is active)
        after = clean.logits
    before, measured = clean.measured, _measure(model, after, tid, clean.contrast)
    p_before = torch.log_softmax(clean.logits, -1)
    p_after = torch.log_softmax(after, -1)
    out.update(
        target_logit_before=before["logit"],
        target_logit_after=measured["logit"],
        target_logit_change=measured["demeaned"] - before["demeaned"],
        target_prob_before=before["prob"],
        target_prob_after=measured["prob"],
        top_token_before=before["top"],
        top_token_after=measured["top"],
        kl=float((p_before.exp() * (p_before - p_after)).sum()),
    )
    if stored is not None:
        in_graph = stored.feature_node_ids(nodes)
        out["n_in_graph"] = len(in_graph)
        if clean.target_node is not None:
            direct, total = stored.predicted_changes([in_graph], clean.target_node, plan.scale)
            out.update(predicted_direct=float(direct[0]), predicted_total=float(total[0]))
    return out


def _measure(model, logits: torch.Tensor, tid: int, contrast: list[int] | None = None) -> dict:
    """The target's logit and probability, the top token, and what the graph's target
    node stands for: the logit minus the mean logit, or minus the alternatives' mean."""
    probs = torch.softmax(logits, -1)
    reference = logits[list(contrast)].mean() if contrast else logits.mean()
    return {
        "logit": float(logits[tid]),
        "demeaned": float(logits[tid] - reference),
        "prob": float(probs[tid]),
        "top": model.tokenizer.decode([int(logits.argmax())]),
    }


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}"[:2000]


def _error_row(base: dict, spec_index: int, spec: FeatureSpec, e: BaseException) -> dict:
    logger.warning("intervention %s on graph %s failed: %s", spec.text, base["graph_id"], e)
    return {
        **base,
        "spec_index": spec_index,
        "spec": spec.text,
        "rank": 0,
        "status": "error",
        "error": _one_line(e),
    }
