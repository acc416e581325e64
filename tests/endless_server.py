"""A real HTTP server on 127.0.0.1 (ephemeral port) whose every answer has a body that never ends.

Any GET or POST is answered with the configured status and no
Content-Length, then spaces until the client hangs up (or the server
closes): only reading can find out the body is too big, and a client that
reads it all never returns. It runs `http.server` in a thread so it is a
genuinely separate peer for the async client under test; `sent` counts the
body bytes written, so a test can see the client stopped early.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHUNK = b" " * 65536


class EndlessServer:
    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.lock = threading.Lock()
        self.requests = 0
        self.sent = 0
        self._closing = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._handle(self)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> EndlessServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.requests += 1
        request.send_response(self.status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Connection", "close")
        request.end_headers()
        try:
            while not self._closing.is_set():
                request.wfile.write(CHUNK)
                with self.lock:
                    self.sent += len(CHUNK)
        except OSError:
            return  # the client hung up: what a bounded reader does
