"""Bounded HTTP transfers: how ksym bounds every download (source files, debuginfod files).

A :class:`Transfer` runs the caller's ``work`` (its requests, its retries and backoff waits, its reads) in a
worker thread and waits for it at most ``Limits.seconds``: the deadline then holds in every phase (name
lookup, connecting, a proxy, the status line and headers, the body, every retry) however a server paces its
bytes, because the waiting thread never blocks on the network. At the deadline the waiting thread raises
:class:`TransferError` (kind ``deadline``), tells the worker to stop and shuts the current response's socket
down (urllib3 >= 2.3), so the worker ends at once in the body. Every request's timeouts are cut to the time
left, so a worker left waiting on a silent server ends within one of them; one whose server sends the status
line and headers a byte at a time ends when they do (requests gives no handle on the socket before them).

Inside ``work``, :meth:`Transfer.get` makes a request and :meth:`Transfer.read` reads its body, into a file
object or into bytes, with ``read1`` (what one socket read brings), checking after each arrival:

- the size cap: a ``Content-Length`` over ``Limits.max_bytes`` is refused before the body is read, and the
  body is cut as soon as it passes the cap (kind ``size``);
- the first bytes, when ``Limits.magic`` is set (the ELF magic for debuginfod; kind ``content``);
- the deadline.

:meth:`Transfer.download` is a whole file's download on top of them: it resumes a body that broke off with a
``Range`` request from the bytes already received, made conditional with ``If-Range`` on the first answer's
strong ``ETag`` (else its ``Last-Modified``) so that a file changed on the server meanwhile comes whole again
instead of being spliced; a server that ignores the range (200) or refuses it (416) makes it start over
cleanly; an answer with neither validator is never resumed (started over instead). :func:`sigterm_unwinds`
lets a download's cleanup (removing its temporary) run before SIGTERM ends the process.

Every failure is one :class:`TransferError` whose ``kind`` says what happened; callers word their messages
from it and from the transfer's counters (``got``, ``total``, ``head``), never from message text.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any, Generic, TypeVar

from .records import NamedTuple

__all__ = [
    "KINDS",
    "Fetched",
    "Limits",
    "ProgressLine",
    "Transfer",
    "TransferError",
    "new_session",
    "short_reason",
    "sigterm_unwinds",
]

T = TypeVar("T")

#: what a :class:`TransferError` can say: the overall deadline passed; over the size cap; the first bytes
#: are not the expected ones; an HTTP status the caller refuses; a connect or read timeout (each one, not
#: the overall deadline); the connection failed or broke off
KINDS = ("deadline", "size", "content", "http", "timeout", "network")
_CHUNK = 1 << 16
#: how often the waiting thread wakes to check the deadline and call ``tick``
_POLL = 0.1
#: requests one :meth:`Transfer.download` makes at most (the first and its resumes or restarts)
DOWNLOAD_TRIES = 4


class TransferError(Exception):
    """A transfer that did not complete. ``kind``: one of :data:`KINDS`; ``phase``: ``connect``, ``answer``
    (status line and headers) or ``body``; ``status``: the HTTP status (kind ``http``); ``cause``: the
    exception of requests or urllib3 behind a ``timeout`` or ``network`` error."""

    def __init__(self, kind: str, message: str, *, phase: str = "", status: int | None = None,
                 cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.phase = phase
        self.status = status
        self.cause = cause


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds of one transfer: ``seconds`` overall (every request, read and wait), at most
    ``max_bytes`` of body, ``timeout`` seconds for each connect and each read, and the first bytes the body
    must start with (``magic``; empty: any)."""

    seconds: float
    max_bytes: int
    timeout: float
    magic: bytes = b""


class Fetched(NamedTuple):
    """What :meth:`Transfer.download` did: the file's ``size``, the ``requests`` it took, how many of them
    continued the part already received (``resumed``: 206 from that byte) and how many times it started
    the file over (``restarted``: the server ignored or refused the range, the file changed, or the first
    answer gave no validator to resume it safely); ``breaks`` says why each request before the last ended
    early."""

    size: int
    requests: int
    resumed: int
    restarted: int
    breaks: tuple[str, ...]


def new_session(user_agent: str) -> Any:
    """A ``requests.Session`` sending ``user_agent`` (requests is imported only here)."""
    import requests

    session = requests.Session()
    session.headers["User-Agent"] = user_agent
    return session


class Transfer(Generic[T]):
    """One bounded transfer (see the module docstring).

    ``got`` and ``head`` start from a partial file being resumed; ``release`` (e.g. closing the file the
    body goes to) runs once, when both the worker has ended and the caller has left the ``with`` block,
    by whichever comes last, so a file is never closed while the other thread may still use it.

    Example::

        with Transfer(Limits(30, 1 << 20, 10), session=new_session("ksym")) as t:
            body = t.run(lambda t: t.read(t.get(url)), name="ksym-fetch")
    """

    def __init__(self, limits: Limits, *, session: Any = None, got: int = 0, head: bytes = b"",
                 release: Callable[[], None] | None = None) -> None:
        self.limits = limits
        self.session = session
        self.start = time.monotonic()
        #: body bytes written so far (counting a resumed partial file), the whole size when the server
        #: said it, the first bytes seen, and whether a body is being read (read by the waiting thread)
        self.got = got
        self.total: int | None = None
        self.head = head
        self.answered = False
        #: the ``If-Range`` value that resumes the file being read (a strong ``ETag``, else a
        #: ``Last-Modified``); None: it cannot be resumed safely
        self.validator: str | None = None
        self.cancel = threading.Event()
        self._lock = threading.Lock()
        self._response: Any = None
        self._release = release
        self._running = False
        self._left = False
        self._error: BaseException | None = None
        self._result: T | None = None

    # -- the waiting thread --

    def run(self, work: Callable[[Transfer[T]], T], *, name: str,
            tick: Callable[[Transfer[T]], None] | None = None) -> T:
        """``work(self)`` in a worker thread called ``name``, its result or its exception, by the deadline;
        ``tick(self)`` is called by this thread every few tenths of a second (a progress bar).

        :raises TransferError: kind ``deadline`` when the worker is not done in time.
        """
        worker = threading.Thread(target=self._work, args=(work,), name=name, daemon=True)
        with self._lock:
            self._running = True
        try:
            worker.start()
        except BaseException:
            self._finished()
            raise
        try:
            while True:
                left = self.left()
                worker.join(max(0.0, min(_POLL, left)))
                if tick is not None:
                    tick(self)
                if not worker.is_alive():
                    break
                if left <= 0:
                    raise self.late()
        except BaseException:
            self.stop()
            raise
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]  # set by a worker that raised nothing

    def stop(self) -> None:
        """Tell the worker to stop, and shut its current response's socket down so a read waiting on it
        returns (urllib3 >= 2.3; before, the read ends at its timeout, which is cut to the deadline)."""
        self.cancel.set()
        with self._lock:
            response = self._response
        shutdown = getattr(getattr(response, "raw", None), "shutdown", None)
        if shutdown is not None:
            with contextlib.suppress(Exception):  # released to the pool, closed: nothing waits on it
                shutdown()

    def __enter__(self) -> Transfer[T]:
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        with self._lock:
            self._left = True
            release = not self._running
        if release:
            self._do_release()

    def _work(self, work: Callable[[Transfer[T]], T]) -> None:
        try:
            self._result = work(self)
        except BaseException as exc:  # noqa: BLE001 - raised again by the waiting thread, never printed here
            self._error = exc
        finally:
            self._finished()

    def _finished(self) -> None:
        with self._lock:
            self._running = False
            release = self._left
        if release:
            self._do_release()

    def _do_release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    # -- the worker: requests, bodies, waits --

    def left(self) -> float:
        """Seconds left before the deadline."""
        return self.limits.seconds - (time.monotonic() - self.start)

    def late(self, phase: str = "") -> TransferError:
        return TransferError("deadline", f"not complete within {self.limits.seconds:g} s", phase=phase)

    def get(self, url: str, headers: dict[str, str] | None = None) -> Any:
        """``GET url`` (``stream=True``, redirects followed), its timeouts cut to the deadline.

        :raises TransferError: ``deadline``; ``timeout`` (phase ``connect`` or ``answer``); ``network``.
        """
        import requests

        left = self.left()
        if self.cancel.is_set() or left <= 0:
            raise self.late("connect")
        timeout = max(0.001, min(self.limits.timeout, left))
        cut = timeout < self.limits.timeout
        session = self.session if self.session is not None else requests
        try:
            response = session.get(url, stream=True, timeout=(timeout, timeout), headers=headers,
                                   allow_redirects=True)
        except requests.Timeout as exc:
            if cut or self.cancel.is_set():
                raise self.late("answer") from None
            phase = "connect" if isinstance(exc, requests.ConnectTimeout) else "answer"
            raise TransferError("timeout", f"timed out after {timeout:g} s", phase=phase, cause=exc) from None
        except requests.RequestException as exc:
            if self.cancel.is_set():
                raise self.late("answer") from None
            raise TransferError("network", str(exc), phase="connect", cause=exc) from None
        with self._lock:
            if not self.cancel.is_set():
                self._response = response
                return response
        response.close()
        raise self.late("answer")

    def read(self, response: Any, out: IO[bytes] | None = None, *, total: int | None = None) -> bytes:
        """The body of ``response`` (from :meth:`get`), written to ``out`` (returning ``b""``) or returned;
        ``got`` counts on from a resumed part, and the cap and the first bytes hold for the whole file.
        ``total``: the whole file's size when the caller knows it (a ``Content-Range``); else ``got`` plus
        the ``Content-Length``, when there is one.

        :raises TransferError: ``size``, ``content``, ``deadline``; ``timeout`` (a read waited
            ``Limits.timeout``); ``network`` (the connection broke off).
        """
        from urllib3.exceptions import HTTPError as Urllib3Error
        from urllib3.exceptions import ReadTimeoutError

        length = str(response.headers.get("Content-Length", "")).strip()
        self.total = total if total is not None else self.got + int(length) if length.isdigit() else None
        if self.total is not None and self.total > self.limits.max_bytes:
            raise TransferError("size", f"{self.total} bytes, over the cap of {self.limits.max_bytes}",
                                phase="answer")
        self.answered = True
        magic = self.limits.magic
        chunks: list[bytes] = []
        read1 = response.raw.read1
        try:
            while True:
                if self.cancel.is_set():
                    raise self.late("body")
                chunk = read1(_CHUNK, decode_content=True)
                if not chunk:
                    break
                if len(self.head) < len(magic):
                    head = (self.head + chunk)[: len(magic)]
                    if head != magic[: len(head)]:
                        raise TransferError("content", f"starts with {head!r}, not {magic!r}", phase="body")
                    self.head = head
                if self.got + len(chunk) > self.limits.max_bytes:
                    raise TransferError("size", f"over the cap of {self.limits.max_bytes} bytes", phase="body")
                if out is not None:
                    out.write(chunk)
                    out.flush()  # in the file now: after a SIGKILL the next run resumes from all it got
                else:
                    chunks.append(chunk)
                self.got += len(chunk)
        except ReadTimeoutError as exc:
            if self.cancel.is_set() or self.left() <= 0:
                raise self.late("body") from None
            raise TransferError("timeout", f"no data for {self.limits.timeout:g} s", phase="body",
                                cause=exc) from None
        except (Urllib3Error, OSError) as exc:  # cut short (IncompleteRead, a reset), or shut down
            if self.cancel.is_set():
                raise self.late("body") from None
            raise TransferError("network", str(exc), phase="body", cause=exc) from None
        if self.cancel.is_set():  # a shutdown can look like the end of the body
            raise self.late("body")
        return b"".join(chunks)

    def restart(self, out: IO[bytes]) -> None:
        """Start the file over (the server ignored or refused a range): ``out`` emptied, nothing got."""
        out.seek(0)
        out.truncate()
        self.got, self.head, self.total = 0, b"", None

    def download(self, url: str, out: IO[bytes], *, headers: dict[str, str] | None = None,
                 tries: int = DOWNLOAD_TRIES) -> Fetched:
        """``GET url`` into ``out`` (empty, or holding ``got`` bytes of it), resuming when the body breaks off
        (see the module docstring), within the transfer's limits and at most ``tries`` requests.

        :raises TransferError: ``http`` (a status other than 200/206, e.g. 404: ``status`` says which;
            ``phase`` ``answer``), ``network`` (no connection; or the body broke off ``tries`` times), and
            every kind :meth:`get` and :meth:`read` raise.
        """
        resumed = restarted = requests = 0
        breaks: list[str] = []
        for _try in range(tries):
            # identity: byte counts and ranges are then those of the file itself
            ask = {"Accept-Encoding": "identity", **(headers or {})}
            if self.got and self.validator is None:
                self.restart(out)  # nothing tells a changed file from the same one: never splice them
                restarted += 1
            if self.got:
                ask["Range"] = f"bytes={self.got}-"
                ask["If-Range"] = str(self.validator)
            try:
                requests += 1
                response = self.get(url, ask)
            except TransferError as exc:
                if exc.kind == "network" and self.got:
                    breaks.append(short_reason(exc))  # the server went away mid-file: ask again for the rest
                    continue
                raise
            with response:
                status = response.status_code
                whole: int | None = None
                start = _range_start(response.headers.get("Content-Range"))
                if self.got and status == 206 and start == self.got and _same_validator(self.validator,
                                                                                        response.headers):
                    whole = _range_total(response.headers.get("Content-Range"))
                    resumed += 1
                elif status in (200, 206, 416) and (status == 200 or self.got):
                    if self.got:  # the range was ignored, refused, answered from elsewhere, or the file changed
                        self.restart(out)
                        restarted += 1
                    if status != 200:
                        breaks.append(f"HTTP {status}: the range asked for was not served")
                        continue
                    self.validator = _validator(response.headers)
                else:
                    raise TransferError("http", f"HTTP {status} {response.reason or ''}".rstrip(),
                                        phase="answer", status=status)
                try:
                    self.read(response, out, total=whole)
                except TransferError as exc:
                    if exc.kind != "network":
                        raise
                    breaks.append(short_reason(exc))  # cut short (IncompleteRead, a reset): ask for the rest
                    continue
            if self.total is None or self.got >= self.total:
                out.flush()
                return Fetched(self.got, requests, resumed, restarted, tuple(breaks))
            breaks.append(f"connection closed after {self.got} of {self.total} bytes")
        raise TransferError("network", f"the download broke off {len(breaks)} times "
                            f"({breaks[-1] if breaks else '?'})", phase="body")

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds`` (a backoff), or until the transfer is stopped.

        :raises TransferError: ``deadline`` when it was stopped or the wait would end past the deadline."""
        if seconds >= self.left() or self.cancel.wait(seconds):
            raise self.late()


class ProgressLine:
    """A download's progress: one line on ``stream`` (stderr), redrawn in place (``\\r``) at most ten times a
    second, ended by :meth:`done`."""

    def __init__(self, stream: IO[str], label: str, total: int | None) -> None:
        self.stream, self.label, self.total = stream, label, total
        self.last = 0.0
        self.got = 0
        self.drawn = False

    def update(self, got: int) -> None:
        self.got = got
        now = time.monotonic()
        if now - self.last >= 0.1:
            self.last = now
            self._draw()

    def _draw(self) -> None:
        mb = self.got / 1e6
        if self.total:
            pct = min(100, self.got * 100 // self.total)
            width = 24
            fill = width * pct // 100
            text = f"{self.label} [{'#' * fill}{'.' * (width - fill)}] {pct:3d}% {mb:.1f}/{self.total / 1e6:.1f} MB"
        else:
            text = f"{self.label} {mb:.1f} MB"
        try:
            self.stream.write("\r" + text + "\x1b[K")
            self.stream.flush()
        except (OSError, ValueError):
            pass
        self.drawn = True

    def done(self) -> None:
        self._draw()
        try:
            self.stream.write("\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass


def _validator(headers: Any) -> str | None:
    """What ``If-Range`` may carry to resume this answer's body: its strong ``ETag`` (a weak one, ``W/"..."``,
    may not be used), else its ``Last-Modified``; None when it has neither."""
    etag = str(headers.get("ETag") or "").strip()
    if etag and not etag.startswith("W/"):
        return etag
    modified = str(headers.get("Last-Modified") or "").strip()
    return modified or None


def _same_validator(validator: str | None, headers: Any) -> bool:
    """A 206 continues the file begun when its ``ETag`` (when it sends one and the validator is one) is the
    validator the part was read under."""
    etag = str(headers.get("ETag") or "").strip()
    return not (etag and validator and validator.startswith('"') and etag != validator)


def _range_start(value: str | None) -> int | None:
    m = re.match(r"bytes (\d+)-", (value or "").strip())
    return int(m.group(1)) if m else None


def _range_total(value: str | None) -> int | None:
    """The whole file's size in a ``Content-Range: bytes a-b/N`` (None for ``*`` or none)."""
    m = re.match(r"bytes \d+-\d+/(\d+)$", (value or "").strip())
    return int(m.group(1)) if m else None


def short_reason(exc: TransferError) -> str:
    """One short line for a broken connection: the innermost reason requests, urllib3, http.client or the
    socket gave."""
    text = str(exc.cause or exc)
    for pat in (r"\[Errno -?\d+\] [^'\")]+", r"IncompleteRead\([^)]*\)", r"Connection broken: [^'\")]+",
                r"Read timed out", r"Connection aborted"):
        m = re.search(pat, text)
        if m:
            return m.group(0).strip().rstrip(",")
    return " ".join(text.split())[:160]


class _Terminated(BaseException):
    """SIGTERM arrived during a download: unwinds it (removing its temporary) before the process ends."""


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While a download runs, SIGTERM (when nothing else handles it) unwinds the download first, so its
    temporary file is removed, then ends the process by SIGTERM as it would have. Elsewhere than in the
    main thread, or when the program handles SIGTERM itself, nothing changes."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield  # someone else handles SIGTERM (or cannot here): a later run's cleanup covers it
        return

    def raise_terminated(signum: int, frame: object) -> None:
        raise _Terminated

    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)  # the download's finally blocks have run: end as asked
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
