"""Interleaved timing: every case runs once per round, so slow drift hits all alike."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Case:
    """One measured thing: ``setup`` (untimed) then ``run``, which returns its op count."""

    name: str
    run: Callable[[], int]
    setup: Callable[[], None] | None = None


@dataclass
class Result:
    name: str
    per_op_ns: list[float]

    @property
    def median_us(self) -> float:
        return statistics.median(self.per_op_ns) / 1000.0

    @property
    def spread(self) -> float:
        """Relative spread of the rounds (max/min - 1), a rough noise indicator."""
        return max(self.per_op_ns) / min(self.per_op_ns) - 1.0


def measure(cases: list[Case], rounds: int, warmup: int = 1) -> dict[str, Result]:
    """Run every case ``warmup + rounds`` times, interleaved; keep the last ``rounds``."""
    results = {c.name: Result(c.name, []) for c in cases}
    gc.collect()
    for i in range(warmup + rounds):
        for case in cases:
            if case.setup is not None:
                case.setup()
            gc.disable()  # a collection landing in one case's batch would skew it
            try:
                start = time.perf_counter_ns()
                ops = case.run()
                elapsed = time.perf_counter_ns() - start
            finally:
                gc.enable()
            if i >= warmup:
                results[case.name].per_op_ns.append(elapsed / ops)
    return results
