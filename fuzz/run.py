"""The long fuzz run: the properties of tests/fuzz with as many examples as you ask for.

    .venv/bin/python fuzz/run.py --examples 200000

Splits the examples between mutated valid tokens, JSON-headed tokens and
arbitrary inputs, runs them in chunks (a fresh seed per chunk keeps
hypothesis's bookkeeping small), prints how many inputs ran, and exits
non-zero with hypothesis's minimal failing example on the first violation.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from hypothesis import HealthCheck, given, seed, settings

ROOT = Path(__file__).resolve().parents[1]
SHARE = {"mutated": 0.5, "json": 0.25, "arbitrary": 0.25}


def _load_properties() -> ModuleType:
    # Loaded by path: tests/ is not an installed package.
    path = ROOT / "tests" / "fuzz" / "properties.py"
    spec = importlib.util.spec_from_file_location("bbverify_fuzz_properties", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _run_chunk(target: Any, strategy: Any, count: int, chunk_seed: int) -> None:
    @seed(chunk_seed)
    @settings(max_examples=count, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(candidate=strategy)
    def run(candidate: object) -> None:
        target.check(candidate)

    run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=30000, help="total inputs to try (default 30000)")
    parser.add_argument("--chunk", type=int, default=5000, help="examples per hypothesis run (default 5000)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a fresh one, printed)")
    args = parser.parse_args(argv)
    run_seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)

    props = _load_properties()
    from bbverify.testing import FakeIssuer

    started = time.monotonic()
    total = 0
    print(f"fuzzing Verifier.verify with {args.examples} examples, seed {run_seed}", flush=True)
    with FakeIssuer() as issuer:
        target = props.FuzzTarget(issuer)
        strategies = {
            "mutated": props.mutated_tokens(target.valid),
            "json": props.json_tokens(target.kid),
            "arbitrary": props.arbitrary_inputs(target.kid),
        }
        for index, (name, strategy) in enumerate(strategies.items()):
            wanted = max(1, int(args.examples * SHARE[name]))
            before, t0, chunk = target.runs, time.monotonic(), 0
            while target.runs - before < wanted:
                count = min(args.chunk, wanted - (target.runs - before))
                _run_chunk(target, strategy, count, (run_seed + 1000 * index + chunk) % 2**32)
                chunk += 1
            ran = target.runs - before
            total += ran
            print(f"  {name:<10} {ran:>8} inputs in {time.monotonic() - t0:7.1f}s", flush=True)
        for token in target.valid:
            target.verifier.verify(token)
    print(f"ok: {total} inputs, no violation, {time.monotonic() - started:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
