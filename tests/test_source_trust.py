"""Source paths from debug files are untrusted: ``--list`` and the HTML/Markdown reports read source only
from regular files under a source root (docs/source.md, "Which files are read").

The debug file is built here with gcc: ``#line`` directives make its DWARF name ``/proc/self/environ``,
an absolute path to a mode-600 file, a ``../..`` path under a ``comp_dir`` of ``/``, a 4 GiB sparse
file, and a symlink inside the source tree that points out of it.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

CANARY = "ksym-environ-canary-4f1d"
SECRET = "SECRET-TOKEN-9c2e"
#: The address space the ksym process may use: reading the 4 GiB file whole cannot fit in it.
MEMORY_LIMIT = 1 << 30


class Crafted(NamedTuple):
    elf: Path
    base: Path
    tree: Path


def _tools() -> None:
    for tool in ("gcc", "ld"):
        if shutil.which(tool) is None:
            if os.environ.get("CI"):
                pytest.fail(f"{tool} is missing")
            pytest.skip(f"{tool} is missing")


@pytest.fixture(scope="module")
def crafted(tmp_path_factory: pytest.TempPathFactory) -> Crafted:
    _tools()
    base = tmp_path_factory.mktemp("trust")
    secret = base / "secret.txt"
    secret.write_text("".join(f"{SECRET} line {n}\n" for n in range(1, 9)))
    secret.chmod(0o600)
    big = base / "big.c"
    with open(big, "wb") as fh:
        fh.truncate(4 << 30)  # sparse: takes no disk space
    tree = base / "tree"
    (tree / "net").mkdir(parents=True)
    (tree / "net" / "ok.c").write_text("".join(f"int ok_line_{n};\n" for n in range(1, 9)))
    (tree / "net" / "link.c").symlink_to(secret)
    build = base / "build"
    build.mkdir()
    rel_secret = "../" * 8 + str(secret).lstrip("/")
    (build / "c.c").write_text(
        "void start_kernel(void) {}\n"
        '#line 1 "/proc/self/environ"\n'
        "int f_environ(int x) { return x * 3 + 1; }\n"
        f'#line 3 "{secret}"\n'
        "int f_secret(int x) { return x * 5 + 2; }\n"
        f'#line 3 "{rel_secret}"\n'
        "int f_dotdot(int x) { return x * 7 + 3; }\n"
        f'#line 3 "{big}"\n'
        "int f_big(int x) { return x * 9 + 4; }\n"
        f'#line 3 "{tree}/net/link.c"\n'
        "int f_link(int x) { return x * 11 + 5; }\n"
        f'#line 3 "{tree}/net/ok.c"\n'
        "int f_ok(int x) { return x * 13 + 6; }\n"
        "int f_end(int x) { return x * 15 + 7; }\n"
    )
    # comp_dir "/": the relative name becomes //../../.../secret.txt
    subprocess.run(["gcc", "-g", "-O1", "-fno-pie", "-c", "c.c", "-o", "c.o", f"-fdebug-prefix-map={build}=/"],
                   cwd=build, check=True)
    subprocess.run(["ld", "-static", "-no-pie", "-e", "start_kernel", "c.o", "-o", "c.elf"], cwd=build, check=True)
    return Crafted(build / "c.elf", base, tree)


FRAMES = ["f_environ+0", "f_secret+0", "f_dotdot+0", "f_big+0", "f_link+0", "f_ok+0"]


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _ksym(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KSYM_CACHE_DIR": str(tmp_path / "cache"), "XDG_CACHE_HOME": str(tmp_path / "xdg"),
           "KSYM_TEST_CANARY": CANARY}
    env.pop("KSYM_SOURCE_DIR", None)
    return subprocess.run([sys.executable, "-m", "ksym", *args], capture_output=True, text=True, check=False,
                          cwd=tmp_path, env=env, timeout=120, preexec_fn=_limit_memory)


def _no_leak(*texts: str) -> None:
    for text in texts:
        assert CANARY not in text, "the process environment was shown"
        assert SECRET not in text, "a file outside the source tree was shown"
        assert "Traceback" not in text and "internal error" not in text


@pytest.mark.parametrize("with_tree", [False, True], ids=["no-source-dir", "source-dir"])
def test_list_reads_only_inside_the_source_tree(crafted: Crafted, tmp_path: Path, with_tree: bool) -> None:
    extra = ["--source-dir", str(crafted.tree)] if with_tree else []
    got = _ksym(["resolve", "--offline", "--list", "--vmlinux", str(crafted.elf), *extra, *FRAMES], tmp_path)
    assert got.returncode == 0, got.stderr
    _no_leak(got.stdout, got.stderr)
    assert "f_environ at /proc/self/environ:1" in got.stdout  # the location itself is still shown
    assert "f_big at " in got.stdout
    if with_tree:
        assert ">3<\tint ok_line_3;" in got.stdout, "the file inside the tree is listed"
    for line in got.stderr.splitlines():
        assert line.startswith("ksym: "), line


def test_a_huge_file_in_the_tree_is_refused_at_the_cap(crafted: Crafted, tmp_path: Path) -> None:
    got = _ksym(["resolve", "--offline", "--list", "--vmlinux", str(crafted.elf), "--source-dir",
                 str(crafted.base), "f_big+0"], tmp_path)
    assert got.returncode == 0, got.stderr
    assert f"ksym: warning: {crafted.base}/big.c: larger than 64 MiB, not read" in got.stderr.splitlines()
    assert "Traceback" not in got.stderr and "MemoryError" not in got.stderr


@pytest.mark.parametrize("fmt", ["html", "markdown"])
@pytest.mark.parametrize("with_tree", [False, True], ids=["no-source-dir", "source-dir"])
def test_reports_read_only_inside_the_source_tree(crafted: Crafted, tmp_path: Path, fmt: str,
                                                  with_tree: bool) -> None:
    # the frames as a kernel prints them, with the sizes faddr2line computes (resolve's headers)
    heads = _ksym(["resolve", "--vmlinux", str(crafted.elf), *FRAMES], tmp_path).stdout.splitlines()
    frames = [h.rstrip(":").replace("+0/", "+0x0/") for h in heads if h.startswith("f_") and h.endswith(":")]
    assert len(frames) == len(FRAMES)
    dump = tmp_path / "dump.txt"
    dump.write_text("[    1.000000] Call Trace:\n[    1.000000]  <TASK>\n"
                    + "".join(f"[    1.000000]  {f}\n" for f in frames))
    out = tmp_path / f"report.{fmt}"
    extra = ["--source-dir", str(crafted.tree)] if with_tree else []
    got = _ksym(["annotate", "--offline", "--vmlinux", str(crafted.elf), "--format", fmt, "-o", str(out), *extra,
                 str(dump)], tmp_path)
    assert out.exists(), got.stderr
    page = out.read_text()
    _no_leak(page, got.stdout, got.stderr)
    assert "/proc/self/environ" in page
    if with_tree:
        assert "int ok_line_3;" in page, "the file inside the tree is shown"


def test_read_source_file_policy(tmp_path: Path) -> None:
    from ksym.source import read_source_file

    tree = tmp_path / "tree"
    tree.mkdir()
    ok = tree / "ok.c"
    ok.write_bytes(b"x" * 100)
    assert read_source_file(ok, [str(tree)], 100) == (b"x" * 100, "ok", "")
    assert read_source_file(ok, [str(tree)], 99).kind == "too-large"
    assert read_source_file(ok, [str(tmp_path / "other")]).kind == "outside"
    assert read_source_file(tree / "none.c", [str(tree)]).kind == "missing"
    fifo = tree / "fifo.c"
    os.mkfifo(fifo)
    assert read_source_file(fifo, [str(tree)]).kind == "refused", "a FIFO is not read (nor waited on)"
    assert read_source_file(tree, [str(tree)]).kind == "refused", "a directory is not a source file"
    # a root of / still never reads the pseudo file systems
    for pseudo in ("/proc/self/environ", "/proc/self/status", "/dev/zero", "/sys/kernel/notes"):
        got = read_source_file(pseudo, ["/"])
        assert got.data is None and got.kind in ("refused", "missing"), pseudo
    assert read_source_file("/dev/zero", ["/"]).kind == "refused"
    # the prefix of a root is not the root
    (tmp_path / "tree-other").mkdir()
    (tmp_path / "tree-other" / "x.c").write_text("x\n")
    assert read_source_file(tmp_path / "tree-other" / "x.c", [str(tree)]).kind == "outside"
