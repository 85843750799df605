"""A plain HTTP file server for the tests, run as its own process: `python http_file_server.py ROOT PORT [RATE]`.

Serves GET and HEAD for files under ROOT with the headers a download needs to be checked and resumed: ETag (the
file's MD5), Content-Length, Content-MD5 (base64, as Azure and S3 send it), Accept-Ranges and `Range: bytes=N-`
(206 Partial Content; `bytes=N-M` sends bytes N to M). RATE > 0 sends at most RATE bytes per second, so a test can kill the server mid-download.
A folder answers with a JSON list of its entries (what an object store's listing gives). Listens on 127.0.0.1 only.

Misbehaviour on demand, switched by files the test writes into ROOT (read at each request): `ROOT/_status` holding
a status code (e.g. 503) answers every request with it; `ROOT/_norange` serves like a server without range
support (every GET answers 200 with the whole file; Last-Modified, but no ETag, Content-MD5 or Accept-Ranges).
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

ROOT = Path(sys.argv[1]).resolve()
PORT = int(sys.argv[2])
RATE = int(sys.argv[3]) if len(sys.argv) > 3 else 0
CHUNK = 64 << 10


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _target(self) -> Path | None:
        rel = unquote(urlparse(self.path).path).lstrip("/")
        path = (ROOT / rel).resolve()
        if path != ROOT and ROOT not in path.parents:
            return None
        return path if path.exists() else None

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        forced = ROOT / "_status"
        if forced.is_file():
            self._send(int(forced.read_text()), b"server trouble", "text/plain", body)
            return
        path = self._target()
        if path is None:
            self._send(404, b'{"error": "not found"}', "application/json", body)
            return
        if path.is_dir():
            listing = json.dumps(sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir()))
            self._send(200, listing.encode(), "application/json", body)
            return
        data = path.read_bytes()
        digest = hashlib.md5(data).digest()
        start = 0
        status = 200
        ranged = not (ROOT / "_norange").is_file()
        rng = self.headers.get("Range")
        if ranged and rng and rng.startswith("bytes="):
            first, _, last = rng[len("bytes=") :].partition("-")
            start = int(first or 0)
            if start >= len(data):
                self._send(416, b"", "application/octet-stream", body)
                return
            status = 206
            end = min(int(last) + 1, len(data)) if last.strip() else len(data)
        part = data[start:end] if status == 206 else data
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(part)))
        if ranged:
            self.send_header("ETag", f'"{digest.hex()}"')
            self.send_header("Accept-Ranges", "bytes")
        else:  # what a plain static server says of a file's version
            self.send_header("Last-Modified", self.date_time_string(int(path.stat().st_mtime)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{start + len(part) - 1}/{len(data)}")
        elif ranged:
            self.send_header("Content-MD5", base64.b64encode(digest).decode())
        self.end_headers()
        if not body:
            return
        for offset in range(0, len(part), CHUNK):
            self.wfile.write(part[offset : offset + CHUNK])
            if RATE:
                time.sleep(CHUNK / RATE)

    def _send(self, status: int, payload: bytes, content_type: str, body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
