"""Pipeline files: validation with errors naming the file and key, a local run of
runs + queries + comparisons, resume, and the shipped pipelines/*.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import assert_one_line_error, circuitray

from circuitray.errors import CircuitrayError
from circuitray.jobs.pipeline import Pipeline, run_pipeline

REPO = Path(__file__).resolve().parents[2]

TINY = """
name: tiny-pair
prompts: {ws2: {n: 6, seed: 3}}
run_options: {batch_size: 3, attribution: {max_n_logits: 5}}
runs:
  a: {model: tiny}
  b: {model: tiny, prune: {node_threshold: 0.5, edge_threshold: 0.9}}
queries:
  - {name: constraint_stats, runs: [a, b]}
  - {name: top_features, runs: [a], params: {top_k: 2}, label: top}
compare:
  - {baseline: a, candidate: b, metrics: [n_kept_nodes, target_prob], n_boot: 500}
interventions:
  - {name: ablate, run: a, features: ["top:1", "random:1"], batch_size: 3}
"""


def _write(tmp_path, text: str, name: str = "p.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_shipped_pipelines_load():
    files = sorted((REPO / "pipelines").glob("*.yaml"))
    assert {f.name for f in files} >= {"ws2_constraint_comparison.yaml", "ws2_gemma_2b.yaml"}
    for f in files:
        pipe = Pipeline.load(f)
        assert (pipe.runs or pipe.series) and (pipe.queries or pipe.compare), f


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("name: x\nprompts: {ws2: {n: 2}}\nrunz: {}\n", "unknown key 'runz'"),
        ("prompts: {ws2: {n: 2}}\nruns: {}\n", "runs: define at least one run"),
        ("runs: {a: {model: tiny}}\n", "prompts: give exactly one"),
        (
            "prompts: {ws2: {n: 2}}\nruns: {a: {model: tiny}}\n"
            "queries: [{name: constraint_stats, runs: [nope]}]\n",
            "queries[0]: run 'nope' is not defined",
        ),
        (
            "prompts: {ws2: {n: 2}}\nruns: {a: {model: tiny}}\nqueries: [{name: no_such}]\n",
            "queries[0]: unknown query 'no_such'",
        ),
        (
            "prompts: {ws2: {n: 2}}\nruns: {a: {model: tiny}}\n"
            "queries: [{name: paths, params: {top_k: '1; DROP TABLE x'}}]\n",
            "parameter 'top_k' must be int",
        ),
        (
            "prompts: {ws2: {n: 2}}\nruns: {a: {model: tiny, batchsize: 3}}\n",
            "runs.a.batchsize: not a run or model option",
        ),
        (
            "prompts: {ws2: {n: 2}}\nruns: {a: {model: tiny, prune: {node: 1}}}\n",
            "runs.a.prune",
        ),
        (
            "prompts: {ws2: {n: 2}}\nruns: {a: {model: tiny}}\ncompare: [{baseline: a}]\n",
            "compare[0]: give baseline and candidate",
        ),
        (
            "prompts: {ws2: {n: 2}}\nruns: {a: {model: tiny}}\n"
            "interventions: [{name: x, run: nope, features: [top:1]}]\n",
            "interventions[0]: run 'nope' is not defined",
        ),
        (
            "prompts: {ws2: {n: 2}}\nruns: {a: {model: tiny}}\n"
            "interventions: [{name: x, run: a, features: ['top:0']}]\n",
            "interventions[0].features: --features 'top:0'",
        ),
        (
            "prompts: {ws2: {n: 2}}\nruns: {a: {model: tiny}}\n"
            "interventions: [{name: x, run: a, features: [top:1], scaled: 2}]\n",
            "interventions[0]: unknown key 'scaled'",
        ),
        ("prompts: [\n", "not valid YAML"),
        (
            "prompts: {ws2: {n: 2}}\nruns: {a: {model: tiny, actors: 0}}\n",
            "runs.a: --actors 0: must be at least 1",
        ),
        (
            "prompts: {ws2: {n: 2}}\nrun_options: {gpus_per_actor: -1}\nruns: {a: {model: tiny}}\n",
            "runs.a: --gpus-per-actor -1",
        ),
        (
            "prompts: {ws2: {n: 2}}\nruns: {a: {model: tiny}}\n"
            "interventions: [{name: x, run: a, features: [top:1], batch_size: 0}]\n",
            "interventions[0]: --batch-size 0",
        ),
    ],
)
def test_bad_pipeline_files(tmp_path, text, needle):
    path = _write(tmp_path, text)
    with pytest.raises(CircuitrayError) as e:
        Pipeline.load(path)
    assert needle in str(e.value) and str(path) in str(e.value), str(e.value)
    p = circuitray("pipeline", "run", path, "--out-root", tmp_path / "out")
    assert p.returncode == 2
    assert_one_line_error(p, needle)
    assert not (tmp_path / "out").exists()  # nothing ran


def test_local_pipeline_runs_queries_compares_and_resumes(tmp_path):
    pipe = Pipeline.load(_write(tmp_path, TINY))
    out = tmp_path / "out"
    result = run_pipeline(pipe, out_root=str(out), actors=1)
    assert set(result.runs) == {"a", "b"}
    assert all(r.ok == 6 and r.computed == 6 for r in result.runs.values())
    assert set(result.tables) == {
        "constraint_stats-a-b",
        "top",
        "compare-a-vs-b",
        "intervention_effects-ablate",
    }
    effects = result.tables["intervention_effects-ablate"].to_pylist()
    assert {r["spec"] for r in effects} == {"top:1", "random:1"}
    assert all(r["prompts"] == 6 for r in effects if r["constraint_type"] == "(all)")
    assert (out / "interventions" / "ablate" / "intervention.json").is_file()
    for label, table in result.tables.items():
        assert pq.read_table(out / "results" / f"{label}.parquet").equals(table)
    stats = result.tables["constraint_stats-a-b"].to_pylist()
    assert {r["run"] for r in stats} == {"a", "b"}
    # The stricter pruning of run b keeps fewer nodes on every prompt.
    ga = {g["prompt_id"]: g for g in pq.read_table(out / "a" / "graphs").to_pylist()}
    gb = {g["prompt_id"]: g for g in pq.read_table(out / "b" / "graphs").to_pylist()}
    assert all(gb[p]["n_kept_nodes"] < ga[p]["n_kept_nodes"] for p in ga)
    nodes = next(
        r
        for r in result.tables["compare-a-vs-b"].to_pylist()
        if r["group"] == "(all)" and r["metric"] == "n_kept_nodes"
    )
    assert nodes["n"] == 6 and nodes["diff"] < 0
    assert [r["metric"] for r in result.tables["compare-a-vs-b"].to_pylist()].count(
        "target_prob"
    ) >= 1
    # Same prompts and options: the runs resume with nothing left to do.
    again = run_pipeline(pipe, out_root=str(out), actors=1)
    assert all(r.computed == 0 and r.skipped == 6 for r in again.runs.values())
    assert again.tables["intervention_effects-ablate"].equals(
        result.tables["intervention_effects-ablate"]
    )


# The CLI's own part (its JSON record, --n overriding the file's prompt count, the
# result files) on one run and one query: the API test above runs the whole TINY.
ONE_RUN = """
name: tiny-one
prompts: {ws2: {n: 6, seed: 3}}
run_options: {batch_size: 3, attribution: {max_n_logits: 5}}
runs:
  a: {model: tiny}
queries:
  - {name: constraint_stats, runs: [a]}
  - {name: top_features, runs: [a], params: {top_k: 2}, label: top}
"""


def test_pipeline_cli_json(tmp_path):
    path = _write(tmp_path, ONE_RUN)
    out = tmp_path / "cli"
    p = circuitray("pipeline", "run", path, "--out-root", out, "--n", 3, "--actors", 1, "--json")
    assert p.returncode == 0, p.stderr
    record = json.loads(p.stdout)
    assert record["pipeline"] == "tiny-one"
    assert {k: v["total"] for k, v in record["runs"].items()} == {"a": 3}
    assert len(record["results"]) == 2
    for path_ in record["results"].values():
        assert Path(path_).is_file()
    assert (out / "prompts-n3-s3.parquet").is_file()
