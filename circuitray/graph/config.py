"""What the graph step of a run is asked to do: ``attribute()``'s arguments and the
target mode (:class:`AttributionConfig`), and circuit-tracer's pruning thresholds
(:class:`PruneConfig`).

These dataclasses are the single source of the defaults the CLI, run.json and the
fingerprint use. The module imports no torch, so the driver, the CLI and the query
side can read and check a run's settings without loading it (the actors that compute
graphs import :mod:`circuitray.graph.attribute` and :mod:`circuitray.graph.prune`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from circuitray.errors import CircuitrayError
from circuitray.graph.targets import TARGET_MODES

__all__ = ["AttributionConfig", "PruneConfig"]


@dataclass(frozen=True)
class AttributionConfig:
    """Arguments of circuit-tracer's ``attribute()``, plus a prompt length limit.

    Attributes:
        max_n_logits: Most logit nodes (top logits by probability).
        desired_logit_prob: Add logit nodes until their probabilities sum to this.
        batch_size: Source nodes per backward pass (64-128 is fastest on CPU).
        max_feature_nodes: Most feature nodes; None keeps every active feature.
        offload: circuit-tracer's parameter offloading (None, 'cpu', 'disk').
        update_interval: Batches between re-rankings of pending features.
        max_tokens: Prompts with more tokens (BOS included) become error rows.
        target: What each graph explains: 'top' (the model's top logits, as chosen by
            max_n_logits and desired_logit_prob), 'answer' (the prompt's target column,
            one logit node) or 'contrast' (the target's logit minus the mean of its
            alternatives': a contrast column, else candidates without the target).
    """

    max_n_logits: int = 10
    desired_logit_prob: float = 0.95
    batch_size: int = 128
    max_feature_nodes: int | None = None
    offload: str | None = None
    update_interval: int = 4
    max_tokens: int = 64
    target: str = "top"

    def __post_init__(self) -> None:
        if self.target not in TARGET_MODES:
            raise CircuitrayError(
                f"--target {self.target}: choose one of {', '.join(TARGET_MODES)}"
            )

    def attribute_kwargs(self) -> dict:
        """``attribute()``'s keyword arguments (targets come per prompt)."""
        d = asdict(self)
        d.pop("max_tokens")
        d.pop("target")
        return d


@dataclass(frozen=True)
class PruneConfig:
    """circuit-tracer's pruning thresholds.

    Attributes:
        node_threshold: Keep the nodes that carry this fraction of total influence.
        edge_threshold: Keep the edges that carry this fraction of total edge score.
    """

    node_threshold: float = 0.8
    edge_threshold: float = 0.98
