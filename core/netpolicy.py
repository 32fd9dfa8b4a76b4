"""Where a connector may send a request: the outbound address policy, as pure functions.

A connector performs an agent's action against an upstream over HTTP. Two checks stand
between an agent's arguments and the network, and both must pass:

1. **The host is on the connector's allow-list** (exact names, ``*.example.com`` for any
   subdomain, or IP literals). The URL template never lets an argument choose the host
   (services/connectors.py refuses placeholders there), and this check is the second lock.
2. **Every address the host resolves to is public**: loopback, private (RFC 1918, ULA),
   link-local (``169.254.0.0/16``: cloud metadata services), shared (CGNAT) and other
   non-global ranges are refused unless the connector sets ``allow_private_addresses``
   (a deliberate switch for upstreams on an internal network, and for tests on loopback).
   Unspecified (``0.0.0.0``, ``::``) and multicast addresses are refused always: neither is
   an upstream. IPv6 forms that carry an IPv4 address (``::ffff:127.0.0.1``,
   NAT64 ``64:ff9b::7f00:1``) are judged by the IPv4 address they carry.

Resolving the name is I/O and belongs to the caller, which must then connect to one of the
addresses it checked (not resolve again: a second answer could differ — DNS rebinding).
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = re.compile(r"\A(?!-)[a-z0-9-]{1,63}(?<!-)\Z", re.ASCII)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
MAX_HOSTNAME = 253


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str | None = None  # a stable code when refused: host_not_allowed, loopback_address, ...
    message: str | None = None


ALLOWED = Verdict(True)


def _ip_literal(value: str) -> IPAddress | None:
    text = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _is_hostname(value: str) -> bool:
    if not value or len(value) > MAX_HOSTNAME or not value.isascii():
        return False
    labels = value.split(".")
    # A name made of digits and dots only is an IPv4 address written oddly ("127.1"): refused
    # as a name, since resolvers read it as an address.
    if all(label.isdigit() for label in labels):
        return False
    return all(_LABEL.match(label) for label in labels)


def normalize_host(host: str) -> str:
    """Lowercase, without a trailing dot, IPv6 without brackets, IP literals in their
    canonical form: how a host is compared with the allow-list."""
    host = host.strip().lower().rstrip(".")
    ip = _ip_literal(host)
    return str(ip) if ip is not None else host


def allowed_host_issue(entry: object) -> str | None:
    """Why ``entry`` is not a well-formed allow-list entry, or None. Entries are host names
    (``api.example.com``), ``*.`` and a name (any subdomain, not the name itself) or IP
    literals; never a scheme, a port, a path or a bare ``*``."""
    if not isinstance(entry, str) or not entry or len(entry) > MAX_HOSTNAME + 2:
        return "Must be a host name, *.domain or an IP address."
    value = normalize_host(entry)
    if _ip_literal(value) is not None:
        return None
    name = value[2:] if value.startswith("*.") else value
    if not _is_hostname(name) or (value.startswith("*.") and "." not in name):  # "*.com": a whole TLD
        return "Must be a host name (letters, digits, hyphens, dots), *.domain or an IP address; no scheme, port or path."
    return None


def host_on_allow_list(host: str, allowed: Iterable[str]) -> bool:
    """Is ``host`` (from the URL about to be called) covered by one of ``allowed``?"""
    target = normalize_host(host)
    if not target:
        return False
    for entry in allowed:
        rule = normalize_host(entry)
        if rule.startswith("*."):
            if target.endswith(rule[1:]):  # ".example.com": a subdomain, never the name itself
                return True
        elif rule == target:
            return True
    return False


def _carried_ipv4(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def address_verdict(address: IPAddress | str, allow_private: bool) -> Verdict:
    """May a connection go to ``address``?"""
    ip = _carried_ipv4(ipaddress.ip_address(address) if isinstance(address, str) else address)
    if ip.is_unspecified:
        return Verdict(False, "unspecified_address", f"{ip} is not an upstream address.")
    if ip.is_multicast:
        return Verdict(False, "multicast_address", f"{ip} is a multicast address.")
    if allow_private:
        return ALLOWED
    if ip.is_loopback:
        return Verdict(False, "loopback_address", f"{ip} is a loopback address; the connector does not allow private addresses.")
    if ip.is_link_local:
        return Verdict(False, "link_local_address", f"{ip} is a link-local address; the connector does not allow private addresses.")
    if ip.is_private:
        return Verdict(False, "private_address", f"{ip} is a private address; the connector does not allow private addresses.")
    if not ip.is_global:
        return Verdict(False, "non_public_address", f"{ip} is not a public address; the connector does not allow private addresses.")
    return ALLOWED


def destination_verdict(host: str, addresses: Iterable[IPAddress | str], allowed_hosts: Iterable[str],
                        allow_private: bool) -> Verdict:
    """The whole check for one call: ``host`` on the allow-list, and every address it resolved
    to acceptable (one bad answer refuses the call: the client could have picked it)."""
    if not host_on_allow_list(host, allowed_hosts):
        return Verdict(False, "host_not_allowed", f"{normalize_host(host)!r} is not on the connector's allowed hosts.")
    resolved = list(addresses)
    if not resolved:
        return Verdict(False, "no_address", f"{normalize_host(host)!r} resolved to no address.")
    for address in resolved:
        verdict = address_verdict(address, allow_private)
        if not verdict.allowed:
            return verdict
    return ALLOWED
