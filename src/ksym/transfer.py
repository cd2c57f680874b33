"""Bounded HTTP transfers: an overall deadline and a size cap for ``requests``.

requests' ``timeout`` applies to each read: a server that sends one byte every few seconds never trips
it, and a body can be as large as the server likes (docs/source.md, "Errors, retries and rate limits").

- :func:`deadline_session` and :func:`session_deadline` bound a whole request, status line and headers
  included: the request's socket is shut down at the deadline.
- :func:`read_body` reads a ``stream=True`` response with both limits:

  - the body is read with ``read1`` (whatever one socket read returns) so the deadline is checked after
    every arrival, and a timer shuts the connection down at the deadline, so a read that is waiting
    returns then;
  - a ``Content-Length`` over the cap is refused before reading, and reading stops one chunk past it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["TransferLimit", "Watch", "deadline_session", "read_body", "session_deadline"]


class TransferLimit(Exception):
    """The body was not read whole within a limit. ``kind``: ``deadline`` or ``too-large``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def read_body(resp: Any, *, deadline: float, max_bytes: int, chunk_size: int = 65536) -> bytes:
    """The whole body of ``resp`` (a ``requests.Response`` made with ``stream=True``), read by
    ``deadline`` (a :func:`time.monotonic` value) and at most ``max_bytes`` long.

    :raises TransferLimit: the deadline passed (``kind="deadline"``) or the body is larger than
        ``max_bytes`` (``kind="too-large"``).
    :raises requests.RequestException: the connection failed while reading (as ``iter_content`` does).
    """
    length = str(resp.headers.get("Content-Length", "")).strip()
    if length.isdigit() and int(length) > max_bytes:
        raise TransferLimit("too-large", f"{int(length)} bytes, over the {_size(max_bytes)} cap")
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TransferLimit("deadline", "no time left")
    raw = resp.raw
    fired = threading.Event()

    def stop() -> None:
        fired.set()
        shutdown = getattr(raw, "shutdown", None)  # urllib3 >= 2.3: wakes a read waiting in another thread
        if shutdown is not None:
            with contextlib.suppress(Exception):  # best effort: the deadline is checked after each read too
                shutdown()

    timer = threading.Timer(remaining, stop)
    timer.daemon = True
    timer.start()
    chunks: list[bytes] = []
    size = 0
    try:
        read1 = getattr(raw, "read1", None)
        pieces: Iterator[bytes] = iter(()) if read1 is not None else resp.iter_content(chunk_size=1024)
        while True:
            if fired.is_set() or time.monotonic() >= deadline:
                raise TransferLimit("deadline", f"not complete after {_size(size)}")
            try:
                chunk = read1(chunk_size, decode_content=True) if read1 is not None else next(pieces, b"")
            except Exception:
                if fired.is_set():
                    raise TransferLimit("deadline", f"not complete after {_size(size)}") from None
                raise
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise TransferLimit("too-large", f"over the {_size(max_bytes)} cap")
            chunks.append(chunk)
        if fired.is_set():  # the shutdown can look like the end of the body
            raise TransferLimit("deadline", f"not complete after {_size(size)}")
    finally:
        timer.cancel()
    return b"".join(chunks)


def _size(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    return f"{n} bytes" if n != 1 else "1 byte"


class Watch:
    """One request's deadline: the connection it uses, and whether the deadline fired."""

    __slots__ = ("conn", "fired")

    def __init__(self) -> None:
        self.conn: Any = None
        self.fired = threading.Event()

    def stop(self) -> None:
        """Shut the request's socket down: a read waiting on it (status line, headers, body) returns."""
        self.fired.set()
        sock = getattr(self.conn, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def deadline_session(user_agent: str) -> Any:
    """A ``requests.Session`` whose adapter can bound a whole request, headers included:
    ``with session_deadline(session, seconds) as watch: session.get(...)``."""
    import requests

    session = requests.Session()
    session.headers["User-Agent"] = user_agent
    adapter = _deadline_adapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


@contextlib.contextmanager
def session_deadline(session: Any, url: str, seconds: float) -> Iterator[Watch]:
    """Within the block, the request the current thread makes to ``url`` through ``session`` (made by
    :func:`deadline_session`) has its socket shut down after ``seconds``; ``watch.fired`` tells."""
    watch = Watch()
    adapter = session.get_adapter(url)
    local = getattr(adapter, "local", None)
    if local is not None:
        local.watch = watch
    timer = threading.Timer(max(0.0, seconds), watch.stop)
    timer.daemon = True
    timer.start()
    try:
        yield watch
    finally:
        timer.cancel()
        if local is not None:
            local.watch = None


def _deadline_adapter() -> Any:
    """The adapter class is made on first use: requests is imported lazily."""
    from requests.adapters import HTTPAdapter
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class Adapter(HTTPAdapter):
        """Tells the current thread's :class:`Watch` which connection its request got."""

        def __init__(self) -> None:
            self.local = threading.local()
            super().__init__()

        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            local = self.local

            def watched(base: type[HTTPConnectionPool]) -> type[HTTPConnectionPool]:
                class Pool(base):  # type: ignore[valid-type,misc]
                    def _get_conn(self, timeout: float | None = None) -> Any:
                        conn = super()._get_conn(timeout)
                        watch = getattr(local, "watch", None)
                        if watch is not None:
                            watch.conn = conn
                        return conn

                return Pool

            self.poolmanager.pool_classes_by_scheme = {"http": watched(HTTPConnectionPool),
                                                       "https": watched(HTTPSConnectionPool)}

    return Adapter()
