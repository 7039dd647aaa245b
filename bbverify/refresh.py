"""Runs one background load at a time for a remote document, keeping the last good value.

The issuer's key set and Atlassian's IP feed are both remote documents that
are loaded in the background and shared by every request. They differ in
*when* to load (a key set refetches for an unknown ``kid``, a feed on an
interval), which each decides for itself, but not in *how*: each holds a
:class:`BackgroundLoader` (composition, not inheritance) that runs the load
its owner hands it, lets every caller wait on the same ``Future``, and
records a failure without touching the last good value.

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
from operator import attrgetter
from typing import Any, Generic, TypeVar

import requests

from .fetch import private_session

__all__ = ["DEADLINE_GRACE", "MAX_ABANDONED", "BackgroundLoader", "from_loader", "settled"]

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
    """The single-flight load of one owner's value (see the module docs).

    Args:
        load: fetch and parse (runs on the load thread); raises on any failure.
        install: ``install(value, now)`` makes a loaded value current; called
            with :attr:`lock` held, ``now`` from ``clock``.
        failed: logs a failed load's exception and returns the short reason
            kept in ``last_error`` (it may reach a 503 description).
        session: the caller's ``requests.Session`` for the loads, or ``None``
            for a private one (see :meth:`session`).
        timeout: a load's own deadline in seconds (the grace is added on top).
        clock: the owner's clock (seconds) for ``failed_at`` and ``install``'s ``now``.
        name: the load thread's name (also in log lines).

    State, read and written under :attr:`lock` (which the owner also uses for
    its own state, so that installing a value and reading it agree):
    :attr:`inflight` (the load under way, if any; reading it declares a load
    past its deadline failed), ``failed_at`` and ``last_error`` (cleared by
    a success), ``fetch_count`` (loads started) and ``failure_count`` (loads
    failed), for tests and monitoring.
    """

    def __init__(
        self,
        load: Callable[[], T],
        install: Callable[[T, float], None],
        failed: Callable[[BaseException], str],
        *,
        session: requests.Session | None,
        timeout: float,
        clock: Callable[[], float],
        name: str,
    ) -> None:
        self._load = load
        self._install = install
        self._failed = failed
        self._session = session
        self._own_session = session is None
        self.timeout = float(timeout)
        self._clock = clock
        self.name = name
        # Re-entrant: reading ``inflight`` may expire a load, and callers
        # read it both with and without the lock held.
        self.lock = threading.RLock()
        self._current: Future[bool] | None = None
        self._current_deadline = 0.0
        #: Owner's clock time of the last failure, ``None`` after a success.
        self.failed_at: float | None = None
        #: Why the last load failed, while none has succeeded since.
        self.last_error: str | None = None
        self._abandoned = 0
        #: How many loads were started.
        self.fetch_count = 0
        #: How many loads failed (for monitoring: bbverify.metrics).
        self.failure_count = 0
        _LOADERS.add(self)

    def session(self) -> requests.Session:
        """The HTTP session for the loads: the caller's, else a private one made on first use.

        A private session is dropped in a forked child (its pooled connections
        are the parent's) and made again on the child's first load; a caller's
        session stays the caller's.
        """
        if self._session is None:
            self._session = private_session()
        return self._session

    # -- the in-flight load ---------------------------------------------------

    @property
    def inflight(self) -> Future[bool] | None:
        """The load under way, or ``None``; a load past its deadline is declared failed first."""
        future = self._current
        if future is None or time.monotonic() < self._current_deadline:
            return future
        with self.lock:
            if self._current is future:
                self._abandon_locked(future)
            return self._current

    def _abandon_locked(self, future: Future[bool]) -> None:
        _log.warning("%s: load did not finish within %gs; giving up on it", self.name, self.timeout)
        self._current = None
        self._abandoned += 1
        self._fail_locked(self._clock(), f"load did not finish within {self.timeout:g}s")
        _resolve(future, False)

    def _fail_locked(self, now: float, reason: str) -> None:
        self.failed_at = now
        self.last_error = reason
        self.failure_count += 1

    def in_backoff(self, now: float, backoff: float) -> bool:
        """Whether the last failure was less than ``backoff`` seconds before ``now``."""
        return self.failed_at is not None and now - self.failed_at < backoff

    def launch_locked(self, now: float) -> Future[bool]:
        """Start a load (the caller holds :attr:`lock` and has decided one is due).

        Returns the load's future: ``True`` once a value was installed,
        ``False`` when it failed (or could not start).
        """
        inflight = self.inflight
        if inflight is not None:
            return inflight
        if self._abandoned >= MAX_ABANDONED:
            # Threads stuck past their deadline: do not pile up more of them.
            self._fail_locked(now, f"{self._abandoned} earlier loads are still stuck")
            return settled(False)
        future: Future[bool] = Future()
        self._current = future
        self._current_deadline = time.monotonic() + self.timeout + DEADLINE_GRACE
        self.fetch_count += 1
        thread = threading.Thread(target=self._run, args=(future,), name=self.name, daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": out of threads or memory
            _log.warning("%s: could not start a load: %s", self.name, exc)
            self._fail_locked(now, "could not start the load")
            self._current = None
            future.set_result(False)
        return future

    @staticmethod
    def wait_for(future: Future[bool], timeout: float) -> bool | None:
        """The load's outcome, or ``None`` if it is still running after ``timeout`` seconds."""
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            return None

    def _run(self, future: Future[bool]) -> None:
        pid = os.getpid()
        ok = False
        try:
            value = self._load()
        except BaseException as exc:
            # BaseException too (SystemExit, gevent's Timeout): whatever ends
            # this thread must resolve the future and clear the in-flight load,
            # or every later caller would wait on a load that never finishes.
            message = self._failed(exc)
            with self.lock:
                if self._current is future:
                    self._fail_locked(self._clock(), message)
                    self._current = None
                elif os.getpid() == pid:
                    self._abandoned = max(0, self._abandoned - 1)
        else:
            with self.lock:
                if self._current is future:
                    ok = True
                    self._install(value, self._clock())
                    self.failed_at = None
                    self.last_error = None
                    self._current = None
                elif os.getpid() == pid:
                    # Declared failed at its deadline; a newer load owns the state.
                    self._abandoned = max(0, self._abandoned - 1)
        _resolve(future, ok)

    def _reset_after_fork(self) -> None:
        self.lock = threading.RLock()
        inflight, self._current = self._current, None
        if inflight is not None:
            # Its condition's lock may have been held by a parent thread at the
            # fork; give it a fresh one before waking any (child) waiter.
            if hasattr(inflight, "_condition"):
                inflight._condition = threading.Condition()
            _resolve(inflight, False)
        self._abandoned = 0  # the parent's threads are not ours
        # The child has not tried yet: let its first use load at once.
        self.failed_at = None
        if self._own_session:
            self._session = None


def from_loader(name: str, doc: str) -> Any:
    """A read-only property of a loader's owner: its ``_loader``'s attribute ``name``.

    The owners (the key set, the IP feed) show the loader's counters and state
    as their own (``fetch_count: int = from_loader("fetch_count", "...")``)
    without a property body each. The getter is :func:`operator.attrgetter`,
    so a read costs about what a plain property costs (tens of nanoseconds):
    the key set reads its lock this way on every key look-up. Typed ``Any`` so
    that the owner's annotation gives the attribute's type.
    """
    return property(attrgetter(f"_loader.{name}"), doc=doc)


def _after_fork_in_child() -> None:
    for loader in list(_LOADERS):
        loader._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
