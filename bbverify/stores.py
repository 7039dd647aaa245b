"""Shared key stores: one fetch per refresh for a whole host or fleet, not one per process.

A key store keeps, per key source, one small JSON entry: the issuer's key set
as fetched, when it was fetched, its HTTP validators and the fleet's fetch
budget (:mod:`bbverify.budget`). It also offers a short lock so that one
process fetches while the others wait for its result or read it.

The store holds bytes only. :class:`~bbverify.keys.RemoteKeySet` parses and
checks whatever it reads exactly like a fresh fetch (the store is trusted no
more than the network) and ignores, with a log line, an entry that is corrupt
or belongs to another key source.

* :class:`FileKeyStore`: per host; a directory owned by this user and not
  writable by others, atomic replace, ``flock`` for the lock. Survives
  restarts, so a restarted service verifies before its first fetch.
* :class:`RedisKeyStore`: per fleet (``pip install '.[redis]'`` in a checkout);
  ``SET NX PX`` lock (redis-py's :class:`redis.lock.Lock`), a short timeout
  on every call.
* :class:`MemoryKeyStore`: per process (several verifiers, tests).

Every store raises :class:`StoreUnavailable` when it cannot answer; the key
source then falls back to fetching on its own, within its own budget.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, urlsplit

from .errors import ConfigurationError, StoreUnavailable

if TYPE_CHECKING:  # pragma: no cover
    import redis

__all__ = [
    "DEFAULT_REDIS_TIMEOUT",
    "MAX_ENTRY_BYTES",
    "STORE_SETTINGS",
    "FileKeyStore",
    "KeyStore",
    "MemoryKeyStore",
    "RedisKeyStore",
    "StoreUnavailable",
    "key_store_from_mapping",
]

#: Largest entry read from a store, in bytes (a key set is capped far below).
MAX_ENTRY_BYTES = 1024 * 1024
#: Seconds every Redis call may take (connect, read, write).
DEFAULT_REDIS_TIMEOUT = 0.25


class KeyStore(Protocol):
    """What :class:`~bbverify.keys.RemoteKeySet` needs from a shared store.

    ``name`` identifies the key source (its issuer or key-set URL); stores
    derive their own file or key names from it.
    """

    def read(self, name: str) -> bytes | None:
        """The stored entry, or ``None``; raise :class:`StoreUnavailable` if unreadable."""
        ...

    def write(self, name: str, data: bytes) -> None:
        """Replace the entry (atomically); raise :class:`StoreUnavailable` on failure."""
        ...

    def lock(self, name: str, timeout: float) -> contextlib.AbstractContextManager[bool]:
        """Hold the fetch lock for ``name``, waiting at most ``timeout`` seconds.

        The context value is ``True`` when this caller holds the lock, and
        ``False`` when it timed out (another process is fetching).
        """
        ...


#: OS errors retrying cannot mend: the directory's or file's owner, mode or kind.
_PERMANENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.ELOOP, errno.EROFS})


def _os_failure(what: str, path: str, exc: OSError) -> StoreUnavailable:
    return StoreUnavailable(f"cannot {what} {path}: {exc.strerror}", permanent=exc.errno in _PERMANENT_ERRNOS)


#: redis-py URL options that would replace the deadlines bbverify sets.
_REDIS_DEADLINE_OPTIONS = frozenset(
    {"socket_timeout", "socket_connect_timeout", "retry_on_timeout", "retry_on_error", "timeout"}
)


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8")).hexdigest()[:32]


class MemoryKeyStore:
    """A store inside one process (tests, or verifiers that share a process)."""

    def __init__(self) -> None:
        self._entries: dict[str, bytes] = {}
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        os.register_at_fork(after_in_child=self._reset_locks)

    def _reset_locks(self) -> None:
        # A lock held by a thread of the parent is held by nobody in the child.
        self._guard = threading.Lock()
        self._locks = {}

    def read(self, name: str) -> bytes | None:
        return self._entries.get(name)

    def write(self, name: str, data: bytes) -> None:
        self._entries[name] = bytes(data)

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float) -> Iterator[bool]:
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        held = lock.acquire(timeout=max(0.0, timeout))
        try:
            yield held
        finally:
            if held:
                lock.release()


class FileKeyStore:
    """A per-host store in ``directory`` (one JSON file and one lock file per key source).

    The directory is created (mode 0700) if missing. It must belong to the
    current user and not be writable by group or others, because whoever can
    write there can offer keys; otherwise :class:`ConfigurationError` is raised.
    Files are replaced atomically (write, ``fsync``, ``os.replace``), so a
    reader sees the old entry or the new one, never half of one. The lock is
    ``flock`` on a separate file, released by the kernel if its holder dies.

    Args:
        directory: where entries live (for example ``/run/bbverify`` or
            ``/var/cache/bbverify``; a path on local disk, not NFS).
        poll: seconds between attempts while waiting for the lock.
    """

    def __init__(self, directory: str | os.PathLike[str], *, poll: float = 0.005) -> None:
        self.directory = os.path.abspath(os.fspath(directory))
        self._poll = float(poll)
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            info = os.stat(self.directory, follow_symlinks=False)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot use {self.directory!r}: {exc.strerror}", key="key_store.directory"
            ) from None
        if not stat.S_ISDIR(info.st_mode):
            raise ConfigurationError(f"{self.directory!r} is not a directory", key="key_store.directory")
        if info.st_uid != os.geteuid() or info.st_mode & 0o022:
            raise ConfigurationError(
                f"{self.directory!r} must belong to this user and not be writable by group or others "
                "(whoever can write there can offer signing keys)",
                key="key_store.directory",
            )
        # Every descriptor opened for locking, held or still waiting: a fork
        # must close all of them in the child (an open copy keeps a flock).
        self._lock_fds: set[int] = set()
        self._last: dict[str, tuple[tuple[int, int, int], bytes]] = {}
        os.register_at_fork(after_in_child=self._forget_locks)

    def _forget_locks(self) -> None:
        # The child inherited the descriptors of locks the parent holds; it
        # must close its copies (closing a copy does not release the parent's
        # lock) so that the lock is freed when the parent is done.
        # The same goes for a descriptor a thread was polling with: that thread
        # does not exist in the child, so nothing else would ever close it.
        for fd in self._lock_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._lock_fds = set()

    def path(self, name: str) -> str:
        """The entry file for key source ``name``."""
        return os.path.join(self.directory, _digest(name) + ".json")

    def read(self, name: str) -> bytes | None:
        path = self.path(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _os_failure("open", path, exc) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
                raise StoreUnavailable(
                    f"{path} is not a regular file of this user, private to it", permanent=True
                )
            signature = (info.st_ino, info.st_mtime_ns, info.st_size)
            cached = self._last.get(name)
            if cached is not None and cached[0] == signature:
                return cached[1]  # unchanged since the last read: skip the read
            if info.st_size > MAX_ENTRY_BYTES:
                raise StoreUnavailable(f"{path} is larger than {MAX_ENTRY_BYTES} bytes")
            with os.fdopen(fd, "rb", closefd=False) as fh:
                data = fh.read(MAX_ENTRY_BYTES + 1)
        except OSError as exc:
            raise _os_failure("read", path, exc) from None
        finally:
            os.close(fd)
        if len(data) > MAX_ENTRY_BYTES:
            raise StoreUnavailable(f"{path} is larger than {MAX_ENTRY_BYTES} bytes")
        self._last[name] = (signature, data)
        return data

    def write(self, name: str, data: bytes) -> None:
        path = self.path(name)
        tmp_name: str | None = None
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=self.directory)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_name, path)
            tmp_name = None
        except OSError as exc:
            raise _os_failure("write", path, exc) from None
        finally:
            if tmp_name is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_name)

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float) -> Iterator[bool]:
        path = os.path.join(self.directory, _digest(name) + ".lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise _os_failure("open", path, exc) from None
        self._lock_fds.add(fd)
        held = False
        try:
            # A real-time deadline: the lock waits on other processes, not on a test clock.
            deadline = time.monotonic() + max(0.0, timeout)
            for _ in range(1_000_000):  # bounded; the deadline ends it long before
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held = True
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise _os_failure("lock", path, exc) from None
                if time.monotonic() >= deadline:
                    break
                time.sleep(self._poll)
            yield held
        finally:
            # Closing the descriptor releases the flock. After a fork inside
            # this block the child already closed it (and the number may be
            # reused): close only what is still ours.
            if fd in self._lock_fds:
                self._lock_fds.discard(fd)
                os.close(fd)


class RedisKeyStore:
    """A fleet-wide store in Redis (``pip install '.[redis]'`` in a checkout of bbverify).

    Each key source has one Redis key holding its entry (key set, fetch time,
    validators and budget) and one lock key set with ``SET NX PX`` through
    :class:`redis.lock.Lock`, which expires by itself if its holder dies.

    Args:
        url: a ``redis://`` or ``rediss://`` URL (or a Unix socket ``unix://``);
            the client is built with ``timeout`` on connect and every call.
        client: a ready ``redis.Redis`` instead of ``url``; it must have a
            ``socket_timeout`` of at most 1 second (redis-py's default is 5),
            so that no request waits long on a Redis that stopped answering.
        prefix: prepended to every key (``bbverify:``).
        timeout: seconds for connecting and for each call (default 0.25).
        lock_ttl: seconds after which an abandoned lock expires (default 15).
        entry_ttl: seconds an entry is kept without being rewritten (default 7 days).

    Raises:
        ConfigurationError: redis-py is missing, or the arguments are unusable.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: redis.Redis | None = None,
        prefix: str = "bbverify:",
        timeout: float = DEFAULT_REDIS_TIMEOUT,
        lock_ttl: float = 15.0,
        entry_ttl: float = 7 * 24 * 3600.0,
    ) -> None:
        try:
            import redis as redis_module
        except ImportError:  # pragma: no cover - depends on the install
            raise ConfigurationError(
                "the Redis key store needs redis-py: pip install '.[redis]' in a checkout of bbverify",
                key="key_store.kind",
            ) from None
        # Any exception at all: redis-py raises AttributeError, TypeError or
        # ValueError on replies it did not expect, and every one of them must
        # become StoreUnavailable (a per-process fallback), never a 503.
        self._errors: tuple[type[BaseException], ...] = (Exception,)
        # Refused credentials or ACL permissions: no retry mends them
        # (AuthorizationError is missing from older redis-py).
        self._refusals: tuple[type[BaseException], ...] = tuple(
            getattr(redis_module.exceptions, name)
            for name in (
                "AuthenticationError",
                "AuthorizationError",
                "AuthenticationWrongNumberOfArgsError",
                "NoPermissionError",
            )
            if hasattr(redis_module.exceptions, name)
        )
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= 1:
            raise ConfigurationError("must be more than 0 and at most 1 second", key="key_store.timeout")
        if (url is None) == (client is None):
            raise ConfigurationError("give a Redis url or a client, not both", key="key_store.url")
        if client is None:
            assert url is not None
            if not isinstance(url, str) or url.split("://", 1)[0] not in ("redis", "rediss", "unix"):
                raise ConfigurationError("must be a redis://, rediss:// or unix:// URL", key="key_store.url")
            # redis-py lets URL options replace keyword arguments: a timeout
            # there would undo key_store.timeout, so it is not accepted.
            query = parse_qs(urlsplit(url).query, keep_blank_values=True)
            overriding = sorted(set(query) & _REDIS_DEADLINE_OPTIONS)
            if overriding:
                raise ConfigurationError(
                    f"must not set {', '.join(overriding)}: use key_store.timeout", key="key_store.url"
                )
            try:
                client = redis_module.Redis.from_url(
                    url,
                    socket_timeout=timeout,
                    socket_connect_timeout=timeout,
                    retry_on_timeout=False,
                    health_check_interval=0,
                )
                # Build (not connect) one connection now, so that a misspelt URL
                # option is a start-up error rather than a store that never works.
                pool = client.connection_pool
                pool.connection_class(**pool.connection_kwargs)
            except (TypeError, ValueError) as exc:
                # The message names the option, never the URL (it may hold a password).
                raise ConfigurationError(f"unusable Redis URL: {exc}", key="key_store.url") from None
        else:
            configured = client.connection_pool.connection_kwargs.get("socket_timeout")
            if not isinstance(configured, int | float) or not 0 < configured <= 1:
                raise ConfigurationError(
                    "the Redis client needs a socket_timeout of at most 1 second", key="key_store.client"
                )
        if isinstance(lock_ttl, bool) or not isinstance(lock_ttl, int | float) or not 0 < lock_ttl <= 600:
            raise ConfigurationError("must be more than 0 and at most 600 seconds", key="key_store.lock_ttl")
        self._client = client
        self.prefix = str(prefix)
        self._lock_ttl = float(lock_ttl)
        self._entry_ttl = int(entry_ttl)

    @property
    def lock_ttl(self) -> float:
        """Seconds after which an abandoned fetch lock expires."""
        return self._lock_ttl

    def _expire_if_persistent(self, key: str) -> None:
        # Our locks always expire (SET NX PX); a lock key without a TTL was
        # left by a restore, a PERSIST or a foreign writer and would block
        # the fleet forever. Give it our TTL, so it goes stale like ours.
        with contextlib.suppress(*self._errors):
            if self._client.pttl(key) == -1:
                self._client.pexpire(key, int(self._lock_ttl * 1000))

    def _failure(self, operation: str, exc: BaseException) -> StoreUnavailable:
        refused = isinstance(exc, self._refusals)
        return StoreUnavailable(f"Redis {operation} failed: {type(exc).__name__}: {exc}", permanent=refused)

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{_digest(name)}"

    def read(self, name: str) -> bytes | None:
        try:
            value: Any = self._client.get(self._key("jwks", name))
        except self._errors as exc:
            raise self._failure("GET", exc) from None
        if value is None:
            return None
        if not isinstance(value, bytes):
            value = str(value).encode("utf-8")
        if len(value) > MAX_ENTRY_BYTES:
            raise StoreUnavailable(f"Redis entry is larger than {MAX_ENTRY_BYTES} bytes")
        return bytes(value)

    def write(self, name: str, data: bytes) -> None:
        try:
            self._client.set(self._key("jwks", name), data, ex=self._entry_ttl)
        except self._errors as exc:
            raise self._failure("SET", exc) from None

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float) -> Iterator[bool]:
        lock = self._client.lock(
            self._key("lock", name),
            timeout=self._lock_ttl,
            sleep=0.01,
            blocking=True,
            blocking_timeout=max(0.01, timeout),
            thread_local=False,
        )
        try:
            held = bool(lock.acquire())
        except self._errors as exc:
            raise self._failure("lock", exc) from None
        if not held:
            self._expire_if_persistent(self._key("lock", name))
        try:
            yield held
        finally:
            if held:
                # Expired already, or Redis went away: the lock expires by itself.
                with contextlib.suppress(*self._errors):
                    lock.release()


#: The keys of a ``[bbverify.key_store]`` table, per ``kind``.
STORE_SETTINGS: dict[str, frozenset[str]] = {
    "file": frozenset({"kind", "directory"}),
    "redis": frozenset({"kind", "url", "prefix", "timeout", "lock_ttl"}),
    "memory": frozenset({"kind"}),
}


def key_store_from_mapping(
    mapping: Mapping[str, Any], *, spell: Callable[[str], str] = lambda name: f"key_store.{name}"
) -> KeyStore:
    """Build a store from a ``[bbverify.key_store]`` table (or ``BBVERIFY_KEY_STORE_*`` values).

    ``kind`` is ``"file"`` (with ``directory``), ``"redis"`` (with ``url``,
    optional ``prefix``, ``timeout`` and ``lock_ttl`` in seconds) or
    ``"memory"``. String values of numbers are parsed (environment
    variables). ``spell`` turns a key into the name the user wrote, for errors.

    Raises:
        ConfigurationError: an unknown kind or key, a missing or malformed value.
    """
    if not isinstance(mapping, Mapping):
        raise ConfigurationError("must be a table with a 'kind'", key=spell("kind").rsplit(".", 1)[0])
    kind = mapping.get("kind")
    if kind not in STORE_SETTINGS:
        raise ConfigurationError(
            f"must be one of {', '.join(sorted(STORE_SETTINGS))}, not {kind!r}", key=spell("kind")
        )
    allowed = STORE_SETTINGS[kind]
    for name in mapping:
        if name not in allowed:
            raise ConfigurationError(
                f"unknown setting for a {kind} key store; known: {', '.join(sorted(allowed))}",
                key=spell(str(name)),
            )

    def text(name: str) -> str:
        value = mapping.get(name)
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str) or not value.strip():
            raise ConfigurationError(f"must be a non-empty string, not {value!r}", key=spell(name))
        return value.strip()

    def seconds(name: str, default: float) -> float:
        value = mapping.get(name, default)
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ConfigurationError(
                    f"must be a number of seconds, not {value!r}", key=spell(name)
                ) from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigurationError(f"must be a number of seconds, not {value!r}", key=spell(name))
        return float(value)

    try:
        if kind == "file":
            return FileKeyStore(text("directory"))
        if kind == "redis":
            return RedisKeyStore(
                text("url"),
                prefix=text("prefix") if "prefix" in mapping else "bbverify:",
                timeout=seconds("timeout", DEFAULT_REDIS_TIMEOUT),
                lock_ttl=seconds("lock_ttl", 15.0),
            )
    except ConfigurationError as exc:
        if not (exc.key or "").startswith("key_store."):
            raise
        # Re-spell the store's own key (key_store.url) the way the user wrote it.
        name = (exc.key or "").rsplit(".", 1)[-1]
        raise ConfigurationError(exc.detail, key=spell(name)) from None
    return MemoryKeyStore()
