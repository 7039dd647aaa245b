"""The benchmark suite runs: ``python -m benchmarks --quick`` exits 0 and prints every section.

The benchmarks compare bbverify with PyJWT and joserfc, which only the
``bench`` extra installs (``.[dev]`` includes it; the documented ``.[test]``
install does not): without them the test skips, saying so.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_run_prints_every_section() -> None:
    for module, package in (("jwt", "PyJWT"), ("joserfc", "joserfc")):
        pytest.importorskip(
            module,
            reason=f"the benchmarks' peer {package} is in the 'bench' extra: pip install -e '.[bench]'",
        )
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
