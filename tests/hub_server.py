"""A loopback stand-in for the Hugging Face Hub: just the ``resolve`` endpoint that ``hf_hub_download`` uses.

``HEAD /{repo}/resolve/{revision}/{file}`` answers with the commit, ETag and size; ``GET`` serves the bytes
(honouring ``Range`` for resumed downloads). Every request is recorded so tests can assert what was asked.
"""

from __future__ import annotations

import hashlib
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Tuple

_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<file>.+)$")


class FakeHub:
    """Serves ``files[(repo_id, revision, filename)] = path`` on ``http://127.0.0.1:<port>``."""

    def __init__(self, files: Dict[Tuple[str, str, str], Path]):
        self.files = files
        self.requests: List[Tuple[str, str, Dict[str, str]]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self):  # noqa: N802 (http.server naming)
                hub._answer(self, body=False)

            def do_GET(self):  # noqa: N802
                hub._answer(self, body=True)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        self.requests.append((handler.command, handler.path, dict(handler.headers)))
        # hf_hub_download percent-encodes file names ("QualiCLIP+_koniq.pth" arrives as "QualiCLIP%2B_koniq.pth").
        match = _RESOLVE.match(urllib.parse.unquote(handler.path.split("?")[0]))
        path = match and self.files.get((match["repo"], match["revision"], match["file"]))
        if path is None:
            handler.send_response(404)
            handler.send_header("X-Error-Code", "EntryNotFound")
            handler.send_header("X-Error-Message", "Entry not found")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        data = Path(path).read_bytes()
        start = 0
        range_header = handler.headers.get("Range")
        if body and range_header and (m := re.match(r"bytes=(\d+)-", range_header)):
            start = int(m.group(1))
        handler.send_response(206 if start else 200)
        handler.send_header("X-Repo-Commit", hashlib.sha1(match["revision"].encode()).hexdigest())
        handler.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        handler.send_header("Content-Length", str(len(data) - start))
        handler.end_headers()
        if body:
            handler.wfile.write(data[start:])
