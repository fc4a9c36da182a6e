"""relightq never calls private, loopback or link-local addresses unless allowed: not via
a DNS answer, not via a redirect, not via an output URL the upstream hands back."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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


def self_signed(host: str) -> tuple[bytes, bytes]:
    """A certificate valid for ``host`` only, and its key, as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@contextmanager
def https_server(cert_pem: bytes, key_pem: bytes, tmp_path: Path) -> Iterator[int]:
    """A keep-alive HTTPS server on 127.0.0.1 answering with the Host it was asked for."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep connections open, so a client can pool them

        def do_GET(self) -> None:
            body = str(self.headers.get("host")).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_each_host_name_gets_its_own_tls_connection_and_certificate_check(
    tmp_path: Path,
) -> None:
    # Two names, one address (127.0.0.1, allowed in the suite), a certificate for one name.
    cert_pem, key_pem = self_signed("alpha.test")
    trust = ssl.create_default_context(cadata=cert_pem.decode())
    transport = GuardedTransport(verify=trust, resolve=lambda host, port: ("127.0.0.1",))
    with (
        https_server(cert_pem, key_pem, tmp_path) as port,
        httpx.Client(transport=transport) as client,
    ):
        first = client.get(f"https://alpha.test:{port}/")
        again = client.get(f"https://alpha.test:{port}/")  # pooled: same host, same check
        # Served over alpha's pooled connection, this would pass unchecked.
        with pytest.raises(httpx.ConnectError, match=r"(?i)certificate|hostname"):
            client.get(f"https://beta.test:{port}/")

    assert first.text == again.text == f"alpha.test:{port}"


def test_the_guard_checks_the_address_a_name_resolves_to_on_a_new_connection() -> None:
    transport = GuardedTransport(resolve=lambda host, port: ("10.0.0.7",))
    with (
        httpx.Client(transport=transport) as client,
        pytest.raises(BlockedAddress, match=r"10\.0\.0\.7"),
    ):
        client.get("http://shop.example/hook")
