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
import os
import shutil
import sys
import tempfile
from typing import Any

from .config import load_toml_table
from .errors import ConfigurationError
from .gateway import Gateway, gateway_from_toml, serve_settings, split_serve

__all__ = ["CONFIG_ENV", "GRACEFUL_SHUTDOWN", "app_from_env", "run"]

#: The environment variable through which ``bbverify serve`` tells its workers the file.
#: Not spelled like ``BBVERIFY_*``: those are verifier settings, and near-misses of
#: them are configuration errors (:func:`bbverify.config.verifier_from_env`).
CONFIG_ENV = "SERVE_BBVERIFY_CONFIG"

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


def check(path: str) -> dict[str, Any]:
    """Build everything once from ``path`` (no network); return the serve table.

    Raises :class:`~bbverify.errors.ConfigurationError`.
    """
    from .config import verifier_from_mapping
    from .metrics import VerifierMetrics

    table = load_toml_table(path)
    rest, serve = split_serve(table)
    settings = serve_settings(serve)
    Gateway(verifier_from_mapping(rest), settings, metrics=VerifierMetrics(registry=None))
    return dict(serve)


def run(config: str, *, host: str | None = None, port: int | None = None, workers: int | None = None) -> int:
    """Serve the gateway until stopped; returns the exit status.

    ``host``, ``port`` and ``workers`` override ``[bbverify.serve]``
    (defaults 127.0.0.1, 9180, 1).
    """
    import uvicorn

    serve = check(config)
    host = host or serve.get("host", "127.0.0.1")
    port = serve.get("port", 9180) if port is None else port
    workers = workers or serve.get("workers", 1)
    if not isinstance(workers, int) or not 1 <= workers <= 64:
        raise ConfigurationError("must be between 1 and 64", key="--workers")
    os.environ[CONFIG_ENV] = os.path.abspath(config)
    own_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_dir = tempfile.mkdtemp(prefix="bbverify-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_dir
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
            log_level="warning",
        )
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
    return 0
