"""Issue 10, item 5: the lowest-versions constraints file pins exactly pyproject.toml's floors.

CI installs with ``.ci/constraints-lowest.txt`` and runs the whole suite, so
a floor is only proven if it is pinned there. This test covers whatever
pyproject.toml declares (core dependencies and every extra, including ones
added later): each requirement must have a lower bound (``>=`` or ``==``),
and the constraints file must pin that same version, and nothing else.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / ".ci" / "constraints-lowest.txt"


def _requirements() -> list[tuple[str, Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [("dependencies", Requirement(r)) for r in project["dependencies"]]
    for extra, reqs in project.get("optional-dependencies", {}).items():
        found += [(f"optional-dependencies.{extra}", Requirement(r)) for r in reqs]
    return [(where, r) for where, r in found if canonicalize_name(r.name) != "bbverify"]


def _floor(req: Requirement) -> Version | None:
    floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "==")]
    return max(floors) if floors else None


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{line!r} must be an exact pin"
        name = canonicalize_name(req.name)
        assert name not in pins, f"{req.name} pinned twice"
        pins[name] = Version(specs[0].version)
    return pins


def test_every_requirement_has_a_floor() -> None:
    missing = [f"{where}: {req}" for where, req in _requirements() if _floor(req) is None]
    assert not missing, f"requirements without a lower bound: {missing}"


def test_constraints_pin_exactly_the_floors() -> None:
    pins = _pins()
    wrong = []
    named = set()
    for where, req in _requirements():
        name = canonicalize_name(req.name)
        named.add(name)
        floor = _floor(req)
        if floor is None:
            continue
        if pins.get(name) != floor:
            wrong.append(f"{where}: {req} but {CONSTRAINTS.name} has {pins.get(name)}")
    assert not wrong, "floors and constraints disagree:\n" + "\n".join(wrong)
    stale = sorted(set(pins) - named)
    assert not stale, f"{CONSTRAINTS.name} pins packages pyproject.toml does not name: {stale}"


def test_ci_runs_the_suite_with_the_lowest_constraints() -> None:
    run = (ROOT / ".ci" / "run").read_text()
    assert "constraints-lowest.txt" in run
