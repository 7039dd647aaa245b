"""Runs the ``bbverify`` command in a child process, as a user's shell would (one shared harness).

The child gets this process's environment without any ``BBVERIFY*`` variable
(in any case, so a developer's own settings never leak into a test), plus the
variables a test passes and ``NO_COLOR=1``; it runs from the repository root.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["ROOT", "cli_env", "run_cli"]

ROOT = Path(__file__).resolve().parent.parent

#: The longest one command may run (seconds).
TIMEOUT = 60


def cli_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """A child ``bbverify``'s environment: ours without ``BBVERIFY*``, then ``env``, then ``NO_COLOR=1``."""
    full = {k: v for k, v in os.environ.items() if not k.upper().startswith("BBVERIFY")}
    full.update(env or {})
    full["NO_COLOR"] = "1"  # last: plain output whatever the test passes
    return full


def run_cli(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m bbverify *args`` with ``stdin`` as input; output captured as text, bounded in time."""
    return subprocess.run(
        [sys.executable, "-m", "bbverify", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=cli_env(env),
        cwd=ROOT,
    )
