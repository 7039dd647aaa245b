"""Verify one token with plain ``bbverify.verify()`` (no web framework).

In a Bitbucket Pipelines step with ``oidc: true``, or anywhere you hold a token::

    BBVERIFY_WORKSPACE=acme BBVERIFY_WORKSPACE_UUID={...} \\
    python examples/script_verify.py "$BITBUCKET_STEP_OIDC_TOKEN"

Offline, against a fake issuer (a good token and an expired one)::

    python examples/script_verify.py --fake

Exit status: 0 when the token is accepted (with --fake: when both answers are
as expected), 1 when it is refused, 2 on a configuration error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import bbverify
from bbverify.testing import FakeIssuer


def check(token: str, **options: Any) -> bool:
    """Print the verdict for ``token``; True when accepted."""
    try:
        claims = bbverify.verify(token, **options)
    except bbverify.VerificationError as exc:  # the only errors verify() raises
        print(f"refused ({exc.status_code} {exc.code}): {exc.message}")
        return False
    print("accepted:")
    for name, value in claims.summary().items():
        print(f"  {name:12} {value}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("token", nargs="?", help="the token (default: $BITBUCKET_STEP_OIDC_TOKEN)")
    parser.add_argument("--fake", action="store_true", help="mint and verify tokens from a fake issuer")
    args = parser.parse_args(argv)

    if args.fake:
        with FakeIssuer() as issuer:
            options = {"issuer": issuer.issuer, "audience": issuer.audience}
            good = check(issuer.mint(), **options)
            expired = issuer.mint(issued_at=time.time() - 7200, lifetime=3600)
            refused = not check(expired, **options)
        return 0 if good and refused else 1

    token = args.token or os.environ.get("BITBUCKET_STEP_OIDC_TOKEN")
    if not token:
        parser.error("give a token or set BITBUCKET_STEP_OIDC_TOKEN (or use --fake)")
    options = {
        "workspace": os.environ.get("BBVERIFY_WORKSPACE"),
        "workspace_uuid": os.environ.get("BBVERIFY_WORKSPACE_UUID"),
        "audience": os.environ.get("BBVERIFY_AUDIENCE"),
    }
    try:
        accepted = check(token, **{k: v for k, v in options.items() if v})
    except bbverify.ConfigurationError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    return 0 if accepted else 1


if __name__ == "__main__":
    sys.exit(main())
