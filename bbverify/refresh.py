"""One load at a time, on a daemon thread, keeping the last good value.

The issuer's key set and Atlassian's IP feed are both remote documents that
are loaded in the background and shared by every request. They differ in
*when* to load (a key set refetches for an unknown ``kid``, a feed on an
interval), which each decides for itself, but not in *how*: this base class
runs the load, lets every caller wait on the same ``Future``, and records a
failure without touching the last good value.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Generic, TypeVar

__all__ = ["BackgroundLoader", "settled"]

T = TypeVar("T")
_log = logging.getLogger("bbverify")


def settled(result: bool) -> Future[bool]:
    """A future that is already done, for callers that decided not to load."""
    future: Future[bool] = Future()
    future.set_result(result)
    return future


class BackgroundLoader(Generic[T]):
    """Shared machinery; subclasses provide :meth:`_load`, :meth:`_install` and :meth:`_failed`.

    State, read and written under ``_lock``: ``_inflight`` (the load under
    way, if any), ``_failed_at`` and ``_last_error`` (cleared by a success),
    and ``fetch_count`` (loads started, for tests and monitoring).
    """

    _thread_name = "bbverify-load"

    def _init_loader(self, clock: Callable[[], float]) -> None:
        self._loader_clock = clock
        self._lock = threading.Lock()
        self._inflight: Future[bool] | None = None
        self._failed_at: float | None = None
        self._last_error: str | None = None
        #: How many loads were started.
        self.fetch_count = 0
        #: How many loads failed (for monitoring: bbverify.metrics).
        self.failure_count = 0

    # -- for subclasses -----------------------------------------------------

    def _load(self) -> T:
        """Fetch and parse (runs on the loader thread); raise on any failure."""
        raise NotImplementedError

    def _install(self, value: T, now: float) -> None:
        """Make ``value`` current (called under the lock)."""
        raise NotImplementedError

    def _failed(self, exc: BaseException) -> str:
        """Log a failed load and return the short reason kept in ``_last_error``."""
        raise NotImplementedError

    def _in_backoff(self, now: float, backoff: float) -> bool:
        return self._failed_at is not None and now - self._failed_at < backoff

    def _launch_locked(self, now: float) -> Future[bool]:
        """Start a load (the caller holds the lock and has decided one is due)."""
        if self._inflight is not None:
            return self._inflight
        future: Future[bool] = Future()
        self._inflight = future
        self.fetch_count += 1
        thread = threading.Thread(target=self._run_load, args=(future,), name=self._thread_name, daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": out of threads or memory
            _log.warning("%s: could not start a load: %s", self._thread_name, exc)
            self._failed_at = now
            self._last_error = "could not start the load"
            self.failure_count += 1
            self._inflight = None
            future.set_result(False)
        return future

    @staticmethod
    def _wait_for(future: Future[bool], timeout: float) -> bool | None:
        """The load's outcome, or ``None`` if it is still running after ``timeout``."""
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            return None

    def _run_load(self, future: Future[bool]) -> None:
        ok = False
        try:
            value = self._load()
        except BaseException as exc:
            # BaseException too (SystemExit, gevent's Timeout): whatever ends
            # this thread must resolve the future and clear _inflight, or every
            # later caller would wait on a load that never finishes.
            message = self._failed(exc)
            with self._lock:
                self._failed_at = self._loader_clock()
                self._last_error = message
                self.failure_count += 1
                self._inflight = None
        else:
            ok = True
            with self._lock:
                self._install(value, self._loader_clock())
                self._failed_at = None
                self._last_error = None
                self._inflight = None
        future.set_result(ok)
