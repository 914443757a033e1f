"""circuitray's pruning (:func:`circuitray.graph.prune.prune_masks`) against circuit-tracer's
``prune_graph`` on large graphs: identical masks, peak memory, time, and a memory limit
that only one of them fits in.

1. Each measurement runs in a fresh Python process, so its peak RSS is that method's
   alone (``VmHWM`` from /proc: ``ru_maxrss`` would carry a large parent's peak over
   fork and exec). The process builds a graph of N nodes row block by row block (so
   building it leaves no N^2 temporaries behind), reads its RSS high-water mark, prunes,
   and reports the peak increase, the time, and a hash of both masks.
2. Graphs: a float32 adjacency with about ``density`` of the lower triangle non-zero,
   signed values rounded to 1/64 (many exact ties), token columns dense, 16 tokens and
   10 logits, as an attribution graph of that many nodes is laid out.
3. The memory-limit run sets ``RLIMIT_AS`` in the child to its current address space
   plus ``limit_bytes_per_entry`` x N^2, then prunes: prune_graph needs far more than
   that and fails; prune_masks fits.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass

__all__ = ["PruningBenchConfig", "compare_pruning"]

CHILD = r"""
import hashlib, json, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[5]))
method, n, density, seed = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
limit = float(sys.argv[6])
n_tok, n_log = 16, 10
g = torch.Generator().manual_seed(seed)
a = torch.zeros(n, n)
for r0 in range(0, n, 512):
    r1 = min(n, r0 + 512)
    block = torch.round(torch.randn(r1 - r0, n, generator=g) * 64) / 64
    keep = torch.rand(r1 - r0, n, generator=g) < density
    cols = torch.arange(n)
    keep &= cols[None, :] < torch.arange(r0, r1)[:, None]
    keep[:, n - n_tok - n_log : n - n_log] = True
    a[r0:r1] = block * keep
a[n - n_tok - n_log :] = 0  # tokens have no inputs; logits are filled below
a[n - n_log :, : n - n_log] = torch.randn(n_log, n - n_log, generator=g)
probs = torch.softmax(torch.randn(n_log, generator=g), 0)
n_features = n - n_log - n_tok - 4 * n_tok
from circuit_tracer.graph import prune_graph  # imports before the baseline is read
from circuitray.graph.prune import prune_masks
from circuitray.bench.environment import peak_rss_kb, proc_status_kb
if limit > 0:
    budget = proc_status_kb("VmSize") * 1024 + int(limit * n * n)
    resource.setrlimit(resource.RLIMIT_AS, (budget, budget))
base = peak_rss_kb()
t0 = time.perf_counter()
try:
    if method == "circuit-tracer":
        class Graph: pass
        graph = Graph()
        graph.adjacency_matrix, graph.logit_probabilities = a, probs
        graph.input_tokens = torch.zeros(n_tok, dtype=torch.long)
        graph.logit_targets = [None] * n_log
        graph.selected_features = torch.arange(n_features)
        node_mask, edge_mask, _ = prune_graph(graph)
    else:
        out = prune_masks(a, probs, n_tokens=n_tok, n_features=n_features)
        node_mask, edge_mask = out.node_mask, out.edge_mask
except (RuntimeError, MemoryError) as e:
    print(json.dumps({"ok": False, "error": str(e).splitlines()[0][:200]}))
    sys.exit(0)
seconds = time.perf_counter() - t0
peak = peak_rss_kb()
digest = hashlib.sha256(node_mask.numpy().tobytes() + edge_mask.numpy().tobytes()).hexdigest()
print(json.dumps({"ok": True, "seconds": seconds, "peak_mb": (peak - base) / 1024,
                  "kept_nodes": int(node_mask.sum()), "kept_edges": int(edge_mask.sum()),
                  "nonzero": int((a != 0).sum()), "masks_sha256": digest}))
"""


@dataclass(frozen=True)
class PruningBenchConfig:
    """Graph sizes and the memory limit of the comparison.

    Attributes:
        sizes: Node counts N to compare at.
        density: Share of the lower triangle that is non-zero.
        threads: torch threads in each child process.
        limit_size: N of the memory-limit run.
        limit_bytes_per_entry: The limit, in bytes per adjacency entry above the
            process's address space once the graph is built.
        seed: Graph seed.
    """

    sizes: tuple[int, ...] = (4_000, 8_000, 15_000)
    density: float = 0.3
    threads: int = 2
    limit_size: int = 8_000
    limit_bytes_per_entry: float = 12.0
    seed: int = 0


def _child(method: str, n: int, config: PruningBenchConfig, *, limit: float = 0.0) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, method, str(n), str(config.density), str(config.seed),
         str(config.threads), str(limit)],
        capture_output=True,
        text=True,
        timeout=1800,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        # Killed outright (e.g. by the kernel for memory) rather than a Python error.
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return {"ok": False, "error": tail[0][:200]}
    return json.loads(lines[-1])


QUICK = PruningBenchConfig(sizes=(1_500, 3_000), limit_size=3_000)


def compare_pruning(config: PruningBenchConfig | None = None, *, quick: bool = False) -> dict:
    """Both methods at every size, then the memory-limit run (see module docstring).
    ``rows`` holds one flat row per size for printing; ``quick`` uses small graphs."""
    config = config or (QUICK if quick else PruningBenchConfig())
    rows = []
    for n in config.sizes:
        ours = _child("circuitray", n, config)
        theirs = _child("circuit-tracer", n, config)
        row = {"n": n, "circuitray": ours, "circuit_tracer": theirs}
        if ours["ok"] and theirs["ok"]:
            row["identical_masks"] = ours["masks_sha256"] == theirs["masks_sha256"]
            row["memory_ratio"] = ours["peak_mb"] / max(theirs["peak_mb"], 1e-9)
            row["speedup"] = theirs["seconds"] / max(ours["seconds"], 1e-9)
        rows.append(row)
    limit = {
        "n": config.limit_size,
        "bytes_per_entry": config.limit_bytes_per_entry,
        "circuitray": _child(
            "circuitray", config.limit_size, config, limit=config.limit_bytes_per_entry
        ),
        "circuit_tracer": _child(
            "circuit-tracer", config.limit_size, config, limit=config.limit_bytes_per_entry
        ),
    }
    table = [
        {
            "n": r["n"],
            "identical_masks": r.get("identical_masks"),
            "circuitray_mb": r["circuitray"].get("peak_mb"),
            "circuit_tracer_mb": r["circuit_tracer"].get("peak_mb"),
            "memory_ratio": r.get("memory_ratio"),
            "circuitray_s": r["circuitray"].get("seconds"),
            "circuit_tracer_s": r["circuit_tracer"].get("seconds"),
            "speedup": r.get("speedup"),
        }
        for r in rows
    ]
    table.append(
        {
            "n": f"{limit['n']} under a limit of {config.limit_bytes_per_entry:g} B/entry",
            "circuitray_s": "completes" if limit["circuitray"]["ok"] else "fails",
            "circuit_tracer_s": "completes" if limit["circuit_tracer"]["ok"] else "fails",
        }
    )
    return {"config": asdict(config), "rows": table, "sizes": rows, "memory_limit": limit}
