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


def test_micro_cells_are_built_in_fresh_processes_on_their_kernels(tmp_path, micro):
    """Two cells of one seed and thread count on two kernel sets: each cell's build
    runs on its kernels (the report says which), and the kernels change the weights'
    last bits even in a short schedule, so a cell that silently ran on this CPU's
    kernels (the variable lost on the way) shows as two identical digests."""
    config_file = tmp_path / "micro.yaml"
    config_file.write_text(yaml.safe_dump(micro))
    result = run_matrix(
        MatrixConfig(
            out=str(tmp_path / "m"),
            capabilities=("default", "avx2"),
            threads=(1,),
            seeds=(3,),
            config_file=str(config_file),
        )
    )
    default, avx2 = result["cells"]
    assert (default["kernels"], avx2["kernels"]) == ("DEFAULT", "AVX2")
    assert default["seed"] == 3 and default["threads"] == 1
    assert default["tuned_sha256"] != avx2["tuned_sha256"], "kernels did not reach the build"
    assert (tmp_path / "m" / "default-t1-s3" / "models" / "organism-report.json").is_file()
    # Seconds of training learn nothing: the verdict says so, type by type.
    assert not default["passed"] and not result["passed"]
    for name, acc in default["tuned"].items():
        assert (f"tuned_{name}>=0.97" in default["failed"]) == (acc < 0.97)
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
