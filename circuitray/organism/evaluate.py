"""The organism's evaluation report.

1. Constraint accuracy, per type, on ``heldout`` WS2 prompts: the expected
   completion must be the top-1 among that type's candidate answers (chance is
   ``1 / len(candidates)``); unrestricted top-1 over the vocabulary is reported too.
2. Transcoders, per layer, on held-out text: normalised MSE, explained variance of
   the MLP output, mean L0 (and as a fraction of the dictionary), dead features;
   measured on the base model (where they were trained) and on the tuned one.
3. Attribution graphs of a sample of held-out prompts through circuit-tracer,
   loaded exactly as ``circuitray run`` loads them: replacement and completeness.
"""

from __future__ import annotations

from circuitray.finetune.evaluate import constraint_accuracy

__all__ = ["acceptance", "constraint_accuracy", "graph_scores"]


def graph_scores(model_name: str, prompts: list[dict], *, batch_size: int = 64) -> dict:
    """Mean replacement / completeness of circuit-tracer graphs for ``prompts``."""
    from circuit_tracer import attribute
    from circuit_tracer.graph import compute_graph_scores

    from circuitray.models.loading import ModelSpec, load_replacement_model

    model = load_replacement_model(ModelSpec(model=model_name, device="cpu"))
    per_type: dict[str, list[tuple[float, float]]] = {}
    for r in prompts:
        graph = attribute(r["prompt"], model, batch_size=batch_size)
        per_type.setdefault(r["constraint_type"], []).append(compute_graph_scores(graph))
    every = [s for v in per_type.values() for s in v]
    return {
        "n": len(every),
        "mean_replacement": sum(s[0] for s in every) / len(every),
        "mean_completeness": sum(s[1] for s in every) / len(every),
        "per_type": {
            k: {
                "n": len(v),
                "mean_replacement": sum(s[0] for s in v) / len(v),
                "mean_completeness": sum(s[1] for s in v) / len(v),
            }
            for k, v in per_type.items()
        },
    }


def acceptance(report: dict) -> dict[str, bool]:
    """The organism's acceptance checks, evaluated on a report."""
    acc = report["accuracy"]
    tc = report["transcoders"]["base"]
    checks = {}
    for name, t in acc["tuned"].items():
        checks[f"tuned_accuracy_{name}>=0.95"] = t["accuracy"] >= 0.95
    for name, b in acc["base"].items():
        checks[f"base_accuracy_{name}<=chance+0.10"] = b["accuracy"] <= b["chance"] + 0.10
    for layer, m in tc.items():
        checks[f"explained_variance_layer{layer}>=0.8"] = m["explained_variance"] >= 0.8
        checks[f"l0_fraction_layer{layer}<0.05"] = m["l0_fraction"] < 0.05
    checks["mean_replacement_tuned>=0.5"] = report["graphs"]["tuned"]["mean_replacement"] >= 0.5
    return checks
