"""bbverify.errors: one home for every error class, and a typed set of codes (ErrorCode)."""

from __future__ import annotations

import ast
import json
import pathlib
import re

import pytest

import bbverify
from bbverify import errors, fetch, http, ipranges, jwk, lookup, stores
from bbverify.errors import ErrorCode, InvalidToken, PolicyDenied

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bbverify"
MEMBERS = {member.value for member in ErrorCode}

# Framework carriers: each subclasses an optional framework's own exception so the
# framework renders our answer; errors.py must not import those frameworks.
FRAMEWORK_CARRIERS = {
    ("drf.py", "PipelineAuthError"),
    ("fastapi.py", "PipelineAuthError"),
    ("starlette.py", "PipelineAuthenticationError"),
}


def _sources() -> list[tuple[pathlib.Path, ast.Module]]:
    return [(p, ast.parse(p.read_text(encoding="utf-8"))) for p in sorted(PACKAGE.rglob("*.py"))]


def _code_expressions() -> list[tuple[str, ast.expr]]:
    """Every expression bbverify passes or assigns as an error code, with where it is."""
    found: list[tuple[str, ast.expr]] = []
    for path, tree in _sources():
        where = str(path.relative_to(ROOT))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                found += [(f"{where}:{node.lineno}", kw.value) for kw in node.keywords if kw.arg == "code"]
                func = node.func
                if isinstance(func, ast.Attribute) and func.attr == "_deny" and len(node.args) >= 2:
                    found.append((f"{where}:{node.lineno}", node.args[1]))
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = {t.id for t in targets if isinstance(t, ast.Name)}
                if names & {"default_code", "_code"} and node.value is not None:
                    found.append((f"{where}:{node.lineno}", node.value))
    return found


def test_every_literal_code_raised_in_bbverify_is_an_error_code_member() -> None:
    sites = _code_expressions()
    assert len(sites) > 60  # the scan does see the raise sites
    literal = [
        (where, expr.value)
        for where, expr in sites
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str) and expr.value
    ]
    # Raise sites name members (code=ErrorCode.X), never bare strings.
    assert literal == []
    named = [
        (where, expr.attr)
        for where, expr in sites
        if isinstance(expr, ast.Attribute)
        and isinstance(expr.value, ast.Name)
        and expr.value.id == "ErrorCode"
    ]
    assert len(named) > 60
    assert [(w, a) for w, a in named if a not in ErrorCode.__members__] == []
    # Every member is raised (or is a class default) somewhere: no dead codes.
    assert {ErrorCode[a] for _, a in named} == set(ErrorCode)


def test_undecided_codes_are_members() -> None:
    # ErrorCode is for bbverify's codes; the rules' denial codes are members too.
    from bbverify.policies import UNDECIDED_CODES

    assert set(UNDECIDED_CODES) <= MEMBERS
    assert "policy_error" in UNDECIDED_CODES


def _readme_error_codes() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Error codes\n", 1)[1].split("\n## ", 1)[0]
    codes: list[str] = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.split("|")[3]
        # Drop parenthetical notes (they name scopes, attributes and APIs, not codes).
        depth, kept = 0, []
        for ch in cell:
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
            elif depth == 0:
                kept.append(ch)
        codes += re.findall(r"`([a-z_]+)`", "".join(kept))
    return codes


def test_readme_error_code_table_lists_exactly_the_members() -> None:
    listed = _readme_error_codes()
    assert len(listed) == len(set(listed)), "a code is listed twice"
    assert set(listed) == MEMBERS


def test_error_codes_are_plain_strings_on_the_wire() -> None:
    error = InvalidToken("token has expired", code=ErrorCode.EXPIRED)
    assert error.code == "expired"
    assert str(error) == "expired: token has expired"
    assert repr(error) == "InvalidToken(code='expired', message='token has expired')"
    assert json.dumps({"code": error.code}) == '{"code": "expired"}'
    denied = PolicyDenied("no", code=ErrorCode.IP_NOT_ALLOWED, rule="ip_ranges")
    assert repr(denied) == "PolicyDenied(code='ip_not_allowed', rule='ip_ranges', message='no')"
    assert InvalidToken("x").code is ErrorCode.MALFORMED
    # Custom rules may still deny with a code of their own.
    assert PolicyDenied("no", code="my_own_code").code == "my_own_code"
    assert bbverify.ErrorCode is ErrorCode


@pytest.mark.parametrize(
    ("module", "name"),
    [
        (http, "MissingToken"),
        (http, "InvalidRequest"),
        (fetch, "FetchError"),
        (ipranges, "FeedError"),
        (jwk, "UnusableKey"),
        (lookup, "LookupFailed"),
        (stores, "StoreUnavailable"),
    ],
)
def test_moved_errors_are_the_same_classes_under_their_old_names(module: object, name: str) -> None:
    assert getattr(module, name) is getattr(errors, name)
    assert name in getattr(module, "__all__")
    assert name in errors.__all__


def test_every_error_class_is_defined_in_errors_py() -> None:
    exception_names = {"Exception", "ValueError"} | set(errors.__all__)
    elsewhere = set()
    for path, tree in _sources():
        if path.name == "errors.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                if bases & exception_names or node.name.endswith(("Error", "Denied", "Failed")):
                    elsewhere.add((path.name, node.name))
    assert elsewhere == FRAMEWORK_CARRIERS


def test_configuration_error_carries_its_detail_apart_from_its_key() -> None:
    from bbverify.errors import ConfigurationError

    keyed = ConfigurationError("must be positive: not -1", key="policies.deploy.allow[1].max_minutes")
    assert str(keyed) == "policies.deploy.allow[1].max_minutes: must be positive: not -1"
    assert keyed.detail == "must be positive: not -1"
    bare = ConfigurationError("a: b")
    assert (str(bare), bare.detail, bare.key) == ("a: b", "a: b", None)


def test_a_rule_error_rekeyed_to_the_users_spelling_keeps_its_detail_whole() -> None:
    # _rekey used to strip a "key: " prefix off str(exc); it now re-raises exc.detail.
    from bbverify.config import rules_from_mapping
    from bbverify.errors import ConfigurationError

    with pytest.raises(ConfigurationError) as info:
        rules_from_mapping({"ip_ranges": ["10.0.0.1/8"]})
    assert info.value.key == "rules.ip_ranges[0]"
    assert info.value.detail == (
        "'10.0.0.1/8' has host bits set; write '10.0.0.0/8' for the network "
        "or '10.0.0.1/32' for the one address"
    )
    assert str(info.value) == f"rules.ip_ranges[0]: {info.value.detail}"
    with pytest.raises(ConfigurationError, match=r"^rules\.ip_ranges\[0\]: '10\.0\.0\.300/8' is not an IPv4"):
        rules_from_mapping({"ip_ranges": ["10.0.0.300/8"]})


def test_no_module_takes_an_error_message_apart() -> None:
    # The patterns the re-keying code used before ConfigurationError.detail existed.
    pattern = re.compile(
        r"message\.startswith\(exc\.key|in str\(exc\)|str\(exc\)\.(split|partition|startswith)"
    )
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_the_readme_error_code_example_runs() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Error codes\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1
    exec(compile(blocks[0], "README.md (Error codes)", "exec"), {})
