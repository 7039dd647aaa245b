"""The ``bbverify`` command, run as a subprocess: exit codes, output, bad input."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from cli_runner import run_cli as run

from bbverify.testing import FakeIssuer

ROOT = Path(__file__).resolve().parent.parent


def test_help_lists_every_command_with_examples() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("demo", "inspect", "verify", "ip-ranges"):
        assert command in result.stdout
    for command in ("demo", "inspect", "verify", "ip-ranges"):
        sub = run(command, "--help")
        assert sub.returncode == 0, command
        assert "example" in sub.stdout, command


def test_no_command_is_a_usage_error() -> None:
    result = run()
    assert result.returncode == 2
    assert "usage" in result.stderr


def test_unknown_option_is_a_usage_error() -> None:
    result = run("verify", "--no-such-flag")
    assert result.returncode == 2


def test_inspect_shows_claims_dates_and_banner(issuer: FakeIssuer) -> None:
    token = issuer.mint(environment_uuid=issuer.environment_uuid, lifetime=240)
    result = run("inspect", token)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "NOT VERIFIED" in out
    assert issuer.repository_uuid in out
    assert issuer.environment_uuid in out
    assert "deployment step" in out
    assert "in 4 min" in out or "in 3 min" in out
    assert "Traceback" not in out + result.stderr


def test_inspect_reads_stdin_and_strips_bearer(issuer: FakeIssuer) -> None:
    token = issuer.mint()
    result = run("inspect", "-", "--json", stdin=f"Bearer {token}\n")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["verified"] is False
    assert data["payload"]["repositoryUuid"] == issuer.repository_uuid
    assert data["header"]["alg"] == "RS256"


@pytest.mark.parametrize("junk", ["not-a-token", "a.b.c", "!!!.@@@.###", "x" * 50, "e30.W10.sig"])
def test_inspect_malformed_input_is_a_clean_error(junk: str) -> None:
    result = run("inspect", junk)
    assert result.returncode == 1
    assert "cannot decode token" in result.stderr
    assert "Traceback" not in result.stderr


def test_inspect_shows_expired_token_as_expired(issuer: FakeIssuer) -> None:
    token = issuer.mint(issued_at=time.time() - 7200, lifetime=600)
    result = run("inspect", token)
    assert result.returncode == 0
    assert "expired" in result.stdout
    assert "ago" in result.stdout


def test_verify_accepts_a_valid_token(issuer: FakeIssuer) -> None:
    token = issuer.mint()
    result = run("verify", token, "--issuer", issuer.issuer, "--audience", issuer.audience)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ACCEPTED" in result.stdout
    assert issuer.repository_uuid in result.stdout


def test_verify_json_reports_the_decision_code(issuer: FakeIssuer) -> None:
    token = issuer.mint()
    ok = run("verify", token, "--issuer", issuer.issuer, "--audience", issuer.audience, "--json")
    assert ok.returncode == 0
    assert json.loads(ok.stdout)["code"] == "ok"
    bad = run("verify", token, "--issuer", issuer.issuer, "--audience", "someone-else", "--json")
    assert bad.returncode == 1
    data = json.loads(bad.stdout)
    assert data == {**data, "accepted": False, "code": "audience_mismatch", "status": 401}


def test_verify_rejects_expired_and_tampered(issuer: FakeIssuer) -> None:
    expired = issuer.mint(issued_at=time.time() - 7200, lifetime=600)
    result = run("verify", expired, "--issuer", issuer.issuer, "--audience", issuer.audience, "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["code"] == "expired"
    token = issuer.mint()
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    result = run("verify", tampered, "--issuer", issuer.issuer, "--audience", issuer.audience, "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["code"] in ("bad_signature", "malformed")


def test_verify_reads_environment_configuration(issuer: FakeIssuer) -> None:
    token = issuer.mint()
    env = {"BBVERIFY_ISSUER": issuer.issuer, "BBVERIFY_AUDIENCE": issuer.audience}
    result = run("verify", "-", "--json", stdin=token, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    # A rule from the environment applies too.
    env["BBVERIFY_REPOSITORIES"] = "{00000000-0000-0000-0000-000000000001}"
    denied = run("verify", "-", "--json", stdin=token, env=env)
    assert denied.returncode == 1
    assert json.loads(denied.stdout)["status"] == 403


def test_verify_reads_a_config_file(issuer: FakeIssuer, tmp_path: Path) -> None:
    config = tmp_path / "bbverify.toml"
    config.write_text(
        f'[bbverify]\nissuer = "{issuer.issuer}"\naudience = ["{issuer.audience}"]\n'
        f'[bbverify.rules]\nrepositories = ["{issuer.repository_uuid.strip("{}").upper()}"]\n'
    )
    result = run("verify", issuer.mint(), "--config", str(config), "--json")
    assert result.returncode == 0, result.stdout + result.stderr


def test_verify_configuration_errors_exit_2() -> None:
    missing = run("verify", "a.b.c")
    assert missing.returncode == 2
    assert "configuration error" in missing.stderr
    bad_uuid = run(
        "verify",
        "a.b.c",
        "--workspace",
        "acme",
        "--audience",
        "x",
        env={"BBVERIFY_REPOSITORIES": "not-a-uuid"},
    )
    assert bad_uuid.returncode == 2
    assert "BBVERIFY_REPOSITORIES" in bad_uuid.stderr
    no_file = run("verify", "a.b.c", "--config", "/nonexistent/bbverify.toml")
    assert no_file.returncode == 2
    for result in (missing, bad_uuid, no_file):
        assert "Traceback" not in result.stderr


def test_verify_keys_unavailable_is_rejected_not_a_crash() -> None:
    with FakeIssuer() as fake:
        token = fake.mint()
        fake.fail("500")
        result = run("verify", token, "--issuer", fake.issuer, "--audience", fake.audience, "--json")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["code"] == "keys_unavailable"
    assert data["status"] == 503


FEED = ROOT / "tests" / "fixtures" / "atlassian-ip-ranges.json"


def test_ip_ranges_from_file_filters_product_and_direction(tmp_path: Path) -> None:
    result = run("ip-ranges", "--source", str(FEED))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert lines, "the fixture has bitbucket egress ranges"
    feed = json.loads(FEED.read_text())
    expected = {
        item["cidr"]
        for item in feed["items"]
        if "bitbucket" in item["product"] and "egress" in item["direction"]
    }
    assert set(lines) == expected
    out = tmp_path / "ranges.json"
    written = run("ip-ranges", "--source", str(FEED), "--format", "json", "-o", str(out))
    assert written.returncode == 0
    assert set(json.loads(out.read_text())) == expected


def test_ip_ranges_bad_source_is_a_clean_error(tmp_path: Path) -> None:
    missing = run("ip-ranges", "--source", str(tmp_path / "none.json"))
    assert missing.returncode != 0
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    bad = run("ip-ranges", "--source", str(junk))
    assert bad.returncode != 0
    insecure = run("ip-ranges", "--source", "http://example.com/feed.json")
    assert insecure.returncode != 0
    for result in (missing, bad, insecure):
        assert "Traceback" not in result.stderr


def test_demo_runs_every_scenario_as_expected() -> None:
    result = run("demo")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all scenarios got the expected answer" in result.stdout
    for name in ("allowed build step", "another repository", "expired token", "spoofed X-Forwarded-For"):
        assert name in result.stdout


def test_demo_json_output() -> None:
    result = run("demo", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["ok"] is True
    statuses = {row["status"] for row in data["results"]}
    assert statuses == {200, 401, 403, 503}
    assert all(row["ok"] for row in data["results"])


@pytest.mark.parametrize("missing", ["prometheus_client", "uvicorn"])
def test_serve_without_the_serve_extra_is_one_line_naming_it_and_exit_2(
    missing: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A core-only install (f02): no traceback, the extra and the install line from a checkout."""
    from bbverify.cli import main

    config = tmp_path / "gw.toml"
    config.write_text(
        '[bbverify]\nissuer = "http://127.0.0.1:9/2.0/workspaces/acme/pipelines-config/identity/oidc"\n'
        'workspace_uuid = "{0f2b0d1e-8c4e-4b9a-9a57-5a3c2d1e0f00}"\n'
        '[bbverify.serve]\nprotocol = "nginx"\n[[bbverify.serve.routes]]\npath_prefix = "/"\n'
    )
    # Hide the module as an install without it would, and drop bbverify's
    # modules that import it so that they are imported again.
    monkeypatch.setitem(sys.modules, missing, None)
    for name in ("bbverify.serve", "bbverify.gateway", "bbverify.metrics"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert main(["serve", "--config", str(config), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert missing in err and "pip install -e '.[serve]'" in err
