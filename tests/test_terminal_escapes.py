"""Names and paths from debug files reach the terminal with their control characters escaped.

The debug file is built here with gcc: a ``#line`` directive puts escape sequences (set the window
title, clear the screen) into a file name, and the function's name is patched, in the symbol table and
in ``.debug_str`` alike, into one holding an OSC sequence and a bidi override. ``ksym resolve`` (plain,
``--links``, ``--list``, ``--list --links``) and ``ksym annotate`` must print none of those bytes raw,
and show them as visible escapes instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

#: The same length as the placeholder name it replaces in the built file.
PLACEHOLDER = b"f_placeholder_name_x"
EVIL_NAME = "f\x1b]0;pwned\x07\u202e\x9bname"
EVIL_FILE = "\x1b]0;pwned\x07x\x1b[2J.c"
TEXT = 0xFFFFFFFF81000000
#: An address inside the evil function (start_kernel is the first byte of .text, the function the next).
ADDRESS = f"{TEXT + 2:#x}"
#: Bytes that must never reach the terminal: C0 except tab and newline, DEL, C1 (as UTF-8), bidi overrides.
RAW_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x80-\x9f\u202a-\u202e\u2066-\u2069]")


@pytest.fixture(scope="module")
def evil_elf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for tool in ("gcc", "ld"):
        if shutil.which(tool) is None:
            if os.environ.get("CI"):
                pytest.fail(f"{tool} is missing")
            pytest.skip(f"{tool} is missing")
    build = tmp_path_factory.mktemp("escapes")
    (build / "c.c").write_text(
        "void start_kernel(void) {}\n"
        '#line 1 "\\x1b]0;pwned\\x07x\\x1b[2J.c"\n'
        f"int {PLACEHOLDER.decode()}(int x) {{ return x * 11 + 5; }}\n"
        "int f_end(int x) { return x * 13 + 6; }\n"
    )
    subprocess.run(["gcc", "-g", "-O1", "-fno-pie", "-c", "c.c", "-o", "c.o"], cwd=build, check=True)
    # at a kernel text address, so annotate takes a bare address in a Call Trace for a kernel frame
    subprocess.run(["ld", "-static", "-no-pie", "-e", "start_kernel", f"-Ttext={TEXT:#x}", "c.o", "-o", "c.elf"],
                   cwd=build, check=True)
    data = (build / "c.elf").read_bytes()
    evil = EVIL_NAME.encode()
    assert len(evil) == len(PLACEHOLDER) and data.count(PLACEHOLDER) >= 2  # .strtab and .debug_str
    (build / "evil.elf").write_bytes(data.replace(PLACEHOLDER, evil))
    return build / "evil.elf"


def _ksym(args: list[str], tmp_path: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KSYM_CACHE_DIR": str(tmp_path / "cache"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    return subprocess.run([sys.executable, "-m", "ksym", *args], capture_output=True, text=True, check=False,
                          cwd=tmp_path, env=env, timeout=120, input=stdin, encoding="utf-8")


def _clean(got: subprocess.CompletedProcess[str]) -> None:
    for stream in (got.stdout, got.stderr):
        bad = RAW_CONTROL.search(stream)
        assert bad is None, f"raw {bad.group()!r} in {stream!r}"
        assert "Traceback" not in stream


SHOWN_NAME = r"f\x1b]0;pwned\x07\u202e\x9bname"
SHOWN_FILE = r"\x1b]0;pwned\x07x\x1b[2J.c"


@pytest.mark.parametrize("extra", [[], ["--links"], ["--list"], ["--list", "--links"]],
                         ids=["plain", "links", "list", "list-links"])
def test_resolve_escapes_names(evil_elf: Path, tmp_path: Path, extra: list[str]) -> None:
    got = _ksym(["resolve", "--offline", "--vmlinux", str(evil_elf), *extra, ADDRESS], tmp_path)
    _clean(got)
    assert got.returncode == 0, got.stderr
    lines = got.stdout.splitlines()
    assert lines[0].startswith(f"{ADDRESS} ({SHOWN_NAME}+0x1/0x"), lines
    assert any(line.startswith(f"{SHOWN_NAME} at ") and f"{SHOWN_FILE}:1" in line for line in lines), lines


def test_annotate_escapes_annotations(evil_elf: Path, tmp_path: Path) -> None:
    dump = f"Call Trace:\n <TASK>\n ? {ADDRESS}\n"
    got = _ksym(["annotate", "--offline", "--kaslr-offset", "0", "--vmlinux", str(evil_elf)], tmp_path, stdin=dump)
    _clean(got)
    lines = got.stdout.splitlines()
    assert any(line.strip().startswith(f"-> {SHOWN_NAME} at ") and f"{SHOWN_FILE}:1" in line for line in lines), lines
    assert any(line.strip().startswith(f"in {SHOWN_NAME}+0x1/0x") for line in lines), lines


def test_terminal_text() -> None:
    from ksym.format import terminal_text

    assert terminal_text("__ip_local_out at net/ipv4/ip_output.c:115") == "__ip_local_out at net/ipv4/ip_output.c:115"
    assert terminal_text("a\x1b[2Jb\x07\x7f\x9b\u202e") == r"a\x1b[2Jb\x07\x7f\x9b\u202e"
    assert terminal_text("a\tb\nc") == r"a\x09b\x0ac"
    assert terminal_text("a\tb\x0c", keep="\t\x0c") == "a\tb\x0c"
    assert terminal_text("µ-naïve ✓") == "µ-naïve ✓"
