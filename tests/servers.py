"""Real servers on 127.0.0.1 for adapter tests.

uvicorn (ASGI) and werkzeug (WSGI) in threads, uvicorn over a Unix socket,
server processes (gunicorn, ``uvicorn --workers``) and nginx in front, all
on loopback or in a temporary directory, all stopped when the block ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn
from werkzeug.serving import WSGIRequestHandler, make_server


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


@contextmanager
def serve_asgi(app: Any, *, ws: str = "websockets-sansio", **options: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn on a free loopback port; yield its base URL.

    ``options`` go to ``uvicorn.Config`` (``root_path``, ``proxy_headers``...).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings: dict[str, Any] = {
        "log_level": "warning",
        "lifespan": "auto",
        "ws": ws,
        "access_log": False,
        # uvicorn would otherwise rewrite scope["client"] from X-Forwarded-For sent by 127.0.0.1
        "proxy_headers": False,
    }
    settings.update(options)
    config = uvicorn.Config(app, **settings)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.01)
        if not server.started:
            raise RuntimeError("uvicorn did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextmanager
def serve_wsgi(app: Any) -> Iterator[str]:
    """Run a WSGI ``app`` under werkzeug's threaded server on a free loopback port."""
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def bearer(token: str) -> dict[str, str]:
    """The ``Authorization`` header for ``token``."""
    return {"Authorization": f"Bearer {token}"}


# -- Unix sockets, nginx, subprocess servers (shared harness: reuse it, do not copy it) ------------


def free_port() -> int:
    """A currently free loopback TCP port (for servers that cannot take a bound socket)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_unix_socket(
    path: str, process: subprocess.Popen[Any] | None = None, timeout: float = 20
) -> None:
    """Wait (bounded) until something accepts connections on the Unix socket ``path``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening on {path}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.connect(path)
                return
            except OSError:
                pass
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {path} after {timeout} s")


def wait_for_port(port: int, process: subprocess.Popen[Any] | None = None, timeout: float = 20) -> None:
    """Wait (bounded) until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@contextmanager
def serve_asgi_uds(app: Any, directory: str | os.PathLike[str], **options: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn on a Unix socket in ``directory`` (``uvicorn --uds``); yield its path.

    ``options`` go to ``uvicorn.Config`` (``proxy_headers``, ``forwarded_allow_ips``, ``root_path``...).
    """
    path = os.path.join(os.fspath(directory), f"uvicorn-{os.getpid()}-{threading.get_ident()}.sock")
    settings: dict[str, Any] = {"log_level": "warning", "lifespan": "auto", "access_log": False}
    settings.update(options)
    server = uvicorn.Server(uvicorn.Config(app, uds=path, **settings))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(1000):
            if server.started or not thread.is_alive():
                break
            time.sleep(0.01)
        if not server.started:
            raise RuntimeError("uvicorn did not start on its Unix socket")
        yield path
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def uds_client(path: str, **options: Any) -> httpx.Client:
    """An httpx client whose requests go to the Unix socket ``path`` (host part ignored)."""
    return httpx.Client(transport=httpx.HTTPTransport(uds=path), base_url="http://localhost", **options)


@contextmanager
def run_process(
    argv: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server process in its own process group; stop it (TERM, then KILL) on exit."""
    process = subprocess.Popen(
        argv,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()


NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def nginx_config(
    directory: str, port: int, upstream: str, locations: str = "", *, http_extra: str = ""
) -> str:
    """An nginx.conf for a loopback reverse proxy to ``upstream`` (``unix:/path`` or ``127.0.0.1:port``).

    Everything nginx writes (pid, logs, temp files) stays in ``directory``.
    ``locations`` replaces the default ``location /`` block, which is the
    proxy recipe of docs/adapters.md (nginx appends the peer it saw to
    ``X-Forwarded-For``). ``http_extra`` goes in the ``http`` block before the
    server (``upstream`` blocks, for instance).
    """
    target = f"http://{upstream}:" if upstream.startswith("unix:") else f"http://{upstream}"
    location = locations or f"""
        location / {{
            proxy_pass {target};
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}"""
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}daemon off;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    underscores_in_headers off;
{http_extra}
    server {{
        listen 127.0.0.1:{port};
        {location}
    }}
}}
"""


@contextmanager
def serve_nginx(
    directory: str | os.PathLike[str], upstream: str, locations: str = "", *, http_extra: str = ""
) -> Iterator[str]:
    """Run nginx on a free loopback port in front of ``upstream``; yield its base URL.

    ``upstream`` is ``unix:/path/to.sock`` or ``127.0.0.1:PORT``; see
    :func:`nginx_config`. nginx runs in the foreground (``daemon off``) in
    its own process group and is stopped when the block ends.
    """
    root = os.path.join(os.fspath(directory), f"nginx-{threading.get_ident()}")
    os.makedirs(root, exist_ok=True)
    last = ""
    for _ in range(5):  # another process may take the free port between the probe and nginx's bind
        port = free_port()
        conf = os.path.join(root, "nginx.conf")
        with open(conf, "w", encoding="utf-8") as fh:
            fh.write(nginx_config(root, port, upstream, locations, http_extra=http_extra))
        with run_process([NGINX, "-p", root, "-c", conf]) as process:
            try:
                wait_for_port(port, process, timeout=10)
            except RuntimeError as exc:
                last = str(exc)
                continue
            yield f"http://127.0.0.1:{port}"
            return
    raise RuntimeError(f"nginx did not start: {last}")


CADDY = shutil.which("caddy") or "/usr/bin/caddy"


@contextmanager
def serve_caddy(directory: str | os.PathLike[str], site: str) -> Iterator[str]:
    """Run Caddy on a free loopback port with ``site`` (a Caddyfile site block); yield its base URL.

    The site block's address must be ``http://:8080`` (replaced by the free
    port here); the global options turn the admin endpoint and automatic
    HTTPS off, and HOME/XDG directories stay in ``directory``.
    """
    root = os.path.join(os.fspath(directory), f"caddy-{threading.get_ident()}")
    os.makedirs(root, exist_ok=True)
    env = {
        "HOME": root,
        "XDG_DATA_HOME": os.path.join(root, "data"),
        "XDG_CONFIG_HOME": os.path.join(root, "config"),
    }
    last = ""
    for _ in range(5):  # another process may take the free port between the probe and Caddy's bind
        port = free_port()
        conf = os.path.join(root, "Caddyfile")
        with open(conf, "w", encoding="utf-8") as fh:
            fh.write(
                "{\n\tadmin off\n\tauto_https off\n}\n\n" + site.replace("http://:8080", f"http://:{port}")
            )
        with run_process([CADDY, "run", "--config", conf, "--adapter", "caddyfile"], env=env) as process:
            try:
                wait_for_port(port, process, timeout=15)
            except RuntimeError as exc:
                last = str(exc)
                continue
            yield f"http://127.0.0.1:{port}"
            return
    raise RuntimeError(f"caddy did not start: {last}")
