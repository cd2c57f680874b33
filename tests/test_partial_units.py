"""Units read only as far as the addresses asked need (ksym.dwarf: compile_unit(until=...),
LineTable.covers, extend_lines, walk_on) answer every address exactly like the unit read whole, also after a
round trip through the index record, on real units of the Debian 6.1 vmlinux.

Needs tools/fetch-testdata.sh; skipped with a printed reason elsewhere, a failure under CI=true."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from ksym import Symbolizer
from ksym import dwarf as D
from ksym.symbols import inline_chain

pytestmark = pytest.mark.vmlinux



def _units(plain_sym: Symbolizer, n: int) -> list[tuple[int, list[int]]]:
    """``n`` units holding FUNC symbols spread over .text, each with a few addresses of them."""
    st = plain_sym.symbols
    funcs = [i for i in range(len(st.values)) if st.infos[i] & 0xF == 2 and st.sizes[i] >= 16]
    rng = random.Random(1126)
    out: dict[int, list[int]] = {}
    for i in rng.sample(funcs, 400):
        start, size = int(st.values[i]), int(st.sizes[i])
        assert plain_sym.dwarf_image is not None
        off = plain_sym.dwarf_image.unit_offset(start)
        if off is not None:
            out.setdefault(off, []).extend([start, start + size // 2, start + size - 1])
        if len(out) == n:
            break
    return list(out.items())


def test_partial_unit_answers_like_the_whole_unit(plain_sym: Symbolizer) -> None:
    assert plain_sym.dwarf_image is not None
    sec = plain_sym.dwarf_image.sections
    rng = random.Random(26)
    partial_seen = 0
    for off, addrs in _units(plain_sym, 24):
        whole = D.compile_unit(sec, off)
        assert whole.walk is None and whole.lines is not None and whole.lines.pending is None
        lt = whole.lines
        lo, hi = min(q[0] for q in lt.seqs), max(q[1] for q in lt.seqs)
        # the functions' own addresses, row starts, sequence edges and addresses around the unit
        probes = addrs + list(lt.addrs[:: max(1, len(lt.addrs) // 10)]) + [q[0] for q in lt.seqs]
        probes += [q[1] for q in lt.seqs] + [rng.randrange(lo - 64, hi + 64) for _ in range(20)]
        rng.shuffle(probes)
        part = D.compile_unit(sec, off, until=min(addrs))
        partial_seen += part.lines is not None and part.lines.pending is not None
        for k, a in enumerate(probes):
            if k == len(probes) // 2:  # stored and loaded again half way
                part = D.unit_from_record(D.unit_to_record(part))
            assert part.lines is not None
            D.extend_lines(part.lines, sec, a)
            D.walk_on(sec, part, a)
            for cu in (part, whole):
                if cu.needs_expansion(a):
                    D.expand_for(sec, cu, a)
            assert part.lines.lookup(a) == lt.lookup(a), hex(a)
            assert part.lines.row_address(a) == lt.row_address(a), hex(a)
            got = inline_chain(part, a, plain_sym.symbols, plain_sym._display)
            assert got == inline_chain(whole, a, plain_sym.symbols, plain_sym._display), hex(a)
        # read to the end, the partial unit is the whole one
        D.extend_lines(part.lines, sec, 1 << 64)
        assert part.lines.pending is None
        assert list(part.lines.addrs) == list(lt.addrs) and sorted(part.lines.seqs) == sorted(lt.seqs)
    assert partial_seen >= 12, "most units stop their line program early"


def test_symbolizer_reads_on_from_a_stored_partial_unit(tmp_path: Path, plain_sym: Symbolizer) -> None:
    (off, addrs), = _units(plain_sym, 1)
    first = Symbolizer(plain_sym.path, cache_dir=tmp_path)
    lowest = min(addrs)
    want_low = plain_sym.chain(lowest)
    assert first.chain(lowest) == want_low
    first.close()
    again = Symbolizer(plain_sym.path, cache_dir=tmp_path)
    cu = again.compiled_unit(off)
    assert cu.lines is not None
    stored_partial = cu.lines.pending is not None or cu.walk is not None
    highest = max(addrs)
    assert again.chain(highest) == plain_sym.chain(highest)
    assert again.chain(lowest) == want_low
    again.close()
    if stored_partial:
        # the grown unit was written back: a third start answers a new address next to the higher
        # one from it, without the DWARF
        third = Symbolizer(plain_sym.path, cache_dir=tmp_path)
        assert third.chain(highest - 1) == plain_sym.chain(highest - 1)
        assert third.dwarf_image is not None and not third.dwarf_image.opened
        third.close()


def test_gcc_file_tables_join_like_the_generic_reader(plain_sym: Symbolizer) -> None:
    """GCC's DWARF 5 file tables (read by offset pairs, joined once per pair) give the same directories
    and file names as the generic entry reader and concat_filename, in 60 kernel units."""
    assert plain_sym.dwarf_image is not None
    sec = plain_sym.dwarf_image.sections
    assert sec.line is not None
    checked = 0
    for off, _ in _units(plain_sym, 60):
        reader, vals, _children, _pos = D._open_unit(sec, off)
        comp_dir = reader.string(*vals[D.AT_COMP_DIR]) if D.AT_COMP_DIR in vals else ""
        data = sec.line
        e = "<" if sec.little_endian else ">"
        _length, pos, off_size = D._initial_length(data, int(vals[D.AT_STMT_LIST][1]), e)
        assert int.from_bytes(data[pos : pos + 2], "little") == 5
        pos += 2 + 2 + off_size + 1 + 1 + 4  # version, address and selector sizes, header length, ...
        pos += data[pos - 1] - 1  # standard_opcode_lengths (opcode_base - 1 bytes)
        fast = D._gcc_v5_files(sec, data, pos, off_size, e, comp_dir)
        assert fast is not None, f"unit {off:#x}: not GCC's header form"
        dirs_e, pos = D._v5_entries(sec, data, pos, off_size, e)
        dirs = [str(d.get(1, "")) for d in dirs_e]
        files_e, pos = D._v5_entries(sec, data, pos, off_size, e)
        files = [D.concat_filename(comp_dir, dirs, str(f.get(1, "")), int(f.get(2, 0)), 5) for f in files_e]
        assert fast == (dirs, files, pos), f"unit {off:#x}"
        checked += len(files)
    assert checked > 3000
