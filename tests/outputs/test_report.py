"""The HTML report: self-contained, every plot drawn in headless Chromium, no console
errors; a screenshot is kept under test-artifacts/. With --interventions: the section,
its images and the intervention_effects table."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import SPECS, assert_one_line_error, circuitray
from PIL import Image

from circuitray.errors import CircuitrayError
from circuitray.outputs.report import _table_html, build_report
from circuitray.query.engine import run_query

REPO = Path(__file__).resolve().parents[2]
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
    # + 1 before/after + 6 circuits and 6 consensus circuits (2 runs x 3 types).
    assert record["plots"] == 19 == page.count('class="plot"')
    consensus = page[page.index("<h2>Consensus circuits") :]
    assert consensus.count('class="plot"') == 6
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs), refs[:3]
    assert "http://" not in page and "https://" not in page
    assert "<h2>Before / after: tuned - base</h2>" in page


def _assert_plots_draw(out: Path, n_plots: int) -> None:
    """Headless Chromium loads the page offline: all ``n_plots`` images decode (the
    page's script counts them into data-plots-drawn), no script or console error."""
    dom = _chromium("--virtual-time-budget=5000", "--dump-dom", out.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stdout[:500]
    attrs = dict(re.findall(r'data-([\w-]+)="([^"]*)"', body.group(0)))
    assert attrs["plots-total"] == attrs["plots-drawn"] == str(n_plots), attrs
    assert attrs["errors"] == ""
    console = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln]
    assert not [ln for ln in console if "rror" in ln or "Uncaught" in ln], console


def test_every_plot_draws_in_headless_chromium(report):
    out, record = report
    _assert_plots_draw(out, record["plots"])

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
    # One run: no before/after plot; 1 + 1 + 1 + 1 + 3 circuits + 3 consensus circuits.
    assert record["plots"] == 10 and Path(record["path"]) == out
    assert_one_line_error(circuitray("report", tmp_path, "--out", out), "not a circuitray run")


# -- --interventions ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def iv_report(ray_run, intervention_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("iv_report") / "iv.html"
    p = circuitray(
        "report", ray_run.out, "--out", out, "--interventions", intervention_dir, "--json"
    )
    assert p.returncode == 0, p.stderr
    return out, json.loads(p.stdout)


def test_report_interventions_section(iv_report, intervention_dir):
    out, record = iv_report
    page = out.read_text()
    # The one-run report's 10 plots + effects per SPEC + predicted-vs-measured scatter.
    assert record["plots"] == 12 == page.count('class="plot"')
    assert page.count("<h2>Interventions</h2>") == 1
    section = page[page.index("<h2>Interventions</h2>") :]
    assert str(intervention_dir) in section and ", ".join(SPECS) in section
    # The table is the query's, with the report's bootstrap settings (its defaults).
    effects = run_query("intervention_effects", [str(intervention_dir)])
    assert effects.num_rows == 4 * len(SPECS)  # 3 types + (all) per SPEC
    assert _table_html(effects, max_rows=500) in section
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', section)
    assert len(images) == 2
    for data in images:
        img = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        img.load()
        assert img.format == "PNG" and img.width > 400 and img.height > 200, img.size
        pixels = np.asarray(img.convert("L"))
        assert (pixels < 200).mean() > 0.01  # drawn, not blank
    assert "http://" not in page and "https://" not in page


def test_report_interventions_draw_in_headless_chromium(iv_report):
    out, record = iv_report
    _assert_plots_draw(out, record["plots"])


def test_report_interventions_not_an_intervention_folder(ray_run, tmp_path):
    out = tmp_path / "x.html"
    p = circuitray("report", ray_run.out, "--out", out, "--interventions", ray_run.out)
    assert_one_line_error(p, str(ray_run.out), "not a circuitray intervention folder")
    assert not out.exists()
    with pytest.raises(CircuitrayError, match=f"^{re.escape(str(tmp_path))}: not a circuitray"):
        build_report([str(ray_run.out)], str(out), interventions=[str(tmp_path)])


def test_report_escapes_what_an_intervention_folder_says(ray_run, intervention_dir, tmp_path):
    """Issue 17, finding 4: strings from intervention.json went into the HTML as is."""
    hostile = tmp_path / "iv"
    shutil.copytree(intervention_dir, hostile)
    meta = json.loads((hostile / "intervention.json").read_text())
    meta["plan"]["scale"] = "<script>alert('scale')</script>"
    meta["plan"]["constrained_layers"] = "<img src=x onerror=alert(1)>"
    meta["status"] = "<script>alert('status')</script>"
    (hostile / "intervention.json").write_text(json.dumps(meta))
    out = tmp_path / "r.html"
    p = circuitray("report", ray_run.out, "--out", out, "--interventions", hostile, "--json")
    assert p.returncode == 0, p.stderr
    page = out.read_text()
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#x27;scale&#x27;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_report_draws_folder_text_as_text(ray_run, tmp_path):
    """Issue 31: a constraint type (or folder name) holding $...$ is drawn as written,
    not parsed as matplotlib mathtext ("price $a^$" stopped the report), and escaped
    in the HTML."""
    run = tmp_path / "run $b^$"
    shutil.copytree(ray_run.out, run)
    for f in (run / "graphs").glob("*.parquet"):
        t = pq.read_table(f)
        types = pc.replace_substring(t["constraint_type"], "antonym", "price $a^$ <i>")
        pq.write_table(
            t.set_column(t.column_names.index("constraint_type"), "constraint_type", types), f
        )
    out = tmp_path / "r.html"
    p = circuitray("report", run, "--out", out, "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["plots"] == 10
    page = out.read_text()
    assert "price $a^$ &lt;i&gt;" in page and "<i>" not in page
    assert "run $b^$" in page
