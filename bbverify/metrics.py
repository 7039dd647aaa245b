"""Prometheus metrics for any app that verifies tokens (``pip install '.[metrics]'`` in a checkout).

::

    from prometheus_client import CollectorRegistry, generate_latest

    from bbverify import Verifier
    from bbverify.metrics import VerifierMetrics
    from bbverify.testing import FakeIssuer

    registry = CollectorRegistry()
    metrics = VerifierMetrics(registry)
    with FakeIssuer() as fake:
        verifier = metrics.watch(fake.verifier())
        with metrics.timer():
            verifier.verify(fake.mint())
        assert b'bbverify_decisions_total{code="ok"' in generate_latest(registry)

Families (all through :mod:`prometheus_client`):

* ``bbverify_decisions_total{code, rule, workspace}`` (counter): one per
  decision, from the verifier's ``on_decision`` hook; ``rule`` is empty
  unless a rule denied, ``workspace`` is the token's workspace UUID (empty
  when the token was not readable);
* ``bbverify_verification_seconds`` (histogram, seconds): what
  :meth:`VerifierMetrics.timer` measured (the gateway times every check);
* per key set, labelled ``issuer``, read when scraped from the key source's
  ``status()``: ``bbverify_key_fetches_total``,
  ``bbverify_key_fetch_failures_total``, ``bbverify_key_set_loaded``,
  ``bbverify_key_set_stale`` (1 while keys older than ``cache_ttl`` are served),
  ``bbverify_key_set_keys``, ``bbverify_key_set_age_seconds`` and, when the
  key source reports one, ``bbverify_key_fetch_budget_remaining`` (with a
  shared key store, the fleet's budget held there) and, with a key store,
  ``bbverify_key_store_state{issuer, state}`` (1 for the current state:
  ``ok``, ``unknown`` before first use, ``unavailable`` during an outage,
  ``misconfigured`` when the store refused this process: either way it
  fetches on its own budget meanwhile);
* ``bbverify_token_cache_entries`` and ``bbverify_token_cache_limit``
  (gauges, labelled ``verifier``: the watch order, one cache per verifier).

Key-set figures are pulled at scrape time rather than pushed by events: the
key source already keeps them, so nothing is added to the verification path.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .audit import Decision, DecisionHook
from .errors import ConfigurationError
from .verifier import Verifier

__all__ = ["LATENCY_BUCKETS", "VerifierMetrics", "key_sources"]

_log = logging.getLogger("bbverify")

#: Histogram buckets in seconds: a cached token takes microseconds, a key fetch up to the timeout.
LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


def key_sources(verifier: Verifier) -> list[tuple[str, Any]]:
    """``(issuer, key source)`` for every workspace ``verifier`` trusts, in the order configured."""
    return [(issuer, verifier.key_source(issuer)) for issuer in verifier.issuers]


class _State(Collector):
    """Scrape-time view of the watched verifiers' key sets and caches."""

    def __init__(self, owner: VerifierMetrics) -> None:
        self._owner = weakref.ref(owner)

    def describe(self) -> Iterable[Metric]:
        return []  # collected on demand; nothing to pre-register

    def collect(self) -> Iterable[Metric]:
        owner = self._owner()
        verifiers = owner.verifiers() if owner is not None else []
        ns = owner.namespace if owner is not None else "bbverify"
        fetches = CounterMetricFamily(f"{ns}_key_fetches", "Key set fetches started", labels=["issuer"])
        failures = CounterMetricFamily(
            f"{ns}_key_fetch_failures", "Key set fetches failed", labels=["issuer"]
        )
        loaded = GaugeMetricFamily(f"{ns}_key_set_loaded", "1 when usable keys are held", labels=["issuer"])
        stale = GaugeMetricFamily(
            f"{ns}_key_set_stale", "1 while keys past cache_ttl are being served", labels=["issuer"]
        )
        count = GaugeMetricFamily(f"{ns}_key_set_keys", "Usable keys held", labels=["issuer"])
        age = GaugeMetricFamily(
            f"{ns}_key_set_age_seconds", "Seconds since the last good fetch", labels=["issuer"]
        )
        budget = GaugeMetricFamily(
            f"{ns}_key_fetch_budget_remaining", "Key fetches the budget still allows", labels=["issuer"]
        )
        store = GaugeMetricFamily(
            f"{ns}_key_store_state",
            "1 for the key store's current state (ok, unknown, unavailable, misconfigured)",
            labels=["issuer", "state"],
        )
        # One token cache per verifier, whatever its workspaces: labelled by watch order.
        tokens = GaugeMetricFamily(f"{ns}_token_cache_entries", "Verified tokens cached", labels=["verifier"])
        limit = GaugeMetricFamily(
            f"{ns}_token_cache_limit", "Verified-token cache capacity", labels=["verifier"]
        )
        has_budget = has_store = False
        for index, verifier in enumerate(verifiers):
            info = verifier.cache_info()
            tokens.add_metric([str(index)], info.get("tokens", 0))
            limit.add_metric([str(index)], info.get("token_limit", 0))
            for issuer, source in key_sources(verifier):
                status_of = getattr(source, "status", None)
                if not callable(status_of):
                    continue
                try:
                    status = status_of()
                except Exception:
                    # A broken source must not take the whole scrape down with it.
                    _log.exception("key source status failed for %s", issuer)
                    continue
                fetches.add_metric([issuer], status.get("fetches", 0))
                failures.add_metric([issuer], status.get("failures", 0))
                loaded.add_metric([issuer], 1 if status.get("loaded") else 0)
                stale.add_metric([issuer], 1 if status.get("stale") else 0)
                count.add_metric([issuer], status.get("keys", 0))
                if status.get("age_seconds") is not None:
                    age.add_metric([issuer], status["age_seconds"])
                if status.get("budget_remaining") is not None:
                    has_budget = True
                    budget.add_metric([issuer], status["budget_remaining"])
                if status.get("key_store") is not None:
                    has_store = True
                    store.add_metric([issuer, str(status["key_store"])], 1)
        families = [fetches, failures, loaded, stale, count, age, tokens, limit]
        return [*families, *([budget] if has_budget else []), *([store] if has_store else [])]


class VerifierMetrics:
    """The Prometheus collector for bbverify, fed by ``on_decision`` and read at scrape time.

    Args:
        registry: where to register (default: prometheus_client's global
            ``REGISTRY``); pass ``None`` to register nowhere (for a
            multiprocess exposition that brings its own registry).
        namespace: metric name prefix (default ``bbverify``).

    Raises :class:`~bbverify.errors.ConfigurationError` if the names are
    already registered in ``registry`` (build one per registry).
    """

    def __init__(self, registry: CollectorRegistry | None = REGISTRY, *, namespace: str = "bbverify") -> None:
        self.namespace = namespace
        #: Where these metrics are registered (``None``: nowhere).
        self.registry = registry
        try:
            self.decisions = Counter(
                f"{namespace}_decisions",
                "Verification decisions by code, denying rule and workspace",
                ["code", "rule", "workspace"],
                registry=registry,
            )
            self.latency = Histogram(
                f"{namespace}_verification_seconds",
                "Time to verify a token and apply the rules, in seconds",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            )
        except ValueError as exc:  # "Duplicated timeseries in CollectorRegistry"
            raise ConfigurationError(str(exc), key="registry") from None
        self._children: dict[tuple[str, str, str], Any] = {}
        # Weak references, in watch order: watching must not keep a verifier alive.
        self._verifiers: list[weakref.ref[Verifier]] = []
        self.state = _State(self)
        if registry is not None:
            registry.register(self.state)

    def verifiers(self) -> list[Verifier]:
        """The verifiers :meth:`watch` was given (still alive), in watch order."""
        alive = [ref() for ref in self._verifiers]
        return [v for v in alive if v is not None]

    def record(self, decision: Decision) -> None:
        """An ``on_decision`` hook: count ``decision``."""
        key = (decision.code, decision.rule or "", decision.workspace or "")
        child = self._children.get(key)
        if child is None:
            # labels() validates and locks on every call; the few label sets
            # a service sees are kept (bounded: codes x rules x workspaces).
            child = self.decisions.labels(*key)
            if len(self._children) < 4096:
                self._children[key] = child
        child.inc()

    def observe(self, seconds: float) -> None:
        """Record one verification's duration in seconds."""
        self.latency.observe(seconds)

    @contextmanager
    def timer(self) -> Iterator[None]:
        """Time the block into the latency histogram (also when it raises)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.latency.observe(time.perf_counter() - start)

    def watch(self, verifier: Verifier) -> Verifier:
        """Count ``verifier``'s decisions and report its key sets and caches; returns it.

        Any ``on_decision`` hook it already has keeps being called (first).
        """
        if not isinstance(verifier, Verifier):
            raise ConfigurationError(f"{verifier!r} is not a bbverify.Verifier", key="verifier")
        if not any(verifier is v for v in self.verifiers()):
            previous: DecisionHook | None = verifier.on_decision
            if previous is None:
                verifier.on_decision = self.record
            else:
                record = self.record

                def both(decision: Decision) -> None:
                    previous(decision)
                    record(decision)

                verifier.on_decision = both
            self._verifiers.append(weakref.ref(verifier))
        return verifier
