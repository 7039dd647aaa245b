"""Shared by the gateway tests: gateways over a fake issuer, an echo upstream."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from bbverify import Verifier
from bbverify.gateway import Gateway, serve_settings
from bbverify.metrics import VerifierMetrics
from bbverify.policies import Rule
from bbverify.testing import FakeIssuer


def make_gateway(
    fake: FakeIssuer,
    serve: Mapping[str, Any],
    *,
    named: Mapping[str, Rule | Sequence[Rule]] | None = None,
    **options: Any,
) -> Gateway:
    """A Gateway for ``fake`` with its own metrics registry."""
    options.setdefault("issuer", fake.issuer)
    options.setdefault("audience", fake.audience)
    verifier = Verifier(named_policies=named or None, **options)
    return Gateway(verifier, serve_settings(serve), metrics=VerifierMetrics(CollectorRegistry()))


class EchoUpstream:
    """A trivial upstream: answers 200 with the method, path and headers it received, as JSON.

    ``seen`` keeps every request's headers (lower-case names), so a test can
    prove what did, and did not, reach the upstream.
    """

    def __init__(self) -> None:
        self.seen: list[dict[str, list[str]]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers: dict[str, list[str]] = {}
        for k, v in scope["headers"]:
            headers.setdefault(k.decode("latin-1").lower(), []).append(v.decode("latin-1"))
        self.seen.append(headers)
        body = json.dumps({"method": scope["method"], "path": scope["path"], "headers": headers}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
