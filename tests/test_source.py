"""Source lookup, fetching, caching and faddr2line --list output (ksym.source).

The HTTP tests run a real server on 127.0.0.1 (port 0) in a thread, serving a small source tree the
way git.kernel.org's plain view does (``/plain/<path>?h=<tag>``), with misbehaving paths for the
error cases. Nothing here talks to any other address.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from anchors import TESTDATA, missing

from ksym.errors import KsymError
from ksym.source import (
    SourceFetchError,
    SourceProvider,
    default_cache_dir,
    find_source_dir,
    format_list,
    parse_location,
    render_context,
    shell_words,
    split_lines,
    tree_version,
)
from ksym.version import KernelVersion

TAG = "v6.1.187"
IP_OUTPUT = "".join(f"\tline {n} of ip_output.c\n" for n in range(1, 31))
NETFILTER = "".join(f"/* netfilter.h {n} */\n" for n in range(1, 13))
FILES = {
    "net/ipv4/ip_output.c": IP_OUTPUT,
    "include/linux/netfilter.h": NETFILTER,
    "slow.c": "slow\n",
    "flaky.c": "after one 500\n",
    "broken.c": "never served\n",
    "limited.c": "after one 429\n",
    "limited-long.c": "never served\n",
    "escape.c": "ok\n\x1b[2Jcleared?\n",
    "page.c": "<html><body>a web page</body></html>\n",
    "big/a.c": "a" * 999 + "\n",
    "big/b.c": "b" * 999 + "\n",
    "big/c.c": "c" * 999 + "\n",
    "trickle.c": "t" * 99 + "\n",
    "trickle-headers.c": "never complete\n",
    "huge.c": "h" * 1999 + "\n",
    "huge-nolength.c": "n" * 4999 + "\n",
}
TRICKLE_SECONDS = 0.5
SLOW_SECONDS = 1.5


class TreeServer(ThreadingHTTPServer):
    # server_close joins the threads answering requests; ``stopping`` ends the slow and trickling ones
    daemon_threads = False
    block_on_close = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), TreeHandler)
        self.requests: list[str] = []
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    @property
    def url_template(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/plain/{{path}}?h={{tag}}"

    def hits(self, path: str) -> int:
        with self.lock:
            return self.counts.get(path, 0)


class TreeHandler(BaseHTTPRequestHandler):
    server: TreeServer

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        if "Content-Type" not in (headers or {}):
            self.send_header("Content-Type", "text/plain; charset=UTF-8")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        tag = parse_qs(url.query).get("h", [""])[0]
        path = unquote(url.path).removeprefix("/plain/")
        with self.server.lock:
            self.server.requests.append(self.path)
            self.server.counts[path] = n = self.server.counts.get(path, 0) + 1
        try:
            if tag not in (TAG, "latest") or path not in FILES:
                self._send(404, b"Not found\n")
            elif path == "slow.c":
                if not self.server.stopping.wait(SLOW_SECONDS):
                    self._send(200, FILES[path].encode())
            elif (path == "flaky.c" and n == 1) or path == "broken.c":
                self._send(500, b"oops\n")
            elif path == "limited.c" and n == 1:
                self._send(429, b"slow down\n", {"Retry-After": "0"})
            elif path == "limited-long.c":
                self._send(429, b"slow down\n", {"Retry-After": "3600"})
            elif path == "trickle.c":  # one byte at a time: every read gets data, none times out
                body = FILES[path].encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                for byte in body:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    if self.server.stopping.wait(TRICKLE_SECONDS):
                        break
            elif path == "trickle-headers.c":  # the status line and headers, one byte at a time
                head = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nX-Padding: " + b"p" * 200 + b"\r\n\r\n"
                for byte in head:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    if self.server.stopping.wait(TRICKLE_SECONDS):
                        break
            elif path == "huge-nolength.c":  # HTTP/1.0, no Content-Length: the body ends when the server closes
                self.send_response(200)
                self.end_headers()
                self.wfile.write(FILES[path].encode())
            elif path == "page.c":
                self._send(200, FILES[path].encode(), {"Content-Type": "text/html; charset=utf-8"})
            else:
                self._send(200, FILES[path].encode())
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)


@contextlib.contextmanager
def serving() -> Iterator[TreeServer]:
    """A :class:`TreeServer` answering from a thread. At the end every thread the block started has
    ended: the server's, those answering its requests (cut short), and ksym's transfer workers left
    waiting on them (a later test that forks, as Symbolizer.prefetch does, needs a single thread)."""
    before = set(threading.enumerate())
    srv = TreeServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield srv
    finally:
        srv.stopping.set()
        srv.shutdown()
        srv.server_close()
        thread.join(5)
        started = [t for t in threading.enumerate() if t not in before]
        for t in started:
            t.join(5)
        left = [t.name for t in started if t.is_alive()]
        assert not left, f"threads still running after the server stopped: {left}"


@pytest.fixture
def server() -> Iterator[TreeServer]:
    with serving() as srv:
        yield srv


def provider(srv: TreeServer | None, cache: Path, **kw: object) -> SourceProvider:
    template = srv.url_template if srv is not None else "http://127.0.0.1:9/plain/{path}?h={tag}"
    args: dict[str, object] = {"url_template": template, "cache_dir": cache, "timeout": 5.0, "retries": 0,
                               "backoff": 0.01}
    args.update(kw)
    return SourceProvider(**args)  # type: ignore[arg-type]


# --- HTTP fetching --------------------------------------------------------------------------------------


def test_fetch_success_then_memory_and_disk(server: TreeServer, tmp_path: Path) -> None:
    p = provider(server, tmp_path / "cache")
    lines = p.get_lines(TAG, "net/ipv4/ip_output.c")
    assert lines == IP_OUTPUT.rstrip("\n").split("\n")
    assert p.last_origin == "http"
    assert server.requests == [f"/plain/net/ipv4/ip_output.c?h={TAG}"]
    assert p.get_lines(TAG, "net/ipv4/ip_output.c") == lines
    assert p.last_origin == "memory"
    cached = p.cache_path(TAG, "net/ipv4/ip_output.c")
    assert cached.read_bytes() == IP_OUTPUT.encode()
    assert not [f for f in (tmp_path / "cache").rglob(".tmp-*")], "atomic write left a temp file"
    fresh = provider(server, tmp_path / "cache")
    assert fresh.get_lines(TAG, "net/ipv4/ip_output.c") == lines
    assert fresh.last_origin == "disk"
    assert server.hits("net/ipv4/ip_output.c") == 1


def test_404_is_one_line_and_remembered(server: TreeServer, tmp_path: Path) -> None:
    p = provider(server, tmp_path / "cache", retries=3)
    with pytest.raises(SourceFetchError) as info:
        p.get_lines(TAG, "net/nonexistent.c")
    err = info.value
    assert isinstance(err, KsymError)
    assert err.kind == "not-found" and err.path == "net/nonexistent.c" and err.tag == TAG
    msg = str(err)
    assert "\n" not in msg and "404" in msg and "net/nonexistent.c" in msg and "127.0.0.1" in msg
    with pytest.raises(SourceFetchError):
        p.get_lines(TAG, "net/nonexistent.c")
    assert server.hits("net/nonexistent.c") == 1, "404 is not transient: no retries, no refetch"
    with pytest.raises(SourceFetchError, match="404"):
        p.get_lines("v9.9", "net/ipv4/ip_output.c")  # wrong tag


def test_slow_response_times_out(server: TreeServer, tmp_path: Path) -> None:
    p = provider(server, tmp_path / "cache", timeout=0.3, retries=1)
    start = time.monotonic()
    with pytest.raises(SourceFetchError) as info:
        p.get_lines(TAG, "slow.c")
    elapsed = time.monotonic() - start
    assert info.value.kind == "timeout"
    assert str(info.value) == f"cannot fetch slow.c ({TAG}) from 127.0.0.1:{server.server_address[1]}: " \
        "timed out after 0.3 s (after 2 attempts)"
    assert elapsed < 2 * SLOW_SECONDS
    assert server.hits("slow.c") == 2, "a timeout is transient: retried once"
    # The other files of the run fail fast instead of waiting for the same host again.
    with pytest.raises(SourceFetchError) as info:
        p.get_lines(TAG, "net/ipv4/ip_output.c")
    assert info.value.kind == "timeout"
    assert "skipped" in str(info.value) and "timed out after 0.3 s" in str(info.value)
    assert server.hits("net/ipv4/ip_output.c") == 0


def test_trickling_server_hits_the_deadline(server: TreeServer, tmp_path: Path) -> None:
    """One byte every 0.5 s never trips the per-read timeout: the overall deadline ends the fetch."""
    p = provider(server, tmp_path / "cache", timeout=1.0, retries=3, deadline=2.0)
    start = time.monotonic()
    with pytest.raises(SourceFetchError) as info:
        p.get_lines(TAG, "trickle.c")
    elapsed = time.monotonic() - start
    assert 2.0 <= elapsed < 2.0 + 1.0, elapsed
    assert info.value.kind == "timeout"
    message = str(info.value)
    assert "\n" not in message and message.startswith("cannot fetch trickle.c (v6.1.187) from 127.0.0.1:")
    assert "gave up after 2 s" in message
    assert server.hits("trickle.c") == 1, "no retry past the deadline"


def test_trickling_headers_hit_the_deadline(server: TreeServer, tmp_path: Path) -> None:
    """The deadline covers the status line and the headers too, not only the body."""
    p = provider(server, tmp_path / "cache", timeout=1.0, retries=3, deadline=2.0)
    start = time.monotonic()
    with pytest.raises(SourceFetchError) as info:
        p.get_lines(TAG, "trickle-headers.c")
    elapsed = time.monotonic() - start
    assert 2.0 <= elapsed < 2.0 + 1.0, elapsed
    assert info.value.kind == "timeout" and "gave up after 2 s" in str(info.value)
    assert server.hits("trickle-headers.c") == 1


def test_retries_stop_at_the_deadline(server: TreeServer, tmp_path: Path) -> None:
    p = provider(server, tmp_path / "cache", timeout=0.4, retries=10, backoff=0.2, deadline=1.5)
    start = time.monotonic()
    with pytest.raises(SourceFetchError) as info:
        p.get_lines(TAG, "slow.c")
    assert time.monotonic() - start < 1.5 + 0.5
    assert info.value.kind == "timeout" and server.hits("slow.c") < 10


def test_bodies_over_the_cap_are_refused(server: TreeServer, tmp_path: Path) -> None:
    p = provider(server, tmp_path / "cache", max_file_bytes=1000)
    for path in ("huge.c", "huge-nolength.c"):
        with pytest.raises(SourceFetchError) as info:
            p.get_lines(TAG, path)
        assert info.value.kind == "too-large", path
        assert str(info.value).endswith(": larger than 1000 bytes")
    assert p.get_lines(TAG, "big/a.c") == ["a" * 999], "a body under the cap is read"


def test_500_then_success(server: TreeServer, tmp_path: Path) -> None:
    p = provider(server, tmp_path / "cache", retries=2)
    assert p.get_lines(TAG, "flaky.c") == ["after one 500"]
    assert server.hits("flaky.c") == 2


def test_500_every_time(server: TreeServer, tmp_path: Path) -> None:
    p = provider(server, tmp_path / "cache", retries=2)
    with pytest.raises(SourceFetchError) as info:
        p.get_lines(TAG, "broken.c")
    assert str(info.value).endswith("HTTP 500 Internal Server Error (after 3 attempts)")
    assert info.value.kind == "http"
    assert server.hits("broken.c") == 3
    assert not p.cache_path(TAG, "broken.c").exists()


def test_rate_limit(server: TreeServer, tmp_path: Path) -> None:
    p = provider(server, tmp_path / "cache", retries=2)
    assert p.get_lines(TAG, "limited.c") == ["after one 429"]
    assert server.hits("limited.c") == 2
    start = time.monotonic()
    with pytest.raises(SourceFetchError) as info:
        p.get_lines(TAG, "limited-long.c")
    assert time.monotonic() - start < 5
    assert info.value.kind == "rate-limited"
    assert "HTTP 429" in str(info.value) and "retry after 3600 s" in str(info.value)
    assert server.hits("limited-long.c") == 1


def test_cache_hit_without_server(tmp_path: Path) -> None:
    with serving() as srv:
        template = srv.url_template
        assert provider(srv, tmp_path / "cache").get_lines(TAG, "include/linux/netfilter.h")[0] == (
            "/* netfilter.h 1 */"
        )
    # The server is gone: its port refuses connections.
    p = SourceProvider(url_template=template, cache_dir=tmp_path / "cache", timeout=2, retries=0)
    assert len(p.get_lines(TAG, "include/linux/netfilter.h")) == 12
    assert p.last_origin == "disk"
    with pytest.raises(SourceFetchError) as info:
        p.get_lines(TAG, "net/ipv4/ip_output.c")
    assert info.value.kind == "connection"
    assert str(info.value).endswith("connection refused")
    skipped = r"skipped, 127\.0\.0\.1:\d+ failed before \(connection refused\)"
    with pytest.raises(SourceFetchError, match=skipped):
        p.get_lines(TAG, "mm/slub.c")
    off = SourceProvider(url_template=template, cache_dir=tmp_path / "cache", offline=True)
    assert len(off.get_lines(TAG, "include/linux/netfilter.h")) == 12


def test_offline_never_connects(server: TreeServer, tmp_path: Path) -> None:
    p = provider(server, tmp_path / "cache", offline=True)
    with pytest.raises(SourceFetchError) as info:
        p.get_lines(TAG, "net/ipv4/ip_output.c")
    assert info.value.kind == "offline"
    assert str(info.value) == f"net/ipv4/ip_output.c ({TAG}) is not in the source cache, and --offline is set"
    assert server.requests == []


def test_source_dir_first_then_http(server: TreeServer, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "net" / "ipv4").mkdir(parents=True)
    (tree / "net" / "ipv4" / "ip_output.c").write_text("local copy\n")
    p = provider(server, tmp_path / "cache", source_dir=tree)
    assert p.get_lines(TAG, "net/ipv4/ip_output.c") == ["local copy"]
    assert p.last_origin == "local"
    assert p.get_lines(TAG, "include/linux/netfilter.h")[1] == "/* netfilter.h 2 */"
    assert p.last_origin == "http"
    assert server.hits("net/ipv4/ip_output.c") == 0
    off = provider(server, tmp_path / "empty-cache", source_dir=tree, offline=True)
    with pytest.raises(SourceFetchError, match=r"not in the source cache and not in .*tree, and --offline"):
        off.get_lines(TAG, "mm/slub.c")


def test_bounded_disk_cache(server: TreeServer, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    p = provider(server, cache, max_cache_bytes=2500)
    p.get_lines(TAG, "big/a.c")
    os.utime(p.cache_path(TAG, "big/a.c"), (1_000_000, 1_000_000))
    p.get_lines(TAG, "big/b.c")
    os.utime(p.cache_path(TAG, "big/b.c"), (2_000_000, 2_000_000))
    p.get_lines(TAG, "big/c.c")  # 3000 bytes > 2500: the least recently used (a.c) goes
    assert not p.cache_path(TAG, "big/a.c").exists()
    assert p.cache_path(TAG, "big/b.c").exists() and p.cache_path(TAG, "big/c.c").exists()
    total = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    assert total <= 2500


def test_html_is_refused(server: TreeServer, tmp_path: Path) -> None:
    p = provider(server, tmp_path / "cache")
    with pytest.raises(SourceFetchError, match="HTML page, not plain text"):
        p.get_lines(TAG, "page.c")
    assert not p.cache_path(TAG, "page.c").exists()


def test_latest_is_not_cached_on_disk(server: TreeServer, tmp_path: Path) -> None:
    p = provider(server, tmp_path / "cache")
    assert p.get_lines("latest", "include/linux/netfilter.h")[0] == "/* netfilter.h 1 */"
    assert not p.cache_path("latest", "include/linux/netfilter.h").exists()


def test_absolute_paths(server: TreeServer, tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    local = root / "abs.c"
    local.write_text("one\ntwo\n")
    outside = tmp_path / "outside.c"
    outside.write_text("secret\n")
    p = provider(server, tmp_path / "cache", roots=[root])
    # An absolute path is read in a source root (a --path-map target), never outside one.
    assert p.get_lines(TAG, str(local)) == ["one", "two"]
    with pytest.raises(SourceFetchError) as info:
        p.get_lines(TAG, str(outside))
    assert info.value.kind == "bad-path"
    (root / "link.c").symlink_to(outside)
    with pytest.raises(SourceFetchError):
        p.get_lines(TAG, str(root / "link.c"))
    with pytest.raises(SourceFetchError):
        provider(server, tmp_path / "cache").get_lines(TAG, str(local))  # no root: no local file
    # A build-directory path that does not exist here: its kernel-relative tail is fetched.
    assert p.get_lines(TAG, "/build/linux-XyZ/include/linux/netfilter.h")[2] == "/* netfilter.h 3 */"
    assert server.hits("include/linux/netfilter.h") == 1
    with pytest.raises(SourceFetchError) as info:
        p.get_lines(TAG, "/nonexistent/notes.txt")
    assert info.value.kind == "bad-path"


def test_bad_paths_and_template(tmp_path: Path) -> None:
    p = SourceProvider(cache_dir=tmp_path, offline=True)
    for bad in ("../../etc/passwd", "", "./"):
        with pytest.raises(SourceFetchError) as info:
            p.get_lines(TAG, bad)
        assert info.value.kind == "bad-path"
    with pytest.raises(ValueError):
        SourceProvider(url_template="http://127.0.0.1/no-placeholder")
    q = SourceProvider(url_template="http://127.0.0.1:1/{tag}/{path}", cache_dir=tmp_path)
    assert q.url_for("v6.1", "drivers/a b/c#.c") == "http://127.0.0.1:1/v6.1/drivers/a%20b/c%23.c"


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "ksym" / "source"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")
    assert default_cache_dir() == Path.home() / ".cache" / "ksym" / "source"
    assert SourceProvider().cache_dir == Path.home() / ".cache" / "ksym" / "source"


# --- --list formatting ------------------------------------------------------------------------------------


def test_render_context() -> None:
    lines = [f"l{n}" for n in range(1, 21)]
    assert render_context(lines, 8) == [f" {n} \tl{n}" for n in range(3, 8)] + [">8<\tl8"] + [
        f" {n} \tl{n}" for n in range(9, 14)
    ]
    assert render_context(lines, 1)[0] == ">1<\tl1" and len(render_context(lines, 1)) == 6
    assert render_context(lines, 19)[-1] == " 20 \tl20" and len(render_context(lines, 19)) == 7
    assert render_context(lines, 40) == []
    # Line 0 (unknown) is what awk does with n=0: lines 1..5, none marked.
    assert render_context(lines, 0) == [f" {n} \tl{n}" for n in range(1, 6)]
    assert render_context(["\t  keep   spaces  "], 1) == [">1<\t\t  keep   spaces  "]
    assert render_context(["a\x1b[2Jb\x0cc\td"], 1, sanitize=True) == [">1<\ta\ufffd[2Jb\x0cc\td"]
    assert render_context(lines, 8, radius=1) == [" 7 \tl7", ">8<\tl8", " 9 \tl9"]


def test_split_lines_like_awk() -> None:
    assert split_lines("a\nb\n") == ["a", "b"]
    assert split_lines("a\nb") == ["a", "b"]
    assert split_lines("a\r\n\x0cb\u2028c\n\n") == ["a\r", "\x0cb\u2028c", ""]
    assert split_lines("") == []


def test_parse_location() -> None:
    assert parse_location("nf_hook at include/linux/netfilter.h:257") == ("include/linux/netfilter.h", 257)
    assert parse_location(" (inlined by) __ip_local_out at net/ipv4/ip_output.c:115") == (
        "net/ipv4/ip_output.c", 115)
    assert parse_location("free_reserved_area at mm/page_alloc.c:6429 (discriminator 2)") == (
        "mm/page_alloc.c", 6429)
    assert parse_location("vfs_fstat at fs/stat.c:100") == ("fs/stat.c", 100)
    assert parse_location("?? ??:0") is None
    assert parse_location("garbage") is None
    assert shell_words(" (inlined by)\t a  b ") == ["(inlined", "by)", "a", "b"]


def test_format_list_with_errors(server: TreeServer, tmp_path: Path) -> None:
    p = provider(server, tmp_path / "cache")
    errors: list[SourceFetchError] = []
    chain = [
        "nf_hook at include/linux/netfilter.h:3",
        " (inlined by) gone at net/missing.c:10",
        " (inlined by)   __ip_local_out at net/ipv4/ip_output.c:28",
        " (inlined by) again at net/missing.c:12",
    ]
    out = format_list(chain, p, TAG, errors=errors)
    expected = (
        "\nnf_hook at include/linux/netfilter.h:3\n"
        + "".join(f"{'>3<' if n == 3 else f' {n} '}\t/* netfilter.h {n} */\n" for n in range(1, 9))
        + "\n(inlined by) gone at net/missing.c:10\n"
        + "\n(inlined by) __ip_local_out at net/ipv4/ip_output.c:28\n"
        + "".join(f"{'>28<' if n == 28 else f' {n} '}\t\tline {n} of ip_output.c\n" for n in range(23, 31))
        + "\n(inlined by) again at net/missing.c:12\n"
    )
    assert out == expected
    assert [e.path for e in errors] == ["net/missing.c"], "one message per missing file"
    assert "404" in str(errors[0])
    assert format_list([], p, TAG) == ""


def test_format_list_sanitizes_fetched_text(server: TreeServer, tmp_path: Path) -> None:
    out = format_list(["f at escape.c:2"], provider(server, tmp_path / "cache"), TAG)
    assert out == "\nf at escape.c:2\n 1 \tok\n>2<\t\ufffd[2Jcleared?\n"
    assert "\x1b" not in out


# --- installed trees ---------------------------------------------------------------------------------------


def _fake_tree(root: Path, version: tuple[int, int, int]) -> Path:
    (root / "init").mkdir(parents=True)
    (root / "kernel").mkdir()
    (root / "init" / "main.c").write_text("void start_kernel(void) {}\n")
    major, minor, sub = version
    (root / "Makefile").write_text(
        f"# SPDX-License-Identifier: GPL-2.0\nVERSION = {major}\nPATCHLEVEL = {minor}\nSUBLEVEL = {sub}\n"
        "EXTRAVERSION =\n"
    )
    return root


def test_find_source_dir(tmp_path: Path) -> None:
    src = tmp_path / "usr-src"
    mods = tmp_path / "modules"
    debian = KernelVersion.parse(
        "Linux version 6.1.0-53-cloud-amd64 (x@y) (gcc) #1 SMP Debian 6.1.187-1 (2026)")
    assert find_source_dir(debian, src_roots=[src], modules_dir=mods) is None
    (src / "linux-headers-6.1.0-53-cloud-amd64").mkdir(parents=True)
    (src / "linux-headers-6.1.0-53-cloud-amd64" / "Makefile").write_text("VERSION = 6\n")
    (src / "linux-source-6.1.tar.xz").write_bytes(b"")
    assert find_source_dir(debian, src_roots=[src], modules_dir=mods) is None
    _fake_tree(src / "linux-5.10.1", (5, 10, 1))
    older = _fake_tree(src / "linux-6.1.150", (6, 1, 150))
    assert find_source_dir(debian, src_roots=[src], modules_dir=mods) == older
    exact = _fake_tree(src / "linux-source-6.1", (6, 1, 187))
    assert tree_version(exact) == (6, 1, 187)
    assert find_source_dir(debian, src_roots=[src], modules_dir=mods) == exact
    release = KernelVersion.parse("6.18.44-custom")
    tree = _fake_tree(tmp_path / "build" / "linux", (6, 18, 44))
    (mods / "6.18.44-custom").mkdir(parents=True)
    (mods / "6.18.44-custom" / "source").symlink_to(tree)
    assert find_source_dir(release, src_roots=[src], modules_dir=mods) == mods / "6.18.44-custom" / "source"


# --- parity with the kernel's scripts/faddr2line --list on the real vmlinux and tree ------------------------

FRAMES = ["__ip_local_out+222", "ip_local_out+29", "__ip_queue_xmit+367"]
#: What the script printed for FRAMES (location lines only), checked against its live output below.
CHAINS = {
    "__ip_local_out+222/0x160:": [
        "nf_hook at include/linux/netfilter.h:257",
        "(inlined by) __ip_local_out at net/ipv4/ip_output.c:115",
    ],
    "ip_local_out+29/0x70:": [
        "skb_dst at include/linux/skbuff.h:1119",
        "(inlined by) dst_output at include/net/dst.h:453",
        "(inlined by) ip_local_out at net/ipv4/ip_output.c:126",
    ],
    "__ip_queue_xmit+367/0x4a0:": ["__ip_queue_xmit at net/ipv4/ip_output.c:538"],
}


def _first_existing(env: str, *paths: str, kind: str) -> Path:
    candidates = [os.environ.get(env, ""), *paths]
    for cand in candidates:
        if cand and os.path.exists(cand):
            return Path(cand)
    missing(f"{kind} not found (set {env}; tried {', '.join(c for c in candidates if c)})")


@pytest.fixture(scope="module")
def real_list() -> tuple[Path, str]:
    vmlinux = _first_existing("KSYM_TEST_VMLINUX", str(TESTDATA / "vmlinux-6.1.0-53-cloud-amd64"),
                              "/work/cache/dbg/usr/lib/debug/boot/vmlinux-6.1.0-53-cloud-amd64",
                              kind="Debian 6.1 debug vmlinux")
    tree = _first_existing("KSYM_TEST_SRCDIR", str(TESTDATA / "linux-source-6.1"),
                           "/work/cache/src/linux-source-6.1", kind="linux-source 6.1.187 tree")
    script = tree / "scripts" / "faddr2line"
    if not script.is_file():
        missing(f"{script} missing (tools/fetch-testdata.sh)")
    for tool in ("bash", "readelf", "addr2line", "awk"):
        if shutil.which(tool) is None:
            missing(f"{tool} not installed (needed to run scripts/faddr2line)")
    awk_version = subprocess.run(["awk", "--version"], check=False, capture_output=True, text=True).stdout
    if "GNU Awk" not in awk_version:
        missing("awk is not gawk (scripts/faddr2line --list needs strtonum): apt-get install gawk")
    proc = subprocess.run(["bash", str(script), "--list", str(vmlinux), *FRAMES], cwd=tree, check=False,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return tree, proc.stdout


@pytest.mark.vmlinux
def test_format_list_matches_faddr2line(real_list: tuple[Path, str], tmp_path: Path) -> None:
    tree, real = real_list
    p = SourceProvider(source_dir=tree, offline=True, url_template=None, cache_dir=tmp_path / "unused")
    blocks = []
    for header, chain in CHAINS.items():
        blocks.append(header + "\n" + format_list(chain, p, TAG))
    ours = "\n".join(blocks)
    assert ours == real
    # The resolver's lines keep addr2line's leading space before "(inlined by)": same output.
    spaced = [" " + line if line.startswith("(") else line for line in CHAINS["ip_local_out+29/0x70:"]]
    assert format_list(spaced, p, TAG) == format_list(CHAINS["ip_local_out+29/0x70:"], p, TAG)
    # The real tree is what find_source_dir picks for the real banner.
    from ksym.version import read_banner

    vmlinux = _first_existing("KSYM_TEST_VMLINUX", str(TESTDATA / "vmlinux-6.1.0-53-cloud-amd64"),
                              "/work/cache/dbg/usr/lib/debug/boot/vmlinux-6.1.0-53-cloud-amd64",
                              kind="Debian 6.1 debug vmlinux")
    banner = read_banner(vmlinux)
    assert banner is not None
    assert tree_version(tree) == (6, 1, 187)
    assert find_source_dir(KernelVersion.parse(banner), src_roots=[tree.parent],
                           modules_dir=tmp_path / "no-modules") == tree
    # Spot checks of the real text (tabs kept, the line marked).
    assert ">115<\t\treturn nf_hook(NFPROTO_IPV4, NF_INET_LOCAL_OUT,\n" in ours
    assert " 253 \t\n" in ours
    print(ours)


@pytest.mark.vmlinux
def test_real_tree_through_http(real_list: tuple[Path, str], server: TreeServer, tmp_path: Path) -> None:
    """The same --list block when the files come from the loopback server instead of the tree."""
    tree, real = real_list
    for rel in ("include/linux/netfilter.h", "net/ipv4/ip_output.c"):
        FILES[rel + ".real"] = (tree / rel).read_text(encoding="utf-8", errors="replace")
    chain = [re.sub(r"(\.[ch]):", r"\1.real:", line) for line in CHAINS["__ip_local_out+222/0x160:"]]
    try:
        out = format_list(chain, provider(server, tmp_path / "cache"), TAG)
    finally:
        for rel in ("include/linux/netfilter.h", "net/ipv4/ip_output.c"):
            FILES.pop(rel + ".real", None)
    tree_only = SourceProvider(source_dir=tree, url_template=None, cache_dir=tmp_path / "unused")
    local = format_list(CHAINS["__ip_local_out+222/0x160:"], tree_only, TAG)
    assert out == local.replace(".h:257", ".h.real:257").replace(".c:115", ".c.real:115")
    assert local in real


def test_choose_source_dir_order(tmp_path: Path) -> None:
    from ksym.source import choose_source_dir

    debian = KernelVersion.parse(
        "Linux version 6.1.0-53-cloud-amd64 (x@y) (gcc) #1 SMP Debian 6.1.187-1 (2026)")
    src, mods, nowhere = tmp_path / "usr-src", tmp_path / "modules", tmp_path / "cwd"
    src.mkdir()
    nowhere.mkdir()
    kw: dict[str, object] = {"cwd": nowhere, "src_roots": [src], "modules_dir": mods}
    assert choose_source_dir(debian, environ={}, **kw) == (None, "none", None)  # type: ignore[arg-type]
    (src / "linux-source-6.1.tar.xz").write_bytes(b"")
    note = choose_source_dir(debian, environ={}, **kw).note  # type: ignore[arg-type]
    assert note is not None and "linux-source-6.1.tar.xz is not extracted" in note and "KSYM_SOURCE_DIR" in note
    installed = _fake_tree(src / "linux-source-6.1", (6, 1, 187))
    assert choose_source_dir(debian, environ={}, **kw) == (installed, "installed", None)  # type: ignore[arg-type]
    # beside the vmlinux wins over installed trees
    data = tmp_path / "data"
    beside = _fake_tree(data / "linux-source-6.1", (6, 1, 187))
    got = choose_source_dir(debian, environ={}, vmlinux=data / "vmlinux", **kw)  # type: ignore[arg-type]
    assert got.path == beside and got.origin == "beside the vmlinux"
    # $KSYM_SOURCE_DIR: trees or directories of trees, the vmlinux's version only
    named = _fake_tree(tmp_path / "named" / "linux-6.1.187", (6, 1, 187))
    other = _fake_tree(tmp_path / "other", (5, 10, 1))
    env = {"KSYM_SOURCE_DIR": f"{other}:{tmp_path / 'named'}"}
    got = choose_source_dir(debian, environ=env, vmlinux=data / "vmlinux", **kw)  # type: ignore[arg-type]
    assert got.path == named and got.origin == "KSYM_SOURCE_DIR"
    got = choose_source_dir(debian, environ={"KSYM_SOURCE_DIR": str(other)}, vmlinux=data / "vmlinux",
                            **kw)  # type: ignore[arg-type]
    assert got.path == beside and got.note is not None and "KSYM_SOURCE_DIR names no 6.1 source tree" in got.note
    assert choose_source_dir(None, environ={"KSYM_SOURCE_DIR": str(other)}, **kw).path == other  # type: ignore[arg-type]
    # the current directory (a kernel tree, as faddr2line reads it) and --source-dir come first
    (nowhere / "include" / "linux").mkdir(parents=True)
    assert choose_source_dir(debian, environ=env, **kw).origin == "the current directory"  # type: ignore[arg-type]
    assert choose_source_dir(debian, source_dir=other, environ=env, **kw) == (other, "--source-dir", None)  # type: ignore[arg-type]
