"""Debug files by build id: .build-id trees, a real debuginfod server on 127.0.0.1, ``ksym debuginfo``,
and the build-id mismatch warning (docs/debuginfo.md).

The server is ``http.server`` in a thread speaking the debuginfod protocol (``GET /buildid/<hex>/debuginfo``,
404 for unknown ids, ``Range`` requests), with switches for a slow answer, a connection that breaks off and
a file of the wrong build id. The ELF files are the project's fixtures given a GNU build id with objcopy
(random per run, read back from the files) and real Debian module debug files.
"""

from __future__ import annotations

import fcntl
import http.server
import json
import os
import shutil
import signal
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
from anchors import missing

import ksym as ksym_package
from ksym.buildid import running_build_id
from ksym.debuginfo import (
    DEFAULT_MAX_SIZE,
    DebuginfodClient,
    DebuginfoOptions,
    file_build_id,
    mismatch_warning,
    package_hint,
)
from ksym.errors import EXIT_NETWORK, EXIT_NO_FILE, DebuginfodError, FileNotFoundKsymError
from ksym.modules import ModuleSet

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures" / "bin"
TESTDATA = Path(os.environ.get("KSYM_TESTDATA") or "/var/tmp/ksym-testdata")
MODULES = TESTDATA / "modules" / "kernel" / "net" / "netfilter"
SMALL_MODULE = MODULES / "xt_hl.ko"
BIG_MODULE = MODULES / "nf_tables.ko"


def _notes(desc: bytes) -> bytes:
    name = b"GNU\0"
    return struct.pack("<III", len(name), len(desc), 3) + name + desc


def with_build_id(src: Path, dest: Path) -> str:
    """A copy of ``src`` with a random GNU build id note; returns the id as read back from the file."""
    note = dest.with_suffix(".note")
    note.write_bytes(_notes(os.urandom(20)))
    subprocess.run(["objcopy", f"--add-section=.note.gnu.build-id={note}",
                    "--set-section-flags=.note.gnu.build-id=alloc,readonly", str(src), str(dest)], check=True)
    bid = file_build_id(dest)
    assert bid is not None and len(bid) == 40
    return bid


def need(path: Path) -> Path:
    if not path.is_file():
        missing(f"{path} is absent (tools/fetch-testdata.sh)")
    return path


# --------------------------------------------------------------------------------------------------
# the server


@dataclass
class Debuginfod:
    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    slow: float = 0.0
    #: build id → number of GETs still to cut off halfway
    cut: dict[str, int] = field(default_factory=dict)
    ranges: bool = True
    #: seconds between the body's bytes (a trickle: each read brings data, the whole never arrives)
    trickle: float = 0.0
    #: build id → number of GETs still to stall: half the body, then nothing until the server stops
    stall: dict[str, int] = field(default_factory=dict)
    #: answer every build id with a claimed 20 GB of zeros (at most ``zeros_limit`` bytes really sent)
    zeros: bool = False
    zeros_limit: int = 64 << 20
    #: no Content-Length: the body ends when the connection closes
    no_length: bool = False
    #: bytes written per request (in the order of ``log``)
    sent: list[int] = field(default_factory=list)
    stopped: threading.Event = field(default_factory=threading.Event)
    log: list[tuple[str, str | None]] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None

    def stop(self) -> None:
        self.stopped.set()  # releases stalled and trickling answers
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def _handler(state: Debuginfod) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            rng = self.headers.get("Range")
            state.log.append((self.path, rng))
            if state.slow:
                state.stopped.wait(state.slow)
            parts = self.path.strip("/").split("/")
            if state.zeros:
                self._zeros()
                return
            if len(parts) != 3 or parts[0] != "buildid" or parts[2] != "debuginfo" or parts[1] not in state.files:
                body = b"not found\n"
                try:
                    self.send_response(404)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (the slow-server tests)
                return
            data = state.files[parts[1]]
            start = 0
            if rng and state.ranges and rng.startswith("bytes=") and rng.endswith("-"):
                start = int(rng[6:-1])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            if state.no_length:
                self.send_header("Connection", "close")
                self.close_connection = True
            else:
                self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            if state.trickle or state.stall.get(parts[1], 0) > 0:
                self._paced(parts[1], body)
                return
            if state.cut.get(parts[1], 0) > 0:
                state.cut[parts[1]] -= 1
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_WR)
                return
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (the slow-server test)

        def _paced(self, bid: str, body: bytes) -> None:
            sent = 0
            try:
                if state.stall.get(bid, 0) > 0:
                    state.stall[bid] -= 1
                    # the last 100 bytes of the half come on their own: the client reads them as one small
                    # piece, which must reach the file too, not wait in a buffer (a SIGKILL would lose it)
                    half = len(body) // 2
                    self.wfile.write(body[: half - 100])
                    self.wfile.flush()
                    if state.stopped.wait(0.3):
                        return
                    self.wfile.write(body[half - 100 : half])
                    self.wfile.flush()
                    sent = half
                    state.stopped.wait(60)
                    return
                for i in range(len(body)):
                    if state.stopped.wait(state.trickle):
                        return
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
                    sent += 1
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                state.sent.append(sent)
                self.close_connection = True

        def _zeros(self) -> None:
            self.send_response(200)
            if state.no_length:
                self.send_header("Connection", "close")
            else:
                self.send_header("Content-Length", str(20 * 10**9))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            block, sent = bytes(1 << 16), 0
            try:
                while sent < state.zeros_limit and not state.stopped.is_set():
                    self.wfile.write(block)
                    sent += len(block)
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                state.sent.append(sent)
                self.close_connection = True

    return Handler


@pytest.fixture
def debuginfod() -> Iterator[Debuginfod]:
    state = Debuginfod()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.server = server
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    state.stop()


@pytest.fixture
def fixture_elf(tmp_path: Path) -> tuple[Path, str]:
    """kshapes-dwarf5.elf with a fresh build id."""
    elf = tmp_path / "kshapes-bid.elf"
    return elf, with_build_id(FIXTURES / "kshapes-dwarf5.elf", elf)


def options(tmp_path: Path, server: Debuginfod | None = None, **kw: object) -> DebuginfoOptions:
    args: dict[str, object] = {"cache_dir": str(tmp_path / "cache"), "use_env": False, "system_root": False,
                               "servers": (server.url,) if server else ()}
    args.update(kw)
    return DebuginfoOptions(**args)  # type: ignore[arg-type]


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    # the command runs the ksym under test (this checkout's), not whichever one is installed
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "KSYM_CACHE_DIR": str(tmp_path / "cache"), "XDG_CACHE_HOME": str(tmp_path / "xdg"),
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(Path(ksym_package.__file__).resolve().parents[1])}
    env.update(extra)
    return env


def ksym(tmp_path: Path, *args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ksym", *args], capture_output=True, text=True, check=False,
                          env=cli_env(tmp_path, **env), input=stdin, timeout=120)


# --------------------------------------------------------------------------------------------------
# debuginfod client


def test_hit_downloads_verifies_and_caches(tmp_path: Path, debuginfod: Debuginfod) -> None:
    mod = need(SMALL_MODULE)
    bid = file_build_id(mod)
    assert bid
    debuginfod.files[bid] = mod.read_bytes()
    client = DebuginfodClient(options(tmp_path, debuginfod))
    got = client.fetch(bid)
    assert got == tmp_path / "cache" / "debuginfod" / bid / "debuginfo"
    assert got.read_bytes() == mod.read_bytes() and file_build_id(got) == bid
    assert not [p for p in got.parent.iterdir() if p.name != "debuginfo"]  # no temporary file left
    # a second lookup is served from the cache: no new request
    n = len(debuginfod.log)
    assert client.fetch(bid) == got and len(debuginfod.log) == n


def test_miss_is_not_found_not_a_failure(tmp_path: Path, debuginfod: Debuginfod) -> None:
    client = DebuginfodClient(options(tmp_path, debuginfod))
    with pytest.raises(FileNotFoundKsymError) as exc:
        client.fetch("ab" * 20)
    assert exc.value.exit_code == EXIT_NO_FILE and "ab" * 20 in str(exc.value)
    assert debuginfod.log == [(f"/buildid/{'ab' * 20}/debuginfo", None)]
    assert not (tmp_path / "cache" / "debuginfod" / ("ab" * 20)).exists()


def test_slow_server_times_out_with_one_clear_error(tmp_path: Path, debuginfod: Debuginfod) -> None:
    debuginfod.slow = 3.0
    client = DebuginfodClient(options(tmp_path, debuginfod, timeout=0.5))
    t0 = time.monotonic()
    with pytest.raises(DebuginfodError) as exc:
        client.fetch("cd" * 20)
    assert time.monotonic() - t0 < 2.5
    assert exc.value.exit_code == EXIT_NETWORK
    assert "0.5 s" in str(exc.value) and debuginfod.url in str(exc.value) and "\n" not in str(exc.value)


def test_slow_server_through_the_command(tmp_path: Path, debuginfod: Debuginfod) -> None:
    debuginfod.slow = 3.0
    got = ksym(tmp_path, "resolve", "--build-id", "cd" * 20, "--debuginfod-url", debuginfod.url, "x+1",
               DEBUGINFOD_TIMEOUT="0.5")
    assert got.returncode == EXIT_NETWORK, got.stderr
    assert got.stderr.count("\n") == 1 and "Traceback" not in got.stderr
    assert "cd" * 20 in got.stderr and "within 0.5 s" in got.stderr


def test_refused_connection_is_one_short_line(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    opts = DebuginfoOptions(servers=(f"http://127.0.0.1:{port}",), cache_dir=str(tmp_path), use_env=False,
                            system_root=False)
    with pytest.raises(DebuginfodError) as exc:
        DebuginfodClient(opts).fetch("ab" * 20)
    text = str(exc.value)
    assert text.count("Connection refused") == 1 and "HTTPConnectionPool" not in text and "\n" not in text


@pytest.mark.parametrize("ranges", [True, False], ids=["resumed", "restarted"])
def test_truncated_download_is_resumed_or_restarted(tmp_path: Path, debuginfod: Debuginfod, ranges: bool) -> None:
    mod = need(BIG_MODULE)
    bid = file_build_id(mod)
    assert bid
    data = mod.read_bytes()
    debuginfod.files[bid] = data
    debuginfod.cut[bid] = 1
    debuginfod.ranges = ranges
    got = DebuginfodClient(options(tmp_path, debuginfod)).fetch(bid)
    assert got.read_bytes() == data and file_build_id(got) == bid
    assert len(debuginfod.log) == 2
    assert debuginfod.log[0][1] is None
    # the second request asks for the rest, from what arrived (a server without ranges sends it all again)
    rng = debuginfod.log[1][1]
    assert rng is not None and rng.startswith("bytes=") and rng.endswith("-")
    assert 0 < int(rng[6:-1]) <= len(data) // 2


def test_download_that_keeps_breaking_off_fails_cleanly(tmp_path: Path, debuginfod: Debuginfod) -> None:
    mod = need(SMALL_MODULE)
    bid = file_build_id(mod)
    assert bid
    debuginfod.files[bid] = mod.read_bytes()
    debuginfod.cut[bid] = 100
    with pytest.raises(DebuginfodError, match="broke off"):
        DebuginfodClient(options(tmp_path, debuginfod)).fetch(bid)
    assert not (tmp_path / "cache" / "debuginfod" / bid).exists()


# --------------------------------------------------------------------------------------------------
# every transfer has a deadline and a size cap; temporaries never outlive their download


def _leftovers(cache: Path) -> list[Path]:
    """Download temporaries left anywhere under ``cache``."""
    return sorted(cache.rglob(".tmp-debuginfo-*")) if cache.exists() else []


def _download_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ksym-debuginfod-")]


def test_trickling_server_fails_at_the_deadline(tmp_path: Path, debuginfod: Debuginfod,
                                                fixture_elf: tuple[Path, str]) -> None:
    """One byte every 0.5 s: each read brings data, so no read timeout fires; the overall deadline does."""
    elf, bid = fixture_elf
    debuginfod.files[bid] = elf.read_bytes()
    debuginfod.trickle = 0.5
    client = DebuginfodClient(options(tmp_path, debuginfod, deadline=1.5))
    t0 = time.monotonic()
    with pytest.raises(DebuginfodError) as exc:
        client.fetch(bid)
    assert time.monotonic() - t0 < 1.5 + 1.0
    text = str(exc.value)
    assert "no complete file within 1.5 s" in text and "\n" not in text and exc.value.exit_code == EXIT_NETWORK
    assert _leftovers(tmp_path / "cache") == [] and not (tmp_path / "cache" / "debuginfod" / bid).exists()
    # the worker stops at its next byte, closing its (already removed) file
    for _ in range(40):
        if not _download_threads():
            break
        time.sleep(0.05)
    assert _download_threads() == []


def test_the_deadline_holds_before_the_headers_too(tmp_path: Path, debuginfod: Debuginfod) -> None:
    """A server that takes longer than the deadline to answer at all, with a read timeout longer still."""
    debuginfod.slow = 4.0
    client = DebuginfodClient(options(tmp_path, debuginfod, timeout=30, deadline=1.0))
    t0 = time.monotonic()
    with pytest.raises(DebuginfodError, match="no complete file within 1 s"):
        client.fetch("cd" * 20)
    assert time.monotonic() - t0 < 2.0
    assert _leftovers(tmp_path / "cache") == []
    debuginfod.stop()  # the server answers now: the worker, still waiting for it, ends
    for _ in range(100):
        if not _download_threads():
            break
        time.sleep(0.05)
    assert _download_threads() == []

def test_trickling_server_through_the_command(tmp_path: Path, debuginfod: Debuginfod,
                                              fixture_elf: tuple[Path, str]) -> None:
    elf, bid = fixture_elf
    debuginfod.files[bid] = elf.read_bytes()
    debuginfod.trickle = 0.5
    t0 = time.monotonic()
    baseline = ksym(tmp_path, "resolve", "--build-id", "ab" * 20, "--debuginfod-url", debuginfod.url, "x+1")
    startup = time.monotonic() - t0  # the same command without a download: interpreter, imports
    assert baseline.returncode == EXIT_NO_FILE, baseline.stderr
    t0 = time.monotonic()
    got = subprocess.run([sys.executable, "-m", "ksym", "resolve", "--build-id", bid, "--debuginfod-url",
                          debuginfod.url, "x+1"], capture_output=True, text=True, check=False, timeout=30,
                         env=cli_env(tmp_path, DEBUGINFOD_MAXTIME="2"))
    assert time.monotonic() - t0 < startup + 2 + 2
    assert got.returncode == EXIT_NETWORK, got.stderr
    assert got.stderr.count("\n") == 1 and "no complete file within 2 s" in got.stderr and bid in got.stderr
    assert _leftovers(tmp_path / "cache") == []


@pytest.mark.parametrize("length", [True, False], ids=["20GB-announced", "until-close"])
def test_a_stream_of_zeros_is_refused_at_its_first_bytes(tmp_path: Path, debuginfod: Debuginfod,
                                                         length: bool) -> None:
    """A server answering 20 GB of zeros: refused for its announced size, or (no size announced) by the
    ELF magic before more than its first bytes is written; the connection is dropped at once."""
    debuginfod.zeros = True
    debuginfod.no_length = not length
    bid = "ab" * 20
    t0 = time.monotonic()
    with pytest.raises(DebuginfodError) as exc:
        DebuginfodClient(options(tmp_path, debuginfod)).fetch(bid)
    assert time.monotonic() - t0 < 5
    if length:
        assert f"the file is {20 * 10**9} bytes, over the limit of {DEFAULT_MAX_SIZE}" in str(exc.value)
    else:
        assert "no usable ELF file (it starts with b'\\x00\\x00\\x00\\x00'" in str(exc.value)
    assert len(debuginfod.log) == 1  # not asked again
    for _ in range(100):  # the server notices the dropped connection
        if debuginfod.sent:
            break
        time.sleep(0.05)
    assert debuginfod.sent and debuginfod.sent[0] < debuginfod.zeros_limit
    assert _leftovers(tmp_path / "cache") == [] and not (tmp_path / "cache" / "debuginfod" / bid).exists()


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "until-close"])
def test_a_file_over_the_size_cap_is_refused(tmp_path: Path, debuginfod: Debuginfod,
                                             fixture_elf: tuple[Path, str], length: bool) -> None:
    elf, bid = fixture_elf
    data = elf.read_bytes()
    debuginfod.files[bid] = data
    debuginfod.no_length = not length
    cap = len(data) // 2
    with pytest.raises(DebuginfodError) as exc:
        DebuginfodClient(options(tmp_path, debuginfod, max_size=cap)).fetch(bid)
    text = str(exc.value)
    if length:  # the size the server announces is enough: nothing is downloaded
        assert f"the file is {len(data)} bytes, over the limit of {cap}" in text
    else:
        assert f"over the limit of {cap} bytes" in text
    assert len(debuginfod.log) == 1 and "$DEBUGINFOD_MAXSIZE" in text
    assert _leftovers(tmp_path / "cache") == [] and not (tmp_path / "cache" / "debuginfod" / bid).exists()
    # the same file within the cap, and the cap from the environment for the command
    assert DebuginfodClient(options(tmp_path, debuginfod, max_size=len(data))).fetch(bid).read_bytes() == data
    shutil.rmtree(tmp_path / "cache")
    got = ksym(tmp_path, "resolve", "--build-id", bid, "--debuginfod-url", debuginfod.url, "x+1",
               DEBUGINFOD_MAXSIZE=str(cap))
    assert got.returncode == EXIT_NETWORK and got.stderr.count("\n") == 1 and str(cap) in got.stderr


def _start_stalled_download(tmp_path: Path, debuginfod: Debuginfod, bid: str) -> tuple[subprocess.Popen[str], Path]:
    """``ksym resolve`` downloading ``bid`` from a server that sends half the file and then waits; returns
    the process once its temporary holds that half."""
    half = len(debuginfod.files[bid]) // 2
    debuginfod.stall[bid] = 1
    proc = subprocess.Popen([sys.executable, "-m", "ksym", "resolve", "--build-id", bid, "--debuginfod-url",
                             debuginfod.url, "x+1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(tmp_path))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        parts = _leftovers(tmp_path / "cache")
        if parts and parts[0].stat().st_size == half:
            return proc, parts[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.kill()
    proc.communicate()
    raise AssertionError("the download never reached half the file")


def test_sigterm_mid_download_leaves_nothing(tmp_path: Path, debuginfod: Debuginfod) -> None:
    mod = need(SMALL_MODULE)
    bid = file_build_id(mod)
    assert bid
    debuginfod.files[bid] = mod.read_bytes()
    proc, _part = _start_stalled_download(tmp_path, debuginfod, bid)
    os.kill(proc.pid, signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)  # reaps it
    assert proc.returncode == -signal.SIGTERM, err
    assert "Traceback" not in err and "internal error" not in err
    assert _leftovers(tmp_path / "cache") == [] and not (tmp_path / "cache" / "debuginfod" / bid).exists()


@pytest.mark.parametrize("ranges", [True, False], ids=["resumed", "restarted"])
def test_sigkill_mid_download_is_resumed_by_the_next_run(tmp_path: Path, debuginfod: Debuginfod,
                                                         ranges: bool) -> None:
    """SIGKILL cannot be caught: the partial file stays, and the next download of that build id takes it
    over (``Range`` from its size; a server without ranges sends it all again); nothing is left after."""
    mod = need(SMALL_MODULE)
    bid = file_build_id(mod)
    assert bid
    data = mod.read_bytes()
    debuginfod.files[bid] = data
    debuginfod.ranges = ranges
    proc, part = _start_stalled_download(tmp_path, debuginfod, bid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)  # reaps it
    assert proc.returncode == -signal.SIGKILL
    assert _leftovers(tmp_path / "cache") == [part] and part.stat().st_size == len(data) // 2
    got = ksym(tmp_path, "debuginfo", "--build-id", bid, "--debuginfod-url", debuginfod.url)
    assert got.returncode == 0, got.stdout + got.stderr
    assert debuginfod.log[-1] == (f"/buildid/{bid}/debuginfo", f"bytes={len(data) // 2}-")
    assert (tmp_path / "cache" / "debuginfod" / bid / "debuginfo").read_bytes() == data
    assert _leftovers(tmp_path / "cache") == []


def test_a_partial_file_that_is_no_elf_is_not_resumed(tmp_path: Path, debuginfod: Debuginfod,
                                                      fixture_elf: tuple[Path, str]) -> None:
    """A temporary left in the entry's directory that does not start as an ELF file is removed, and the
    download starts from byte 0."""
    elf, bid = fixture_elf
    debuginfod.files[bid] = elf.read_bytes()
    junk = tmp_path / "cache" / "debuginfod" / bid / ".tmp-debuginfo-junk"
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"<html>" + bytes(100))
    got = DebuginfodClient(options(tmp_path, debuginfod)).fetch(bid)
    assert got.read_bytes() == elf.read_bytes() and debuginfod.log == [(f"/buildid/{bid}/debuginfo", None)]
    assert _leftovers(tmp_path / "cache") == []

def test_stale_temporaries_are_removed_by_age(tmp_path: Path) -> None:
    """Temporaries in ksym's cache that nothing wrote to for an hour and no ksym holds are removed by a
    later lookup; a young one, one a running download holds (locked) and the elfutils cache's are kept."""
    own = tmp_path / "cache" / "debuginfod"
    old_time = time.time() - 2 * 3600
    stale = own / ("ab" * 20) / ".tmp-debuginfo-stale"
    young = own / ("cd" * 20) / ".tmp-debuginfo-young"
    held = own / ("ef" * 20) / ".tmp-debuginfo-held"
    foreign = tmp_path / "xdg" / "debuginfod_client" / ("ab" * 20) / ".tmp-debuginfo-theirs"
    for p in (stale, young, held, foreign):
        p.parent.mkdir(parents=True)
        p.write_bytes(b"\x7fELF" + bytes(1000))
    for p in (stale, held, foreign):
        os.utime(p, (old_time, old_time))
    with open(held, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # as a running download holds its file
        got = ksym(tmp_path, "debuginfo", "--offline", "--build-id", "12" * 20)
    assert got.returncode == EXIT_NO_FILE, got.stdout + got.stderr
    assert not stale.exists() and not stale.parent.exists()
    assert young.exists() and held.exists() and foreign.exists()


def test_wrong_build_id_is_rejected(tmp_path: Path, debuginfod: Debuginfod,
                                    fixture_elf: tuple[Path, str]) -> None:
    elf, have = fixture_elf
    want = "ef" * 20
    debuginfod.files[want] = elf.read_bytes()
    with pytest.raises(DebuginfodError) as exc:
        DebuginfodClient(options(tmp_path, debuginfod)).fetch(want)
    assert have in str(exc.value) and want in str(exc.value) and "discarded" in str(exc.value)
    assert not (tmp_path / "cache" / "debuginfod" / want).exists()
    # not an ELF file at all
    debuginfod.files[want] = b"<html>proxy error</html>"
    with pytest.raises(DebuginfodError, match="no usable ELF"):
        DebuginfodClient(options(tmp_path, debuginfod)).fetch(want)


def test_offline_uses_the_cache_and_never_the_network(tmp_path: Path, debuginfod: Debuginfod,
                                                      fixture_elf: tuple[Path, str]) -> None:
    elf, bid = fixture_elf
    debuginfod.files[bid] = elf.read_bytes()
    url = debuginfod.url
    online = ksym(tmp_path, "resolve", "--build-id", bid, "--debuginfod-url", url, "ip_local_out_like+29")
    assert online.returncode == 0, online.stderr
    debuginfod.stop()
    n = len(debuginfod.log)
    again = ksym(tmp_path, "resolve", "--offline", "--build-id", bid, "--debuginfod-url", url,
                 "ip_local_out_like+29")
    assert again.returncode == 0, again.stderr
    assert again.stdout == online.stdout
    shown = ksym(tmp_path, "debuginfo", "--offline", "--build-id", bid, "--debuginfod-url", url)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert f"found: {tmp_path / 'cache' / 'debuginfod' / bid / 'debuginfo'} (debuginfod cache)" in shown.stdout
    # offline and not cached: the server is not asked (it is stopped: asking would fail with code 5)
    other = ksym(tmp_path, "debuginfo", "--offline", "--build-id", "12" * 20, "--debuginfod-url", url)
    assert other.returncode == EXIT_NO_FILE and "skipped: offline" in other.stdout
    assert len(debuginfod.log) == n


def test_debuginfod_cache_path_is_read_not_written(tmp_path: Path, debuginfod: Debuginfod,
                                                   fixture_elf: tuple[Path, str]) -> None:
    """$DEBUGINFOD_CACHE_PATH (elfutils' cache) is read; ksym's downloads go to its own cache."""
    elf, bid = fixture_elf
    shared = tmp_path / "shared-cache"
    (shared / bid).mkdir(parents=True)
    shutil.copy(elf, shared / bid / "debuginfo")
    got = ksym(tmp_path, "debuginfo", "--offline", "--build-id", bid, DEBUGINFOD_CACHE_PATH=str(shared))
    assert got.returncode == 0, got.stdout
    assert got.stdout.splitlines()[-1] == f"found: {shared / bid / 'debuginfo'} (debuginfod cache)"
    other = tmp_path / "other.elf"
    other_bid = with_build_id(FIXTURES / "kshapes-dwarf5.elf", other)
    debuginfod.files[other_bid] = other.read_bytes()
    got = ksym(tmp_path, "debuginfo", "--build-id", other_bid, "--debuginfod-url", debuginfod.url,
               DEBUGINFOD_CACHE_PATH=str(shared))
    assert got.returncode == 0, got.stdout
    assert (tmp_path / "cache" / "debuginfod" / other_bid / "debuginfo").read_bytes() == other.read_bytes()
    assert sorted(p.name for p in shared.iterdir()) == [bid]


def _tree(root: Path) -> dict[str, tuple[str, str | bytes]]:
    """Every entry under ``root``: a symlink's target, a file's bytes, a directory's presence."""
    out: dict[str, tuple[str, str | bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", "")
            else:
                out[rel] = ("file", p.read_bytes())
    return out


def test_elfutils_caches_are_never_touched(tmp_path: Path, debuginfod: Debuginfod,
                                           fixture_elf: tuple[Path, str]) -> None:
    """A damaged file, a symlink to a file of another build and a good symlink in the elfutils client's
    caches ($XDG_CACHE_HOME/debuginfod_client and $DEBUGINFOD_CACHE_PATH): offline and online lookups
    read them, report the bad ones and leave every file and symlink as it was (docs/debuginfo.md)."""
    elf, bid = fixture_elf
    good = tmp_path / "good.elf"
    good_bid = with_build_id(FIXTURES / "kshapes-dwarf5.elf", good)
    wrong_bid = os.urandom(20).hex()
    elfutils = tmp_path / "xdg" / "debuginfod_client"
    shared = tmp_path / "shared"
    for root in (elfutils, shared):
        (root / bid).mkdir(parents=True)
        (root / bid / "debuginfo").write_bytes(elf.read_bytes()[:3000])  # cut short
        (root / wrong_bid).mkdir()
        (root / wrong_bid / "debuginfo").symlink_to(elf)  # the file of another build id
    (elfutils / good_bid).mkdir()
    (elfutils / good_bid / "debuginfo").symlink_to(good)
    before = (_tree(elfutils), _tree(shared), elf.read_bytes(), good.read_bytes())
    env = {"DEBUGINFOD_CACHE_PATH": str(shared)}

    got = ksym(tmp_path, "debuginfo", "--offline", "--build-id", bid, **env)
    assert (_tree(elfutils), _tree(shared), elf.read_bytes(), good.read_bytes()) == before
    assert got.returncode == EXIT_NO_FILE, got.stdout + got.stderr
    for root in (elfutils, shared):
        line = next(ln for ln in got.stdout.splitlines() if str(root / bid / "debuginfo") in ln)
        assert ": unusable: " in line and "truncated" in line and "not ksym's cache: left as it is" in line
    got = ksym(tmp_path, "debuginfo", "--offline", "--build-id", wrong_bid, **env)
    assert got.returncode == EXIT_NO_FILE, got.stdout + got.stderr
    line = next(ln for ln in got.stdout.splitlines() if str(elfutils / wrong_bid / "debuginfo") in ln)
    assert f"mismatch (has {bid}, want {wrong_bid})" in line and "left as it is" in line
    frames = ("ip_local_out_like+29",)
    assert ksym(tmp_path, "resolve", "--offline", "--build-id", bid, *frames, **env).returncode == EXIT_NO_FILE
    plain = ksym(tmp_path, "resolve", "--vmlinux", str(good), *frames)
    via_link = ksym(tmp_path, "resolve", "--offline", "--build-id", good_bid, *frames, **env)
    assert via_link.returncode == 0 and via_link.stdout == plain.stdout, via_link.stderr
    # online: the download goes to ksym's own cache
    debuginfod.files[bid] = elf.read_bytes()
    online = ksym(tmp_path, "resolve", "--build-id", bid, "--debuginfod-url", debuginfod.url, *frames, **env)
    assert online.returncode == 0, online.stderr
    assert (tmp_path / "cache" / "debuginfod" / bid / "debuginfo").read_bytes() == elf.read_bytes()
    assert (_tree(elfutils), _tree(shared), elf.read_bytes(), good.read_bytes()) == before


def _past_the_end(elf: Path, dest: Path) -> Path:
    """``elf`` with its section-name table placed at 2**62, far past the end of the file: reading it makes
    pyelftools seek where no file can (EINVAL)."""
    data = bytearray(elf.read_bytes())
    assert data[:6] == b"\x7fELF\x02\x01"  # 64-bit little-endian
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, _shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    struct.pack_into("<Q", data, shoff + shstrndx * shentsize + 0x18, 1 << 62)
    dest.write_bytes(data)
    return dest


def test_offset_past_the_end_is_a_bad_file_everywhere(tmp_path: Path, debuginfod: Debuginfod,
                                                      fixture_elf: tuple[Path, str]) -> None:
    """A debug file whose section offsets lie past its end is unusable, in every place it can come from,
    and a downloaded one fails verification: exit 3 or 5, never an internal error (exit 70)."""
    elf, bid = fixture_elf
    bad = _past_the_end(elf, tmp_path / "bad.elf")
    tree = tmp_path / "debug"
    (tree / ".build-id" / bid[:2]).mkdir(parents=True)
    shutil.copy(bad, tree / ".build-id" / bid[:2] / f"{bid[2:]}.debug")
    (tmp_path / "cache" / "debuginfod" / bid).mkdir(parents=True)
    shutil.copy(bad, tmp_path / "cache" / "debuginfod" / bid / "debuginfo")
    got = ksym(tmp_path, "debuginfo", "--offline", "--build-id", bid, "--debug-dir", str(tree))
    assert got.returncode == EXIT_NO_FILE, got.stdout + got.stderr
    unusable = [ln for ln in got.stdout.splitlines() if ": unusable: damaged ELF section table" in ln]
    assert len(unusable) == 2, got.stdout
    got = ksym(tmp_path, "debuginfo", "--vmlinux", str(bad))
    assert got.returncode == 4 and got.stderr.count("\n") == 1 and "damaged ELF section table" in got.stderr, got.stderr
    debuginfod.files[bid] = bad.read_bytes()
    shutil.rmtree(tmp_path / "cache")
    got = ksym(tmp_path, "resolve", "--build-id", bid, "--debuginfod-url", debuginfod.url, "x+1")
    assert got.returncode == EXIT_NETWORK and got.stderr.count("\n") == 1, got.stderr
    assert "no usable ELF file" in got.stderr and "discarded" in got.stderr
    assert not (tmp_path / "cache" / "debuginfod" / bid).exists()


def test_progress_bar_is_one_line(tmp_path: Path, debuginfod: Debuginfod) -> None:
    mod = need(BIG_MODULE)
    bid = file_build_id(mod)
    assert bid
    debuginfod.files[bid] = mod.read_bytes()
    got = subprocess.run([sys.executable, "-m", "ksym", "debuginfo", "--progress", "--build-id", bid,
                          "--debuginfod-url", debuginfod.url], capture_output=True, check=False,
                         env=cli_env(tmp_path), timeout=120)
    assert got.returncode == 0, got.stdout + got.stderr
    err = got.stderr.decode()
    # redrawn in place with \r: one line on a terminal, ended once
    assert err.count("\n") == 1 and err.endswith("\n") and err.startswith("\r")
    assert "100%" in err.rsplit("\r", 1)[1] and bid[:16] in err
    quiet = ksym(tmp_path, "debuginfo", "--build-id", bid, "--debuginfod-url", debuginfod.url)
    assert quiet.stderr == ""  # stderr is not a terminal: no bar (and it is cached now anyway)


# --------------------------------------------------------------------------------------------------
# end to end: a build id only the server has


def test_resolve_with_a_build_id_only_the_server_has(tmp_path: Path, debuginfod: Debuginfod,
                                                     fixture_elf: tuple[Path, str]) -> None:
    elf, bid = fixture_elf
    frames = ["ip_local_out_like+29", "__ip_local_out+0x2d/0x90"]
    local = ksym(tmp_path, "resolve", "--vmlinux", str(elf), *frames)
    assert local.returncode == 0 and "ip_output.c" in local.stdout
    served = tmp_path / "served.elf"
    elf.rename(served)  # nowhere on disk under its build id any more
    debuginfod.files[bid] = served.read_bytes()
    missing = ksym(tmp_path, "resolve", "--build-id", bid, *frames)
    assert missing.returncode == EXIT_NO_FILE and bid in missing.stderr
    got = ksym(tmp_path, "resolve", "--build-id", bid, *frames, DEBUGINFOD_URLS=f"http://127.0.0.1:9 {debuginfod.url}")
    assert got.returncode == 0, got.stderr
    assert got.stdout == local.stdout


def test_annotate_finds_vmlinux_and_module_by_build_id(tmp_path: Path, debuginfod: Debuginfod,
                                                       fixture_elf: tuple[Path, str]) -> None:
    mod = need(SMALL_MODULE)
    mod_bid = file_build_id(mod)
    assert mod_bid
    elf, bid = fixture_elf
    dump = (f"Build ID: {bid}\nCall Trace:\n <TASK>\n ip_local_out_like+0x79/0x90\n"
            f" hl_mt6+0x10/0x6e [xt_hl {mod_bid}]\n </TASK>\n")
    local = ksym(tmp_path, "annotate", "--vmlinux", str(elf), "--modules", str(mod), stdin=dump)
    assert local.returncode == 0, local.stderr
    assert "xt_hl.c" in local.stdout and "ip_output.c" in local.stdout
    debuginfod.files[bid] = elf.read_bytes()
    debuginfod.files[mod_bid] = mod.read_bytes()
    elf.unlink()
    got = ksym(tmp_path, "annotate", "--release", "0.0-none", "--debuginfod-url", debuginfod.url, stdin=dump)
    assert got.returncode == 0, got.stderr
    assert got.stdout == local.stdout
    assert {p for p, _r in debuginfod.log} == {f"/buildid/{bid}/debuginfo", f"/buildid/{mod_bid}/debuginfo"}


def test_module_set_asks_debuginfod_only_with_a_build_id(tmp_path: Path, debuginfod: Debuginfod) -> None:
    mod = need(SMALL_MODULE)
    bid = file_build_id(mod)
    assert bid
    debuginfod.files[bid] = mod.read_bytes()
    ms = ModuleSet("0.0-none", [], debuginfo=options(tmp_path, debuginfod))
    (r,) = ms.resolve("xt_hl", "ttl_mt+0x10", bid)
    assert r.chain and r.chain[0].file.endswith("xt_hl.c")
    with pytest.raises(FileNotFoundKsymError):
        ms.resolve("xt_hl", "ttl_mt+0x10")


# --------------------------------------------------------------------------------------------------
# .build-id trees and ksym debuginfo


def test_build_id_tree_under_debug_dir(tmp_path: Path, fixture_elf: tuple[Path, str]) -> None:
    elf, bid = fixture_elf
    tree = tmp_path / "debug"
    link = tree / ".build-id" / bid[:2] / f"{bid[2:]}.debug"
    link.parent.mkdir(parents=True)
    link.symlink_to(elf)
    got = ksym(tmp_path, "debuginfo", "--build-id", bid, "--debug-dir", str(tree), "--json")
    assert got.returncode == 0, got.stdout
    rep = json.loads(got.stdout)
    assert rep["found"] and rep["path"] == str(link) and rep["found_by"] == "build-id dir"
    assert rep["attempts"][0] == {"kind": "build-id dir", "where": str(link), "outcome": "match",
                                  "build_id": bid, "detail": None}
    # $KSYM_DEBUG_DIRS too, and resolve uses it
    res = ksym(tmp_path, "resolve", "--build-id", bid, "ip_local_out_like+29", KSYM_DEBUG_DIRS=str(tree))
    plain = ksym(tmp_path, "resolve", "--vmlinux", str(elf), "ip_local_out_like+29")
    assert res.returncode == 0 and res.stdout == plain.stdout, res.stderr


def test_module_found_in_build_id_tree(tmp_path: Path) -> None:
    mod = need(SMALL_MODULE)
    bid = file_build_id(mod)
    assert bid
    tree = tmp_path / "debug" / ".build-id"  # the .build-id directory itself is accepted as well
    (tree / bid[:2]).mkdir(parents=True)
    shutil.copy(mod, tree / bid[:2] / f"{bid[2:]}.debug")
    ms = ModuleSet("0.0-none", [], debuginfo=options(tmp_path, None, debug_dirs=(str(tree),)))
    assert ms.get("xt_hl", bid).path == tree / bid[:2] / f"{bid[2:]}.debug"


def test_debuginfo_found_text(tmp_path: Path, debuginfod: Debuginfod, fixture_elf: tuple[Path, str]) -> None:
    elf, bid = fixture_elf
    debuginfod.files[bid] = elf.read_bytes()
    tree = tmp_path / "debug"
    got = ksym(tmp_path, "debuginfo", "--build-id", bid, "--debug-dir", str(tree), "--debuginfod-url",
               debuginfod.url)
    assert got.returncode == 0, got.stdout
    lines = got.stdout.splitlines()
    assert lines[0] == f"build id: {bid} (from --build-id)"
    assert any(str(tree / ".build-id" / bid[:2]) in ln and ln.endswith(": missing") for ln in lines)
    assert any(f"{debuginfod.url}/buildid/{bid}/debuginfo: match" in ln for ln in lines)
    assert f"debuginfod servers: {debuginfod.url}" in lines
    assert lines[-1] == f"found: {tmp_path / 'cache' / 'debuginfod' / bid / 'debuginfo'} (debuginfod)"


def test_debuginfo_not_found_names_the_package(tmp_path: Path, debuginfod: Debuginfod) -> None:
    want = os.urandom(20).hex()
    got = ksym(tmp_path, "debuginfo", "--build-id", want, "--release", "6.1.0-53-cloud-amd64",
               "--debuginfod-url", debuginfod.url)
    assert got.returncode == EXIT_NO_FILE, got.stdout
    assert f"{debuginfod.url}/buildid/{want}/debuginfo: not found" in got.stdout
    assert f"not found: no debug file with build id {want}" in got.stdout
    install = [ln for ln in got.stdout.splitlines() if ln.startswith("install: ")]
    assert len(install) == 1 and package_hint("6.1.0-53-cloud-amd64") in install[0]


def test_debuginfo_mismatch_names_both_ids(tmp_path: Path, fixture_elf: tuple[Path, str]) -> None:
    elf, have = fixture_elf
    want = os.urandom(20).hex()
    tree = tmp_path / "debug"
    wrong = tree / ".build-id" / want[:2] / f"{want[2:]}.debug"
    wrong.parent.mkdir(parents=True)
    shutil.copy(elf, wrong)  # a file under the wrong name
    got = ksym(tmp_path, "debuginfo", "--build-id", want, "--debug-dir", str(tree), "--offline")
    assert got.returncode == EXIT_NO_FILE
    line = next(ln for ln in got.stdout.splitlines() if str(wrong) in ln)
    assert "mismatch" in line and f"has {have}, want {want}" in line


def test_debuginfo_for_a_vmlinux_and_the_running_kernel(tmp_path: Path, fixture_elf: tuple[Path, str]) -> None:
    elf, bid = fixture_elf
    got = ksym(tmp_path, "debuginfo", "--vmlinux", str(elf), "--json")
    rep = json.loads(got.stdout)
    assert got.returncode == 0 and rep["build_id"] == bid and rep["path"] == str(elf)
    stripped = tmp_path / "stripped.elf"
    subprocess.run(["objcopy", "--strip-debug", str(elf), str(stripped)], check=True)
    assert file_build_id(stripped) == bid
    tree = tmp_path / "debug"
    (tree / ".build-id" / bid[:2]).mkdir(parents=True)
    (tree / ".build-id" / bid[:2] / f"{bid[2:]}.debug").symlink_to(elf)
    got = ksym(tmp_path, "debuginfo", "--vmlinux", str(stripped), "--debug-dir", str(tree), "--json")
    rep = json.loads(got.stdout)
    assert got.returncode == 0 and rep["found_by"] == "build-id dir" and rep["build_id"] == bid
    running = Path("/sys/kernel/notes")
    if running.exists():
        rb = running_build_id()
        got = ksym(tmp_path, "debuginfo", "--running", "--offline", "--json")
        rep = json.loads(got.stdout)
        assert rep["build_id"] == rb and got.returncode in (0, EXIT_NO_FILE)
        if got.returncode:
            assert rep["install"]


def test_package_hints_per_distribution() -> None:
    rel = "6.1.0-53-cloud-amd64"
    assert f"linux-image-{rel}-dbg" in package_hint(rel, {"ID": "debian"})
    assert f"linux-image-{rel}-dbgsym" in package_hint(rel, {"ID": "ubuntu", "ID_LIKE": "debian"})
    fed = package_hint("6.8.5-301.fc40.x86_64", {"ID": "fedora"})
    assert "dnf debuginfo-install kernel-6.8.5-301.fc40.x86_64" in fed and "kernel-debuginfo-6.8.5" in fed
    assert "dnf debuginfo-install" in package_hint("5.14.0-427.el9.x86_64", {"ID": "rocky", "ID_LIKE": "rhel centos fedora"})
    assert "kernel-default-debuginfo" in package_hint("6.4.0-150600.23.7-default", {"ID": "opensuse-leap",
                                                                                  "ID_LIKE": "suse opensuse"})
    assert "debuginfod.archlinux.org" in package_hint("6.9.1-arch1-1", {"ID": "arch"})


# --------------------------------------------------------------------------------------------------
# mismatch warning


def test_mismatch_warning_for_resolve_names_both_ids(tmp_path: Path, fixture_elf: tuple[Path, str]) -> None:
    elf, have = fixture_elf
    want = os.urandom(20).hex()
    got = ksym(tmp_path, "resolve", "--vmlinux", str(elf), "--build-id", want, "ip_local_out_like+29")
    assert got.returncode == 0
    assert got.stderr.count("\n") == 1 and have in got.stderr and want in got.stderr
    assert "mismatch" in got.stderr
    same = ksym(tmp_path, "resolve", "--vmlinux", str(elf), "--build-id", have, "ip_local_out_like+29")
    assert same.stderr == "" and same.stdout == got.stdout
    assert mismatch_warning(have, "x", elf, have) is None
    if Path("/sys/kernel/notes").exists():
        rb = running_build_id()
        assert rb
        run = ksym(tmp_path, "resolve", "--vmlinux", str(elf), "--running", "ip_local_out_like+29")
        assert run.stderr.count("\n") == 1 and rb in run.stderr and have in run.stderr


def test_mismatch_for_annotate_names_both_ids(tmp_path: Path, fixture_elf: tuple[Path, str]) -> None:
    """A dump naming another build id is refused (exit 3, one line naming both ids); --force annotates it
    with the mismatch said once; the same id says nothing."""
    elf, have = fixture_elf
    want = os.urandom(20).hex()
    dump = f"# build-id: {want}\n ip_local_out_like+0x79/0x90\n"
    got = ksym(tmp_path, "annotate", "--vmlinux", str(elf), stdin=dump)
    assert got.returncode == 3, got.stderr
    lines = got.stderr.splitlines()
    assert len(lines) == 1 and have in lines[0] and want in lines[0] and "mismatch" in lines[0]
    forced = ksym(tmp_path, "annotate", "--force", "--vmlinux", str(elf), stdin=dump)
    assert forced.returncode == 0, forced.stderr
    warn = [ln for ln in forced.stderr.splitlines() if "mismatch" in ln]
    assert len(warn) == 1 and have in warn[0] and want in warn[0]
    same = ksym(tmp_path, "annotate", "--vmlinux", str(elf), stdin=dump.replace(want, have))
    assert same.returncode == 0 and "mismatch" not in same.stderr


def test_build_ids_agree_with_readelf(tmp_path: Path, fixture_elf: tuple[Path, str]) -> None:
    """The build ids ksym reads (and compares everywhere above) are binutils' own."""
    vmlinux = TESTDATA / "vmlinux-6.1.0-53-cloud-amd64"
    files = [fixture_elf[0], *(p for p in (vmlinux, SMALL_MODULE, BIG_MODULE) if p.is_file())]
    for f in files:
        out = subprocess.run(["readelf", "-n", str(f)], capture_output=True, text=True, check=True).stdout
        ids = [ln.split("Build ID:")[1].strip() for ln in out.splitlines() if "Build ID:" in ln]
        assert ids and file_build_id(f) == ids[0], f
    got = ksym(tmp_path, "debuginfo", "--vmlinux", str(files[-1]), "--json")
    assert got.returncode == 0 and json.loads(got.stdout)["build_id"] == file_build_id(files[-1])


def test_unsearchable_directories_are_reported_not_raised(tmp_path: Path) -> None:
    """Another user's cache or debug dir that this user cannot search (a root-only $HOME seen by user
    nobody): the lookup says "permission denied" for it and goes on; no traceback, exit 3."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        msg = "needs root and setpriv (util-linux) to run a lookup as user nobody"
        print(msg)
        pytest.skip(msg)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run([*nobody, sys.executable, "-c", "import ksym.cli"], capture_output=True, text=True,
                           check=False)
    if probe.returncode != 0:
        msg = f"user nobody cannot import ksym from this checkout: {probe.stderr.strip()[-200:]}"
        print(msg)
        pytest.skip(msg)
    private = tmp_path / "private"
    (private / ".build-id" / "ab").mkdir(parents=True)
    private.chmod(0o700)
    cache = tmp_path / "cache"
    (cache / "debuginfod" / ("ab" * 20)).mkdir(parents=True)
    cache.chmod(0o700)
    tmp_path.chmod(0o755)
    got = subprocess.run([*nobody, sys.executable, "-m", "ksym", "debuginfo", "--build-id", "ab" * 20,
                          "--debug-dir", str(private), "--offline"], capture_output=True, text=True, check=False,
                         env=cli_env(tmp_path, DEBUGINFOD_CACHE_PATH=str(cache / "debuginfod")), timeout=120)
    assert got.returncode == EXIT_NO_FILE, got.stderr
    assert "Traceback" not in got.stderr and "internal error" not in got.stderr
    assert "permission denied" in got.stdout + got.stderr
