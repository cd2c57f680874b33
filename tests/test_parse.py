"""Tests for ksym.parse: every supported stack format, the real samples, non-frames, and a fuzz test."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ksym.parse import (
    _LOG_PREFIXES,
    FrameKind,
    ParsedLine,
    StackFrame,
    _parse,
    find_kaslr_offset,
    iter_lines,
    line_context,
    parse_line,
    parse_offset,
    parse_text,
    split_stacks,
    strip_log_prefix,
)
from ksym.spec import FuncSpec, parse_spec

DATA = Path(__file__).parent / "data" / "stacks"
SHARED = Path("/work/shared/samples")


def frames(parsed: list[ParsedLine]) -> list[StackFrame]:
    return [p.frame for p in parsed if p.frame is not None]


def frame_lines(parsed: list[ParsedLine]) -> list[int]:
    return [p.lineno for p in parsed if p.frame is not None]


def stacks(parsed: list[ParsedLine]) -> list[list[int]]:
    """Line numbers of the frames of each stack."""
    out: dict[int, list[int]] = {}
    for p in parsed:
        if p.frame is not None:
            out.setdefault(p.frame.stack_index, []).append(p.lineno)
    assert list(out) == list(range(len(out))), "stack indexes are 0, 1, 2, ... in order"
    return list(out.values())


def load(path: Path) -> tuple[str, list[ParsedLine]]:
    text = path.read_text()
    parsed = parse_text(text)
    assert "".join(p.text for p in parsed) == text
    assert [p.lineno for p in parsed] == list(range(1, len(parsed) + 1))
    return text, parsed


def span_lines(*ranges: tuple[int, int]) -> list[int]:
    out: list[int] = []
    for a, b in ranges:
        out.extend(range(a, b + 1))
    return out


# ------------------------------------------------------------------------------------------------
# parse_line, one format at a time


@dataclass
class Case:
    line: str
    kind: str
    symbol: str | None
    offset: int | None = None
    offset_text: str | None = None
    size: int | None = None
    address: int | None = None
    module: str | None = None
    build_id: str | None = None
    reliable: bool = True
    token: str | None = None


BID = "5f3c0a3e1b9d2c7f8e6a4b1d0c9e8f7a6b5c4d3e"

CASES = [
    # bpftrace kstack: decimal
    Case("        kfree_skb+1", "bpftrace", "kfree_skb", 1, "1"),
    Case("        __ip_local_out+219\n", "bpftrace", "__ip_local_out", 219, "219"),
    Case("        ____fput+14", "bpftrace", "____fput", 14, "14"),
    # bpftrace kstack(perf): tab, address, decimal
    Case(
        "\tffffffff81845796 __ip_local_out+214",
        "bpftrace",
        "__ip_local_out",
        214,
        "214",
        address=0xFFFFFFFF81845796,
    ),
    # bpftrace raw stack
    Case(
        "        0xffffffff9091b941", "bpftrace", None, address=0xFFFFFFFF9091B941, token="0xffffffff9091b941"
    ),
    # bcc
    Case("  b'__ip_local_out+0x1a'", "bcc", "__ip_local_out", 0x1A, "0x1a"),
    Case("  b'tcp_sendmsg'", "bcc", "tcp_sendmsg"),
    Case("\t__ip_local_out+0x1a [nf_tables]", "bcc", "__ip_local_out", 0x1A, "0x1a", module="nf_tables"),
    Case("        kfree_skb+0x0 [kernel]", "bcc", "kfree_skb", 0, "0x0"),
    Case(
        "ffffffff81845796 __ip_local_out+0x1a",
        "bcc",
        "__ip_local_out",
        0x1A,
        "0x1a",
        address=0xFFFFFFFF81845796,
    ),
    Case(
        "0xffffffff81845796 __ip_local_out+0x1a",
        "bcc",
        "__ip_local_out",
        0x1A,
        "0x1a",
        address=0xFFFFFFFF81845796,
    ),
    Case("    0xffffffff8184577c tcp_sendmsg", "bcc", "tcp_sendmsg", address=0xFFFFFFFF8184577C),
    # perf script
    Case(
        "\tffffffff81845796 __ip_local_out+0xd6 ([kernel.kallsyms])",
        "perf",
        "__ip_local_out",
        0xD6,
        "0xd6",
        address=0xFFFFFFFF81845796,
    ),
    Case(
        "\tffffffffc0a1b2c3 nft_do_chain+0x3e8 ([nf_tables])",
        "perf",
        "nft_do_chain",
        0x3E8,
        "0x3e8",
        address=0xFFFFFFFFC0A1B2C3,
        module="nf_tables",
    ),
    Case(
        "\tffffffff82094309 tcp_v4_rcv+0x99 (/lib/modules/6.18.44/build/vmlinux)",
        "perf",
        "tcp_v4_rcv",
        0x99,
        "0x99",
        address=0xFFFFFFFF82094309,
    ),
    Case(
        "\tffffffffc0a1b2c3 nft_do_chain+0x3e8 (/lib/modules/6.1.0/kernel/net/netfilter/nf_tables.ko.xz)",
        "perf",
        "nft_do_chain",
        0x3E8,
        "0x3e8",
        address=0xFFFFFFFFC0A1B2C3,
        module="nf_tables",
    ),
    Case(
        "\tffffffff82094309 tcp_v4_rcv ([kernel.kallsyms])", "perf", "tcp_v4_rcv", address=0xFFFFFFFF82094309
    ),
    Case(
        "\tffffffff82094309 [unknown] ([kernel.kallsyms])",
        "perf",
        None,
        address=0xFFFFFFFF82094309,
        token="ffffffff82094309",
    ),
    # oops / WARN / lockdep
    Case(
        " nft_do_chain+0x3e8/0x5f0 [nf_tables]",
        "oops",
        "nft_do_chain",
        0x3E8,
        "0x3e8",
        size=0x5F0,
        module="nf_tables",
    ),
    Case(
        f"[  412.345955]  ? nft_do_chain+0x3e8/0x5f0 [nf_tables {BID}]",
        "oops",
        "nft_do_chain",
        0x3E8,
        "0x3e8",
        size=0x5F0,
        module="nf_tables",
        build_id=BID,
        reliable=False,
    ),
    Case(
        "[  412.345750] RIP: 0010:nft_do_chain+0x3e8/0x5f0 [nf_tables]",
        "oops",
        "nft_do_chain",
        0x3E8,
        "0x3e8",
        size=0x5F0,
        module="nf_tables",
    ),
    Case(
        "Nov 25 19:02:11 host kernel:  ip_local_out+0x1d/0x70",
        "oops",
        "ip_local_out",
        0x1D,
        "0x1d",
        size=0x70,
    ),
    Case(
        "[Wed Nov 25 19:02:11 2026]  __ip_local_out.cold+0x5/0x1c",
        "oops",
        "__ip_local_out.cold",
        5,
        "0x5",
        size=0x1C,
    ),
    Case(
        "2026-11-25T19:02:12.123+01:00 host kernel:  ? __warn+0x7d/0xc0",
        "oops",
        "__warn",
        0x7D,
        "0x7d",
        size=0xC0,
        reliable=False,
    ),
    Case(
        "[   88.1][  T812]        __mutex_lock+0x8b/0x880", "oops", "__mutex_lock", 0x8B, "0x8b", size=0x880
    ),
    Case(
        "[   12.5] hardirqs last  enabled at (4181): [<ffffffff81e5a7b4>] _raw_spin_unlock_irqrestore+0x34/0x60",
        "oops",
        "_raw_spin_unlock_irqrestore",
        0x34,
        "0x34",
        size=0x60,
        address=0xFFFFFFFF81E5A7B4,
    ),
    Case(
        "[ 1.2] WARNING: CPU: 0 PID: 1 at net/ipv4/ip_output.c:115 __ip_local_out+0xdb/0x150",
        "oops",
        "__ip_local_out",
        0xDB,
        "0xdb",
        size=0x150,
    ),
    Case(
        " [<ffffffff8157d18e>] ? nf_hook_slow+0x8e/0x130",
        "oops",
        "nf_hook_slow",
        0x8E,
        "0x8e",
        size=0x130,
        address=0xFFFFFFFF8157D18E,
        reliable=False,
    ),
    Case(
        "[ 1.2] RIP: 0010:[<ffffffffa03b1234>]  [<ffffffffa03b1234>] nft_do_chain+0x1a4/0x5f0 [nf_tables]",
        "oops",
        "nft_do_chain",
        0x1A4,
        "0x1a4",
        size=0x5F0,
        address=0xFFFFFFFFA03B1234,
        module="nf_tables",
    ),
    Case(
        "[ 1.2] pc : nft_do_chain+0x3e8/0x5f0 [nf_tables]",
        "oops",
        "nft_do_chain",
        0x3E8,
        "0x3e8",
        size=0x5F0,
        module="nf_tables",
    ),
    Case(
        "[ 1.2] NIP [c000000000a1b2c4] __ip_local_out+0x94/0x170",
        "oops",
        "__ip_local_out",
        0x94,
        "0x94",
        size=0x170,
        address=0xC000000000A1B2C4,
    ),
    Case(
        "[c00000000ab3b9f0] [c000000000a1b3e0] ip_local_out+0x30/0x90 (unreliable)",
        "oops",
        "ip_local_out",
        0x30,
        "0x30",
        size=0x90,
        address=0xC000000000A1B3E0,
        reliable=False,
    ),
    Case(
        "[<c0013b6c>] (unwind_backtrace+0x0/0xf8) from [<c0011c58>] (show_stack+0x10/0x14)",
        "oops",
        "unwind_backtrace",
        0,
        "0x0",
        size=0xF8,
        address=0xC0013B6C,
    ),
    Case("[  412.346030]  ? 0xffffffffc0a1b2c3", "oops", None, address=0xFFFFFFFFC0A1B2C3, reliable=False),
    Case("<4>[  412.345945]  nf_hook_slow+0x43/0xc0", "oops", "nf_hook_slow", 0x43, "0x43", size=0xC0),
    Case(
        "kern  :warn  : [  412.3]  ip_local_deliver+0xec/0x110",
        "oops",
        "ip_local_deliver",
        0xEC,
        "0xec",
        size=0x110,
    ),
    # decode_stacktrace.sh / syzbot output, e-mail quoting
    Case(
        " dump_stack_lvl+0xd9/0x1b0 lib/dump_stack.c:106", "oops", "dump_stack_lvl", 0xD9, "0xd9", size=0x1B0
    ),
    Case(
        " nft_do_chain+0x3e8/0x5f0 [nf_tables] net/netfilter/nf_tables_core.c:123:5",
        "oops",
        "nft_do_chain",
        0x3E8,
        "0x3e8",
        size=0x5F0,
        module="nf_tables",
    ),
    Case(
        "> [  1.0]  ? nf_hook_slow+0x43/0xc0", "oops", "nf_hook_slow", 0x43, "0x43", size=0xC0, reliable=False
    ),
    Case(">>         kfree_skb+1", "bpftrace", "kfree_skb", 1, "1"),
    # /proc/PID/stack
    Case("[<0>] proc_pid_stack+0xb1/0x150", "proc_stack", "proc_pid_stack", 0xB1, "0xb1", size=0x150),
    Case(
        "[<ffffffff8106d3a5>] futex_wait_queue_me+0xc5/0x130",
        "proc_stack",
        "futex_wait_queue_me",
        0xC5,
        "0xc5",
        size=0x130,
        address=0xFFFFFFFF8106D3A5,
    ),
    # ftrace
    Case(" => __ip_local_out+0xdb/0x150", "ftrace", "__ip_local_out", 0xDB, "0xdb", size=0x150),
    Case(" => tcp_v4_rcv", "ftrace", "tcp_v4_rcv"),
    Case(" => do_softirq.part.0", "ftrace", "do_softirq.part.0"),
    Case("=> __ip_local_out (ffffffff81845796)", "ftrace", "__ip_local_out", address=0xFFFFFFFF81845796),
    Case(
        " => tcp_v4_rcv+0x99/0x1400 <ffffffff82094309>",
        "ftrace",
        "tcp_v4_rcv",
        0x99,
        "0x99",
        size=0x1400,
        address=0xFFFFFFFF82094309,
    ),
    Case(" => 0xffffffffc0a12345", "ftrace", None, address=0xFFFFFFFFC0A12345),
    # dropwatch: hex offsets without 0x
    Case(
        "1 drops at tcp_v4_rcv+a1 (0xffffffff9bdb8181) [software]",
        "dropwatch",
        "tcp_v4_rcv",
        0xA1,
        "a1",
        address=0xFFFFFFFF9BDB8181,
    ),
    Case(
        "4 drops at sk_stream_kill_queues+50 (0xffffffff81745ae0)",
        "dropwatch",
        "sk_stream_kill_queues",
        0x50,
        "50",
        address=0xFFFFFFFF81745AE0,
    ),
    Case("1 drops at location 0xffffffffc0a1b2c3 [software]", "dropwatch", None, address=0xFFFFFFFFC0A1B2C3),
    Case(
        "kfree_skb_list+0x1d (0xffffffff8187d8ed)",
        "dropwatch",
        "kfree_skb_list",
        0x1D,
        "0x1d",
        address=0xFFFFFFFF8187D8ED,
    ),
    # plain: bash arithmetic like faddr2line
    Case("__ip_local_out+219", "plain", "__ip_local_out", 219, "219"),
    Case("__ip_local_out+0xdb", "plain", "__ip_local_out", 0xDB, "0xdb"),
    Case("__ip_local_out+010", "plain", "__ip_local_out", 8, "010"),
    Case("__ip_local_out+219/0x150:", "plain", "__ip_local_out", 219, "219", size=0x150),
    Case(
        "- nft_do_chain+0x3e8/0x5f0 [nf_tables]",
        "plain",
        "nft_do_chain",
        0x3E8,
        "0x3e8",
        size=0x5F0,
        module="nf_tables",
    ),
    Case("#3 tcp_connect+1009", "plain", "tcp_connect", 1009, "1009"),
    Case("dropped at __ip_local_out+219", "plain", "__ip_local_out", 219, "219"),
    Case(
        "BUG: KASAN: slab-use-after-free in nft_do_chain+0x3e8/0x5f0 [nf_tables]",
        "plain",
        "nft_do_chain",
        0x3E8,
        "0x3e8",
        size=0x5F0,
        module="nf_tables",
    ),
    # symbol shapes
    Case("        __pfx_tcp_sendmsg+0", "bpftrace", "__pfx_tcp_sendmsg", 0, "0"),
    Case("        __cfi_tcp_sendmsg+4", "bpftrace", "__cfi_tcp_sendmsg", 4, "4"),
    Case(
        "        ip_finish_output2.constprop.0.isra.0+12",
        "bpftrace",
        "ip_finish_output2.constprop.0.isra.0",
        12,
        "12",
    ),
    Case("        nf_hook_slow.llvm.1234567890+3", "bpftrace", "nf_hook_slow.llvm.1234567890", 3, "3"),
    Case(" skb_release_data.part.0+0x1a/0x30", "oops", "skb_release_data.part.0", 0x1A, "0x1a", size=0x30),
    # raw addresses alone on a line
    Case("0xffffffff81845796", "raw", None, address=0xFFFFFFFF81845796),
    Case("ffffffff81845796", "raw", None, address=0xFFFFFFFF81845796, token="ffffffff81845796"),
    Case("c0123456", "raw", None, address=0xC0123456, token="c0123456"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.line.strip()[:60] for c in CASES])
def test_parse_line_formats(case: Case) -> None:
    f = parse_line(case.line, 7)
    assert f is not None, case.line
    assert f.kind == case.kind
    assert f.kind is FrameKind(case.kind)
    assert f.lineno == 7
    assert f.text == case.line
    assert f.symbol == case.symbol
    assert f.offset == case.offset
    assert f.offset_text == case.offset_text
    assert f.size == case.size
    if case.size is not None:
        assert f.size_text is not None and parse_offset(f.size_text) == case.size
    assert f.address == case.address
    assert f.module == case.module
    assert f.module_build_id == case.build_id
    assert f.reliable is case.reliable
    token = case.token
    if token is None:
        if case.symbol is None:
            assert case.address is not None
            token = f"{case.address:#x}"
        else:
            token = case.symbol if case.offset_text is None else f"{case.symbol}+{case.offset_text}"
            if case.size is not None:
                token += f"/{f.size_text}"
    assert f.token == token
    assert case.line[f.span[0] : f.span[1]] == token
    # the extent covers the token and stays inside the line content
    assert f.extent[0] <= f.span[0] <= f.span[1] <= f.extent[1] <= len(case.line.rstrip("\r\n"))
    rest = f.text[f.extent[1] :].strip()
    assert rest in ("", ":", "[software]", "(unreliable)") or rest.startswith("from ") or ".c:" in rest, rest


NOT_FRAMES = [
    "",
    "\n",
    "   \t  ",
    "Attaching 1 probe...",
    "kstack:",
    "Call Trace:",
    " <IRQ>",
    "We computed len = skb->len+1 and then buf_len+1 bytes were copied.",
    "See https://git.kernel.org/linux.git/tree/net/ipv4/ip_output.c?h=v6.1+foo_bar+0x10 for details",
    "https://example.com/foo_bar+0x10",
    "C++ and x+1 and a+b are not frames, neither is total: 10+20.",
    "x+1",
    "a+b",
    "location=tcp_v4_rcv+0x99/0x1400 reason: NO_SOCKET",
    "$ faddr2line vmlinux __ip_local_out+219",
    "# faddr2line vmlinux __ip_local_out+0xdb/0x150",
    "root@host:~# faddr2line vmlinux __ip_local_out+219",
    "compare ip_local_out+29 with __ip_local_out+219 in two kernels",
    "set the counter to buf_len+1 now",
    "deadbeef",
    "20231125",
    "12345678",
    "0x0",
    "0x00000000",
    "ffff88003fc03ab8 ffffffff81580f47",
    "[ 1234.568005]  ffff88003fc03ab8 ffffffff81580f47",
    "__ip_local_out+09",
    "__ip_local_out+",
    "+0x10",
    "[<ffffffffffffffff>] 0xffffffffffffffff",
    "[  412.346090] RIP: 0033:0x7f3a1c31a7c0",
    "[ 1234.568060]  RSP <ffff88003fc03a48>",
    "[  412.345744] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2 04/01/2014",
    "[  412.345735] CPU: 1 PID: 0 Comm: swapper/1 Tainted: G OE 6.1.0-13-amd64+ #1",
    "\t          10a7c0 __libc_connect+0x10 (/usr/lib/x86_64-linux-gnu/libc.so.6)",
    "\t               0 [unknown] ([unknown])",
    "\t    7f3a1c31a7c0 [unknown] ([unknown])",
    "    b'sshd' [1234]",
    "3 drops at br_netif_receive_skb [hardware]",
    "[   88.123472] ffff888104b2a0e8 (&nft_net->commit_mutex){+.+.}-{3:3}, at: x+1",
    "i = j+1;",
    "        counter+1;",
    "        a + 1",
    "kfree_skb +1",
    "kfree_skb+ 1",
    "1.5+2.5",
    "v6.1+foo",
    "20231125 kfree_skb+1",
    "12345678 tcp_sendmsg+0x1a",
    "\t00007f3a1c31a7c0 __libc_connect+16",
    "ffffffff",
]


@pytest.mark.parametrize("line", NOT_FRAMES)
def test_not_frames(line: str) -> None:
    assert parse_line(line) is None


def test_parse_line_rejects_several_lines() -> None:
    with pytest.raises(ValueError):
        parse_line("kfree_skb+1\nkfree_skb+2")
    assert parse_line("kfree_skb+1\r\n") is not None


def test_offsets_follow_each_format() -> None:
    assert parse_offset("0x1a") == 26
    assert parse_offset("0X1A") == 26
    assert parse_offset("219") == 219
    assert parse_offset("010") == 8  # bash: leading zero is octal
    assert parse_offset("010", "dec") == 10
    assert parse_offset("09") is None
    assert parse_offset("1d", "hex") == 29
    assert parse_offset("1d") is None
    assert parse_offset("0x") is None
    assert parse_offset("1_0") is None
    assert parse_offset("0x_1") is None
    assert parse_offset("\u0663") is None  # a non-ASCII digit


def test_log_prefixes() -> None:
    for prefix in (
        "[  123.456789] ",
        "[   88.123456][  T812] ",
        "[Wed Nov 25 19:02:11 2026] ",
        "[Wed Nov  5 09:02:11 2026] ",
        "Nov 25 19:02:11 host kernel: ",
        "2026-11-25T19:02:11.123456+00:00 host kernel: ",
        "Nov 25 19:02:11.123456 host kernel: ",
        "Wed 2026-11-25 19:02:11 UTC host kernel: ",
        "[  123.456789] host kernel: ",
        "<4>[  123.456789] ",
        "kern  :warn  : [  123.456789] ",
    ):
        line = prefix + " nft_do_chain+0x3e8/0x5f0 [nf_tables]"
        assert strip_log_prefix(line) == len(prefix), prefix
        f = parse_line(line)
        assert f is not None and f.kind == "oops" and f.symbol == "nft_do_chain" and f.module == "nf_tables"
        assert f.span[0] == len(prefix) + 1


def test_line_context() -> None:
    assert line_context("\n") == "blank"
    assert line_context("[  1.0] \n") == "blank"
    assert line_context("kstack:") == "kstack"
    assert line_context("kstack: \n") == "kstack"
    assert line_context("SKB dropped: 1.2.3.4->5.6.7.8, kstack:") == "kstack"
    assert line_context("[  1.0] Call Trace:") == "call_trace"
    assert line_context("Call trace:") == "call_trace"
    for marker in ("<IRQ>", "</IRQ>", "<TASK>", "</TASK>", "<NMI>", "<EOI> ", "<SOFTIRQ>"):
        assert line_context(f"[  1.0]  {marker}") == "marker", marker
    assert line_context("sshd(219966): tracepoint:net:net_dev_queue") == "header"
    assert line_context("python3  6111 [000]   583.443298: skb:kfree_skb: skbaddr=0x0") == "header"
    assert line_context("   python3-5943    [001] ..s1.   578.679610: <stack trace>") == "header"
    assert line_context("@[") == "header"
    assert line_context("[  1.0] Kernel Offset: 0x1e800000 from 0xffffffff81000000") == "kaslr"
    assert line_context("[  1.0] ---[ end trace 0000000000000000 ]---") == "end_trace"
    assert line_context("Attaching 1 probe...") is None


def test_find_kaslr_offset() -> None:
    assert find_kaslr_offset("nothing here") is None
    assert find_kaslr_offset("[ 1.0] Kernel Offset: disabled\n") == 0
    text = (
        "[  412.346125] Kernel panic - not syncing: Fatal exception in interrupt\n"
        "[  412.346130] Kernel Offset: 0x1e800000 from 0xffffffff81000000 "
        "(relocation range: 0xffffffff80000000-0xffffffffbfffffff)\n"
    )
    assert find_kaslr_offset(text) == 0x1E800000
    assert find_kaslr_offset("Kernel Offset: 0x4a1b2c000000 from 0xffff800008000000") == 0x4A1B2C000000
    assert find_kaslr_offset((DATA / "oops-nf_tables-panic-dmesg.txt").read_text()) == 0x1E800000
    assert find_kaslr_offset((DATA / "oops-old-3.10-proc-stack-old.txt").read_text()) == 0


# ------------------------------------------------------------------------------------------------
# Line handling


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n",
        "\n\n",
        "kfree_skb+1",
        "        kfree_skb+1",
        "kstack:\r\n        kfree_skb+1\r\n        __ip_local_out+219\r\n",
        "a\rb\n        kfree_skb+1\r",
        "\u2028        kfree_skb+1\x85\n\x0c\n",
        "no newline at end\n        kfree_skb+1",
        "two returns\r\r\n\r\n",
    ],
)
def test_round_trip(text: str) -> None:
    parsed = parse_text(text)
    assert "".join(p.text for p in parsed) == text
    assert list(iter_lines(text)) == [p.text for p in parsed]
    for p in parsed:
        assert p.content + p.ending == p.text
        assert p.ending in ("", "\n", "\r\n")
        if p.frame is not None:
            assert p.frame.text == p.text


def test_crlf_and_last_line_without_newline() -> None:
    parsed = parse_text("kstack:\r\n        kfree_skb+1\r\n        __ip_local_out+219")
    assert [p.ending for p in parsed] == ["\r\n", "\r\n", ""]
    fs = frames(parsed)
    assert [f.symbol for f in fs] == ["kfree_skb", "__ip_local_out"]
    assert fs[1].offset == 219 and fs[1].text == "        __ip_local_out+219"


def test_annotation_goes_after_extent() -> None:
    text = "[  1.0]  ? nft_do_chain+0x3e8/0x5f0 [nf_tables]\n[  1.0]  nf_hook_slow+0x43/0xc0\n"
    out = []
    for p in parse_text(text):
        f = p.frame
        assert f is not None
        end = f.extent[1]
        out.append(p.text[:end] + " (net/x.c:1)" + p.text[end:])
    assert out == [
        "[  1.0]  ? nft_do_chain+0x3e8/0x5f0 [nf_tables] (net/x.c:1)\n",
        "[  1.0]  nf_hook_slow+0x43/0xc0 (net/x.c:1)\n",
    ]


def test_spec_property() -> None:
    expected = {
        "__ip_local_out+219/0x150:": "__ip_local_out+219/0x150",
        "__ip_local_out+010": "__ip_local_out+010",  # bash octal, as faddr2line reads it
        "        __ip_local_out+010": "__ip_local_out+0xa",  # bpftrace decimal
        "1 drops at tcp_v4_rcv+a1 (0xffffffff9bdb8181)": "tcp_v4_rcv+0xa1",  # dropwatch hex
        " => tcp_v4_rcv": "tcp_v4_rcv",
        "\tffffffff82094309 tcp_v4_rcv ([kernel.kallsyms])": "0xffffffff82094309",
        "        0xffffffff9091b941": "0xffffffff9091b941",
        "ffffffff9091b941": "0xffffffff9091b941",
    }
    for line, spec in expected.items():
        f = parse_line(line)
        assert f is not None and f.spec == spec, line
        if "+" in spec or spec.startswith("0x"):
            parsed = parse_spec(spec)
            if isinstance(parsed, FuncSpec):
                assert (parsed.name, parsed.offset) == (f.symbol, f.offset)
            else:
                assert parsed.address == f.address


def test_frozen() -> None:
    f = parse_line("        kfree_skb+1")
    assert f is not None
    with pytest.raises(AttributeError):
        f.symbol = "x"  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------
# The shared real samples: every frame line recognised, stacks split right, text kept


def shared(name: str) -> Path:
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


def test_shared_bpftrace_kstack_curl() -> None:
    _, parsed = load(shared("bpftrace-kstack-curl.txt"))
    assert stacks(parsed) == [span_lines((3, 18)), span_lines((21, 32)), span_lines((35, 40))]
    fs = frames(parsed)
    assert all(f.kind == "bpftrace" and f.address is None and f.module is None for f in fs)
    assert (fs[0].symbol, fs[0].offset) == ("kfree_skb", 1)
    assert [(f.symbol, f.offset) for f in fs if f.symbol == "exit_to_user_mode_loop"] == [
        ("exit_to_user_mode_loop", 411)
    ] * 2
    assert [p.context for p in parsed if p.lineno in (2, 19, 20, 33, 34)] == [
        "kstack",
        "blank",
        "kstack",
        "blank",
        "kstack",
    ]


def test_shared_bpftrace_raw_addresses() -> None:
    _, parsed = load(shared("bpftrace-kstack-raw-addresses.txt"))
    assert stacks(parsed) == [span_lines((2, 15)), span_lines((18, 22))]
    fs = frames(parsed)
    assert all(f.symbol is None and f.address is not None for f in fs)
    assert fs[0].address == 0xFFFFFFFF9091B941 and fs[-1].address == 0xFFFFFFFF90C0008C


def test_shared_bpftrace_tracepoint_header() -> None:
    _, parsed = load(shared("bpftrace-tracepoint-net.txt"))
    assert parsed[0].context == "header"
    assert stacks(parsed) == [span_lines((2, 25))]
    assert frames(parsed)[0].symbol == "__dev_queue_xmit" and frames(parsed)[0].offset == 1524


def test_shared_netfilter_drop() -> None:
    _, parsed = load(shared("bpftrace-tracepoint-netfilter-drop-6.18.txt"))
    assert stacks(parsed) == [span_lines((5, 20))]
    fs = frames(parsed)
    assert [(f.symbol, f.offset) for f in fs[:5]] == [
        ("sk_skb_reason_drop", 144),
        ("nft_do_chain", 1000),
        ("nft_do_chain_inet", 67),
        ("nf_hook_slow", 67),
        ("__ip_local_out", 284),
    ]


def test_shared_dropwatch_bt() -> None:
    _, parsed = load(shared("dropwatch-bt-iptables-output-drop.txt"))
    assert parsed[1].context == "kstack"
    assert stacks(parsed) == [span_lines((3, 17))]
    assert frames(parsed)[1].spec == "__ip_local_out+219"


def test_shared_faddr2line_transcript() -> None:
    _, parsed = load(shared("faddr2line-expected-ubuntu-5.13.txt"))
    # the command line is not a frame, the faddr2line header is, the source lines are not
    assert frame_lines(parsed) == [2]
    f = frames(parsed)[0]
    assert (f.symbol, f.offset, f.offset_text, f.size) == ("__ip_local_out", 219, "219", 0x150)


def test_all_shared_samples_parse_completely() -> None:
    if not SHARED.is_dir():
        pytest.skip("no shared samples")
    frame_shape = re.compile(r"^(\s+\S+\+\d+|\s+0x[0-9a-f]+)\s*$")
    for path in sorted(SHARED.iterdir()):
        _, parsed = load(path)
        for p in parsed:
            if frame_shape.match(p.content):
                assert p.frame is not None, (path.name, p.lineno, p.text)


# ------------------------------------------------------------------------------------------------
# Our own samples (tests/data/stacks): real perf/ftrace/proc captures and realistic pastes


def test_sample_oops_panic() -> None:
    _, parsed = load(DATA / "oops-nf_tables-panic-dmesg.txt")
    # RIP, <IRQ> part, <TASK> part (the user RIP line ends it), RIP again after the end marker
    assert stacks(parsed) == [[8], span_lines((21, 35)), span_lines((38, 51)), [58]]
    by_line = {p.lineno: p.frame for p in parsed if p.frame is not None}
    f25 = by_line[25]
    assert f25 is not None
    assert not f25.reliable and f25.module == "nf_tables"
    assert f25.module_build_id == "5f3c0a3e1b9d2c7f8e6a4b1d0c9e8f7a6b5c4d3e"
    f40 = by_line[40]
    assert f40 is not None and f40.symbol is None and f40.address == 0xFFFFFFFFC0A1B2C3 and not f40.reliable
    f41 = by_line[41]
    assert f41 is not None and f41.symbol == "ip_finish_output2.constprop.0.isra.0"
    assert {p.context for p in parsed if p.lineno in (20, 36, 37, 54)} == {"marker"}
    assert parsed[18].context == "call_trace"
    assert parsed[59].context == "kaslr"
    unreliable = [p.lineno for p in parsed if p.frame is not None and not p.frame.reliable]
    assert unreliable == [21, 22, 23, 24, 25, 29, 40]


def test_sample_warn_syslog() -> None:
    _, parsed = load(DATA / "warn-syslog-ip_local_out.txt")
    assert stacks(parsed) == [[2], [5], span_lines((10, 17)), [22, 23]]
    assert all(f.kind == "oops" for f in frames(parsed))
    assert [p.lineno for p in parsed if p.frame is not None and not p.frame.reliable] == [10, 11, 12, 13]


def test_sample_dmesg_T_and_journal() -> None:
    _, parsed = load(DATA / "dmesg-T-and-journal-monotonic.txt")
    assert stacks(parsed) == [[3, 4], [7], span_lines((9, 13))]
    assert [f.symbol for f in frames(parsed)][3:] == [
        "__die",
        "__pfx_nft_do_chain",
        "nf_hook_slow",
        "nf_hook_slow.llvm.1234567890",
        "ip_local_deliver",
    ]


def test_sample_lockdep() -> None:
    _, parsed = load(DATA / "lockdep-circular-printk-caller.txt")
    assert stacks(parsed) == [
        [6],
        [9],
        span_lines((16, 19)),
        span_lines((22, 24)),
        [27, 28],
        span_lines((34, 36)),
    ]
    fs = {p.lineno: p.frame for p in parsed if p.frame is not None}
    assert fs[6].symbol == "nf_tables_valid_genid" and fs[6].module == "nf_tables"
    assert fs[27].address == 0xFFFFFFFF81E5A7B4


def test_sample_old_oops_and_proc_stack() -> None:
    _, parsed = load(DATA / "oops-old-3.10-proc-stack-old.txt")
    assert stacks(parsed) == [[2], [5], span_lines((11, 14)), [16], [18], span_lines((25, 29))]
    fs = {p.lineno: p.frame for p in parsed if p.frame is not None}
    assert all(fs[n].address == 0xFFFFFFFFA03B1234 for n in (2, 5, 18))
    assert fs[13].reliable is False and fs[13].address == 0xFFFFFFFF8157D18E
    assert fs[11].module == "nf_tables_ipv4"
    assert fs[25].kind == "proc_stack" and fs[25].address == 0xFFFFFFFF8106D3A5
    assert parsed[29].frame is None  # the old [<ffffffffffffffff>] terminator
    assert find_kaslr_offset("".join(p.text for p in parsed)) == 0


def test_sample_rhel7_inline_irq_markers() -> None:
    _, parsed = load(DATA / "oops-rhel7-inline-irq-markers.txt")
    # " <EOI>  [<...>] ? process_one_work+0x176/0x4b0": a frame that also starts the next stack
    assert stacks(parsed) == [[3], [7, 8, 9], [10, 11, 12, 13], [15, 16], [17]]
    fs = {p.lineno: p.frame for p in parsed if p.frame is not None}
    assert fs[10].symbol == "process_one_work" and fs[10].reliable is False
    assert fs[10].address == 0xFFFFFFFF8109E3B6 and fs[10].kind == "oops"
    assert fs[15].symbol == "dump_stack" and fs[7].module == "nf_conntrack"


def test_sample_other_architectures() -> None:
    _, parsed = load(DATA / "arm64-riscv-ppc-arm-oops.txt")
    assert stacks(parsed) == [[2, 3], [6, 7, 8], [10, 11], [13, 14], [16], [18, 19], [21]]
    fs = {p.lineno: p.frame for p in parsed if p.frame is not None}
    assert fs[16].reliable is False and fs[16].address == 0xC000000000A1B3E0
    assert fs[21].symbol == "unwind_backtrace" and fs[21].address == 0xC0013B6C


def test_sample_bcc() -> None:
    _, parsed = load(DATA / "bcc-tcpdrop.txt")
    assert stacks(parsed) == [span_lines((3, 12)), [15, 16]]
    assert all(f.kind == "bcc" for f in frames(parsed))
    _, parsed = load(DATA / "bcc-stackcount-py3-bytes.txt")
    assert stacks(parsed) == [span_lines((3, 10)), [14, 15, 16]]
    assert frames(parsed)[-1].module == "nf_tables"
    _, parsed = load(DATA / "bcc-trace-K-addresses.txt")
    assert stacks(parsed) == [[3, 4, 5, 6], [9, 10, 11, 12]]
    assert [f.module for f in frames(parsed)] == [
        None,
        None,
        "nf_tables",
        None,
        None,
        None,
        "nf_tables",
        None,
    ]


def test_sample_dropwatch_one_stack_per_event() -> None:
    _, parsed = load(DATA / "dropwatch.txt")
    assert stacks(parsed) == [[6], [7], [8], [9], [10], [15]]
    assert [f.offset for f in frames(parsed)] == [0xA1, 0x14F, None, 0x9C, 0x50, 0x1D]


def test_sample_bpftrace_kstack_perf() -> None:
    _, parsed = load(DATA / "bpftrace-kstack-perf-map.txt")
    assert stacks(parsed) == [span_lines((5, 14)), [17, 18]]
    f = frames(parsed)[1]
    assert (f.symbol, f.offset, f.address) == ("tcp_v4_rcv", 153, 0xFFFFFFFF82094309)


def test_sample_plain_and_prose() -> None:
    _, parsed = load(DATA / "plain-lists-and-prose.txt")
    assert frame_lines(parsed) == span_lines((3, 13))
    assert stacks(parsed) == [span_lines((3, 13))]


def test_real_perf_script_captures() -> None:
    _, parsed = load(DATA / "perf-script-kfree_skb-6.18.txt")
    assert stacks(parsed) == [span_lines((2, 25)), span_lines((30, 53))]
    assert parsed[0].context == "header" and parsed[28].context == "header"
    fs = frames(parsed)
    assert (fs[1].symbol, fs[1].offset, fs[1].address) == ("tcp_v4_rcv", 0x99, 0xFFFFFFFF82094309)
    assert all(f.kind == "perf" and f.module is None for f in fs)
    _, parsed = load(DATA / "perf-script-no-symoff-6.18.txt")
    assert frames(parsed)[0].symbol == "sk_skb_reason_drop" and frames(parsed)[0].offset is None
    assert stacks(parsed)[0] == span_lines((2, 25))
    _, parsed = load(DATA / "perf-script-unknown-symbols-6.18.txt")
    assert all(f.symbol is None and f.address is not None for f in frames(parsed))
    assert stacks(parsed)[0] == span_lines((2, 25))


def test_real_ftrace_captures() -> None:
    for name, with_addr in (
        ("ftrace-stacktrace-sym-offset-6.18.txt", False),
        ("ftrace-stacktrace-sym-addr-6.18.txt", True),
    ):
        _, parsed = load(DATA / name)
        assert stacks(parsed) == [span_lines((15, 39))]
        fs = frames(parsed)
        assert all(f.kind == "ftrace" and f.size is not None for f in fs)
        assert (fs[2].symbol, fs[2].offset, fs[2].size) == ("tcp_v4_rcv", 0x99, 0x1400)
        assert (fs[2].address == 0xFFFFFFFF82094309) is with_addr
        # the event line mentions location=tcp_v4_rcv+0x99/0x1400: prose, not a frame
        assert parsed[12].frame is None and parsed[13].context == "header"


def test_real_proc_stack() -> None:
    _, parsed = load(DATA / "proc-stack-cat-6.18.txt")
    fs = frames(parsed)
    assert len(fs) == len(parsed) == 8
    assert all(f.kind == "proc_stack" and f.address is None and f.size for f in fs)


def test_split_stacks() -> None:
    _, parsed = load(DATA / "oops-nf_tables-panic-dmesg.txt")
    groups = split_stacks(parsed)
    assert [len(g) for g in groups] == [1, 15, 14, 1]
    assert [g[0].symbol for g in groups] == ["nft_do_chain", "__die", "__local_bh_enable_ip", "nft_do_chain"]
    assert all(f.stack_index == i for i, g in enumerate(groups) for f in g)
    assert split_stacks(parse_text("no frames here\n")) == []


def test_every_sample_round_trips() -> None:
    for path in sorted(DATA.glob("*.txt")):
        load(path)


# ------------------------------------------------------------------------------------------------
# Fuzz: random text mixed with generated frames of every format

_HEXCHARS = set("0123456789abcdefABCDEF")
_REGS = ("RIP", "EIP", "IP", "NIP", "LR", "PC", "pc", "lr", "epc", "ra")

_SYM_FIRST = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
_SYM_REST = _SYM_FIRST + "0123456789"
symbols = st.builds(
    lambda prefix, first, rest, suffix: prefix + first + rest + suffix,
    st.sampled_from(["", "", "", "__", "__pfx_", "__cfi_", "____"]),
    st.sampled_from(_SYM_FIRST),
    st.text(alphabet=_SYM_REST, max_size=24),
    st.sampled_from(
        ["", "", "", ".cold", ".isra.0", ".constprop.0", ".part.0", ".llvm.1234567890", ".constprop.0.isra.0"]
    ),
).filter(lambda s: not (len(s) >= 8 and set(s) <= _HEXCHARS) and s not in _REGS)
offsets = st.integers(min_value=0, max_value=0xFFFF)
addresses = st.integers(min_value=0xFFFFFFFF80000000, max_value=0xFFFFFFFFFFFFFFF0)
modules = st.sampled_from([None, None, "nf_tables", "nf_conntrack", "e1000e", "bpf_testmod", "xfs"])
build_ids = st.one_of(st.none(), st.binary(min_size=20, max_size=20).map(bytes.hex))
log_prefixes = st.sampled_from(
    [
        "",
        "[  412.345678] ",
        "[   88.123456][  T812] ",
        "[Wed Nov 25 19:02:11 2026] ",
        "Nov 25 19:02:11 host kernel: ",
        "2026-11-25T19:02:11.123456+00:00 host kernel: ",
        "<4>",
        "> [  412.345678] ",
    ]
)


@dataclass
class Gen:
    line: str
    expect: dict[str, Any]


@st.composite
def generated_frames(draw: st.DrawFn) -> Gen:
    sym = draw(symbols)
    off = draw(offsets)
    size = off + draw(st.integers(min_value=1, max_value=0x1000))
    addr = draw(addresses)
    mod = draw(modules)
    bid = draw(build_ids) if mod else None
    fmt = draw(st.integers(min_value=0, max_value=19))
    if fmt in (15, 16) and len(sym) < 3:
        sym += "_fn"  # a plain line needs a symbol of 3+ characters ("x+1" is arithmetic)
    e: dict[str, Any] = {"symbol": sym, "offset": off, "address": None, "module": None, "reliable": True}
    modtxt = f" [{mod}]" if mod else ""
    if fmt == 0:  # bpftrace kstack
        line = f"        {sym}+{off}"
    elif fmt == 1:  # bpftrace kstack(perf)
        line = f"\t{addr:x} {sym}+{off}"
        e["address"] = addr
    elif fmt == 2:  # bpftrace raw
        line = f"        0x{addr:x}"
        e.update(symbol=None, offset=None, address=addr)
    elif fmt == 3:  # bcc old bytes
        line = f"  b'{sym}+{off:#x}{modtxt}'"
        e["module"] = mod
    elif fmt == 4:  # bcc tcpdrop / trace -K
        line = f"\t{sym}+{off:#x}{modtxt}"
        e["module"] = mod
    elif fmt == 5:  # bcc with address
        line = f"{draw(st.sampled_from(['', '0x']))}{addr:x} {sym}+{off:#x}"
        e["address"] = addr
    elif fmt == 6:  # perf script
        dso = f"[{mod}]" if mod else "[kernel.kallsyms]"
        line = f"\t{addr:16x} {sym}+{off:#x} ({dso})"
        e.update(address=addr, module=mod)
    elif fmt == 7:  # oops Call Trace frame
        unreliable = draw(st.booleans())
        mtxt = f" [{mod}{' ' + bid if bid else ''}]" if mod else ""
        line = f"{draw(log_prefixes)} {'? ' if unreliable else ''}{sym}+{off:#x}/{size:#x}{mtxt}"
        e.update(module=mod, reliable=not unreliable, size=size, module_build_id=bid)
    elif fmt == 8:  # RIP line
        line = f"{draw(log_prefixes)}RIP: 0010:{sym}+{off:#x}/{size:#x}{modtxt}"
        e.update(module=mod, size=size)
    elif fmt == 9:  # /proc/PID/stack
        hidden = draw(st.booleans())
        line = f"[<{'0' if hidden else format(addr, '016x')}>] {sym}+{off:#x}/{size:#x}"
        e.update(size=size, address=None if hidden else addr)
    elif fmt == 10:  # old oops with address and ?
        unreliable = draw(st.booleans())
        line = f"{draw(log_prefixes)} [<{addr:016x}>] {'? ' if unreliable else ''}{sym}+{off:#x}/{size:#x}"
        e.update(size=size, address=addr, reliable=not unreliable)
    elif fmt == 11:  # ftrace sym-offset
        line = f" => {sym}+{off:#x}/{size:#x}"
        e["size"] = size
    elif fmt == 12:  # ftrace bare symbol
        line = f" => {sym}"
        e["offset"] = None
    elif fmt == 13:  # ftrace sym-addr / trace-cmd
        line = draw(st.sampled_from([f" => {sym}+{off:#x}/{size:#x} <{addr:016x}>", f"=> {sym} ({addr:x})"]))
        e["address"] = addr
        if "(" in line:
            e["offset"] = None
        else:
            e["size"] = size
    elif fmt == 14:  # dropwatch
        line = f"{draw(st.integers(1, 99))} drops at {sym}+{off:x} (0x{addr:x}) [software]"
        e["address"] = addr
    elif fmt == 15:  # plain decimal (bash arithmetic: no leading zero)
        line = f"{sym}+{off}"
    elif fmt == 16:  # plain faddr2line header
        line = f"{sym}+{off:#x}/{size:#x}:"
        e["size"] = size
    elif fmt == 17:  # raw address
        line = draw(st.sampled_from([f"0x{addr:x}", f"{addr:016x}"]))
        e.update(symbol=None, offset=None, address=addr)
    elif fmt == 18:  # ppc
        line = f"[c00000000ab3b9f0] [{addr:016x}] {sym}+{off:#x}/{size:#x}"
        e.update(address=addr, size=size)
    else:  # oops raw address
        line = f"{draw(log_prefixes)}  ? 0x{addr:x}"
        e.update(symbol=None, offset=None, address=addr, reliable=False)
    return Gen(line, e)


# printable noise, the characters frames are made of, and some awkward ones (\r, \x85, U+2028, NUL)
_NOISE = list(" \t\r+-_/[]<>()?:.=,'\"0123456789abcdefxABCDEFkstackpercalTIRQ") + [
    "\x00",
    "\x0b",
    "\x0c",
    "\x85",
    "\u2028",
    "\u00e9",
    "\u4e2d",
    "\U0001f600",
]
random_text = st.one_of(
    st.text(alphabet=_NOISE, max_size=60),
    st.text(max_size=20),
)
pieces = st.lists(
    st.one_of(generated_frames(), random_text),
    max_size=10,
)


@settings(max_examples=10000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces, st.lists(st.sampled_from(["\n", "\r\n"]), min_size=12, max_size=12), st.booleans())
def test_fuzz_parse_text(parts: list[Gen | str], endings: list[str], final_newline: bool) -> None:
    chunks: list[str] = []
    expected: dict[int, Gen] = {}
    lineno = 1
    for i, part in enumerate(parts):
        if isinstance(part, Gen):
            expected[lineno] = part
            chunks.append(part.line + endings[i])
            lineno += 1
        else:
            chunks.append(part + "\n")
            lineno += part.count("\n") + 1
    text = "".join(chunks)
    if not final_newline and text.endswith("\n"):
        text = text[:-1]
    parsed = parse_text(text)
    assert "".join(p.text for p in parsed) == text
    assert all(p.content + p.ending == p.text and p.ending in ("", "\n", "\r\n") for p in parsed)
    previous = -1
    for p in parsed:
        if p.frame is not None:
            assert p.frame.stack_index >= previous
            previous = p.frame.stack_index
            assert p.frame.text == p.text
    for n, gen in expected.items():
        p = parsed[n - 1]
        f = p.frame
        assert f is not None, gen.line
        for key, value in gen.expect.items():
            assert getattr(f, key) == value, (gen.line, key)
        if gen.expect["symbol"] is not None:
            assert f.token.startswith(gen.expect["symbol"])
        if f.offset is not None and f.offset_text is not None:
            assert f.token == f"{f.symbol}+{f.offset_text}" + (f"/{f.size_text}" if f.size_text else "")
            spec = parse_spec(f.spec)  # the resolver's reading of the query agrees with the frame
            assert isinstance(spec, FuncSpec)
            assert (spec.name, spec.offset, spec.size) == (f.symbol, f.offset, f.size)
    # consecutive generated frames belong to one stack (dropwatch lines are one event each)
    for n in expected:
        if n + 1 in expected:
            a, b = parsed[n - 1].frame, parsed[n].frame
            assert a is not None and b is not None
            if b.kind != "dropwatch":
                assert a.stack_index == b.stack_index


_ONE_PREFIX = [re.compile(p) for p in _LOG_PREFIXES]


def _strip_one_at_a_time(line: str) -> int:
    """strip_log_prefix as a loop: up to six rounds, each the first prefix pattern matching there."""
    pos = 0
    for _ in range(6):
        m = next((m for rx in _ONE_PREFIX if (m := rx.match(line, pos)) is not None), None)
        if m is None or m.end() <= pos:
            break
        pos = m.end()
    return pos


_PREFIX_PIECES = ["<4>", "<12>", "[  100.000011]", "[  100.000011] ", "[ 3.1]", "[  T812]", "[    C1] ",
                  "kern  :warn  : ", "user:info: ", "[Wed Nov 25 19:02:11 2026] ", "Nov 25 19:02:11 host kernel: ",
                  "2026-11-25T19:02:11.123456+00:00 h kernel: ", "Wed 2026-11-25 19:02:11 UTC h kernel: ",
                  "my-host kernel: ", "kernel: ", " ", "  ", "\t", "[", "]", "<", "kernel:", "x", "12.5]"]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(_PREFIX_PIECES), max_size=9), st.sampled_from(["", " f+0x1/0x2", "\n", " x"]))
def test_log_prefix_run_is_one_prefix_at_a_time(pieces: list[str], rest: str) -> None:
    """The one-pattern prefix run strips what matching the prefixes one at a time strips."""
    line = "".join(pieces) + rest
    assert strip_log_prefix(line) == _strip_one_at_a_time(line), line


def test_repeated_messages_parse_like_single_lines() -> None:
    """parse_text reuses the parse of a message seen before (dumps repeat frames under new timestamps):
    every frame must equal what parse_line gives for its own line, spans included."""
    bodies = [" nft_do_chain+0x3e8/0x5d0 [nf_tables]", "  __ip_local_out+219", " ? tcp_v4_rcv+0x91/0xe00",
              " [<ffffffff81845796>] __ip_local_out+0xd6/0x160", "\tffffffff81845796 __ip_local_out+0xd6",
              "at net/core/dev.c:1 func_x+0x1a/0x30 [mod]", "func_y+12", "plain text"]
    prefixes = ["", "[  100.000011]", "[  12.5]", "<4>", "<4>[ 3.1] ", "kernel: ", "Nov 25 10:00:00 host kernel: ",
                "> [  1.0]"]
    lines = [p + b + end for b in bodies for p in prefixes for end in ("\n", "  \n")]
    text = "".join(lines)
    for parsed, line in zip(parse_text(text), lines):
        alone = parse_line(line, parsed.lineno)
        got = parsed.frame
        if alone is None:
            assert got is None, line
            continue
        assert got is not None, line
        assert (got.token, got.span, got.extent, got.symbol, got.offset, got.module, got.kind, got.text) == (
            alone.token, alone.span, alone.extent, alone.symbol, alone.offset, alone.module, alone.kind, alone.text)
    # lines of one shape differ only in where they are: line, text, spans, stack
    parsed = _parse(text)
    found = [p.frame for p in parsed.lines() if p.frame is not None]
    shapes = [shape for shape, _, stack in parsed.rows if stack >= 0]
    assert len(shapes) == len(found) and len(set(shapes)) < len(shapes)
    where = ("lineno", "text", "span", "extent", "stack_index")
    seen: dict[int, tuple[dict[str, object], str]] = {}
    for f, shape in zip(found, shapes):
        what = ({k: v for k, v in f.__dict__.items() if k not in where}, f.text[f.extent[0] : f.extent[1]])
        assert seen.setdefault(shape, what) == what, f.text
