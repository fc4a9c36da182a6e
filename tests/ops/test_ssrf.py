"""relightq never calls private, loopback or link-local addresses unless allowed: not via
a DNS answer, not via a redirect, not via an output URL the upstream hands back."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from relightq.netguard import BlockedAddress, GuardedTransport, check_url
from relightq.segmind.client import SegmindClient
from relightq.segmind.errors import SegmindRejected
from relightq.segmind.params import RelightParams
from relightq.settings import get_settings


@contextmanager
def http_server(status: int, headers: dict[str, str], body: bytes = b"") -> Iterator[str]:
    """A real server on 127.0.0.1 answering every request the same way."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            self.rfile.read(length)
            self.send_response(status)
            for name, value in {**headers, "content-length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3/x",
        "http://172.16.0.1/x",
        "http://192.168.1.1/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/x",
        "http://[fe80::1]/x",
        "http://[::ffff:10.0.0.1]/x",
        "http://100.64.0.1/x",
        "http://0.0.0.0/x",
        "http://224.0.0.1/x",  # multicast: is_global alone calls it global
        "http://[ff02::1]/x",
        "http://[64:ff9b::7f00:1]/x",  # NAT64 of 127.0.0.1
        "http://[2002:7f00:1::]/x",  # 6to4 of 127.0.0.1
        "http://[2002:a00:1::]/x",  # 6to4 of 10.0.0.1
    ],
)
def test_private_loopback_and_link_local_targets_are_blocked(url: str) -> None:
    with pytest.raises(BlockedAddress):
        check_url(url, allow="")
    with pytest.raises(BlockedAddress), httpx.Client(transport=GuardedTransport()) as client:
        client.get(url)


@pytest.mark.parametrize("url", ["http://8.8.8.8/x", "http://[64:ff9b::808:808]/x"])
def test_public_unicast_targets_pass(url: str) -> None:
    check_url(url, allow="")


def test_an_operator_allow_list_lets_chosen_addresses_through() -> None:
    check_url("http://10.1.2.3/x", allow="10.0.0.0/8")
    check_url("http://localhost/x", allow="localhost")
    with pytest.raises(BlockedAddress):
        check_url("http://10.1.2.3/x", allow="192.168.0.0/16")


def test_a_redirect_to_a_private_address_is_blocked_at_the_hop() -> None:
    # 127.0.0.1 is allowed in the suite (RELIGHTQ_OUTBOUND_ALLOW); its redirect is not.
    assert get_settings().outbound_allow == "127.0.0.1"
    with http_server(302, {"location": "http://169.254.169.254/latest/meta-data/"}) as url:
        client = httpx.Client(transport=GuardedTransport(), follow_redirects=True)
        with pytest.raises(BlockedAddress, match=r"169\.254\.169\.254"):
            client.get(url)
        assert client.get(url, follow_redirects=False).status_code == 302


def test_an_output_url_pointing_inside_the_network_fails_the_call_without_fetching() -> None:
    answer = json.dumps({"images": ["http://[::1]:9/internal-admin.png"]}).encode()
    headers = {"content-type": "application/json"}
    with http_server(200, headers, answer) as upstream:
        client = SegmindClient(upstream, "key")
        with pytest.raises(SegmindRejected, match="not allowed"):
            client.relight(RelightParams(prompt="x"), "https://example.com/a.png")
        client.close()
