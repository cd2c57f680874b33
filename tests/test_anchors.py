"""Tests of tests/anchors.py itself: the addr2line/faddr2line runners and parsers, on the fixtures."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from anchors import (
    FAddr2lineResult,
    addr2line_batch,
    dir_prefix,
    faddr2line,
    find_addr2line,
    find_faddr2line,
    find_test_vmlinux,
    fixture,
    func_symbols,
    missing,
    parse_addr2line_output,
    requires,
    strip_prefix,
)

DWARF5 = fixture("kshapes-dwarf5.elf")
PREFIX = "debian/build/build_amd64_none_cloud-amd64/"

needs_addr2line = requires(find_addr2line() is not None, "addr2line (binutils) is not installed")


def _sym(elf: Path, name: str) -> int:
    addrs = [addr for n, addr, _ in func_symbols(elf) if n == name]
    assert addrs, f"{name} not in {elf}"
    return addrs[0]


def test_parse_addr2line_output_handles_unknowns_and_discriminators() -> None:
    text = (
        "0x0000000000401000\n"
        "f\nsrc/a.c:12 (discriminator 3)\n"
        "g\nsrc/a.c:40\n"
        "0x0000000000401004\n"
        "??\n??:0\n"
        "0x0000000000401008\n"
        "h\nsrc/b.c:?\n"
    )
    assert parse_addr2line_output(text) == [
        [("f", "src/a.c", 12, 3), ("g", "src/a.c", 40, 0)],
        [("??", "??", 0, 0)],
        [("h", "src/b.c", 0, 0)],
    ]


def test_parse_addr2line_output_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_addr2line_output("f\nsrc/a.c:1\n")


def test_strip_prefix_like_faddr2line() -> None:
    assert strip_prefix(PREFIX + "init/main.c", PREFIX) == "init/main.c"
    assert strip_prefix(PREFIX + "././include/linux/x.h", PREFIX) == "include/linux/x.h"
    assert strip_prefix("/abs/init/main.c", PREFIX) == "/abs/init/main.c"
    assert strip_prefix("??", None) == "??"


def test_fixtures_exist_and_are_small() -> None:
    for name in ("kshapes-dwarf5.elf", "kshapes-dwarf4.elf", "kshapes-nodebug.elf",
                 "kshapes-nosymtab.elf", "kshapes-nosymtab-dwarf.elf", "kshapes-truncated.elf"):
        path = fixture(name)
        assert path.is_file(), path
        assert path.stat().st_size < 64 * 1024
    assert fixture("kshapes-truncated.elf").stat().st_size == 4096


def test_fixture_symbols_have_the_kernel_shapes() -> None:
    names = [n for n, _, _ in func_symbols(DWARF5)]
    assert names.count("raw_ioctl") == 2
    sizes = {size for n, _, size in func_symbols(DWARF5) if n == "raw_ioctl"}
    assert len(sizes) == 2
    for name in ("start_kernel", "main", "__ip_local_out", "ip_local_out_like", "nf_hook_slow",
                 "netif_receive_like", "netif_receive_like.cold", "skb_len_sum.isra.0",
                 "dev_set_mtu_like.constprop.0", "dev_hash.constprop.0.isra.0"):
        assert name in names


@needs_addr2line
def test_no_machine_path_leaks_and_prefix_is_debian_like() -> None:
    assert dir_prefix(DWARF5) == PREFIX
    assert str(Path(__file__).resolve().parent.parent).encode() not in DWARF5.read_bytes()


@needs_addr2line
@pytest.mark.parametrize("elf_name", ["kshapes-dwarf5.elf", "kshapes-dwarf4.elf"])
def test_addr2line_batch_inline_depths(elf_name: str) -> None:
    elf = fixture(elf_name)
    base = _sym(elf, "ip_local_out_like")
    ip = _sym(elf, "__ip_local_out")
    chains = addr2line_batch(elf, [base + 0x1d, base + 0x21, base + 0x40, ip + 0x2d, base])
    assert [len(c) for c in chains] == [2, 3, 4, 2, 1]
    assert [f for f, _, _, _ in chains[2]] == ["nf_hook_state_init", "nf_hook", "ip_local_out_inl",
                                               "ip_local_out_like"]
    assert chains[1][0] == ("nf_hook", PREFIX + "include/linux/netfilter.h", 49, 0)
    assert chains[1][1:] == [
        ("ip_local_out_inl", PREFIX + "net/ipv4/ip_output.c", 38, 0),
        ("ip_local_out_like", PREFIX + "net/ipv4/ip_output.c", 46, 0),
    ]
    assert chains[3] == [
        ("nf_hook", PREFIX + "include/linux/netfilter.h", 49, 0),
        ("__ip_local_out", PREFIX + "net/ipv4/ip_output.c", 31, 0),
    ]


@needs_addr2line
def test_addr2line_batch_cold_clone_and_discriminator() -> None:
    cold = _sym(DWARF5, "netif_receive_like.cold")
    isra = _sym(DWARF5, "skb_len_sum.isra.0")
    report = _sym(DWARF5, "dev_report_error")
    chains = addr2line_batch(DWARF5, [cold + 0x10, isra, report + 7, 0x10])
    # The .cold part is named after the DWARF subprogram, not after the ELF symbol.
    assert chains[0] == [("netif_receive_like", PREFIX + "net/core/dev.c", 21, 4)]
    assert chains[1] == [("skb_len_sum", PREFIX + "net/core/dev.c", 44, 0)]
    assert chains[2] == [("dev_report_error", PREFIX + "net/core/dev.c", 14, 1)]
    assert chains[3] == [("??", "??", 0, 0)]


@needs_addr2line
def test_addr2line_batch_many_addresses_one_process() -> None:
    syms = func_symbols(DWARF5)
    addrs = [addr + off for _, addr, size in syms for off in range(0, size, 3)]
    chains = addr2line_batch(DWARF5, addrs)
    assert len(chains) == len(addrs)
    assert all(chain and chain[-1][1].startswith(PREFIX) for chain in chains)
    assert addr2line_batch(DWARF5, []) == []


def test_finders_honour_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    script = tmp_path / "faddr2line"
    script.write_text("#!/bin/sh\n")
    monkeypatch.setenv("KSYM_FADDR2LINE", str(script))
    assert find_faddr2line() == script
    monkeypatch.setenv("KSYM_FADDR2LINE", str(tmp_path / "missing"))
    assert find_faddr2line() is None
    monkeypatch.setenv("KSYM_TEST_VMLINUX", str(script))
    assert find_test_vmlinux() == script


@needs_addr2line
def test_faddr2line_runner() -> None:
    script = find_faddr2line()
    if script is None:
        missing("the kernel's scripts/faddr2line is not available (set KSYM_FADDR2LINE)")
    res = faddr2line(DWARF5, ["ip_local_out_like+0x1d", "no_such_function+0x1"], script)
    assert isinstance(res, FAddr2lineResult)
    assert res.stdout == (
        "ip_local_out_like+0x1d/0x90:\n"
        "ip_local_out_inl at net/ipv4/ip_output.c:38\n"
        "(inlined by) ip_local_out_like at net/ipv4/ip_output.c:46\n"
    )
    assert res.stderr == "no match for no_such_function+0x1\n"


def _first_line(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.split("\n", 1)[0]


def _toolchain_problem() -> str | None:
    """Why fixtures/build.sh cannot reproduce the committed fixtures here: a tool it runs is missing, or
    not the version they were built with (Debian 12: gcc 12.2.0, binutils 2.40, clang and lld 14.0.6)."""
    tools = ("gcc", "ld", "objcopy", "clang", "ld.lld", "sha256sum")
    absent = [t for t in tools if shutil.which(t) is None]
    if absent:
        return f"fixtures/build.sh needs {', '.join(absent)}: apt-get install gcc binutils clang lld"
    versions = {"gcc 12.2.0": "12.2.0" in _first_line(["gcc", "--version"]),
                "binutils 2.40": " 2.40" in _first_line(["ld", "--version"]),
                "clang 14.0.6": "version 14.0.6" in _first_line(["clang", "--version"]),
                "lld 14.0.6": "LLD 14.0.6" in _first_line(["ld.lld", "--version"])}
    other = [name for name, ok in versions.items() if not ok]
    if other:
        return f"the committed fixtures were built with Debian 12's {', '.join(other)}: other versions differ"
    return None


def test_fixtures_rebuild_byte_identical(tmp_path: Path) -> None:
    """fixtures/build.sh run from another directory reproduces the committed files exactly."""
    problem = _toolchain_problem()
    if problem is not None:
        missing(problem)
    src = fixture("kshapes-dwarf5.elf").parent.parent
    copy = tmp_path / "fixtures"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("bin"))
    built = subprocess.run(["bash", str(copy / "build.sh")], check=False, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    for built in sorted((copy / "bin").glob("*.elf")):
        assert built.read_bytes() == fixture(built.name).read_bytes(), built.name
