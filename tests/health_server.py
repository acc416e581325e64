"""A real HTTP server on 127.0.0.1 (ephemeral port) that serves REFERENCE.md health payloads.

Its state is set by the test: the numbers, which schema `/health/system`
answers with, error modes (ERROR with 200, 503, hang, trickle, a 50 MB body)
and one-poll spikes (`spike(...)`: the next request to each endpoint answers
with other numbers, then it is back). It runs `http.server` in a thread so it
is a genuinely separate peer for the async client under test.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import payloads

ENDPOINTS = ("/health/resources", "/health/system")


class HealthServer:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values = payloads.LEVELS["normal"]
        self.legacy = False  # /health/system answers the older SUCCESS/data variant
        self.mode = "ok"  # ok | error200 | 503 | hang | trickle | huge
        self.ready_status = 200
        self.requests: Counter[str] = Counter()
        self._spikes: dict[str, tuple[float, float, float]] = {}
        self._closing = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
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

    def set(self, level_or_values: str | tuple[float, float, float]) -> None:
        with self.lock:
            self.values = (payloads.LEVELS[level_or_values] if isinstance(level_or_values, str)
                           else level_or_values)

    def spike(self, values: tuple[float, float, float], endpoints: tuple[str, ...]) -> None:
        """The next request to each of `endpoints` answers `values`; later ones do not."""
        with self.lock:
            for path in endpoints:
                self._spikes[path] = values

    def __enter__(self) -> HealthServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        path = request.path
        with self.lock:
            self.requests[path] += 1
            mode = self.mode
            values = self._spikes.pop(path, self.values)
            legacy = self.legacy
            ready = self.ready_status
        if path == "/health/ready":
            self._send(request, ready, {"status": "ready" if ready == 200 else "not ready"})
        elif path not in ENDPOINTS:
            self._send(request, 404, {"detail": "Not Found"})
        elif mode == "503":
            self._send(request, 503, {"detail": "Service Unavailable"})
        elif mode == "error200":
            self._send(request, 200, payloads.ERROR_200)
        elif mode == "hang":
            self._closing.wait(10)
        elif mode == "trickle":
            self._trickle(request)
        elif mode == "huge":
            self._huge(request)
        elif path == "/health/resources":
            self._send(request, 200, payloads.resources(*values))
        else:
            body = payloads.legacy_system(*values) if legacy else payloads.system(*values)
            self._send(request, 200, body)

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def _trickle(self, request: BaseHTTPRequestHandler) -> None:
        """A valid payload, one byte every 50 ms: every read is quick, the whole is not."""
        body = json.dumps(payloads.resources(*self.values)).encode()
        request.send_response(200)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        try:
            for byte in body:
                if self._closing.wait(0.05):
                    return
                request.wfile.write(bytes([byte]))
                request.wfile.flush()
        except OSError:
            return

    def _huge(self, request: BaseHTTPRequestHandler) -> None:
        """50 MB with no Content-Length, so only reading can find out it is too big."""
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.end_headers()
        chunk = b" " * 65536
        started = time.monotonic()
        try:
            for _ in range(50 * 16):
                request.wfile.write(chunk)
                if self._closing.is_set() or time.monotonic() - started > 10:
                    return
        except OSError:
            return
