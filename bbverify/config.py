"""Build a Verifier and its rules from declarative settings (TOML, env vars, Flask config).

One schema, three spellings (the full reference is ``docs/configuration.md``):

* a mapping / TOML table: verifier settings at the top, rules under ``rules``::

      [bbverify]
      workspace = "acme"
      audience = ["ari:cloud:bitbucket::workspace/..."]
      [bbverify.rules]
      repositories = ["{...}"]
      max_step_minutes = 20

* environment variables (or any mapping of them, such as a Flask
  ``app.config``): every setting, verifier or rule, is
  ``BBVERIFY_<NAME>`` with the name upper-cased (``BBVERIFY_REPOSITORIES``).
  String values are parsed (lists are comma-separated, booleans are
  ``true``/``false``); real Python values are checked as they are.

Everything is checked when the verifier is built. Any mistake, including an
unknown setting (a typo must never silently drop a rule), raises
:class:`~bbverify.errors.ConfigurationError` whose ``key`` names the setting
as it was spelled: ``rules.repositories[1]`` or ``BBVERIFY_REPOSITORIES``.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import logging
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError
from .ipranges import AtlassianIPRanges
from .policies import (
    Branches,
    ClaimMatches,
    Environments,
    IPRanges,
    Issuers,
    Repositories,
    Rule,
    StepDuration,
    Workspaces,
    all_of,
    any_of,
    as_rules,
)
from .stores import STORE_SETTINGS, key_store_from_mapping
from .token import loads_strict
from .verifier import Verifier
from .workspaces import WorkspaceSpec, bitbucket_issuer, check_name

__all__ = [
    "KNOWN_TABLES",
    "RULE_SETTINGS",
    "VERIFIER_SETTINGS",
    "Setting",
    "load_toml_table",
    "policies_from_mapping",
    "rules_from_env",
    "rules_from_mapping",
    "verifier_from_env",
    "verifier_from_layers",
    "verifier_from_mapping",
    "verifier_from_toml",
]

_log = logging.getLogger("bbverify")

#: The sub-tables of ``[bbverify]`` (contract 3 of the shared configuration
#: layout). Each owner validates its table's keys; this one list is what the
#: near-miss checks compare table names with, so a new table is added here.
KNOWN_TABLES: tuple[str, ...] = ("rules", "policies", "workspaces", "key_store", "serve")
#: The top-level table of a TOML file and the prefix of environment variables.
ROOT_TABLE = "bbverify"
# Fuzzy matching of top-level table names of a shared file would catch
# unrelated tables ("server" is one edit from "serve"), so those two short,
# common names only match exactly after normalisation.
_EXACT_ONLY = frozenset({"serve", "rules"})


@dataclass(frozen=True, slots=True)
class Setting:
    """One configuration setting: its name, type and meaning."""

    name: str
    kind: str  #: ``str``, ``list``, ``float``, ``int`` or ``bool``
    doc: str


VERIFIER_SETTINGS: tuple[Setting, ...] = (
    Setting("workspace", "str", "workspace slug; the issuer URL is derived from it"),
    Setting("issuer", "str", "exact issuer URL instead of workspace"),
    Setting("audience", "list", "accepted audience(s); default from workspace_uuid"),
    Setting("workspace_uuid", "str", "workspace UUID; pins workspaceUuid and the default audience"),
    Setting("jwks_url", "str", "fetch keys here instead of discovery"),
    Setting("algorithms", "list", "accepted signature algorithms (default RS256)"),
    Setting("leeway", "float", "clock-skew allowance in seconds (default 10, max 300)"),
    Setting("max_token_bytes", "int", "largest token accepted (default 8192)"),
    Setting("cache_size", "int", "verified tokens remembered (0 disables)"),
    Setting("timeout", "float", "key fetch deadline in seconds"),
    Setting("cache_ttl", "float", "seconds before keys are refreshed in the background"),
    Setting("cooldown", "float", "minimum seconds between refetches for unknown kids"),
    Setting("max_stale", "float", "seconds stale keys may serve while the issuer is down"),
    Setting("failure_backoff", "float", "seconds before retrying a failed key fetch"),
    Setting("max_backoff", "float", "cap of the doubling failure backoff, in seconds (default 600)"),
    Setting("min_cache_ttl", "float", "least refresh time a Cache-Control max-age may set (default 300)"),
    Setting("max_cache_ttl", "float", "largest refresh time a Cache-Control max-age may set (default 3600)"),
    Setting("fetch_interval", "float", "seconds per fetch token of the budget (default 180)"),
    Setting("fetch_burst", "int", "fetch tokens that may be saved up (default 3)"),
    Setting("store_poll", "float", "least seconds between key-store reads for unknown kids (default 15)"),
    Setting("default_policy", "str", "named policy applied where a route names none"),
)

#: Settings a ``[[bbverify.workspaces]]`` item may hold besides ``name`` and ``rules``.
WORKSPACE_SETTINGS: tuple[str, ...] = ("workspace", "issuer", "audience", "workspace_uuid", "jwks_url")
#: Conditions of a policy entry besides the rule settings.
ENTRY_CONDITIONS: tuple[Setting, ...] = (
    Setting("workspace", "list", "names of configured workspaces (or workspace slugs)"),
    Setting("claims", "table", "claim name = value or list of values (exact, or glob with * ? [)"),
)
#: Environment variables holding JSON (or, in a Flask config, Python values) for the
#: structured tables, by the Verifier argument they feed.
STRUCTURED_ENV: dict[str, str] = {"policies": "named_policies", "workspace_list": "workspaces"}

RULE_SETTINGS: tuple[Setting, ...] = (
    Setting("workspaces", "list", "allowed workspace UUIDs"),
    Setting("repositories", "list", "allowed repository UUIDs"),
    Setting("environments", "list", "allowed deployment environment UUIDs (deployment steps only)"),
    Setting("branches", "list", "allowed branch names or glob patterns"),
    Setting("allow_missing_branch", "bool", "admit tokens without branchName (needs branches)"),
    Setting("ip_ranges", "list", "allowed client CIDRs"),
    Setting("ip_ranges_feed", "str", "Atlassian IP-range feed URL or file path"),
    Setting("ip_ranges_product", "list", "feed product filter (default bitbucket)"),
    Setting("ip_ranges_direction", "list", "feed direction filter (default egress)"),
    Setting("ip_ranges_region", "list", "feed region filter (default: all regions)"),
    Setting("ip_ranges_refresh_seconds", "float", "feed refresh interval (default 3600)"),
    Setting("ip_ranges_lazy", "bool", "load the feed on first use instead of at start-up"),
    Setting("max_step_minutes", "float", "longest step max-time accepted, in minutes"),
    Setting("step_start_buffer_minutes", "float", "Bitbucket's start buffer added (default 5)"),
    Setting("step_check_lifetime", "bool", "also deny tokens valid for longer than the limit (default true)"),
)

_VERIFIER = {s.name: s for s in VERIFIER_SETTINGS}
class _LayeredStore(dict[str, Any]):
    """A ``[bbverify.key_store]`` table with values from ``BBVERIFY_KEY_STORE_*`` variables.

    ``variables`` maps a key (``timeout``) to the variable that set it
    (``BBVERIFY_KEY_STORE_TIMEOUT``), so that errors name what the user wrote.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.variables: dict[str, str] = {}

    def spell(self, key: str) -> str:
        """The variable that set ``key``, else its TOML path (``key_store.timeout``)."""
        return self.variables.get(key, f"key_store.{key}")


_STORE_ENV = sorted({f"key_store_{key}" for keys in STORE_SETTINGS.values() for key in keys})
_RULES = {s.name: s for s in RULE_SETTINGS}
_VERIFIER_PARAMS = frozenset(inspect.signature(Verifier.__init__).parameters) - {"self"}
_INDEX_RE = re.compile(r"^(?P<base>[a-z_]+)(?:\[(?P<index>\d+)\])?$")

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


class _Names:
    """How settings are spelled in errors: ``rules.repositories[1]`` or ``BBVERIFY_REPOSITORIES``."""

    def __init__(self, env_prefix: str | None, rules_at: str = "rules.") -> None:
        self.env_prefix = env_prefix
        self.rules_at = rules_at

    def key(self, name: str, *, rule: bool, index: int | None = None) -> str:
        if self.env_prefix is not None:
            # A flat variable holds the whole list; the message names the item.
            return self.env_prefix + name.upper()
        base = f"{self.rules_at}{name}" if rule else name
        return base if index is None else f"{base}[{index}]"


def _coerce(value: object, setting: Setting, key: str, *, parse_strings: bool) -> Any:
    kind = setting.kind
    if kind == "str":
        if isinstance(value, os.PathLike):
            value = os.fspath(value)  # a feed path from Python code
        if not isinstance(value, str) or not value.strip():
            raise ConfigurationError(f"must be a non-empty string, not {value!r}", key=key)
        return value.strip()
    if kind == "list":
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",")] if parse_strings else [value]
            items = [v for v in items if v]
        elif isinstance(value, list | tuple):
            items = list(value)
            for item in items:
                if not isinstance(item, str):
                    raise ConfigurationError(f"must be a list of strings; {item!r} is not a string", key=key)
        else:
            raise ConfigurationError(f"must be a list of strings, not {type(value).__name__}", key=key)
        if not items:
            raise ConfigurationError("is empty; remove the setting to turn it off", key=key)
        return items
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if parse_strings and isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigurationError(f"must be true or false, not {value!r}", key=key)
    # numbers
    number: object = value
    if parse_strings and isinstance(value, str):
        try:
            number = int(value.strip()) if kind == "int" else float(value.strip())
        except ValueError:
            raise ConfigurationError(f"must be a number, not {value!r}", key=key) from None
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise ConfigurationError(f"must be a number, not {value!r}", key=key)
    if kind == "int" and not isinstance(number, int):
        raise ConfigurationError(f"must be a whole number, not {value!r}", key=key)
    if not math.isfinite(number) or number < 0:
        raise ConfigurationError(f"must be a non-negative number, not {value!r}", key=key)
    return number


def _rekey(exc: ConfigurationError, names: _Names, mapping: Mapping[str, str], default: str) -> None:
    """Re-raise ``exc`` with its key spelled as the user wrote the setting."""
    match = _INDEX_RE.match(exc.key or "")
    base = match.group("base") if match else None
    index = int(match.group("index")) if match and match.group("index") else None
    name = mapping.get(base or "", default)
    raise ConfigurationError(exc.detail, key=names.key(name, rule=True, index=index)) from None


def _build_rules(
    values: Mapping[str, Any], names: _Names, feeds: dict[tuple[Any, ...], AtlassianIPRanges] | None = None
) -> list[Rule]:
    def rkey(name: str) -> str:
        return names.key(name, rule=True)

    for dependent, needs in (
        ("allow_missing_branch", "branches"),
        ("ip_ranges_product", "ip_ranges_feed"),
        ("ip_ranges_direction", "ip_ranges_feed"),
        ("ip_ranges_region", "ip_ranges_feed"),
        ("ip_ranges_refresh_seconds", "ip_ranges_feed"),
        ("ip_ranges_lazy", "ip_ranges_feed"),
        ("step_start_buffer_minutes", "max_step_minutes"),
        ("step_check_lifetime", "max_step_minutes"),
    ):
        if dependent in values and needs not in values:
            raise ConfigurationError(f"has no effect without {rkey(needs)}", key=rkey(dependent))

    rules: list[Rule] = []

    def build(factory: Callable[[], Rule], default: str, mapping: Mapping[str, str] | None = None) -> None:
        try:
            rules.append(factory())
        except ConfigurationError as exc:
            _rekey(exc, names, mapping or {}, default)

    for name, cls in (
        ("workspaces", Workspaces),
        ("repositories", Repositories),
        ("environments", Environments),
    ):
        if name in values:
            build(lambda cls=cls, name=name: cls(values[name]), name)  # type: ignore[misc]
    if "branches" in values:
        build(
            lambda: Branches(values["branches"], allow_missing=values.get("allow_missing_branch", False)),
            "branches",
        )
    if "ip_ranges" in values or "ip_ranges_feed" in values:
        build(_ip_rule(values, {} if feeds is None else feeds), "ip_ranges", _IP_KEYS)
    if "max_step_minutes" in values:
        build(
            lambda: StepDuration(
                values["max_step_minutes"],
                start_buffer_minutes=values.get("step_start_buffer_minutes", 5.0),
                check_lifetime=values.get("step_check_lifetime", True),
            ),
            "max_step_minutes",
            {
                "max_minutes": "max_step_minutes",
                "start_buffer_minutes": "step_start_buffer_minutes",
                "check_lifetime": "step_check_lifetime",
            },
        )
    return rules


_IP_KEYS = {
    "ip_ranges": "ip_ranges",
    "ip_ranges_feed": "ip_ranges_feed",
    "product": "ip_ranges_product",
    "direction": "ip_ranges_direction",
    "region": "ip_ranges_region",
    "refresh_interval": "ip_ranges_refresh_seconds",
}


def _ip_rule(
    values: Mapping[str, Any], feeds: dict[tuple[Any, ...], AtlassianIPRanges]
) -> Callable[[], Rule]:
    def make() -> Rule:
        cidrs = values.get("ip_ranges", [])
        if "ip_ranges_feed" not in values:
            return IPRanges(cidrs)
        options: dict[str, Any] = {
            "product": values.get("ip_ranges_product", "bitbucket"),
            "direction": values.get("ip_ranges_direction", "egress"),
            "region": values.get("ip_ranges_region"),
            "refresh_interval": values.get("ip_ranges_refresh_seconds", 3600.0),
            "lazy": values.get("ip_ranges_lazy", False),
        }
        source = values["ip_ranges_feed"]
        # Policies that name the same feed share one loader: one fetch per refresh.
        identity = (source, *(tuple(v) if isinstance(v, list) else v for v in options.values()))
        feed = feeds.get(identity)
        if feed is None:
            feed = feeds[identity] = AtlassianIPRanges(source, **options)
        return IPRanges(cidrs, feed=feed)

    return make


def _rule_values(
    mapping: Mapping[str, Any], names: _Names, *, parse_strings: bool, workspace_at: str | None = None
) -> dict[str, Any]:
    """Check and coerce a rules table; ``workspace_at`` (``workspaces[0]``) when it is a workspace's."""
    values: dict[str, Any] = {}
    for name, raw in mapping.items():
        setting = _RULES.get(name) if isinstance(name, str) else None
        if setting is None:
            place = _Place("rules", "" if workspace_at is None else workspace_at)
            raise ConfigurationError(_unknown(name, _RULES, place), key=names.key(str(name), rule=True))
        values[name] = _coerce(raw, setting, names.key(name, rule=True), parse_strings=parse_strings)
    return values


@dataclass(frozen=True, slots=True)
class _Place:
    """Which table an unknown key was found in, to say where it belongs instead.

    ``table`` is ``root`` ([bbverify]), ``rules`` ([bbverify.rules], or a
    workspace's rules when ``at`` names the workspace), ``workspace`` (an item
    of [[bbverify.workspaces]], ``at`` = ``workspaces[0]``), ``policy`` (a
    named policy, ``at`` = ``policies.deploy``) or ``entry`` (an item of its
    ``allow`` list).
    """

    table: str
    at: str = ""


_ONLY_IN_ENTRIES = frozenset(s.name for s in ENTRY_CONDITIONS) - set(_VERIFIER)
_STORE_ONLY = frozenset().union(*STORE_SETTINGS.values()) - set(_VERIFIER)


def _belongs(name: str, place: _Place) -> str | None:
    """Where ``name``, a setting of another table, is written instead; ``None`` if it is no one's.

    Settings keep one spelling everywhere but live in different tables
    (``docs/configuration.md``); the environment spells them all flat
    (``BBVERIFY_REPOSITORIES``), which makes writing one in the wrong table easy.
    """
    if name in _VERIFIER and place.table != "root":
        if place.table == "rules" and place.at and name in WORKSPACE_SETTINGS:  # a workspace's rules
            return f"{name!r} is a workspace setting: put it in the workspace's own table ({place.at}.{name})"
        if place.table == "workspace":
            return f"{name!r} applies to every workspace: put it under [{ROOT_TABLE}] ({name})"
        what = "a condition" if place.table == "entry" else "a rule"
        return f"{name!r} is a verifier setting, not {what}: put it under [{ROOT_TABLE}] ({name})"
    if name in _RULES and place.table not in ("rules", "entry"):
        if place.table == "workspace":
            return f"{name!r} is a rule setting: put it under the workspace's rules ({place.at}.rules.{name})"
        if place.table == "policy":
            # The TOML header only for a TOML path (BBVERIFY_POLICIES.deploy is JSON).
            header = f"[[{ROOT_TABLE}.{place.at}.allow]], " if place.at.startswith("policies.") else ""
            return (
                f"{name!r} is a condition: put it in an entry of the policy's allow list "
                f"({header}{place.at}.allow[0].{name})"
            )
        return (
            f"{name!r} is a rule setting: put it under [{ROOT_TABLE}.rules] (rules.{name}), "
            f"or in an entry of a named policy"
        )
    if name in _ONLY_IN_ENTRIES and place.table != "entry":
        return f"{name!r} is a condition of a named policy's entry ([[{ROOT_TABLE}.policies.<name>.allow]])"
    if name in _STORE_ONLY and place.table == "root":
        return f"{name!r} is a key-store setting: put it under [{ROOT_TABLE}.key_store] (key_store.{name})"
    return None


def _unknown(name: object, known: Iterable[str], place: _Place, noun: str = "setting") -> str:
    """The message for a key ``known`` lacks: where it belongs, else its likely spelling.

    A setting of another table (``repositories`` under [bbverify]) is sent
    there; a misspelling gets "did you mean", looked for among the names of
    this table first and then among every other table's.
    """
    names = sorted(known)
    listing = f"known {noun}s: {', '.join(names)}"
    if not isinstance(name, str):
        return f"unknown {noun} {name!r}; {listing}"
    home = _belongs(name, place)
    if home is not None:
        return f"unknown {noun} {name!r} here; {home}"
    meant = _suggest(name, names)
    if meant is not None:
        return f"unknown {noun} {name!r}; did you mean {meant!r}? {listing}"
    elsewhere = _suggest(name, sorted({*_VERIFIER, *_RULES, *_ONLY_IN_ENTRIES, *_STORE_ONLY}))
    home = _belongs(elsewhere, place) if elsewhere is not None else None
    if home is not None:
        return f"unknown {noun} {name!r}; did you mean {elsewhere!r}? {home}"
    return f"unknown {noun} {name!r}; {listing}"


def _normal(name: str) -> str:
    """``name`` lower-cased with separators dropped: ``Key-Store`` and ``KEY_STORE`` are ``keystore``."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _suggest(name: object, known: Iterable[str], cutoff: float = 0.75) -> str | None:
    """The known name ``name`` most likely meant (same normalised spelling first, then difflib)."""
    if not isinstance(name, str):
        return None
    by_normal = {_normal(k): k for k in known}
    wanted = _normal(name)
    if wanted in by_normal:
        return by_normal[wanted]
    close = difflib.get_close_matches(wanted, list(by_normal), n=1, cutoff=cutoff)
    return by_normal[close[0]] if close else None


def _looks_like_root(normal: str) -> bool:
    return normal.startswith(ROOT_TABLE) or bool(
        difflib.get_close_matches(normal, [ROOT_TABLE], n=1, cutoff=0.75)
    )


def check_document_tables(document: Mapping[str, Any], source: str = "") -> None:
    """Refuse top-level tables of a TOML document that look like bbverify's but are not.

    ``[bbverify]`` is the only table read; ``[BBVerify]``, ``[bb-verify]``,
    ``[bbverify_rules]`` (anything whose normalised name starts with or is
    close to ``bbverify``) and a top-level ``[rules]``, ``[policies]`` ...
    (a sub-table of :data:`KNOWN_TABLES` written without its ``bbverify.``)
    would be silently ignored, so each raises
    :class:`~bbverify.errors.ConfigurationError` naming the table and the
    spelling meant. Unrelated tables of a shared file are left alone.
    """
    where = f" in {source}" if source else ""
    nested = _nested_root(document, (), 0)
    if nested is not None:
        raise ConfigurationError(
            f"table [{nested}]{where} is not read by bbverify; it reads only the top-level [{ROOT_TABLE}]",
            key=nested,
        )
    _check_top_level_keys(document, where)
    for name in document:
        if not isinstance(name, str) or name == ROOT_TABLE:
            continue
        normal = _normal(name)
        if _looks_like_root(normal):
            rest = normal[len(ROOT_TABLE) :] if normal.startswith(ROOT_TABLE) else ""
            sub = _suggest(rest, KNOWN_TABLES) if rest else None
            meant = f"[{ROOT_TABLE}.{sub}]" if sub else f"[{ROOT_TABLE}]"
            raise ConfigurationError(
                f"table [{name}]{where} is not read by bbverify; did you mean {meant}?", key=name
            )
        sub = _known_table_like(name)
        if sub is not None:
            # A plain key (not a table) named like a table: say "key", not "table [..]".
            what = f"table [{name}]" if _is_table(document[name]) else f"top-level key {name!r}"
            raise ConfigurationError(
                f"{what}{where} is not read by bbverify; did you mean [{ROOT_TABLE}.{sub}]?",
                key=name,
            )


def _is_table(value: object) -> bool:
    """Whether a TOML value is a table (``[name]``) or an array of tables (``[[name]]``), not a key."""
    if isinstance(value, Mapping):
        return True
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _home_of(name: str) -> tuple[str, str] | None:
    """``(setting, table)`` for a key that is, or nearly is, a bbverify setting, else ``None``.

    ``table`` is where the setting is written: ``[bbverify]`` for verifier
    settings, ``[bbverify.rules]`` for rule settings.
    """
    for known, table in ((_VERIFIER, f"[{ROOT_TABLE}]"), (_RULES, f"[{ROOT_TABLE}.rules]")):
        setting = _suggest(name, known, cutoff=0.85)
        if setting is not None:
            return setting, table
    return None


def _check_top_level_keys(document: Mapping[str, Any], where: str) -> None:
    """Refuse bbverify settings written as top-level keys (above ``[bbverify]``, or with it forgotten).

    TOML puts every key written above the first table header at the top level,
    where bbverify never reads it. Without a ``[bbverify]`` table any
    top-level key named (nearly) like a setting is such a mistake. Beside a
    ``[bbverify]`` table, generic names (``timeout``) may belong to the
    application sharing the file, so only the names that already looked like
    one of bbverify's tables (``workspace``) are refused, now as keys.
    """
    has_root = isinstance(document.get(ROOT_TABLE), Mapping)
    misplaced: dict[str, list[str]] = {}  # table -> what the user wrote
    first: str | None = None
    for name, value in document.items():
        if not isinstance(name, str) or name == ROOT_TABLE or _is_table(value):
            continue
        home = _home_of(name)
        if home is None:
            continue
        if has_root and _known_table_like(name) is None:
            continue
        setting, table = home
        spelled = repr(name) if setting == name else f"{name!r} (did you mean {setting!r}?)"
        misplaced.setdefault(table, []).append(spelled)
        first = first or name
    if first is None:
        return
    count = sum(len(names) for names in misplaced.values())
    noun = "key" if count == 1 else "keys"
    verb = "is" if count == 1 else "are"
    fix = " and ".join(f"{', '.join(names)} under {table}" for table, names in misplaced.items())
    raise ConfigurationError(
        f"{noun} {', '.join(n for names in misplaced.values() for n in names)}{where} {verb} outside "
        f"[{ROOT_TABLE}] (TOML keys written above the first table header, or with no [{ROOT_TABLE}] "
        f"header, are top-level and not read by bbverify): put {fix}",
        key=first,
    )


def _known_table_like(name: str) -> str | None:
    """The one of :data:`KNOWN_TABLES` a top-level name is spelled like, else ``None``."""
    normal = _normal(name)
    fuzzy = [t for t in KNOWN_TABLES if t not in _EXACT_ONLY]
    return next((t for t in KNOWN_TABLES if _normal(t) == normal), None) or _suggest(name, fuzzy, cutoff=0.7)


def _nested_root(table: Mapping[str, Any], path: tuple[str, ...], depth: int) -> str | None:
    """The dotted name of a table below the top level named like ``bbverify`` (``tool.bbverify``)."""
    if depth > 4:  # bounded: configuration files are shallow
        return None
    for name, value in table.items():
        if not isinstance(name, str) or not isinstance(value, Mapping):
            continue
        if path and _normal(name).startswith(ROOT_TABLE):
            return ".".join((*path, name))
        if not path and name == ROOT_TABLE:
            continue  # the real table: its own keys are checked by their owners
        found = _nested_root(value, (*path, name), depth + 1)
        if found is not None:
            return found
    return None


def _check_env_name(full: str, prefix: str, known: Iterable[str]) -> None:
    """Refuse a variable that looks like ``prefix`` + a setting but is not spelled exactly so.

    ``bbverify_repositories``, ``Bbverify_REPOSITORIES``, ``BBVERIFY_repositories``
    and ``BB_VERIFY_REPOSITORIES`` would otherwise be skipped (or read by one
    function and not another); each is an error suggesting the exact name.
    """
    if full.startswith(prefix) and full == full.upper():
        return  # spelled as ours; whether the name is known is checked by the caller
    normal = _normal(full)
    root = _normal(prefix)
    if not root or not normal.startswith(root) or normal == root:
        return
    names = sorted(prefix + n.upper() for n in known)
    meant = _suggest(normal[len(root) :], [n[len(prefix) :] for n in names])
    hint = f"did you mean {prefix + meant}?" if meant else f"bbverify reads only {prefix}<NAME> in upper case"
    raise ConfigurationError(f"looks like a bbverify setting but is not spelled as one; {hint}", key=full)


def _other_prefix_hint(full: str, prefix: str) -> str:
    """Explain a name that is a known setting under a longer prefix (``BBVERIFY_DEPLOY_REPOSITORIES``).

    Every name starting with ``prefix`` belongs to this reader, so a second
    set of settings under ``BBVERIFY_DEPLOY_`` collides with ``BBVERIFY_``.
    """
    rest = full[len(prefix) :].lower()
    for known in sorted((*_RULES, *_VERIFIER, *STRUCTURED_ENV, *_STORE_ENV), key=len, reverse=True):
        if rest.endswith("_" + known):
            other = full[: len(full) - len(known)]
            return (
                f" ({full} looks like the {known!r} setting under another prefix, {other!r}: every "
                f"{prefix}* name is read as one of this reader's settings, so a prefix that starts "
                f"with {prefix!r} collides with it. Choose a prefix that does not (for example "
                f"{other[len(prefix):] + prefix!r}), or pass its names in ignore=)"
            )
    return ""


def rules_from_mapping(mapping: Mapping[str, Any]) -> list[Rule]:
    """Build the rules of a ``rules`` table (``{"repositories": [...], ...}``).

    Raises :class:`~bbverify.errors.ConfigurationError` naming the setting
    (``rules.repositories[1]``) on any mistake, unknown settings included.
    """
    if not isinstance(mapping, Mapping):
        raise ConfigurationError("must be a table of rule settings", key="rules")
    names = _Names(None)
    return _build_rules(_rule_values(mapping, names, parse_strings=False), names)


def _our_variables(
    environ: Mapping[str, Any], prefix: str, skip: frozenset[str]
) -> Iterator[tuple[str, str, Any]]:
    """``(variable, setting name, value)`` for each variable with ``prefix``.

    Every name is first checked for near misses (case variants, other
    separators), so a misspelt variable is an error, never skipped; names in
    ``skip`` (an adapter's own settings) are passed over.
    """
    known = [*_VERIFIER, *_RULES, *STRUCTURED_ENV, *_STORE_ENV, *(n[len(prefix) :].lower() for n in skip)]
    for full, value in environ.items():
        if not isinstance(full, str) or full in skip:
            continue
        _check_env_name(full, prefix, known)
        if full.startswith(prefix):
            yield full, full[len(prefix) :].lower(), value


def rules_from_env(
    environ: Mapping[str, Any] | None = None, prefix: str = "BBVERIFY_", *, ignore: Iterable[str] = ()
) -> list[Rule]:
    """Build only the rules from ``BBVERIFY_*`` variables.

    Verifier settings and the names in ``ignore`` (an adapter's own) are
    skipped; any other ``BBVERIFY_*`` name is refused, so that a misspelt
    rule setting cannot silently drop its rule.
    """
    environ = os.environ if environ is None else environ
    names = _Names(prefix)
    skip = frozenset(ignore)
    raw: dict[str, Any] = {}
    for full, name, value in _our_variables(environ, prefix, skip):
        if name in _RULES:
            raw[name] = value
        elif name not in _VERIFIER and name not in STRUCTURED_ENV and name not in _STORE_ENV:
            # A misspelt rule setting must fail, not silently drop the rule.
            known = sorted(prefix + n.upper() for n in _RULES)
            other = _other_prefix_hint(full, prefix)
            meant = None if other else _suggest(name, [*_RULES, *_VERIFIER])
            hint = f"did you mean {prefix + meant.upper()}? " if meant else ""
            raise ConfigurationError(
                f"unknown rule setting; {hint}known settings: {', '.join(known)}{other}", key=full
            )
    return _build_rules(_rule_values(raw, names, parse_strings=True), names)


# -- several workspaces and named policies -------------------------------------------


def _structured(raw: object, key: str, kind: type, parse_strings: bool) -> Any:
    """A table or array: as given, or decoded from JSON when it comes as an environment string."""
    value = raw
    if parse_strings and isinstance(raw, str):
        try:
            # The token module's strict parser: plain json.loads would keep the last of two
            # "deploy" members, silently replacing a policy (TOML refuses the same duplicate).
            value = loads_strict(raw)
        except ValueError as exc:
            raise ConfigurationError(f"is not valid JSON ({exc})", key=key) from None
    if kind is list:
        if not isinstance(value, list | tuple):
            raise ConfigurationError(f"must be a list of tables, not {type(value).__name__}", key=key)
    elif not isinstance(value, Mapping):
        raise ConfigurationError(f"must be a table, not {type(value).__name__}", key=key)
    if not value:
        raise ConfigurationError("is empty; remove the setting to turn it off", key=key)
    return value


class _Build:
    """State shared while one configuration is built: IP feeds, workspace names."""

    def __init__(self) -> None:
        self.feeds: dict[tuple[Any, ...], AtlassianIPRanges] = {}
        self.issuers: dict[str, str] = {}  #: workspace name -> issuer


def _build_workspaces(items: Any, at: str, build: _Build) -> list[WorkspaceSpec]:
    specs: list[WorkspaceSpec] = []
    known = sorted((*WORKSPACE_SETTINGS, "name", "rules"))
    for i, item in enumerate(items):
        key = f"{at}[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigurationError(f"must be a table, not {type(item).__name__}", key=key)
        values: dict[str, Any] = {}
        rules: list[Rule] = []
        for name, raw in item.items():
            if name == "rules":
                if not isinstance(raw, Mapping):
                    raise ConfigurationError("must be a table of rule settings", key=f"{key}.rules")
                names = _Names(None, f"{key}.rules.")
                values_ = _rule_values(raw, names, parse_strings=False, workspace_at=key)
                rules = _build_rules(values_, names, build.feeds)
            elif name == "name":
                values["name"] = check_name(raw, f"{key}.name")
            elif name in WORKSPACE_SETTINGS:
                values[name] = _coerce(raw, _VERIFIER[name], f"{key}.{name}", parse_strings=False)
            else:
                raise ConfigurationError(_unknown(name, known, _Place("workspace", key)), key=f"{key}.{name}")
        try:
            spec = WorkspaceSpec(**values, policies=rules)
        except ConfigurationError as exc:
            raise ConfigurationError(exc.detail, key=f"{key}.{exc.key}" if exc.key else key) from None
        specs.append(spec)
        build.issuers[spec.name] = spec.issuer
    return specs


def _single_workspace_name(values: Mapping[str, Any], build: _Build) -> None:
    # The one workspace of a plain [bbverify] table has a name too (slug, else issuer),
    # so a 'workspace' condition can name it like any other.
    if "workspace" in values:
        # A bad slug is left to the Verifier, which reports it under the user's spelling.
        with contextlib.suppress(ConfigurationError):
            build.issuers[values["workspace"].strip().lower()] = bitbucket_issuer(values["workspace"])
    elif "issuer" in values:
        build.issuers[values["issuer"]] = values["issuer"]


def _issuer_condition(raw: Any, key: str, build: _Build) -> Rule:
    wanted = _coerce(raw, Setting("workspace", "list", ""), key, parse_strings=False)
    issuers: list[str] = []
    for i, name in enumerate(wanted):
        issuer = build.issuers.get(name)
        if issuer is None:
            known = ", ".join(repr(n) for n in build.issuers) or "none"
            raise ConfigurationError(
                f"{name!r} is not the name of a configured workspace; configured: {known}",
                key=f"{key}[{i}]",
            )
        issuers.append(issuer)
    return Issuers(issuers)


def _claim_conditions(raw: Any, key: str) -> list[Rule]:
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigurationError("must be a non-empty table of claim = value(s)", key=key)
    rules: list[Rule] = []
    for claim, value in raw.items():
        values = list(value) if isinstance(value, list | tuple) else [value]
        try:
            rules.append(ClaimMatches(claim, values))
        except ConfigurationError as exc:
            suffix = (exc.key or "")[len(str(claim)) :] if str(exc.key or "").startswith(str(claim)) else ""
            raise ConfigurationError(exc.detail, key=f"{key}.{claim}{suffix}") from None
    return rules


_ENTRY_KEYS = {**{s.name: s for s in ENTRY_CONDITIONS}, **_RULES}


def _build_entry(entry: Any, at: str, build: _Build) -> Rule:
    if not isinstance(entry, Mapping):
        raise ConfigurationError(f"must be a table of conditions, not {type(entry).__name__}", key=at)
    if not entry:
        raise ConfigurationError(
            "is empty; an entry without conditions would admit every verified token", key=at
        )
    for name in entry:
        if name not in _ENTRY_KEYS:
            raise ConfigurationError(
                _unknown(name, _ENTRY_KEYS, _Place("entry", at), noun="condition"), key=f"{at}.{name}"
            )
    conditions = dict(entry)
    rules: list[Rule] = []
    if "workspace" in conditions:
        rules.append(_issuer_condition(conditions.pop("workspace"), f"{at}.workspace", build))
    claims = conditions.pop("claims", None) if "claims" in conditions else None
    names = _Names(None, f"{at}.")
    rules += _build_rules(_rule_values(conditions, names, parse_strings=False), names, build.feeds)
    if "claims" in entry:
        rules += _claim_conditions(claims, f"{at}.claims")
    # The same rule objects as Python code would build: one engine.
    return rules[0] if len(rules) == 1 else all_of(*rules)


def _build_policies(table: Mapping[Any, Any], at: str, build: _Build) -> dict[str, Rule]:
    policies: dict[str, Rule] = {}
    for name, body in table.items():
        key = f"{at}.{name}"
        check_name(name, key)
        if not isinstance(body, Mapping):
            raise ConfigurationError("must be a table with allow = [ {conditions}, ... ]", key=key)
        for extra in body:
            if extra != "allow":
                raise ConfigurationError(
                    _unknown(extra, ["allow"], _Place("policy", key)),
                    key=f"{key}.{extra}",
                )
        if "allow" not in body:
            raise ConfigurationError(
                "is required: a list of entries, each a table of conditions", key=f"{key}.allow"
            )
        allow = body["allow"]
        if not isinstance(allow, list | tuple) or not allow:
            raise ConfigurationError(
                "must be a non-empty list of entries (tables of conditions)", key=f"{key}.allow"
            )
        entries = [_build_entry(entry, f"{key}.allow[{i}]", build) for i, entry in enumerate(allow)]
        policies[name] = entries[0] if len(entries) == 1 else any_of(*entries)
    return policies


def policies_from_mapping(
    mapping: Mapping[str, Any], *, workspaces: Mapping[str, str] | None = None
) -> dict[str, Rule]:
    """Build named policies from a ``policies`` table: ``{name: {"allow": [entry, ...]}}``.

    A policy admits when any entry admits (:func:`~bbverify.policies.any_of`);
    an entry admits when all its conditions hold
    (:func:`~bbverify.policies.all_of`). Conditions are the rule settings of
    ``[bbverify.rules]`` (``repositories``, ``branches``, ``ip_ranges``,
    ``max_step_minutes``, ...), ``workspace`` (names of configured
    workspaces, looked up in ``workspaces``: ``{name: issuer}``) and
    ``claims`` (``{claim: value or [values]}``, see
    :class:`~bbverify.policies.ClaimMatches`).

    Returns ``{name: rule}`` for ``Verifier(named_policies=...)``. Raises
    :class:`~bbverify.errors.ConfigurationError` naming the key path
    (``policies.deploy.allow[1].branches``).
    """
    build = _Build()
    build.issuers.update(workspaces or {})
    return _build_policies(_structured(mapping, "policies", dict, False), "policies", build)


# -- the verifier --------------------------------------------------------------------------


def _build_verifier(
    verifier_values: dict[str, Any],
    rules: list[Rule],
    names: _Names,
    overrides: dict[str, Any],
    structured: Mapping[str, tuple[Any, str]] | None = None,
) -> Verifier:
    """Build the Verifier; ``structured`` maps an argument to ``(value, spelling of its key)``."""
    for name in overrides:
        if name not in _VERIFIER_PARAMS:
            raise ConfigurationError(
                f"unknown Verifier argument; choose from {', '.join(sorted(_VERIFIER_PARAMS))}", key=name
            )
    structured = structured or {}
    options = dict(verifier_values)
    for param, (value, _) in structured.items():
        options[param] = value
    extra = as_rules(overrides.pop("policies", None))
    options.update(overrides)
    try:
        verifier = Verifier(policies=[*rules, *extra], **options)
    except ConfigurationError as exc:
        key = exc.key or ""
        base = re.split(r"[\[.]", key, maxsplit=1)[0]
        if base in overrides:
            raise
        if base in verifier_values:
            spelled = names.key(base, rule=False)
        elif base in structured:
            spelled = structured[base][1] + key[len(base) :]
        elif base == "audience" and names.env_prefix is not None and "workspaces" not in structured:
            # A missing audience, named as this user spells settings (BBVERIFY_AUDIENCE).
            raise ConfigurationError(
                "an audience is required (Bitbucket's default is "
                "'ari:cloud:bitbucket::workspace/<workspace-uuid>'); or set "
                + names.key("workspace_uuid", rule=False),
                key=names.key("audience", rule=False),
            ) from None
        else:
            raise
        raise ConfigurationError(exc.detail, key=spelled) from None
    if not _has_rules(verifier, options):
        # Legitimate (every genuine token of the issuer is admitted), but a
        # rule lost to a mistake looks the same: say so once, at start-up.
        _log.warning(
            "bbverify: the verifier built from configuration has no rules; every valid token "
            "from %s is admitted",
            getattr(verifier, "issuer", "the issuer"),
        )
    return verifier


def _has_rules(verifier: Verifier, options: Mapping[str, Any]) -> bool:
    """Whether any rule applies: base rules, named policies, or a workspace's own rules."""
    if verifier.policies or options.get("named_policies"):
        return True
    specs = options.get("workspaces") or ()
    return any(getattr(spec, "rules", None) or getattr(spec, "policies", None) for spec in specs)


def _assemble(
    verifier_values: dict[str, Any],
    rules: list[Rule],
    names: _Names,
    overrides: dict[str, Any],
    workspaces: tuple[Any, str] | None,
    policies: tuple[Any, str] | None,
) -> Verifier:
    build = _Build()
    structured: dict[str, tuple[Any, str]] = {}
    if workspaces is not None:
        specs = _build_workspaces(workspaces[0], workspaces[1], build)
        structured["workspaces"] = (specs, workspaces[1])
    else:
        _single_workspace_name(verifier_values, build)
    if policies is not None:
        structured["named_policies"] = (_build_policies(policies[0], policies[1], build), policies[1])
    return _build_verifier(verifier_values, rules, names, overrides, structured)


#: ``[bbverify.*]`` tables that are not verifier settings: each is checked by the
#: module that owns it (``serve``: :func:`bbverify.gateway.serve_settings`).
_OTHER_TABLES = frozenset({"serve"})


def verifier_from_mapping(mapping: Mapping[str, Any], **overrides: Any) -> Verifier:
    """Build a :class:`~bbverify.Verifier` from a ``bbverify`` table.

    ``mapping`` holds verifier settings; under ``rules``, base rule settings;
    under ``policies``, named policies (``{name: {"allow": [...]}}``, see
    :func:`policies_from_mapping`); under ``workspaces``, a list of tables,
    one per trusted workspace (``name``, ``workspace``, ``issuer``,
    ``audience``, ``workspace_uuid``, ``jwks_url`` and its own ``rules``).
    See ``docs/configuration.md``. ``overrides`` are
    :class:`~bbverify.Verifier` arguments that replace configured values
    (or add code-only ones: ``on_decision``, ``clock``, ``session``,
    ``keys``); ``policies`` given here run after the configured rules.

    Raises :class:`~bbverify.errors.ConfigurationError` whose ``key`` is the
    path as spelled (``policies.deploy.allow[1].branches``,
    ``workspaces[0].audience``).
    """
    if not isinstance(mapping, Mapping):
        raise ConfigurationError("must be a table of settings", key="bbverify")
    names = _Names(None)
    verifier_values: dict[str, Any] = {}
    rules: list[Rule] = []
    workspaces: tuple[Any, str] | None = None
    policies: tuple[Any, str] | None = None
    for name, raw in mapping.items():
        if name in _OTHER_TABLES:
            continue  # owned and checked by its own module (see _OTHER_TABLES)
        if name == "rules":
            if not isinstance(raw, Mapping):
                raise ConfigurationError("must be a table of rule settings", key="rules")
            rules = _build_rules(_rule_values(raw, names, parse_strings=False), names)
            continue
        if name == "key_store":
            if not isinstance(raw, Mapping):
                raise ConfigurationError("must be a table with a 'kind'", key="key_store")
            if isinstance(raw, _LayeredStore):
                verifier_values["key_store"] = key_store_from_mapping(raw, spell=raw.spell)
            else:
                verifier_values["key_store"] = key_store_from_mapping(raw)
            continue
        if name == "workspaces":
            workspaces = (_structured(raw, "workspaces", list, False), "workspaces")
            continue
        if name == "policies":
            policies = (_structured(raw, "policies", dict, False), "policies")
            continue
        setting = _VERIFIER.get(name) if isinstance(name, str) else None
        if setting is None:
            hint = " (pass the [bbverify] table itself)" if name == "bbverify" else ""
            raise ConfigurationError(
                _unknown(name, [*_VERIFIER, *KNOWN_TABLES], _Place("root")) + hint, key=str(name)
            )
        verifier_values[name] = _coerce(raw, setting, name, parse_strings=False)
    return _assemble(verifier_values, rules, names, dict(overrides), workspaces, policies)


def verifier_from_toml(path: str | os.PathLike[str], **overrides: Any) -> Verifier:
    """Build a verifier from the ``[bbverify]`` table of a TOML file.

    Unrelated tables in the file are ignored, so the settings can live in a
    shared configuration file; tables that look like bbverify's but are not
    (``[BBVerify]``, ``[bbverify_rules]``, a top-level ``[rules]``) raise
    :class:`~bbverify.errors.ConfigurationError` (see
    :func:`check_document_tables`).
    """
    return verifier_from_mapping(load_toml_table(path), **overrides)


def load_toml_table(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``[bbverify]`` table of a TOML file, after :func:`check_document_tables`.

    Raises :class:`~bbverify.errors.ConfigurationError` (key ``bbverify``)
    when the file cannot be read, is not TOML, or has no ``[bbverify]``.
    """
    try:
        with open(path, "rb") as fh:
            document = tomllib.load(fh)
    except OSError as exc:
        raise ConfigurationError(f"cannot read {os.fspath(path)!r}: {exc.strerror}", key="bbverify") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{os.fspath(path)!r} is not valid TOML: {exc}", key="bbverify") from None
    check_document_tables(document, repr(os.fspath(path)))
    table = document.get(ROOT_TABLE)
    if not isinstance(table, dict):
        raise ConfigurationError(f"{os.fspath(path)!r} has no [bbverify] table", key="bbverify")
    return table


def verifier_from_layers(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, Any] | None = None,
    prefix: str = "BBVERIFY_",
    *,
    table: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> Verifier:
    """Build a verifier from a TOML file, then ``BBVERIFY_*`` variables, then ``overrides``.

    Each layer replaces what the one before set, setting by setting: a
    variable ``BBVERIFY_REPOSITORIES`` replaces ``repositories`` of
    ``[bbverify.rules]``, an override ``workspace=...`` replaces both (this is
    what ``bbverify verify --config FILE`` does). ``path=None`` skips the
    file; ``table`` is the ``[bbverify]`` table already read from one (what
    ``bbverify serve`` passes, without ``[bbverify.serve]``) and excludes
    ``path`` (``TypeError``); ``environ`` defaults to ``os.environ``. Misspellings are refused in
    all three layers, and an error names the setting as its layer spells it
    (``rules.repositories[1]`` or ``BBVERIFY_REPOSITORIES``). Raises
    :class:`~bbverify.errors.ConfigurationError`.
    """
    environ = os.environ if environ is None else environ
    if path is not None and table is not None:
        raise TypeError("give path or table, not both")
    table = dict(table) if table is not None else dict(load_toml_table(path)) if path is not None else {}
    from_env: dict[str, str] = {}  # setting name -> variable, to name the variable in errors
    for full, raw in environ.items():
        if not isinstance(full, str):
            continue
        _check_env_name(full, prefix, [*_VERIFIER, *_RULES, *STRUCTURED_ENV, *_STORE_ENV])
        if not full.startswith(prefix):
            continue
        name = full[len(prefix) :].lower()
        if name in _VERIFIER:
            table[name] = _coerce(raw, _VERIFIER[name], full, parse_strings=True)
        elif name in _STORE_ENV:
            # BBVERIFY_KEY_STORE_URL replaces url of [bbverify.key_store], and so on.
            store = table.get("key_store")
            layered = _LayeredStore(store if isinstance(store, Mapping) else {})
            if isinstance(store, _LayeredStore):
                layered.variables.update(store.variables)
            layered[name[len("key_store_") :]] = raw
            # Errors about this value name the variable the user set.
            layered.variables[name[len("key_store_") :]] = full
            table["key_store"] = layered
        elif name in _RULES:
            rules = table.get("rules")
            rules = dict(rules) if isinstance(rules, Mapping) else {}
            rules[name] = _coerce(raw, _RULES[name], full, parse_strings=True)
            table["rules"] = rules
        elif name in STRUCTURED_ENV:
            # BBVERIFY_POLICIES replaces [bbverify.policies], BBVERIFY_WORKSPACE_LIST [[bbverify.workspaces]].
            kind = list if name == "workspace_list" else dict
            name = "workspaces" if name == "workspace_list" else name
            table[name] = _structured(raw, full, kind, True)
        else:
            meant = _suggest(name, [*_RULES, *_VERIFIER, *STRUCTURED_ENV, *_STORE_ENV])
            hint = f"did you mean {prefix + meant.upper()}? " if meant else ""
            known = sorted(prefix + n.upper() for n in (*_VERIFIER, *_RULES, *STRUCTURED_ENV, *_STORE_ENV))
            raise ConfigurationError(f"unknown setting; {hint}known settings: {', '.join(known)}", key=full)
        from_env[name] = full
    try:
        return verifier_from_mapping(table, **overrides)
    except ConfigurationError as exc:
        match = re.match(r"^(rules\.)?([a-z_]+)", exc.key or "")
        variable = from_env.get(match.group(2)) if match else None
        if variable is None or match is None or match.group(2) in overrides:
            raise
        # A flat variable holds a whole rule list (the message names the item); a
        # structured one keeps the path inside it (BBVERIFY_POLICIES.deploy.allow[0]).
        rest = "" if match.group(1) or match.group(2) in _VERIFIER else (exc.key or "")[match.end() :]
        raise ConfigurationError(exc.detail, key=variable + rest) from None


def verifier_from_env(
    environ: Mapping[str, Any] | None = None,
    prefix: str = "BBVERIFY_",
    *,
    ignore: Iterable[str] = (),
    **overrides: Any,
) -> Verifier:
    """Build a verifier from ``BBVERIFY_*`` settings.

    ``environ`` defaults to ``os.environ``; any mapping works, for example a
    Flask ``app.config``, whose values may be strings (parsed) or real Python
    values (checked). Keys without ``prefix`` are ignored; keys with it must
    be known settings, except those in ``ignore`` (an adapter's own, such as
    its trusted-proxy setting). ``overrides`` as in :func:`verifier_from_mapping`.
    """
    environ = os.environ if environ is None else environ
    names = _Names(prefix)
    skip = frozenset(ignore)
    verifier_values: dict[str, Any] = {}
    rule_raw: dict[str, Any] = {}
    store_raw: dict[str, Any] = {}
    found: dict[str, tuple[Any, str]] = {}
    for full, name, raw in _our_variables(environ, prefix, skip):
        if name.startswith("key_store_"):
            store_raw[name[len("key_store_") :]] = raw
        elif name in _VERIFIER:
            verifier_values[name] = _coerce(raw, _VERIFIER[name], full, parse_strings=True)
        elif name in _RULES:
            rule_raw[name] = raw
        elif name in STRUCTURED_ENV:
            kind = list if name == "workspace_list" else dict
            found[name] = (_structured(raw, full, kind, True), full)
        else:
            known = sorted(prefix + n.upper() for n in (*_VERIFIER, *_RULES, *STRUCTURED_ENV, *_STORE_ENV))
            other = _other_prefix_hint(full, prefix)
            meant = None if other else _suggest(name, [*_RULES, *_VERIFIER, *STRUCTURED_ENV, *_STORE_ENV])
            hint = f"did you mean {prefix + meant.upper()}? " if meant else ""
            raise ConfigurationError(
                f"unknown setting; {hint}known settings: {', '.join(known)}{other}", key=full
            )
    if store_raw:
        verifier_values["key_store"] = key_store_from_mapping(
            store_raw, spell=lambda key: f"{prefix}KEY_STORE_{key.upper()}"
        )
    rules = _build_rules(_rule_values(rule_raw, names, parse_strings=True), names)
    return _assemble(
        verifier_values, rules, names, dict(overrides), found.get("workspace_list"), found.get("policies")
    )
