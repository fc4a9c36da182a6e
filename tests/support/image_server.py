"""A real HTTP server standing in for a shop's image host: images whose bytes a test can
change under the same URL, with the validators a real host sends (or does not)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

EtagKind = Literal["strong", "weak", "none"]


@dataclass
class ImageHost:
    """Serves ``images[path]``; ``etags`` says which validator each path sends."""

    base_url: str
    images: dict[str, bytes] = field(default_factory=dict)
    etags: dict[str, EtagKind] = field(default_factory=dict)
    heads: int = 0
    gets: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, path: str, data: bytes, etag: EtagKind = "strong") -> str:
        """Serve ``data`` at ``path`` (replacing what was there); its URL."""
        with self.lock:
            self.images[path] = data
            self.etags[path] = etag
        return f"{self.base_url}{path}"


@contextmanager
def image_host() -> Iterator[ImageHost]:
    """Serve on 127.0.0.1 on a free port while the block runs."""
    host: ImageHost

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, *, body: bool) -> None:
            with host.lock:
                data = host.images.get(self.path)
                kind = host.etags.get(self.path, "strong")
                if body:
                    host.gets += 1
                else:
                    host.heads += 1
            if data is None:
                self.send_response(404)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("content-type", "image/png")
            self.send_header("content-length", str(len(data)))
            digest = hashlib.sha256(data).hexdigest()[:32]
            if kind == "strong":
                self.send_header("etag", f'"{digest}"')
            elif kind == "weak":
                self.send_header("etag", f'W/"{digest}"')
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_GET(self) -> None:
            self._answer(body=True)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    host = ImageHost(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield host
    finally:
        server.shutdown()
        server.server_close()
