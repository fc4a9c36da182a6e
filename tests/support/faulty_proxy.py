"""A real HTTP server in front of the real API that answers some requests with scripted
faults (a dropped connection, a 503 with Retry-After, a gateway's 502) and forwards the
rest: what a client meets while the API restarts or sheds load."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx


@dataclass(frozen=True)
class Fault:
    """One scripted answer of the proxy; status 0 closes the connection unanswered, as an
    API process that dies mid-request does."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


DROP = Fault(0)
BATCH_GET = re.compile(r"/v1/batches/[0-9a-f-]{36}")
# Not relayed: the proxy's own framing and identity replace them.
HOP_HEADERS = {"connection", "content-length", "transfer-encoding", "content-encoding"}
# Which requests meet the faults: (method, path with query) -> bool.
Matcher = Callable[[str, str], bool]


def batch_gets(method: str, path: str) -> bool:
    """GET /v1/batches/{id}: what a watch polls."""
    return method == "GET" and BATCH_GET.fullmatch(path) is not None


def api_error(status: int, code: str, retry_after: str | None) -> Fault:
    """An error exactly as the API answers it (api/errors.py)."""
    body = {"error": {"code": code, "message": f"{code}; retry shortly", "fields": []}}
    headers = {"Content-Type": "application/json"}
    return Fault(status, json.dumps(body).encode(), headers | {"Retry-After": retry_after or ""})


class FaultyProxy(ThreadingHTTPServer):
    """A real HTTP server in front of the real API: the first requests ``faulted`` picks
    (by default the GETs of a batch) meet the scripted faults, in order; everything else
    is forwarded."""

    daemon_threads = True

    def __init__(self, upstream: str, faults: list[Fault], faulted: Matcher = batch_gets) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream
        self.faults = deque(faults)
        self.faulted = faulted
        self.lock = threading.Lock()
        self.log: list[tuple[float, str]] = []  # (monotonic time, what was answered)

    def next_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            if self.faulted(method, path) and self.faults:
                fault = self.faults.popleft()
                self.log.append((time.monotonic(), str(fault.status or "drop")))
                return fault
            self.log.append((time.monotonic(), f"{method} forwarded"))
            return None

    def gap_after(self, answer: str) -> float:
        """Seconds from the answer ``answer`` to the request that followed it."""
        [at] = [n for n, (_, what) in enumerate(self.log) if what == answer]
        return self.log[at + 1][0] - self.log[at][0]


class _ProxyHandler(BaseHTTPRequestHandler):
    server: FaultyProxy

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def do_PATCH(self) -> None:
        self._answer()

    def do_DELETE(self) -> None:
        self._answer()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the test's output stays the client's

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)  # read before any fault: the client sent it whole
        fault = self.server.next_fault(self.command, self.path)
        if fault is DROP:
            self.close_connection = True
            return
        if fault is None:
            sent = {
                k: v for k, v in self.headers.items() if k.lower() not in {"host", *HOP_HEADERS}
            }
            upstream = httpx.request(
                self.command,
                self.server.upstream + self.path,
                headers=sent,
                content=body,
                timeout=60,
            )
            fault = Fault(upstream.status_code, upstream.content, dict(upstream.headers))
        self.send_response(fault.status)
        for name, value in fault.headers.items():
            if value and name.lower() not in {"date", "server", *HOP_HEADERS}:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(fault.body)))
        self.end_headers()
        self.wfile.write(fault.body)


@contextmanager
def faulty_proxy(
    upstream: str, faults: list[Fault], faulted: Matcher = batch_gets
) -> Iterator[FaultyProxy]:
    """The proxy, serving in a thread while the block runs."""
    proxy = FaultyProxy(upstream, faults, faulted)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(timeout=5)


def url_of(proxy: FaultyProxy) -> str:
    """The proxy's base URL."""
    host, port = proxy.server_address[:2]
    return f"http://{host!s}:{port}"
