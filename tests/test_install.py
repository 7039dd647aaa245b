"""A fresh virtual environment, a plain ``pip install``, and ``bbverify demo`` from there.

This is the README's first command, proving the package installs from its own
metadata alone (no extras, nothing installed by hand) and the demo works offline.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_fresh_venv_install_runs_the_demo(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("BBVERIFY_", "VIRTUAL_ENV", "PYTHONPATH"))
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    install = subprocess.run(
        [str(bindir / "python"), "-m", "pip", "install", "-q", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    # Run from outside the checkout so the installed package, not the source tree, is used.
    demo = subprocess.run(
        [str(bindir / "bbverify"), "demo"], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "all scenarios got the expected answer" in demo.stdout
    where = subprocess.run(
        [str(bindir / "python"), "-c", "import bbverify; print(bbverify.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert str(venv) in where.stdout
