"""A shortened run of benchmarks/fleet_sim.py: real processes, real stores, an accelerated clock.

The full run (24 simulated hours, figures in the README) is
``python -m benchmarks.fleet_sim``; here 1.25 simulated hours at 600x, with the
key rotation at 36 minutes, keep each run to about ten seconds of wall time.
The limits are the issue's: at most 30 requests in any rolling hour, no
request before a Retry-After, no valid token refused, and the new key accepted
within 5 minutes (shared stores) or within one fetch interval (no store).
"""

from __future__ import annotations

import pytest

from benchmarks.fleet_sim import LIMIT_PER_HOUR, ROTATION_LIMIT, Settings, run

SHORT = {"hours": 1.25, "rotation_hour": 0.6, "speed": 600.0}


@pytest.mark.slow
@pytest.mark.parametrize("store", ["file", "redis"])
def test_sixteen_processes_sharing_a_store_stay_within_the_limits(store: str) -> None:
    report = run(Settings(store=store, processes=16, **SHORT))  # type: ignore[arg-type]
    assert report.requests > 0
    assert report.max_rolling_hour <= LIMIT_PER_HOUR, report.lines()
    assert report.before_retry_after == 0, report.lines()
    assert report.valid_refused == 0, (report.lines(), report.refused_codes)
    assert report.valid_checked > 100
    assert report.rotation_delay is not None and report.rotation_delay <= ROTATION_LIMIT, report.lines()


@pytest.mark.slow
def test_four_processes_without_a_store_stay_within_the_request_limit() -> None:
    # Sized as docs/configuration.md says for 4 processes: one token per
    # 660 s each and no burst, so 4 x (2 + 3600/660) < 30 in any hour (the 2:
    # the first discovery and the bucket's one token at start-up).
    report = run(
        Settings(  # type: ignore[arg-type]
            store="none",
            processes=4,
            fetch_interval=660,
            cooldown=660,
            fetch_burst=1,
            rotation_limit=660 + 60,  # each process follows within its own interval, not 5 min
            **SHORT,
        )
    )
    assert report.max_rolling_hour <= LIMIT_PER_HOUR, report.lines()
    assert report.before_retry_after == 0 and report.received_429 == 0, report.lines()
    assert report.valid_refused == 0, (report.lines(), report.refused_codes)
    assert report.rotation_delay is not None and report.rotation_delay <= 660 + 60, report.lines()
