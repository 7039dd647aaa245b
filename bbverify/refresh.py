"""One load at a time, on a daemon thread, keeping the last good value.

The issuer's key set and Atlassian's IP feed are both remote documents that
are loaded in the background and shared by every request. They differ in
*when* to load (a key set refetches for an unknown ``kid``, a feed on an
interval), which each decides for itself, but not in *how*: this base class
runs the load, lets every caller wait on the same ``Future``, and records a
failure without touching the last good value.

Two guarantees hold whatever the network or the process does:

* **A load has a deadline.** A load still running ``timeout`` +
  :data:`DEADLINE_GRACE` seconds after it started counts as failed: its
  waiters get ``False``, a new load may start, and whatever the old thread
  returns later is dropped. At most :data:`MAX_ABANDONED` such threads may
  be alive per loader; past that, no new load starts until one ends (the
  fetch's own watchdog normally ends them at their deadline).
* **A fork starts afresh.** A child process inherits the loader's state but
  not its thread. After ``os.fork()`` each live loader gets a new lock, its
  inherited in-flight load is resolved as failed (so nothing waits on a
  thread that does not exist), and the next use starts the child's own
  load. Good values are kept: they are as valid in the child as in the
  parent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Generic, TypeVar

__all__ = ["DEADLINE_GRACE", "MAX_ABANDONED", "BackgroundLoader", "settled"]

T = TypeVar("T")
_log = logging.getLogger("bbverify")

#: Seconds past a load's own ``timeout`` before it is declared failed.
DEADLINE_GRACE = 1.0
#: Most load threads one loader may leave running past their deadline.
MAX_ABANDONED = 2


def settled(result: bool) -> Future[bool]:
    """A future that is already done, for callers that decided not to load."""
    future: Future[bool] = Future()
    future.set_result(result)
    return future


def _resolve(future: Future[bool], result: bool) -> None:
    # Already resolved: declared failed at its deadline, or after a fork.
    with contextlib.suppress(InvalidStateError):
        future.set_result(result)


_LOADERS: weakref.WeakSet[BackgroundLoader[Any]] = weakref.WeakSet()


class BackgroundLoader(Generic[T]):
    """Shared machinery; subclasses provide :meth:`_load`, :meth:`_install` and :meth:`_failed`.

    State, read and written under ``_lock``: ``_inflight`` (the load under
    way, if any; reading it declares a load past its deadline failed),
    ``_failed_at`` and ``_last_error`` (cleared by a success), and
    ``fetch_count`` (loads started, for tests and monitoring). Subclasses
    have a ``timeout`` attribute (seconds): a load's deadline.
    """

    _thread_name = "bbverify-load"
    timeout: float

    def _init_loader(self, clock: Callable[[], float]) -> None:
        self._loader_clock = clock
        # Re-entrant: reading ``_inflight`` may expire a load, and callers
        # read it both with and without the lock held.
        self._lock = threading.RLock()
        self._current: Future[bool] | None = None
        self._current_deadline = 0.0
        self._failed_at: float | None = None
        self._last_error: str | None = None
        self._abandoned = 0
        #: How many loads were started.
        self.fetch_count = 0
        #: How many loads failed (for monitoring: bbverify.metrics).
        self.failure_count = 0
        _LOADERS.add(self)

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

    def _after_fork(self) -> None:
        """Drop per-process resources (a private HTTP session) in a forked child."""

    # -- the in-flight load ---------------------------------------------------

    @property
    def _inflight(self) -> Future[bool] | None:
        future = self._current
        if future is None or time.monotonic() < self._current_deadline:
            return future
        with self._lock:
            if self._current is future:
                self._abandon_locked(future)
            return self._current

    @_inflight.setter
    def _inflight(self, future: Future[bool] | None) -> None:
        self._current = future

    def _abandon_locked(self, future: Future[bool]) -> None:
        budget = float(getattr(self, "timeout", 0.0))
        _log.warning("%s: load did not finish within %gs; giving up on it", self._thread_name, budget)
        self._current = None
        self._abandoned += 1
        self._failed_at = self._loader_clock()
        self._last_error = f"load did not finish within {budget:g}s"
        self.failure_count += 1
        _resolve(future, False)

    def _in_backoff(self, now: float, backoff: float) -> bool:
        return self._failed_at is not None and now - self._failed_at < backoff

    def _launch_locked(self, now: float) -> Future[bool]:
        """Start a load (the caller holds the lock and has decided one is due)."""
        inflight = self._inflight
        if inflight is not None:
            return inflight
        if self._abandoned >= MAX_ABANDONED:
            # Threads stuck past their deadline: do not pile up more of them.
            self._failed_at = now
            self._last_error = f"{self._abandoned} earlier loads are still stuck"
            self.failure_count += 1
            return settled(False)
        future: Future[bool] = Future()
        self._current = future
        self._current_deadline = time.monotonic() + float(getattr(self, "timeout", 0.0)) + DEADLINE_GRACE
        self.fetch_count += 1
        thread = threading.Thread(target=self._run_load, args=(future,), name=self._thread_name, daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": out of threads or memory
            _log.warning("%s: could not start a load: %s", self._thread_name, exc)
            self._failed_at = now
            self._last_error = "could not start the load"
            self.failure_count += 1
            self._current = None
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
        pid = os.getpid()
        ok = False
        try:
            value = self._load()
        except BaseException as exc:
            # BaseException too (SystemExit, gevent's Timeout): whatever ends
            # this thread must resolve the future and clear _inflight, or every
            # later caller would wait on a load that never finishes.
            message = self._failed(exc)
            with self._lock:
                if self._current is future:
                    self._failed_at = self._loader_clock()
                    self._last_error = message
                    self.failure_count += 1
                    self._current = None
                elif os.getpid() == pid:
                    self._abandoned = max(0, self._abandoned - 1)
        else:
            with self._lock:
                if self._current is future:
                    ok = True
                    self._install(value, self._loader_clock())
                    self._failed_at = None
                    self._last_error = None
                    self._current = None
                elif os.getpid() == pid:
                    # Declared failed at its deadline; a newer load owns the state.
                    self._abandoned = max(0, self._abandoned - 1)
        _resolve(future, ok)

    def _reset_after_fork(self) -> None:
        self._lock = threading.RLock()
        inflight, self._current = self._current, None
        if inflight is not None:
            # Its condition's lock may have been held by a parent thread at the
            # fork; give it a fresh one before waking any (child) waiter.
            if hasattr(inflight, "_condition"):
                inflight._condition = threading.Condition()
            _resolve(inflight, False)
        self._abandoned = 0  # the parent's threads are not ours
        # The child has not tried yet: let its first use load at once.
        self._failed_at = None
        self._after_fork()


def _after_fork_in_child() -> None:
    for loader in list(_LOADERS):
        loader._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
