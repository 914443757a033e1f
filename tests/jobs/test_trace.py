"""``circuitray trace "PROMPT"`` (issue 20): one prompt on the organism through a
one-row run folder, exported with its labels; ``--serve`` prints the viewer's address
and serves it; a second trace of the same prompt finds it done."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from queue import Empty, Queue

from conftest import CLI, assert_refused, circuitray


def test_trace_prints_where_the_graph_is_and_serves_it(organism_features, tmp_path):
    env = {**os.environ, "CIRCUITRAY_FEATURES_DIR": str(organism_features)}
    out = tmp_path / "trace"
    p = circuitray("trace", "The word blarf means", "--out", out, "--json", env=env)
    assert p.returncode == 0, p.stderr
    record = json.loads(p.stdout)
    assert record["computed"] and record["graph"] == str(out / "viewer" / "trace.json")
    graph = json.loads((out / "viewer" / "trace.json").read_text())
    assert graph["metadata"]["prompt"] == "The word blarf means"
    assert record["labelled"] > 0 and record["nodes"] == len(graph["nodes"])
    # The one-row run folder answers SQL, its features view included.
    p = circuitray(
        "sql", out / "run", "SELECT count(*) AS n, min(prompt) AS p FROM graphs", "--format",
        "json", env=env,
    )  # fmt: skip
    assert json.loads(p.stdout) == [{"n": 1, "p": "The word blarf means"}]

    # Again, with --serve: found done, exported, served at the printed address.
    proc = subprocess.Popen(
        [*CLI, "trace", "The word blarf means", "--out", str(out), "--serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        # Lines through a thread: a select on the pipe misses lines already buffered.
        url, lines, queue = None, [], Queue()
        assert proc.stdout is not None
        threading.Thread(target=lambda: [queue.put(x) for x in proc.stdout], daemon=True).start()
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(Empty):
                line = queue.get(timeout=1)
                lines.append(line)
                if line.startswith("viewer: "):
                    url = line.split()[1]
        assert url, (lines, proc.poll())
        assert url.startswith("http://127.0.0.1:") and url.endswith("/?slug=trace")
        assert any(line.startswith("graph: ") and "trace.json" in line for line in lines)
        with urllib.request.urlopen(url, timeout=30) as r:
            assert r.status == 200 and b"viewer.js" in r.read()
        base = url.split("?")[0]
        with urllib.request.urlopen(f"{base}data/trace.json", timeout=30) as r:
            body = r.read()  # a graph over 1 MB comes gzipped, as circuit-tracer's
            gzipped = r.headers.get("Content-Encoding") == "gzip"
            served = json.loads(gzip.decompress(body) if gzipped else body)
        assert [n["clerp"] for n in served["nodes"]] == [n["clerp"] for n in graph["nodes"]]
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_trace_refuses_an_empty_prompt(tmp_path):
    assert_refused(circuitray("trace", "  ", "--out", tmp_path / "t"), "prompt is empty")
    assert not (tmp_path / "t").exists()
