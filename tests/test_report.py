"""The HTML report: self-contained, every plot drawn in headless Chromium, no console
errors; a screenshot is kept under test-artifacts/."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import assert_one_line_error, circuitray

from circuitray.report import build_report

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# No network at all: every host resolves to nothing, every proxy is a dead port.
OFFLINE = ["--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9"]


def _chromium(*args: str) -> subprocess.CompletedProcess:
    assert CHROMIUM, "Debian's chromium is needed (make setup installs it)"
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--disable-extensions", *OFFLINE, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip


@pytest.fixture(scope="module")
def report(organism_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    record = build_report([str(organism_runs.base), str(organism_runs.tuned)], str(out))
    return out, record


def test_report_is_self_contained(report):
    out, record = report
    page = out.read_text()
    assert record["bytes"] == out.stat().st_size < 10_000_000
    # 1 distributions + 2 layer profiles + 2 top-feature plots + 1 overlap matrix
    # + 1 before/after + 6 circuits (2 runs x 3 types).
    assert record["plots"] == 13 == page.count('class="plot"')
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs), refs[:3]
    assert "http://" not in page and "https://" not in page
    assert "<h2>Before / after: tuned - base</h2>" in page


def test_every_plot_draws_in_headless_chromium(report):
    out, record = report
    dom = _chromium("--virtual-time-budget=5000", "--dump-dom", out.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stdout[:500]
    attrs = dict(re.findall(r'data-([\w-]+)="([^"]*)"', body.group(0)))
    assert attrs["plots-total"] == attrs["plots-drawn"] == str(record["plots"]), attrs
    assert attrs["errors"] == ""
    console = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln]
    assert not [ln for ln in console if "rror" in ln or "Uncaught" in ln], console

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    p = _chromium("--window-size=1400,5000", f"--screenshot={shot}", out.as_uri())
    assert p.returncode == 0 and shot.is_file(), p.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (5000, 1400)
    assert (pixels < 200).mean() > 0.02  # plots, not a blank page


def test_report_cli(ray_run, tmp_path):
    out = tmp_path / "one.html"
    p = circuitray("report", ray_run.out, "--out", out, "--json")
    assert p.returncode == 0, p.stderr
    record = json.loads(p.stdout)
    # One run: no before/after plot; 1 + 1 + 1 + 1 + 3 circuits.
    assert record["plots"] == 7 and Path(record["path"]) == out
    assert_one_line_error(circuitray("report", tmp_path, "--out", out), "not a circuitray run")
