"""ksym.transfer, the one bounded-transfer mechanism, where the source and debuginfod tests do not reach it:
a proxy that trickles its headers, and the worker thread a deadline leaves behind.

Real servers on 127.0.0.1 that send their bytes slowly; the deadline is checked by the clock."""

from __future__ import annotations

import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ksym.source import SourceFetchError, SourceProvider
from ksym.transfer import Limits, Transfer, TransferError


class SlowServer(socketserver.ThreadingTCPServer):
    """Reads one request, then sends ``head`` at once and each byte of ``rest`` every ``pace`` seconds,
    until ``stopped``. As a proxy it answers every request itself (forwarding nothing)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, head: bytes, rest: bytes, pace: float) -> None:
        self.head, self.rest, self.pace = head, rest, pace
        self.stopped = threading.Event()
        self.requests: list[bytes] = []
        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(socketserver.StreamRequestHandler):
    server: SlowServer

    def handle(self) -> None:
        self.server.requests.append(self.rfile.readline())
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        try:
            self.wfile.write(self.server.head)
            self.wfile.flush()
            for byte in self.server.rest:
                if self.server.stopped.wait(self.server.pace):
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
        except OSError:
            return  # the client went away


def serve(srv: SlowServer) -> Iterator[SlowServer]:
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.stopped.set()
        srv.shutdown()
        srv.server_close()
        thread.join(5)
        assert not thread.is_alive()


@pytest.fixture
def trickling_proxy() -> Iterator[SlowServer]:
    """A proxy whose answer's headers come one byte every 0.2 s (for about 8 s, then complete)."""
    yield from serve(SlowServer(b"HTTP/1.1 200 OK\r\nX-Pad: ", b"a" * 40 + b"\r\nContent-Length: 0\r\n\r\n", 0.2))


@pytest.fixture
def trickling_body() -> Iterator[SlowServer]:
    """A body of 100 bytes, its first at once and the others one every 1.4 s."""
    yield from serve(SlowServer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nx", b"x" * 99, 1.4))


def test_the_deadline_holds_through_a_proxy(trickling_proxy: SlowServer, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy (here one that sends its status line and headers a byte at a time) is bounded as a server is."""
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", trickling_proxy.url)
    p = SourceProvider(url_template="http://127.0.0.1:9/plain/{path}?h={tag}", cache_dir=tmp_path, timeout=1.0,
                       retries=3, deadline=1.5)
    start = time.monotonic()
    with pytest.raises(SourceFetchError) as info:
        p.get_lines("v6.1", "x.c")
    assert time.monotonic() - start < 1.5 + 1.0
    assert info.value.kind == "timeout" and "gave up after 1.5 s" in str(info.value)
    assert trickling_proxy.requests == [b"GET http://127.0.0.1:9/plain/x.c?h=v6.1 HTTP/1.1\r\n"], \
        "the request went through the proxy, once"
    # no answer within the deadline: the host counts as down for the other files of the run
    start = time.monotonic()
    with pytest.raises(SourceFetchError) as info:
        p.get_lines("v6.1", "y.c")
    assert time.monotonic() - start < 0.5 and len(trickling_proxy.requests) == 1
    assert info.value.kind == "timeout" and "skipped" in str(info.value)


def test_the_worker_stops_at_the_deadline(trickling_body: SlowServer) -> None:
    """At the deadline the response's socket is shut down: the worker, waiting for a byte that comes later
    (within its read timeout), ends at once instead of at that byte."""
    name = "ksym-test-transfer"
    transfer: Transfer[bytes] = Transfer(Limits(seconds=2.0, max_bytes=1000, timeout=1.5))
    start = time.monotonic()
    with pytest.raises(TransferError) as info, transfer:
        transfer.run(lambda t: t.read(t.get(trickling_body.url + "/f")), name=name)
    assert info.value.kind == "deadline" and transfer.answered and transfer.got >= 1
    assert 2.0 <= time.monotonic() - start < 2.0 + 0.3
    gone = time.monotonic()
    while any(t.name == name for t in threading.enumerate()) and time.monotonic() - gone < 5:
        time.sleep(0.02)
    # the next byte would come 2.8 s after the start: the worker ended well before it
    assert time.monotonic() - gone < 0.4, "the worker outlived the deadline until its next byte"
