"""Address sets, client-IP parsing, and the Atlassian feed loader (file and real loopback HTTP)."""

from __future__ import annotations

import ipaddress
import json
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clock import FakeClock
from loopback import Answer, JSONServer

from bbverify.errors import ConfigurationError
from bbverify.ipranges import (
    SAMPLE_FEED,
    AddressSet,
    AtlassianIPRanges,
    FeedError,
    load_cidrs,
    parse_cidr,
    parse_client_ip,
    parse_feed,
)

FIXTURE = Path(__file__).parent / "fixtures" / "atlassian-ip-ranges.json"
FEED = json.loads(FIXTURE.read_text())


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


# -- AddressSet -------------------------------------------------------------------


def test_address_set_membership_v4_and_v6() -> None:
    s = AddressSet([parse_cidr("10.0.0.0/8"), parse_cidr("192.0.2.7"), parse_cidr("2001:db8::/32")])
    assert ip("10.255.255.255") in s
    assert ip("10.0.0.0") in s
    assert ip("11.0.0.0") not in s
    assert ip("9.255.255.255") not in s
    assert ip("192.0.2.7") in s
    assert ip("192.0.2.8") not in s
    assert ip("2001:db8:ffff::1") in s
    assert ip("2001:db9::") not in s
    # An IPv4 address never matches IPv6 space with the same integer value.
    assert ip("0.0.0.1") not in AddressSet([parse_cidr("::/120")])
    assert "10.0.0.1" not in s  # strings are not addresses
    assert len(s) == 3


def test_address_set_merges_overlapping_and_adjacent() -> None:
    nets = [parse_cidr(c) for c in ("10.0.0.0/25", "10.0.0.128/25", "10.0.0.0/24", "10.0.2.0/24")]
    s = AddressSet(nets)
    assert ip("10.0.0.200") in s
    assert ip("10.0.1.5") not in s
    assert ip("10.0.2.255") in s
    assert s._v4[0] == [int(ip("10.0.0.0")), int(ip("10.0.2.0"))]  # two merged intervals
    # A one-address gap is kept: 10.0.0.2 lies between two networks.
    gap = AddressSet([parse_cidr("10.0.0.0/31"), parse_cidr("10.0.0.3/32")])
    assert ip("10.0.0.1") in gap and ip("10.0.0.3") in gap
    assert ip("10.0.0.2") not in gap
    assert ip("10.0.0.4") not in gap


def test_address_set_agrees_with_ipaddress_on_random_data() -> None:
    rng = random.Random(1234)
    nets = [ipaddress.ip_network((rng.getrandbits(32), rng.randint(8, 32)), strict=False) for _ in range(300)]
    nets += [
        ipaddress.ip_network((rng.getrandbits(128), rng.randint(16, 128)), strict=False) for _ in range(150)
    ]
    s = AddressSet(nets)
    probes: list[Any] = [ipaddress.IPv4Address(rng.getrandbits(32)) for _ in range(400)]
    probes += [ipaddress.IPv6Address(rng.getrandbits(128)) for _ in range(400)]
    probes += [n.network_address for n in nets] + [n.broadcast_address for n in nets]
    probes += [n.broadcast_address + 1 for n in nets if int(n.broadcast_address) < (1 << n.max_prefixlen) - 1]
    hits = 0
    for p in probes:
        expected = any(p.version == n.version and p in n for n in nets)
        assert (p in s) is expected, p
        hits += expected
    assert hits > len(nets)  # the probes exercised both outcomes


def test_empty_address_set() -> None:
    s = AddressSet()
    assert not s
    assert ip("1.2.3.4") not in s
    assert ip("::1") not in s


# -- parsing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("34.199.54.113", "34.199.54.113"),
        ("::ffff:34.199.54.113", "34.199.54.113"),
        ("::FFFF:22c7:3671", "34.199.54.113"),
        ("2401:1d80::1", "2401:1d80::1"),
    ],
)
def test_parse_client_ip(text: str, expected: str) -> None:
    assert parse_client_ip(text) == ip(expected)


@pytest.mark.parametrize(
    "value",
    [
        "fe80::1%eth0",
        "[2001:db8::1]",
        "1.2.3.4:80",
        " 1.2.3.4",
        "",
        "x" * 100,
        "1.2.3",
        "unknown",
        1234,
        None,
        b"1",
    ],
)
def test_parse_client_ip_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_client_ip(value)


def test_parse_cidr() -> None:
    assert str(parse_cidr("192.0.2.0/24")) == "192.0.2.0/24"
    assert str(parse_cidr(" 2001:db8::/32 ")) == "2001:db8::/32"
    assert str(parse_cidr("192.0.2.1")) == "192.0.2.1/32"
    assert str(parse_cidr("::ffff:192.0.2.0/120")) == "192.0.2.0/24"
    with pytest.raises(ConfigurationError, match=r"host bits set.*'192\.0\.2\.0/24'.*'192\.0\.2\.7/32'") as e:
        parse_cidr("192.0.2.7/24", key="ip_ranges[3]")
    assert e.value.key == "ip_ranges[3]"
    for bad in ("192.0.2.0/33", "nope", "", "fe80::/64%eth0", "::ffff:0:0/90", None, 7):
        with pytest.raises(ConfigurationError):
            parse_cidr(bad)


# -- the feed -----------------------------------------------------------------------


def test_parse_feed_filters_by_product_and_direction() -> None:
    snap = parse_feed(FEED)
    cidrs = {str(n) for n in snap.ranges.networks}
    assert "34.199.54.113/32" in cidrs
    assert "2401:1d80:3000::/36" in cidrs
    assert "13.52.5.0/25" not in cidrs  # jira/confluence
    assert "104.192.142.224/28" not in cidrs  # bitbucket ingress only
    assert snap.skipped == 0
    assert snap.creation_date == "2026-11-01T00:00:00.000000"


def test_parse_feed_region_perimeter_and_case() -> None:
    snap = parse_feed(FEED, product="BitBucket", region=["ap-southeast-2"])
    assert {str(n) for n in snap.ranges.networks} == {"13.236.8.128/25", "2406:da1c:1e0:a200::/56"}
    commercial = parse_feed(FEED, perimeter="commercial")
    assert ip("3.216.235.50") not in commercial.ranges
    assert ip("3.216.235.50") in parse_feed(FEED).ranges
    everything = parse_feed(FEED, product=None, direction=None)
    assert ip("52.82.172.1") in everything.ranges


def test_parse_feed_skips_unusable_items() -> None:
    junk = [{"cidr": "not-a-cidr", "product": ["bitbucket"], "direction": ["egress"]}, 7, None]
    snap = parse_feed({"items": [*FEED["items"], *junk]})
    assert snap.skipped == 3
    assert len(snap.ranges) == len(parse_feed(FEED).ranges)


def test_parse_feed_tolerates_string_fields() -> None:
    doc = {"items": [{"cidr": "198.51.100.0/24", "product": "bitbucket", "direction": "egress"}]}
    assert ip("198.51.100.9") in parse_feed(doc).ranges


@pytest.mark.parametrize(
    "doc",
    [
        [],
        {"items": "x"},
        {"nope": []},
        {"items": []},
        {"items": [{"cidr": "198.51.100.0/24", "product": ["jira"], "direction": ["egress"]}]},
        {"items": [{"cidr": "junk", "product": ["bitbucket"], "direction": ["egress"]}, 5, None]},
    ],
)
def test_parse_feed_unusable(doc: object) -> None:
    with pytest.raises(FeedError):
        parse_feed(doc)


def test_file_source_loads_at_construction() -> None:
    feed = AtlassianIPRanges(FIXTURE)
    ranges = feed.ranges()
    assert ranges is not None
    assert ip("34.199.54.113") in ranges
    assert feed.fetch_count == 1
    assert feed.last_error is None
    assert "ranges=10" in repr(feed)


def test_missing_file_fails_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as e:
        AtlassianIPRanges(tmp_path / "missing.json")
    assert e.value.key == "ip_ranges_feed"


def test_filter_matching_nothing_fails_at_start_up() -> None:
    with pytest.raises(ConfigurationError, match="no usable range"):
        AtlassianIPRanges(FIXTURE, product="bitbukcet")


def test_lazy_missing_file_gives_no_ranges_then_loads(tmp_path: Path) -> None:
    path = tmp_path / "feed.json"
    clock = FakeClock()
    feed = AtlassianIPRanges(path, lazy=True, failure_backoff=30, clock=clock)
    assert feed.fetch_count == 0
    assert feed.ranges() is None
    assert feed.last_error is not None
    assert feed.ranges() is None
    assert feed.fetch_count == 1  # backoff: no second attempt yet
    path.write_text(FIXTURE.read_text())
    clock.advance(31)
    ranges = feed.ranges()
    assert ranges is not None and ip("34.199.54.113") in ranges
    assert feed.fetch_count == 2


def test_file_too_large(tmp_path: Path) -> None:
    path = tmp_path / "feed.json"
    path.write_text(json.dumps(FEED) + " " * 5000)
    with pytest.raises(ConfigurationError, match="larger than"):
        AtlassianIPRanges(path, max_body_bytes=2048)


@pytest.mark.parametrize(
    "source", ["http://ip-ranges.atlassian.com/", "ftp://127.0.0.1/feed.json", "file:///etc/passwd", ""]
)
def test_source_must_be_https_or_loopback_http_or_a_path(source: str) -> None:
    with pytest.raises(ConfigurationError) as e:
        AtlassianIPRanges(source, lazy=True)
    assert e.value.key == "ip_ranges_feed"


@pytest.mark.parametrize(
    ("option", "value"),
    [("refresh_interval", 0), ("timeout", -1), ("failure_backoff", float("nan")), ("max_body_bytes", 10)],
)
def test_bad_feed_options(option: str, value: object) -> None:
    with pytest.raises(ConfigurationError) as e:
        AtlassianIPRanges(FIXTURE, **{option: value})
    assert e.value.key == option


def test_bad_filter() -> None:
    with pytest.raises(ConfigurationError) as e:
        AtlassianIPRanges(FIXTURE, direction=[])
    assert e.value.key == "direction"


def test_load_cidrs_and_packaged_sample() -> None:
    cidrs = load_cidrs(str(FIXTURE))
    assert cidrs[0] == "3.216.235.48/28"  # IPv4 sorted first
    assert "2406:da1c:1e0:a200::/56" in cidrs
    # The demo reads the packaged sample through the real loader.
    assert load_cidrs(SAMPLE_FEED) == cidrs


# -- real loopback HTTP -----------------------------------------------------------------


FAILURES: dict[str, Answer] = {
    "500": (500, {"Content-Type": "application/json"}, b"oops"),
    "garbage": (200, {"Content-Type": "application/json"}, b"<html>"),
    "redirect": (302, {"Content-Type": "application/json", "Location": "https://evil.example/"}, b""),
    "huge": (200, {"Content-Type": "application/json"}, b'{"items": [' + b" " * (3 * 1024 * 1024) + b"]}"),
}


def misbehave(server: JSONServer, mode: str) -> None:
    """Make the feed server answer as ``mode``: a failure above, ``"slow"`` (held by a gate) or ``"ok"``."""
    answer = FAILURES.get(mode)
    server.respond = None if answer is None else (lambda request: answer)
    server.gate = threading.Event() if mode == "slow" else None


@pytest.fixture
def server() -> Iterator[JSONServer]:
    """The feed, served on 127.0.0.1 by the suite's loopback harness."""
    with JSONServer(FEED) as s:
        yield s


def test_http_load_and_background_refresh(server: JSONServer) -> None:
    clock = FakeClock()
    feed = AtlassianIPRanges(server.url + "/", refresh_interval=600, clock=clock)
    assert server.hits == 1
    ranges = feed.ranges()
    assert ranges is not None and ip("34.199.54.113") in ranges

    # Within the interval nothing is fetched.
    clock.advance(599)
    feed.ranges()
    assert server.hits == 1

    # Atlassian adds a range; after the interval the next use refreshes in the background.
    server.document = {
        "items": [
            *FEED["items"],
            {"cidr": "198.51.100.0/24", "product": ["bitbucket"], "direction": ["egress"]},
        ]
    }
    clock.advance(2)
    old = feed.ranges()
    assert old is ranges  # the request was answered with what was there
    assert feed.wait(5)
    assert server.hits == 2
    new = feed.ranges()
    assert new is not None and ip("198.51.100.7") in new


@pytest.mark.parametrize("mode", ["500", "garbage", "redirect", "huge", "empty", "no-match"])
def test_http_refresh_failure_keeps_last_good(server: JSONServer, mode: str) -> None:
    clock = FakeClock()
    feed = AtlassianIPRanges(server.url + "/", refresh_interval=60, failure_backoff=30, clock=clock)
    good = feed.ranges()
    assert good is not None
    if mode == "empty":
        server.document = {"items": []}
    elif mode == "no-match":
        server.document = {"items": [i for i in FEED["items"] if "bitbucket" not in i["product"]]}
    else:
        misbehave(server, mode)
    clock.advance(61)
    feed.ranges()
    feed.wait(5)
    assert server.hits == 2
    assert feed.last_error is not None
    assert feed.ranges() is good
    assert ip("34.199.54.113") in good
    # Failure backoff: the next uses do not hammer the server...
    clock.advance(10)
    feed.ranges()
    feed.wait(5)
    assert server.hits == 2
    # ...and after it, a healthy server is picked up again.
    misbehave(server, "ok")
    server.document = FEED
    clock.advance(25)
    feed.ranges()
    assert feed.wait(5)
    assert server.hits == 3
    assert feed.last_error is None


def test_http_first_load_failure_is_a_configuration_error(server: JSONServer) -> None:
    misbehave(server, "500")
    with pytest.raises(ConfigurationError, match="HTTP 500") as e:
        AtlassianIPRanges(server.url + "/")
    assert e.value.key == "ip_ranges_feed"


def test_http_redirect_not_followed(server: JSONServer) -> None:
    misbehave(server, "redirect")
    with pytest.raises(ConfigurationError, match="HTTP 302"):
        AtlassianIPRanges(server.url + "/")
    assert server.hits == 1


def test_http_body_cap(server: JSONServer) -> None:
    misbehave(server, "huge")
    with pytest.raises(ConfigurationError, match="exceeds"):
        AtlassianIPRanges(server.url + "/", max_body_bytes=64 * 1024)


def test_http_refresh_now(server: JSONServer) -> None:
    feed = AtlassianIPRanges(server.url + "/")
    assert feed.refresh() is True
    assert server.hits == 2
    misbehave(server, "500")
    assert feed.refresh() is False
    assert feed.ranges() is not None


def test_lazy_first_use_waits_only_briefly(server: JSONServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import bbverify.ipranges as mod

    monkeypatch.setattr(mod, "FIRST_USE_WAIT", 0.05)
    misbehave(server, "slow")
    feed = AtlassianIPRanges(server.url + "/", lazy=True)
    assert server.hits == 0  # nothing fetched at construction
    assert feed.ranges() is None  # the request did not wait for the slow server
    assert feed.fetch_count == 1
    assert server.gate is not None
    server.gate.set()
    assert feed.wait(5)
    ranges = feed.ranges()
    assert ranges is not None and ip("34.199.54.113") in ranges
    assert feed.fetch_count == 1  # the first request's load is the one that finished
