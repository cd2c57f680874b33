"""A whole compilation unit cut into address parts: what the portable index file stores (format 4), so
that one frame decodes the few functions and line rows around its address instead of its whole unit.

A unit's address space is cut at some of its top-level functions' lowest addresses into intervals
``[low, next low)`` (the first from 0, the last to the top of the address space). The part of an
interval is a unit of its own (:class:`ksym.units.CompiledUnit`) that answers every address of that
interval exactly as the whole unit does:

- its functions are every top-level function tree (a subprogram and all it encloses) with a range
  that meets the interval, each tree whole, in the unit's order (the later DIE wins bfd's ties), their
  parents renumbered: every function holding an address of the interval, with all its callers, is there;
- its line table has each line sequence that meets the interval, with the same bounds and in the same
  order, holding the rows from the last one at or below the interval's low to the first one at or above
  its end: the row holding an address of the interval and the one after it (where that row ends);
- its file names are the unit's, at the same numbers; a name no row or call of the part names is
  None (a part of a unit of 2,000 files names a few dozen).

:func:`unit_parts` cuts a unit read whole (:func:`ksym.dwarf.compile_whole_unit`) into parts of about
:data:`PART_SIZE` bytes of record. The builder (:mod:`ksym.portable_build`) stores each part's record;
:class:`ksym.portable.PortableFile` finds an address's part by bisecting the lows.
"""

from __future__ import annotations

import bisect
import marshal
from array import array

from .records import NamedTuple
from .units import CompiledUnit, FunctionNode, LineSequence, LineTable, _Rows

__all__ = ["PART_SIZE", "UnitPart", "unit_parts"]

#: About how many bytes of ``marshal`` record a part holds (a top-level function tree larger than this
#: is a part of its own). 8 KB: a frame decodes about 5% of a unit of the size of net/ipv4/ip_output.c,
#: and the file grows by a tenth over whole units (the same tables and rows appear in the parts around
#: a cut).
PART_SIZE = 8192

#: bytes of record a line row takes (address, file, line, column, discriminator, end flag)
_ROW_BYTES = 25


class UnitPart(NamedTuple):
    """One part of a unit: it answers the addresses from ``low`` to the next part's low."""

    low: int
    unit: CompiledUnit


def unit_parts(cu: CompiledUnit, size: int = PART_SIZE) -> list[UnitPart]:
    """``cu`` (read whole: no walk state, no pending line state, no unread subtree) cut into parts of
    about ``size`` bytes of record, by increasing ``low``, the first one's 0 (see the module's
    documentation)."""
    if cu.lines is not None and not isinstance(cu.lines.rows, _Rows):
        # as the decoder left them (rows as tuples): as columns, as a stored unit has them
        cu = CompiledUnit(cu.offset, cu.name, cu.comp_dir, cu.functions, LineTable.from_record(cu.lines.to_record()))
    fns = cu.functions
    # the top-level function each one belongs to (a function's parent comes before it)
    root: list[int] = []
    for j, f in enumerate(fns):
        root.append(j if f.parent < 0 else root[f.parent])
    trees: dict[int, list[int]] = {}
    spans: dict[int, list[tuple[int, int]]] = {}
    for j, f in enumerate(fns):
        trees.setdefault(root[j], []).append(j)
        spans.setdefault(root[j], []).extend((lo, hi) for lo, hi in f.ranges if hi > lo)
    # a tree without a range holds no address: no part needs it
    by_low = sorted((min(lo for lo, _hi in s), r) for r, s in spans.items() if s)
    lows = _cuts(cu, by_low, trees, size)
    # each tree goes to every part whose interval one of its ranges meets
    members: list[set[int]] = [set() for _ in lows]
    for r, s in spans.items():
        for lo, hi in s:
            first = bisect.bisect_right(lows, lo) - 1
            last = bisect.bisect_left(lows, hi) - 1
            for k in range(max(first, 0), last + 1):
                members[k].add(r)
    parts = []
    for k, low in enumerate(lows):
        high = lows[k + 1] if k + 1 < len(lows) else 1 << 64
        picked = sorted(j for r in members[k] for j in trees[r])
        parts.append(UnitPart(low, _part(cu, picked, low, high)))
    return parts


def _cuts(cu: CompiledUnit, by_low: list[tuple[int, int]], trees: dict[int, list[int]], size: int) -> list[int]:
    """The parts' lows: 0, then the lowest address of the first tree of each part after the first,
    trees taken in the order of their lowest addresses until a part holds about ``size`` bytes (its
    trees' records and the line rows up to the next tree). The rows are counted by bisecting the whole
    row column, which is sorted but where sequences overlap (discarded code at address 0): an estimate
    of the size only, never of what a part holds."""
    addrs = cu.lines.addrs if cu.lines is not None else array("Q")
    lows = [0]
    used = 0
    for i, (low, r) in enumerate(by_low):
        end = by_low[i + 1][0] if i + 1 < len(by_low) else 1 << 64
        rows = bisect.bisect_left(addrs, end) - bisect.bisect_left(addrs, low) if len(addrs) else 0
        cost = len(marshal.dumps([cu.functions[j].to_record() for j in trees[r]], 4)) + rows * _ROW_BYTES
        if used and used + cost > size and low > lows[-1]:
            lows.append(low)
            used = 0
        used += cost
    return lows


def _part(cu: CompiledUnit, picked: list[int], low: int, high: int) -> CompiledUnit:
    """The part of ``cu`` for the addresses ``low`` to ``high``: the functions ``picked`` (indices, in
    order, each with the functions enclosing it) and the line rows the interval needs."""
    new_index = {j: k for k, j in enumerate(picked)}
    fns = []
    files_named: set[int] = set()
    for j in picked:
        f = cu.functions[j]
        fns.append(FunctionNode(f.die_offset, f.tag, list(f.ranges), f.name,
                                new_index[f.parent] if f.parent >= 0 else -1,
                                f.call_file, f.call_line, f.call_column))
        files_named.add(f.call_file)
    lines = cu.lines
    table = None
    if lines is not None:
        table = _part_lines(lines, low, high, files_named)
    return CompiledUnit(cu.offset, cu.name, cu.comp_dir, fns, table).finish()


def _part_lines(lines: LineTable, low: int, high: int, files_named: set[int]) -> LineTable:
    """The line table of a part: each sequence meeting ``low`` to ``high``, its rows from the last one
    at or below ``low`` to the first one at or above ``high``; the file names its rows and
    ``files_named`` (the calls' file numbers) name, the others None."""
    addrs = lines.addrs
    rows = lines.rows
    assert isinstance(rows, _Rows), "a loaded or whole unit's rows are columns"
    keep: list[tuple[int, int, LineSequence]] = []
    n = 0
    for q in lines.seqs:
        if q.high <= low or q.low >= high:
            continue
        j0 = max(q.first_row, bisect.bisect_right(addrs, low, q.first_row, q.end_row) - 1)
        j1 = min(q.end_row - 1, bisect.bisect_left(addrs, high, q.first_row, q.end_row))
        if j1 < j0:  # a sequence without rows
            keep.append((j0, j0, LineSequence(q.low, q.high, n, n)))
            continue
        keep.append((j0, j1 + 1, LineSequence(q.low, q.high, n, n + j1 + 1 - j0)))
        n += j1 + 1 - j0
    new_addrs = array("Q")
    cols = [array("I") for _ in range(4)]
    ends = bytearray()
    for a, b, _q in keep:
        new_addrs.extend(addrs[a:b])
        for new, old in zip(cols, (rows.files, rows.lines, rows.cols, rows.discs)):
            new.extend(old[a:b])
        ends += rows.ends[a:b]
    named = set(cols[0]) | files_named
    base = lines.file_base
    files: list[str | None] = [name if i + base in named else None for i, name in enumerate(lines.files)]
    # a name left out is None: a file number that reaches one is damage (ksym.portable checks)
    return LineTable(files, new_addrs, _Rows(cols[0], cols[1], cols[2], cols[3], bytes(ends)),  # type: ignore[arg-type]
                     [q for _a, _b, q in keep], base, None, lines.offset)
