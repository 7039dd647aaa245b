"""Near-miss settings are errors with a suggestion, ``verify --config`` layers file, environment
and flags, and ``bbverify inspect``/``verify`` are terminal-safe (issue 11, items 10-12)."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from cli_runner import run_cli as cli

from bbverify import ConfigurationError
from bbverify.config import KNOWN_TABLES, verifier_from_env, verifier_from_layers, verifier_from_toml
from bbverify.testing import FakeIssuer

ROOT = Path(__file__).resolve().parent.parent
OTHER_REPO = "{00000000-0000-0000-0000-000000000001}"


def base_env(issuer: FakeIssuer) -> dict[str, str]:
    return {"BBVERIFY_ISSUER": issuer.issuer, "BBVERIFY_AUDIENCE": issuer.audience}


# -- item 10: environment variables ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("bbverify_repositories", "BBVERIFY_REPOSITORIES"),
        ("Bbverify_REPOSITORIES", "BBVERIFY_REPOSITORIES"),
        ("BBVERIFY_repositories", "BBVERIFY_REPOSITORIES"),
        ("BB_VERIFY_REPOSITORIES", "BBVERIFY_REPOSITORIES"),
        ("BBVERIFY_REPOSITORY", "BBVERIFY_REPOSITORIES"),
        ("bbverify_Leeway", "BBVERIFY_LEEWAY"),
        ("bbverify_policies", "BBVERIFY_POLICIES"),
        ("BBVERIFY_WORKSPACELIST", "BBVERIFY_WORKSPACE_LIST"),
    ],
)
def test_env_near_misses_are_errors_with_a_suggestion(issuer: FakeIssuer, name: str, meant: str) -> None:
    env = {**base_env(issuer), name: OTHER_REPO}
    with pytest.raises(ConfigurationError, match=f"did you mean {meant}") as info:
        verifier_from_env(env)
    assert info.value.key == name


def test_env_unrelated_variables_are_left_alone(issuer: FakeIssuer) -> None:
    env = {**base_env(issuer), "PATH": "/bin", "VERIFY_MODE": "x", "bb_other": "y"}
    assert verifier_from_env(env).issuer == issuer.issuer


def test_flask_config_near_miss_of_an_adapter_setting(issuer: FakeIssuer) -> None:
    env = {**base_env(issuer), "bbverify_trusted_proxies": "1"}
    with pytest.raises(ConfigurationError, match="BBVERIFY_TRUSTED_PROXIES"):
        verifier_from_env(env, ignore=["BBVERIFY_TRUSTED_PROXIES"])


# -- item 10: TOML tables ---------------------------------------------------------------------


def write(tmp_path: Path, issuer: FakeIssuer, extra: str, root: str = "bbverify") -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(f'[{root}]\nissuer = "{issuer.issuer}"\naudience = "{issuer.audience}"\n{extra}')
    return path


@pytest.mark.parametrize(
    ("table", "meant"),
    [
        ("rules", "[bbverify.rules]"),
        ("bbverify_rules", "[bbverify.rules]"),
        ("bbverify-rules", "[bbverify.rules]"),
        ("BBVerify", "[bbverify]"),
        ("bb-verify", "[bbverify]"),
        ("bbverfy", "[bbverify]"),
        ("Rules", "[bbverify.rules]"),
        ("policy", "[bbverify.policies]"),
        ("key-store", "[bbverify.key_store]"),
        ("workspace", "[bbverify.workspaces]"),
    ],
)
def test_toml_near_miss_tables_are_errors(issuer: FakeIssuer, tmp_path: Path, table: str, meant: str) -> None:
    path = write(tmp_path, issuer, f'[{table}]\nrepositories = ["{OTHER_REPO}"]\n')
    with pytest.raises(ConfigurationError, match=f"did you mean {meant.replace('[', '.').replace(']', '.')}"):
        verifier_from_toml(path)


def test_toml_misspelt_root_alone_is_an_error(issuer: FakeIssuer, tmp_path: Path) -> None:
    path = write(tmp_path, issuer, "", root="BBVerify")
    with pytest.raises(ConfigurationError, match=r"\[BBVerify\].*did you mean \[bbverify\]"):
        verifier_from_toml(path)


def test_toml_unrelated_tables_are_left_alone(issuer: FakeIssuer, tmp_path: Path) -> None:
    path = write(tmp_path, issuer, '[server]\nport = 1\n[tool.black]\nx = 1\n[database]\nurl = "x"\n')
    assert verifier_from_toml(path).issuer == issuer.issuer


@pytest.mark.parametrize(("key", "meant"), [("rule", "rules"), ("Rules", "rules"), ("audiance", "audience")])
def test_near_miss_keys_inside_bbverify(issuer: FakeIssuer, tmp_path: Path, key: str, meant: str) -> None:
    value = "{}" if "ule" in key else '"x"'
    path = write(tmp_path, issuer, f"{key} = {value}\n")
    with pytest.raises(ConfigurationError, match=f"did you mean '{meant}'"):
        verifier_from_toml(path)


def test_known_tables_is_the_shared_list() -> None:
    assert set(KNOWN_TABLES) >= {"rules", "policies", "workspaces", "key_store", "serve"}


def test_no_rules_is_said_once_at_start_up(issuer: FakeIssuer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="bbverify"):
        verifier_from_env(base_env(issuer))
    lines = [r for r in caplog.records if "no rules" in r.getMessage()]
    assert len(lines) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bbverify"):
        verifier_from_env({**base_env(issuer), "BBVERIFY_REPOSITORIES": OTHER_REPO})
    assert not [r for r in caplog.records if "no rules" in r.getMessage()]


# -- item 11: file, then environment, then flags --------------------------------------------


def test_layers_env_replaces_file_and_flags_replace_both(issuer: FakeIssuer, tmp_path: Path) -> None:
    path = write(tmp_path, issuer, f'[bbverify.rules]\nrepositories = ["{issuer.repository_uuid}"]\n')
    token = issuer.mint()
    assert verifier_from_layers(path, {}).verify(token)
    refused = verifier_from_layers(path, {"BBVERIFY_REPOSITORIES": OTHER_REPO})
    with pytest.raises(Exception, match="repository"):
        refused.verify(token)
    with pytest.raises(ConfigurationError) as info:
        verifier_from_layers(path, {"BBVERIFY_REPOSITORIES": "not-a-uuid"})
    assert info.value.key == "BBVERIFY_REPOSITORIES"
    with pytest.raises(ConfigurationError, match="did you mean BBVERIFY_REPOSITORIES"):
        verifier_from_layers(path, {"bbverify_repositories": OTHER_REPO})
    # Flags (overrides) win over both.
    assert verifier_from_layers(path, {"BBVERIFY_LEEWAY": "3"}, leeway=7).leeway == 7.0


def test_cli_verify_config_honours_environment(issuer: FakeIssuer, tmp_path: Path) -> None:
    path = write(tmp_path, issuer, "")
    token = issuer.mint()
    assert cli("verify", "-", "--config", str(path), stdin=token).returncode == 0
    denied = cli("verify", "-", "--config", str(path), stdin=token, env={"BBVERIFY_REPOSITORIES": OTHER_REPO})
    assert denied.returncode == 1, denied.stdout + denied.stderr
    misspelt = cli(
        "verify", "-", "--config", str(path), stdin=token, env={"Bbverify_REPOSITORIES": OTHER_REPO}
    )
    assert misspelt.returncode == 2
    assert "did you mean BBVERIFY_REPOSITORIES" in misspelt.stderr
    flags = cli("verify", "-", "--config", str(path), "--audience", "other", stdin=token)
    assert flags.returncode == 1  # the flag replaced the file's audience


# -- item 12: inspect never writes a token's control characters -----------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


ATTACK = "\x1b7\x1b[7A\r\x1b[2KVERIFIED: signature OK\x1b8"
OSC52 = "\x1b]52;c;ZWNobyBwd25lZA==\x07"
OSC0 = "\x1b]0;owned\x1b\\"
C1 = "\x9b31m\x9d0;t\x9c"
BIDI = "safe\u202eexe.txt\u2066x\u2069"


def unsigned(header: dict[str, Any], payload: dict[str, Any]) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.c2ln"


@pytest.mark.parametrize("mode", [[], ["--json"]])
def test_inspect_escapes_everything_from_the_token(mode: list[str]) -> None:
    evil = {ATTACK: 1, "x\x7fy": OSC52}
    header = {"alg": "RS256", OSC0: C1, "typ\x1b[31m": BIDI + "\x7f"}
    payload = {
        "workspaceUuid": ATTACK,
        "repositoryUuid": OSC52,
        "deploymentEnvironmentUuid": OSC0,
        "pipelineUuid": C1,
        "stepUuid": BIDI,
        "branchName": "main\x7f\x08\x08\x08\x08evil",
        "sub": "a:b",
        OSC52: OSC0,
        "nested": evil,
    }
    result = cli("inspect", *mode, unsigned(header, payload))
    assert result.returncode == 0, result.stderr
    for stream in (result.stdout, result.stderr):
        bad = [c for c in stream if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F]
        assert not bad, bad
        assert not any(c in stream for c in "\u202e\u2066\u2069")
    if mode:
        document = json.loads(result.stdout)
        assert document["payload"]["workspaceUuid"] == ATTACK  # escaped on screen, exact in the data
    else:
        assert "NOT VERIFIED" in result.stdout
        assert "\\x1b7\\x1b[7A\\x0d\\x1b[2KVERIFIED: signature OK\\x1b8" in result.stdout
        assert "\\u202e" in result.stdout


def test_cli_flags_are_spelled_exactly(capsys: pytest.CaptureFixture[str]) -> None:
    from bbverify.cli import main

    # argparse would otherwise take --work for --workspace and --iss for --issuer.
    for flag in ("--work", "--iss", "--jwks"):
        assert main(["verify", "a.b.c", flag, "x"]) == 2, flag
        assert "unrecognized arguments" in capsys.readouterr().err


def test_toml_nested_bbverify_table_is_an_error(issuer: FakeIssuer, tmp_path: Path) -> None:
    path = write(tmp_path, issuer, f'[tool.bbverify.rules]\nrepositories = ["{OTHER_REPO}"]\n')
    with pytest.raises(ConfigurationError, match=r"\[tool\.bbverify\].*top-level \[bbverify\]"):
        verifier_from_toml(path)
    # A dependency pin or a key named bbverify elsewhere is not a table: left alone.
    pinned = write(tmp_path, issuer, '[tool.poetry.dependencies]\nbbverify = "^0.1"\n')
    assert verifier_from_toml(pinned).issuer == issuer.issuer


@pytest.mark.parametrize("mode", [[], ["--json"]])
def test_verify_escapes_claims_from_a_signed_token(issuer: FakeIssuer, mode: list[str]) -> None:
    token = issuer.mint(branch=ATTACK + "\x7f" + OSC52)
    env = {"BBVERIFY_ISSUER": issuer.issuer, "BBVERIFY_AUDIENCE": issuer.audience}
    result = cli("verify", "-", *mode, stdin=token, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert not [c for c in output if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F]


def test_layers_structured_variables(issuer: FakeIssuer, tmp_path: Path) -> None:
    path = write(tmp_path, issuer, "")
    policies = json.dumps({"deploy": {"allow": [{"repositories": [issuer.repository_uuid]}]}})
    verifier = verifier_from_layers(path, {"BBVERIFY_POLICIES": policies})
    assert verifier.verify(issuer.mint(), policy="deploy")
    bad = json.dumps({"deploy": {"allow": [{"repositories": ["nope"]}]}})
    with pytest.raises(ConfigurationError) as info:
        verifier_from_layers(path, {"BBVERIFY_POLICIES": bad})
    assert (info.value.key or "").startswith("BBVERIFY_POLICIES.deploy.allow[0]")
