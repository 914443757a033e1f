"""``circuitray serve``: circuitray's graph viewer over one export folder, on 127.0.0.1.

circuit-tracer's own local server joins request paths to its data folder unchecked
(``GET /data//etc/hostname`` returns the machine's file), answers any ``Host`` (a DNS
rebinding page can read it) and takes cross-origin POSTs that write; its viewer loads
d3 from the network, so offline it shows nothing. This handler serves circuitray's own
viewer, with the same data URLs, confined:

1. Only requests whose ``Host`` names this machine's loopback (``127.0.0.1``,
   ``localhost`` or ``[::1]``, any port, so ``ssh -L`` forwarding works) are answered;
   a page of another name (DNS rebinding) gets 403.
2. ``/data/NAME`` and ``/graph_data/NAME`` serve a file of the export folder: the path
   is decoded, resolved (links followed) and refused unless it stays inside the folder.
3. Everything else is the viewer: its assets are circuitray's own, shipped in the
   package (:data:`STATIC_DIR`: ``index.html``, ``viewer.js``, ``viewer.css``, d3
   vendored under ``vendor/``), served by ``SimpleHTTPRequestHandler`` confined to
   that folder, ``/`` giving ``index.html``, no directory listing.
4. Every response carries :data:`CSP`, so the browser itself makes no request
   elsewhere (scripts, styles, fetches, images only from this server).
5. The one write, ``POST /save_graph/SLUG`` (kept from circuit-tracer's viewer, which
   saved its view state there; circuitray's viewer keeps pins in the URL instead),
   needs a loopback ``Origin`` (or none), a slug listed in ``graph-metadata.json``, a
   JSON body of at most :data:`MAX_POST_BYTES` with ``qParams``; it rewrites only that
   graph's ``qParams``, through a fresh temporary file.
6. A request that fails inside the handler is logged in one line, not a traceback.
"""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import logging
import os
import re
import socketserver
import tempfile
import urllib.parse
from pathlib import Path

from circuitray.errors import CircuitrayError

logger = logging.getLogger(__name__)

__all__ = ["CSP", "MAX_POST_BYTES", "STATIC_DIR", "ViewerHandler", "graph_slugs", "serve"]

DATA_PREFIXES = ("/data/", "/graph_data/")
COMPRESS_OVER_BYTES = 1024**2  # as circuit-tracer's server: gzip larger responses
MAX_POST_BYTES = 1024**2
SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
STATIC_DIR = Path(__file__).resolve().parent / "static"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)


LOOPBACK = {"127.0.0.1", "localhost", "[::1]"}


def _loopback(netloc: str) -> bool:
    """Whether ``host[:port]`` names this machine's loopback (any port)."""
    host = netloc.rsplit(":", 1)[0] if not netloc.endswith("]") else netloc
    return host.lower() in LOOPBACK


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        import sys

        error = sys.exc_info()[1]
        logger.warning("request from %s failed: %r", client_address[0], error)


class ViewerHandler(http.server.SimpleHTTPRequestHandler):
    """The viewer's requests, confined to ``data_dir`` and this server (module doc)."""

    def __init__(self, *args, frontend_dir: str, data_dir: str, **kwargs):
        self.data_dir = Path(data_dir).resolve()
        super().__init__(*args, directory=str(frontend_dir), **kwargs)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the stdlib's name)
        logger.info("%s %s", self.address_string(), format % args)

    def end_headers(self) -> None:
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def list_directory(self, path):  # a folder without index.html: no listing
        self._refuse(404, "no such file")
        return None

    def _refuse(self, code: int, why: str) -> None:
        logger.warning("refused %s %s: %s", self.command, self.path, why)
        self.send_error(code, why)

    def _host_ok(self) -> bool:
        if _loopback(self.headers.get("Host", "")):
            return True
        self._refuse(403, "Host is not this server")
        return False

    def _data_file(self, url_path: str) -> Path | None:
        """The export-folder file a /data/ or /graph_data/ URL names, or None."""
        rel = urllib.parse.unquote(urllib.parse.urlsplit(url_path).path)
        for prefix in DATA_PREFIXES:
            if rel.startswith(prefix):
                rel = rel[len(prefix) :]
                break
        try:
            path = (self.data_dir / rel.lstrip("/")).resolve()
            if not path.is_relative_to(self.data_dir) or not path.is_file():
                return None
        except (ValueError, OSError):  # a NUL byte, a name too long, a loop of links
            return None
        return path

    def do_HEAD(self) -> None:
        if self._host_ok():
            super().do_HEAD()

    def do_GET(self) -> None:
        if not self._host_ok():
            return
        if not self.path.startswith(DATA_PREFIXES):
            super().do_GET()
            return
        path = self._data_file(self.path)
        if path is None:
            self._refuse(404, "not a file of the export folder")
            return
        content = path.read_bytes()
        self.send_response(200)
        if len(content) > COMPRESS_OVER_BYTES:
            content = gzip.compress(content, compresslevel=3)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def do_POST(self) -> None:
        if not self._host_ok():
            return
        origin = self.headers.get("Origin")
        if origin is not None and not _loopback(urllib.parse.urlsplit(origin).netloc):
            self._refuse(403, "cross-origin write")
            return
        parts = urllib.parse.urlsplit(self.path).path.strip("/").split("/")
        if len(parts) != 2 or parts[0] != "save_graph" or not SLUG.fullmatch(parts[1]):
            self._refuse(404, "the only write is /save_graph/SLUG")
            return
        try:
            listed = parts[1] in graph_slugs(str(self.data_dir))
        except (OSError, ValueError, KeyError, TypeError):
            listed = False
        path = self._data_file(f"/data/{parts[1]}.json") if listed else None
        if path is None:
            self._refuse(404, "no such exported graph")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._refuse(411, "Content-Length needed")
            return
        if not 0 < length <= MAX_POST_BYTES:
            self._refuse(413, f"body must be 1 to {MAX_POST_BYTES} bytes")
            return
        try:
            q_params = json.loads(self.rfile.read(length))["qParams"]
            graph = json.loads(path.read_text())
            if not isinstance(graph, dict):
                raise TypeError("the exported graph is not a JSON object")
        except (ValueError, KeyError, TypeError):
            self._refuse(400, "expected JSON with qParams, over an exported graph")
            return
        graph["qParams"] = q_params
        # A fresh temp file of our own (never a name a link could already hold).
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(graph, indent=2))
        os.replace(tmp, path)
        self.send_response(200)
        self.end_headers()


def serve(data_dir: str, *, port: int = 8032) -> socketserver.TCPServer:
    """The viewer over export folder ``data_dir`` on 127.0.0.1:``port`` (0: any free
    port); returns the server (``serve_forever()`` / ``shutdown()``)."""
    if not (Path(data_dir) / "graph-metadata.json").is_file():
        raise CircuitrayError(
            f"{data_dir}: no graph-metadata.json; export a graph there first "
            "(circuitray export RUN_DIR --graph N --out DIR)"
        )
    handler = functools.partial(ViewerHandler, frontend_dir=str(STATIC_DIR), data_dir=str(data_dir))
    try:
        return _Server(("127.0.0.1", port), handler)
    except OSError as e:
        raise CircuitrayError(f"port {port}: {e.strerror}") from None


def graph_slugs(data_dir: str) -> list[str]:
    """Slugs listed in ``data_dir/graph-metadata.json`` (its graphs that have one)."""
    meta = json.loads((Path(data_dir) / "graph-metadata.json").read_text())
    graphs = meta.get("graphs", []) if isinstance(meta, dict) else []
    return [g["slug"] for g in graphs if isinstance(g, dict) and isinstance(g.get("slug"), str)]
