"""Running the gateway: ``bbverify serve --config FILE`` under uvicorn.

The configuration is checked completely in this process before any worker
starts, so a mistake exits with status 2 and a message naming the key.
Workers (``--workers N``, uvicorn's own process manager) each build their
Gateway from the same file, so they share whatever key store the file
configures. uvicorn stops gracefully on SIGINT/SIGTERM: it stops accepting,
lets checks in flight finish (at most ``GRACEFUL_SHUTDOWN`` seconds), then
runs the lifespan shutdown.

Metrics with several workers: prometheus_client's multiprocess mode.
``PROMETHEUS_MULTIPROC_DIR`` is set to a fresh temporary directory unless
you set it, so decision counters and the latency histogram on ``/metrics``
add up across workers whichever worker answers the scrape; key-set and
cache gauges are that worker's own view.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

from .config import load_toml_table
from .errors import ConfigurationError
from .gateway import Gateway, gateway_from_toml
from .keys import RemoteKeySet
from .metrics import key_sources
from .proxies import TrustedProxies
from .stores import MemoryKeyStore

__all__ = ["CONFIG_ENV", "GRACEFUL_SHUTDOWN", "app_from_env", "run"]

#: The environment variable through which ``bbverify serve`` tells its workers the file.
#: Not spelled like ``BBVERIFY_*``: those are verifier settings, and near-misses of
#: them are configuration errors (:func:`bbverify.config.verifier_from_env`).
CONFIG_ENV = "SERVE_BBVERIFY_CONFIG"

_log = logging.getLogger("bbverify.serve")

#: Seconds uvicorn waits for checks in flight on shutdown.
GRACEFUL_SHUTDOWN = 10


def _logging() -> None:
    """stderr: one JSON access line per check, audit lines for denials, operational messages.

    Allowed checks are audited by their access line (it names the pipeline),
    so ``bbverify.audit`` logs denials only: each log record costs about as
    much as the check itself.
    """
    # The "Optimization" section of the logging HOWTO: this process records
    # no caller, thread or process names, so no frame walk per record.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    levels = {
        "bbverify.gateway.access": logging.INFO,
        "bbverify.audit": logging.WARNING,
        "bbverify": logging.INFO,
    }
    for name, level in levels.items():
        logger = logging.getLogger(name)
        if not any(isinstance(h, logging.StreamHandler) and h.stream is sys.stderr for h in logger.handlers):
            logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False


def app_from_env() -> Gateway:
    """The uvicorn factory each ``bbverify serve`` worker calls (reads :data:`CONFIG_ENV`)."""
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise ConfigurationError(f"{CONFIG_ENV} is not set", key=CONFIG_ENV)
    _logging()  # in the worker: with several workers, each is its own process
    return gateway_from_toml(path)


def check(
    path: str, *, workers: int | None = None, environ: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Build everything once from ``path`` and ``BBVERIFY_*`` (no network); return the serve table.

    The verifier settings are layered like ``bbverify verify --config``
    (:func:`bbverify.gateway.gateway_from_toml`; ``environ`` defaults to
    ``os.environ``). Settings that would do nothing under ``bbverify serve``
    are refused (configuration.md: they are start-up errors): a ``memory``
    key store (each worker has one verifier, so it shares nothing) and
    ``"unix"`` in ``trusted_proxies`` (the gateway listens on TCP only).
    ``workers`` (default: ``serve.workers`` or 1) is checked too.

    Raises :class:`~bbverify.errors.ConfigurationError`.
    """
    from .metrics import VerifierMetrics

    gateway = gateway_from_toml(path, environ=environ, metrics=VerifierMetrics(registry=None))
    _refuse_idle_settings(gateway)
    serve = dict(load_toml_table(path)["serve"])
    count = serve.get("workers", 1) if workers is None else workers
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 64:
        raise ConfigurationError("must be between 1 and 64", key="--workers")
    _warn_unshared_budget(gateway, count)
    return serve


def _refuse_idle_settings(gateway: Gateway) -> None:
    for _, source in key_sources(gateway.verifier):
        if isinstance(getattr(source, "key_store", None), MemoryKeyStore):
            raise ConfigurationError(
                "'memory' shares keys between verifiers of one process, and each bbverify serve "
                "worker has one verifier: it would share nothing. Use 'file' (one host) or "
                "'redis' (a fleet), or leave [bbverify.key_store] out",
                key="key_store.kind",
            )
    proxies = TrustedProxies.parse(gateway.settings.trusted_proxies)
    if proxies is not None and proxies.unix:
        raise ConfigurationError(
            "'unix' trusts a proxy on a Unix socket, and bbverify serve listens on TCP only: "
            "name the proxy's address instead (for example '127.0.0.1/32')",
            key="serve.trusted_proxies",
        )


def _warn_unshared_budget(gateway: Gateway, workers: int) -> None:
    """Several workers without a shared store each spend their own fetch budget: say so once."""
    if workers < 2:
        return
    for issuer, source in key_sources(gateway.verifier):
        if not isinstance(source, RemoteKeySet) or source.key_store is not None:
            continue
        budget = source.budget
        # docs/configuration.md "Sizing the budget", for a share of S = 30 an hour.
        share = 30
        needed = 3600.0 * workers / (share - 2 * workers) if share > 2 * workers else math.inf
        if budget.burst == 1 and budget.interval >= needed and source.cooldown >= needed:
            continue
        least = "no budget is small enough" if math.isinf(needed) else f"at least {math.ceil(needed)} s"
        _log.warning(
            "%d workers and no [bbverify.key_store] for %s: each worker spends its own fetch budget "
            "(up to %d x %d requests an hour). Configure a key store (kind = \"file\" shares one "
            "budget on this host), or size the budget as docs/configuration.md \"Sizing the budget\" "
            "says: fetch_burst = 1 and fetch_interval = cooldown >= 3600 x N / (S - 2 x N) "
            "(%s for N = %d, S = %d)",
            workers,
            issuer,
            workers,
            budget.burst + math.ceil(3600 / budget.interval) + 1,
            least,
            workers,
            share,
        )


#: prometheus_client's own files in a multiprocess directory ("{type}_{pid}.db",
#: gauges "gauge_{mode}_{pid}.db"): the only files bbverify serve removes.
_METRICS_FILE = re.compile(r"(counter|histogram|summary|gauge_[a-z]+)_[0-9]+\.db")


def _reset_metrics_dir(path: str) -> None:
    """Empty a user-set ``PROMETHEUS_MULTIPROC_DIR`` of the last run's files, or refuse it.

    prometheus_client needs the directory emptied between runs, or the last
    run's counters are added to this run's. Only its own ``*.db`` files are
    removed; a directory holding anything else is refused, never emptied.
    """
    key = "PROMETHEUS_MULTIPROC_DIR"
    try:
        names = os.listdir(path)
    except OSError as exc:
        raise ConfigurationError(f"must be an existing directory: {exc.strerror}", key=key) from None
    foreign = sorted(
        n for n in names if not _METRICS_FILE.fullmatch(n) or not os.path.isfile(os.path.join(path, n))
    )
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise ConfigurationError(
            f"holds files that are not prometheus_client's ({shown}); give bbverify serve a "
            "directory of its own (it empties it of metric files at every start)",
            key=key,
        )
    for name in names:
        try:
            os.unlink(os.path.join(path, name))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ConfigurationError(f"cannot remove {name}: {exc.strerror}", key=key) from None


class _ListeningLine(logging.Filter):
    """Turns uvicorn's one "running on" line into ours and drops its other info lines.

    uvicorn logs it once, after binding (in the supervisor when there are
    several workers), with the port the system chose for port 0.
    """

    def __init__(self, workers: int) -> None:
        super().__init__()
        self.workers = workers

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        args = record.args
        if not (isinstance(record.msg, str) and record.msg.startswith("Uvicorn running on")):
            return False
        if isinstance(args, tuple) and len(args) == 3:
            scheme, host, port = args
            where = f"{scheme}://[{host}]:{port}" if ":" in str(host) else f"{scheme}://{host}:{port}"
        else:
            where = record.getMessage().removeprefix("Uvicorn running on ").split(" (", 1)[0]
        plural = "" if self.workers == 1 else "s"
        record.msg = f"bbverify serve: listening on %s (%d worker{plural})"
        record.args = (where, self.workers)
        return True


def _uvicorn_logging(workers: int) -> None:
    logger = logging.getLogger("uvicorn.error")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_ListeningLine(workers))
    logger.handlers = [handler]
    logger.propagate = False


def run(config: str, *, host: str | None = None, port: int | None = None, workers: int | None = None) -> int:
    """Serve the gateway until stopped; returns the exit status.

    ``host``, ``port`` and ``workers`` override ``[bbverify.serve]``
    (defaults 127.0.0.1, 9180, 1). Prints ``bbverify serve: listening on
    http://HOST:PORT (N workers)`` once it listens.
    """
    import uvicorn

    _logging()
    serve = check(config, workers=workers)
    host = host or serve.get("host", "127.0.0.1")
    port = serve.get("port", 9180) if port is None else port
    workers = workers or serve.get("workers", 1)
    assert isinstance(workers, int)
    os.environ[CONFIG_ENV] = os.path.abspath(config)
    own_dir = None
    user_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if user_dir:
        _reset_metrics_dir(user_dir)
    elif workers > 1:
        own_dir = tempfile.mkdtemp(prefix="bbverify-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_dir
    _uvicorn_logging(workers)
    try:
        uvicorn.run(
            "bbverify.serve:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            lifespan="on",
            access_log=False,  # the gateway writes its own structured access log
            proxy_headers=False,  # X-Forwarded-For is judged by trusted_proxies, never by uvicorn
            server_header=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
            # Our handler on uvicorn.error (above) keeps warnings and the one
            # line saying where it listens; no dictConfig replaces it.
            log_config=None,
            log_level="info",
        )
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
    return 0
