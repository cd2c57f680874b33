"""Streaming ``ksym annotate`` (ksym.annotate.annotate_stream, DumpInput): a file annotated piece by piece
gives :func:`ksym.annotate.annotate`'s output byte for byte, whatever the piece size; a pipe gets each
frame's annotation as soon as its line arrives (a real ``python -m ksym annotate`` child, read before its
standard input is closed).

Against the real Debian 6.1 debug vmlinux: skipped with the reason printed when it is missing
(tools/fetch-testdata.sh); under CI=true they fail instead.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from anchors import REPO_ROOT

from ksym import EXIT_OK, EXIT_UNRESOLVED, Symbolizer
from ksym.annotate import RUNTIME_ADDRESS_REASON, DumpInput, annotate, annotate_stream
from ksym.parse import _may_hold_address, parse_text

DUMPS = sorted([*Path("/work/shared/samples").glob("*.txt"), *(REPO_ROOT / "tests/data/stacks").glob("*.txt"),
                *(REPO_ROOT / "tests/data/annotate").glob("*.txt")])
SLIDE = 0x1A600000



@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ksym-index")


@pytest.fixture(scope="module")
def vsym(vmlinux: Path, cache_dir: Path) -> Symbolizer:
    with Symbolizer(vmlinux, cache_dir=cache_dir) as sym:
        yield sym


def _streamed(path: Path, sym: Symbolizer, *, json_lines: bool, chunk_lines: int,
              **kw: object) -> tuple[str, object]:
    out: list[str] = []
    with open(path, "rb") as fh:
        summary = annotate_stream(DumpInput(fh, chunk_lines=chunk_lines), sym, out.append, json=json_lines,
                                  **kw)  # type: ignore[arg-type]
    return "".join(out), summary


@pytest.mark.parametrize("path", DUMPS, ids=lambda p: p.name)
def test_file_pieces_give_the_batch_output(path: Path, vsym: Symbolizer) -> None:
    """Every dump, cut into pieces of 1, 2, 3 and 7 lines and of the default size: the text and the JSON
    lines, the notes and the counts are those of the whole text annotated at once."""
    text = path.read_bytes().decode("utf-8", "surrogateescape")
    batch = annotate(text, vsym)
    want_text = batch.render_text()
    want_json = "".join(line + "\n" for line in batch.json_lines())
    for chunk in (1, 2, 3, 7, 50_000):
        got, summary = _streamed(path, vsym, json_lines=False, chunk_lines=chunk)
        assert got == want_text, f"{path.name}: text differs with pieces of {chunk} lines"
        assert summary.notes == batch.notes  # type: ignore[attr-defined]
        assert summary.frames == len(batch.frames)  # type: ignore[attr-defined]
        assert summary.unresolved == len(batch.unresolved)  # type: ignore[attr-defined]
        assert summary.kaslr_offset == batch.kaslr_offset  # type: ignore[attr-defined]
        got, _ = _streamed(path, vsym, json_lines=True, chunk_lines=chunk)
        assert got == want_json, f"{path.name}: JSON differs with pieces of {chunk} lines"


def test_file_pieces_with_the_slide_given(vsym: Symbolizer) -> None:
    """A slide given up front, and slide evidence (``Kernel Offset:``, voting frames) only in the last
    piece of a file: every piece uses the whole file's slide, as the batch does."""
    path = REPO_ROOT / "tests/data/annotate/raw-kernel-offset-6.1.0-53.txt"
    text = path.read_text()
    for kw in ({}, {"kaslr_offset": SLIDE}):
        batch = annotate(text, vsym, **kw)  # type: ignore[arg-type]
        assert batch.kaslr_offset == SLIDE
        got, summary = _streamed(path, vsym, json_lines=False, chunk_lines=1, **kw)
        assert got == batch.render_text() and summary.notes == batch.notes  # type: ignore[attr-defined]
        assert "-> unresolved" not in got.split("0xffffffffc0a1b3e8")[0]


def test_dump_evidence_spans_pieces(tmp_path: Path) -> None:
    """A build id and a ``Kernel Offset:`` line broken over lines at a piece boundary are found, and a
    ``Build ID:`` line after a JSON ``"build_id"`` key wins, as in the whole text."""
    path = tmp_path / "dump.txt"
    path.write_text('{"build_id": "' + "ab" * 20 + '"}\n' + "filler\n" * 5 + "Kernel Offset:\n"
                    "  0x1a600000 from 0xffffffff81000000\nBuild ID:\n  " + "cd" * 20 + "\n")
    with open(path, "rb") as fh:
        ev = DumpInput(fh, chunk_lines=1).evidence()
    assert ev.build_id == "cd" * 20 and ev.kernel_offset == SLIDE and ev.complete
    path.write_text('{"build_id": "' + "ab" * 20 + '"}\n' + "filler\n" * 5)
    with open(path, "rb") as fh:
        assert DumpInput(fh, chunk_lines=2).evidence().build_id == "ab" * 20


def test_pipe_pieces_name_build_ids_only_when_asked() -> None:
    """A pipe's pieces after its first carry the build id each names (a JSON ``"build_id"`` key, a
    ``Build ID:`` line broken at a piece boundary) when they are to be checked, and none is looked
    for when they are not."""
    text = ("Call Trace:\n" + '{"build_id": "' + "ab" * 20 + '"}\n' + "filler\n" * 5
            + "Build ID:\n  " + "cd" * 20 + "\n" + "filler\n" * 5)
    named: dict[bool, list[str | None]] = {}
    for asked in (False, True):
        read, write = os.pipe()
        os.write(write, text.encode())
        os.close(write)
        with open(read, "rb") as fh:
            named[asked] = [piece.build_id for piece in DumpInput(fh, chunk_lines=1)._pieces(build_ids=asked)]
    assert named[False] == [None] * 14
    assert named[True] == [None] + ["ab" * 20] * 5 + [None, None] + ["cd" * 20] * 4 + [None, None]


def test_every_frame_with_an_address_passes_the_quick_look() -> None:
    """A file's first read parses a piece for the slide's votes only when the quick look
    (:func:`ksym.parse._may_hold_address`) says a frame in it may print an address: it must say so of
    every frame line that does, in every sample (and not of a plain oops trace)."""
    seen = 0
    for path in DUMPS:
        for line in parse_text(path.read_bytes().decode("utf-8", "surrogateescape")):
            if line.frame is not None and line.frame.address is not None:
                seen += 1
                assert _may_hold_address(line.text), (path.name, line.text)
    assert seen > 50
    assert not _may_hold_address("[  101.270346] Call Trace:\n[  101.270357]  mm_access+0x8b/0xe0\n")


class _Child:
    """``python -m ksym annotate`` reading a pipe, its output read as it comes."""

    def __init__(self, vmlinux: Path, cache_dir: Path, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
        self.proc = subprocess.Popen([sys.executable, "-m", "ksym", "annotate", "--vmlinux", str(vmlinux),
                                      "--cache-dir", str(cache_dir), *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.got = b""

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode())
        self.proc.stdin.flush()

    def read_until(self, want: bytes, timeout: float = 120.0) -> bytes:
        """Output up to and including the line holding ``want``; fails after ``timeout`` seconds."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while want not in self.got or not self.got[self.got.index(want):].count(b"\n"):
            left = deadline - time.monotonic()
            assert left > 0, f"no {want!r} in the output before stdin was closed: {self.got!r}"
            if select.select([fd], [], [], left)[0]:
                data = os.read(fd, 65536)
                assert data, f"output ended without {want!r}: {self.got!r}"
                self.got += data
        end = self.got.index(b"\n", self.got.index(want)) + 1
        out, self.got = self.got[:end], self.got[end:]
        return out

    def close(self) -> tuple[int, bytes, bytes]:
        out, err = self.proc.communicate(timeout=120)
        return self.proc.returncode, self.got + out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_pipe_annotates_each_line_as_it_arrives(vmlinux: Path, cache_dir: Path, vsym: Symbolizer) -> None:
    """A frame line written to the command's pipe is annotated before standard input is closed; a raw
    address before the ``Kernel Offset:`` line is unresolved, one after it resolves (the slide is learned
    from the lines so far), and the notes and the exit code come at the end."""
    ip = vsym.address_of("ip_local_out")
    assert ip is not None
    child = _Child(vmlinux, cache_dir)
    try:
        child.send("[   12.345678] Call Trace:\n[   12.345679]  ip_local_out+0x17/0x70\n")
        first = child.read_until(b"call site:")
        assert b"ip_local_out+0x17/0x70\n" in first and b"-> ip_local_out at net/ipv4/ip_output.c:" in first
        child.send(f"kstack:\n        {ip + 0x17 + SLIDE:#x}\n")
        assert RUNTIME_ADDRESS_REASON.encode() in child.read_until(b"-> ")
        child.send(f"Kernel Offset: {SLIDE:#x} from 0xffffffff81000000\nkstack:\n        {ip + 0x17 + SLIDE:#x}\n")
        later = child.read_until(b"-> ")
        assert b"Kernel Offset" in later and b"-> ip_local_out at net/ipv4/ip_output.c:" in later
        code, rest, err = child.close()
    finally:
        child.kill()
    assert code == EXIT_UNRESOLVED and b"1 of 3 frames unresolved" in err, err
    assert f"KASLR slide {SLIDE:#x} (from Kernel Offset line 5)".encode() in err
    assert b"-> " not in rest


def _refusal(named: str, vmlinux: Path, has: str) -> str:
    """The one line ``ksym annotate`` refuses a dump of another build with (docs/annotate.md)."""
    return (f"ksym annotate: error: build id mismatch: the dump names build id {named} but {vmlinux} has {has}: "
            "give the dump's vmlinux (--vmlinux, or found by its build id through DEBUGINFOD_URLS), or --force "
            "to annotate anyway")


@pytest.mark.parametrize("case", ["another", "another-forced", "the-same"])
def test_pipe_build_id_after_the_first_pause_is_checked(vmlinux: Path, cache_dir: Path, vsym: Symbolizer,
                                                         case: str) -> None:
    """A ``Build ID:`` line that arrives after the pipe's first pause is checked as one in the first piece
    is: another build stops the command before that piece is written (exit 3, one error line), with
    ``--force`` the frames from that piece on are marked unverified (a warning line); the vmlinux's own
    build id changes nothing."""
    assert vsym.build_id is not None
    other = "".join("0123456789abcdef"[(int(c, 16) + 1) % 16] for c in vsym.build_id)
    named = vsym.build_id if case == "the-same" else other
    child = _Child(vmlinux, cache_dir, *(["--force", "--json"] if case == "another-forced" else []))
    try:
        child.send("[   12.345678] Call Trace:\n[   12.345679]  ip_local_out+0x17/0x70\n")
        first = child.read_until(b"ip_local_out" if case == "another-forced" else b"call site:")
        assert b"ip_local_out" in first and b"build id" not in first  # written before the build id arrived
        child.send(f"[   13.000000] Build ID: {named}\n[   13.000001] Call Trace:\n"
                   "[   13.000002]  __ip_local_out+0xde/0x160\n")
        code, rest, err = child.close()
    finally:
        child.kill()
    lines = err.decode().splitlines()
    if case == "another":
        assert code == 3, err
        assert lines == [_refusal(other, vmlinux, vsym.build_id)]
        assert b"__ip_local_out" not in rest  # the piece naming another build was not written
    elif case == "another-forced":
        assert code == EXIT_OK, err
        assert lines[0].startswith(f"ksym annotate: warning: build id mismatch: the dump names build id {other}")
        frames = [json.loads(line) for line in (first + rest).splitlines()]
        assert [(f["symbol"], f["verified"]) for f in frames if "symbol" in f] == [
            ("ip_local_out", True), ("__ip_local_out", False)]
    else:
        assert code == EXIT_OK and err == b"", err
        assert b"__ip_local_out+0xde/0x160\n" in rest and b"-> " in rest  # annotated


@pytest.mark.parametrize("fmt", ["text", "json", "markdown"])
def test_the_dumps_build_id_is_checked_with_build_id_given(vmlinux: Path, cache_dir: Path, vsym: Symbolizer,
                                                          tmp_path: Path, fmt: str) -> None:
    """With ``--build-id`` (the vmlinux's), a dump naming another build is refused by the streamed forms
    (text, JSON) as by the reports, which read the whole text: exit 3, nothing written."""
    assert vsym.build_id is not None
    other = "".join("0123456789abcdef"[(int(c, 16) + 1) % 16] for c in vsym.build_id)
    dump = tmp_path / "dump.txt"
    dump.write_text(f"Build ID: {other}\nCall Trace:\n ip_local_out+0x17/0x70\n")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    got = subprocess.run([sys.executable, "-m", "ksym", "annotate", "--vmlinux", str(vmlinux), "--cache-dir",
                          str(cache_dir), "--build-id", vsym.build_id, "--format", fmt, str(dump)],
                         capture_output=True, env=env, timeout=300, check=False)
    assert got.returncode == 3 and got.stdout == b"", got.stderr
    assert got.stderr.decode().splitlines() == [_refusal(other, vmlinux, vsym.build_id)]


def test_pipe_whole_input_is_the_file_output(vmlinux: Path, cache_dir: Path, tmp_path: Path) -> None:
    """Input that arrives before the pipe's first pause is annotated as the same text from a file: the
    slide from a ``Kernel Offset:`` line after the frames included."""
    path = REPO_ROOT / "tests/data/annotate/raw-kernel-offset-6.1.0-53.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    cmd = [sys.executable, "-m", "ksym", "annotate", "--vmlinux", str(vmlinux), "--cache-dir", str(cache_dir)]
    by_file = subprocess.run([*cmd, str(path)], capture_output=True, env=env, timeout=300, check=False)
    by_pipe = subprocess.run(cmd, input=path.read_bytes(), capture_output=True, env=env, timeout=300, check=False)
    assert by_file.stdout == by_pipe.stdout and by_file.returncode == by_pipe.returncode
    assert by_file.stdout == (REPO_ROOT / "tests/data/annotate/raw-kernel-offset-6.1.0-53.expected").read_bytes()
    out = tmp_path / "out.json"
    by_output = subprocess.run([*cmd, "--json", "--output", str(out), str(path)], capture_output=True, env=env,
                               timeout=300, check=False)
    assert by_output.stdout == b"" and by_output.returncode in (EXIT_OK, EXIT_UNRESOLVED)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [f["line"] for f in lines] == [2, 3, 4, 5] and not list(tmp_path.glob(".*.tmp"))
