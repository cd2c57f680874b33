"""Locate: the ELF symbol table as kallsyms and faddr2line see it.

The table is read straight from the raw ``.symtab`` bytes (119,000 symbols in a distribution vmlinux,
too many for pyelftools' one object per symbol) into parallel arrays that the on-disk index stores
as they are.

Lookups:

* :meth:`SymbolTable.faddr2line_matches` — every FUNC symbol of a name, in symbol-table order, with the
  size the kernel's scripts/faddr2line computes (distance to the next symbol of the same section that
  lies at or beyond the symbol's ELF size: kallsyms counts the padding);
* :meth:`SymbolTable.matches` — a name looked up in one :class:`SymbolView`: faddr2line's (FUNC symbols,
  what ``ksym resolve`` answers) or kallsyms' (every text name a stack trace can print, untyped assembly
  labels such as ``entry_SYSCALL_64_after_hwframe`` included, what ``ksym annotate`` answers);
* :meth:`SymbolTable.containing` — the text symbol an address falls in, for raw addresses;
* :meth:`SymbolTable.bfd_function` — the symbol binutils' ``elf_find_function`` names for an address
  that no DWARF function covers (assembly), so ksym prints what addr2line prints there.
"""

from __future__ import annotations

import bisect
import itertools
import operator
import re
import struct
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from enum import Enum

from .errors import SkipKind, SkipReason, SymbolNotFoundError
from .model import Resolution, SourceLocation
from .records import NamedTuple
from .spec import FuncSpec

# typing.TYPE_CHECKING without importing typing (or the unit records) for a lookup that needs neither:
# type checkers take any TYPE_CHECKING as true
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar

    from .units import CompiledUnit

    #: a column of the table: an array built here, or a view of a mapped index file (:meth:`SymbolTable.from_buffer`)
    Column = array[int] | memoryview[int]

__all__ = ["FaddrMatch", "Section", "Symbol", "SymbolTable", "SymbolView"]

STT_NOTYPE = 0
STT_OBJECT = 1
STT_FUNC = 2
STT_SECTION = 3
STT_FILE = 4
STT_COMMON = 5
STT_TLS = 6
STT_GNU_IFUNC = 10
STB_LOCAL = 0
STV_HIDDEN = 2
SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00
SHF_EXECINSTR = 0x4
SHF_ALLOC = 0x2


_KALLSYMS_IGNORED = (b"$", b".L", b"__efistub_", b"__kvm_nvhe_$", b"__kvm_nvhe_.L", b"__AArch64ADRPThunk_")
#: a NUL, then an empty name or one of _KALLSYMS_IGNORED (in a name blob with a NUL put before it)
_IGNORED_NAME_START = b"\0(?=\0|" + b"|".join(re.escape(p) for p in _KALLSYMS_IGNORED) + b")"


class Section(NamedTuple):
    """One ELF section header."""

    index: int  # type: ignore[assignment]  # a field named as tuple.index, which it hides
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int


class Symbol(NamedTuple):
    """One ELF symbol."""

    name: str
    address: int
    elf_size: int
    type: int
    bind: int
    visibility: int
    shndx: int


class SymbolView(str, Enum):
    """Which symbols a frame's name may name, and how their sizes are counted.

    ``FADDR2LINE``: FUNC symbols only, sized as scripts/faddr2line sizes them (``ksym resolve`` and
    ``ksym faddr2line``, byte-identical to the script). ``KALLSYMS``: every name kallsyms prints for
    code (``nm`` types ``t``/``T``, what scripts/decode_stacktrace.sh looks names up in), functions and
    the untyped (NOTYPE) labels of assembly code alike, each sized as the kernel sizes it in a stack
    trace, up to the next symbol kallsyms prints (``ksym annotate``). The two sizes differ where a
    function holds a label kallsyms prints (``__put_user_1`` / ``__put_user_nocheck_1``) or where
    faddr2line counts symbols kallsyms leaves out (arm64's mapping symbols).
    """

    FADDR2LINE = "faddr2line"
    KALLSYMS = "kallsyms"

    def __str__(self) -> str:
        return self.value


class FaddrMatch(NamedTuple):
    """A symbol matching a frame's name in a :class:`SymbolView`, with the size that view gives it (a FUNC
    symbol: faddr2line's size)."""

    symbol: Symbol
    #: kallsyms-style size, or None when faddr2line would fail ("bad symbol size").
    size: int | None
    #: Next symbol address used for the size (for faddr2line's messages).
    next_address: int | None

    def to_record(self) -> tuple[Any, ...]:
        s = self.symbol
        return (s.name, s.address, s.elf_size, s.type, s.bind, s.visibility, s.shndx, self.size, self.next_address)

    @classmethod
    def from_record(cls, rec: Sequence[Any]) -> FaddrMatch:
        """:raises TypeError, ValueError: not a record of this shape."""
        name, address, elf_size, typ, bind, visibility, shndx, size, nxt = rec
        if not isinstance(name, str) or any(type(v) is not int for v in (address, elf_size, typ, bind, visibility,
                                                                          shndx)):
            raise TypeError("not a symbol")
        if any(v is not None and type(v) is not int for v in (size, nxt)):
            raise TypeError("not a size")
        return cls(Symbol(name, address, elf_size, typ, bind, visibility, shndx), size, nxt)


def _signed64(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >> 63 else v


class NameTable:
    """Symbol names as one blob plus an index sorted by name, so a loaded index answers lookups by
    name (bisect) without decoding 100,000 strings first."""

    def __init__(self, blob: bytes | memoryview, offsets: Column, order: Column) -> None:
        # bytes, or a view of a mapped file (:meth:`SymbolTable.from_buffer`: a copy of a kernel's 2.8 MB
        # of names costs more than the lookup of a frame); names are read out of it as bytes
        self.blob = blob
        self.offsets = offsets
        self.order = order

    @classmethod
    def build(cls, raw: list[bytes]) -> NameTable:
        offsets = array("I", [0])
        offsets.extend(itertools.accumulate(len(r) + 1 for r in raw))
        blob = b"\0".join(raw) + b"\0" if raw else b""
        order = array("I", sorted(range(len(raw)), key=raw.__getitem__))
        return cls(blob, offsets, order)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def raw(self, i: int) -> bytes:
        return bytes(self.blob[self.offsets[i] : self.offsets[i + 1] - 1])

    def __getitem__(self, i: int) -> str:
        return str(self.blob[self.offsets[i] : self.offsets[i + 1] - 1], "utf-8", "replace")

    def __iter__(self) -> Iterator[str]:
        for i in range(len(self)):
            yield self[i]

    def lookup(self, name: str) -> list[int]:
        """Indices of every symbol called ``name``, in symbol-table order."""
        r = name.encode("utf-8", "surrogateescape")
        lo = bisect.bisect_left(self.order, r, key=self.raw)
        out = []
        while lo < len(self.order) and self.raw(self.order[lo]) == r:
            out.append(self.order[lo])
            lo += 1
        out.sort()
        return out

    def with_prefix(self, prefix: str) -> list[int]:
        """Indices of every symbol whose name starts with ``prefix``, in symbol-table order."""
        r = prefix.encode("utf-8", "surrogateescape")
        lo = bisect.bisect_left(self.order, r, key=self.raw)
        out = []
        while lo < len(self.order) and self.raw(self.order[lo]).startswith(r):
            out.append(self.order[lo])
            lo += 1
        out.sort()
        return out


class SymbolTable:
    """Parallel arrays over the ELF symbol table (``.dynsym`` entries first, as readelf lists them)."""

    def __init__(
        self,
        names: NameTable,
        values: Column,
        sizes: Column,
        infos: bytes,
        others: bytes,
        shndx: Column,
        sections: list[Section],
    ) -> None:
        self.names = names
        self.values = values
        self.sizes = sizes
        self.infos = infos
        self.others = others
        self.shndx = shndx
        self.sections = sections
        self._faddr_order: tuple[Column, Column] | None = None
        self._text: tuple[Column, Column] | None = None
        self._bfd: tuple[Column, Column] | None = None
        #: ELF ``e_machine`` (``EM_AARCH64``): selects binutils' per-architecture symbol rules.
        self.machine: str | None = None
        #: How many entries at the start come from ``.dynsym``: bfd (addr2line's symbol fallback) reads
        #: ``.symtab`` alone.
        self.dynamic_count = 0
        self._first_file_after_symbol: int | None = None
        self._matches: dict[str, list[FaddrMatch]] = {}
        #: set on a table of some symbols only (:meth:`named`): gives the whole table
        self.whole: Callable[[], SymbolTable] | None = None
        #: set on a table read from a stored buffer (:meth:`from_buffer`): the error (naming the file) a
        #: lookup raises when a stored index column points past the table (see :meth:`_past_columns`)
        self.damaged: Callable[[str], Exception] | None = None

    # -- construction --

    @classmethod
    def from_raw(
        cls,
        tables: Iterable[tuple[bytes, bytes]],
        sections: list[Section],
        little_endian: bool = True,
        elfclass: int = 64,
    ) -> SymbolTable:
        """Build from (symtab bytes, strtab bytes) pairs."""
        raw: list[bytes] = []
        values = array("Q")
        sizes = array("Q")
        infos = bytearray()
        others = bytearray()
        shndx = array("I")
        e = "<" if little_endian else ">"
        noff: Sequence[int]
        info: Sequence[int]
        other: Sequence[int]
        sh: Sequence[int]
        value: Sequence[int]
        size: Sequence[int]
        for data, strtab in tables:
            if elfclass == 64 and little_endian and sys.byteorder == "little":
                # columns straight from the table (Elf64_Sym: name u32, info u8, other u8, shndx u16,
                # value u64, size u64), sliced in C
                body = memoryview(data)[24 : len(data) - len(data) % 24]
                if not body:
                    continue
                noff = body.cast("I")[0::6].tolist()
                info, other = bytes(body[4::24]), bytes(body[5::24])
                sh = body.cast("H")[3::12].tolist()
                q = body.cast("Q")
                value, size = array("Q"), array("Q")
                value.frombytes(q[1::3].tobytes())
                size.frombytes(q[2::3].tobytes())
            elif elfclass == 64:
                ent = 24
                cols = list(zip(*struct.iter_unpack(e + "IBBHQQ", data[ent: len(data) - len(data) % ent])))
                if not cols:
                    continue
                noff, info, other, sh, value, size = cols
            else:
                ent = 16
                cols = list(zip(*struct.iter_unpack(e + "IIIBBH", data[ent: len(data) - len(data) % ent])))
                if not cols:
                    continue
                noff, value, size, info, other, sh = cols
            # names: split the string table once; offsets into the middle of a string (tail merging)
            # fall back to a search
            starts: dict[int, bytes] = {}
            pos = 0
            for part in strtab.split(b"\0"):
                starts[pos] = part
                pos += len(part) + 1
            get = starts.get
            find = strtab.find
            for o in noff:
                r = get(o)
                if r is None:
                    r = strtab[o: find(b"\0", o)]
                raw.append(r)
            values.extend(value)
            sizes.extend(size)
            infos.extend(info)
            others.extend(other)
            shndx.extend(sh)
        return cls(NameTable.build(raw), values, sizes, bytes(infos), bytes(others), shndx, sections)

    @classmethod
    def deferred(cls, sections: list[Section], whole: Callable[[], SymbolTable]) -> SymbolTable:
        """A table of no symbols whose :meth:`bfd_function` asks ``whole`` for the whole table: what an
        inline chain is given while no lookup has needed the table (a frame's name was looked up in a
        portable index file's name pieces, :meth:`ksym.portable.PortableFile.faddr2line_matches`)."""
        table = cls(NameTable.build([]), array("Q"), array("Q"), b"", b"", array("I"), sections)
        table.whole = whole
        return table

    @classmethod
    def named(
        cls, symtab: bytes, strtab: bytes, sections: list[Section], name: str, faddr2line: bool = False,
        whole: Callable[[], SymbolTable] | None = None,
    ) -> SymbolTable | None:
        """A table of only the symbols of one little-endian ELF64 ``.symtab`` (on a little-endian host)
        that a lookup of ``name`` reads, in symbol-table order, without building the whole table: the
        symbols called ``name``; with ``faddr2line``, also every symbol at the address of a FUNC one and,
        for each FUNC one, those at the next address of its section at or beyond its ELF size, so that
        :meth:`faddr2line_matches` of ``name`` gives on it what it gives on the whole table. None when
        that cannot be had so (no FUNC symbol of the name while a promoted ``name.llvm.`` name, which
        the whole table looks up then, is in the string table; a string table not ending in a NUL; a
        next symbol very far off): the whole table
        answers then. ``whole`` gives the whole table for what the subset cannot answer
        (:meth:`bfd_function`)."""
        body = memoryview(symtab)[24 : len(symtab) - len(symtab) % 24]
        if not strtab.endswith(b"\0") or not body:
            return None
        n = len(body) // 24
        key = name.encode("utf-8", "surrogateescape") + b"\0"
        offsets = []
        p = strtab.find(key)
        while p >= 0:  # any place the name ends a string (the linker merges tails of names)
            offsets.append(p)
            p = strtab.find(key, p + 1)
        if len(offsets) <= 16:
            keep = {i for p in offsets for i in _entries_with(symtab, n, 0, p.to_bytes(4, "little"))}
        else:  # a common tail (or an empty name): one pass over every name offset
            keep = set(itertools.compress(range(n), map(set(offsets).__contains__, body.cast("I")[0::6])))
        if faddr2line:
            q, hq = body.cast("Q"), body.cast("H")
            funcs = sorted(i for i in keep if body[24 * i + 4] & 0xF == STT_FUNC)
            # no symbol to walk from: the whole table's answer is its promoted ``name.llvm.<digits>``
            # symbols, and with none of those in the string table, nothing
            if not funcs and (name + ".llvm.").encode("utf-8", "surrogateescape") in strtab:
                return None
            blocks: dict[int, list[tuple[int, int]]] = {}
            for i in funcs:
                a, section = q[3 * i + 1], hq[12 * i + 3]
                keep.update(j for j, v in _block(symtab, n, a >> 16, blocks) if v == a)
                # the first address faddr2line's forward walk can stop at: past the symbol, at least its
                # ELF size on, less than 2**63 on (a farther one is a negative distance to it)
                lo, hi = a + max(q[3 * i + 2], 1), min(a + (1 << 63), 1 << 64)
                block, passes = lo >> 16, 0
                while lo < hi:
                    if len(blocks) <= 64:
                        if block << 16 >= hi:
                            break
                        within = [(v, j) for j, v in _block(symtab, n, block, blocks) if lo <= v < hi]
                        if not within:
                            block += 1
                            continue
                        nxt = min(within)[0]
                        at = [j for v, j in within if v == nxt]
                    else:  # far on (the last symbol of its section): a pass over every value
                        passes += 1
                        if passes > 4:
                            return None
                        values = q[1::3]
                        found = min(filter(range(lo, hi).__contains__, values), default=None)
                        if found is None:
                            break
                        nxt = found
                        at = list(itertools.compress(range(n), map(nxt.__eq__, values)))
                    keep.update(at)
                    if any(hq[12 * j + 3] == section for j in at):
                        break
                    lo = nxt + 1
        idx = sorted(keep)
        vq, hq, noff = body.cast("Q"), body.cast("H"), body.cast("I")
        raw = [strtab[o : strtab.find(b"\0", o)] for o in (noff[6 * i] for i in idx)]
        t = cls(NameTable.build(raw), array("Q", [vq[3 * i + 1] for i in idx]),
                array("Q", [vq[3 * i + 2] for i in idx]), bytes(body[24 * i + 4] for i in idx),
                bytes(body[24 * i + 5] for i in idx), array("I", [hq[12 * i + 3] for i in idx]),
                sections)
        t.whole = whole
        return t

    def __len__(self) -> int:
        return len(self.names)

    def symbol(self, i: int) -> Symbol:
        info = self.infos[i]
        return Symbol(self.names[i], self.values[i], self.sizes[i], info & 0xF, info >> 4,
                      self.others[i] & 3, self.shndx[i])

    def section_of_index(self, shndx: int) -> Section | None:
        for s in self.sections:
            if s.index == shndx:
                return s
        return None

    # -- by name --

    def indices_named(self, name: str) -> list[int]:
        """Indices of every symbol called ``name``, in symbol-table order."""
        try:
            return self.names.lookup(name)
        except IndexError as exc:
            raise self._past_columns(exc) from None

    def _past_columns(self, exc: IndexError) -> Exception:
        """What a lookup raises when it reads an index past the columns: only a stored table's index
        columns (name order, address order, text index: :meth:`from_buffer`) can hold such an index,
        and they are checked where a lookup reads them (each entry it reads, in C, as the columns are
        indexed) rather than whole on load: that is the table's damage (:attr:`damaged`). A table built
        here never does (the IndexError is a defect, raised as it is)."""
        return exc if self.damaged is None else self.damaged("an index column points past the table")

    # -- persistence --

    def to_record(self) -> tuple[Any, ...]:
        order, oaddrs = self._address_order()
        tidx, taddrs = self._text_index()
        n = self.names
        return (bytes(n.blob), n.offsets.tobytes(), n.order.tobytes(), self.values.tobytes(),
                self.sizes.tobytes(), self.infos, self.others, self.shndx.tobytes(), order.tobytes(),
                oaddrs.tobytes(), tidx.tobytes(), taddrs.tobytes())

    @classmethod
    def from_record(cls, rec: tuple[Any, ...], sections: list[Section]) -> SymbolTable:
        def arr(code: str, data: bytes) -> array:  # type: ignore[type-arg]
            a = array(code)
            a.frombytes(data)
            return a

        (blob, offs, norder, values, sizes, infos, others, shndx, order, oaddrs, tidx, taddrs) = rec
        names = NameTable(bytes(blob), arr("I", offs), arr("I", norder))
        t = cls(names, arr("Q", values), arr("Q", sizes), bytes(infos), bytes(others), arr("I", shndx),
                sections)
        t._faddr_order = (arr("I", order), arr("Q", oaddrs))
        t._text = (arr("I", tidx), arr("Q", taddrs))
        return t

    # the flat form: a header, then each column at an 8-byte aligned offset (see to_buffer)
    _BUFFER_MAGIC = b"KSYMTAB\x01"
    _BUFFER_COLUMNS = (("offsets", "I"), ("name_order", "I"), ("values", "Q"), ("sizes", "Q"), ("infos", "B"),
                       ("others", "B"), ("shndx", "I"), ("order", "I"), ("order_addrs", "Q"), ("text", "I"),
                       ("text_addrs", "Q"), ("blob", "B"))

    def to_buffer(self) -> bytes:
        """The table as one flat buffer for :meth:`from_buffer`: ``_BUFFER_MAGIC``, the (offset, length in
        bytes) of each column of ``_BUFFER_COLUMNS`` as little-endian u64 pairs, then the columns in
        native byte order, each at an 8-byte aligned offset. A mapped file of it loads without copying
        or decoding the columns."""
        order, oaddrs = self._address_order()
        tidx, taddrs = self._text_index()
        n = self.names
        cols = [n.offsets.tobytes(), n.order.tobytes(), self.values.tobytes(), self.sizes.tobytes(),
                bytes(self.infos), bytes(self.others), self.shndx.tobytes(), order.tobytes(), oaddrs.tobytes(),
                tidx.tobytes(), taddrs.tobytes(), bytes(n.blob)]
        head = len(self._BUFFER_MAGIC) + 16 * len(cols) + 1  # + the byte order
        pos = head + (-head % 8)
        spans = []
        for c in cols:
            spans.append((pos, len(c)))
            pos += len(c) + (-len(c) % 8)
        out = bytearray(self._BUFFER_MAGIC)
        out += b"l" if sys.byteorder == "little" else b"b"
        for off, size in spans:
            out += struct.pack("<QQ", off, size)
        for (off, _size), c in zip(spans, cols):
            out += bytes(off - len(out))
            out += c
        return bytes(out)

    @classmethod
    def from_buffer(cls, buf: Any, sections: list[Section],
                    damaged: Callable[[str], Exception] | None = None) -> SymbolTable:
        """The table of :meth:`to_buffer`'s ``buf`` (bytes, or a mapped file: its numeric columns and its
        name blob stay views of it, so the buffer must outlive the table). ``damaged(what)`` gives the error a lookup raises
        when an index column points past the table (:attr:`damaged`).

        Checked here: the header, each column's bounds and length (every column of the symbol count,
        the name offsets one more, the text index's two alike and no longer), the last name offset
        within the name blob. Not here (a whole pass over a column in Python costs more than opening
        the file does): where the index columns point, checked as a lookup reads them
        (:meth:`_past_columns`). Other numbers (addresses, sizes, section indices, name offsets) are
        any a symbol table could hold: a lookup reads them as it reads an ELF file's.

        :raises ValueError: not such a buffer, or written with another byte order."""
        view = memoryview(buf)
        magic = cls._BUFFER_MAGIC
        ncols = len(cls._BUFFER_COLUMNS)
        head = len(magic) + 1 + 16 * ncols
        if len(view) < head or bytes(view[: len(magic)]) != magic:
            raise ValueError("not a symbol table buffer")
        if bytes(view[len(magic) : len(magic) + 1]) != (b"l" if sys.byteorder == "little" else b"b"):
            raise ValueError("a symbol table buffer of the other byte order")
        col: dict[str, Any] = {}
        try:
            for k, (name, code) in enumerate(cls._BUFFER_COLUMNS):
                off, size = struct.unpack_from("<QQ", view, len(magic) + 1 + 16 * k)
                width = 8 if code == "Q" else 4 if code == "I" else 1
                if off + size > len(view) or off % 8 or size % width:
                    raise ValueError("a symbol table buffer cut short")
                part = view[off : off + size]
                if name == "blob":  # names are read out of it as bytes: it stays a view
                    col[name] = part
                    continue
                with part:  # the byte columns are read with bytes' methods (translate): copied
                    col[name] = bytes(part) if code == "B" else part.cast("Q" if code == "Q" else "I")
            n = len(col["values"])
            text = len(col["text"])
            if (any(len(col[c]) != n for c in ("name_order", "sizes", "infos", "others", "shndx", "order",
                                               "order_addrs"))
                    or len(col["offsets"]) != n + 1 or len(col["text_addrs"]) != text or text > n
                    or (n and col["offsets"][n] > len(col["blob"]))):
                raise ValueError("a symbol table buffer whose columns do not agree")
        except BaseException:
            for c in col.values():
                if isinstance(c, memoryview):
                    c.release()
            raise
        finally:
            view.release()
        names = NameTable(col["blob"], col["offsets"], col["name_order"])
        t = cls(names, col["values"], col["sizes"], col["infos"], col["others"], col["shndx"], sections)
        t._faddr_order = (col["order"], col["order_addrs"])
        t._text = (col["text"], col["text_addrs"])
        t.damaged = damaged
        return t

    def release(self) -> None:
        """Release the columns that are views of a buffer (:meth:`from_buffer`), so that a mapped file
        under them can be closed; the table is unusable after."""
        cols = [self.names.blob, self.names.offsets, self.names.order, self.values, self.sizes, self.shndx]
        for pair in (self._faddr_order, self._text, self._bfd):
            if pair is not None:
                cols.extend(pair)
        for c in cols:
            if isinstance(c, memoryview):
                c.release()

    def address_of(self, name: str) -> int | None:
        """Address of the first symbol of this name (functions first), or None."""
        idx = self.indices_named(name)
        if not idx:
            return None
        for i in idx:
            if self.infos[i] & 0xF == STT_FUNC:
                return int(self.values[i])
        return int(self.values[idx[0]])

    def _address_order(self) -> tuple[Column, Column]:
        """All symbols sorted by address (stable: symbol-table order within one address)."""
        if self._faddr_order is None:
            vals = self.values.tolist()  # a list's items are read faster than an array's
            idx = sorted(range(len(vals)), key=vals.__getitem__)
            # (an array is made from a list far faster than from an iterator)
            self._faddr_order = (array("I", idx), array("Q", list(map(vals.__getitem__, idx))))
        return self._faddr_order

    _TYPES: ClassVar[dict[int, str]] = {0: "NOTYPE", 1: "OBJECT", 2: "FUNC", 3: "SECTION", 4: "FILE", 5: "COMMON", 6: "TLS",
              10: "IFUNC"}
    _BINDS: ClassVar[dict[int, str]] = {0: "LOCAL", 1: "GLOBAL", 2: "WEAK", 10: "UNIQUE"}
    _VIS: ClassVar[dict[int, str]] = {0: "DEFAULT", 1: "INTERNAL", 2: "HIDDEN", 3: "PROTECTED"}

    def _readelf_tail(self, i: int) -> bytes:
        size = self.sizes[i]
        sz = f"{size:5d}" if size < 100000 else f"0x{size:x}"
        info = self.infos[i]
        return (f"{sz} {self._TYPES.get(info & 0xF, '<unknown>'):7} {self._BINDS.get(info >> 4, '<unknown>'):6} "
                f"{self._VIS.get(self.others[i] & 3, ''):8} {self.shndx[i]:4} {self.names[i]}").encode()

    def faddr2line_matches(self, name: str) -> list[FaddrMatch]:
        """FUNC symbols called ``name`` with faddr2line's size for each, in symbol-table order.

        Like faddr2line, the name must be the whole symbol name: ``f.llvm.123`` (a static that clang's
        ThinLTO promoted) matches as given. One extension: when no FUNC symbol has the name, the
        promoted ones ``name.llvm.<digits>`` match instead, since kernels 6.2 to 6.10 built with
        CONFIG_LTO_CLANG print stack traces without that suffix (where faddr2line finds nothing).
        """
        got = self._matches.get(name)
        if got is None:
            try:
                got = self._faddr2line_matches(name)
                if not got and ".llvm." not in name:
                    got = self._llvm_promoted_matches(name)
            except IndexError as exc:
                raise self._past_columns(exc) from None
            if len(self._matches) > 8192:
                self._matches.clear()
            self._matches[name] = got
        return got

    def faddr2line_names(self) -> dict[str, list[FaddrMatch]]:
        """Every name :meth:`faddr2line_matches` finds symbols for, by name, with what it finds: the names
        of FUNC symbols and the names their ``.llvm.<digits>`` suffix was added to (any other name finds
        none). A portable index file stores these, so that a frame's name is looked up without the whole
        table (:mod:`ksym.portable`)."""
        infos = self.infos
        names: set[str] = set()
        for i in range(len(infos)):
            if infos[i] & 0xF == STT_FUNC:
                name = self.names[i]
                names.add(name)
                cut = name.rfind(".llvm.")
                if cut >= 0 and name[cut + 6 :].isdigit():
                    names.add(name[:cut])
        out: dict[str, list[FaddrMatch]] = {}
        for name in sorted(names):
            got = self.faddr2line_matches(name)
            if got:
                out[name] = got
        return out

    def matches(self, name: str, view: SymbolView) -> list[FaddrMatch]:
        """The symbols ``name`` names in ``view`` (see :class:`SymbolView`), in symbol-table order; in
        either view a bare name matches the ``name.llvm.<digits>`` symbols when none has the name itself
        (see :meth:`faddr2line_matches`)."""
        if view is not SymbolView.KALLSYMS:
            return self.faddr2line_matches(name)
        try:
            got = self._kallsyms_matches(name)
            if not got and ".llvm." not in name:
                for n in self._promoted_names(name, functions_only=False):
                    got.extend(self._kallsyms_matches(n))
        except IndexError as exc:
            raise self._past_columns(exc) from None
        return got

    def _kallsyms_matches(self, name: str) -> list[FaddrMatch]:
        """The code symbols called ``name`` that kallsyms prints (those :meth:`containing` names addresses
        with: functions and untyped labels of executable sections, less the names scripts/kallsyms.c
        ignores), each sized as the kernel sizes it in a stack trace: the distance to the next higher
        address of a symbol kallsyms prints (the end of its section for the last one)."""
        idx, addrs = self._text_index()
        out = []
        for i in self.indices_named(name):
            value = self.values[i]
            lo = bisect.bisect_left(addrs, value)
            hi = bisect.bisect_right(addrs, value)
            if i not in idx[lo:hi]:
                continue  # not code, or a name kallsyms leaves out
            sym = self.symbol(i)
            nxt: int | None = None
            size: int | None = None
            if hi < len(addrs):
                nxt = addrs[hi]
                size = nxt - value
            else:
                sec = self.section_of_index(sym.shndx)
                if sec is not None and sec.addr + sec.size > value:
                    size = sec.addr + sec.size - value
            out.append(FaddrMatch(sym, size, nxt))
        return out

    def _llvm_promoted_matches(self, name: str) -> list[FaddrMatch]:
        # in symbol-table order, as faddr2line would list them had it been given each full name
        out: list[FaddrMatch] = []
        for n in self._promoted_names(name, functions_only=True):
            out.extend(self._faddr2line_matches(n))
        return out

    def _promoted_names(self, name: str, functions_only: bool) -> list[str]:
        """The distinct ``name.llvm.<digits>`` names (statics clang's ThinLTO promoted), in symbol-table
        order of their first symbol; with ``functions_only``, of FUNC symbols only."""
        prefix = name + ".llvm."
        hits = sorted({i for i in self.names.with_prefix(prefix) if self.names[i][len(prefix):].isdigit()
                       and (not functions_only or self.infos[i] & 0xF == STT_FUNC)})
        return list(dict.fromkeys(self.names[i] for i in hits))

    def _faddr2line_matches(self, name: str) -> list[FaddrMatch]:
        out = []
        for i in self.indices_named(name):
            if self.infos[i] & 0xF != STT_FUNC:
                continue
            sym = self.symbol(i)
            order, addrs = self._address_order()
            # faddr2line walks this section's symbols sorted by readelf's line from the address on
            # (``sort --key=2``): find ours among those at its address, then scan forward
            lo = bisect.bisect_left(addrs, sym.address)
            hi = bisect.bisect_right(addrs, sym.address)
            same = sorted((j for j in order[lo:hi] if self.shndx[j] == sym.shndx), key=self._readelf_tail)
            size: int | None = None
            nxt: int | None = None
            found = 0
            for j in same:
                if self.sizes[j] == sym.elf_size and self.names[j] == name:
                    found = 1
                    continue
                if found and sym.elf_size <= 0:
                    # another symbol at the same address: faddr2line takes the zero distance
                    nxt = sym.address
                    found = 2
                    size = 0
                    break
            if found == 1:
                pos = hi
                while pos < len(order):
                    j = order[pos]
                    pos += 1
                    if self.shndx[j] != sym.shndx:
                        continue
                    cur = addrs[pos - 1]
                    diff = _signed64(cur - sym.address)
                    nxt = cur
                    if diff < sym.elf_size:
                        continue
                    size = diff
                    found = 2
                    break
            if found == 1:
                sec = self.section_of_index(sym.shndx)
                if sec is not None:
                    size = _signed64(sec.size - sym.address)
            out.append(FaddrMatch(sym, size if size is not None and size > 0 else None, nxt))
        return out

    # -- by address --

    def _text_index(self) -> tuple[Column, Column]:
        """The code symbols kallsyms prints, by (address, functions before untyped aliases, symbol-table
        order): taken from the address order (stable), so only the rare runs at one address are sorted."""
        if self._text is None:
            n = len(self.infos)
            exec_secs = {s.index for s in self.sections if s.flags & SHF_EXECINSTR}
            wanted = (STT_FUNC, STT_NOTYPE, STT_GNU_IFUNC)
            # per symbol, 0 or 1: its type is wanted and its section holds code
            type_ok = self.infos.translate(bytes(1 if (v & 0xF) in wanted else 0 for v in range(256)))
            in_code = bytes(map(exec_secs.__contains__, self.shndx))
            keep = bytearray((int.from_bytes(type_ok, "little") & int.from_bytes(in_code, "little"))
                             .to_bytes(n, "little"))
            # names kallsyms leaves out (scripts/kallsyms.c is_ignored_symbol): mapping symbols ($x, $d)
            # and local labels, also under arm64's __kvm_nvhe_ prefix, and the EFI stub's namespace; and
            # empty names. Found in the name blob (a NUL, then such a name) rather than name by name.
            offsets = self.names.offsets
            for m in re.finditer(_IGNORED_NAME_START, b"\0" + self.names.blob):
                i = bisect.bisect_left(offsets, m.start())
                if i < n and offsets[i] == m.start():
                    keep[i] = 0
            order, _addrs = self._address_order()
            idx = list(itertools.compress(order, map(keep.__getitem__, order)))
            vals = self.values.tolist()
            addrs = list(map(vals.__getitem__, idx))
            # functions before untyped aliases at one address: the order is by (address, symbol-table
            # order) already, so only the runs of one address (rare) are sorted, stably, by type
            untyped = self.infos.translate(bytes(0 if (v & 0xF) == STT_FUNC else 1 for v in range(256)))
            same = list(itertools.compress(range(1, len(addrs)), map(operator.eq, addrs[1:], addrs[:-1])))
            k = 0
            while k < len(same):
                start, end = same[k] - 1, same[k] + 1
                k += 1
                while k < len(same) and same[k] == end:
                    end += 1
                    k += 1
                idx[start:end] = sorted(idx[start:end], key=untyped.__getitem__)
            self._text = (array("I", idx), array("Q", addrs))
        return self._text

    def containing(self, address: int) -> tuple[Symbol, int] | None:
        """(symbol, size) of the text symbol ``address`` falls in, or None: the symbol kallsyms names it
        with, sized as the kernel prints it (``%pS``): up to the next symbol kallsyms prints (the end of
        its section for the last one), even where the ELF size is larger (``entry_SYSCALL_64``: 0x29,
        not its ELF size 0x1ab; a function holding a label kallsyms prints)."""
        idx, addrs = self._text_index()
        k = bisect.bisect_right(addrs, address) - 1
        if k < 0:
            return None
        start = addrs[k]
        # first (preferred) symbol at that address
        while k > 0 and addrs[k - 1] == start:
            k -= 1
        try:
            sym = self.symbol(idx[k])
        except IndexError as exc:
            raise self._past_columns(exc) from None
        nk = bisect.bisect_right(addrs, start)
        if nk < len(addrs):
            size = addrs[nk] - start
        else:
            sec = self.section_of_index(sym.shndx)
            size = (sec.addr + sec.size - start) if sec else max(sym.elf_size, 1)
        if address >= start + max(size, 1):
            return None
        return sym, size

    def section_containing(self, address: int) -> Section | None:
        for s in self.sections:
            if s.flags & SHF_ALLOC and s.addr <= address < s.addr + s.size and s.type != 8:
                return s
        return None

    def _bfd_index(self) -> tuple[Column, Column]:
        """The symbols bfd's ``maybe_function_sym`` accepts, sorted by (address, symbol-table order)."""
        if self._bfd is None:
            infos, others, sizes, shndx = self.infos, self.others, self.sizes, self.shndx
            aarch64 = self.machine == "EM_AARCH64"
            # elfNN_aarch64_maybe_function_sym: FUNC and NOTYPE only, local mapping symbols out;
            # _bfd_elf_maybe_function_sym: anything but OBJECT, TLS, SECTION, FILE
            types = (STT_FUNC, STT_NOTYPE) if aarch64 else (STT_FUNC, STT_NOTYPE, STT_GNU_IFUNC)
            type_ok = infos.translate(bytes(1 if (v & 0xF) in types else 0 for v in range(256)))
            # names bfd never takes, found in the name blob rather than symbol by symbol: empty ones, and
            # arm64's mapping symbols (local labels, ``.L*`` and ``$*``, are functions to bfd on x86-64)
            names = self.names
            starts = {int(o): i for i, o in enumerate(names.offsets[:-1])}
            odd: set[int] = set()
            lead = rb"\0(?=\$)" if aarch64 else rb"\0(?=\0)"
            for m in re.finditer(lead, b"\0" + names.blob):
                i = starts.get(m.start())
                if i is None:
                    continue
                if not aarch64 or ((infos[i] >> 4) == STB_LOCAL and _aarch64_mapping_symbol(names.raw(i))):
                    odd.add(i)
            # annobin's marker symbols: local hidden NOTYPE of size 0
            odd.update(i for i in range(len(infos)) if infos[i] == STT_NOTYPE | (STB_LOCAL << 4)
                       and not sizes[i] and (others[i] & 3) == STV_HIDDEN)
            order, _addrs = self._address_order()  # by (address, symbol-table order)
            first = self.dynamic_count
            try:
                idx = array("I", [i for i in order if i >= first and type_ok[i] and 0 < shndx[i] < SHN_LORESERVE
                                  and i not in odd])
            except IndexError as exc:
                raise self._past_columns(exc) from None
            vals = self.values
            self._bfd = (idx, array("Q", [vals[i] for i in idx]))
        return self._bfd

    def bfd_function(self, address: int) -> tuple[str, str | None] | None:
        """(name, file) binutils' elf_find_function gives ``address``, used when DWARF has no function.

        binutils 2.40's rule: of the symbols of the address's section that start at or below it, those
        at the highest start; among them the first with the largest size (size 0 counts as 1).
        ``file`` is the STT_FILE symbol before the chosen one, which bfd reports when the symbol is
        local (or no file symbol followed other symbols yet), else None."""
        if self.whole is not None:
            return self.whole().bfd_function(address)
        for sec in self.sections:
            # addr2line tries each allocated section holding the address in turn (SHT_NOBITS ones too: a
            # debug-only file's code sections), until one has a symbol
            if sec.flags & SHF_ALLOC and sec.addr <= address < sec.addr + sec.size:
                found = self._bfd_function_in(sec, address)
                if found is not None:
                    return found
        return None

    def _bfd_function_in(self, sec: Section, address: int) -> tuple[str, str | None] | None:
        idx, addrs = self._bfd_index()
        k = bisect.bisect_right(addrs, address) - 1
        shndx = self.shndx
        while k >= 0 and shndx[idx[k]] != sec.index:
            k -= 1
        if k < 0:
            return None
        best_val = addrs[k]
        lo = bisect.bisect_left(addrs, best_val)
        best: int | None = None
        best_size = 0
        for j in range(lo, k + 1):
            i = idx[j]
            if shndx[i] != sec.index:
                continue
            size = int(self.sizes[i]) or 1
            if size > best_size:
                best, best_size = i, size
        if best is None:
            return None
        return self.names[best], self._bfd_file_of(best)

    def _bfd_file_of(self, i: int) -> str | None:
        infos = self.infos
        if self._first_file_after_symbol is None:
            seen_symbol = False
            first = len(infos)
            for j in range(self.dynamic_count, len(infos)):
                if infos[j] & 0xF == STT_FILE:
                    if seen_symbol:
                        first = j
                        break
                else:
                    seen_symbol = True
            self._first_file_after_symbol = first
        if (infos[i] >> 4) != STB_LOCAL and i > self._first_file_after_symbol:
            return None
        for j in range(i - 1, self.dynamic_count - 1, -1):
            if infos[j] & 0xF == STT_FILE:
                return self.names[j]
        return None


def _entries_with(symtab: bytes, n: int, field: int, value: bytes) -> list[int]:
    """The entries (0: the first after the null one, below ``n``) of an ELF64 ``symtab`` whose field at
    byte ``field`` of the entry starts with ``value``, found by the bytes' search."""
    out = []
    p = symtab.find(value, 24)
    while p >= 0:
        i, at = divmod(p - field, 24)
        if at == 0 and 1 <= i <= n:
            out.append(i - 1)
        p = symtab.find(value, p + 1)
    return out


def _block(symtab: bytes, n: int, block: int, seen: dict[int, list[tuple[int, int]]]) -> list[tuple[int, int]]:
    """(entry, st_value) of the entries of an ELF64 little-endian ``symtab`` whose value lies in the 64 KiB
    ``block`` (its upper six bytes), found by the bytes' search; kept in ``seen``."""
    got = seen.get(block)
    if got is None:
        got = []
        if not block >> 48:
            for i in _entries_with(symtab, n, 10, block.to_bytes(6, "little")):
                got.append((i, int.from_bytes(symtab[24 * i + 32 : 24 * i + 40], "little")))
        seen[block] = got
    return got

def _aarch64_mapping_symbol(name: bytes) -> bool:
    """bfd_is_aarch64_special_symbol_name: ``$x``, ``$d`` (mapping), ``$m``, ``$f``, ``$p`` (tags),
    alone or followed by ``.anything``."""
    return len(name) >= 2 and name[:1] == b"$" and name[1:2] in b"xdmfp" and (len(name) == 2 or name[2:3] == b".")


def faddr2line_select(
    spec: FuncSpec, matches: list[FaddrMatch], chain_for: Callable[[FaddrMatch, int], tuple[SourceLocation, ...]],
    refuse_zero: bool = True,
) -> list[Resolution]:
    """faddr2line's walk over the symbols named in ``spec``: the checks, in its order, and one
    :class:`Resolution` per symbol that passes (``chain_for(match, address)`` gives its chain).
    ``refuse_zero=False`` leaves out the script's ``bad address`` check of address 0 (in a module: a
    function at section offset 0, offset 0), which addr2line answers.

    :raises SymbolNotFoundError: none passed; ``reasons`` holds a :class:`SkipReason` per symbol passed
        over, with the script's line (``skipping ...`` it prints on stdout, ``bad ...`` ones on stderr,
        after which it stops looking: :attr:`SkipReason.stops`).
    """
    out: list[Resolution] = []
    reasons: list[SkipReason] = []
    for m in matches:
        sym = m.symbol
        if m.size is None:
            nxt = f"0x{m.next_address:016x}" if m.next_address is not None else ""
            reasons.append(SkipReason(SkipKind.BAD_SYMBOL_SIZE,
                                      f"bad symbol size: sym_addr: 0x{sym.address:016x} cur_sym_addr: {nxt}"))
            break
        addr = (sym.address + spec.offset) & ((1 << 64) - 1)
        if addr == 0 and refuse_zero:
            reasons.append(SkipReason(SkipKind.BAD_ADDRESS,
                                      f"bad address: 0x{sym.address:016x} + {spec.offset_text}"))
            break
        if spec.size is not None and spec.size != m.size:
            reasons.append(SkipReason(SkipKind.SIZE_MISMATCH,
                                      f"skipping {spec.name} address at 0x{addr:x} due to size mismatch "
                                      f"({spec.size_text} != 0x{m.size:x})"))
            continue
        if spec.offset > m.size:
            reasons.append(SkipReason(SkipKind.OFFSET_BEYOND_SIZE,
                                      f"skipping {spec.name} address at 0x{addr:x} due to size mismatch "
                                      f"({spec.offset_text} > 0x{m.size:x})"))
            continue
        out.append(Resolution(spec.text.strip(), addr, spec.name, spec.offset, m.size, spec.offset_text,
                              chain_for(m, addr)))
    if not out:
        why = (f"no symbol named {spec.name}" if not matches
               else "; ".join(r.text for r in reasons) or "no usable symbol")
        raise SymbolNotFoundError(f"no match for {spec.text.strip()} ({why})", spec.name, tuple(reasons))
    return out


def _raw_symbol_file(name: str | None) -> str:
    """The file of bfd's symbol-table answer: its STT_FILE symbol's name ("" for an unnamed one, which
    addr2line prints as an empty file), ``??`` with none."""
    return "??" if name is None else name


def _shown_symbol_file(name: str | None, display: Callable[[str], str]) -> str:
    return "" if name == "" else display(_raw_symbol_file(name))


def inline_chain(
    cu: CompiledUnit | None, address: int, symbols: SymbolTable, display: Callable[[str], str]
) -> tuple[SourceLocation, ...]:
    """The inline chain at ``address`` as ``addr2line -i`` reports it, innermost first, from its unit
    (``None``: no unit covers it) with function subtrees already read; ``display`` turns a DWARF path
    into the path shown (``file``), ``raw_file`` keeps the DWARF one."""
    if cu is None:
        found = symbols.bfd_function(address)
        if found is None:
            return ()
        fname, ffile = found
        return (SourceLocation(fname, _shown_symbol_file(ffile, display), 0, raw_file=_raw_symbol_file(ffile)),)
    loc = cu.lines.lookup(address) if cu.lines is not None else None
    fi = cu.best_function(address)
    sfile: str | None = None
    if fi >= 0:
        name = cu.functions[fi].name
    else:
        found = symbols.bfd_function(address)
        name, sfile = found if found is not None else ("??", None)
    if loc is None and fi < 0 and name == "??":
        return ()
    # with no line row, bfd takes the file from the symbol table's STT_FILE entry (local symbols)
    if loc is None:
        out = [SourceLocation(name, _shown_symbol_file(sfile, display), 0, 0, 0, _raw_symbol_file(sfile), False)]
        disc = 0
    else:
        raw, line, col, disc = loc
        out = [SourceLocation(name, display(raw), line, col, disc, raw, False)]
    from .units import TAG_INLINED_SUBROUTINE  # a unit was read: its records are loaded already

    if fi >= 0 and cu.functions[fi].tag == TAG_INLINED_SUBROUTINE and cu.lines is not None:
        fn = cu.functions[fi]
        while fn.parent >= 0:
            parent = cu.functions[fn.parent]
            craw = cu.lines.file_name(fn.call_file) if fn.call_file or cu.lines.file_base == 0 else "??"
            # addr2line repeats the innermost discriminator on every "(inlined by)" line; so do we
            out.append(SourceLocation(parent.name, display(craw), fn.call_line, fn.call_column, disc, craw, False))
            fn = parent
    if len(out) > 1:
        out = [SourceLocation(x.function, x.file, x.line, x.column, x.discriminator, x.raw_file,
                              i < len(out) - 1) for i, x in enumerate(out)]
    return tuple(out)
