"""`ray job submit` of a WS2 pipeline to a real multi-process Ray cluster on this machine.

A head (`ray start --head`, with the dashboard's job server) and one worker node
(`ray start --address`) run as separate processes, each on its own ports (two nodes on
one machine must not share the dashboard agent's ports). Both run with ``--block`` as
children of this test, so stopping them stops exactly this cluster and never another
Ray on the machine (``ray stop`` would kill every Ray here). The job is the command
docs/clusters.md prints, with only the cluster address, the output root and the prompt
count filled in.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CLUSTER_DOC = REPO / "docs" / "clusters.md"
README_JOB = re.compile(r"^ray job submit --working-dir \. .*$", re.M)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _readme_job_command() -> list[str]:
    """docs/clusters.md's `ray job submit` command (backslash continuations joined)."""
    text = CLUSTER_DOC.read_text().replace("\\\n", " ")
    commands = [" ".join(m.split()) for m in README_JOB.findall(text)]
    pipeline = [c for c in commands if "circuitray pipeline run" in c]
    assert pipeline, "docs/clusters.md has no `ray job submit ... circuitray pipeline run` command"
    return shlex.split(pipeline[0])


class LocalCluster:
    """A head and a worker started with the `ray` CLI, owned by this process."""

    def __init__(self, temp_dir: str, env: dict[str, str]):
        (self.gcs, self.dashboard, *agent_ports) = _free_ports(11)
        self.env = env
        ray = str(BIN / "ray")
        head = [
            ray, "start", "--head", "--block", f"--port={self.gcs}",
            "--include-dashboard=true", f"--dashboard-port={self.dashboard}",
            "--dashboard-host=127.0.0.1", "--num-cpus=2", f"--temp-dir={temp_dir}",
            f"--dashboard-agent-listen-port={agent_ports[0]}",
            f"--dashboard-agent-grpc-port={agent_ports[1]}",
            f"--metrics-export-port={agent_ports[2]}",
            f"--runtime-env-agent-port={agent_ports[3]}",
            f"--ray-client-server-port={agent_ports[4]}",
            "--disable-usage-stats",
        ]  # fmt: skip
        worker = [
            ray, "start", "--block", f"--address=127.0.0.1:{self.gcs}", "--num-cpus=1",
            f"--dashboard-agent-listen-port={agent_ports[5]}",
            f"--dashboard-agent-grpc-port={agent_ports[6]}",
            f"--metrics-export-port={agent_ports[7]}",
            f"--runtime-env-agent-port={agent_ports[8]}",
        ]  # fmt: skip
        self.logs = Path(temp_dir) / "cli-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs = [self._start(head, "head")]
        try:
            self._wait_for_job_server()
            self.procs.append(self._start(worker, "worker"))
            self._wait_for_nodes(2)
        except BaseException:
            self.stop()
            raise

    def _start(self, argv: list[str], name: str) -> subprocess.Popen:
        out = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env)

    @property
    def job_address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard}"

    def _get(self, path: str):
        with urllib.request.urlopen(self.job_address + path, timeout=5) as r:
            return json.loads(r.read())

    def _wait_for_job_server(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                self._get("/api/version")
                return
            except OSError:
                time.sleep(1)
        raise TimeoutError(f"job server did not start: {(self.logs / 'head.log').read_text()}")

    def _wait_for_nodes(self, n: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = subprocess.run(
                [str(BIN / "ray"), "status", f"--address=127.0.0.1:{self.gcs}"],
                capture_output=True,
                text=True,
                env=self.env,
            )
            active = status.stdout.split("Active:")[-1].split("Pending:")[0]
            if active.count("node_") >= n:
                return
            time.sleep(1)
        worker_log = (self.logs / "worker.log").read_text()[-2000:]
        raise TimeoutError(f"{n} nodes did not join: {status.stdout}\n{worker_log}")

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.terminate()  # `ray start --block` stops its own Ray processes on SIGTERM
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture
def cluster(organism_report, tmp_path):
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # the session's shared Ray: this test has a cluster of its own
    # The job's shell finds this environment's `circuitray`; bundled models come from
    # the session's CIRCUITRAY_HOME, forwarded by the job's driver to its actors.
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # Set to 0 for ray.cluster_utils elsewhere; the `ray start` CLI refuses a second
    # node unless it is unset (or 1).
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    # Ray puts Unix sockets under --temp-dir: keep the path short.
    temp_dir = tempfile.mkdtemp(prefix="crjob-", dir="/tmp")
    c = LocalCluster(temp_dir, env)
    try:
        yield c
    finally:
        c.stop()


def test_ray_job_submit_runs_the_readme_pipeline(cluster, tmp_path):
    out_root = tmp_path / "ws2"
    argv = _readme_job_command()
    # docs/clusters.md's command, with this cluster's address and a local output root.
    assert argv[:3] == ["ray", "job", "submit"]
    entry = argv.index("--")
    submit_opts, job = argv[3:entry], argv[entry + 1 :]
    assert submit_opts == ["--working-dir", ".", "--runtime-env", "cluster/runtime_env.yaml"]
    assert job[:4] == ["circuitray", "pipeline", "run", "pipelines/ws2_constraint_comparison.yaml"]
    job[job.index("--out-root") + 1] = str(out_root)
    assert "--address" in job and job[job.index("--address") + 1] == "auto"
    job += ["--n", "6", "--actors", "2"]
    proc = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", cluster.job_address, *submit_opts,
         "--", *job],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=cluster.env,
        timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "succeeded" in proc.stdout + proc.stderr

    # The job wrote both run folders, complete, and every result table.
    for run in ("base", "tuned"):
        meta = json.loads((out_root / run / "run.json").read_text())
        assert meta["status"] == "complete", meta
        assert meta["counts"] == {"total": 6, "ok": 6, "error": 0}
        graphs = pq.read_table(out_root / run / "graphs").to_pylist()
        assert sorted(g["graph_id"] for g in graphs) == list(range(6))
    results = sorted(p.stem for p in (out_root / "results").glob("*.parquet"))
    assert results == sorted(
        [
            "constraint_stats-base-tuned",
            "path_stats-base-tuned",
            "top_features-tuned",
            "feature_overlap-base-tuned",
            "compare-base-vs-tuned",
            "compare-tuned-by-constraint_type",
            "intervention_effects-tuned-top-vs-random",
            "intervention_effects-tuned-direct",
        ]
    )
    for name in ("tuned-top-vs-random", "tuned-direct"):
        meta = json.loads((out_root / "interventions" / name / "intervention.json").read_text())
        assert meta["status"] == "complete" and meta["counts"]["error"] == 0, meta
    compare = pq.read_table(out_root / "results" / "compare-base-vs-tuned.parquet").to_pylist()
    overall = next(r for r in compare if r["group"] == "(all)" and r["metric"] == "target_prob")
    assert overall["n"] == 6 and overall["diff"] > 0.3, overall
    # The cluster ran exactly this job.
    jobs = cluster._get("/api/jobs/")
    assert [j["status"] for j in jobs] == ["SUCCEEDED"], jobs
