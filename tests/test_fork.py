"""Issue 10, item 1: a forked child behaves like a fresh process.

A parent forks while a background load is in flight (gunicorn ``--preload``,
``multiprocessing`` with fork). The child inherits the in-flight future and
the lock but not the thread; it must start its own load and get keys (or IP
ranges) once the source answers. Children report through a pipe and always
leave with ``os._exit``.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
import warnings
from collections.abc import Callable

import pytest
from misbehaving import misbehaving

from bbverify import KeysUnavailable
from bbverify.ipranges import AtlassianIPRanges
from bbverify.testing import FakeIssuer

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

FEED = {"items": [{"cidr": "192.0.2.0/24", "product": ["bitbucket"], "direction": ["egress"]}]}


def _fork(child: Callable[[], bool]) -> tuple[int, int]:
    """Run ``child`` in a forked process; return (pid, read end of its report pipe)."""
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded, use of fork()"
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(read)
            ok = child()
            os.write(write, f"{'ok' if ok else 'no'} {time.monotonic():.3f}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    return pid, read


def _report(pid: int, read: int, limit: float) -> tuple[str, float]:
    ready, _, _ = select.select([read], [], [], limit)
    data = os.read(read, 100).decode() if ready else ""
    os.close(read)
    for _ in range(50):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    verdict, _, stamp = data.partition(" ")
    return verdict, float(stamp or "nan")


def test_child_forked_during_a_key_fetch_fetches_for_itself() -> None:
    with FakeIssuer() as issuer:
        issuer.fail("slow", 3.0)
        # A generous fetch budget: this test is about the fork, not the budget.
        verifier = issuer.verifier(
            timeout=1.0, failure_backoff=0.3, max_backoff=0.3, fetch_interval=0.1, fetch_burst=100
        )
        token = issuer.mint()
        warm = threading.Thread(target=lambda: _swallow(verifier.warm_up), daemon=True)
        warm.start()
        time.sleep(0.2)  # the fetch is in flight

        def child() -> bool:
            for _ in range(100):
                try:
                    verifier.verify(token)
                    return True
                except KeysUnavailable:
                    time.sleep(0.1)
            return False

        pid, read = _fork(child)
        time.sleep(1.5)
        issuer.recover()
        recovered = time.monotonic()
        verdict, accepted_at = _report(pid, read, 15.0)
        warm.join(timeout=10)
        assert verdict == "ok", "the forked child never accepted a valid token"
        assert accepted_at - recovered < 2.0  # generous: backoff 0.3 s, timeout 1 s
        verifier.verify(token)  # and the parent too


def test_child_forked_during_a_feed_load_loads_for_itself() -> None:
    with misbehaving("silent", body=lambda: FEED, max_stall=10.0) as server:
        feed = AtlassianIPRanges(server.url, lazy=True, timeout=1.0, failure_backoff=0.3)
        loading = threading.Thread(target=feed.refresh, daemon=True)
        loading.start()
        time.sleep(0.2)  # the load is in flight

        def child() -> bool:
            for _ in range(50):
                if feed.ranges() is not None:
                    return True
                time.sleep(0.1)
            return False

        server.mode = "ok"
        pid, read = _fork(child)
        verdict, _ = _report(pid, read, 15.0)
        loading.join(timeout=10)
        assert verdict == "ok", "the forked child never loaded the feed"


def test_child_forked_with_good_keys_keeps_them_without_a_fetch() -> None:
    with FakeIssuer() as issuer:
        verifier = issuer.verifier(timeout=1.0)
        verifier.warm_up()
        token = issuer.mint()
        issuer.fail("down")

        def child() -> bool:
            verifier.verify(token)
            return True

        verdict, _ = _report(*_fork(child), 10.0)
        issuer.recover()
        assert verdict == "ok"


def _swallow(call: Callable[[], object]) -> None:
    with contextlib.suppress(KeysUnavailable):
        call()
