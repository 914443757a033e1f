"""``circuitray serve`` answers only its own export folder and its own host (issue 17,
finding 4): circuit-tracer's handler served ``/data//etc/hostname``, answered any Host
and took cross-origin writes."""

from __future__ import annotations

import http.client
import json
import threading
from pathlib import Path

import pytest

from circuitray.outputs.viewer import CSP, STATIC_DIR, serve


@pytest.fixture
def server(tmp_path):
    """A served export folder holding one graph, and a secret beside it."""
    data = tmp_path / "viewer"
    data.mkdir()
    (data / "graph-metadata.json").write_text(json.dumps({"graphs": [{"slug": "g0"}]}))
    (data / "g0.json").write_text(json.dumps({"metadata": {"slug": "g0"}, "qParams": {}}))
    (tmp_path / "secret.txt").write_text("secret\n")
    (data / "link.json").symlink_to(tmp_path / "secret.txt")
    srv = serve(str(data), port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv.server_address[1], data, tmp_path / "secret.txt"
    srv.shutdown()
    srv.server_close()


def _request(
    port: int, method: str, path: str, *, host: str | None = None, body=None, headers=None
):
    con = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    con.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    con.putheader("Host", host or f"127.0.0.1:{port}")
    for k, v in (headers or {}).items():
        con.putheader(k, v)
    data = json.dumps(body).encode() if body is not None else b""
    if method == "POST":
        con.putheader("Content-Length", str(len(data)))
    con.endheaders(data if method == "POST" else None)
    r = con.getresponse()
    out = r.status, r.read()
    con.close()
    return out


def test_serves_the_export_folder_and_the_viewer(server):
    port, _, _ = server
    status, body = _request(port, "GET", "/data/graph-metadata.json")
    assert status == 200 and json.loads(body)["graphs"][0]["slug"] == "g0"
    status, body = _request(port, "GET", "/graph_data/g0.json")
    assert status == 200 and json.loads(body)["metadata"]["slug"] == "g0"
    status, body = _request(port, "GET", "/index.html", host=f"localhost:{port}")
    assert status == 200 and b"attribution graph" in body.lower()
    # circuitray's own viewer, its files in the package (d3 vendored), nothing remote.
    assert _request(port, "GET", "/")[1] == body == (STATIC_DIR / "index.html").read_bytes()
    assert b'src="vendor/d3-7.9.0.min.js"' in body and b'src="viewer.js"' in body
    for name, kind in [
        ("viewer.js", "javascript"),
        ("viewer.css", "text/css"),
        ("vendor/d3-7.9.0.min.js", "javascript"),
    ]:
        status, headers, asset = _get(port, f"/{name}")
        assert status == 200 and asset == (STATIC_DIR / name).read_bytes(), name
        assert kind in headers["Content-Type"], (name, headers["Content-Type"])
        assert headers["Content-Security-Policy"] == CSP, name
    assert "default-src 'self'" in CSP and "connect-src 'self'" in CSP
    for name in ("index.html", "viewer.js", "viewer.css"):
        text = (STATIC_DIR / name).read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name
    assert (STATIC_DIR / "vendor" / "LICENSE-d3").is_file()


def _get(port: int, path: str):
    con = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    con.request("GET", path)
    r = con.getresponse()
    out = r.status, r.headers, r.read()  # headers: names in any case
    con.close()
    return out


def test_no_directory_listing_and_data_is_not_the_viewer(server):
    port, _, _ = server
    for path in ("/vendor/", "/vendor"):
        status, _, body = _get(port, path)
        assert status in (301, 404) and b"d3-7.9.0" not in body, path
    status, headers, _ = _get(port, "/data/g0.json")
    assert status == 200 and headers["Content-Security-Policy"] == CSP
    # The viewer's folder is not the export folder and the other way round.
    assert _get(port, "/g0.json")[0] == 404
    assert _get(port, "/data/viewer.js")[0] == 404


@pytest.mark.parametrize(
    "path",
    [
        "/data//etc/hostname",
        "/data/../secret.txt",
        "/data/%2e%2e/secret.txt",
        "/graph_data/..%2fsecret.txt",
        "/data/link.json",
        "/data/",
    ],
)
def test_nothing_outside_the_export_folder_is_served(server, path):
    port, _, secret = server
    status, body = _request(port, "GET", path)
    assert status == 404, (path, status)
    assert b"secret" not in body and Path("/etc/hostname").read_bytes() not in body


def test_another_host_is_refused(server):
    port, _, _ = server
    for path in ("/data/graph-metadata.json", "/index.html"):
        assert _request(port, "GET", path, host="attacker.example")[0] == 403
        assert _request(port, "GET", path, host=f"attacker.example:{port}")[0] == 403


def test_writes_only_same_origin_and_only_an_exported_graph(server):
    port, data, secret = server
    body = {"qParams": {"pinnedIds": "x"}}
    evil = {"Origin": "http://attacker.example"}
    assert _request(port, "POST", "/save_graph/g0", body=body, headers=evil)[0] == 403
    assert _request(port, "POST", "/save_graph/..%2fsecret", body=body)[0] == 404
    assert _request(port, "POST", "/save_graph/missing", body=body)[0] == 404
    assert _request(port, "POST", "/somewhere/else", body=body)[0] == 404
    assert _request(port, "POST", "/save_graph/g0", body={"no": 1})[0] == 400
    assert secret.read_text() == "secret\n"
    assert json.loads((data / "g0.json").read_text())["qParams"] == {}
    same = {"Origin": f"http://127.0.0.1:{port}"}
    assert _request(port, "POST", "/save_graph/g0", body=body, headers=same)[0] == 200
    assert json.loads((data / "g0.json").read_text())["qParams"] == {"pinnedIds": "x"}


def test_a_save_does_not_follow_a_planted_temp_link(server):
    port, data, secret = server
    (data / ".g0.json.tmp").symlink_to(secret)
    body = {"qParams": {"pinnedIds": "y"}}
    assert _request(port, "POST", "/save_graph/g0", body=body)[0] == 200
    assert secret.read_text() == "secret\n"
    assert not (data / "g0.json").is_symlink()
    assert json.loads((data / "g0.json").read_text())["qParams"] == {"pinnedIds": "y"}


def test_a_forwarded_port_is_still_this_machine(server):
    """``ssh -L 9000:127.0.0.1:PORT`` makes the browser send ``Host: localhost:9000``;
    the loopback names are answered on any port, other names on none."""
    port, _, _ = server
    for host in ("localhost:9000", "127.0.0.1:1", "[::1]:9000", "LOCALHOST"):
        assert _request(port, "GET", "/data/graph-metadata.json", host=host)[0] == 200, host
    same = {"Origin": "http://localhost:9000"}
    body = {"qParams": {"pinnedIds": "z"}}
    assert _request(port, "POST", "/save_graph/g0", body=body, headers=same)[0] == 200
    for host in ("localhost.attacker.example:9000", "127.0.0.1.nip.io", "10.0.0.1:80"):
        assert _request(port, "GET", "/index.html", host=host)[0] == 403, host


def test_odd_requests_get_a_status_not_a_traceback(server, caplog):
    port, data, _ = server
    assert _request(port, "GET", "/data/%00.json")[0] == 404
    assert _request(port, "GET", "/data/" + "a" * 5000 + ".json")[0] == 404
    # graph-metadata.json is a file of the folder but not an exported graph: no write.
    body = {"qParams": {"x": 1}}
    assert _request(port, "POST", "/save_graph/graph-metadata", body=body)[0] == 404
    assert "qParams" not in json.loads((data / "graph-metadata.json").read_text())
    (data / "g0.json").write_text("[1, 2]")  # not a graph object
    assert _request(port, "POST", "/save_graph/g0", body=body)[0] == 400
    assert json.loads((data / "g0.json").read_text()) == [1, 2]
    assert "Traceback" not in caplog.text
