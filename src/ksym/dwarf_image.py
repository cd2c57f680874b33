"""One image's DWARF: its sections, address → compilation unit, the units read so far, and their chains.

:class:`DwarfImage` serves both the vmlinux :class:`ksym.symbolizer.Symbolizer` and the module
:class:`ksym.modules.ModuleSymbolizer`:

- its :class:`ksym.dwarf.DwarfSections` come from a :class:`SectionSource`, opened on first use:
  :class:`FileSections` (views over a read-only mapping of a vmlinux, or its decompressed sections) or
  :class:`ReadySections` (bytes made by the caller: a module's relocated sections);
- an address finds its unit through ``.debug_aranges`` (:class:`ArangeTable`, bisected) and, for the
  units .debug_aranges misses, the ranges of every unit DIE (:class:`UnitRange`, read once);
- units (:class:`ksym.units.CompiledUnit`) are kept in an LRU cache (by offset and the part the store
  keeps them in: :meth:`UnitStore.part_of`), read only as far as the addresses
  asked need and read on later (:meth:`DwarfImage.read_on`); a :class:`UnitStore` (the index session of a
  vmlinux, the portable index file, none for a module) supplies units stored before and receives units
  read or grown. The DWARF parser (:mod:`ksym.dwarf`) is imported only when something is read from the
  sections: an answer from a stored unit that holds what the address needs reads the records alone;
- damaged DWARF met while reading is the one :class:`ksym.errors.BadFileError` naming the file, section
  and offset (:func:`ksym.units.damage_is_bad_file`); a unit that failed to read is forgotten.
"""

from __future__ import annotations

import bisect
import mmap
from array import array
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from .compress import SHF_COMPRESSED
from .errors import BadFileError
from .lru import LRUCache
from .model import SourceLocation
from .records import NamedTuple
from .symbols import Section, SymbolTable, inline_chain

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

    from . import dwarf as D
    from .units import CompiledUnit

__all__ = [
    "DWARF_SECTIONS",
    "ArangeTable",
    "DwarfImage",
    "FileSections",
    "ReadySections",
    "SectionSource",
    "UnitRange",
    "UnitStore",
    "dwarf_sections",
]

#: :class:`ksym.dwarf.DwarfSections` field → ELF section name.
DWARF_SECTIONS = {
    "info": ".debug_info", "abbrev": ".debug_abbrev", "line": ".debug_line", "debug_str": ".debug_str",
    "line_str": ".debug_line_str", "ranges": ".debug_ranges", "rnglists": ".debug_rnglists",
    "addr": ".debug_addr", "str_offsets": ".debug_str_offsets", "aranges": ".debug_aranges",
}

_SHT_NOBITS = 8


def dwarf_sections(path: object, contents: Callable[[str], bytes | memoryview | None], little_endian: bool,
                   elfclass: int, require_dwarf: Callable[[], None]) -> D.DwarfSections:
    """The DWARF sections of an image from ``contents`` (section name → its bytes, or None): what a
    :class:`SectionSource` made of decompressed or relocated bytes opens.

    :raises MissingDebugInfoError: (from ``require_dwarf``) no .debug_info.
    :raises BadFileError: .debug_info without .debug_abbrev.
    """
    from . import dwarf as D

    kw: dict[str, Any] = {k: contents(name) for k, name in DWARF_SECTIONS.items()}
    if kw["info"] is None or kw["abbrev"] is None:
        require_dwarf()
        raise BadFileError(f"{path}: DWARF without .debug_abbrev")
    return D.DwarfSections(little_endian=little_endian, default_address_size=elfclass // 8, **kw)


class UnitRange(NamedTuple):
    """An address range of a unit .debug_aranges misses (read from its unit DIE)."""

    low: int
    high: int
    #: the unit's offset in .debug_info
    unit: int

    def to_record(self) -> tuple[int, int, int]:
        return (self.low, self.high, self.unit)

    @classmethod
    def from_record(cls, rec: Sequence[int]) -> UnitRange:
        """:raises TypeError, ValueError, IndexError: not a record of this shape."""
        return cls(int(rec[0]), int(rec[1]), int(rec[2]))


class ArangeTable:
    """``.debug_aranges`` sorted by start: address → unit offset by bisection."""

    __slots__ = ("ends", "maxlen", "starts", "units")

    def __init__(self, starts: array[int], ends: array[int], units: array[int], maxlen: int | None = None) -> None:
        self.starts = starts
        self.ends = ends
        self.units = units
        # no range is longer: the backward scan from the bisection point stops this far below
        self.maxlen = max((b - a for a, b in zip(starts, ends)), default=0) if maxlen is None else maxlen

    @classmethod
    def of(cls, aranges: Iterable[tuple[int, int, int]]) -> ArangeTable:
        """From ``(start, end, unit offset)`` triples in any order."""
        ar = sorted(aranges)
        return cls(array("Q", [a[0] for a in ar]), array("Q", [a[1] for a in ar]), array("Q", [a[2] for a in ar]))

    def unit_of(self, address: int) -> int | None:
        starts = self.starts
        i = bisect.bisect_right(starts, address) - 1
        low = address - self.maxlen
        while i >= 0 and starts[i] >= low:
            if address < self.ends[i]:
                return int(self.units[i])
            i -= 1
        return None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ArangeTable):
            return NotImplemented
        return (self.starts, self.ends, self.units) == (other.starts, other.ends, other.units)

    __hash__ = None  # type: ignore[assignment]

    def to_record(self) -> tuple[bytes, bytes, bytes, int]:
        return (array("Q", self.starts).tobytes(), array("Q", self.ends).tobytes(),
                array("Q", self.units).tobytes(), self.maxlen)

    @classmethod
    def from_record(cls, rec: Sequence[Any]) -> ArangeTable:
        """:raises TypeError, ValueError, IndexError: not a record of this shape."""
        cols = []
        for i in range(3):
            a = array("Q")
            a.frombytes(rec[i])
            cols.append(a)
        if not len(cols[0]) == len(cols[1]) == len(cols[2]):
            raise ValueError("aranges columns of different lengths")
        maxlen = rec[3]
        if type(maxlen) is not int or maxlen < 0:
            raise TypeError("aranges: the longest range")
        return cls(cols[0], cols[1], cols[2], maxlen)


class SectionSource(Protocol):
    """Where a :class:`DwarfImage` gets its sections (opened on first use) and what it releases."""

    def open(self) -> D.DwarfSections: ...

    def close(self) -> None: ...


class UnitStore(Protocol):
    """Persistence of units for a :class:`DwarfImage` (:class:`ksym.index.ImageIndex`)."""

    def part_of(self, offset: int, address: int | None) -> int:
        """Which stored part of the unit at ``offset`` answers ``address``: 0, the unit itself, for a
        store that keeps units whole; from 1 on for one that keeps them in address parts (the portable
        index file: :mod:`ksym.unit_parts`), each a unit of its own that answers its addresses as the
        whole unit would."""
        ...

    def load_unit(self, offset: int, part: int = 0) -> CompiledUnit | None:
        """Part ``part`` (:meth:`part_of`) of the unit stored before (part 0: the unit, possibly read
        part way), or None."""
        ...

    def unit_changed(self, unit: CompiledUnit) -> None:
        """``unit`` was read or grew: store it (now or at the session's flush)."""
        ...

    def forget_unit(self, offset: int) -> None:
        """A unit that failed to read part way: never store it."""
        ...

    def load_unit_ranges(self) -> list[UnitRange] | None: ...

    def save_unit_ranges(self, ranges: list[UnitRange]) -> None: ...


class ReadySections:
    """Sections the caller makes (a module's relocated sections), on first use."""

    def __init__(self, make: Callable[[], D.DwarfSections]) -> None:
        self._make = make

    def open(self) -> D.DwarfSections:
        return self._make()

    def close(self) -> None:
        pass


class FileSections:
    """The DWARF sections of an ELF file: views over a read-only mapping of the file when its section
    table says they are stored plainly; else (SHF_COMPRESSED, legacy ``.zdebug_*``, no .debug_info)
    what ``decompressed`` makes. ``opened``: sections already at hand (made while indexing the file)."""

    def __init__(self, path: str | Path, sections: Sequence[Section], little_endian: bool, elfclass: int,
                 decompressed: Callable[[], D.DwarfSections], opened: D.DwarfSections | None = None) -> None:
        self.path = path
        self._table = sections
        self._little_endian = little_endian
        self._elfclass = elfclass
        self._decompressed = decompressed
        self._opened = opened
        #: the mapping of the file (None until sections were read through it, and after close)
        self.mapping: mmap.mmap | None = None

    def open(self) -> D.DwarfSections:
        from . import dwarf as D

        if self._opened is not None:
            opened, self._opened = self._opened, None
            return opened
        by_name = {s.name: s for s in self._table}
        if any(by_name[n].flags & SHF_COMPRESSED for n in DWARF_SECTIONS.values() if n in by_name) or any(
            s.name.startswith(".zdebug_") for s in self._table
        ) or not all(n in by_name for n in (".debug_info", ".debug_abbrev")):
            return self._decompressed()
        if self.mapping is None:
            try:
                with open(self.path, "rb") as f:
                    self.mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except OSError as exc:
                from .errors import FileNotFoundKsymError

                raise FileNotFoundKsymError(f"{self.path}: cannot open: {exc.strerror}") from None
        view = memoryview(self.mapping)
        kw: dict[str, Any] = {}
        for k, name in DWARF_SECTIONS.items():
            s = by_name.get(name)
            kw[k] = view[s.offset : s.offset + s.size] if s is not None and s.type != _SHT_NOBITS else None
        return D.DwarfSections(little_endian=self._little_endian, default_address_size=self._elfclass // 8, **kw)

    def close(self) -> None:
        self._opened = None
        if self.mapping is not None:
            try:
                self.mapping.close()
            except BufferError:
                pass  # a view is still held somewhere: the mapping goes with it
            self.mapping = None


class DwarfImage:
    """One image's DWARF (see the module's documentation).

    :param path: the file, named in errors.
    :param source: where the sections come from (opened on first use).
    :param aranges: the image's .debug_aranges (None: read from the sections on first use).
    :param units: where units are stored between sessions (None: only in memory).
    :param cache_size: how many units are kept in memory.

    :meth:`close` drops the units in memory and releases the sections (a later lookup opens them again).
    """

    def __init__(self, path: str | Path, source: SectionSource, aranges: ArangeTable | None = None, *,
                 units: UnitStore | None = None, cache_size: int = 256) -> None:

        self.path = path
        self._source = source
        self._sections: D.DwarfSections | None = None
        self._aranges = aranges
        self._fallback: list[UnitRange] | None = None
        self._store = units
        # (unit offset, part: UnitStore.part_of) → the unit or part
        self._units: LRUCache[tuple[int, int], CompiledUnit] = LRUCache(maxsize=cache_size)
        #: offsets of the units read from the DWARF (or read further) in this session
        self.units_read: set[int] = set()
        #: how many units came from the :class:`UnitStore`
        self.units_loaded = 0

    # -- sections --

    @property
    def sections(self) -> D.DwarfSections:
        """The DWARF sections, opened now if they are not yet."""
        if self._sections is None:
            self._sections = self._source.open()
        return self._sections

    @property
    def opened(self) -> bool:
        """Whether the sections were opened (a lookup answered from stored units opens nothing)."""
        return self._sections is not None

    # -- address → unit --

    def unit_offset(self, address: int) -> int | None:
        """The .debug_info offset of the unit covering ``address``, or None."""
        if self._aranges is None:
            from . import dwarf as D

            sec = self.sections
            with D.damage_is_bad_file(self.path):
                self._aranges = ArangeTable.of(D.read_aranges(sec))
        found = self._aranges.unit_of(address)
        if found is not None:
            return found
        for r in self._unit_ranges():
            if r.low <= address < r.high:
                return r.unit
        return None

    def _unit_ranges(self) -> list[UnitRange]:
        """For units missing from .debug_aranges: the ranges of every unit DIE (read once, then stored)."""
        from . import dwarf as D

        if self._fallback is None:
            stored = self._store.load_unit_ranges() if self._store is not None else None
            if stored is not None:
                self._fallback = stored
            else:
                sec = self.sections
                assert self._aranges is not None
                covered = set(self._aranges.units)
                out: list[UnitRange] = []
                with D.damage_is_bad_file(self.path):
                    for off, _end in D.scan_cu_headers(sec):
                        if off not in covered:
                            out.extend(UnitRange(lo, hi, off) for lo, hi in D.unit_ranges(sec, off))
                out.sort()
                self._fallback = out
                if self._store is not None:
                    self._store.save_unit_ranges(out)
        return self._fallback

    # -- units --

    def in_memory(self, offset: int) -> bool:
        """Whether the unit at ``offset`` (itself, not a part) is in the in-memory cache."""
        return (offset, 0) in self._units

    @property
    def units_in_memory(self) -> int:
        return len(self._units)

    def compiled_unit(self, offset: int, address: int | None = None) -> CompiledUnit:
        """The unit at ``offset`` of .debug_info (from memory, the store or the DWARF); given an
        ``address``, a unit read from the DWARF is read only as far as that address needs
        (:meth:`read_on` reads on), and a store that keeps units in parts gives the part that answers
        it (without an address, such a store's unit is read from the DWARF)."""
        part = self._store.part_of(offset, address) if self._store is not None else 0
        cu = self._units.get((offset, part))
        if cu is not None:
            return cu
        if self._store is not None:
            cu = self._store.load_unit(offset, part)
            if cu is not None:
                self.units_loaded += 1
        if cu is None:
            from . import dwarf as D

            with D.damage_is_bad_file(self.path):
                cu = D.compile_unit(self.sections, offset, until=address, expect=address)
            part = 0
            self._changed(cu)
        self._units[(offset, part)] = cu
        return cu

    def read_on(self, cu: CompiledUnit, address: int, functions: bool = True) -> None:
        """Read as much more of ``cu`` as ``address`` needs: its line program, and with ``functions``
        its top-level functions and the subtree of the one holding it; a unit that grew goes to the
        store. The sections are opened, and the DWARF parser imported, only when something is missing."""
        lines = cu.lines
        more_lines = lines is not None and not lines.covers(address)
        walk = functions and cu.needs_walk(address)
        if not (more_lines or walk or (functions and cu.needs_expansion(address))):
            return
        from . import dwarf as D

        changed = False
        # the readers leave ``cu`` as it was when they meet damage, and a unit that failed to read is
        # dropped from memory and from the pending writes: nothing half-read is kept or stored
        try:
            with D.damage_is_bad_file(self.path):
                if more_lines:
                    assert lines is not None
                    changed = D.extend_lines(lines, self.sections, address)
                if walk:
                    changed = D.walk_on(self.sections, cu, address) or changed
                # asked again: the walk may have read the function holding it, subtree unread
                if functions and cu.needs_expansion(address):
                    changed = D.expand_for(self.sections, cu, address) or changed
        except BadFileError:
            self.forget_unit(cu.offset)
            raise
        if changed:
            self._changed(cu)

    def _changed(self, cu: CompiledUnit) -> None:
        self.units_read.add(cu.offset)
        if self._store is not None:
            self._store.unit_changed(cu)

    def forget_unit(self, offset: int) -> None:
        """A unit whose reading failed part way: never stored (its record may be half grown), and read
        again from the start if asked again."""
        if self._store is not None:
            self._store.forget_unit(offset)
        self._units.pop((offset, 0), None)

    # -- answers --

    def chain(self, address: int, symbols: SymbolTable,
              display: Callable[[str], str]) -> tuple[tuple[SourceLocation, ...], int]:
        """The inline chain at ``address``, innermost first, as addr2line -i reports it (paths shown
        by ``display``), and the start of the line row covering it (-1: none)."""
        from .units import damage_is_bad_file

        off = self.unit_offset(address)
        if off is None:
            return inline_chain(None, address, symbols, display), -1
        cu = self.compiled_unit(off, address)
        self.read_on(cu, address)
        row = cu.lines.row_address(address) if cu.lines is not None else None
        with damage_is_bad_file(self.path):  # a file number past the line table's files
            chain = inline_chain(cu, address, symbols, display)
        return chain, -1 if row is None else row

    def line_at(self, address: int) -> tuple[str, int, int, int] | None:
        """The innermost line at ``address`` (addr2line without -i) from the line table alone:
        (file, line, column, discriminator), or None."""
        off = self.unit_offset(address)
        if off is None:
            return None
        part = self._store.part_of(off, address) if self._store is not None else 0
        cu = self._units.get((off, part))
        if cu is None and part:
            cu = self.compiled_unit(off, address)  # a part of a unit is small: it is loaded whole
        if cu is not None:
            self.read_on(cu, address, functions=False)
            from .units import damage_is_bad_file

            with damage_is_bad_file(self.path):
                return cu.lines.lookup(address) if cu.lines is not None else None
        from . import dwarf as D

        with D.damage_is_bad_file(self.path):
            table = D.unit_line_table(self.sections, off)
            return table.lookup(address) if table is not None else None

    def close(self) -> None:
        """Drop the units in memory and release the sections."""
        self._units.clear()
        self._sections = None
        self._source.close()
