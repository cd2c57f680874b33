"""file:line through ksym: the glue against the reference Debian 6.1 debug vmlinux.

There is no debug vmlinux for the running 6.18 kernel, so the glue is checked with 6.1 frames on the
6.1 image (the frames NOTES.md gives with the kernel's own faddr2line output).
"""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from dc_helpers import ROOT

from dropcapture.cli import main
from dropcapture.errors import EXIT_USAGE
from dropcapture.symbolize import format_chain, ksym_annotator
from ksym.kallsyms import KallsymsSymbol

sys.path.insert(0, str(ROOT / "tests"))
try:
    from anchors import addr2line_batch, dir_prefix, find_test_vmlinux, strip_prefix  # ksym's test helpers

    VMLINUX = find_test_vmlinux()
except ImportError:  # pragma: no cover - ksym tests not present
    VMLINUX = None


@pytest.fixture
def vmlinux() -> str:
    if VMLINUX is None:
        msg = "the Debian 6.1 debug vmlinux is missing (tools/fetch-testdata.sh)"
        print(f"skipping: {msg}")
        pytest.skip(msg)
    return str(VMLINUX)


@pytest.mark.vmlinux
def test_annotator_inline_chain(vmlinux: str) -> None:
    with contextlib.ExitStack() as closing:
        annotate, status = ksym_annotator(vmlinux, closing=closing)
        assert annotate is not None, status
        _inline_chain_of(annotate)


def _inline_chain_of(annotate: Any) -> None:
    # faddr2line: nf_hook at include/linux/netfilter.h:257 (inlined by) __ip_local_out at net/ipv4/ip_output.c:115
    assert annotate(KallsymsSymbol("__ip_local_out", 222, 0x160)) == (
        (
            "net/ipv4/ip_output.c:115 (inlined nf_hook include/linux/netfilter.h:257)"
            "  https://elixir.bootlin.com/linux/v6.1.187/source/include/linux/netfilter.h#L257"
        ),
    )
    chain = (
        "net/ipv4/ip_output.c:126 (inlined dst_output include/net/dst.h:453)"
        " (inlined skb_dst include/linux/skbuff.h:1119)"
        "  https://elixir.bootlin.com/linux/v6.1.187/source/include/linux/skbuff.h#L1119"
    )
    assert annotate(KallsymsSymbol("ip_local_out", 29, 0x70)) == (chain,)
    # a size from another kernel build: faddr2line skips it, so no annotation (never a wrong line)
    assert annotate(KallsymsSymbol("__ip_local_out", 222, 0x1D0)) == ()
    assert annotate(KallsymsSymbol("no_such_function_xyz", 1, 0x10)) == ()
    assert annotate(KallsymsSymbol("nft_do_chain", 1, 0x10, module="nf_tables")) == ()


@pytest.mark.vmlinux
def test_annotator_writes_ksym_index_when_closed(vmlinux: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """ksym writes what a Symbolizer learnt when it is closed, never at exit: the capture closes it."""
    monkeypatch.setenv("KSYM_CACHE_DIR", str(tmp_path))
    with contextlib.ExitStack() as closing:
        annotate, status = ksym_annotator(vmlinux, closing=closing)
        assert annotate is not None, status
        assert annotate(KallsymsSymbol("__ip_local_out", 222, 0x160))
        assert not list(tmp_path.glob("index/*/answers.v*"))
    assert list(tmp_path.glob("index/*/answers.v*")), "the answers were not written when the capture ended"


def test_annotator_without_vmlinux(tmp_path: object) -> None:
    with contextlib.ExitStack() as closing:
        annotate, status = ksym_annotator(str(tmp_path) + "/missing-vmlinux", closing=closing)
    assert annotate is None and status


def _open_fds_of(path: Path) -> int:
    """How many of this process's file descriptors are open on ``path``."""
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == str(path.resolve()))


def test_annotator_closes_a_file_it_does_not_use() -> None:
    """A file without DWARF is not used for file:line, and the caller's ``with`` block still closes it
    (it was left open until the garbage collector ran: a ResourceWarning in a later test)."""
    nodebug = ROOT / "fixtures/bin/kshapes-nodebug.elf"
    gc.collect()
    before = _open_fds_of(nodebug)
    with contextlib.ExitStack() as closing:
        annotate, status = ksym_annotator(str(nodebug), closing=closing)
        assert annotate is None and "no DWARF" in status, status
    assert _open_fds_of(nodebug) == before


def test_cli_vmlinux_missing() -> None:
    assert main(["--vmlinux", "/nonexistent/vmlinux", "--count", "1"]) == EXIT_USAGE


@pytest.mark.vmlinux
def test_annotator_refuses_other_build(vmlinux: str) -> None:
    with contextlib.ExitStack() as closing:
        annotate, status = ksym_annotator(vmlinux, running_build_id="00" * 20, closing=closing)
        assert annotate is None and "build id" in status
        annotate, _ = ksym_annotator(vmlinux, running_build_id=None, closing=closing)
        assert annotate is not None


def _kallsyms_text(vmlinux: str) -> list[tuple[int, str]]:
    """The code symbols kallsyms prints, by address, as ``nm -n`` lists them (types t/T/w/W)."""
    out = subprocess.run(["nm", "-n", vmlinux], capture_output=True, text=True, check=True, timeout=600,
                         env={**os.environ, "LC_ALL": "C"}).stdout
    return [(int(f[0], 16), f[2]) for line in out.splitlines()
            if len(f := line.split()) == 3 and f[1] in "tTwW" and not f[2].startswith((".L", "$"))]


def _addr2line_text(vmlinux: str, address: int, prefix: str | None) -> str:
    """binutils ``addr2line -fi`` at ``address`` in format_chain's shape (without the elixir link)."""
    chain = addr2line_batch(Path(vmlinux), [address])[0]
    locs = [SimpleNamespace(function=f, file=strip_prefix(p, prefix), line=ln) for f, p, ln, _d in chain]
    return format_chain(locs)


@pytest.mark.vmlinux
def test_annotator_kallsyms_labels(vmlinux: str) -> None:
    """Kernel stacks from BPF name what kallsyms prints: the untyped entry label of every syscall stack
    resolves (scripts/faddr2line's FUNC-only rule says "no match"), to binutils addr2line -fi's line at
    the address, with the kernel's size for it (nm: up to the next code symbol); a function frame is
    unchanged."""
    with contextlib.ExitStack() as closing:
        annotate, status = ksym_annotator(vmlinux, closing=closing)
        assert annotate is not None, status
        _kallsyms_labels_of(annotate, vmlinux)


def _kallsyms_labels_of(annotate: Any, vmlinux: str) -> None:
    text = _kallsyms_text(vmlinux)
    prefix = dir_prefix(Path(vmlinux))
    label = "entry_SYSCALL_64_after_hwframe"
    start = next(a for a, n in text if n == label)
    size = next(a for a, _ in text if a > start) - start
    frame = KallsymsSymbol(label, 0x64, size)
    assert str(frame) == "entry_SYSCALL_64_after_hwframe+0x64/0xd8"  # what Debian 6.1 printed
    got = annotate(frame)
    assert len(got) == 1, got
    assert got[0].split("  ")[0] == _addr2line_text(vmlinux, start + 0x64, prefix)
    # another size is another build: no line rather than a wrong one
    assert annotate(KallsymsSymbol(label, 0x64, size + 0x10)) == ()
    # a function: the same line as addr2line at its address
    func = next(a for a, n in text if n == "__ip_local_out")
    got = annotate(KallsymsSymbol("__ip_local_out", 0xDE, next(a for a, _ in text if a > func) - func))
    assert len(got) == 1 and got[0].split("  ")[0] == _addr2line_text(vmlinux, func + 0xDE, prefix)


def test_default_vmlinux_takes_the_release_paths_of_ksym_locate(tmp_path: Path) -> None:
    """dropcapture's default vmlinux is the first of ksym.locate's places for the release that is a file:
    never another release's /boot/vmlinux-* (which ksym's own search checks by build id)."""
    from dropcapture.symbolize import default_vmlinux
    from ksym.locate import release_paths

    elf = (ROOT / "fixtures" / "bin" / "kshapes-dwarf5.elf").read_bytes()
    mine, other = "6.1.0-53-cloud-amd64", "6.18.0-rc3"
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / f"vmlinux-{other}").write_bytes(elf)
    assert default_vmlinux(mine, root=str(tmp_path)) is None
    later = [p for p in release_paths(mine, root=tmp_path) if "lib/modules" in str(p)]
    for p in later:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(elf)
    assert default_vmlinux(mine, root=str(tmp_path)) == str(later[0])
    first = release_paths(mine, root=tmp_path)[0]
    first.parent.mkdir(parents=True, exist_ok=True)
    first.write_bytes(elf)
    assert default_vmlinux(mine, root=str(tmp_path)) == str(first)
    assert default_vmlinux(other, root=str(tmp_path)) == str(tmp_path / "boot" / f"vmlinux-{other}")
