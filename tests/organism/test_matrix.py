"""The robustness matrix: cells in fresh processes under the asked-for CPU kernels."""

from __future__ import annotations

import os
import subprocess

import yaml

from circuitray.machine import aten_capabilities, cpu_flags, cpu_model
from circuitray.organism.matrix import MatrixConfig, run_matrix


def test_capabilities_follow_the_cpu_flags():
    info = "processor : 0\nmodel name : Some CPU @ 2GHz\nflags : fpu sse avx2 fma\n"
    assert cpu_model(info) == "Some CPU @ 2GHz" and "avx2" in cpu_flags(info)
    assert aten_capabilities(info) == ["default", "avx2"]
    assert aten_capabilities("flags : fpu avx2 avx512f avx512bw") == ["default", "avx2", "avx512"]
    assert aten_capabilities("flags : avx512_vnni") == ["default", "avx2"]  # no avx512f
    assert aten_capabilities("") == ["default", "avx2"]


def test_one_micro_cell_is_built_in_a_fresh_process_and_judged(tmp_path, micro):
    config_file = tmp_path / "micro.yaml"
    config_file.write_text(yaml.safe_dump(micro))
    result = run_matrix(
        MatrixConfig(
            out=str(tmp_path / "m"),
            capabilities=("default",),
            threads=(1,),
            seeds=(3,),
            config_file=str(config_file),
        )
    )
    (row,) = result["cells"]
    assert row["kernels"] == "DEFAULT" and row["seed"] == 3 and row["threads"] == 1
    assert (tmp_path / "m" / "default-t1-s3" / "models" / "organism-report.json").is_file()
    # Seconds of training learn nothing: the verdict says so, type by type.
    assert not row["passed"] and not result["passed"]
    for name, acc in row["tuned"].items():
        assert (f"tuned_{name}>=0.97" in row["failed"]) == (acc < 0.97)
    assert (tmp_path / "m" / "matrix.json").is_file()


def test_cli_matrix_rejects_a_bad_env_in_one_line(tmp_path, cli):
    proc = subprocess.run(
        [*cli, "organism", "matrix", "--out", str(tmp_path), "--env", "NOEQUALS"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --env 'NOEQUALS': expected KEY=VALUE"
