"""The gateway's route table: which named policy guards an original request.

A reverse proxy asks ``bbverify serve`` about a request it is about to
forward; the gateway picks a route from the ORIGINAL request's method, host
and path. Those arrive as text the client chose, and the proxy forwards the
RAW path to the upstream, which may read it differently from any
normalisation the gateway could do (Starlette mounts, Express and werkzeug
keep ``..`` segments; Tomcat, Jetty and Spring drop ``;params``; nginx
merges ``//``). So nothing is resolved: a path whose meaning depends on such
a normalisation is refused, never matched, and routing happens on a path
every upstream reads the same way (:func:`normalize_path`,
:func:`normalize_host`, :func:`normalize_method`).

Refused with ``unnormalizable_request`` (403):

* dot segments in any spelling (``.``, ``..``, ``%2e``, ``.%2E``; with
  ``;params`` too, since ``;`` is refused), whether they climb or not;
* ``;`` anywhere in the path, raw or ``%3B`` (servlet path parameters);
* empty segments (``//``);
* escapes of unreserved characters (``%61``, ``%2e``, ``%7E``; RFC 3986
  section 2.3 says producers should not make them, and upstreams disagree on
  decoding them);
* an escaped ``/`` or ``\\``, a literal ``\\``, controls, spaces, ``#``,
  non-ASCII, bad escapes, targets not starting with ``/``, over 8192
  characters;
* hosts that are not a DNS name or IP literal with an ASCII port, over 261
  characters; no host at all while some route names a host.

What remains is canonicalised only harmlessly: the query (after ``?``) is
dropped, other escapes are upper-cased (``%c3`` is ``%C3``), and with
``case_insensitive_paths`` the path is lower-cased. A trailing ``/`` never
changes the route: ``/admin/`` takes the route of ``/admin`` and the other
way round (Express and Starlette serve one as the other).

The host is lower-cased, a trailing dot and a port are removed (a route may
name a port). The method must be an RFC 9110 token; it is upper-cased, and a
``HEAD`` is routed like a ``GET`` (servers answer one with the other's
handler).

Choosing among routes: every route whose host, method and path match is a
candidate; the most specific wins (exact host over ``*.`` wildcard over any
host, then exact path over prefix over glob, then the longer literal text,
then a route naming methods over one naming none). Two candidates equally
specific but disagreeing (different policy or openness) make the request
ambiguous, and it is refused. No candidate: refused, unless ``unmatched``
says otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError, ErrorCode, RouteDenied
from .tables import check_keys

__all__ = [
    "Route",
    "RouteMatch",
    "RouteTable",
    "normalize_host",
    "normalize_method",
    "normalize_path",
]

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
# RFC 3986 pchar plus "/" (gen-delims and sub-delims as they may appear in a path).
_PATH_CHARS = _UNRESERVED | frozenset("!$&'()*+,;=:@/%")
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}")
_LABEL_RE = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
_MAX_PATH = 8192
_METHODS_LIKE_GET = {"HEAD": "GET"}
_MAX_HOST = 261  # a 253-character DNS name and ":65535", or an IPv6 literal with its port
_MAX_METHOD = 32
_MEMO_MAX = 4096
# Only short requests are memoised, so the memo holds at most about
# _MEMO_MAX * (_MEMO_KEY_MAX + _MAX_HOST + _MAX_METHOD) characters of keys (~2.4 MB).
_MEMO_KEY_MAX = 256


def _refuse(message: str) -> RouteDenied:
    return RouteDenied(message, code=ErrorCode.UNNORMALIZABLE_REQUEST)


def normalize_path(target: str, *, case_insensitive: bool = False) -> str:
    """The path of a request target in normal form (see the module docs).

    ``target`` is an origin-form request target (``/a/b?x=1``) as the client
    sent it (``str``, at most 8192 characters). Returns the path without its
    query. Nothing is resolved: a path whose meaning depends on a
    normalisation the upstream may do differently (dot segments, ``;``
    parameters, ``//``, escapes of unreserved characters) is refused, since
    proxies forward the RAW path. Raises :class:`~bbverify.errors.RouteDenied`
    (code ``unnormalizable_request``) when the target is refused.
    """
    if not isinstance(target, str) or not target:
        raise _refuse("the original request has no path")
    if len(target) > _MAX_PATH:
        raise _refuse("the original path is too long")
    path = target.split("?", 1)[0]
    if not path.startswith("/"):
        # Absolute-form (http://host/path) or asterisk-form: the proxy's own routing
        # decides those, and guessing its choice is how a route is bypassed.
        raise _refuse("the original request target is not a path starting with '/'")
    if not all(c in _PATH_CHARS for c in path):
        raise _refuse("the original path has characters a path cannot have ('\\', '#', controls, spaces)")
    if ";" in path:
        # Servlet containers (Tomcat, Jetty, Spring) drop ";params" from every
        # segment ("/admin;x=1" is "/admin", "/public/..;/admin" is "/admin");
        # most other servers keep them. No single route is right for both.
        raise _refuse("the original path has ';' path parameters; servers read them differently")
    out: list[str] = []
    i, n = 0, len(path)
    while i < n:
        c = path[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        pair = path[i + 1 : i + 3]
        if len(pair) != 2 or not all(h in _HEX for h in pair):
            raise _refuse("the original path has a malformed percent-escape")
        value = int(pair, 16)
        char = chr(value)
        if char in _UNRESERVED or char == ";":
            # "%2e%2e" is ".." for nginx, Go and servlets but a file name for
            # Express, Starlette and the proxies, which forward it raw; "%61dmin"
            # is "/admin" to some and not to others. RFC 3986 section 2.3: URI
            # producers should not encode these, so no genuine client needs it.
            raise _refuse("the original path has an escaped unreserved character or ';' (such as %2e)")
        if char in "/\\" or value < 0x20 or value == 0x7F:
            raise _refuse("the original path has an encoded '/', '\\' or control character")
        out.append("%" + pair.upper())
        i += 3
    decoded = "".join(out)
    segments = decoded.split("/")[1:]
    if any(segment in (".", "..") for segment in segments):
        # Proxies forward the raw path and many upstreams (Starlette mounts,
        # Express, werkzeug <path:>) do not resolve dot segments, so
        # "/admin/../public/x" is "/public/x" to RFC 3986 and "/admin/..." to them.
        raise _refuse("the original path has '.' or '..' segments; servers resolve them differently")
    if "//" in decoded:
        # nginx merges slashes, Go's ServeMux redirects, Starlette and Express keep
        # the empty segment: not one reading every upstream shares.
        raise _refuse("the original path has an empty segment ('//'); servers read it differently")
    return decoded.lower() if case_insensitive else decoded


def normalize_host(value: str | None) -> tuple[str | None, int | None]:
    """``(hostname, port)`` of a ``Host``-style value, lower-cased, without a trailing dot.

    ``None`` or ``""`` give ``(None, None)`` (the request named no host; only
    routes without a host can match). Raises
    :class:`~bbverify.errors.RouteDenied` for anything that is not a DNS name
    or an IP literal with an optional port.
    """
    if value is None:
        return None, None
    if len(value) > _MAX_HOST:
        # Before int(): Python refuses to convert more than 4300 digits (ValueError).
        raise _refuse("the original host is too long")
    text = value.strip().lower()
    if not text:
        return None, None
    port: int | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise _refuse("the original host is malformed")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest:
            if not rest.startswith(":") or not rest[1:].isascii() or not rest[1:].isdigit():
                raise _refuse("the original host has a malformed port")
            port = int(rest[1:])
        if not re.fullmatch(r"\[[0-9a-f:.]+\]", host):
            raise _refuse("the original host is malformed")
    else:
        host, sep, port_text = text.partition(":")
        if sep:
            if not port_text.isdigit() or not port_text.isascii():
                raise _refuse("the original host has a malformed port")
            port = int(port_text)
        host = host[:-1] if host.endswith(".") else host
        labels = host.split(".")
        if not host or len(host) > 253 or not all(_LABEL_RE.fullmatch(label) for label in labels):
            raise _refuse("the original host is not a DNS name or IP address")
    if port is not None and not 0 < port < 65536:
        raise _refuse("the original host has a port out of range")
    return host, port


def normalize_method(value: str | None) -> str:
    """The method as an upper-case RFC 9110 token; raises ``RouteDenied`` otherwise."""
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise _refuse("the original method is missing or not a token")
    return value.upper()


@dataclass(frozen=True)
class Route:
    """One ``[[bbverify.serve.routes]]`` entry.

    ``host`` is ``None`` (any host), an exact name (``"artifacts.example.com"``,
    optionally with ``":port"``) or a wildcard (``"*.example.com"``: one or more
    labels in front). Exactly one of ``path`` (exact), ``path_prefix`` (that
    path and everything below it, on segment boundaries) and ``path_glob``
    (``*`` within one segment, ``**`` across segments) may be set; none means
    every path. ``methods`` empty means every method. ``policy`` names a
    named policy (``None``: the default policy); ``public`` admits without a
    token.
    """

    index: int
    host: str | None = None
    port: int | None = None
    path: str | None = None
    path_prefix: str | None = None
    path_glob: str | None = None
    methods: frozenset[str] = frozenset()
    policy: str | None = None
    public: bool = False

    @property
    def name(self) -> str:
        """``routes[i]``, as operators spelled it in the configuration."""
        return f"routes[{self.index}]"

    def outcome(self) -> tuple[str | None, bool]:
        return self.policy, self.public

    def specificity(self) -> tuple[int, int, int, int]:
        if self.host is None:
            host_rank = 0
        elif self.host.startswith("*."):
            host_rank = 1
        else:
            host_rank = 2
        if self.path is not None:
            path_rank, text = 3, self.path
        elif self.path_prefix is not None:
            path_rank, text = 2, self.path_prefix
        elif self.path_glob is not None:
            path_rank, text = 1, self.path_glob.replace("*", "")
        else:
            path_rank, text = 0, ""
        return host_rank, path_rank, len(text), 1 if self.methods else 0

    def _host_matches(self, host: str | None, port: int | None) -> bool:
        if self.host is None:
            return True
        if host is None:
            return False
        if self.port is not None and port != self.port:
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and len(host) > len(self.host) - 1
        return host == self.host

    def matches(self, method: str, host: str | None, port: int | None, path: str, regex: Any) -> bool:
        if self.methods and method not in self.methods and _METHODS_LIKE_GET.get(method) not in self.methods:
            return False
        if not self._host_matches(host, port):
            return False
        if self.path is not None:
            return path == self.path
        if self.path_prefix is not None:
            prefix = self.path_prefix
            if prefix.endswith("/"):
                return path.startswith(prefix)
            return path == prefix or path.startswith(prefix + "/")
        if regex is not None:
            return regex.fullmatch(path) is not None
        return True


@dataclass(frozen=True)
class RouteMatch:
    """The route chosen for a request; ``route`` is ``None`` when ``unmatched`` decided."""

    route: Route | None
    policy: str | None
    public: bool
    method: str = "GET"  #: the normalised method
    path: str = "/"  #: the normalised path (what rules with ``paths`` see)

    @property
    def name(self) -> str:
        return self.route.name if self.route is not None else "unmatched"


def _glob_regex(glob: str) -> re.Pattern[str]:
    parts: list[str] = []
    i = 0
    while i < len(glob):
        if glob.startswith("**", i):
            parts.append(".*")
            i += 2
        elif glob[i] == "*":
            parts.append("[^/]*")
            i += 1
        else:
            parts.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(parts))


_ROUTE_KEYS = frozenset({"host", "path", "path_prefix", "path_glob", "methods", "policy", "public"})
UNMATCHED_CHOICES = ("deny", "default_policy")


class RouteTable:
    """The routes of ``[bbverify.serve]``, checked once, matched per request.

    Args:
        routes: the ``routes`` array (a sequence of mappings, keys as in
            :class:`Route`).
        unmatched: ``"deny"`` (default: refuse, code ``unmatched_route``) or
            ``"default_policy"`` (verify the token against the default policy).
        case_insensitive_paths: lower-case paths (and path patterns) before
            matching.
        key: the configuration path for error messages (``serve``).

    Raises :class:`~bbverify.errors.ConfigurationError` naming the key
    (``serve.routes[2].path_prefix``) for any mistake: unknown keys, wrong
    types, patterns that are not in normal form, two routes with the same
    host, path and overlapping methods.
    """

    def __init__(
        self,
        routes: Sequence[Mapping[str, Any]],
        *,
        unmatched: str = "deny",
        case_insensitive_paths: bool = False,
        key: str = "serve",
    ) -> None:
        if unmatched not in UNMATCHED_CHOICES:
            raise ConfigurationError(f"must be one of {', '.join(UNMATCHED_CHOICES)}", key=f"{key}.unmatched")
        self.unmatched = unmatched
        self.case_insensitive = bool(case_insensitive_paths)
        if isinstance(routes, Mapping | str) or not isinstance(routes, Sequence):
            raise ConfigurationError(
                "must be an array of tables ([[bbverify.serve.routes]])", key=f"{key}.routes"
            )
        built = [self._build(i, entry, f"{key}.routes[{i}]") for i, entry in enumerate(routes)]
        self.routes: tuple[Route, ...] = tuple(built)
        self._memo: dict[tuple[str | None, str | None, str], RouteMatch | tuple[str, str]] = {}
        self._host_routes = any(r.host is not None for r in built)
        self._regex = {r.index: _glob_regex(r.path_glob) for r in built if r.path_glob is not None}
        seen: dict[tuple[Any, ...], Route] = {}
        for route in built:
            ident = (route.host, route.port, route.path, route.path_prefix, route.path_glob)
            other = seen.get(ident)
            if other is not None and (
                not other.methods or not route.methods or other.methods & route.methods
            ):
                raise ConfigurationError(
                    f"matches the same requests as {other.name}; merge them or make them distinct",
                    key=f"{key}.{route.name}",
                )
            seen.setdefault(ident, route)

    def policies(self) -> set[str]:
        """The named policies the routes use (to check they exist at start-up)."""
        return {r.policy for r in self.routes if r.policy is not None}

    def _pattern(self, raw: object, name: str, key: str) -> str:
        if not isinstance(raw, str) or not raw.startswith("/"):
            raise ConfigurationError("must be a path starting with '/'", key=f"{key}.{name}")
        probe = raw.replace("**", "x").replace("*", "x") if name == "path_glob" else raw
        try:
            normal = normalize_path(probe, case_insensitive=self.case_insensitive)
        except RouteDenied as exc:
            raise ConfigurationError(exc.message.replace("original ", ""), key=f"{key}.{name}") from None
        if "?" in raw or normal != (probe.lower() if self.case_insensitive else probe):
            raise ConfigurationError(
                f"{raw!r} is not in normal form (requests are matched as {normal!r}); write it that way",
                key=f"{key}.{name}",
            )
        return raw.lower() if self.case_insensitive else raw

    def _build(self, index: int, entry: object, key: str) -> Route:
        if not isinstance(entry, Mapping):
            raise ConfigurationError("must be a table", key=key)
        check_keys(entry, _ROUTE_KEYS, lambda name: f"{key}.{name}", what="route setting")
        host: str | None = None
        port: int | None = None
        if "host" in entry:
            raw = entry["host"]
            if not isinstance(raw, str) or not raw:
                raise ConfigurationError("must be a host name", key=f"{key}.host")
            wildcard = raw.startswith("*.")
            try:
                host, port = normalize_host(raw[2:] if wildcard else raw)
            except RouteDenied:
                raise ConfigurationError(f"{raw!r} is not a host name", key=f"{key}.host") from None
            assert host is not None
            if wildcard:
                host = "*." + host
        paths = [n for n in ("path", "path_prefix", "path_glob") if n in entry]
        if len(paths) > 1:
            raise ConfigurationError(f"give only one of {', '.join(paths)}", key=f"{key}.{paths[1]}")
        pattern = {n: self._pattern(entry[n], n, key) for n in paths}
        methods: set[str] = set()
        if "methods" in entry:
            raw_methods = entry["methods"]
            if isinstance(raw_methods, str) or not isinstance(raw_methods, Sequence) or not raw_methods:
                raise ConfigurationError("must be a non-empty array of methods", key=f"{key}.methods")
            for i, m in enumerate(raw_methods):
                if not isinstance(m, str) or not _TOKEN_RE.fullmatch(m):
                    raise ConfigurationError(f"{m!r} is not an HTTP method", key=f"{key}.methods[{i}]")
                methods.add(m.upper())
        policy = entry.get("policy")
        if policy is not None and (not isinstance(policy, str) or not policy):
            raise ConfigurationError("must be the name of a policy", key=f"{key}.policy")
        public = entry.get("public", False)
        if not isinstance(public, bool):
            raise ConfigurationError("must be true or false", key=f"{key}.public")
        if public and policy is not None:
            raise ConfigurationError("a public route takes no token, so no policy", key=f"{key}.policy")
        return Route(
            index=index,
            host=host,
            port=port,
            path=pattern.get("path"),
            path_prefix=pattern.get("path_prefix"),
            path_glob=pattern.get("path_glob"),
            methods=frozenset(methods),
            policy=policy,
            public=public,
        )

    def match(self, method: str | None, host: str | None, target: str | None) -> RouteMatch:
        """The route for an original request (raw values as the proxy reported them).

        Raises :class:`~bbverify.errors.RouteDenied` with code
        ``unnormalizable_request``, ``unmatched_route`` or ``ambiguous_route``.
        """
        # Proxies ask about the same few method/host/path triples again and
        # again; the answer depends on nothing else, so it is memoised (the
        # query is not part of the key, nor of the answer). The cap bounds
        # the memo whatever requests arrive.
        path = (target or "").split("?", 1)[0]
        if (
            len(path) > _MEMO_KEY_MAX
            or (host is not None and len(host) > _MAX_HOST)
            or (method is not None and len(method) > _MAX_METHOD)
        ):
            # Long or refused-for-length input is answered without memoising:
            # the memo's size is bounded by what its keys can hold.
            return self._match(method, host, target)
        key = (method, host, path)
        hit = self._memo.get(key)
        if hit is None:
            try:
                hit = self._match(method, host, target)
            except RouteDenied as exc:
                hit = (exc.code, exc.message)
            if len(self._memo) >= _MEMO_MAX:
                self._memo.clear()
            self._memo[key] = hit
        if isinstance(hit, tuple):
            raise RouteDenied(hit[1], code=hit[0])
        return hit

    def _match(self, method: str | None, host: str | None, target: str | None) -> RouteMatch:
        norm_method = normalize_method(method)
        norm_host, port = normalize_host(host)
        path = normalize_path(target or "", case_insensitive=self.case_insensitive)
        if norm_host is None and self._host_routes:
            # nginx with an HTTP/1.0 request and no Host, or an empty Host through
            # Caddy, still reaches the same single-site upstream: routing it on the
            # host-less routes alone would skip the host's stricter routes.
            raise _refuse("the original request names no host, and routes depend on the host")
        # A trailing slash never changes the route: Express, Starlette (redirect)
        # and Flask (redirect) serve "/admin/" as "/admin" and the other way round.
        variants = (path, path[:-1]) if len(path) > 1 and path.endswith("/") else (path, path + "/")
        best: list[Route] = []
        best_rank: tuple[int, int, int, int] | None = None
        for route in self.routes:
            regex = self._regex.get(route.index)
            if not any(route.matches(norm_method, norm_host, port, v, regex) for v in variants):
                continue
            rank = route.specificity()
            if best_rank is None or rank > best_rank:
                best, best_rank = [route], rank
            elif rank == best_rank:
                best.append(route)
        if not best:
            if self.unmatched == "default_policy":
                return RouteMatch(None, None, False, norm_method, path)
            raise RouteDenied("no route matches the original request", code=ErrorCode.UNMATCHED_ROUTE)
        if len({r.outcome() for r in best}) > 1:
            raise RouteDenied(
                f"routes {', '.join(r.name for r in best)} match the original request equally",
                code=ErrorCode.AMBIGUOUS_ROUTE,
            )
        chosen = best[0]
        return RouteMatch(chosen, chosen.policy, chosen.public, norm_method, path)
