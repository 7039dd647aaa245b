"""The benchmark suite runs: ``python -m benchmarks --quick`` exits 0 and prints every section.

The benchmarks compare bbverify with PyJWT and joserfc: both are in the
``test`` extra (and ``bench``), so the documented ``.[test]`` install runs this
test in full; it neither skips nor fails for want of a peer.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_run_prints_every_section() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    headings = ("## 1-4. Per token", "## 5. HTTP", "## 6. Key set under load", "## 7. Gateway", "## Targets")
    for heading in headings:
        assert heading in out, f"{heading!r} missing from:\n{out}"
    for row in ("floor: cryptography RSA verify", "PyJWT jwt.decode", "bbverify repeated, 4 rules"):
        assert row in out


def test_the_test_extra_installs_the_benchmarks_peers() -> None:
    # The documented install is .[test]: the smoke test above must not depend on the bench extra.
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    test = {Requirement(r).name.lower() for r in extras["test"]}
    assert {"pyjwt", "joserfc"} <= test
