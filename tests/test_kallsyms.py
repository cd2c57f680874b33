"""Tests for ksym.kallsyms: reading saved /proc/kallsyms and finding the KASLR slide."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from ksym.errors import BadFileError, FileNotFoundKsymError
from ksym.kallsyms import (
    KALLSYMS_PATH,
    KASLR_ALIGN_X86_64,
    Kallsyms,
    KallsymsError,
    KallsymsHiddenError,
    KallsymsSymbol,
    KaslrError,
    kaslr_offset_from_frames,
    kaslr_offset_from_kallsyms,
    load_kallsyms,
    parse_kallsyms,
)
from ksym.parse import StackFrame, parse_text

DATA = Path(__file__).parent / "data" / "stacks"
#: The real captures in tests/data/stacks/*-6.18.txt come from one boot of a 6.18 kernel without KASLR
#: (_text at its link address); capture_kallsyms() below is its symbol table for their frames.
SLIDE = 0x1E800000

SAMPLE = """\
ffffffff81000000 T _stext
ffffffff81000000 T _text
ffffffff81000010 T __entry_text_start
ffffffff81845700 t __ip_local_out
ffffffff818457e0 T ip_local_out
ffffffff81845850 T ip_output
ffffffff82000000 T _etext
ffffffff82400000 D some_data
ffffffff81a00000 t dup_static
ffffffff81b00000 t dup_static
ffffffffc0a1b000 t nft_do_chain\t[nf_tables]
ffffffffc0a1b600 T nft_do_chain_inet\t[nf_tables]
ffffffffc0b00000 t nf_conntrack_in\t[nf_conntrack]
"""


@functools.lru_cache(maxsize=1)
def _load_proc_kallsyms() -> Kallsyms:
    return load_kallsyms(Path("/proc/kallsyms"))


def real_kallsyms() -> Kallsyms:
    try:
        return _load_proc_kallsyms()
    except (OSError, KallsymsError) as exc:  # not root / kptr_restrict / not Linux
        pytest.skip(f"/proc/kallsyms unusable here: {exc}")


def shifted(k: Kallsyms, slide: int) -> Callable[[str], int | None]:
    """A synthetic link map: the vmlinux linked ``slide`` below where kallsyms says it runs."""

    def link_address_of(name: str) -> int | None:
        a = k.address_of(name)
        return None if a is None else a - slide

    return link_address_of


def test_parse_sample() -> None:
    k = parse_kallsyms(SAMPLE)
    assert len(k) == 13
    assert k.address_of("_text") == 0xFFFFFFFF81000000
    assert k.text_address == 0xFFFFFFFF81000000
    assert k.address_of("__ip_local_out") == 0xFFFFFFFF81845700
    assert k.address_of("nft_do_chain") is None  # a module symbol: ask with its module
    assert k.address_of("nft_do_chain", "nf_tables") == 0xFFFFFFFFC0A1B000
    assert k.lookup("nft_do_chain", "nf_tables")[0].type == "t"
    assert k.modules == frozenset({"nf_tables", "nf_conntrack"})
    assert "ip_output" in k and "nope" not in k
    assert k.address_of("dup_static") is None  # ambiguous
    assert len(k.lookup("dup_static")) == 2


def test_symbolize() -> None:
    k = parse_kallsyms(SAMPLE)
    entry, off = k.symbolize(0xFFFFFFFF818457DB) or (None, None)
    assert entry is not None and (entry.name, off) == ("__ip_local_out", 0xDB)
    entry, off = k.symbolize(0xFFFFFFFF81000000) or (None, None)
    assert entry is not None and entry.name in ("_stext", "_text") and off == 0
    entry, off = k.symbolize(0xFFFFFFFFC0A1B3E8) or (None, None)
    assert entry is not None and (entry.name, entry.module, off) == ("nft_do_chain", "nf_tables", 0x3E8)
    assert k.symbolize(0x1000) is None


def test_zeroed_addresses_are_refused() -> None:
    hidden = "".join("0000000000000000" + line[16:] + "\n" for line in SAMPLE.splitlines())
    with pytest.raises(KallsymsHiddenError, match="kptr_restrict"):
        parse_kallsyms(hidden)
    with pytest.raises(BadFileError):  # KallsymsError is a BadFileError (exit code 4)
        load_kallsyms(hidden)


def test_malformed_and_empty() -> None:
    with pytest.raises(KallsymsError, match=r"kallsyms:2: not a kallsyms line"):
        parse_kallsyms("ffffffff81000000 T _text\nthis is not kallsyms\n")
    with pytest.raises(KallsymsError, match="no symbols"):
        parse_kallsyms("\n\n")
    assert len(parse_kallsyms("# saved on host1\nffffffff81000000 T _text\n\n")) == 1


def test_load_path_or_text(tmp_path: Path) -> None:
    p = tmp_path / "kallsyms.txt"
    p.write_text(SAMPLE)
    assert load_kallsyms(p).address_of("_text") == 0xFFFFFFFF81000000
    assert load_kallsyms(str(p)).address_of("_text") == 0xFFFFFFFF81000000
    assert load_kallsyms(SAMPLE).address_of("_text") == 0xFFFFFFFF81000000
    assert load_kallsyms("ffffffff81000000 T _text").address_of("_text") == 0xFFFFFFFF81000000
    with pytest.raises(FileNotFoundKsymError):
        load_kallsyms(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):  # also a builtin FileNotFoundError
        load_kallsyms(str(tmp_path / "missing"))


def test_real_proc_kallsyms() -> None:
    k = real_kallsyms()
    assert len(k) > 10000
    text = k.address_of("_text")
    assert text is not None and text >= 0xFFFF000000000000
    assert k.address_of("_stext") is not None
    # every unique global text symbol symbolizes back to itself
    for name in ("do_syscall_64", "tcp_v4_rcv", "ip_local_out", "schedule"):
        a = k.address_of(name)
        if a is None:
            continue
        hit = k.symbolize(a + 1)
        assert hit is not None and hit[1] == 1 and hit[0].address == a


def test_locate_sizes_as_kallsyms_does() -> None:
    """locate() names and sizes an address the way the kernel's stack dumps do: every symbol but absolute
    and undefined ones bounds the one before it (data too), the first of those sharing an address names
    it, a module's symbol carries its module."""
    k = parse_kallsyms(SAMPLE + "0000000000000000 A fixed_percpu_data\nffffffff82100000 A abs_symbol\n")
    hit = k.locate(0xFFFFFFFF818457DB)
    assert hit == KallsymsSymbol("__ip_local_out", 0xDB, 0xE0)
    assert str(hit) == "__ip_local_out+0xdb/0xe0" and hit.short == "__ip_local_out+0xdb"
    assert str(k.locate(0xFFFFFFFF81000004)) == "_stext+0x4/0x10"  # first in the file of the two at _text
    # _etext's size runs to the data symbol (the absolute one between them does not count)
    assert str(k.locate(0xFFFFFFFF82100000)) == "_etext+0x100000/0x400000"
    assert str(k.locate(0xFFFFFFFFC0A1B3E8)) == "nft_do_chain+0x3e8/0x600 [nf_tables]"
    assert str(k.locate(0xFFFFFFFFC0B00010)) == "nf_conntrack_in+0x10/0x0 [nf_conntrack]"  # the last symbol
    assert k.locate(0x1000) is None


_KERNEL_FRAME = re.compile(r"\[<[0-9a-f]+>\] (?P<text>(?P<name>\S+)\+0x(?P<off>[0-9a-f]+)/0x(?P<size>[0-9a-f]+)"
                           r"(?: \[(?P<module>\S+)\])?)$")


def test_locate_agrees_with_the_kernels_own_stack() -> None:
    """The running kernel prints this process's stack as ``name+off/size`` (/proc/self/stack, root only): an
    address rebuilt from kallsyms and that offset locates to the very same text."""
    k = real_kallsyms()
    try:
        stack = Path("/proc/self/stack").read_text()
    except OSError as exc:
        pytest.skip(f"/proc/self/stack unreadable here: {exc}")
    checked = 0
    for line in stack.splitlines():
        m = _KERNEL_FRAME.match(line.strip())
        if m is None:
            continue
        start = k.address_of(m["name"], m["module"])
        off = int(m["off"], 16)
        if start is None or off == int(m["size"], 16):  # an ambiguous name; a return address past the end
            continue
        assert str(k.locate(start + off)) == m["text"], line
        checked += 1
    assert checked >= 3, stack


def test_locate_reads_the_running_table() -> None:
    assert KALLSYMS_PATH == "/proc/kallsyms"
    k = real_kallsyms()
    for name in ("do_syscall_64", "ip_local_out", "schedule"):
        a = k.address_of(name)
        hit = k.locate(a + 1) if a is not None else None
        assert a is None or (hit is not None and hit.name == name and hit.offset == 1 and hit.size > 1)


def test_kaslr_from_real_kallsyms_and_synthetic_link_map() -> None:
    k = real_kallsyms()
    assert kaslr_offset_from_kallsyms(k, shifted(k, SLIDE)) == SLIDE
    assert kaslr_offset_from_kallsyms(k, shifted(k, 0)) == 0


def test_kaslr_from_kallsyms_checks_other_symbols() -> None:
    k = real_kallsyms()
    good = shifted(k, SLIDE)
    text_link = good("_text")
    stext_link = good("_stext")

    # a vmlinux of another build: _text agrees, everything else is elsewhere
    def other_build(name: str) -> int | None:
        a = good(name)
        if a is None or name in ("_text", "_stext"):
            return a
        return a + 0x1340

    with pytest.raises(KaslrError, match="different builds"):
        kaslr_offset_from_kallsyms(k, other_build)
    # _text missing from the link map: _stext anchors
    assert kaslr_offset_from_kallsyms(k, lambda n: None if n == "_text" else good(n)) == SLIDE
    assert text_link is not None and stext_link is not None
    # nothing to anchor on
    with pytest.raises(KaslrError, match="neither _text nor _stext"):
        kaslr_offset_from_kallsyms(k, lambda n: None)
    # an anchor that is not page aligned
    with pytest.raises(KaslrError, match="page aligned"):
        kaslr_offset_from_kallsyms(k, lambda n: None if good(n) is None else good(n) + 0x10)  # type: ignore[operator]


def test_kaslr_from_kallsyms_tolerates_a_few_odd_symbols() -> None:
    k = parse_kallsyms(SAMPLE)
    link = {e.name: e.address - SLIDE for e in k.entries if e.module is None}
    link["ip_output"] += 0x40  # one same-named static resolved differently
    assert kaslr_offset_from_kallsyms(k, link.get) == SLIDE


def frames_of(name: str) -> list[StackFrame]:
    return [p.frame for p in parse_text((DATA / name).read_text()) if p.frame is not None]


MIXED_SAMPLES = (
    "perf-script-kfree_skb-6.18.txt",
    "ftrace-stacktrace-sym-addr-6.18.txt",
    "bpftrace-kstack-perf-map.txt",
)


#: One line of the ftrace capture (options/sym-addr): the capture kernel's own %pS, i.e. its kallsyms
#: lookup of the address, then the address: `` => tcp_v4_rcv+0x99/0x1400 <ffffffff82094309>``.
_FTRACE_SYM_ADDR = re.compile(r"^ => (?P<name>\S+)\+0x(?P<off>[0-9a-f]+)/0x[0-9a-f]+ <(?P<addr>[0-9a-f]{16})>$",
                              re.MULTILINE)


def capture_kallsyms() -> Kallsyms:
    """The capture kernel's kallsyms for the symbols of its stacks, as that kernel printed them itself in the
    ftrace capture (read here with a regular expression, not with ksym's parser): the captures need no
    particular running kernel."""
    text = (DATA / "ftrace-stacktrace-sym-addr-6.18.txt").read_text()
    entries = {m["name"]: int(m["addr"], 16) - int(m["off"], 16) for m in _FTRACE_SYM_ADDR.finditer(text)}
    assert len(entries) >= 20
    return parse_kallsyms("".join(f"{addr:016x} t {name}\n" for name, addr in entries.items()))


@pytest.mark.parametrize("name", MIXED_SAMPLES)
def test_kaslr_from_real_frames(name: str) -> None:
    k = capture_kallsyms()
    fs = frames_of(name)
    known = [f for f in fs if f.address is not None and f.symbol in k and f.module is None]
    assert len(known) >= 10  # the verdict below rests on many frames, not one
    # the capture kernel runs without KASLR, so the frames agree with its kallsyms as is ...
    assert kaslr_offset_from_frames(fs, k.address_of) == 0
    # ... and with a vmlinux linked SLIDE lower, the frames reveal SLIDE
    assert kaslr_offset_from_frames(fs, shifted(k, SLIDE)) == SLIDE


def synthetic_frames() -> tuple[list[StackFrame], dict[str, int]]:
    """Frames of the perf capture, with a link map derived from a made-up vmlinux."""
    fs = frames_of("perf-script-kfree_skb-6.18.txt")
    link: dict[str, int] = {}
    for f in fs:
        assert f.symbol is not None and f.offset is not None and f.address is not None
        link[f.symbol] = f.address - f.offset - SLIDE
    return fs, link


def test_kaslr_from_frames_majority_and_alignment() -> None:
    fs, link = synthetic_frames()
    assert kaslr_offset_from_frames(fs, link.get) == SLIDE
    # a few frames with wrong offsets (a different boot pasted in) are outvoted
    bad = [replace(f, address=(f.address or 0) + 0x200000) for f in fs[:5]]
    assert kaslr_offset_from_frames(fs + bad, link.get) == SLIDE
    # no strict majority
    half = [replace(f, address=(f.address or 0) + 0x200000) for f in fs]
    with pytest.raises(KaslrError, match="disagree"):
        kaslr_offset_from_frames(fs + half, link.get)
    # a slide that is not a 2 MiB multiple means a wrong vmlinux
    off = {k: v + 0x1000 for k, v in link.items()}
    with pytest.raises(KaslrError, match="not a multiple"):
        kaslr_offset_from_frames(fs, off.get)
    assert kaslr_offset_from_frames(fs, off.get, alignment=0x1000) == SLIDE - 0x1000
    assert KASLR_ALIGN_X86_64 == 0x200000


def test_kaslr_from_frames_ignores_unusable_frames() -> None:
    fs, link = synthetic_frames()
    module_frames = [replace(f, module="nf_tables", address=(f.address or 0) + 0x999000) for f in fs]
    no_address = [replace(f, address=None) for f in fs]
    unknown = [replace(f, symbol="not_in_vmlinux") for f in fs]
    assert kaslr_offset_from_frames(module_frames + no_address + unknown + fs[:1], link.get) == SLIDE
    with pytest.raises(KaslrError, match="no frame"):
        kaslr_offset_from_frames(module_frames + no_address + unknown, link.get)
    with pytest.raises(KaslrError, match="no frame"):
        kaslr_offset_from_frames(frames_of("bcc-tcpdrop.txt"), link.get)  # no addresses at all


def test_kaslr_from_old_oops_frames() -> None:
    # an old oops prints [<address>] and func+off/size: one symbol known to the "vmlinux" is enough
    fs = frames_of("oops-old-3.10-proc-stack-old.txt")
    link = {"nf_iterate": 0xFFFFFFFF8157D0B8 - 0x98 - SLIDE}
    assert kaslr_offset_from_frames(fs, link.get) == SLIDE
