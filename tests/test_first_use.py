"""First use of the command: the mistakes a new user makes get one line that says what to type instead, and
the demo of tools/setup.sh runs on what the repository ships."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from anchors import REPO_ROOT, fixture

from ksym import BadFileError, MissingDebugInfoError, Symbolizer
from ksym.debuginfo import package_hint
from ksym.image import DEBUG_PACKAGES
from ksym.locate import find_vmlinux

DWARF5 = fixture("kshapes-dwarf5.elf")
DUMP = REPO_ROOT / "tests" / "data" / "annotate" / "fixture-dump.txt"


def ksym(tmp_path: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KSYM_VMLINUX"}
    env.update(KSYM_CACHE_DIR=str(tmp_path / "cache"), DEBUGINFOD_URLS="")
    return subprocess.run([sys.executable, "-m", "ksym", *args], capture_output=True, text=True, check=False,
                          env=env, cwd=cwd, timeout=120)


def test_a_vmlinux_given_as_first_frame_suggests_vmlinux(tmp_path: Path) -> None:
    """``ksym resolve VMLINUX FRAME``: a forgotten --vmlinux is named as such, exit 2, whatever vmlinux
    this machine has (none, a stripped one, the debug one)."""
    for first in (str(DWARF5), os.path.relpath(DWARF5, REPO_ROOT)):
        got = ksym(tmp_path, "resolve", first, "raw_ioctl+0x5", cwd=REPO_ROOT)
        assert got.returncode == 2, got.stderr
        assert got.stderr == f"ksym: error: {first} is a file: did you mean --vmlinux {first}?\n"
        assert got.stdout == ""
    # the same file after --vmlinux resolves
    ok = ksym(tmp_path, "resolve", "--vmlinux", str(DWARF5), "raw_ioctl+0x5")
    assert ok.returncode == 0 and "raw_ioctl at drivers/char/raw.c:7 (discriminator 2)" in ok.stdout


def test_a_dump_given_to_resolve_suggests_annotate(tmp_path: Path) -> None:
    got = ksym(tmp_path, "resolve", str(DUMP))
    assert got.returncode == 2, got.stderr
    assert got.stderr == f"ksym: error: {DUMP} is a file, not a frame: did you mean ksym annotate {DUMP}?\n"


def test_frames_that_are_not_files_are_frames(tmp_path: Path) -> None:
    """A frame is never taken for a file it does not name; a directory is not a file."""
    got = ksym(tmp_path, "resolve", "--vmlinux", str(DWARF5), "raw_ioctl+0x5", str(tmp_path))
    assert got.returncode == 2 and "is a file" not in got.stderr
    env_run = subprocess.run([sys.executable, "-m", "ksym", "resolve", "raw_ioctl+0x5"], capture_output=True,
                             text=True, check=False, timeout=120,
                             env={**os.environ, "KSYM_VMLINUX": str(DWARF5), "KSYM_CACHE_DIR": str(tmp_path)})
    assert env_run.returncode == 0, env_run.stderr


@pytest.mark.parametrize(("name", "what"), [("kshapes-nodebug.elf", "no DWARF debug info"),
                                            ("kshapes-nosymtab.elf", "no symbol table"),
                                            ("kshapes-nosymtab-dwarf.elf", "no symbol table")])
def test_a_named_stripped_file_does_not_say_pass_vmlinux(tmp_path: Path, name: str, what: str) -> None:
    """The file was given with --vmlinux: the message says to use the debug vmlinux instead, never "or pass
    --vmlinux"; nor does the library's, which has no options."""
    got = ksym(tmp_path, "resolve", "--vmlinux", str(fixture(name)), "raw_ioctl+0x5")
    assert got.returncode == 4, got.stderr
    assert got.stderr.count("\n") == 1 and what in got.stderr
    assert "--vmlinux" not in got.stderr
    assert "use the kernel's debug vmlinux instead" in got.stderr and "linux-image-$(uname -r)-dbg" in got.stderr
    with pytest.raises(BadFileError) as exc, Symbolizer(fixture(name), use_index=False) as sym:
        sym.resolve("raw_ioctl+0x5")
    assert "--vmlinux" not in str(exc.value)


def test_a_found_stripped_vmlinux_says_pass_vmlinux(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing was named and only a stripped vmlinux was found: there "or pass --vmlinux" is the advice, and
    the package hint is not nested in another "install ..." (an unknown distribution)."""
    monkeypatch.delenv("KSYM_VMLINUX", raising=False)
    with pytest.raises(MissingDebugInfoError) as exc:
        find_vmlinux(candidates=[fixture("kshapes-nodebug.elf")], release="6.1.0-53-cloud-amd64")
    msg = str(exc.value)
    assert "no DWARF debug info" in msg and msg.endswith("or pass --vmlinux")
    hint = package_hint("6.1.0-53-cloud-amd64", {"ID": "plan9"})
    assert hint == DEBUG_PACKAGES and "install" not in hint and "--vmlinux" not in hint


def test_zstandard_is_a_default_dependency() -> None:
    """Ubuntu and Arch ship .ko.zst modules and zstd-compressed debug data is common: a plain ``pip install
    ksym`` must read them (Python 3.14+ has compression.zstd built in)."""
    text = (REPO_ROOT / "pyproject.toml").read_text()
    block = re.search(r"^\[project\]$.*?^dependencies = \[$(.*?)^\]$", text, re.MULTILINE | re.DOTALL)
    assert block is not None
    deps = re.findall(r'^\s*"([^"]+)",', block[1], re.MULTILINE)
    assert "pyelftools>=0.30" in deps  # the list was found
    zstd = [d for d in deps if d.startswith("zstandard")]
    assert zstd == ["zstandard>=0.20; python_version < '3.14'"]


def _demo_commands() -> list[list[str]]:
    """The ``demo_run`` lines of ``tools/setup.sh demo``, with its ``$fx``."""
    text = (REPO_ROOT / "tools" / "setup.sh").read_text()
    fx = re.search(r"^\s*fx=(\S+)$", text, re.MULTILINE)
    assert fx is not None
    return [shlex.split(m[1].replace('"$fx"', fx[1])) for m in re.finditer(r"^\s*demo_run (.+)$", text, re.MULTILINE)]


def test_the_demo_resolves_and_annotates_the_fixture(tmp_path: Path) -> None:
    """What ``bash tools/setup.sh demo`` shows works on a checkout: every frame of the shipped dump resolves."""
    commands = _demo_commands()
    assert [c[0] for c in commands] == ["resolve", "annotate"]
    for cmd in commands:
        got = ksym(tmp_path, *cmd, cwd=REPO_ROOT)
        assert got.returncode == 0, (cmd, got.stderr)
        assert got.stderr == ""
    annotated = got.stdout
    assert commands[1][-1] == "fixtures/demo-dump.txt"
    assert annotated.count("-> ") == 8  # the WARNING and RIP lines, 3 Call Trace frames, 3 kstack frames
    assert "unresolved" not in annotated and "note:" not in annotated
    assert "(inlined by) ip_local_out_like at net/ipv4/ip_output.c:46\n      call site: call nf_hook_slow" in annotated
