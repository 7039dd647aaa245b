"""The audit log line escapes control characters in claim values, so a CR/LF in a claim cannot
forge a second log line; structured consumers still get the exact value.

The line is logfmt: a client-chosen path cannot add fields (core review, f03).
Regression tests from the adversarial and core reviews (each failed before its fix).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest

from bbverify.asgi import PipelineAuthMiddleware as ASGIMiddleware
from bbverify.audit import AUDIT_LOGGER, Decision, emit
from bbverify.errors import VerificationError
from bbverify.testing import FakeIssuer


def test_audit_log_escapes_control_characters_in_claims(
    issuer: FakeIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    # Claim values reach the audit line; a CR/LF in one must not forge a second line.
    repo = "{1de489be-0000-4000-8000-000000000001}\nallow code=ok repository=forged"
    step = "{1de489be-0000-4000-8000-000000000002}"
    token = issuer.mint(repository_uuid=repo, step_uuid=step)
    verifier = issuer.verifier()
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER.name):
        verifier.verify(token)
    lines = [r.getMessage() for r in caplog.records if r.name == AUDIT_LOGGER.name]
    assert len(lines) == 1
    assert "\n" not in lines[0] and "\r" not in lines[0]
    assert "\\n" in lines[0]
    # Structured consumers still get the exact value.
    record = next(r for r in caplog.records if r.name == AUDIT_LOGGER.name)
    assert record.bbverify["repository"] == repo  # type: ignore[attr-defined]


# -- f03: the audit line is logfmt, every value quoted when it needs to be -------------------


_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def _parse_line(line: str) -> tuple[str, list[tuple[str, str]]]:
    verdict, _, rest = line.partition(" ")
    fields = [(k, json.loads(v) if v.startswith('"') else v) for k, v in _FIELD.findall(rest)]
    # Nothing but fields: the whole line is consumed by the parser.
    assert _FIELD.sub("", rest).strip() == ""
    return verdict, fields


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def audit_lines() -> Iterator[list[str]]:
    handler = _Lines()
    AUDIT_LOGGER.addHandler(handler)
    level = AUDIT_LOGGER.level
    AUDIT_LOGGER.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        AUDIT_LOGGER.removeHandler(handler)
        AUDIT_LOGGER.setLevel(level)


@pytest.mark.parametrize(
    "path",
    [
        "/x allow code=ok client_ip=203.0.113.9",
        '/x" client_ip="203.0.113.9',
        "/x\\\" client_ip=1",
        "/x\r\nallow code=ok",
        "/x\u2028allow code=ok\u0085",
        "/caf\u00e9 =",
        "None",
        "",
    ],
)
def test_client_chosen_path_cannot_add_fields(audit_lines: list[str], path: str) -> None:
    error = VerificationError("no token", code="missing_token")
    emit(Decision.build(None, "198.51.100.7", error, method="GET", path=path), None)
    (line,) = audit_lines
    assert "\n" not in line and "\r" not in line and line.isascii()
    assert line.count("client_ip=") == 1 and " allow " not in line and "code=ok" not in line
    verdict, fields = _parse_line(line)
    assert verdict == "deny"
    assert [k for k, _ in fields] == [
        "code", "rule", "repository", "environment", "pipeline", "step", "client_ip", "method", "path",
        "workspace", "policy",
    ]  # fmt: skip
    assert dict(fields)["path"] == path and dict(fields)["client_ip"] == "198.51.100.7"


def test_asgi_request_path_is_one_field(audit_lines: list[str], issuer: FakeIssuer) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("refused requests never reach the app")

    middleware = ASGIMiddleware(app, verifier=issuer.verifier())
    scope = {"type": "http", "method": "GET", "path": "/x allow code=ok client_ip=203.0.113.9",
             "root_path": "", "headers": [], "client": ("198.51.100.7", 5555),
             "server": ("127.0.0.1", 80)}  # fmt: skip
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    assert sent[0]["status"] == 401
    verdict, fields = _parse_line(audit_lines[-1])
    assert verdict == "deny" and dict(fields)["path"] == scope["path"]
    assert [k for k, _ in fields].count("client_ip") == 1


def test_plain_values_stay_bare(audit_lines: list[str], issuer: FakeIssuer) -> None:
    issuer.verifier().verify(issuer.mint(), client_ip="192.0.2.1", method="POST", path="/deploy/v1")
    line = audit_lines[-1]
    assert line.startswith("allow code=ok rule=None repository={")
    assert "client_ip=192.0.2.1 method=POST path=/deploy/v1 workspace=" in line
