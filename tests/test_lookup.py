"""``bbverify lookup`` against a fake Bitbucket REST API on loopback: one test per answer."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from email.utils import formatdate

import pytest
from fake_bitbucket import FakeBitbucket, FakeRepo, braced

from bbverify.cli import main
from bbverify.config import verifier_from_mapping

PROD, STAGING, TEST = braced(), braced(), braced()
ENV_VARS = (
    "BITBUCKET_ACCESS_TOKEN",
    "BITBUCKET_EMAIL",
    "BITBUCKET_API_TOKEN",
    "BITBUCKET_USERNAME",
    "BITBUCKET_APP_PASSWORD",
    "BITBUCKET_API_URL",
)


@pytest.fixture(scope="module")
def bitbucket() -> Iterator[FakeBitbucket]:
    with FakeBitbucket(pagelen=2) as server:
        server.add_workspace(
            "acme",
            [
                FakeRepo("api", environments=[("Production", PROD), ("Staging", STAGING), ("Test", TEST)]),
                FakeRepo("docs"),
            ],
        )
        server.allow_basic("me@example.com", "api-token")
        server.allow_basic("me", "app-password")
        server.allow_bearer("access-token")
        yield server


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, bitbucket: FakeBitbucket) -> pytest.MonkeyPatch:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BITBUCKET_API_URL", bitbucket.url)
    monkeypatch.setenv("BITBUCKET_EMAIL", "me@example.com")
    monkeypatch.setenv("BITBUCKET_API_TOKEN", "api-token")
    bitbucket.mode = None
    bitbucket.next_origin = None
    bitbucket.delay = 0.0
    return monkeypatch


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["lookup", "--workspace", "acme", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_found_table_and_ready_toml(
    env: pytest.MonkeyPatch, bitbucket: FakeBitbucket, capsys: pytest.CaptureFixture[str]
) -> None:
    ws_uuid = bitbucket.workspaces["acme"][0]
    api, docs = bitbucket.workspaces["acme"][1]["api"], bitbucket.workspaces["acme"][1]["docs"]
    bitbucket.requests.clear()
    code, out, err = run(capsys, "--repository", "api", "--repository", "docs")
    assert code == 0, err
    audience = "ari:cloud:bitbucket::workspace/" + ws_uuid.strip("{}")
    for text in (ws_uuid, audience, api.uuid, docs.uuid, PROD, STAGING, TEST, "api / Staging"):
        assert text in out
    # Three environments at two a page: the 'next' link was followed once.
    assert [p for p, _ in bitbucket.requests if "environments" in p] == [
        "/2.0/repositories/acme/api/environments",
        "/2.0/repositories/acme/api/environments?page=2",
        "/2.0/repositories/acme/docs/environments",
    ]
    toml_text = out.split("# bbverify.toml", 1)[1].split("\n", 1)[1]
    table = tomllib.loads(toml_text)["bbverify"]
    assert table["workspace_uuid"] == ws_uuid
    assert table["rules"]["repositories"] == [api.uuid, docs.uuid]
    assert table["policies"]["deploy"]["allow"] == [
        {"repositories": [api.uuid], "environments": [PROD, STAGING, TEST]}
    ]
    verifier = verifier_from_mapping(table)  # ready to use as printed
    assert verifier.audiences == {audience} and verifier.policy_names == ("deploy",)


def test_workspace_only_prints_uuid_and_audience(
    env: pytest.MonkeyPatch, bitbucket: FakeBitbucket, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "--format", "toml")
    assert code == 0
    table = tomllib.loads(out)["bbverify"]
    assert table == {"workspace": "acme", "workspace_uuid": bitbucket.workspaces["acme"][0]}


@pytest.mark.parametrize(
    "variables",
    [
        {"BITBUCKET_ACCESS_TOKEN": "access-token"},
        {"BITBUCKET_USERNAME": "me", "BITBUCKET_APP_PASSWORD": "app-password"},
        {"BITBUCKET_EMAIL": "me@example.com", "BITBUCKET_API_TOKEN": "api-token"},
    ],
)
def test_each_kind_of_credential(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variables: dict[str, str]
) -> None:
    env.delenv("BITBUCKET_EMAIL")
    env.delenv("BITBUCKET_API_TOKEN")
    for k, v in variables.items():
        env.setenv(k, v)
    code, _, err = run(capsys, "--format", "table")
    assert code == 0, err


def test_no_credentials_is_a_usage_error(
    env: pytest.MonkeyPatch, bitbucket: FakeBitbucket, capsys: pytest.CaptureFixture[str]
) -> None:
    env.delenv("BITBUCKET_EMAIL")
    env.delenv("BITBUCKET_API_TOKEN")
    bitbucket.requests.clear()
    code, _, err = run(capsys)
    assert code == 2 and "BITBUCKET_API_TOKEN" in err
    env.setenv("BITBUCKET_USERNAME", "me")
    code, _, err = run(capsys)
    assert code == 2 and "BITBUCKET_APP_PASSWORD: is not set, but BITBUCKET_USERNAME is" in err
    assert bitbucket.requests == []


def test_401_wrong_credentials(env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    env.setenv("BITBUCKET_API_TOKEN", "wrong")
    code, out, err = run(capsys)
    assert (code, out) == (1, "")
    assert "refused the credentials (401)" in err and "Atlassian account email" in err


def test_403_missing_scope(
    env: pytest.MonkeyPatch, bitbucket: FakeBitbucket, capsys: pytest.CaptureFixture[str]
) -> None:
    bitbucket.mode = (403, {})
    code, _, err = run(capsys)
    assert code == 1 and "(403)" in err and "scopes" in err


def test_404_unknown_workspace(env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["lookup", "--workspace", "nobody"])
    err = capsys.readouterr().err
    assert code == 1 and "workspace 'nobody' was not found (404)" in err


def test_404_unknown_repository(env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--repository", "nope")
    assert code == 1 and "repository acme/nope was not found (404)" in err


@pytest.mark.parametrize("retry_after", ["120", "date"])
def test_429_rate_limited_says_when_to_retry(
    env: pytest.MonkeyPatch, bitbucket: FakeBitbucket, capsys: pytest.CaptureFixture[str], retry_after: str
) -> None:
    import time

    value = formatdate(time.time() + 120, usegmt=True) if retry_after == "date" else retry_after
    bitbucket.mode = (429, {"Retry-After": value})
    code, _, err = run(capsys)
    assert code == 1 and "rate-limited" in err and "(429)" in err
    seconds = int(err.split("retry in ", 1)[1].split(" s", 1)[0])
    assert 110 <= seconds <= 120


def test_next_link_to_another_origin_is_not_followed(
    env: pytest.MonkeyPatch, bitbucket: FakeBitbucket, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeBitbucket() as elsewhere:
        bitbucket.next_origin = elsewhere.url
        code, _, err = run(capsys, "--repository", "api")
        assert code == 1 and "another origin" in err
        assert elsewhere.requests == []  # the credential never left for the other host


def test_api_url_must_be_https_off_loopback(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("BITBUCKET_API_URL", "http://api.bitbucket.example")
    code, _, err = run(capsys)
    assert code == 2 and "BITBUCKET_API_URL" in err


def test_slow_api_hits_the_deadline(
    env: pytest.MonkeyPatch, bitbucket: FakeBitbucket, capsys: pytest.CaptureFixture[str]
) -> None:
    bitbucket.delay = 1.0
    code, _, err = run(capsys, "--timeout", "0.2")
    assert code == 1 and "cannot reach" in err


def test_bad_repository_slug_is_a_usage_error(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "--repository", "../x")
    assert code == 2 and "not a slug" in err


def test_the_installed_command(bitbucket: FakeBitbucket) -> None:
    environ = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    environ.update(BITBUCKET_API_URL=bitbucket.url, BITBUCKET_ACCESS_TOKEN="access-token")
    bitbucket.mode = None
    result = subprocess.run(
        [sys.executable, "-m", "bbverify", "lookup", "--workspace", "acme", "--format", "table"],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert bitbucket.workspaces["acme"][0] in result.stdout
