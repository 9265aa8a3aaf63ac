"""A loopback HTTP proxy in front of the moto S3 server: latency, failures and a request count.

Every request is forwarded to the upstream server as it came (method, path, headers, body);
before it, the proxy waits ``delay`` seconds, as a real store's round trip would. A ``fail``
rule may answer a request itself instead (an S3 error document with the status it returns),
which is how tests make one request fail while others are in flight. The proxy counts the
requests it saw by method and the most of each method in flight at once, so benchmarks report
request counts and tests can tell reads really overlapped.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

#: A failure rule: ``(method, path, headers) -> HTTP status`` to answer with, or None to forward.
FailRule = Callable[[str, str, dict[str, str]], "int | None"]
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class _Server(ThreadingHTTPServer):
    # socketserver's listen backlog is 5: a client opening dozens of connections at once (64
    # requests in flight) overflowed it, and the dropped connects waited for the kernel's
    # retransmit (up to a second) with nothing in flight: the proxy, not the store, was the wait
    request_queue_size = 1024


class S3Proxy:
    """``with S3Proxy(upstream_url, delay=0.02) as proxy: ... proxy.url ...``"""

    def __init__(self, upstream: str, *, delay: float = 0.0, fail: FailRule | None = None) -> None:
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname or "127.0.0.1", parts.port or 80
        self.delay = delay
        self.fail = fail
        self.requests: Counter[str] = Counter()
        self.log: list[tuple[str, str]] = []  # (method, path with query) of every request, in arrival order
        # (start, end, method, path) of every request, seconds of time.monotonic(): when it arrived
        # and when its answer was sent, so overlaps and sequential chains can be told apart
        self.timeline: list[tuple[float, float, str, str]] = []
        self.failed = 0
        self.in_flight: Counter[str] = Counter()  # by method
        self.max_in_flight: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._local = threading.local()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                proxy._serve(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> S3Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.log.clear()
            self.timeline.clear()
            self.failed = 0
            self.max_in_flight = Counter(self.in_flight)

    def _upstream(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
            self._local.conn = conn
        return conn

    def _read_body(self, handler: BaseHTTPRequestHandler) -> bytes:
        if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += handler.rfile.read(size)
                handler.rfile.readline()
        length = int(handler.headers.get("Content-Length") or 0)
        return handler.rfile.read(length) if length else b""

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        started = time.monotonic()
        with self._lock:
            method = handler.command
            self.requests[method] += 1
            self.log.append((method, handler.path))
            self.in_flight[method] += 1
            self.max_in_flight[method] = max(self.max_in_flight[method], self.in_flight[method])
        try:
            body = self._read_body(handler)
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP}
            if self.delay:
                time.sleep(self.delay)
            status = self.fail(handler.command, handler.path, headers) if self.fail else None
            if status is not None:
                with self._lock:
                    self.failed += 1
                doc = b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>injected</Message></Error>'
                handler.send_response(status)
                handler.send_header("Content-Type", "application/xml")
                handler.send_header("Content-Length", str(len(doc)))
                handler.end_headers()
                if handler.command != "HEAD":
                    handler.wfile.write(doc)
                return
            if body or handler.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            for attempt in range(2):  # a kept-alive upstream connection may have been closed
                conn = self._upstream()
                try:
                    conn.request(handler.command, handler.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    break
                except (http.client.HTTPException, ConnectionError):
                    conn.close()
                    self._local.conn = None
                    if attempt:
                        raise
            handler.send_response(resp.status, resp.reason)
            for key, value in resp.getheaders():
                if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                    handler.send_header(key, value)
            length = resp.getheader("Content-Length") if handler.command == "HEAD" else str(len(data))
            handler.send_header("Content-Length", length or "0")
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(data)
        finally:
            with self._lock:
                self.in_flight[method] -= 1
                self.timeline.append((started, time.monotonic(), method, handler.path))
