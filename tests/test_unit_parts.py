"""A unit cut into address parts (ksym.unit_parts, what the portable index file stores) answers every
address exactly as the whole unit read from the DWARF does: the inline chain (addr2line -i), the row
start and the innermost line, for every row address of the unit and the addresses around it, every
function range's edges, and every cut, on real units of the Debian 6.1 vmlinux, also after the round
trip through the record the file stores.

Needs tools/fetch-testdata.sh; skipped with a printed reason elsewhere, a failure under CI=true."""

from __future__ import annotations

import bisect
import marshal
import random

import pytest

from ksym import Symbolizer
from ksym import dwarf as D
from ksym.portable import _whole_unit
from ksym.symbols import inline_chain
from ksym.unit_parts import PART_SIZE, unit_parts
from ksym.units import CompiledUnit, unit_to_record

pytestmark = pytest.mark.vmlinux



def _unit_offsets(plain_sym: Symbolizer) -> list[int]:
    """Units of the packet path, the largest units of the image's frames, and a random sample."""
    assert plain_sym.dwarf_image is not None
    st = plain_sym.symbols
    named = ["__ip_local_out", "tcp_v4_rcv", "nf_hook_slow", "__netif_receive_skb_core.constprop.0",
             "kfree_skb_reason",
             "program_hpx_type0", "start_kernel"]
    offs = []
    for name in named:
        (i, *_rest) = st.indices_named(name)
        off = plain_sym.dwarf_image.unit_offset(int(st.values[i]))
        assert off is not None, name
        offs.append(off)
    funcs = [i for i in range(len(st.values)) if st.infos[i] & 0xF == 2 and st.sizes[i] >= 16]
    rng = random.Random(15)
    for i in rng.sample(funcs, 60):
        off = plain_sym.dwarf_image.unit_offset(int(st.values[i]))
        if off is not None and off not in offs:
            offs.append(off)
    return offs


def _probes(cu: CompiledUnit, lows: list[int]) -> list[int]:
    out: set[int] = set(lows) | {low - 1 for low in lows if low}
    if cu.lines is not None:
        for a in cu.lines.addrs:
            out.update((a - 1, a, a + 1))
        for q in cu.lines.seqs:
            out.update((q.low, q.high - 1, q.high))
    for f in cu.functions:
        for lo, hi in f.ranges:
            out.update((lo, (lo + hi) // 2, hi - 1, hi))
    return sorted(a for a in out if a >= 0)


def _answer(cu: CompiledUnit, address: int, plain_sym: Symbolizer) -> object:
    try:
        lines = cu.lines
        return (inline_chain(cu, address, plain_sym.symbols, plain_sym._display),
                lines.row_address(address) if lines is not None else None,
                lines.lookup(address) if lines is not None else None)
    except D.DwarfError as exc:  # damage in the unit itself: the same in the part
        return str(exc)


def test_parts_answer_as_the_whole_unit(plain_sym: Symbolizer) -> None:
    assert plain_sym.dwarf_image is not None
    sec = plain_sym.dwarf_image.sections
    checked = split = 0
    for off in _unit_offsets(plain_sym):
        whole = D.compile_whole_unit(sec, off)
        parts = unit_parts(whole)
        lows = [p.low for p in parts]
        assert lows[0] == 0 and lows == sorted(set(lows))
        # each part as the file stores it: its record, read back with the reader's checks
        stored = []
        for p in parts:
            raw = marshal.dumps(unit_to_record(p.unit), 4)
            stored.append(_whole_unit(marshal.loads(raw), off, len(raw)))
        # the whole unit as the reader would have it (rows as columns)
        raw = marshal.dumps(unit_to_record(whole), 4)
        whole = _whole_unit(marshal.loads(raw), off, len(raw))
        split += len(parts) > 1
        for a in _probes(whole, lows):
            part = stored[bisect.bisect_right(lows, a) - 1]
            assert _answer(part, a, plain_sym) == _answer(whole, a, plain_sym), (hex(off), hex(a))
            checked += 1
    assert checked > 50_000 and split > 5, (checked, split)


def test_parts_are_small_and_leave_out_unused_file_names(plain_sym: Symbolizer) -> None:
    """A frame in net/ipv4/ip_output.c decodes a part of a few KB, not the unit of 160 KB, and a part
    names a few of the unit's files."""
    assert plain_sym.dwarf_image is not None
    st = plain_sym.symbols
    (i, *_rest) = st.indices_named("__ip_local_out")
    off = plain_sym.dwarf_image.unit_offset(int(st.values[i]))
    assert off is not None
    whole = D.compile_whole_unit(plain_sym.dwarf_image.sections, off)
    parts = unit_parts(whole)
    whole_size = len(marshal.dumps(unit_to_record(whole), 4))
    sizes = [len(marshal.dumps(unit_to_record(p.unit), 4)) for p in parts]
    assert len(parts) >= 10
    # a part is about PART_SIZE, more only when one function tree alone is larger
    assert sorted(sizes)[len(sizes) // 2] < 2 * PART_SIZE < whole_size // 5, sizes
    assert whole.lines is not None
    for p in parts:
        assert p.unit.lines is not None and len(p.unit.lines.files) == len(whole.lines.files)
        named = [f for f in p.unit.lines.files if f is not None]
        assert 0 < len(named) < len(whole.lines.files)


def test_a_part_naming_a_file_it_leaves_out_is_refused(plain_sym: Symbolizer) -> None:
    """The reader refuses a part whose rows or calls name a file number whose name it leaves out (None):
    a lookup would print no file name where the whole unit prints one."""
    assert plain_sym.dwarf_image is not None
    st = plain_sym.symbols
    (i, *_rest) = st.indices_named("__ip_local_out")
    off = plain_sym.dwarf_image.unit_offset(int(st.values[i]))
    assert off is not None
    part = next(p for p in unit_parts(D.compile_whole_unit(plain_sym.dwarf_image.sections, off))
                if p.low <= int(st.values[i]))
    rec = unit_to_record(part.unit)
    raw = marshal.dumps(rec, 4)
    assert _whole_unit(marshal.loads(raw), off, len(raw)).lines is not None  # as stored: accepted
    lines = list(rec[4])
    for number in sorted(set(part.unit.lines.rows.files))[:3]:  # type: ignore[union-attr]
        files = list(lines[0])
        files[number - lines[5]] = None
        bad = (*rec[:4], (files, *lines[1:]), rec[5])
        raw = marshal.dumps(bad, 4)
        with pytest.raises(ValueError, match="leaves out"):
            _whole_unit(marshal.loads(raw), off, len(raw))
