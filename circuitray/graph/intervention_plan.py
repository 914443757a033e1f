"""What an intervention job does to every prompt: its ``--features`` SPECs, parsed
(:func:`parse_feature_spec`), and the plan they make (:class:`InterventionPlan`,
recorded in ``intervention.json``). Step 1 of :mod:`circuitray.graph.interventions`,
which runs the plan on a model.

This module imports no torch: the driver and the CLI parse and check SPECs (one line
for a bad one) before any model or Ray is started.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from circuitray.errors import CircuitrayError

__all__ = ["RANKINGS", "SPEC_KINDS", "FeatureSpec", "InterventionPlan", "parse_feature_spec"]

SPEC_KINDS = ("features", "query", "top", "random", "single")
_K_RE = re.compile(r"^(top|random|single):(\d+)(?::(\w+))?$")
RANKINGS = ("direct", "total", "influence")
_PAIR_RE = re.compile(r"^(\d+):(\d+)$")


@dataclass(frozen=True)
class FeatureSpec:
    """One ``--features`` SPEC.

    Attributes:
        text: The SPEC as the user gave it (stored in every result row).
        kind: ``features`` (explicit pairs), ``query`` (unresolved named query),
            ``top``, ``random`` or ``single``.
        k: Number of nodes for ``top``/``random``/``single``.
        rank_by: What ranks nodes for ``top``/``single`` (see :data:`RANKINGS`).
        features: (layer, feature) pairs for ``features``.
        query: Named query for ``query``.
        params: ``key=value`` pairs of a query SPEC (parameters or row filters).
    """

    text: str
    kind: str
    k: int | None = None
    rank_by: str | None = None
    features: tuple[tuple[int, int], ...] = ()
    query: str | None = None
    params: tuple[tuple[str, str], ...] = ()


def parse_feature_spec(text: str) -> FeatureSpec:
    """Parse a SPEC (see module docstring); ``query:NAME?key=value&...`` gives a
    ``query`` spec whose keys are the query's parameters or filters on its rows."""
    t = text.strip()
    if m := _K_RE.match(t):
        k = int(m.group(2))
        if k < 1:
            raise CircuitrayError(f"--features {text!r}: K must be at least 1")
        by = m.group(3)
        if by is not None and (m.group(1) == "random" or by not in RANKINGS):
            raise CircuitrayError(
                f"--features {text!r}: rank by one of {', '.join(RANKINGS)} (top and single only)"
            )
        rank_by = by or ("direct" if m.group(1) != "random" else None)
        return FeatureSpec(text=t, kind=m.group(1), k=k, rank_by=rank_by)
    if t.startswith("query:"):
        name, _, rest = t[len("query:") :].partition("?")
        if not re.fullmatch(r"\w+", name):
            raise CircuitrayError(f"--features {text!r}: expected query:NAME?key=value&...")
        params = []
        for item in filter(None, rest.split("&")):
            key, eq, value = item.partition("=")
            if not eq or not re.fullmatch(r"\w+", key):
                raise CircuitrayError(f"--features {text!r}: {item!r} is not key=value")
            params.append((key, value))
        return FeatureSpec(text=t, kind="query", query=name, params=tuple(params))
    pairs = []
    for item in filter(None, (p.strip() for p in t.split(","))):
        m = _PAIR_RE.match(item)
        if not m:
            raise CircuitrayError(
                f"--features {text!r}: {item!r} is not LAYER:FEATURE; a SPEC is "
                "'L:F,L:F', 'query:NAME?key=value', 'top:K', 'random:K' or 'single:K'"
            )
        pairs.append((int(m.group(1)), int(m.group(2))))
    if not pairs:
        raise CircuitrayError(f"--features {text!r}: no features given")
    return FeatureSpec(text=t, kind="features", features=tuple(dict.fromkeys(pairs)))


@dataclass(frozen=True)
class InterventionPlan:
    """What to do to every prompt (recorded in ``intervention.json``).

    Attributes:
        specs: Resolved SPECs (no ``query`` kind left), in ``--features`` order.
        scale: Intervened activations become ``scale`` x their clean value (0 ablates).
        constrained_layers: (start, stop) of circuit-tracer's ``constrained_layers``
            range, or None for unconstrained (effects propagate through transcoders).
        freeze_attention: circuit-tracer's ``freeze_attention``.
        seed: Seeds ``random:K`` draws (with the graph id and SPEC index).
    """

    specs: tuple[FeatureSpec, ...]
    scale: float = 0.0
    constrained_layers: tuple[int, int] | None = None
    freeze_attention: bool = True
    seed: int = 0

    def layer_range(self) -> range | None:
        return range(*self.constrained_layers) if self.constrained_layers else None

    def graph_frame(self, n_layers: int) -> bool:
        """Direct-effect setting: every layer constrained (see module docstring, 3)."""
        r = self.layer_range()
        return r is not None and set(range(n_layers)) <= set(r)
