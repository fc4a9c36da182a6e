"""Which addresses relightq itself may call: public ones, plus what an operator allows.

Checked by resolving the host and testing every address it resolves to with the
standard library's ``ipaddress`` (``is_global`` covers private, loopback, link-local,
CGNAT and reserved ranges, IPv4 and IPv6; multicast and IPv4 addresses wrapped in IPv6 -
mapped, NAT64, 6to4, Teredo - are checked on top).
"""

from __future__ import annotations

import ipaddress
import socket
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import httpx

from relightq.settings import get_settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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


def _checked_addresses(
    host: str, port: int, allow: str | None, *, cached: bool = False
) -> tuple[str, ...]:
    """Every address ``host`` resolves to, once each is known to be public or allowed."""
    hosts, networks = _allow_list(get_settings().outbound_allow if allow is None else allow)
    answers = (_resolve_cached if cached else _resolve)(host, port)
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


def pinned_address(host: str, port: int, allow: str | None = None) -> str:
    """The address to connect to for ``host``: resolved once and checked, so a DNS answer
    that changes between the check and the connection (rebinding) cannot slip through."""
    return _checked_addresses(host, port, allow)[0]


class GuardedTransport(httpx.HTTPTransport):
    """An httpx transport that connects only to checked addresses, on every hop.

    Each request (each redirect hop included) is resolved and checked here, then sent to
    the checked address with the original Host header and TLS server name.
    """

    def __init__(self, trusted_hosts: frozenset[str] = frozenset(), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._trusted = {host.lower() for host in trusted_hosts}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https") or not url.host:
            raise BlockedAddress("must be an http(s) URL with a host")
        if url.host.lower() not in self._trusted:
            address = pinned_address(url.host, url.port or (443 if url.scheme == "https" else 80))
            if ":" in address:
                address = f"[{address}]"
            request.extensions = {**request.extensions, "sni_hostname": url.host}
            request.url = url.copy_with(host=address)
        return super().handle_request(request)
