"""Error messages that point at the fix (issue 17).

Audience, bare UUIDs, token-passing mistakes, leeway, repr, async warm-up, WebSocket close reason.
"""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

import pytest

from bbverify import ConfigurationError, InvalidToken, KeysUnavailable, StaticKeySet, Verifier
from bbverify.policies import Repositories, StepDuration
from bbverify.testing import FakeIssuer

UUID = "0f2b0d1e-8c4e-4b9a-9a57-5a3c2d1e0f00"


def test_audience_mismatch_names_the_configured_audience(issuer: FakeIssuer) -> None:
    verifier = issuer.verifier(audience="ari:cloud:bitbucket::workspace/" + UUID)
    with pytest.raises(InvalidToken) as caught:
        verifier.verify(issuer.mint())
    assert caught.value.code == "audience_mismatch"
    assert f"'ari:cloud:bitbucket::workspace/{UUID}'" in caught.value.message


@pytest.mark.parametrize("bare", [UUID, "{" + UUID.upper() + "}"])
def test_bare_uuid_audience_is_refused_with_the_fix(bare: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Verifier(workspace="acme", audience=bare)
    message = str(caught.value)
    assert caught.value.key == "audience"
    assert f"workspace_uuid={UUID!r}" in message
    assert f"'ari:cloud:bitbucket::workspace/{UUID}'" in message
    with pytest.raises(ConfigurationError):
        Verifier(workspace="acme", audience=["my-gate", bare])


def test_real_audiences_still_build() -> None:
    assert Verifier(workspace="acme", audience="ari:cloud:bitbucket::workspace/" + UUID).audiences
    assert Verifier(workspace="acme", audience=["deploy-gate", "api://" + UUID]).audiences


@pytest.mark.parametrize(
    ("mangle", "expected"),
    [
        (lambda t: "Bearer " + t, "starts with 'Bearer '"),
        (lambda t: "bearer " + t, "starts with 'Bearer '"),
        (lambda t: t + "\n", "trailing whitespace"),
        (lambda t: " " + t, "leading or trailing whitespace"),
        (lambda t: "", "token is empty"),
        (lambda t: "Bearer Bearer " + t, "starts with 'Bearer '"),
        (lambda t: f'"{t}"', "wrapped in quotes"),
        (lambda t: f"'{t}'", "wrapped in quotes"),
        (lambda t: t + '"', "wrapped in quotes"),
        (lambda t: f"\u201c{t}\u201d", "wrapped in quotes"),
        (lambda t: t[:30] + "\n" + t[30:], "whitespace inside it"),
        (lambda t: t[: t.index(".") + 40] + " " + t[t.index(".") + 40 :], "whitespace inside it"),
        (lambda t: t[:-20] + "\r\n" + t[-20:], "whitespace inside it"),
        (lambda t: "$BITBUCKET_STEP_OIDC_TOKEN", "name of a shell variable"),
        (lambda t: "<token>", "placeholder"),
        (lambda t: "Authorization: Bearer " + t, "without the header name"),
    ],
)
def test_token_passing_mistakes_name_the_cause(issuer: FakeIssuer, mangle, expected: str) -> None:
    verifier = issuer.verifier()
    token = issuer.mint()
    with pytest.raises(InvalidToken) as caught:
        verifier.verify(mangle(token))
    assert caught.value.code == "malformed"
    assert expected in caught.value.message
    assert "base64url" not in caught.value.message
    assert token[:30] not in caught.value.message and token[-30:] not in caught.value.message


def test_leeway_accepts_a_timedelta(issuer: FakeIssuer) -> None:
    verifier = issuer.verifier(leeway=timedelta(seconds=30))
    assert verifier.leeway == 30.0
    # An expiry 20 s ago is inside the 30 s leeway.
    import time

    verifier.verify(issuer.mint(issued_at=time.time() - 620, lifetime=600))
    with pytest.raises(ConfigurationError, match="leeway"):
        issuer.verifier(leeway=timedelta(minutes=6))


def test_repr_shows_settings_and_never_keys(issuer: FakeIssuer) -> None:
    verifier = issuer.verifier(policies=[Repositories(issuer.repository_uuid), StepDuration(max_minutes=120)])
    text = repr(verifier)
    assert text.startswith("Verifier(issuer=" + repr(issuer.issuer))
    assert repr(issuer.audience) in text
    assert "Repositories" in text and "StepDuration" in text
    assert "RemoteKeySet(discovery='" + issuer.issuer + "/.well-known/openid-configuration')" in text
    verifier.warm_up()
    text = repr(verifier)
    assert "RemoteKeySet(jwks_url='" + issuer.jwks_url + "')" in text
    jwk = issuer.signing_key.public_jwk()
    assert jwk["n"][:40] not in text and issuer.signing_key.kid not in text
    jwks = {"keys": [issuer.signing_key.public_jwk()]}
    static = Verifier(issuer=issuer.issuer, audience="x", keys=StaticKeySet(jwks))
    assert re.search(r"keys=StaticKeySet\)$", repr(static))


def test_awarm_up_fetches_on_the_loop_without_blocking_it() -> None:
    with FakeIssuer() as fake:
        verifier = fake.verifier()

        async def lifespan() -> int:
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                for _ in range(1000):
                    ticks += 1
                    await asyncio.sleep(0.001)

            task = asyncio.create_task(ticker())
            fake.fail("slow", delay=0.3)
            await verifier.awarm_up()
            task.cancel()
            return ticks

        ticks = asyncio.run(lifespan())
        assert ticks > 10  # the loop kept running while the fetch waited
        assert fake.jwks_requests == 1
        verifier.verify(fake.mint())

        fake.fail("500")
        down = fake.verifier()
        with pytest.raises(KeysUnavailable):
            asyncio.run(down.awarm_up())


def test_websocket_refusal_carries_the_error_code_as_close_reason(issuer: FakeIssuer) -> None:
    import time
    from typing import Any

    from bbverify.asgi import PipelineAuthMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the app must not be reached")

    middleware = PipelineAuthMiddleware(app, verifier=issuer.verifier())
    expired = issuer.mint(issued_at=time.time() - 7200)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "path": "/ws",
        "headers": [(b"authorization", b"Bearer " + expired.encode())],
        "client": ("127.0.0.1", 5000),
    }
    asyncio.run(middleware(scope, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "expired"}]


def test_flask_configuration_errors_name_the_users_keys() -> None:
    from flask import Flask

    from bbverify.flask import BBVerify

    for config, key in (
        ({"BBVERIFY_WORKSPACE": "Acme Corp", "BBVERIFY_AUDIENCE": "gate"}, "BBVERIFY_WORKSPACE"),
        ({"BBVERIFY_WORKSPACE": "acme"}, "BBVERIFY_AUDIENCE"),
        ({"BBVERIFY_WORKSPACE": "acme", "BBVERIFY_WORKSPACE_UUID": "nope"}, "BBVERIFY_WORKSPACE_UUID"),
    ):
        app = Flask(__name__)
        app.config.update(config)
        with pytest.raises(ConfigurationError) as caught:
            BBVerify(app)
        assert caught.value.key == key
        assert str(caught.value).startswith(key + ": ")
    # The missing audience names both ways out, spelled as app.config keys.
    app = Flask(__name__)
    app.config.update(BBVERIFY_WORKSPACE="acme")
    with pytest.raises(ConfigurationError, match="or set BBVERIFY_WORKSPACE_UUID"):
        BBVerify(app)


def test_rules_from_env_prefix_collision_explains_itself() -> None:
    from bbverify.config import rules_from_env, verifier_from_env

    repo = "{1de489be-0b3c-4c26-9f5e-6a1d0f1c2b3a}"
    environ = {"BBVERIFY_REPOSITORIES": repo, "BBVERIFY_DEPLOY_REPOSITORIES": repo}
    assert len(rules_from_env(environ, prefix="BBVERIFY_DEPLOY_")) == 1
    with pytest.raises(ConfigurationError) as caught:
        rules_from_env(environ)
    message = str(caught.value)
    assert caught.value.key == "BBVERIFY_DEPLOY_REPOSITORIES"
    assert "under another prefix, 'BBVERIFY_DEPLOY_'" in message
    assert "'DEPLOY_BBVERIFY_'" in message and "ignore=" in message
    with pytest.raises(ConfigurationError, match="under another prefix"):
        verifier_from_env({"BBVERIFY_WORKSPACE": "acme", "BBVERIFY_AUDIENCE": "gate", **environ})
    # The way out the message names works.
    assert len(rules_from_env(environ, ignore=["BBVERIFY_DEPLOY_REPOSITORIES"])) == 1
    # A plain typo gets no prefix story.
    with pytest.raises(ConfigurationError) as typo:
        rules_from_env({"BBVERIFY_REPOSITORIEZ": repo})
    assert "another prefix" not in str(typo.value)
