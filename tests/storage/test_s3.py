"""A run written to a real S3-compatible server (moto in server mode on 127.0.0.1).

pyarrow's S3 filesystem talks HTTP to the server exactly as to AWS; the driver, the
Ray actors and DuckDB all read and write ``s3://`` paths. No mock objects.
"""

from __future__ import annotations

import logging
from collections import Counter

import pyarrow.fs as pafs
import pytest
import ray

from circuitray import ModelSpec, RunConfig, RunStore, generate_ws2, run, run_query, write_prompts
from circuitray.errors import RunDirError


@pytest.fixture
def s3(monkeypatch):
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    pafs.S3FileSystem(
        endpoint_override=f"{host}:{port}", scheme="http", allow_bucket_creation=True
    ).create_dir("circuitray-test")
    if ray.is_initialized():  # actors must start with the endpoint in their env
        ray.shutdown()
    yield "s3://circuitray-test"
    ray.shutdown()
    server.stop()


def test_run_to_s3_exactly_once_and_queryable(s3, tmp_path):
    prompts = write_prompts(generate_ws2(n=16, seed=31), tmp_path / "p.parquet")
    out = f"{s3}/runs/tiny"
    config = RunConfig(
        prompts=str(prompts), out=out, model=ModelSpec(model="tiny"), actors=2, batch_size=2
    )
    first = run(config)
    assert (first.ok, first.errors) == (16, 0)
    again = run(config)  # resume on object storage: nothing recomputed
    assert again.computed == 0 and again.skipped == 16

    store = RunStore(out)
    rows = store.read_graphs().to_pylist()
    counts = Counter(r["prompt_id"] for r in rows)
    assert len(counts) == 16 and set(counts.values()) == {1}
    # Compacted at the end of the run: one object per table, nothing left over.
    for table in ("graphs", "nodes", "edges"):
        assert len(store.part_files(table)) == 1
        assert [
            n for n in store.files.names(store._path(table)) if not n.endswith(".parquet")
        ] == []

    stats = run_query("constraint_stats", [out]).to_pylist()
    assert sum(r["graphs"] for r in stats) == 16
    assert {r["run"] for r in stats} == {"tiny"}
    n_edges = store.read_table("edges").num_rows
    assert n_edges == sum(r["n_kept_edges"] for r in rows)


def test_s3_lease_keeps_a_second_driver_out(s3):
    a, b = RunStore(f"{s3}/runs/locked"), RunStore(f"{s3}/runs/locked")
    a.acquire_lock()
    try:
        with pytest.raises(RunDirError, match="another circuitray driver"):
            b.acquire_lock()
    finally:
        a.release_lock()
    b.acquire_lock()  # released: free again
    b.release_lock()
