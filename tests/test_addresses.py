"""bbverify.addresses: address parsing and sets have their own module; bbverify.ipranges re-exports them."""

from __future__ import annotations

import ast
import ipaddress
from pathlib import Path

import pytest

import bbverify.addresses as addresses
import bbverify.ipranges as ipranges
from bbverify.errors import ConfigurationError

MOVED = ["AddressSet", "IPAddress", "IPNetwork", "catch_all_versions", "parse_cidr", "parse_client_ip"]


@pytest.mark.parametrize("name", MOVED)
def test_the_moved_names_are_the_same_objects_in_both_modules(name: str) -> None:
    assert name in addresses.__all__ and name in ipranges.__all__
    assert getattr(ipranges, name) is getattr(addresses, name)


def test_addresses_needs_neither_the_network_nor_the_loader() -> None:
    tree = ast.parse(Path(addresses.__file__).read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert imported <= {"__future__", "ipaddress", "bisect", "collections.abc", "typing", "errors"}


def test_the_moved_functions_behave_as_before() -> None:
    assert addresses.parse_client_ip("::ffff:192.0.2.1") == ipaddress.IPv4Address("192.0.2.1")
    with pytest.raises(ValueError, match="zone id"):
        addresses.parse_client_ip("fe80::1%eth0")
    with pytest.raises(ConfigurationError, match="host bits"):
        addresses.parse_cidr("192.0.2.7/24", key="cidrs")
    both = [addresses.parse_cidr("0.0.0.0/1"), addresses.parse_cidr("128.0.0.0/1")]
    assert addresses.catch_all_versions(both) == (4,)
    assert ipaddress.IPv4Address("192.0.2.9") in addresses.AddressSet([addresses.parse_cidr("192.0.2.0/24")])
