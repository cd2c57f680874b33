"""A compilation unit as ksym keeps it: the records a lookup reads, without the DWARF parser.

:mod:`ksym.dwarf` reads a unit from .debug_info and .debug_line into a :class:`CompiledUnit` (its
subprogram/inlined-subroutine tree as :class:`FunctionNode` s with their address ranges, and its
:class:`LineTable`); the on-disk index and the portable index file (:mod:`ksym.portable`) store that unit
as the plain record :func:`unit_to_record` gives and load it back with :func:`unit_from_record`. A lookup
then reads the unit here: the smallest function holding an address (:meth:`CompiledUnit.best_function`)
and the line row covering it (:meth:`LineTable.lookup`), as binutils' bfd does (see :mod:`ksym.dwarf`).

This module does not import :mod:`ksym.dwarf`, so answering from stored whole units (``ksym resolve
--index FILE``) never loads the parser. What reads on in a unit stored part way (``walk``,
``LineTable.pending``, unread subtrees) is the parser's: :func:`ksym.dwarf.walk_on`,
:func:`ksym.dwarf.expand_for`, :func:`ksym.dwarf.extend_lines`; the records of where it stopped
(:class:`ksym.unit_state.WalkState`, :class:`ksym.unit_state.LineDecoderState`) are in
:mod:`ksym.unit_state`, loaded only with such a unit. :mod:`ksym.dwarf` re-exports every name of both
modules, so ``ksym.dwarf.CompiledUnit`` and the like still work.
"""

from __future__ import annotations

import bisect
from array import array
from contextlib import contextmanager
from itertools import starmap

from .errors import BadFileError
from .records import MutableRecord, NamedTuple

# typing.TYPE_CHECKING without importing typing: type checkers take any TYPE_CHECKING as true
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from typing import Any

    from .unit_state import LineDecoderState, WalkState

__all__ = [
    "TAG_INLINED_SUBROUTINE",
    "CompiledUnit",
    "DwarfError",
    "FunctionNode",
    "LineLocation",
    "LineRow",
    "LineSequence",
    "LineTable",
    "damage_is_bad_file",
    "unit_from_record",
    "unit_to_record",
]

#: DW_TAG_inlined_subroutine: the :attr:`FunctionNode.tag` of a function inlined into its parent
TAG_INLINED_SUBROUTINE = 0x1D


class DwarfError(Exception):
    """Malformed or unsupported DWARF: ``what`` is wrong in ``section`` at ``offset`` (of that section).

    Every reader of :mod:`ksym.dwarf` raises it (never IndexError, struct.error and the like) for damaged
    input, and so does a lookup in a unit here that meets a file number past its line table's files
    (:meth:`LineTable.file_name`); :meth:`for_file` turns it into the one-line
    :class:`~ksym.errors.BadFileError` (exit 4)."""

    def __init__(self, section: str, offset: int, what: str) -> None:
        super().__init__(f"{section} at offset {offset:#x}: {what}")
        self.section = section
        self.offset = offset
        self.what = what

    def for_file(self, path: object) -> BadFileError:
        """The error the command line reports for this damage in the file at ``path``."""
        return BadFileError(f"{path}: damaged DWARF: {self}")


@contextmanager
def damage_is_bad_file(path: object) -> Iterator[None]:
    """Turn a :class:`DwarfError` raised inside into the :class:`~ksym.errors.BadFileError` (exit 4)
    for the file at ``path``: the one place where damaged DWARF becomes the bad-file error."""
    try:
        yield
    except DwarfError as exc:
        raise exc.for_file(path) from None


_Mutable = MutableRecord


class FunctionNode(_Mutable):
    """A subprogram or inlined subroutine: its ranges, name and where it was called from.

    ``parent``: index of the enclosing function node in :attr:`CompiledUnit.functions`, -1 for none;
    ``child_pos``: .debug_info offset of the first child while the subtree is not read yet, else -1."""

    _fields = ("die_offset", "tag", "ranges", "name", "parent", "call_file", "call_line", "call_column",
               "child_pos")
    __slots__ = _fields

    def __init__(self, die_offset: int, tag: int, ranges: list[tuple[int, int]], name: str, parent: int,
                 call_file: int = 0, call_line: int = 0, call_column: int = 0, child_pos: int = -1) -> None:
        self.die_offset = die_offset
        self.tag = tag
        self.ranges = ranges
        self.name = name
        self.parent = parent
        self.call_file = call_file
        self.call_line = call_line
        self.call_column = call_column
        self.child_pos = child_pos

    def to_record(self) -> tuple[Any, ...]:
        """The node as plain data for the index (see :meth:`from_records`)."""
        return (self.die_offset, self.tag, self.ranges, self.name, self.parent, self.call_file, self.call_line,
                self.call_column, self.child_pos)

    @classmethod
    def from_records(cls, recs: Sequence[Sequence[Any]]) -> list[FunctionNode]:
        """The nodes :meth:`to_record` wrote (a unit's at once: loading a unit makes thousands).

        :raises ValueError, TypeError: a record is not such a record."""
        return [cls(int(die_offset), int(tag), [(int(lo), int(hi)) for lo, hi in ranges], str(name), int(parent),
                    int(call_file), int(call_line), int(call_column), int(child_pos))
                for die_offset, tag, ranges, name, parent, call_file, call_line, call_column, child_pos in recs]

    @classmethod
    def from_exact_records(cls, recs: Sequence[Sequence[Any]]) -> list[FunctionNode]:
        """The nodes of records already checked to be exactly what :meth:`to_record` writes: tuples of 9,
        each field of exactly its type (``int``, not a subclass; the ranges a list of 2-tuples of ``int``):
        :meth:`from_records` without its conversions (each would give the value itself). The ranges
        lists are the records' own."""
        return list(starmap(cls, recs))


class LineSequence(NamedTuple):
    """One sequence of a line table: it covers addresses ``low`` to ``high`` (exclusive) with the rows
    ``first_row`` to ``end_row`` (exclusive) of :attr:`LineTable.rows`."""

    low: int
    high: int
    first_row: int
    end_row: int


class LineRow(NamedTuple):
    """One row of a line table (its address is the same index of :attr:`LineTable.addrs`).

    The decoder keeps rows as plain tuples in this order (:data:`_RowTuple`); :meth:`LineTable.row`
    reads one by name."""

    file: int
    line: int
    column: int
    discriminator: int
    end_sequence: bool


#: A row as the decoder appends it: the fields of :class:`LineRow`, in its order.
_RowTuple = tuple[int, int, int, int, bool]
_ROW_END_SEQUENCE = LineRow._fields.index("end_sequence")


class LineLocation(NamedTuple):
    """What a line table says of an address (:meth:`LineTable.lookup`): the joined file name, line,
    column and discriminator (each as binutils keeps it, an unsigned 32-bit number)."""

    file: str
    line: int
    column: int
    discriminator: int


class LineTable(_Mutable):
    """Rows of one CU's line program, sequence by sequence, in bfd's form.

    ``addrs``/``rows`` are parallel (a row's fields: :class:`LineRow`; read one with :meth:`row`);
    ``seqs`` are the :class:`LineSequence` s, sorted by low address.

    ``file_base``: what a file number of this table (call_file, rows) is offset by: 1 before DWARF 5,
    else 0. ``pending``: the decoder's state where it stopped (``ksym.dwarf.read_line_table(until=...)``;
    :func:`ksym.dwarf.extend_lines` decodes on), None once it is complete: rows from
    ``pending.sequence_start`` on belong to the sequence being decoded, which is not in ``seqs`` yet.
    ``offset``: where the program starts in .debug_line (-1: not known, a table stored by an older ksym).
    """

    _fields = ("files", "addrs", "rows", "seqs", "file_base", "pending", "offset")
    __slots__ = (*_fields, "_lows")

    def __init__(self, files: list[str], addrs: Any = None, rows: Any = None, seqs: list[LineSequence] | None = None,
                 file_base: int = 0, pending: LineDecoderState | None = None, offset: int = -1) -> None:
        self.files = files
        self.addrs: Any = [] if addrs is None else addrs  # list[int] while decoding, array('Q') when loaded
        self.rows: Any = [] if rows is None else rows  # list of _RowTuple while decoding, _Rows when loaded
        self.seqs: list[LineSequence] = [] if seqs is None else seqs
        self.file_base = file_base
        self.pending = pending
        self.offset = offset
        # the sequences' low addresses, for bisect (derived from ``seqs`` on first lookup)
        self._lows: list[int] | None = None

    def to_record(self) -> tuple[Any, ...]:
        """The table as plain data for the index: the rows as columns of packed numbers (loading them
        is a memcpy) (see :meth:`from_record`)."""
        rows = self.rows
        if isinstance(rows, _Rows):
            cols = [rows.files, rows.lines, rows.cols, rows.discs]
            ends = bytes(rows.ends)
        elif rows:
            # rows are _RowTuple: transpose them in C
            f, ln, c, d, e = zip(*rows)
            cols = [_u32s(f), _u32s(ln), _u32s(c), _u32s(d)]
            ends = bytes(map(bool, e))
        else:
            cols = [array("I") for _ in range(4)]
            ends = b""
        return (self.files, array("Q", self.addrs).tobytes(), [a.tobytes() for a in cols], ends,
                [tuple(q) for q in self.seqs], self.file_base,
                None if self.pending is None else self.pending.to_record(), self.offset)

    @classmethod
    def from_record(cls, rec: Sequence[Any]) -> LineTable:
        """The table :meth:`to_record` wrote (a record without the program's offset, as older ksym
        wrote, gives offset -1).

        :raises ValueError, TypeError: ``rec`` is not such a record."""
        files, addrs, cols, ends, seqs, file_base, pending, *more = rec

        def arr(code: str, data: bytes) -> array:  # type: ignore[type-arg]
            a = array(code)
            a.frombytes(data)
            return a

        rows = _Rows(arr("I", cols[0]), arr("I", cols[1]), arr("I", cols[2]), arr("I", cols[3]), bytes(ends))
        state = None
        if pending is not None:  # a table stored part way (the on-disk index): the decoder's records
            from .unit_state import LineDecoderState

            state = LineDecoderState.from_record(pending)
        return cls(list(files), arr("Q", addrs), rows, [LineSequence._make(q) for q in seqs],
                   int(file_base), state, int(more[0]) if more else -1)

    def covers(self, address: int) -> bool:
        """Whether the rows decoded so far answer ``address`` as the whole table would."""
        if self.pending is None:
            return True
        first = self.pending.sequence_start
        addrs = self.addrs
        if first < len(addrs) and addrs[first] <= address:
            return bool(address < addrs[-1])
        return self._completed_index(address) != -2

    def file_name(self, number: int) -> str:
        """The joined name of file ``number`` of this table.

        :raises DwarfError: no such file (binutils: "mangled line number section (bad file number)")."""
        i = number - self.file_base
        if not 0 <= i < len(self.files):
            raise DwarfError(".debug_line", max(self.offset, 0), f"file number {number} past the line "
                             f"program's {len(self.files)} files")
        return self.files[i]

    def lookup(self, address: int) -> LineLocation | None:
        """Where the row covering ``address`` points, or None."""
        j = self._row_index(address)
        if j < 0:
            return None
        row = self.row(j)
        # binutils keeps these in unsigned ints: a line program that steps below line 0 wraps around
        return LineLocation(self.file_name(row.file), row.line & 0xFFFFFFFF, row.column & 0xFFFFFFFF,
                            row.discriminator & 0xFFFFFFFF)

    def row(self, j: int) -> LineRow:
        """Row ``j`` of :attr:`rows`."""
        rows = self.rows
        if isinstance(rows, _Rows):
            return LineRow(rows.files[j], rows.lines[j], rows.cols[j], rows.discs[j], bool(rows.ends[j]))
        return LineRow._make(rows[j])

    def _ends_sequence(self, j: int) -> bool:
        """Whether row ``j`` ends its sequence (read without making the row: every lookup asks)."""
        rows = self.rows
        if isinstance(rows, _Rows):
            return bool(rows.ends[j])
        return bool(rows[j][_ROW_END_SEQUENCE])

    def row_address(self, address: int) -> int | None:
        """Start address of the row covering ``address`` (compilers start rows at instructions)."""
        j = self._row_index(address)
        return int(self.addrs[j]) if j >= 0 else None

    def _row_index(self, address: int) -> int:
        if self.pending is not None:
            # the sequence being decoded: its rows below the last one are final
            first = self.pending.sequence_start
            addrs = self.addrs
            if first < len(addrs) and addrs[first] <= address < addrs[-1]:
                return bisect.bisect_right(addrs, address, first, len(addrs)) - 1
        j = self._completed_index(address)
        return j if j >= 0 else -1

    def _completed_index(self, address: int) -> int:
        """The row of the completed sequences covering ``address``; -1: a sequence holds the address
        but no row answers it; -2: no sequence holds it."""
        seqs = self.seqs
        lows = self._lows
        if lows is None or len(lows) != len(seqs):
            lows = self._lows = [q.low for q in seqs]
        i = bisect.bisect_right(lows, address) - 1
        # sequences may overlap (discarded code at address 0); look back for one that contains it
        while i >= 0:
            q = seqs[i]
            if q.low <= address < q.high:
                first, last = q.first_row, q.end_row
                j = bisect.bisect_right(self.addrs, address, first, last) - 1
                if j >= first and not self._ends_sequence(j) and j + 1 < last and address < self.addrs[j + 1]:
                    return j
                return -1
            i -= 1
        return -2


class _Rows:
    """Line rows stored as columns (what the on-disk index keeps: loading it is a memcpy)."""

    __slots__ = ("cols", "discs", "ends", "files", "lines")

    def __init__(self, files: array, lines: array, cols: array, discs: array, ends: bytes) -> None:  # type: ignore[type-arg]
        self.files, self.lines, self.cols, self.discs, self.ends = files, lines, cols, discs, ends

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, j: int) -> LineRow:
        return LineRow(self.files[j], self.lines[j], self.cols[j], self.discs[j], bool(self.ends[j]))


class CompiledUnit(_Mutable):
    """What ksym keeps of one compilation unit.

    ``walk``: where the walk of the top-level DIEs stopped (``ksym.dwarf.compile_unit(until=...)``;
    :func:`ksym.dwarf.walk_on` reads on); None once every top-level function is in ``functions``.
    ``reader``: the :mod:`ksym.dwarf` reader that built this unit, reused by :func:`ksym.dwarf.expand_for`
    and :func:`ksym.dwarf.walk_on` (not stored on disk; None for a unit loaded from a record)."""

    _fields = ("offset", "name", "comp_dir", "functions", "lines", "walk")
    __slots__ = (*_fields, "_reach", "_spans", "_starts", "reader")

    def __init__(self, offset: int, name: str, comp_dir: str, functions: list[FunctionNode], lines: LineTable | None,
                 walk: WalkState | None = None) -> None:
        self.offset = offset
        self.name = name
        self.comp_dir = comp_dir
        self.functions = functions
        self.lines = lines
        self.walk = walk
        # (low, high, function index) for every range of every function, sorted by low (see finish)
        self._starts: list[int] = []
        self._spans: list[tuple[int, int, int]] = []
        self._reach: list[int] = []
        self.reader: object | None = None

    def to_record(self) -> tuple[Any, ...]:
        """The unit as plain data for the on-disk index (which writes it with ``marshal``): the
        record :func:`unit_to_record` gives and :meth:`from_record` reads."""
        return (self.offset, self.name, self.comp_dir, [f.to_record() for f in self.functions],
                None if self.lines is None else self.lines.to_record(),
                None if self.walk is None else self.walk.to_record())

    @classmethod
    def from_record(cls, rec: Sequence[Any]) -> CompiledUnit:
        """The unit :meth:`to_record` wrote.

        :raises ValueError, TypeError, IndexError: ``rec`` is not such a record."""
        offset, name, comp_dir, fns, lines, walk = rec
        state = None
        if walk is not None:  # a unit stored part way (the on-disk index): the walk's record
            from .unit_state import WalkState

            state = WalkState.from_record(walk)
        return cls(int(offset), str(name), str(comp_dir), FunctionNode.from_records(fns),
                   None if lines is None else LineTable.from_record(lines), state).finish()

    def finish(self) -> CompiledUnit:
        spans = [(lo, hi, i) for i, fn in enumerate(self.functions) for lo, hi in fn.ranges if hi > lo]
        spans.sort()
        self._spans = spans
        self._starts = [s[0] for s in spans]
        # running maximum of the span ends: a backward scan can stop once nothing earlier reaches further
        reach = []
        top = 0
        for _lo, hi, _i in spans:
            if hi > top:  # noqa: PLR1730 - max() is a call per span
                top = hi
            reach.append(top)
        self._reach = reach
        return self

    def containing(self, address: int) -> list[tuple[int, int]]:
        """(function index, length of its range holding ``address``) for every function containing it."""
        out = []
        i = bisect.bisect_right(self._starts, address) - 1
        spans = self._spans
        reach = self._reach
        while i >= 0 and reach[i] > address:
            lo, hi, idx = spans[i]
            if address < hi:
                out.append((idx, hi - lo))
            i -= 1
        return out

    def needs_walk(self, address: int) -> bool:
        """Whether the top-level walk stopped early and no function read so far holds ``address``."""
        return self.walk is not None and not self.containing(address)

    def needs_expansion(self, address: int) -> bool:
        """Whether a function holding ``address`` still has an unread subtree."""
        fns = self.functions
        return any(fns[i].child_pos >= 0 for i, _ln in self.containing(address))

    def best_function(self, address: int) -> int:
        """Index of bfd's "best fit" function for ``address`` (smallest containing range, ties to the
        later DIE), or -1."""
        best = -1
        best_len = -1
        for idx, ln in self.containing(address):
            if best < 0 or ln < best_len or (ln == best_len and idx > best):
                best, best_len = idx, ln
        return best


# --- (de)serialisation for the on-disk index ----------------------------------------------------------


def unit_to_record(cu: CompiledUnit) -> tuple[Any, ...]:
    """``cu`` as plain data for the on-disk index (:meth:`CompiledUnit.to_record`)."""
    return cu.to_record()


def _u32s(values: Sequence[int]) -> array:  # type: ignore[type-arg]
    """``values`` as unsigned 32-bit ints, wrapped as binutils keeps line numbers (see LineTable.lookup)."""
    try:
        return array("I", values)
    except OverflowError:
        return array("I", [v & 0xFFFFFFFF for v in values])


def unit_from_record(rec: Sequence[Any]) -> CompiledUnit:
    """The unit :func:`unit_to_record` wrote (:meth:`CompiledUnit.from_record`).

    :raises ValueError, TypeError, IndexError: ``rec`` is not such a record."""
    return CompiledUnit.from_record(rec)
