"""Portable index files by build id (docs/index-files.md): ksym's cache, directories on a search path, and
static HTTP servers on 127.0.0.1 at ``<url>/buildid/<BUILD-ID>/ksym-index``.

The server is ``http.server`` in a thread serving files by path with ``ETag``/``Last-Modified``, honouring
``Range`` and ``If-Range`` as a static web server does, with switches for a connection dropped half-way, a
server that ignores ranges, one that trickles its bytes, one that sends more than it announced, and a file
that changes between two requests; it logs every request's ``Range`` and ``If-Range``. The files served
are real: a fixture ELF given a fresh GNU build id with objcopy, checked by a verify callable that reads
that build id (:func:`ksym.debuginfo.file_build_id`), as the portable file's own header check does.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import ksym as ksym_package
from ksym.debuginfo import file_build_id
from ksym.errors import EXIT_NETWORK, EXIT_NO_FILE, DebuginfodError, FileNotFoundKsymError
from ksym.index_files import (
    CACHE_SUBDIR,
    INDEX_FILE_NAME,
    fetch_index_file,
    find_index_file,
    index_after_miss,
    remove_stale_temporaries,
)
from ksym.searchopts import IndexFileOptions

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "fixtures" / "bin" / "kshapes-dwarf5.elf"
ELF_MAGIC = b"\x7fELF"


def with_build_id(src: Path, dest: Path, desc: bytes | None = None) -> str:
    """A copy of ``src`` with a GNU build id note (``desc``, default random); returns the id as read back
    from the file."""
    note = dest.with_suffix(".note")
    desc = os.urandom(20) if desc is None else desc
    note.write_bytes(struct.pack("<III", 4, len(desc), 3) + b"GNU\0" + desc)
    subprocess.run(
        [
            "objcopy",
            f"--add-section=.note.gnu.build-id={note}",
            "--set-section-flags=.note.gnu.build-id=alloc,readonly",
            str(src),
            str(dest),
        ],
        check=True,
    )
    note.unlink()
    bid = file_build_id(dest)
    assert bid == desc.hex()
    return bid


# --------------------------------------------------------------------------------------------------
# the server


@dataclass
class Static:
    """A static file server: ``files`` maps a URL path to its bytes."""

    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    #: path -> number of GETs still to cut off half-way through their body
    cut: dict[str, int] = field(default_factory=dict)
    ranges: bool = True
    #: seconds between the body's bytes
    trickle: float = 0.0
    #: bytes sent beyond the file (with no Content-Length: the body ends when the connection closes)
    extra: int = 0
    no_length: bool = False
    #: path -> the bytes it has after its first GET (the file changed on the server meanwhile)
    replace: dict[str, bytes] = field(default_factory=dict)
    #: send no ETag, only Last-Modified
    no_etag: bool = False
    log: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    stopped: threading.Event = field(default_factory=threading.Event)
    server: http.server.ThreadingHTTPServer | None = None

    def etag(self, path: str) -> str:
        return f'"{hashlib.sha256(self.files[path]).hexdigest()[:16]}"'


def _handler(state: Static) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            path = self.path
            rng, if_range = self.headers.get("Range"), self.headers.get("If-Range")
            state.log.append((path, rng, if_range))
            if path not in state.files:
                self._send(404, b"not found\n")
                return
            data = state.files[path]
            etag = state.etag(path)
            modified = "Tue, 01 Dec 2026 10:00:00 GMT"
            validator = modified if state.no_etag else etag
            start = 0
            if (
                rng
                and state.ranges
                and rng.startswith("bytes=")
                and rng.endswith("-")
                and (if_range is None or if_range == validator)
            ):
                start = int(rng[6:-1])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:] + b"\0" * state.extra
            if not state.no_etag:
                self.send_header("ETag", etag)
            self.send_header("Last-Modified", modified)
            if state.no_length:
                self.send_header("Connection", "close")
                self.close_connection = True
            else:
                self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if path in state.replace:
                state.files[path] = state.replace.pop(path)
            try:
                if state.cut.get(path, 0) > 0:
                    state.cut[path] -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_WR)
                    return
                if state.trickle:
                    for i in range(len(body)):
                        if state.stopped.wait(state.trickle):
                            return
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                    return
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def start_server() -> Static:
    state = Static()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.server = server
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return state


def stop_server(state: Static) -> None:
    state.stopped.set()
    if state.server is not None:
        state.server.shutdown()
        state.server.server_close()
        state.server = None


@pytest.fixture
def server() -> Iterator[Static]:
    state = start_server()
    yield state
    stop_server(state)


@pytest.fixture
def second() -> Iterator[Static]:
    state = start_server()
    yield state
    stop_server(state)


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, str]:
    """A real file with a fresh build id (the fixture ELF), and that build id."""
    f = tmp_path / "served.bin"
    return f, with_build_id(FIXTURE, f)


def verify(path: Path) -> str | None:
    """The file's own build id, read from the file (a damaged one raises ksym's BadFileError)."""
    return file_build_id(path)


def publish(state: Static, path: Path, bid: str) -> str:
    """Serve ``path`` at ``/buildid/<bid>/ksym-index``; returns that URL path."""
    where = f"/buildid/{bid}/{INDEX_FILE_NAME}"
    state.files[where] = path.read_bytes()
    return where


def opts(tmp_path: Path, *urls: str, **kw: object) -> IndexFileOptions:
    args: dict[str, object] = {"urls": urls, "cache_dir": str(tmp_path / "cache")}
    args.update(kw)
    return IndexFileOptions(**args)  # type: ignore[arg-type]


def tree(root: Path) -> list[str]:
    """Everything under ``root`` (files and directories), relative; [] when it does not exist."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# --------------------------------------------------------------------------------------------------
# found and fetched


def test_download_is_verified_cached_and_then_read_without_network(
    tmp_path: Path, server: Static, built: tuple[Path, str]
) -> None:
    f, bid = built
    publish(server, f, bid)
    look = find_index_file(bid, opts(tmp_path, server.url), verify=verify, magic=ELF_MAGIC)
    dest = tmp_path / "cache" / CACHE_SUBDIR / bid / INDEX_FILE_NAME
    assert look.path == dest and look.found_by == "index server"
    assert dest.read_bytes() == f.read_bytes() and file_build_id(dest) == bid
    assert [(a.kind, a.outcome) for a in look.attempts] == [
        ("index cache", "missing"),
        ("index server", "match"),
    ]
    assert tree(tmp_path / "cache") == [
        CACHE_SUBDIR,
        f"{CACHE_SUBDIR}/{bid}",
        f"{CACHE_SUBDIR}/{bid}/{INDEX_FILE_NAME}",
    ]
    assert server.log == [(f"/buildid/{bid}/{INDEX_FILE_NAME}", None, None)]
    # again: the cache answers, nothing is asked, even with the server gone and offline
    stop_server(server)
    for o in (opts(tmp_path, closed_port_url()), opts(tmp_path, closed_port_url(), offline=True)):
        again = find_index_file(bid, o, verify=verify)
        assert again.path == dest and again.found_by == "index cache" and len(again.attempts) == 1
    assert len(server.log) == 1


def test_a_connection_dropped_halfway_is_resumed_from_the_bytes_received(
    tmp_path: Path, server: Static, built: tuple[Path, str]
) -> None:
    f, bid = built
    where = publish(server, f, bid)
    server.cut[where] = 1
    got = fetch_index_file(bid, opts(tmp_path, server.url), verify=verify)
    size = len(f.read_bytes())
    assert got.read_bytes() == f.read_bytes()
    # the second request asks for the rest, from the half that arrived, under the first answer's ETag
    assert server.log == [(where, None, None), (where, f"bytes={size // 2}-", server.etag(where))]


def test_resume_under_last_modified_when_there_is_no_etag(
    tmp_path: Path, server: Static, built: tuple[Path, str]
) -> None:
    f, bid = built
    where = publish(server, f, bid)
    server.cut[where] = 1
    server.no_etag = True
    got = fetch_index_file(bid, opts(tmp_path, server.url), verify=verify)
    assert got.read_bytes() == f.read_bytes()
    assert server.log[1] == (where, f"bytes={len(f.read_bytes()) // 2}-", "Tue, 01 Dec 2026 10:00:00 GMT")


def test_a_server_that_ignores_range_makes_it_start_over(
    tmp_path: Path, server: Static, built: tuple[Path, str]
) -> None:
    f, bid = built
    where = publish(server, f, bid)
    server.cut[where] = 1
    server.ranges = False
    got = fetch_index_file(bid, opts(tmp_path, server.url), verify=verify)
    assert got.read_bytes() == f.read_bytes()  # not the first half twice
    assert len(server.log) == 2 and server.log[1][1] == f"bytes={len(f.read_bytes()) // 2}-"


def test_a_file_changed_between_requests_starts_over(
    tmp_path: Path, server: Static, built: tuple[Path, str]
) -> None:
    """The file changes on the server after the first answer (a byte of its first half: e_ident's padding,
    which no reader looks at): the If-Range no longer matches its ETag, the server sends the whole new file
    (200), and ksym takes that instead of splicing the old first half to the new second half."""
    f, bid = built
    where = publish(server, f, bid)
    server.cut[where] = 1
    first = server.etag(where)
    changed = bytearray(f.read_bytes())
    changed[12] ^= 0xFF
    server.replace[where] = bytes(changed)
    got = fetch_index_file(bid, opts(tmp_path, server.url), verify=verify)
    assert got.read_bytes() == bytes(changed)
    assert server.log[1][2] == first and server.etag(where) != first


def test_not_found_on_the_first_url_found_on_the_second(
    tmp_path: Path, server: Static, second: Static, built: tuple[Path, str]
) -> None:
    f, bid = built
    publish(second, f, bid)
    look = find_index_file(bid, opts(tmp_path, server.url, second.url + "/"), verify=verify)
    assert look.path is not None and look.path.read_bytes() == f.read_bytes()
    assert [(a.kind, a.outcome) for a in look.attempts] == [
        ("index cache", "missing"),
        ("index server", "not found"),
        ("index server", "match"),
    ]
    assert look.failures == []  # a 404 is a miss, not a failure
    assert (
        [p for p, _, _ in server.log]
        == [p for p, _, _ in second.log]
        == [f"/buildid/{bid}/{INDEX_FILE_NAME}"]
    )


def test_search_path_directories_in_the_url_layout(tmp_path: Path, built: tuple[Path, str]) -> None:
    f, bid = built
    one, two = tmp_path / "one", tmp_path / "two"
    (two / "buildid" / bid).mkdir(parents=True)
    (two / "buildid" / bid / INDEX_FILE_NAME).write_bytes(f.read_bytes())
    o = IndexFileOptions.from_environment(
        {"KSYM_INDEX_PATH": f"{one}:{two}", "KSYM_INDEX_URLS": closed_port_url()},
        cache_dir=str(tmp_path / "cache"),
    )
    look = find_index_file(bid, o, verify=verify)
    assert look.path == two / "buildid" / bid / INDEX_FILE_NAME and look.found_by == "index dir"
    assert [(a.kind, a.outcome) for a in look.attempts] == [
        ("index cache", "missing"),
        ("index dir", "missing"),
        ("index dir", "match"),
    ]
    assert not (tmp_path / "cache").exists()  # read where it is: nothing copied, nothing downloaded


def test_damaged_and_foreign_files_on_disk_are_passed_over(
    tmp_path: Path, server: Static, built: tuple[Path, str]
) -> None:
    f, bid = built
    other = tmp_path / "other.bin"
    other_bid = with_build_id(FIXTURE, other)
    bad, foreign = tmp_path / "bad", tmp_path / "foreign"
    for root, data in ((bad, f.read_bytes()[:100]), (foreign, other.read_bytes())):
        (root / "buildid" / bid).mkdir(parents=True)
        (root / "buildid" / bid / INDEX_FILE_NAME).write_bytes(data)
    publish(server, f, bid)
    look = find_index_file(bid, opts(tmp_path, server.url, dirs=(str(bad), str(foreign))), verify=verify)
    outcomes = [(a.kind, a.outcome, a.build_id) for a in look.attempts]
    assert outcomes == [
        ("index cache", "missing", None),
        ("index dir", "unusable", None),
        ("index dir", "mismatch", other_bid),
        ("index server", "match", bid),
    ]
    assert look.attempts[1].detail  # why it is unusable, from the check
    assert look.path is not None and look.path.read_bytes() == f.read_bytes()


def test_a_damaged_cache_entry_is_named_and_replaced_by_a_download(
    tmp_path: Path, server: Static, built: tuple[Path, str]
) -> None:
    f, bid = built
    entry = tmp_path / "cache" / CACHE_SUBDIR / bid / INDEX_FILE_NAME
    entry.parent.mkdir(parents=True)
    entry.write_bytes(f.read_bytes()[:200])  # cut short
    with pytest.raises(FileNotFoundKsymError) as info:
        fetch_index_file(bid, opts(tmp_path, server.url), verify=verify)
    assert f"looked in {entry} (unusable: " in str(info.value) and "HTTP 404" in str(info.value)
    assert entry.read_bytes() == f.read_bytes()[:200]  # left as it was
    publish(server, f, bid)
    assert fetch_index_file(bid, opts(tmp_path, server.url), verify=verify) == entry
    assert entry.read_bytes() == f.read_bytes()


# --------------------------------------------------------------------------------------------------
# refused, and nothing left behind


def test_a_file_of_another_build_is_refused_and_nothing_stays(
    tmp_path: Path, server: Static, built: tuple[Path, str]
) -> None:
    _, bid = built
    other = tmp_path / "other.bin"
    other_bid = with_build_id(FIXTURE, other)
    server.files[f"/buildid/{bid}/{INDEX_FILE_NAME}"] = other.read_bytes()
    with pytest.raises(DebuginfodError) as info:
        fetch_index_file(bid, opts(tmp_path, server.url), verify=verify)
    text = str(info.value)
    assert f"the index file of build id {other_bid}, not {bid}: discarded" in text and "\n" not in text
    assert info.value.exit_code == EXIT_NETWORK
    assert tree(tmp_path / "cache") == []


def test_a_trickling_server_fails_at_the_deadline(
    tmp_path: Path, server: Static, built: tuple[Path, str]
) -> None:
    """A byte every 0.3 s: no read ever times out, the overall deadline ends it."""
    f, bid = built
    publish(server, f, bid)
    server.trickle = 0.3
    t0 = time.monotonic()
    with pytest.raises(DebuginfodError) as info:
        fetch_index_file(bid, opts(tmp_path, server.url, deadline=1.5, timeout=5.0), verify=verify)
    assert time.monotonic() - t0 < 1.5 + 1.0
    assert "no complete file within 1.5 s ($KSYM_INDEX_MAXTIME;" in str(info.value)
    assert tree(tmp_path / "cache") == []


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "until-close"])
def test_more_than_the_cap_is_refused(
    tmp_path: Path, server: Static, built: tuple[Path, str], length: bool
) -> None:
    f, bid = built
    size = len(f.read_bytes())
    publish(server, f, bid)
    server.no_length = not length
    server.extra = 1 << 20  # past the end of the file: more than it is (and announced, when announced)
    cap = size + 4096
    with pytest.raises(DebuginfodError) as info:
        fetch_index_file(
            bid, opts(tmp_path, server.url, max_size=cap if not length else size - 1), verify=verify
        )
    text = str(info.value)
    if length:
        assert (
            f"the file is {size} bytes, over the limit of {size - 1} ($KSYM_INDEX_MAXSIZE): not downloaded"
            in text
        )
    else:
        assert f"the file is over the limit of {cap} bytes ($KSYM_INDEX_MAXSIZE): discarded" in text
    assert len(server.log) == 1 and tree(tmp_path / "cache") == []


def test_content_that_is_not_an_index_file_is_cut_at_its_first_bytes(
    tmp_path: Path, server: Static, built: tuple[Path, str]
) -> None:
    _, bid = built
    server.files[f"/buildid/{bid}/{INDEX_FILE_NAME}"] = b"<html>proxy login</html>" + bytes(1 << 20)
    with pytest.raises(DebuginfodError, match=r"no ksym index file \(it starts with b'<htm'"):
        fetch_index_file(bid, opts(tmp_path, server.url), verify=verify, magic=ELF_MAGIC)
    assert tree(tmp_path / "cache") == []


def test_a_cache_that_exists_keeps_only_what_was_there(
    tmp_path: Path, server: Static, built: tuple[Path, str]
) -> None:
    """Nothing of a failed download stays, and nothing that was there before goes."""
    _, bid = built
    keep = tmp_path / "cache" / CACHE_SUBDIR / "keep"
    keep.mkdir(parents=True)
    server.files[f"/buildid/{bid}/{INDEX_FILE_NAME}"] = b"\x7fELF" + bytes(100)  # no valid ELF
    with pytest.raises(DebuginfodError, match="no usable ksym index file"):
        fetch_index_file(bid, opts(tmp_path, server.url), verify=verify)
    assert tree(tmp_path / "cache") == [CACHE_SUBDIR, f"{CACHE_SUBDIR}/keep"]


def test_stale_temporaries_are_removed_by_age_unless_held(tmp_path: Path) -> None:
    import fcntl

    cache = tmp_path / CACHE_SUBDIR
    cache.mkdir()
    old, young, held = (cache / f".tmp-ksym-index-{n}" for n in ("old", "young", "held"))
    for p in (old, young, held):
        p.write_bytes(b"x")
    for p in (old, held):
        os.utime(p, (time.time() - 7200, time.time() - 7200))
    with open(held, "rb") as h:
        fcntl.flock(h, fcntl.LOCK_EX)
        assert remove_stale_temporaries(cache) == [old]
    assert sorted(p.name for p in cache.iterdir()) == [held.name, young.name]


# --------------------------------------------------------------------------------------------------
# offline, misses, and after a vmlinux search


def test_offline_never_touches_the_network(tmp_path: Path, server: Static, built: tuple[Path, str]) -> None:
    f, bid = built
    publish(server, f, bid)
    with pytest.raises(FileNotFoundKsymError) as info:
        fetch_index_file(bid, opts(tmp_path, server.url, offline=True), verify=verify)
    assert server.log == [] and "offline: the index servers were not asked" in str(info.value)
    assert info.value.exit_code == EXIT_NO_FILE and tree(tmp_path / "cache") == []


def test_a_refused_connection_is_one_line_and_exit_5(tmp_path: Path, built: tuple[Path, str]) -> None:
    _, bid = built
    url = closed_port_url()
    with pytest.raises(DebuginfodError) as info:
        fetch_index_file(bid, opts(tmp_path, url), verify=verify)
    text = str(info.value)
    assert text.count("Connection refused") == 1 and "\n" not in text and url in text


def test_after_a_vmlinux_miss_both_searches_are_named(
    tmp_path: Path, server: Static, built: tuple[Path, str]
) -> None:
    f, bid = built
    miss = FileNotFoundKsymError(f"no debug vmlinux with build id {bid} found (looked in /x)")
    with pytest.raises(FileNotFoundKsymError) as info:
        index_after_miss(miss, bid, opts(tmp_path, server.url), verify=verify)
    assert str(info.value).startswith(f"{miss}; no ksym index file with build id {bid}")
    assert "HTTP 404" in str(info.value) and "\n" not in str(info.value)
    publish(server, f, bid)
    assert (
        index_after_miss(miss, bid, opts(tmp_path, server.url), verify=verify).read_bytes() == f.read_bytes()
    )


def test_environment_is_read_in_one_place() -> None:
    o = IndexFileOptions.from_environment(
        {
            "KSYM_INDEX_PATH": "/a::/b",
            "KSYM_INDEX_URLS": " http://x  http://y ",
            "KSYM_INDEX_MAXTIME": "0",
            "KSYM_INDEX_MAXSIZE": "1e6",
            "KSYM_INDEX_TIMEOUT": "nan",
        },
        dirs=("/c", "/a"),
    )
    assert o.dirs == ("/c", "/a", "/b") and o.urls == ("http://x", "http://y")
    assert (
        o.deadline == IndexFileOptions().deadline
        and o.max_size == 10**6
        and o.timeout == IndexFileOptions().timeout
    )
    assert IndexFileOptions.from_environment({"KSYM_INDEX_URLS": "http://x"}, urls=("http://z",)).urls == (
        "http://z",
    )


# --------------------------------------------------------------------------------------------------
# the command


def ksym(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "KSYM_CACHE_DIR": str(tmp_path / "cache"),
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": str(Path(ksym_package.__file__).resolve().parents[1]),
    }
    return subprocess.run(
        [sys.executable, "-m", "ksym", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**base, **env},
        timeout=120,
    )


def test_progress_is_one_line_when_asked(
    tmp_path: Path, server: Static, built: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    f, bid = built
    publish(server, f, bid)
    fetch_index_file(bid, opts(tmp_path, server.url, progress=True), verify=verify)
    err = capsys.readouterr().err
    size = len(f.read_bytes())
    assert err.endswith("\n") and err.count("\n") == 1 and err.startswith(f"\rksym: index file: {bid[:16]} [")
    assert f"100% {size / 1e6:.1f}/{size / 1e6:.1f} MB" in err.split("\r")[-1]
    # not asked, not a terminal: nothing drawn
    fetch_index_file(bid, opts(tmp_path / "again", server.url), verify=verify)
    assert capsys.readouterr().err == ""
