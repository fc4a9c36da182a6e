"""Which addresses relightq itself may call: public ones, plus what an operator allows.

Checked by resolving the host and testing every address it resolves to with the
standard library's ``ipaddress`` (``is_global`` covers private, loopback, link-local,
CGNAT and reserved ranges, IPv4 and IPv6; multicast and IPv4 addresses wrapped in IPv6 -
mapped, NAT64, 6to4, Teredo - are checked on top).
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from relightq.settings import get_settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# httpx's own defaults, as a plain HTTPTransport has them.
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


class BlockedAddress(Exception):
    """The URL points somewhere relightq may not call."""


@lru_cache(maxsize=8)
def _allow_list(raw: str) -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
    hosts: set[str] = set()
    networks: list[IPNetwork] = []
    for entry in filter(None, (part.strip() for part in raw.split(","))):
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            hosts.add(entry.lower())
    return frozenset(hosts), tuple(networks)


NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052's well-known prefix


def _unwrap(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one stands for (mapped, NAT64, 6to4, Teredo), else itself."""
    if not isinstance(address, ipaddress.IPv6Address):
        return address
    if address.ipv4_mapped:
        return address.ipv4_mapped
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour:
        return address.sixtofour
    if address.teredo:
        return address.teredo[1]  # (server, client): the client is where packets go
    return address


def is_public(address: IPAddress) -> bool:
    """Globally routable unicast, and so is any IPv4 address it wraps (``is_global`` alone
    counts multicast as global and does not look inside 64:ff9b:: or 2002::)."""
    return all(a.is_global and not a.is_multicast for a in (address, _unwrap(address)))


@lru_cache(maxsize=1024)
def _resolve_cached(host: str, port: int) -> tuple[str, ...]:
    return _resolve(host, port)


def _resolve(host: str, port: int) -> tuple[str, ...]:
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError, UnicodeError) as exc:
        raise BlockedAddress(f"host {host} does not resolve") from exc
    return tuple(str(sockaddr[0]) for *_, sockaddr in answers)


Resolver = Callable[[str, int], tuple[str, ...]]


def _checked_addresses(
    host: str,
    port: int,
    allow: str | None,
    *,
    cached: bool = False,
    resolve: Resolver | None = None,
) -> tuple[str, ...]:
    """Every address ``host`` resolves to, once each is known to be public or allowed."""
    hosts, networks = _allow_list(get_settings().outbound_allow if allow is None else allow)
    answers = (resolve or (_resolve_cached if cached else _resolve))(host, port)
    if host.lower() in hosts:
        return answers
    for answer in answers:
        address = ipaddress.ip_address(answer.split("%")[0])
        # Allowed as written (or IPv4-mapped): an allowed 127.0.0.1 does not allow its NAT64
        # or 6to4 forms, which only reach it through a translator.
        literal = getattr(address, "ipv4_mapped", None) or address
        if any(literal in network for network in networks):
            continue
        if not is_public(address):
            raise BlockedAddress(
                f"{host} resolves to {address}, not a public unicast address (private, "
                "loopback, link-local, multicast or one of those wrapped in IPv6; an "
                "operator can allow it with RELIGHTQ_OUTBOUND_ALLOW)"
            )
    return answers


def check_url(url: str, allow: str | None = None, *, cached: bool = False) -> None:
    """Raise BlockedAddress unless ``url`` is http(s) and every address it resolves to is
    public or allowed by RELIGHTQ_OUTBOUND_ALLOW.

    ``cached`` reuses earlier answers (validating 100k rows naming one host); the check
    before each call resolves afresh.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BlockedAddress("must be an http(s) URL with a host")
    hosts, _ = _allow_list(get_settings().outbound_allow if allow is None else allow)
    if parts.hostname.lower() in hosts:
        return  # allowed by name: it need not even resolve yet
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise BlockedAddress("has an invalid port") from exc
    _checked_addresses(parts.hostname.lower(), port, allow, cached=cached)


def pinned_address(
    host: str, port: int, allow: str | None = None, *, resolve: Resolver | None = None
) -> str:
    """The address to connect to for ``host``: resolved once and checked, so a DNS answer
    that changes between the check and the connection (rebinding) cannot slip through."""
    return _checked_addresses(host, port, allow, resolve=resolve)[0]


class GuardedBackend(httpcore.NetworkBackend):
    """httpcore's socket layer, connecting only to a checked address of the host asked for.

    The check sits where the connection is made, not in the URL: the request keeps its
    host name, so httpcore pools connections per (scheme, host, port) and verifies each
    host's certificate against its own name. Rewriting the URL to the address instead
    (the earlier way) pooled by address, and a host sharing an address with another could
    reuse that one's TLS connection without its own certificate ever being checked.
    """

    def __init__(self, trusted_hosts: frozenset[str], resolve: Resolver | None) -> None:
        self._trusted = {host.lower() for host in trusted_hosts}
        self._resolve = resolve
        self._sockets = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        """A TCP stream to ``host`` (or BlockedAddress), made to the address just checked."""
        if host.lower() not in self._trusted:
            host = pinned_address(host, port, resolve=self._resolve)
        return self._sockets.connect_tcp(host, port, timeout, local_address, socket_options)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        """Never: a guarded client talks to network addresses only."""
        raise BlockedAddress("Unix sockets are not reachable through the outbound guard")

    def sleep(self, seconds: float) -> None:
        """Between connection retries."""
        self._sockets.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    """An httpx transport that connects only to checked addresses, on every hop.

    Each new connection (each redirect to another host included) is resolved and checked
    by :class:`GuardedBackend`; a pooled connection was checked when it was made.
    ``resolve`` replaces DNS (``(host, port) -> addresses``), for tests.
    """

    def __init__(
        self,
        trusted_hosts: frozenset[str] = frozenset(),
        *,
        verify: ssl.SSLContext | bool = True,
        limits: httpx.Limits = DEFAULT_LIMITS,
        resolve: Resolver | None = None,
    ) -> None:
        context = httpx.create_ssl_context(verify=verify)
        super().__init__(verify=context, limits=limits)
        # httpx 0.28 takes no network backend (encode/httpx#3749 would add one), so the
        # pool HTTPTransport built (its `_pool`, the one private name relied on here) is
        # replaced by the same pool with httpcore's documented network_backend hook: less
        # hand-written than one pool per host name, and the limits stay shared by all hosts.
        self._pool = httpcore.ConnectionPool(
            ssl_context=context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(trusted_hosts, resolve),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Refuse anything but http(s) to a host, then send it through the guarded pool."""
        url = request.url
        if url.scheme not in ("http", "https") or not url.host:
            raise BlockedAddress("must be an http(s) URL with a host")
        return super().handle_request(request)
