"""Shared by the gateway tests: gateways over a fake issuer, an echo upstream, the docs' proxy recipes.

The proxies themselves run through the shared harness in tests/servers.py
(``serve_nginx``, ``serve_caddy``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
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


DOCS = Path(__file__).resolve().parent.parent / "docs"


def require(binary: str) -> None:
    """Skip (with the reason) when ``binary`` is not installed; under CI=true, fail instead."""
    if shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/local/sbin:/usr/bin"):
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{binary} is not installed; CI must run the real-proxy tests (.ci/run installs it)")
    pytest.skip(f"{binary} is not installed on this machine (apt-get install {binary})")


def doc_block(marker: str, doc: str = "gateway.md") -> str:
    """The fenced block that follows ``<!-- marker ...-->`` in a doc (the recipe the docs show)."""
    text = (DOCS / doc).read_text()
    m = re.search(r"<!-- " + re.escape(marker) + r"\b[^>]*-->\s*```[a-z]*\n(.*?)```", text, re.S)
    if m is None:
        raise AssertionError(f"docs/{doc} has no block marked {marker!r}")
    return m.group(1)


def nginx_recipe(gateway: str, upstream: str) -> tuple[str, str]:
    """docs/gateway.md's nginx recipe as ``(http_extra, locations)`` for ``servers.serve_nginx``.

    The recipe is an ``upstream`` block and a ``server`` block; the harness
    writes its own ``server`` (and ``listen``), so the server's body minus its
    ``listen`` line becomes the locations. The addresses are replaced.
    """
    block = doc_block("gateway-nginx").replace("127.0.0.1:9180", gateway).replace("127.0.0.1:8000", upstream)
    head, _, server = block.partition("\nserver {")
    assert server, "the nginx recipe has no server block"
    body = server.rstrip().removesuffix("}")
    body = re.sub(r"^\s*listen 127\.0\.0\.1:8080;\n", "", body, count=1, flags=re.M)
    assert "listen" not in body
    return head, body
