"""The portable index file: everything ``ksym resolve`` and ``ksym annotate`` need of one kernel build,
in one file that is used without the debug vmlinux (``ksym index build``, ``Symbolizer.from_index``).

The layout is documented in docs/index-format.md. In short: a 64-byte header (magic, format version,
lengths, a CRC-32 of the header, its metadata and its block table), the metadata (build id,
banner, kernel tag, ELF facts, section table, faddr2line's path prefix), a table of blocks, and the
blocks: the symbol table as :meth:`ksym.symbols.SymbolTable.to_buffer` writes it (stored plainly so
that it is mapped, not read), ``.debug_aranges``, the ranges of units .debug_aranges misses, a
directory of the compilation units, a directory of code chunks, a directory of name pieces, and the
payload those directories point into: each unit read whole (:func:`ksym.dwarf.compile_whole_unit`)
and cut into address parts of a few KB (:mod:`ksym.unit_parts`), each compressed on its own, with
the unit's part table, the image's allocated section contents in 64 KiB chunks compressed on their
own, and faddr2line's matches of every name in pieces of a few dozen names, so one frame reads one
name piece and one part of a unit, and a call site one or two chunks.

Everything is checked where it is read: the header's CRC when the file is opened, each block's CRC
before it is used (the symbol table's when a lookup first needs the whole table), each part table's,
part's, chunk's and name piece's CRC before it is decompressed; lengths and counts are checked against the
file. A hostile file can make its CRCs
agree, so its contents are checked too (docs/index-format.md, "Safety"): what is cheap when the file is
opened, the rest where it is first used (a part of a unit when it is loaded: :func:`_whole_unit`; the symbol
table's index columns as a lookup reads them: :attr:`ksym.symbols.SymbolTable.damaged`). A damaged or
hostile file is one :class:`ksym.errors.BadFileError` naming the file (exit 4), never an answer from
damaged bytes, never another exception.
The file is memory-mapped read-only; nothing is read whole.

:class:`PortableFile` reads it (it is the :class:`ksym.dwarf_image.UnitStore` and the code source of a
Symbolizer made by ``Symbolizer.from_index``), :class:`PortableModule` a module it holds;
:class:`ksym.portable_write.PortableWriter` writes it (the builder:
:mod:`ksym.portable_build`); :func:`file_build_id` reads only the header, to check a file found by
build id.
"""

from __future__ import annotations

import bisect
import marshal
import mmap
import operator
import os
import struct
import zlib
from array import array
from collections.abc import Callable
from itertools import chain, count, repeat
from typing import Any, TypeVar

from .checksum import crc32
from .dwarf_image import ArangeTable, UnitRange
from .errors import BadFileError, FileNotFoundKsymError
from .records import NamedTuple
from .searchopts import path_text
from .session import ImageRecord
from .symbols import FaddrMatch, Section, SymbolTable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

    from . import dwarf as D
    from .dwarf_image import DwarfImage
    from .units import CompiledUnit, FunctionNode, LineTable

_T = TypeVar("_T")

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "BlockKind",
    "PortableFile",
    "PortableMeta",
    "file_build_id",
    "name_piece_of",
]

#: The first 8 bytes of every portable index file.
MAGIC = b"KSYMIDX\x00"
#: The format this ksym writes and reads; a file of another version is refused (exit 4).
FORMAT_VERSION = 4
#: magic, version, header length, file size, metadata length, block count, header CRC-32, reserved
_HEAD = struct.Struct("<8sIIQIII28x")
#: kind, codec, CRC-32 of the stored bytes, offset, stored length, length once decompressed
_BLOCK = struct.Struct("<HHIQQQ")
#: key (unit offset in .debug_info, or chunk address), payload offset, stored length, raw length, CRC-32
_ENTRY = struct.Struct("<QQIII4x")
#: this host stores numbers big-endian (the file's are little-endian)
_BIG_HOST = struct.pack("=H", 1) != struct.pack("<H", 1)
#: Code is stored in chunks of this many bytes (the last of a section shorter).
CODE_CHUNK = 64 * 1024
#: No header (metadata and block table) is longer: a longer one is damage.
MAX_HEADER = 16 << 20
#: No block or entry decompresses to more than this (the largest unit of a kernel is a few MB).
MAX_RAW = 256 << 20

CODEC_NONE = 0
#: format 1's zstd: not written or read since format 2
CODEC_ZLIB = 2
#: the zlib level of the units and code chunks
LEVEL = 9
#: About this many names go to a name piece (a few KB): a name is looked up by reading one.
NAMES_PER_PIECE = 48


class BlockKind:
    """The kinds of block (each at most once in a file)."""

    SYMBOLS = 1
    ARANGES = 2
    UNIT_RANGES = 3
    UNITS = 4
    CODE = 5
    PAYLOAD = 6
    #: optional (``ksym index build --modules``): the module directory
    MODULES = 7
    #: the directory of the name pieces: faddr2line's matches of each name (format 3)
    NAMES = 8


_REQUIRED = (
    BlockKind.SYMBOLS,
    BlockKind.ARANGES,
    BlockKind.UNIT_RANGES,
    BlockKind.UNITS,
    BlockKind.CODE,
    BlockKind.PAYLOAD,
    BlockKind.NAMES,
)
_OPTIONAL = (BlockKind.MODULES,)


class Block(NamedTuple):
    """One entry of the block table."""

    kind: int
    codec: int
    crc: int
    offset: int
    length: int
    raw_length: int


class Entry(NamedTuple):
    """One entry of the unit or code directory: a piece of the payload, compressed on its own."""

    #: the unit's .debug_info offset, or the chunk's first address
    key: int
    #: where the piece starts in the file
    offset: int
    length: int
    raw_length: int
    crc: int


class ModuleEntry(NamedTuple):
    """One entry of the module directory: a module's piece of the payload."""

    #: the module's name (``-`` as ``_``)
    name: str
    build_id: str | None
    offset: int
    length: int
    raw_length: int
    crc: int


class PortableMeta(NamedTuple):
    """The metadata of a portable index file (a ``marshal`` dict of plain values; docs/index-format.md)."""

    build_id: str | None
    banner: str | None
    kernel_tag: str | None
    machine: str | None
    elf_type: str
    elfclass: int
    little_endian: bool
    sections: tuple[Section, ...]
    dir_prefix: str | None
    dynamic_symbols: int
    #: the byte order of the symbol table's columns ("little" or "big")
    byteorder: str
    #: the name and size of the file it was made from
    source_name: str
    source_size: int
    created_by: str

    def to_bytes(self) -> bytes:
        """The metadata as ``marshal`` (format 4) of a dict with sorted keys: str, int, bool, None, lists
        (``marshal`` is built in, where ``json`` is an import on the way to the first answer)."""
        d = self._asdict()
        d["sections"] = [[s.index, s.name, s.type, s.flags, s.addr, s.offset, s.size] for s in self.sections]
        return marshal.dumps(dict(sorted(d.items())), 4)

    @classmethod
    def from_bytes(cls, data: bytes) -> PortableMeta:
        """:raises ValueError, TypeError: not such an object (not marshal data, a missing or mistyped field)."""
        try:
            d = marshal.loads(data)
        except (EOFError, ValueError, TypeError, OverflowError, RecursionError) as exc:
            raise ValueError(f"{type(exc).__name__}") from None
        if type(d) is not dict:
            raise ValueError("metadata is not a dict")

        def get(name: str, *types: type) -> Any:
            if name not in d:
                raise ValueError(f"metadata without {name}")
            v = d[name]
            if type(v) not in types:
                raise ValueError(f"metadata {name} of the wrong type")
            return v

        none = type(None)
        sections = _sections_of(get("sections", list))
        byteorder = get("byteorder", str)
        if byteorder not in ("little", "big"):
            raise ValueError("metadata: byte order")
        elfclass = get("elfclass", int)
        if elfclass not in (32, 64):
            raise ValueError("metadata: ELF class")
        dyn = get("dynamic_symbols", int)
        if dyn < 0:
            raise ValueError("metadata: dynamic symbols")
        return cls(
            build_id=get("build_id", str, none),
            banner=get("banner", str, none),
            kernel_tag=get("kernel_tag", str, none),
            machine=get("machine", str, none),
            elf_type=get("elf_type", str),
            elfclass=elfclass,
            little_endian=get("little_endian", bool),
            sections=sections,
            dir_prefix=get("dir_prefix", str, none),
            dynamic_symbols=dyn,
            byteorder=byteorder,
            source_name=get("source_name", str),
            source_size=get("source_size", int),
            created_by=get("created_by", str),
        )


class _Header(NamedTuple):
    """The parsed header, metadata and block table."""

    version: int
    length: int
    file_size: int
    meta: PortableMeta
    blocks: dict[int, Block]


def _bad(path: object, what: str) -> BadFileError:
    return BadFileError(f"{path}: damaged ksym index file: {what}")


def _damage(path: object, part: str) -> Callable[[str], BadFileError]:
    """The error a structure of the file checked where it is used raises (a symbol table's lookups:
    :attr:`ksym.symbols.SymbolTable.damaged`)."""
    return lambda what: _bad(path, f"{part}: {what}")


def _parse_header(path: object, head: bytes, read_rest: Any, actual_size: int) -> _Header:
    """The header of a file of ``actual_size`` bytes whose first 64 bytes are ``head``;
    ``read_rest(n)`` gives the next ``n`` bytes.

    :raises BadFileError: not such a file, another format version, or damaged."""
    if len(head) < 8 or head[:8] != MAGIC:
        raise BadFileError(f"{path}: not a ksym index file")
    if len(head) < _HEAD.size:
        raise _bad(path, "cut short in its header")
    _magic, version, length, file_size, meta_len, nblocks, crc = _HEAD.unpack_from(head)
    if version != FORMAT_VERSION:
        raise BadFileError(
            f"{path}: ksym index file of format {version}; this ksym reads format "
            f"{FORMAT_VERSION} (build the file again with this ksym)"
        )
    if file_size != actual_size:
        raise _bad(path, f"{actual_size} bytes long, its header says {file_size}")
    if (
        not (_HEAD.size <= length <= min(MAX_HEADER, actual_size))
        or length != _HEAD.size + meta_len + nblocks * _BLOCK.size
    ):
        raise _bad(path, "header lengths disagree")
    rest = read_rest(length - _HEAD.size)
    if len(rest) != length - _HEAD.size:
        raise _bad(path, "cut short in its header")
    zeroed = head[:32] + b"\0\0\0\0" + head[36 : _HEAD.size]
    if zlib.crc32(rest, zlib.crc32(zeroed)) != crc:
        raise _bad(path, "header checksum mismatch")
    try:
        meta = PortableMeta.from_bytes(bytes(rest[:meta_len]))
    except (TypeError, ValueError) as exc:
        raise _bad(path, f"metadata: {exc}") from None
    blocks: dict[int, Block] = {}
    for i in range(nblocks):
        b = Block._make(_BLOCK.unpack_from(rest, meta_len + i * _BLOCK.size))
        if b.kind in blocks:
            raise _bad(path, f"block kind {b.kind} twice")
        if b.kind not in _REQUIRED and b.kind not in _OPTIONAL:
            raise _bad(path, f"block of unknown kind {b.kind}")
        if (
            b.offset < length
            or b.offset + b.length > actual_size
            or b.codec not in (CODEC_NONE, CODEC_ZLIB)
            or b.raw_length > MAX_RAW
            or (b.codec == CODEC_NONE and b.raw_length != b.length)
        ):
            raise _bad(path, f"block {b.kind} out of bounds")
        blocks[b.kind] = b
    for k in _REQUIRED:
        if k not in blocks:
            raise _bad(path, f"no block of kind {k}")
    return _Header(version, length, file_size, meta, blocks)


def file_build_id(path: str | os.PathLike[str]) -> str:
    """The build id a portable index file was made for, reading and checking only its header.

    :raises FileNotFoundKsymError: no such file, or it cannot be read.
    :raises BadFileError: not a portable index file, another format version, a damaged header, or a
        file made from an image without a build id."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(_HEAD.size)
            hdr = _parse_header(path, head, f.read, size)
    except OSError as exc:
        raise FileNotFoundKsymError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not hdr.meta.build_id:
        raise BadFileError(f"{path}: ksym index file of an image without a build id")
    return hdr.meta.build_id


def _release(*objs: object) -> None:
    """Release those of ``objs`` that are views (of the mapping)."""
    for obj in objs:
        if isinstance(obj, memoryview):
            obj.release()


def _decompress(data: bytes | memoryview, raw_length: int) -> bytes:
    """A zlib stream that must decompress to exactly ``raw_length`` bytes and end where ``data`` ends
    (no more is ever decompressed than that).

    :raises ValueError: it does not."""
    if raw_length > MAX_RAW:
        raise ValueError("too long")
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, max(raw_length, 1))
        if len(out) == raw_length and not d.eof and d.decompress(d.unconsumed_tail, 1):
            raise ValueError("longer than its directory says")
    except zlib.error as exc:
        raise ValueError(str(exc)) from None
    if len(out) != raw_length or not d.eof or d.unused_data:
        raise ValueError("length mismatch")
    return out


def _u64s(raw: bytes | memoryview) -> Any:
    """``raw`` as little-endian u64s: a view of it when it is a view of the mapping on a little-endian
    host (nothing copied: the owner releases it, :meth:`PortableFile.close`), else an array copied from
    it (byte-swapped on a big-endian host)."""
    if isinstance(raw, memoryview) and not _BIG_HOST:
        return raw.cast("Q")
    a = array("Q")
    a.frombytes(raw)
    if _BIG_HOST:
        a.byteswap()
    return a


def _aranges_of(raw: bytes | memoryview) -> ArangeTable:
    """An ARANGES block's table: its columns views of ``raw`` when that is a view of the mapping on a
    little-endian host (nothing copied: :meth:`PortableFile.close` releases them), else copied from it.

    :raises ValueError: not one."""
    try:
        n, maxlen = struct.unpack_from("<QQ", raw)
    except struct.error:
        raise ValueError("cut short") from None
    if len(raw) != 16 + 24 * n:
        raise ValueError("length")
    cols = [_u64s(raw[16 + 8 * n * i : 16 + 8 * n * (i + 1)]) for i in range(3)]
    # sorted by start, no range longer than maxlen: as the writer made them (the CRC says these are
    # its bytes); a hostile file's order can only give it wrong units, which it could name anyway
    return ArangeTable(cols[0], cols[1], cols[2], maxlen)


def _unit_ranges_of(raw: bytes) -> list[UnitRange]:
    """A UNIT_RANGES block's ranges. :raises ValueError: not such a block."""
    if len(raw) % 24:
        raise ValueError("length")
    return [UnitRange(lo, hi, u) for lo, hi, u in struct.iter_unpack("<QQQ", raw)]


def _sections_of(secs: object) -> tuple[Section, ...]:
    """A section table as the metadata keeps it: lists of an index, a name and five numbers, none
    negative (checked column by column, in C). :raises ValueError: not one."""
    if type(secs) is not list:
        raise ValueError("sections: not a list")
    if set(map(type, secs)) - {list} or set(map(len, secs)) - {7}:
        raise ValueError("a malformed section")
    if secs:
        index, name, *numbers = zip(*secs)
        numbers.append(index)
        if set(map(type, name)) != {str} or set(map(type, chain(*numbers))) != {int} or min(map(min, numbers)) < 0:
            raise ValueError("a malformed section")
    # the records made in C (Section._make would check each one's length again)
    return tuple(map(_tuple_new, repeat(Section), secs))


_tuple_new = tuple.__new__


def _whole_unit(rec: Any, offset: int, size: int) -> CompiledUnit:
    """The unit of a record read from the file (``size``: the length of the ``marshal`` data it was
    read from), which must be of the unit at ``offset`` and whole (nothing left to read): a part of a
    vmlinux unit (:mod:`ksym.unit_parts`), or a module's unit.

    :raises ValueError: it is not."""
    from .units import CompiledUnit, FunctionNode, LineTable

    try:
        fns = _plain_unit_record(rec, size)
        if fns is None:
            raise ValueError("not a unit record")
        if rec[0] != offset:
            raise ValueError("another unit's record")
        # every field of exactly its type (checked above): the nodes are made without conversions
        cu = CompiledUnit(
            offset,
            rec[1],
            rec[2],
            FunctionNode.from_exact_records(fns),
            None if rec[4] is None else LineTable.from_record(rec[4]),
        ).finish()
    except (TypeError, IndexError, OverflowError, RecursionError) as exc:
        raise ValueError(type(exc).__name__) from None
    if cu.lines is not None:  # without pending decoder state (_plain_unit_record)
        _check_lines(cu.lines, cu.functions)
    return cu


def _check_lines(lines: LineTable, functions: list[FunctionNode]) -> None:
    """A line table read from the file must agree with itself where a lookup relies on it: its
    columns of one length, its sequences' rows within them, its file names strings, or None (a part of
    a unit leaves out the names it does not use: :mod:`ksym.unit_parts`) where no row and no call of
    ``functions`` names the file. The rest is what a line program could say, and a lookup checks it as
    it checks a line program's (a row's or a call's file number past the files is damage when a lookup
    reads it: :meth:`ksym.units.LineTable.file_name`).

    :raises ValueError: it does not."""
    rows = lines.rows
    n = len(lines.addrs)
    if any(len(c) != n for c in (rows.files, rows.lines, rows.cols, rows.discs, rows.ends)):
        raise ValueError("line table columns of different lengths")
    files = lines.files
    if set(map(type, files)) - {str, type(None)}:
        raise ValueError("a file name of the line table is not a string")
    if None in files:
        # the numbers named (a few dozen in a part), not the files (thousands in some units)
        base = lines.file_base
        for number in set(rows.files).union([f.call_file for f in functions]):
            i = number - base
            if 0 <= i < len(files) and files[i] is None:
                raise ValueError(f"file number {number}, which the line table leaves out, is named")
    for q in lines.seqs:
        if set(map(type, q)) - {int} or not 0 <= q.first_row <= q.end_row <= n:
            raise ValueError("a line sequence out of bounds")


class Directory:
    """The unit, code or name directory, or a unit's part table: the keys (for bisection) decoded at once,
    each entry when it is used (and then checked against the payload's bounds). The keys are checked
    as ``order`` says:

    - ``"increasing"``: strictly increasing (the code directory, a part table: an address is bisected
      to the entry at or below it);
    - ``"pieces"``: exactly 0 to n - 1, n at least 1 (the name directory: a piece is read by number);
    - ``"exact"``: not at all (the unit directory, thousands of entries read on every open: a unit is
      found by its exact key, so a key out of order can only hide a unit, which is damage when a
      lookup needs it, never give another unit's entry).

    ``raw``: the directory's bytes; a view of the mapping is kept (on a little-endian host: the entries are
    read from it, nothing is copied; :meth:`release` lets it go), other bytes are copied once."""

    def __init__(
        self, path: object, raw: bytes | memoryview, payload: Block, what: str, order: str = "increasing"
    ) -> None:
        if len(raw) % _ENTRY.size:
            raise _bad(path, f"{what} directory length")
        words = _u64s(raw)
        # the entries are unpacked (little-endian) from the words themselves, or on a big-endian host
        # from the bytes as the file has them
        self._raw: Any = bytes(raw) if _BIG_HOST else words
        #: the keys, for bisection (an array or a view of the mapping: made and compared in C)
        self.keys: Any = words[0::4]
        keys = self.keys
        if order == "pieces":
            if not keys or keys != array("Q", range(len(keys))):
                raise _bad(path, f"{what} directory: not its pieces in order")
        elif order == "increasing":
            # strictly increasing: in order (a sorted list is one run: sorting it compares each key
            # with the next, in C) and no key twice
            listed = keys.tolist()
            if listed != sorted(listed) or len(set(listed)) != len(listed):
                raise _bad(path, f"{what} directory out of order")
        self._path = path
        self._what = what
        self._low = payload.offset
        self._high = payload.offset + payload.length

    def __len__(self) -> int:
        return len(self.keys)

    def release(self) -> None:
        """Let go of the views of the mapping it reads (the owner's :meth:`PortableFile.close`)."""
        _release(self.keys, self._raw)

    def entry(self, i: int) -> Entry:
        """Entry ``i``. :raises BadFileError: it points outside the payload."""
        e = Entry._make(_ENTRY.unpack_from(self._raw, i * _ENTRY.size))
        if e.offset < self._low or e.offset + e.length > self._high or e.raw_length > MAX_RAW:
            raise _bad(self._path, f"{self._what} directory entry {e.key:#x} out of bounds")
        return e

    def find(self, key: int) -> Entry | None:
        """The entry of exactly ``key``, or None."""
        i = bisect.bisect_left(self.keys, key)
        return self.entry(i) if i < len(self.keys) and self.keys[i] == key else None

    def at_or_below(self, key: int) -> Entry | None:
        """The entry of the highest key at or below ``key``, or None."""
        i = bisect.bisect_right(self.keys, key) - 1
        return self.entry(i) if i >= 0 else None

    def entries(self) -> list[Entry]:
        return [self.entry(i) for i in range(len(self.keys))]


def name_piece_of(name: str, pieces: int) -> int:
    """The name piece (of ``pieces``) that holds ``name``'s matches, if any symbol has the name."""
    return zlib.crc32(name.encode("utf-8", "surrogatepass")) % pieces


def _name_matches(piece: Any, name: str) -> list[FaddrMatch]:
    """``name``'s matches in a name piece as ``marshal`` loaded it. :raises ValueError: not a piece."""
    if type(piece) is not dict:
        raise ValueError("not a dict")
    records = piece.get(name)
    if records is None:
        return []
    if type(records) is not tuple or not records:
        raise ValueError(f"{name}: not a tuple of matches")
    try:
        return [FaddrMatch.from_record(r) for r in records]
    except TypeError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _plain_unit_record(rec: Any, size: int) -> list[tuple[Any, ...]] | None:
    """The function records of ``rec`` (read from ``size`` bytes of ``marshal`` data) if it has the
    shape of a whole unit's record, else None: where a wrong type would make the loader allocate or
    work rather than fail (``bytes(n)`` of a number; ``str()`` of a nest of lists: ``marshal`` shares an
    object it holds twice, so a few bytes can hold a nest of 2**40 lists; ranges or line sequences read
    more often than the data holds bytes: one list shared by every function), and where the loader
    takes a field as it is. Its offset and names are exactly ``int`` and ``str``; its function records
    tuples of 9, every field exactly of its type (``int``, not a subclass such as ``bool``; the name a
    ``str``; the ranges a list of 2-tuples of ``int``, together no more ranges than ``size``); no
    function has an unread subtree (``child_pos`` -1 or below) and each one's enclosing function comes
    before it (``parent`` -1 or an earlier index); its line table's columns are bytes, its sequences of
    4, and it has no walk state and no pending decoder state (the line table's loader checks the rest
    field by field). Checked in C (``map``, ``zip``): a unit holds thousands of function records."""
    if not (
        type(rec) is tuple
        and len(rec) == 6
        and type(rec[0]) is int
        and type(rec[1]) is str
        and type(rec[2]) is str
        and type(rec[3]) is list
        and rec[5] is None
    ):
        return None
    fns: list[tuple[Any, ...]] = rec[3]
    if set(map(type, fns)) - {tuple} or set(map(len, fns)) - {9}:
        return None
    if fns:
        die, tag, ranges, names, parents, call_file, call_line, call_column, child_pos = zip(*fns)
        if set(map(type, names)) - {str}:
            return None
        if set(map(type, chain(die, tag, parents, call_file, call_line, call_column, child_pos))) - {int}:
            return None
        if set(map(type, ranges)) - {list} or sum(map(len, ranges)) > size:
            return None
        pairs = list(chain.from_iterable(ranges))
        if set(map(type, pairs)) - {tuple} or set(map(len, pairs)) - {2}:
            return None
        if set(map(type, chain.from_iterable(pairs))) - {int}:
            return None
        if max(child_pos) >= 0 or min(parents) < -1 or not all(map(operator.lt, parents, count())):
            return None
    lines = rec[4]
    if lines is None:
        return fns
    if (
        type(lines) is tuple
        and len(lines) == 8
        and type(lines[0]) is list
        and type(lines[1]) is bytes
        and type(lines[2]) is list
        and len(lines[2]) == 4
        and all(type(c) is bytes for c in lines[2])
        and type(lines[3]) is bytes
        and type(lines[4]) is list
        and not set(map(type, lines[4])) - {tuple}
        and not set(map(len, lines[4])) - {4}
        and lines[6] is None
    ):
        return fns
    return None


class PortableFile:
    """A portable index file, mapped read-only (see the module's documentation).

    :raises FileNotFoundKsymError: no such file.
    :raises BadFileError: not a portable index file, another version, damaged header or symbol table.

    Use it in a ``with`` block or call :meth:`close` (the Symbolizer over it does)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        # the file as pathlib spells it, for opening it and naming it in messages (``path``: as a Path,
        # made when asked for: answering a frame does without pathlib)
        self._name = path_text(path)
        self._path: Path | None = None
        self._mm: mmap.mmap | None = None
        self._view: memoryview | None = None
        self._symbols: SymbolTable | None = None
        self._symbols_view: memoryview | None = None
        # read and checked when first used: the code by annotate's call sites, the unit ranges by a
        # lookup the aranges miss, the names by a frame's name, the modules by a frame naming one
        self._code: Directory | None = None
        self._unit_ranges: list[UnitRange] | None = None
        self._modules: list[ModuleEntry] | None = None
        self._names: Directory | None = None
        # unit offset → its part table, read when a lookup first needs the unit
        self._part_tables: dict[int, Directory] = {}
        try:
            with open(self._name, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < _HEAD.size:
                    head = f.read(_HEAD.size)
                    _parse_header(self.path, head, f.read, size)  # says what is wrong
                    raise _bad(self.path, "cut short")
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise FileNotFoundKsymError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise FileNotFoundKsymError(f"{self.path}: is a directory") from None
        except OSError as exc:
            raise FileNotFoundKsymError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        try:
            self._view = memoryview(self._mm)
            mm = self._mm
            pos = [_HEAD.size]

            def read_rest(n: int) -> bytes:
                out = mm[pos[0] : pos[0] + n]
                pos[0] += n
                return out

            self.header = _parse_header(self._name, mm[: _HEAD.size], read_rest, len(mm))
            self.meta = self.header.meta
            blocks = self.header.blocks
            payload = blocks[BlockKind.PAYLOAD]
            self.units = self._from_block(
                BlockKind.UNITS, lambda raw: Directory(self._name, raw, payload, "unit", "exact")
            )
            self.aranges = self._load_aranges()
        except BaseException:
            self.close()
            raise

    @property
    def path(self) -> Path:
        """The file."""
        if self._path is None:
            from pathlib import Path

            self._path = Path(self._name)
        return self._path

    # -- blocks --

    def _checked(
        self, offset: int, length: int, crc: int, raw_length: int | None, what: str,
        parse: Callable[[bytes | memoryview], _T],
    ) -> _T:
        """What ``parse`` makes of ``length`` bytes of the file at ``offset`` (within it: the header's and
        the directories' checks), their CRC checked: stored ones (``raw_length`` None) given as a view of
        the mapping (``parse`` copies what it keeps, as ``bytes`` does, or keeps views of it, which
        :meth:`close` releases: the view itself is released after), compressed ones decompressed to
        exactly ``raw_length`` bytes."""
        assert self._view is not None
        stored = self._view[offset : offset + length]
        try:
            if zlib.crc32(stored) != crc:
                raise _bad(self.path, f"{what} checksum mismatch")
            if raw_length is None:
                return parse(stored)
            try:
                raw = _decompress(stored, raw_length)
            except ValueError as exc:
                raise _bad(self.path, f"{what}: {exc}") from None
        finally:
            stored.release()
        return parse(raw)

    def _block(self, kind: int) -> bytes:
        """The contents of a block, its CRC checked, decompressed."""
        return self._from_block(kind, bytes)

    def _from_block(self, kind: int, parse: Callable[[bytes | memoryview], _T]) -> _T:
        """What ``parse`` makes of a block's contents (:meth:`_checked`)."""
        b = self.header.blocks[kind]
        raw_length = None if b.codec == CODEC_NONE else b.raw_length
        return self._checked(b.offset, b.length, b.crc, raw_length, f"block {kind}", parse)

    def _load_aranges(self) -> ArangeTable:
        try:
            return self._from_block(BlockKind.ARANGES, _aranges_of)
        except ValueError as exc:
            raise _bad(self.path, f"aranges: {exc}") from None

    @property
    def unit_ranges(self) -> list[UnitRange]:
        """The ranges of the units .debug_aranges misses, read and checked once, when first needed.

        :raises BadFileError: the block is damaged."""
        if self._unit_ranges is None:
            try:
                self._unit_ranges = _unit_ranges_of(self._block(BlockKind.UNIT_RANGES))
            except ValueError as exc:
                raise _bad(self.path, f"unit ranges: {exc}") from None
        return self._unit_ranges

    @property
    def code(self) -> Directory:
        """The code directory, read and checked once, when code is first read.

        :raises BadFileError: the block is damaged, or its keys are out of order."""
        if self._code is None:
            payload = self.header.blocks[BlockKind.PAYLOAD]
            self._code = self._from_block(BlockKind.CODE, lambda raw: Directory(self._name, raw, payload, "code"))
        return self._code

    def _piece(self, e: Entry, what: str) -> bytes:
        """A unit, code chunk or module of the payload, its CRC checked, decompressed."""
        return self._checked(e.offset, e.length, e.crc, e.raw_length, what, bytes)

    # -- what a Symbolizer needs --

    def image_record(self) -> ImageRecord:
        """The image as the on-disk index would record it (``symbols_size``: the symbol block's)."""
        m = self.meta
        return ImageRecord(
            path=self._name,
            build_id=m.build_id,
            elf_type=m.elf_type,
            little_endian=m.little_endian,
            elfclass=m.elfclass,
            machine=m.machine,
            sections=m.sections,
            symbols_size=self.header.blocks[BlockKind.SYMBOLS].length,
            aranges=self.aranges,
            banner=m.banner,
            has_dwarf=True,
            dynamic_symbols=m.dynamic_symbols,
            dir_prefix=m.dir_prefix,
        )

    def symbols(self) -> SymbolTable:
        """The symbol table, its columns views of the mapping (valid until :meth:`close`); its CRC is
        checked first.

        :raises BadFileError: damaged, or written on a host of the other byte order."""
        if self._symbols is not None:
            return self._symbols
        assert self._view is not None
        import sys

        if self.meta.byteorder != sys.byteorder:
            raise BadFileError(
                f"{self.path}: ksym index file written on a {self.meta.byteorder}-endian host; "
                f"this one is {sys.byteorder}-endian (build the file here)"
            )
        b = self.header.blocks[BlockKind.SYMBOLS]
        view = self._view[b.offset : b.offset + b.length]
        if crc32(view) != b.crc:
            view.release()
            raise _bad(self.path, "symbol table checksum mismatch")
        try:
            table = SymbolTable.from_buffer(
                view, list(self.meta.sections), _damage(self._name, "symbol table")
            )
        except ValueError as exc:
            view.release()
            raise _bad(self.path, f"symbol table: {exc}") from None
        self._symbols, self._symbols_view = table, view
        return table

    def faddr2line_matches(self, name: str) -> list[FaddrMatch]:
        """:meth:`ksym.symbols.SymbolTable.faddr2line_matches` of ``name`` as the file's symbol table
        gives it, read from the one name piece that holds it (a few KB: the table is not mapped).

        :raises BadFileError: the name directory or the piece is damaged."""
        names = self._name_directory()
        piece = name_piece_of(name, len(names))
        what = f"name piece {piece}"
        raw = self._piece(names.entry(piece), what)
        try:
            return _name_matches(marshal.loads(raw), name)
        except (ValueError, TypeError, EOFError, OverflowError, RecursionError) as exc:
            raise _bad(self.path, f"{what}: {exc}") from None

    def _name_directory(self) -> Directory:
        """The name pieces' directory, read and checked once: pieces 0 to n - 1, n at least 1."""
        if self._names is None:
            payload = self.header.blocks[BlockKind.PAYLOAD]
            self._names = self._from_block(
                BlockKind.NAMES, lambda raw: Directory(self._name, raw, payload, "name", "pieces")
            )
        return self._names

    @property
    def unit_count(self) -> int:
        return len(self.units)

    def part_of(self, offset: int, address: int | None) -> int:
        """The part of the unit at ``offset`` of .debug_info that answers ``address`` (numbered from 1:
        the file keeps each unit in address parts, :mod:`ksym.unit_parts`); 0 when the file holds no
        such unit, or no address is given (:meth:`load_unit` of part 0 is None).

        :raises BadFileError: the unit's part table is damaged."""
        if address is None:
            return 0
        table = self._part_table(offset)
        if table is None:
            return 0
        return bisect.bisect_right(table.keys, address)  # the first key is 0: at least 1

    def load_unit(self, offset: int, part: int = 0) -> CompiledUnit | None:
        """Part ``part`` (:meth:`part_of`) of the unit at ``offset`` of .debug_info, read whole (None:
        the file holds no such unit or part).

        :raises BadFileError: the part's bytes are damaged."""
        table = self._part_table(offset) if part > 0 else None
        if table is None or part > len(table):
            return None
        what = f"unit {offset:#x} part {part}"
        raw = self._piece(table.entry(part - 1), what)
        try:
            return _whole_unit(marshal.loads(raw), offset, len(raw))
        except (ValueError, TypeError, EOFError, OverflowError, RecursionError) as exc:
            raise _bad(self.path, f"{what}: {exc}") from None

    def _part_table(self, offset: int) -> Directory | None:
        """The parts of the unit at ``offset``, read and checked once: entries keyed by the lowest
        address each part answers, strictly increasing from 0 (None: the file holds no such unit).

        :raises BadFileError: it is damaged."""
        table = self._part_tables.get(offset)
        if table is None:
            entry = self.units.find(offset)
            if entry is None:
                return None
            what = f"unit {offset:#x} part table"
            payload = self.header.blocks[BlockKind.PAYLOAD]
            table = self._checked(entry.offset, entry.length, entry.crc, entry.raw_length, what,
                                  lambda raw: Directory(self._name, raw, payload, f"unit {offset:#x} part"))
            if not table.keys or table.keys[0] != 0:
                raise _bad(self.path, f"{what}: its first part does not start at 0")
            self._part_tables[offset] = table
        return table

    def unit_changed(self, unit: CompiledUnit) -> None:
        """Units of the file are whole: nothing is read on, nothing is stored."""

    def forget_unit(self, offset: int) -> None:
        pass

    def load_unit_ranges(self) -> list[UnitRange] | None:
        return self.unit_ranges

    def save_unit_ranges(self, ranges: list[UnitRange]) -> None:
        pass

    def code_bytes(self, address: int, size: int) -> bytes:
        """Up to ``size`` bytes of the image at a link-time address, as
        :meth:`ksym.symbolizer.Symbolizer.code_bytes` reads them from the vmlinux (empty when no
        allocated section with contents holds it).

        :raises BadFileError: a chunk is damaged, or missing."""
        for s in self.meta.sections:
            if s.flags & 0x2 and s.type != 8 and s.addr <= address < s.addr + s.size:
                n = min(size, s.addr + s.size - address)
                out = bytearray()
                pos = address
                while len(out) < n:
                    e = self.code.at_or_below(pos)
                    if e is None or not e.key <= pos < e.key + e.raw_length:
                        raise _bad(self.path, f"no code stored at {pos:#x}")
                    chunk = self._piece(e, f"code chunk {e.key:#x}")
                    out += chunk[pos - e.key : pos - e.key + n - len(out)]
                    pos = e.key + e.raw_length
                return bytes(out)
        return b""

    # -- modules (--modules) --

    def _module_directory(self) -> list[ModuleEntry]:
        """The module directory (empty: a file made without ``--modules``), read and checked once."""
        if self._modules is None:
            entries: list[ModuleEntry] = []
            if BlockKind.MODULES in self.header.blocks:
                payload = self.header.blocks[BlockKind.PAYLOAD]
                raw = self._block(BlockKind.MODULES)
                try:
                    rows = marshal.loads(raw)
                    if type(rows) is not list:
                        raise ValueError("not a list")
                    for row in rows:
                        if (
                            type(row) is not list
                            or len(row) != 6
                            or type(row[0]) is not str
                            or type(row[1]) not in (str, type(None))
                            or any(type(x) is not int or x < 0 for x in row[2:])
                        ):
                            raise ValueError("a malformed entry")
                        e = ModuleEntry(*row)
                        if (
                            e.offset < payload.offset
                            or e.offset + e.length > payload.offset + payload.length
                            or e.raw_length > MAX_RAW
                        ):
                            raise ValueError(f"module {e.name} out of bounds")
                        entries.append(e)
                except (EOFError, ValueError, TypeError, OverflowError, RecursionError) as exc:
                    raise _bad(self.path, f"module directory: {exc}") from None
            self._modules = entries
        return self._modules

    def module_names(self) -> list[str]:
        """The names of the modules the file holds (``ksym index build --modules``)."""
        return sorted({e.name for e in self._module_directory()})

    def module_build_ids(self, module_name: str) -> list[str | None]:
        """The build ids of the modules of this name (``-`` and ``_`` alike) the file holds."""
        want = module_name.replace("-", "_")
        return [e.build_id for e in self._module_directory() if e.name == want]

    def module(self, module_name: str, build_id: str | None) -> PortableModule:
        """The module of this name and exact build id, read whole (its CRC checked, every field).

        :raises KeyError: the file holds no such module.
        :raises BadFileError: its bytes are damaged."""
        want = module_name.replace("-", "_")
        for e in self._module_directory():
            if e.name == want and e.build_id == build_id:
                what = f"module {e.name}"
                raw = self._piece(Entry(0, e.offset, e.length, e.raw_length, e.crc), what)
                try:
                    return PortableModule.from_record(self.path, e.name, marshal.loads(raw), len(raw))
                except (
                    ValueError,
                    TypeError,
                    IndexError,
                    KeyError,
                    EOFError,
                    OverflowError,
                    RecursionError,
                ) as exc:
                    raise _bad(self.path, f"{what}: {type(exc).__name__}: {exc}") from None
        raise KeyError(module_name)

    # -- lifecycle --

    def close(self) -> None:
        """Release the symbol table's columns and the other views of the mapping, then the mapping."""
        if self._symbols is not None:
            self._symbols.release()
            self._symbols = None
        aranges = getattr(self, "aranges", None)
        if aranges is not None:
            _release(aranges.starts, aranges.ends, aranges.units)
        for d in (getattr(self, "units", None), self._code, self._names):
            if d is not None:
                d.release()
        for v in (self._symbols_view, self._view):
            if v is not None:
                v.release()
        self._symbols_view = self._view = None
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass  # a view of it is still held somewhere: the mapping goes with it
            self._mm = None

    def __enter__(self) -> PortableFile:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ModuleUnits:
    """The :class:`ksym.dwarf_image.UnitStore` of a module of the file: its whole units, in memory."""

    def __init__(self, units: dict[int, CompiledUnit], ranges: list[UnitRange]) -> None:
        self._units = units
        self._ranges = ranges

    def part_of(self, offset: int, address: int | None) -> int:
        return 0  # a module's units are stored whole

    def load_unit(self, offset: int, part: int = 0) -> CompiledUnit | None:
        return self._units.get(offset) if part == 0 else None

    def unit_changed(self, unit: CompiledUnit) -> None:
        pass

    def forget_unit(self, offset: int) -> None:
        pass

    def load_unit_ranges(self) -> list[UnitRange] | None:
        return self._ranges

    def save_unit_ranges(self, ranges: list[UnitRange]) -> None:
        pass


class PortableModule:
    """A module of a portable index file made with ``--modules`` (a :class:`ksym.modules.ModuleDebugImage`:
    ``ModuleSymbolizer(path, image=...)`` answers from it as from the module's debug file).

    Its record (:meth:`record`, ``marshal``ed, one zlib piece): ``module_name``, ``file`` (the debug
    file's name), ``build_id``, ``sections`` (as the metadata's), ``bases`` (``[index, address]``: bfd's
    layout), ``symbols`` (the raw symbol table, :meth:`ksym.symbols.SymbolTable.to_buffer`),
    ``has_dwarf``, ``aranges`` and ``unit_ranges`` (as the blocks of those kinds), ``units``
    (``[offset, unit record]``, each whole) and ``code`` (``[section index, contents]`` of the allocated
    sections with contents)."""

    def __init__(
        self,
        path: Path,
        module_name: str,
        build_id: str | None,
        sections: list[Section],
        bases: dict[int, int],
        symbols: bytes,
        has_dwarf: bool,
        aranges: ArangeTable,
        unit_ranges: list[UnitRange],
        units: dict[int, CompiledUnit],
        code: dict[int, bytes],
    ) -> None:
        self._path = path
        self._module_name = module_name
        self._build_id = build_id
        self._sections = sections
        self._bases = bases
        self._has_dwarf = has_dwarf
        self._aranges = aranges
        self._unit_ranges = unit_ranges
        self._units = units
        self._code = code
        self.placed_sections = [
            Section(s.index, s.name, s.type, s.flags, bases.get(s.index, 0), s.offset, s.size)
            for s in sections
        ]
        # :raises ValueError: not such a table
        self._raw = SymbolTable.from_buffer(symbols, sections, _damage(path, "symbol table"))

    @classmethod
    def from_record(cls, index_path: Path, name: str, rec: Any, size: int) -> PortableModule:
        """The module of ``rec``, read from ``size`` bytes of ``marshal`` data.

        :raises ValueError, TypeError, KeyError: not a module's record."""
        if type(rec) is not dict:
            raise ValueError("not a dict")

        def get(key: str, *types: type) -> Any:
            v = rec[key]
            if type(v) not in types:
                raise ValueError(f"{key} of the wrong type")
            return v

        module_name = get("module_name", str)
        if module_name.replace("-", "_") != name:
            raise ValueError("another module's record")
        file = get("file", str)
        sections = list(_sections_of(get("sections", list)))
        bases: dict[int, int] = {}
        for pair in get("bases", list):
            if type(pair) is not list or len(pair) != 2 or any(type(x) is not int or x < 0 for x in pair):
                raise ValueError("a malformed base")
            bases[pair[0]] = pair[1]
        units: dict[int, CompiledUnit] = {}
        for pair in get("units", list):
            if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not int:
                raise ValueError("a malformed unit")
            units[pair[0]] = _whole_unit(pair[1], pair[0], size)
        code: dict[int, bytes] = {}
        for pair in get("code", list):
            if (
                type(pair) is not list
                or len(pair) != 2
                or type(pair[0]) is not int
                or type(pair[1]) is not bytes
            ):
                raise ValueError("a malformed code section")
            code[pair[0]] = pair[1]
        from pathlib import Path

        return cls(
            Path(f"{index_path}:{file}"),
            module_name,
            get("build_id", str, type(None)),
            sections,
            bases,
            get("symbols", bytes),
            get("has_dwarf", bool),
            _aranges_of(get("aranges", bytes)),
            _unit_ranges_of(get("unit_ranges", bytes)),
            units,
            code,
        )

    # -- what ModuleSymbolizer reads (ksym.modules.ModuleDebugImage) --

    @property
    def path(self) -> Path:
        return self._path

    @property
    def build_id(self) -> str | None:
        return self._build_id

    @property
    def module_name(self) -> str:
        return self._module_name

    @property
    def has_dwarf(self) -> bool:
        return self._has_dwarf

    @property
    def sections(self) -> list[Section]:
        return self._sections

    @property
    def bases(self) -> dict[int, int]:
        return self._bases

    def section(self, name: str) -> Section | None:
        for s in self._sections:
            if s.name == name:
                return s
        return None

    def require_dwarf(self) -> None:
        from .errors import MissingDebugInfoError

        if not self._has_dwarf:
            raise MissingDebugInfoError(
                f"{self._path}: no DWARF debug info (.debug_info): this is a stripped module; install the "
                "kernel's debug symbols (Debian: linux-image-<release>-dbg) or pass the module's debug file"
            )

    def symbol_tables(self) -> tuple[SymbolTable, SymbolTable]:
        from .modules import placed_symbol_table

        return self._raw, placed_symbol_table(self._raw, self._bases, self.placed_sections)

    def make_dwarf_image(self) -> DwarfImage:
        from .dwarf_image import DwarfImage

        return DwarfImage(
            self._path,
            NoSections(self._path),
            self._aranges,
            units=_ModuleUnits(self._units, self._unit_ranges),
        )

    def section_data(self, s: Section, offset: int, size: int) -> bytes:
        return self._code.get(s.index, b"")[offset : offset + size]


class NoSections:
    """The :class:`ksym.dwarf_image.SectionSource` of a Symbolizer over a portable index file: its units
    are whole, so no lookup reads DWARF; one that would (a unit the file should hold and does not) is
    damage."""

    def __init__(self, path: str | Path) -> None:
        self.path = path

    def open(self) -> D.DwarfSections:
        raise _bad(self.path, "a lookup needs a compilation unit the file does not hold")

    def close(self) -> None:
        pass
