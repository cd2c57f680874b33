"""file:line through ksym: the glue against the reference Debian 6.1 debug vmlinux.

There is no debug vmlinux for the running 6.18 kernel, so the glue is checked with 6.1 frames on the
6.1 image (the frames NOTES.md gives with the kernel's own faddr2line output).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
from dc_helpers import ROOT

from dropcapture.cli import main
from dropcapture.errors import EXIT_USAGE
from dropcapture.kallsyms import Symbol
from dropcapture.symbolize import ksym_annotator

sys.path.insert(0, str(ROOT / "tests"))
try:
    from anchors import find_test_vmlinux  # ksym's test-data locator

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
    annotate, status = ksym_annotator(vmlinux)
    assert annotate is not None, status
    # faddr2line: nf_hook at include/linux/netfilter.h:257 (inlined by) __ip_local_out at net/ipv4/ip_output.c:115
    assert annotate(Symbol("__ip_local_out", 222, 0x160)) == (
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
    assert annotate(Symbol("ip_local_out", 29, 0x70)) == (chain,)
    # a size from another kernel build: faddr2line skips it, so no annotation (never a wrong line)
    assert annotate(Symbol("__ip_local_out", 222, 0x1D0)) == ()
    assert annotate(Symbol("no_such_function_xyz", 1, 0x10)) == ()
    assert annotate(Symbol("nft_do_chain", 1, 0x10, module="nf_tables")) == ()


@pytest.mark.vmlinux
def test_annotator_writes_ksym_index_when_closed(vmlinux: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """ksym writes what a Symbolizer learnt when it is closed, never at exit: the capture closes it."""
    monkeypatch.setenv("KSYM_CACHE_DIR", str(tmp_path))
    with contextlib.ExitStack() as closing:
        annotate, status = ksym_annotator(vmlinux, closing=closing)
        assert annotate is not None, status
        assert annotate(Symbol("__ip_local_out", 222, 0x160))
        assert not list(tmp_path.glob("index/*/answers.v*"))
    assert list(tmp_path.glob("index/*/answers.v*")), "the answers were not written when the capture ended"


def test_annotator_without_vmlinux(tmp_path: object) -> None:
    annotate, status = ksym_annotator(str(tmp_path) + "/missing-vmlinux")
    assert annotate is None and status


def test_cli_vmlinux_missing() -> None:
    assert main(["--vmlinux", "/nonexistent/vmlinux", "--count", "1"]) == EXIT_USAGE


@pytest.mark.vmlinux
def test_annotator_refuses_other_build(vmlinux: str) -> None:
    annotate, status = ksym_annotator(vmlinux, running_build_id="00" * 20)
    assert annotate is None and "build id" in status
    annotate, _ = ksym_annotator(vmlinux, running_build_id=None)
    assert annotate is not None
