"""``circuitray bench scale`` end to end at tiny sizes (no timing asserted).

The real driver (ScaleJob: AttributionJob with synthetic workers) runs 200 and 2000
prompts on a local Ray in this process; the record has every figure at both sizes
and an exponent for each, and the printed table shows them. The request counting of
the S3 run is checked on a few RunStore writes against its moto server.
"""

from __future__ import annotations

import io
import math
import time

import pyarrow.parquet as pq
from click.testing import CliRunner
from rich.console import Console

from circuitray.bench import scale


def test_scale_bench_runs_the_real_driver_and_fits_exponents(tmp_path):
    record = scale.run_scale_bench(
        sizes=(2000, 200), out=tmp_path, s3=False, isolate=False, actors=1
    )
    rows = record["rows"]
    assert [r["n"] for r in rows] == [200, 2000]  # sorted
    assert [r["batch_size"] for r in rows] == [scale.batch_size_for(200), 16]
    for r in rows:
        assert r["computed"] == r["n"] and r["query_rows"] == len(scale.CONSTRAINTS)
        assert r["parts"] == math.ceil(r["n"] / r["batch_size"]) and r["parts_after"] == 1
        for key, _, _ in scale.FIGURES:
            assert isinstance(r[key], int | float) and r[key] > 0, (key, r[key])
    exps = record["exponents"]
    assert set(exps) == {key for key, _, _ in scale.FIGURES}
    assert all(isinstance(v, float) for v in exps.values()), exps
    assert abs(exps["parts"] - math.log(rows[1]["parts"] / rows[0]["parts"]) / math.log(10)) < 1e-9
    assert set(record["goals"]) == {"driver_rss_mb", "resume_s", "dispatch_ratio"}
    # Prompt files stay for the next run; run folders go.
    assert pq.read_metadata(tmp_path / "prompts-2000.parquet").num_rows == 2000
    assert not (tmp_path / "run-2000").exists()

    out = io.StringIO()
    scale.print_scale(record, console=Console(file=out, width=250))
    text = out.getvalue()
    assert "exponent" in text and "2,000" in text and "dispatch us/prompt" in text
    assert "goal resume_s" in text


def test_fit_exponent():
    assert abs(scale.fit_exponent([10, 100, 1000], [3.0, 30.0, 300.0]) - 1.0) < 1e-9
    assert abs(scale.fit_exponent([10, 100], [5.0, 5.0])) < 1e-9
    assert scale.fit_exponent([10, 100], [None, 5.0]) is None


def test_the_s3_server_counts_requests_by_kind(monkeypatch):
    import pyarrow as pa
    import pyarrow.fs as pafs

    from circuitray.schema import EDGE_SCHEMA, GRAPH_SCHEMA, NODE_SCHEMA, graph_row
    from circuitray.storage.run_store import RunStore

    row = graph_row(0, {"prompt_id": "p0", "prompt": "x"}, status="ok")
    row.update(n_kept_nodes=0, n_kept_edges=0)
    part = {
        "graphs": pa.Table.from_pylist([row], GRAPH_SCHEMA),
        "nodes": NODE_SCHEMA.empty_table(),
        "edges": EDGE_SCHEMA.empty_table(),
    }

    with scale.CountingS3Server() as s3:
        host = s3.endpoint.removeprefix("http://")
        pafs.S3FileSystem(
            access_key="k",
            secret_key="s",
            endpoint_override=host,
            scheme="http",
            allow_bucket_creation=True,
        ).create_dir("circuitray-scale-test")
        for key, value in (("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s")):
            monkeypatch.setenv(key, value)
        uri = f"s3://circuitray-scale-test/run?endpoint_override={host}&scheme=http"
        store = RunStore(uri)
        start = time.time()
        store.write_part("part-0000000-0000000", part)
        written = s3.counts(start, float("inf"))
        assert store.committed_parts() == ["part-0000000-0000000"]
        counts = s3.counts(0, float("inf"))
    # One PUT per part file: not a multipart upload (3 requests) for a small object.
    assert written["by_method"] == {"PUT": 3}, written
    assert written["by_kind"] == {"edges part": 1, "nodes part": 1, "graphs part": 1}
    assert counts["total"] == sum(counts["by_kind"].values()) > written["total"]


def test_the_command_refuses_mismatched_batch_sizes():
    from circuitray.cli import cli

    result = CliRunner().invoke(
        cli, ["bench", "scale", "--sizes", "10,20", "--batch-sizes", "1", "--no-s3"]
    )
    assert result.exit_code != 0
    assert "2 sizes" in (result.output + str(result.exception))
