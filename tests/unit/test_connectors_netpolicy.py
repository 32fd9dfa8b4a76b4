"""core/netpolicy.py: the outbound address policy of connectors (pure: no services)."""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.netpolicy import address_verdict, allowed_host_issue, destination_verdict, host_on_allow_list

PUBLIC = "93.184.216.34"


@pytest.mark.parametrize(("address", "reason"), [
    ("127.0.0.1", "loopback_address"),
    ("127.255.0.9", "loopback_address"),
    ("::1", "loopback_address"),
    ("10.1.2.3", "private_address"),
    ("172.16.0.1", "private_address"),
    ("192.168.1.1", "private_address"),
    ("fd00::1", "private_address"),
    ("169.254.169.254", "link_local_address"),  # cloud metadata
    ("fe80::1", "link_local_address"),
    ("100.64.0.1", "non_public_address"),  # shared address space (CGNAT)
    ("192.0.2.10", "private_address"),  # documentation range
    ("::ffff:127.0.0.1", "loopback_address"),  # IPv4-mapped
    ("::ffff:169.254.169.254", "link_local_address"),
    ("64:ff9b::a9fe:a9fe", "link_local_address"),  # NAT64 of 169.254.169.254
    ("0.0.0.0", "unspecified_address"),
    ("::", "unspecified_address"),
    ("224.0.0.1", "multicast_address"),
])
def test_non_public_addresses_are_refused_by_default(address: str, reason: str) -> None:
    verdict = address_verdict(address, allow_private=False)
    assert not verdict.allowed and verdict.reason == reason


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "10.0.0.5", "169.254.1.1", "fd12::5", "100.64.0.1"])
def test_the_switch_allows_private_loopback_and_link_local(address: str) -> None:
    assert address_verdict(address, allow_private=True).allowed


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "239.1.1.1", "ff02::1"])
def test_unspecified_and_multicast_are_refused_even_with_the_switch(address: str) -> None:
    assert not address_verdict(address, allow_private=True).allowed


@pytest.mark.parametrize("address", [PUBLIC, "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert address_verdict(address, allow_private=False).allowed
    assert address_verdict(ipaddress.ip_address(address), allow_private=False).allowed


def test_allow_list() -> None:
    allowed = ["api.example.com", "*.partner.io", "203.0.113.7", "[2001:db8::1]"]
    assert host_on_allow_list("api.example.com", allowed)
    assert host_on_allow_list("API.Example.COM.", allowed)  # case and the root dot do not matter
    assert not host_on_allow_list("example.com", allowed)
    assert not host_on_allow_list("api.example.com.evil.net", allowed)
    assert not host_on_allow_list("evilapi.example.com", allowed)
    assert host_on_allow_list("eu.partner.io", allowed) and host_on_allow_list("a.b.partner.io", allowed)
    assert not host_on_allow_list("partner.io", allowed)  # *. covers subdomains, not the name itself
    assert not host_on_allow_list("evilpartner.io", allowed)
    assert host_on_allow_list("203.0.113.7", allowed)
    assert host_on_allow_list("2001:db8:0::1", allowed) and host_on_allow_list("[2001:db8::1]", allowed)
    assert not host_on_allow_list("", allowed)
    assert not host_on_allow_list("api.example.com", [])


@pytest.mark.parametrize("entry", ["api.example.com", "*.example.com", "localhost", "10.0.0.1", "::1", "[::1]",
                                   "a-b.c-d.example"])
def test_well_formed_entries(entry: str) -> None:
    assert allowed_host_issue(entry) is None


@pytest.mark.parametrize("entry", ["", "*", "*.com", "https://api.example.com", "api.example.com:443",
                                   "api.example.com/path", "-bad.example.com", "bad-.example.com", "a..b",
                                   "exa mple.com", "ex\u00e1mple.com", "127.1", "user@host", "*.*.example.com",
                                   "a" * 64 + ".com", 42, None])
def test_malformed_entries(entry: object) -> None:
    assert allowed_host_issue(entry) is not None


def test_destination() -> None:
    hosts = ["api.example.com"]
    assert destination_verdict("api.example.com", [PUBLIC], hosts, False).allowed
    assert destination_verdict("other.example.com", [PUBLIC], hosts, False).reason == "host_not_allowed"
    # One bad answer among good ones refuses the call (the client could have picked it).
    assert destination_verdict("api.example.com", [PUBLIC, "127.0.0.1"], hosts, False).reason == "loopback_address"
    assert destination_verdict("api.example.com", [], hosts, False).reason == "no_address"
    # Tests reach a loopback upstream only through the switch.
    assert destination_verdict("localhost", ["127.0.0.1"], ["localhost"], True).allowed
    assert not destination_verdict("localhost", ["127.0.0.1"], ["localhost"], False).allowed


@given(st.ip_addresses())
def test_every_address_gets_a_verdict_and_the_switch_only_widens(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    strict, lenient = address_verdict(ip, False), address_verdict(ip, True)
    if strict.allowed:
        assert lenient.allowed
    if not strict.allowed:
        assert strict.reason
    if ip.is_loopback or ip.is_private or ip.is_link_local:
        assert not strict.allowed
