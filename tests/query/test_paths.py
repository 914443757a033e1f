"""The paths and path_stats queries against a plain-Python search of the same Parquet.

Exhaustive checks run on small synthetic graphs (where every path can be listed and a
beam wide enough to cut nothing is cheap); the tiny model's real graphs have up to
~10^5 partial paths per hop, so on them the beam search is checked for valid paths and
against the exact optimum found by dynamic programming.
"""

from __future__ import annotations

import math
from collections import defaultdict
from statistics import mean, median

import pyarrow.parquet as pq
import pytest

from circuitray.bench import SyntheticSpec, make_synthetic_run
from circuitray.query.engine import run_query

MAX_EXHAUSTIVE = 3000  # partial paths per hop up to which a graph is searched exhaustively


class RunGraphs:
    """Edges, nodes and graphs of a run folder, indexed for path search."""

    def __init__(self, out):
        self.graphs = {g["graph_id"]: g for g in pq.read_table(out / "graphs").to_pylist()}
        self.nodes = {
            (n["graph_id"], n["node_id"]): n for n in pq.read_table(out / "nodes").to_pylist()
        }
        self.inflow: dict[tuple[int, int], list[tuple[int, float, int]]] = defaultdict(list)
        totals: dict[tuple[int, int], float] = defaultdict(float)
        edges = pq.read_table(out / "edges").to_pylist()
        for e in edges:
            totals[(e["graph_id"], e["dst"])] += abs(e["weight"])
        for e in edges:
            key = (e["graph_id"], e["dst"])
            sign = (e["weight"] > 0) - (e["weight"] < 0)
            self.inflow[key].append((e["src"], abs(e["weight"]) / totals[key], sign))

    def target(self, gid: int) -> int:
        logits = [n for (g, _), n in self.nodes.items() if g == gid and n["node_type"] == "logit"]
        want = self.graphs[gid]["target_token"]
        return max(logits, key=lambda n: (n["token"] == want, n["logit_prob"]))["node_id"]

    def is_token(self, gid: int, node: int) -> bool:
        return self.nodes[(gid, node)]["node_type"] == "token"

    def widest_hop(self, gid: int) -> int:
        """The most path extensions (partial or reaching a token) at any hop back from
        the target: a beam this wide cuts nothing."""
        frontier, widest = [self.target(gid)], 0
        while frontier:
            extended = [src for v in frontier for src, _, _ in self.inflow[(gid, v)]]
            widest = max(widest, len(extended))
            frontier = [src for src in extended if not self.is_token(gid, src)]
        return widest

    def best_strength(self, gid: int) -> float:
        """The exact strongest token -> target path strength (DP over the DAG)."""
        memo: dict[int, float] = {}

        def best(v: int) -> float:
            if self.is_token(gid, v):
                return 1.0
            if v not in memo:
                memo[v] = max(
                    (share * best(src) for src, share, _ in self.inflow[(gid, v)]), default=0.0
                )
            return memo[v]

        return best(self.target(gid))

    def all_paths(self, gid: int) -> list[tuple[float, int, list[int]]]:
        """Every token -> target path: (strength, sign, node ids from token to target)."""
        done = []
        stack = [(1.0, 1, [self.target(gid)])]
        while stack:
            strength, sign, path = stack.pop()
            for src, share, s in self.inflow[(gid, path[0])]:
                item = (strength * share, sign * s, [src, *path])
                (done if self.is_token(gid, src) else stack).append(item)
        return done


@pytest.fixture(scope="module")
def tiny_graphs(ray_run) -> RunGraphs:
    return RunGraphs(ray_run.out)


@pytest.fixture(scope="module")
def small_synthetic(tmp_path_factory):
    """Synthetic graphs small enough to list every path."""
    out = tmp_path_factory.mktemp("paths") / "small"
    spec = SyntheticSpec(
        edges=1500, edges_per_graph=40, nodes_per_graph=40, n_layers=3, n_tokens=4, n_logits=3
    )
    make_synthetic_run(str(out), spec)
    return out


def test_exhaustive_beam_finds_the_strongest_paths(small_synthetic):
    graphs = RunGraphs(small_synthetic)
    searched = 0
    for gid in sorted(graphs.graphs):
        widest = graphs.widest_hop(gid)
        if widest > MAX_EXHAUSTIVE:
            continue
        tiny_graphs = graphs
        beam = widest  # no path is ever cut
        rows = run_query(
            "paths",
            [str(small_synthetic)],
            params={"graph_id": str(gid), "top_k": "5", "beam": str(beam)},
        ).to_pylist()
        expected = sorted(tiny_graphs.all_paths(gid), key=lambda p: (-p[0], p[2]))[:5]
        if not expected:  # the target has no path back to a token
            assert rows == []
            continue
        assert [r["rank"] for r in rows] == list(range(1, len(expected) + 1))
        assert {r["graph_id"] for r in rows} == {gid}
        for row, (strength, _, path) in zip(rows, expected, strict=True):
            assert row["strength"] == pytest.approx(strength, abs=2e-6), (gid, row, path)
            assert row["hops"] == len(path) - 1
        searched += 1
        # Ranks can swap only between paths of (nearly) equal strength.
        assert (
            len(expected) == 1
            or rows[0]["path"] == expected[0][2]
            or math.isclose(expected[0][0], expected[1][0], rel_tol=1e-6)
        )
        top = rows[0]
        assert top["sign"] == expected[0][1]
        assert top["label"].count(" -> ") == top["hops"]
        assert top["label"].startswith("tok ") and " -> logit " in top["label"]
        assert top["via_error"] == any(
            tiny_graphs.nodes[(gid, n)]["node_type"] == "error" for n in top["path"]
        )
    assert searched >= 10, f"only {searched} synthetic graphs were small enough"


def test_beam_search_on_real_graphs_approaches_the_optimum(ray_run, tiny_graphs):
    rows = run_query("paths", [str(ray_run.out)], params={"top_k": "1", "beam": "32"})
    found = {r["graph_id"]: r["strength"] for r in rows.to_pylist()}
    ratios = []
    for gid, strength in found.items():
        optimum = tiny_graphs.best_strength(gid)
        assert strength <= optimum + 1e-6, (gid, strength, optimum)  # rounded to 6 places
        ratios.append(strength / optimum)
    assert len(ratios) == sum(g["status"] == "ok" for g in tiny_graphs.graphs.values())
    assert mean(ratios) > 0.9, sorted(ratios)


def test_narrow_beam_gives_valid_paths(ray_run, tiny_graphs):
    rows = run_query("paths", [str(ray_run.out)], params={"beam": "2", "top_k": "2"}).to_pylist()
    ok = [g for g, row in tiny_graphs.graphs.items() if row["status"] == "ok"]
    # A beam of 2 can follow only dead ends (nodes whose inputs were pruned) and find
    # nothing in a graph; most graphs still get a path.
    assert {r["graph_id"] for r in rows} <= set(ok)
    assert len({r["graph_id"] for r in rows}) >= len(ok) / 2
    for r in rows:
        gid, path = r["graph_id"], r["path"]
        assert tiny_graphs.is_token(gid, path[0])
        assert path[-1] == tiny_graphs.target(gid)
        strength, sign = 1.0, 1
        for src, dst in zip(path, path[1:], strict=False):
            match = [(share, s) for n, share, s in tiny_graphs.inflow[(gid, dst)] if n == src]
            assert match, f"graph {gid}: {src} -> {dst} is not a stored edge"
            strength *= match[0][0]
            sign *= match[0][1]
        assert r["strength"] == pytest.approx(strength, abs=2e-6)
        assert r["sign"] == sign
        assert r["constraint_type"] == tiny_graphs.graphs[gid]["constraint_type"]


def test_max_graphs_samples_the_same_prompts_per_type(ray_run, tiny_graphs):
    rows = run_query(
        "paths", [str(ray_run.out), str(ray_run.out)], params={"max_graphs": "2", "top_k": "1"}
    ).to_pylist()
    per_run_type = defaultdict(set)
    for r in rows:
        per_run_type[(r["run"], r["constraint_type"])].add(r["graph_id"])
    assert len(per_run_type) == 2 * 3
    assert all(len(ids) == 2 for ids in per_run_type.values())
    runs = sorted({r["run"] for r in rows})
    for ctype in {r["constraint_type"] for r in rows}:
        assert per_run_type[(runs[0], ctype)] == per_run_type[(runs[1], ctype)]


def test_path_stats_matches_the_paths_it_uses(ray_run):
    params = {"top_k": "3", "beam": "4"}
    paths = run_query("paths", [str(ray_run.out)], params=params).to_pylist()
    stats = {
        r["constraint_type"]: r
        for r in run_query("path_stats", [str(ray_run.out)], params=params).to_pylist()
    }
    by_graph = defaultdict(list)
    for p in paths:
        by_graph[(p["constraint_type"], p["graph_id"])].append(p)
    by_type = defaultdict(list)
    for (ctype, _), ps in by_graph.items():
        by_type[ctype].append(ps)
    assert set(stats) == set(by_type)
    for ctype, graphs in by_type.items():
        s = stats[ctype]
        best = [next(p for p in ps if p["rank"] == 1) for ps in graphs]
        hops = [b["hops"] for b in best]
        assert s["graphs"] == len(graphs)
        assert s["mean_hops"] == pytest.approx(mean(hops), abs=1e-3)
        assert s["median_hops"] == pytest.approx(median(hops))
        assert s["direct_share"] == pytest.approx(mean(h == 1 for h in hops), abs=1e-4)
        assert s["via_error_share"] == pytest.approx(mean(b["via_error"] for b in best), abs=1e-4)
        assert s["mean_strength"] == pytest.approx(mean(b["strength"] for b in best), abs=1e-5)
        shares = [max(p["strength"] for p in ps) / sum(p["strength"] for p in ps) for ps in graphs]
        assert s["mean_top_path_share"] == pytest.approx(mean(shares), abs=1e-3)
