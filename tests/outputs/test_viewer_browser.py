"""``circuitray serve`` in headless Chromium with the network cut off: the viewer (its
own files, d3 vendored) draws a real exported graph, hover shows a node's label and
top examples, click pins, search highlights; no console error, and every request the
page makes goes to the viewer's own server. A screenshot is kept under test-artifacts/.

The browser is driven over the Chrome DevTools Protocol (a small client below, on
``websocket-client``): Chromium starts with ``--remote-debugging-port=0``, the test
reads the port from ``DevToolsActivePort``, attaches to the page target and records
every ``Network.requestWillBeSent`` URL and every console error or warning."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import websocket

from circuitray.outputs.export import export_graph
from circuitray.outputs.viewer import serve
from circuitray.storage.run_store import RunStore

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# No network at all: every host resolves to nothing (IP literals too, but for the
# loopback the viewer listens on), every proxy is a dead port (Chromium sends loopback
# past any proxy), so only the viewer's own server can answer.
OFFLINE = [
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--proxy-server=127.0.0.1:9",
]
WAIT_S = 60  # every wait of the test is bounded by this
MARKUP = '<b>bold</b><img src="x" onerror="window.pwned = 1"> '  # must stay text


class CDP:
    """A minimal Chrome DevTools Protocol client over one page target's websocket:
    ``call`` sends a command and waits (bounded) for its answer, keeping every event
    that arrives meanwhile in ``events``."""

    def __init__(self, ws_url: str):
        # No Origin header: Chromium refuses websocket clients of other origins.
        self.ws = websocket.create_connection(ws_url, timeout=WAIT_S, suppress_origin=True)
        self.last_id = 0
        self.events: list[dict] = []

    def _receive(self, timeout: float) -> dict | None:
        self.ws.settimeout(max(timeout, 0.01))
        try:
            return json.loads(self.ws.recv())
        except websocket.WebSocketTimeoutException:
            return None

    def call(self, method: str, **params) -> dict:
        self.last_id += 1
        self.ws.send(json.dumps({"id": self.last_id, "method": method, "params": params}))
        deadline = time.monotonic() + WAIT_S
        while (left := deadline - time.monotonic()) > 0:
            msg = self._receive(left)
            if msg is None:
                continue
            if msg.get("id") == self.last_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)
        raise TimeoutError(f"{method}: no answer in {WAIT_S} s")

    def pump(self, seconds: float = 0.2) -> None:
        """Collect the events that arrive within ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            msg = self._receive(left)
            if msg is not None and "method" in msg:
                self.events.append(msg)

    def js(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        r = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expression: str, what: str):
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            self.pump(0.2)
        text = self.js("document.body ? document.body.innerText : ''")
        problems = self.problems()
        raise AssertionError(f"{what}: not within {WAIT_S} s; page says:\n{text}\n{problems}")

    def mouse(self, kind: str, x: float, y: float, **extra) -> None:
        self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, **extra)

    def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self.mouse(kind, x, y, button="left", clickCount=1)

    def requested(self) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e["method"] == "Network.requestWillBeSent"
        ]

    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, error log entries."""
        out = []
        for e in self.events:
            p = e["params"]
            if e["method"] == "Runtime.consoleAPICalled" and p["type"] in ("error", "warning"):
                args = [a.get("value", a.get("description", "")) for a in p["args"]]
                out.append(f"console.{p['type']}: {args}")
            elif e["method"] == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails']}")
            elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(scope="module")
def site(organism_runs, organism_features, tmp_path_factory):
    """Two graphs of the tuned organism run exported and served: the first while its
    transcoders have no feature table (no labels, no features file), the second with
    the organism's built table (labels in clerp, the features file listed)."""
    out = tmp_path_factory.mktemp("viewer_site")
    run = str(organism_runs.tuned)
    graphs = RunStore(run).dataset("graphs").to_table().to_pylist()
    ok = sorted(g["graph_id"] for g in graphs if g["status"] == "ok")[:2]
    slugs = [f"g{gid}" for gid in ok]
    saved = os.environ.get("CIRCUITRAY_FEATURES_DIR")
    try:
        for gid, slug, features in zip(
            ok, slugs, [out / "no-features", organism_features], strict=True
        ):
            os.environ["CIRCUITRAY_FEATURES_DIR"] = str(features)
            export_graph(run, gid, str(out), slug=slug)
    finally:
        if saved is None:
            os.environ.pop("CIRCUITRAY_FEATURES_DIR", None)
        else:
            os.environ["CIRCUITRAY_FEATURES_DIR"] = saved
    # Markup in a label's examples must show as text: prefix every example with some.
    sidecar = out / f"{slugs[-1]}.features.json"
    table = json.loads(sidecar.read_text())
    for feature in table["features"].values():
        for example in feature["top_examples"]:
            example["text"] = MARKUP + example["text"]
    sidecar.write_text(json.dumps(table))
    srv = serve(str(out), port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/", out, slugs[-1]
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium, offline, with a DevTools client attached to its page."""
    assert CHROMIUM, "Debian's chromium is needed (make setup installs it)"
    profile = tmp_path_factory.mktemp("chromium")
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--disable-extensions", "--no-default-browser-check",
         "--disable-background-networking", "--disable-component-update", *OFFLINE,
         "--window-size=1400,900", "--remote-debugging-port=0",
         f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the finally ends all of it
    )  # fmt: skip
    cdp = None
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + WAIT_S
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert proc.poll() is None, f"chromium exited with {proc.returncode}"
            assert time.monotonic() < deadline, "chromium wrote no DevToolsActivePort"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=WAIT_S) as r:
            pages = [t for t in json.loads(r.read()) if t["type"] == "page"]
        assert pages, "chromium has no page target"
        cdp = CDP(pages[0]["webSocketDebuggerUrl"])
        for domain in ("Network", "Runtime", "Log", "Page"):
            cdp.call(f"{domain}.enable")
        cdp.call(
            "Emulation.setDeviceMetricsOverride",
            width=1400,
            height=900,
            deviceScaleFactor=1,
            mobile=False,
        )
        yield cdp
    finally:
        if cdp is not None:
            cdp.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=WAIT_S)


def _centre(cdp: CDP, node_id: str) -> tuple[float, float]:
    box = cdp.js(
        f"(() => {{ const r = document.querySelector('[data-node-id=\"{node_id}\"]')"
        ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
    )
    x, y = box
    hit = cdp.js(
        f"(() => {{ const e = document.elementFromPoint({x}, {y}); "
        "const n = e && e.closest('.node'); return n ? n.dataset.nodeId : null; })()"
    )
    assert hit == node_id, f"{node_id} at ({x}, {y}) is covered by {hit}"
    return x, y


def test_viewer_draws_and_answers_offline(site, browser):
    base, out, slug = site
    cdp = browser
    cdp.call("Page.navigate", url=f"{base}?slug={slug}")
    cdp.wait_for("document.body && document.body.dataset.ready === '1'", "the viewer drew")

    graph = json.loads((out / f"{slug}.json").read_text())
    drawn = cdp.js(
        "({nodes: document.querySelectorAll('.node').length,"
        " links: document.querySelectorAll('.link').length,"
        " viewer: window.circuitrayViewer, title: document.title})"
    )
    assert drawn["viewer"]["slug"] == slug, drawn
    assert drawn["nodes"] == drawn["viewer"]["nodes"] == len(graph["nodes"]) > 0, drawn
    assert drawn["links"] == drawn["viewer"]["links"] == min(300, len(graph["links"])) > 0
    tokens = cdp.js("[...document.querySelectorAll('.token-label')].map(t => t.textContent)")
    assert len(tokens) >= len(graph["metadata"]["prompt_tokens"])

    # Hover the labelled feature node with the most links: its tooltip shows the label,
    # its numbers and top examples from the sidecar (at most 5, markup kept as text).
    degree: dict[str, int] = {}
    for link in graph["links"]:
        for end in (link["source"], link["target"]):
            degree[end] = degree.get(end, 0) + 1
    labelled = [
        n for n in graph["nodes"] if n["feature_type"] == "cross layer transcoder" and n["clerp"]
    ]
    assert labelled, "no feature node has a label"
    node = max(labelled, key=lambda n: degree.get(n["node_id"], 0))
    x, y = _centre(cdp, node["node_id"])
    cdp.mouse("mouseMoved", x, y)
    tip = cdp.wait_for(
        "(() => { const t = document.getElementById('tooltip'); const r ="
        " t.getBoundingClientRect(); return !t.hidden && r.width > 0 && r.height > 0"
        " && {text: t.textContent, examples: t.querySelectorAll('.examples li').length,"
        " marks: [...t.querySelectorAll('mark')].map(m => m.textContent),"
        " bold: t.querySelectorAll('b').length}; })()",
        "the tooltip showed",
    )
    assert node["clerp"] in tip["text"], tip
    assert node["node_id"] in tip["text"], tip
    meta = json.loads((out / "graph-metadata.json").read_text())
    listed = [g.get("features") for g in meta["graphs"] if g["slug"] == slug]
    assert listed and listed[0], meta
    layer, feat, _ = node["node_id"].split("_")
    feature = json.loads((out / listed[0]).read_text())["features"][f"{layer}/{feat}"]
    examples = feature["top_examples"]
    assert examples and tip["examples"] == min(5, len(examples)), tip
    # The example's activating token is marked, the text shown as text, not markup.
    assert tip["marks"][0].strip() == examples[0]["token"].strip(), tip
    assert tip["bold"] == 0 and "<b>bold</b>" in tip["text"], tip
    assert cdp.js("document.querySelectorAll('#tooltip img').length") == 0
    assert cdp.js("window.pwned === undefined")
    assert cdp.js("document.querySelectorAll('.link.hl').length") > 0  # its links lit

    # Click pins it (and lists it); moving away keeps it pinned; clicking again unpins.
    cdp.click(x, y)
    selector = f'[data-node-id="{node["node_id"]}"]'
    pinned = cdp.js(
        f"({{node: document.querySelector('.node{selector}').classList.contains('pinned'),"
        f" listed: !!document.querySelector('#pinned li{selector}'),"
        " hl: document.querySelectorAll('.link.hl').length,"
        " dim: document.querySelectorAll('.node.dim').length})"
    )
    assert pinned["node"] and pinned["listed"] and pinned["hl"] > 0, pinned
    cdp.mouse("mouseMoved", 5, 890)
    cdp.wait_for("document.getElementById('tooltip').hidden", "the tooltip hid")
    assert cdp.js(f"document.querySelector('.node{selector}').classList.contains('pinned')")
    assert node["node_id"] in cdp.js("location.search")
    cdp.click(x, y)
    assert not cdp.js(f"document.querySelector('.node{selector}').classList.contains('pinned')")
    cdp.click(x, y)  # pinned again, for the screenshot and the clear button

    # The link-count slider redraws that many links.
    cdp.js(
        "(() => { const s = document.getElementById('link-count'); s.value = '10';"
        " s.dispatchEvent(new Event('input')); })()"
    )
    assert cdp.js("document.querySelectorAll('.link').length") == 10
    assert cdp.js("window.circuitrayViewer.links") == 10
    cdp.js(
        "(() => { const s = document.getElementById('link-count'); s.value = '300';"
        " s.dispatchEvent(new Event('input')); })()"
    )

    # Search: typing a label (or L<layer>/<feature>) highlights those feature nodes.
    layer, feat, _ = node["node_id"].split("_")
    cdp.js("document.getElementById('search').focus()")
    cdp.call("Input.insertText", text=f"L{layer}/{feat}")
    matched = cdp.js("[...document.querySelectorAll('.node.match')].map(n => n.dataset.nodeId)")
    assert node["node_id"] in matched, matched
    assert all(m.split("_")[:2] == [layer, feat] for m in matched), matched
    assert cdp.js("document.querySelectorAll('.node.dim').length") > 0

    ARTIFACTS.mkdir(exist_ok=True)
    shot = cdp.call("Page.captureScreenshot", format="png")
    (ARTIFACTS / "viewer.png").write_bytes(base64.b64decode(shot["data"]))

    cdp.js("document.getElementById('search').value = ''")
    cdp.js("document.getElementById('search').dispatchEvent(new Event('input'))")
    cdp.js("document.getElementById('clear').click()")
    cdp.mouse("mouseMoved", 5, 890)  # off the node: nothing hovered either
    assert cdp.js("document.querySelectorAll('.node.pinned, #pinned li').length") == 0
    assert cdp.js("document.querySelectorAll('.node.dim, .node.match').length") == 0

    cdp.pump(0.5)
    assert cdp.js("document.getElementById('error').hidden"), cdp.js("document.body.innerText")
    assert cdp.problems() == []
    urls = cdp.requested()
    assert f"{base}data/{slug}.json" in urls, urls
    outside = [u for u in urls if not u.startswith((base, "data:", "about:"))]
    assert outside == [], outside


def test_the_first_graph_by_default_and_errors_shown(site, browser):
    base, out, _ = site
    cdp = browser
    first = json.loads((out / "graph-metadata.json").read_text())["graphs"][0]["slug"]
    cdp.events.clear()
    cdp.call("Page.navigate", url=base)
    cdp.wait_for("document.body && document.body.dataset.ready === '1'", "the viewer drew")
    assert cdp.js("window.circuitrayViewer.slug") == first
    assert cdp.js("document.getElementById('graph').value") == first
    # No sidecar listed for this one: nothing asked for it, nothing complained.
    cdp.pump(0.3)
    assert not [u for u in cdp.requested() if u.endswith(".features.json")]
    assert cdp.problems() == []

    # A graph file that is not a graph: the page says so and the console has the error.
    meta_path = out / "graph-metadata.json"
    saved = meta_path.read_text()
    (out / "broken.json").write_text("[1, 2]")
    meta = json.loads(saved)
    meta["graphs"].append({"slug": "broken", "prompt": "not a graph"})
    meta_path.write_text(json.dumps(meta))
    try:
        cdp.events.clear()
        cdp.call("Page.navigate", url=f"{base}?slug=broken")
        text = cdp.wait_for(
            # The new page may not have its error box yet: wait for it, then for text.
            "!!document.getElementById('error') && !document.getElementById('error').hidden"
            " && document.getElementById('error').textContent",
            "the error showed",
        )
        assert "not an exported graph" in text, text
        cdp.pump(0.3)
        assert any("not an exported graph" in p for p in cdp.problems()), cdp.problems()
    finally:
        meta_path.write_text(saved)
        (out / "broken.json").unlink()


def test_a_consensus_circuit_with_supernodes_opens_offline(browser, tmp_path):
    """The Dallas family's consensus circuit (13 real graphs, ``circuitray aggregate``
    with the analyst's supernodes) served and drawn: every node and link, a supernode's
    name on hover, no error, nothing asked of any other host."""
    from conftest import SHARED_GRAPHS

    from circuitray.ingest.importer import ImportConfig, import_graphs
    from circuitray.outputs.aggregate import AggregateConfig, aggregate_circuits

    graphs = SHARED_GRAPHS / "neuronpedia-gemma-2-2b"
    if not graphs.is_dir():
        pytest.skip(f"no {graphs}")
    files = [str(f) for f in sorted(graphs.glob("*.json")) if "Dallas" in f.read_text()]
    import_graphs(ImportConfig(sources=files, out=str(tmp_path / "run")))
    out = tmp_path / "agg"
    result = aggregate_circuits(
        AggregateConfig(
            runs=[str(tmp_path / "run")], out=str(out), by="run", min_share=1.0, top_k=30,
            supernodes=str(SHARED_GRAPHS / "neuronpedia-gemma-2-2b-dallas-supernodes.csv"),
        )
    )  # fmt: skip
    slug = result.groups[0]["slug"]
    graph = json.loads((out / f"{slug}.json").read_text())
    srv = serve(str(out), port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}/"
    cdp = browser
    try:
        cdp.events.clear()
        cdp.call("Page.navigate", url=f"{base}?slug={slug}")
        cdp.wait_for("document.body && document.body.dataset.ready === '1'", "the viewer drew")
        drawn = cdp.js(
            "({nodes: document.querySelectorAll('.node').length,"
            " links: document.querySelectorAll('.link').length})"
        )
        assert drawn["nodes"] == len(graph["nodes"]) > 20, drawn
        assert drawn["links"] == min(300, len(graph["links"])) > 0, drawn
        supernode = next(n for n in graph["nodes"] if "supernode" in n["clerp"])
        x, y = _centre(cdp, supernode["node_id"])
        cdp.mouse("mouseMoved", x, y)
        tip = cdp.wait_for(
            "(() => { const t = document.getElementById('tooltip');"
            " return !t.hidden && t.textContent; })()",
            "the tooltip showed",
        )
        assert supernode["clerp"] in tip, tip
        cdp.pump(0.3)
        assert cdp.js("document.getElementById('error').hidden")
        assert cdp.problems() == []
        urls = cdp.requested()
        assert f"{base}data/{slug}.json" in urls, urls
        assert [u for u in urls if not u.startswith((base, "data:", "about:"))] == []
    finally:
        srv.shutdown()
        srv.server_close()
