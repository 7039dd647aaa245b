"""The gateway's route table: normalisation tricks never select a laxer route."""

from __future__ import annotations

import pytest

from bbverify.errors import ConfigurationError, RouteDenied
from bbverify.routes import RouteTable, normalize_host, normalize_method, normalize_path


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/", "/"),
        ("/a/b?x=1", "/a/b"),
        ("/a/b?x=/../..;y", "/a/b"),  # the query is not the path
        ("/a/b/", "/a/b/"),
        ("/a/b...", "/a/b..."),  # not a dot segment
        ("/a/.well-known/x", "/a/.well-known/x"),
        ("/a%20b", "/a%20b"),
        ("/a%3ab", "/a%3Ab"),  # other escapes are upper-cased, not decoded
        ("/caf%c3%a9", "/caf%C3%A9"),
    ],
)
def test_normalize_path(target: str, expected: str) -> None:
    assert normalize_path(target) == expected


@pytest.mark.parametrize(
    "target",
    [
        "",
        "admin",
        "http://evil/admin",
        "*",
        "/public/..%2Fadmin",  # encoded slash
        "/public/..%2fadmin",
        "/public\\..\\admin",
        "/public/%5C../admin",
        "/a%00b",
        "/a%0ab",
        "/a%zz",
        "/a%4",
        "/..",
        "/a/../../b",
        "/public//../admin",
        # F08: dot segments in any spelling are refused, never resolved: proxies
        # forward the raw path and many upstreams do not resolve them.
        "/admin/../public/x",
        "/public/../admin",
        "/a/./b",
        "/a/b/.",
        "/a/b/..",
        "/.",
        "/admin/%2e%2e/public/x",
        "/admin/%2E%2E/public/x",
        "/admin/.%2e/public/x",
        "/admin/%2e./public/x",
        "/admin/%2e/x",
        "/admin/..;/public/x",
        "/admin/..;x=1/public/x",
        # F02: ';' path parameters in any segment, raw or encoded.
        "/public/..;/admin",
        "/admin;jsessionid=1",
        "/a;b/c",
        "/a/b;",
        "/a%3bb",
        "/a%3Bb",
        # Escaped unreserved characters: decoded by some upstreams, not by others.
        "/%61dmin",
        "/a%7eb",
        "/a%2Db",
        # Empty segments ('//'): merged by nginx, kept by Starlette and Express.
        "//admin",
        "/a//b",
        "/a/b//",
        "/a b",
        "/a#frag",
        "/caf\u00e9",
        "/" + "a" * 9000,
    ],
)
def test_normalize_path_refuses(target: str) -> None:
    with pytest.raises(RouteDenied) as info:
        normalize_path(target)
    assert info.value.code == "unnormalizable_request"
    assert info.value.status_code == 403


def test_case_insensitive_paths() -> None:
    assert normalize_path("/ADMIN/X", case_insensitive=True) == "/admin/x"
    assert normalize_path("/ADMIN/X") == "/ADMIN/X"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Example.COM", ("example.com", None)),
        ("example.com.", ("example.com", None)),
        ("example.com:8443", ("example.com", 8443)),
        ("example.com.:80", ("example.com", 80)),
        ("[::1]:80", ("[::1]", 80)),
        ("10.0.0.1", ("10.0.0.1", None)),
        (None, (None, None)),
        ("", (None, None)),
    ],
)
def test_normalize_host(value: str | None, expected: tuple[str | None, int | None]) -> None:
    assert normalize_host(value) == expected


@pytest.mark.parametrize(
    "value", ["exa mple.com", "a..b", "example.com:x", "example.com:99999", "[::1", "é.com"]
)
def test_normalize_host_refuses(value: str) -> None:
    with pytest.raises(RouteDenied):
        normalize_host(value)


def test_normalize_method() -> None:
    assert normalize_method("post") == "POST"
    for bad in (None, "", "GE T", "GET\r\n", "X" * 40):
        with pytest.raises(RouteDenied):
            normalize_method(bad)


TABLE = [
    {"path_prefix": "/public/", "public": True},
    {"path_prefix": "/deploy", "methods": ["POST", "PUT"], "policy": "deploy"},
    {"path_prefix": "/deploy", "methods": ["GET"], "policy": "read"},
    {"path": "/admin", "policy": "admin"},
    {"path_glob": "/repos/*/artifacts/**", "policy": "artifacts"},
    {"host": "ops.example.com", "path_prefix": "/", "policy": "ops"},
    {"host": "*.example.com", "path_prefix": "/", "policy": "wild"},
]


def table(**options: object) -> RouteTable:
    return RouteTable(TABLE, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("method", "host", "target", "route", "policy"),
    [
        ("GET", "app.test", "/public/x", "routes[0]", None),
        ("POST", "app.test", "/deploy", "routes[1]", "deploy"),
        ("post", "app.test", "/deploy/app?x=1", "routes[1]", "deploy"),
        ("GET", "app.test", "/deploy/app", "routes[2]", "read"),
        ("HEAD", "app.test", "/deploy/app", "routes[2]", "read"),  # HEAD is routed like GET
        ("GET", "app.test", "/admin", "routes[3]", "admin"),
        ("GET", "app.test", "/repos/r1/artifacts/a/b.tgz", "routes[4]", "artifacts"),
        ("GET", "OPS.example.com.", "/anything", "routes[5]", "ops"),
        ("GET", "a.b.example.com:443", "/anything", "routes[6]", "wild"),
        # a more specific path wins over a host-only route? No: host is ranked first.
        ("GET", "ops.example.com", "/admin", "routes[5]", "ops"),
    ],
)
def test_match(method: str, host: str | None, target: str, route: str, policy: str | None) -> None:
    found = table().match(method, host, target)
    assert found.name == route
    assert found.policy == policy


@pytest.mark.parametrize(
    "target",
    [
        # F08/F02: refused, not resolved (either way round): the proxy forwards
        # them raw and the upstream may read them differently.
        "/public/../admin",
        "/admin/../public/x",
        "/public/%2e%2e/admin",
        "/admin/%2E%2E/public/x",
        "//public/../admin",
        "/public/..;/admin",
        "/admin;jsessionid=1",
        "/admin/.;/x",
        "/public//x",
    ],
)
def test_path_tricks_are_refused(target: str) -> None:
    with pytest.raises(RouteDenied) as info:
        table().match("GET", "app.test", target)
    assert info.value.code == "unnormalizable_request"


@pytest.mark.parametrize(
    ("target", "route"),
    [
        ("/admin/", "routes[3]"),  # Express and Starlette serve "/admin/" as "/admin"
        ("/deploy/", "routes[1]"),
        ("/public", "routes[0]"),  # "/public/" prefix: "/public" is the same directory
        ("/repos/r1/artifacts/", "routes[4]"),
    ],
)
def test_trailing_slash_never_changes_the_route(target: str, route: str) -> None:
    method = "POST" if "deploy" in target else "GET"
    assert table().match(method, "app.test", target).name == route


def test_exact_route_with_trailing_slash_matches_without_it() -> None:
    routes = RouteTable([{"path": "/admin/", "policy": "admin"}, {"path_prefix": "/", "policy": "build"}])
    assert routes.match("GET", None, "/admin").policy == "admin"
    assert routes.match("GET", None, "/admin/").policy == "admin"


@pytest.mark.parametrize("target", ["/public/..%2Fadmin", "/public/%2e%2e%2fadmin", "/public\\..\\admin"])
def test_encoded_slash_is_refused(target: str) -> None:
    with pytest.raises(RouteDenied) as info:
        table().match("GET", "app.test", target)
    assert info.value.code == "unnormalizable_request"


def test_case_trick_is_unmatched_unless_configured() -> None:
    with pytest.raises(RouteDenied) as info:
        table().match("GET", "app.test", "/ADMIN")
    assert info.value.code == "unmatched_route"
    assert table(case_insensitive_paths=True).match("GET", "app.test", "/ADMIN").policy == "admin"
    # /Public/ does not select the public route in either mode unless the case folds to it.
    assert table(case_insensitive_paths=True).match("GET", "app.test", "/PUBLIC/x").public


def test_prefix_respects_segments() -> None:
    with pytest.raises(RouteDenied) as info:
        table().match("POST", "app.test", "/deployx")
    assert info.value.code == "unmatched_route"


def test_unmatched_default_policy() -> None:
    found = table(unmatched="default_policy").match("GET", "app.test", "/elsewhere")
    assert found.route is None and found.policy is None and not found.public


def test_unmatched_method_is_refused() -> None:
    with pytest.raises(RouteDenied) as info:
        table().match("DELETE", "app.test", "/deploy/x")
    assert info.value.code == "unmatched_route"


def test_ambiguous_routes_are_refused() -> None:
    routes = RouteTable([{"path_glob": "/a/*/c", "policy": "x"}, {"path_glob": "/a/b/*", "policy": "y"}])
    with pytest.raises(RouteDenied) as info:
        routes.match("GET", None, "/a/b/c")
    assert info.value.code == "ambiguous_route"
    # Equally specific but agreeing: no ambiguity.
    same = RouteTable([{"path_glob": "/a/*/c", "policy": "x"}, {"path_glob": "/a/b/*", "policy": "x"}])
    assert same.match("GET", None, "/a/b/c").policy == "x"


def test_glob_star_stays_in_one_segment() -> None:
    routes = RouteTable([{"path_glob": "/a/*/c", "policy": "x"}])
    with pytest.raises(RouteDenied):
        routes.match("GET", None, "/a/b/d/c")


def test_host_route_needs_a_host() -> None:
    routes = RouteTable([{"host": "a.example.com", "policy": "x"}])
    with pytest.raises(RouteDenied):
        routes.match("GET", None, "/")
    with pytest.raises(RouteDenied):
        routes.match("GET", "b.example.com", "/")
    # The wildcard needs at least one label in front.
    wild = RouteTable([{"host": "*.example.com", "policy": "x"}])
    with pytest.raises(RouteDenied):
        wild.match("GET", "example.com", "/")
    with pytest.raises(RouteDenied):
        wild.match("GET", "evilexample.com", "/")


def test_route_port() -> None:
    routes = RouteTable([{"host": "a.example.com:8443", "policy": "x"}])
    assert routes.match("GET", "a.example.com:8443", "/").policy == "x"
    with pytest.raises(RouteDenied):
        routes.match("GET", "a.example.com", "/")


@pytest.mark.parametrize(
    ("routes", "key"),
    [
        ([{"paht": "/x"}], "serve.routes[0].paht"),
        ([{"path": "x"}], "serve.routes[0].path"),
        ([{"path": "/a//b"}], "serve.routes[0].path"),
        ([{"path_prefix": "/a/../b"}], "serve.routes[0].path_prefix"),
        ([{"path_prefix": "/a%2fb"}], "serve.routes[0].path_prefix"),
        ([{"path": "/a", "path_prefix": "/a"}], "serve.routes[0].path_prefix"),
        ([{"methods": "GET"}], "serve.routes[0].methods"),
        ([{"methods": ["G ET"]}], "serve.routes[0].methods[0]"),
        ([{"host": "exa mple"}], "serve.routes[0].host"),
        ([{"policy": ""}], "serve.routes[0].policy"),
        ([{"public": "yes"}], "serve.routes[0].public"),
        ([{"public": True, "policy": "x"}], "serve.routes[0].policy"),
        ([{"path": "/a", "policy": "x"}, {"path": "/a", "policy": "y"}], "serve.routes[1]"),
        ([{"path": "/a", "methods": ["GET"]}, {"path": "/a", "methods": ["get", "PUT"]}], "serve.routes[1]"),
        ("nope", "serve.routes"),
    ],
)
def test_configuration_errors(routes: object, key: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        RouteTable(routes)  # type: ignore[arg-type]
    assert info.value.key == key


def test_distinct_methods_on_one_path_are_fine() -> None:
    RouteTable([{"path": "/a", "methods": ["GET"]}, {"path": "/a", "methods": ["PUT"]}])


def test_unknown_unmatched_choice() -> None:
    with pytest.raises(ConfigurationError) as info:
        RouteTable([], unmatched="allow")
    assert info.value.key == "serve.unmatched"


@pytest.mark.parametrize("host", [None, "", "   "])
def test_missing_host_is_refused_when_routes_depend_on_it(host: str | None) -> None:
    # F10: nginx with HTTP/1.0 and no Host, or Caddy with an empty Host, still
    # reaches the same upstream; skipping the host's routes would be laxer.
    with pytest.raises(RouteDenied) as info:
        table().match("GET", host, "/public/x")
    assert info.value.code == "unnormalizable_request"
    # Without host routes, no host is fine.
    assert RouteTable([{"path_prefix": "/", "policy": "x"}]).match("GET", None, "/a").policy == "x"


@pytest.mark.parametrize(
    "host",
    ["[::1]:\u00b2", "a.com:\u00b2", "[::1]:\u0661", "a.com:" + "9" * 5000, "a" * 300, "[::1]:" + "1" * 5000],
)
def test_malformed_host_is_refused_never_an_exception(host: str) -> None:
    # F06: non-ASCII digits, huge ports: 403 unnormalizable_request, never ValueError.
    with pytest.raises(RouteDenied) as info:
        table().match("GET", host, "/public/x")
    assert info.value.code == "unnormalizable_request"


def test_memo_holds_only_bounded_keys() -> None:
    # F01: long (and refused) requests are answered without being memoised.
    routes = table()
    for i in range(50):
        target = f"/public/{i}/" + "a" * 900_000
        with pytest.raises(RouteDenied):
            routes.match("GET", "app.test", target)
        routes.match("GET", "app.test", f"/public/{i}/" + "b" * 100)
    assert routes._memo  # short requests are memoised
    assert all(len(key[2]) <= 256 for key in routes._memo)
    assert sum(len(key[2]) + len(key[1] or "") for key in routes._memo) < 100_000
