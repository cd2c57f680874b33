"""Writing a portable index file (:mod:`ksym.portable` reads it; docs/index-format.md): the writer, and
the blocks and pieces the builder (:mod:`ksym.portable_build`) hands it."""

from __future__ import annotations

import marshal
import os
import struct
import zlib
from array import array
from collections.abc import Sequence
from typing import Any, BinaryIO

from .dwarf_image import ArangeTable, UnitRange
from .portable import (
    _BLOCK,
    _ENTRY,
    _HEAD,
    _OPTIONAL,
    _REQUIRED,
    CODEC_NONE,
    CODEC_ZLIB,
    FORMAT_VERSION,
    LEVEL,
    MAGIC,
    NAMES_PER_PIECE,
    Block,
    BlockKind,
    Entry,
    ModuleEntry,
    PortableMeta,
    name_piece_of,
)
from .records import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .symbols import FaddrMatch, SymbolTable
    from .units import CompiledUnit

__all__ = ["PortableWriter", "StoredPart", "arange_block", "compress", "module_record", "name_pieces", "unit_range_block"]


class StoredPart(NamedTuple):
    """One address part of a unit as the builder hands it to :meth:`PortableWriter.add_unit`."""

    #: the lowest address it answers
    low: int
    #: :func:`compress` of its record
    stored: bytes
    #: the record's length
    raw_length: int


class PortableWriter:
    """Writes a portable index file: to a temporary in the target's directory, renamed into place by
    :meth:`finish` (a failed build leaves nothing; :meth:`abort` deletes the temporary).

    Blocks are added in any order, units and code chunks as they come (already compressed by the
    builder's workers: :func:`compress`)."""

    def __init__(self, path: str | os.PathLike[str], meta: PortableMeta, *, modules: bool = False) -> None:
        from pathlib import Path

        self.path = Path(path)
        self.meta = meta
        self._meta_bytes = meta.to_bytes()
        self._kinds = _REQUIRED + _OPTIONAL if modules else _REQUIRED
        self._header_length = _HEAD.size + len(self._meta_bytes) + len(self._kinds) * _BLOCK.size
        self.tmp = self.path.parent / f".tmp-{os.urandom(8).hex()}"
        self._f: BinaryIO = open(self.tmp, "xb")  # noqa: SIM115 - closed by finish/abort
        self._f.write(bytes(self._header_length))
        self._blocks: dict[int, Block] = {}
        self._units: list[Entry] = []
        self._code: list[Entry] = []
        self._modules: list[ModuleEntry] = []
        self._names: list[Entry] = []
        self._payload_start: int | None = None

    def _align(self, to: int) -> None:
        pad = -self._f.tell() % to
        if pad:
            self._f.write(bytes(pad))

    def add_block(self, kind: int, data: bytes, compress_it: bool = False) -> None:
        """A block (before the first unit or chunk, or after :meth:`end_payload`): stored as it is (read
        on every open: a copy out of the mapping costs less than decompressing), or compressed."""
        self._align(4096 if kind == BlockKind.SYMBOLS else 8)
        offset = self._f.tell()
        stored = compress(data) if compress_it else data
        self._f.write(stored)
        self._blocks[kind] = Block(
            kind,
            CODEC_ZLIB if compress_it else CODEC_NONE,
            zlib.crc32(stored),
            offset,
            len(stored),
            len(data),
        )

    def _piece(self, stored: bytes, raw_length: int) -> tuple[int, int]:
        if self._payload_start is None:
            self._align(8)
            self._payload_start = self._f.tell()
        offset = self._f.tell()
        self._f.write(stored)
        return offset, zlib.crc32(stored)

    def add_unit(self, offset: int, parts: Sequence[StoredPart]) -> None:
        """A unit, in its address parts (:func:`ksym.unit_parts.unit_parts`) by increasing low, the first
        one's 0: each part's ``stored`` is :func:`compress` of ``marshal.dumps(unit_to_record(part))``.
        The parts go to the payload, then the unit's part table, which the unit directory points to."""
        table = []
        for part in parts:
            at, crc = self._piece(part.stored, part.raw_length)
            table.append(Entry(part.low, at, len(part.stored), part.raw_length, crc))
        raw = b"".join(_ENTRY.pack(*e) for e in table)
        stored = compress(raw)
        at, crc = self._piece(stored, len(raw))
        self._units.append(Entry(offset, at, len(stored), len(raw), crc))

    def add_code(self, address: int, stored: bytes, raw_length: int) -> None:
        """A code chunk of ``raw_length`` bytes at ``address`` (:func:`compress` of them)."""
        at, crc = self._piece(stored, raw_length)
        self._code.append(Entry(address, at, len(stored), raw_length, crc))

    def add_names(self, piece: int, stored: bytes, raw_length: int) -> None:
        """Name piece number ``piece`` (:func:`compress` of one of :func:`name_pieces`)."""
        at, crc = self._piece(stored, raw_length)
        self._names.append(Entry(piece, at, len(stored), raw_length, crc))

    def add_module(self, name: str, build_id: str | None, stored: bytes, raw_length: int) -> None:
        """A module (:func:`compress` of ``marshal.dumps(record, 4)``, :func:`module_record`)."""
        at, crc = self._piece(stored, raw_length)
        self._modules.append(ModuleEntry(name, build_id, at, len(stored), raw_length, crc))

    def finish(self) -> int:
        """Write the directories and the header, and rename the file into place; its size."""
        if self._payload_start is None:
            self._align(8)
            self._payload_start = self._f.tell()
        end = self._f.tell()
        self._blocks[BlockKind.PAYLOAD] = Block(
            BlockKind.PAYLOAD,
            CODEC_NONE,
            0,
            self._payload_start,
            end - self._payload_start,
            end - self._payload_start,
        )
        for kind, entries in (
            (BlockKind.UNITS, self._units),
            (BlockKind.CODE, self._code),
            (BlockKind.NAMES, self._names),
        ):
            entries.sort()
            self.add_block(kind, b"".join(_ENTRY.pack(*e) for e in entries))
        if BlockKind.MODULES in self._kinds:
            self.add_block(
                BlockKind.MODULES, marshal.dumps([list(e) for e in sorted(self._modules, key=_module_key)], 4)
            )
        size = self._f.tell()
        table = b"".join(_BLOCK.pack(*self._blocks[k]) for k in self._kinds)
        rest = self._meta_bytes + table
        head = _HEAD.pack(
            MAGIC, FORMAT_VERSION, self._header_length, size, len(self._meta_bytes), len(self._kinds), 0
        )
        crc = zlib.crc32(rest, zlib.crc32(head))
        head = _HEAD.pack(
            MAGIC, FORMAT_VERSION, self._header_length, size, len(self._meta_bytes), len(self._kinds), crc
        )
        self._f.seek(0)
        self._f.write(head + rest)
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.tmp, self.path)
        return size

    def abort(self) -> None:
        """Delete the temporary (a build that failed or was interrupted)."""
        try:
            self._f.close()
        finally:
            try:
                self.tmp.unlink()
            except FileNotFoundError:
                pass


def compress(data: bytes, level: int = LEVEL) -> bytes:
    """``data`` as one zlib stream (its length is the directory's)."""
    return zlib.compress(data, level)


def name_pieces(matches: dict[str, list[FaddrMatch]]) -> list[bytes]:
    """The name pieces of a symbol table's :meth:`ksym.symbols.SymbolTable.faddr2line_names`: each a
    ``marshal`` dict, by name, of the names :func:`name_piece_of` puts in it, each name's
    :meth:`ksym.symbols.FaddrMatch.to_record` tuples."""
    pieces: list[dict[str, tuple[tuple[Any, ...], ...]]] = [{} for _ in range(max(1, len(matches) // NAMES_PER_PIECE))]
    for name in sorted(matches):
        pieces[name_piece_of(name, len(pieces))][name] = tuple(m.to_record() for m in matches[name])
    return [marshal.dumps(p, 4) for p in pieces]


def arange_block(table: ArangeTable) -> bytes:
    """The ARANGES block of ``table``: count, longest range, then the starts, ends and units (u64 LE)."""
    cols = [array("Q", c) for c in (table.starts, table.ends, table.units)]
    if struct.pack("=H", 1) != struct.pack("<H", 1):
        for c in cols:
            c.byteswap()
    return struct.pack("<QQ", len(cols[0]), table.maxlen) + b"".join(c.tobytes() for c in cols)


def unit_range_block(ranges: Sequence[UnitRange]) -> bytes:
    """The UNIT_RANGES block: (low, high, unit offset) as u64 LE triples."""
    return b"".join(struct.pack("<QQQ", r.low, r.high, r.unit) for r in ranges)


def _module_key(e: ModuleEntry) -> tuple[str, str]:
    return (e.name, e.build_id or "")


def module_record(
image: Any,
    symbols: SymbolTable,
    aranges: ArangeTable | None,
    ranges: Sequence[UnitRange],
    units: dict[int, CompiledUnit],
    code: dict[int, bytes],
) -> dict[str, Any]:
    """The record of a module a portable file holds (``image``: its :class:`ksym.modules.ModuleImage`;
    read back by :meth:`ksym.portable.PortableModule.from_record`)."""
    from .units import unit_to_record

    return {
        "module_name": image.module_name,
        "file": image.path.name,
        "build_id": image.build_id,
        "sections": [
            [s.index, s.name, s.type, s.flags, s.addr, s.offset, s.size] for s in image.sections
        ],
        "bases": [[i, a] for i, a in sorted(image.bases.items())],
        "symbols": symbols.to_buffer(),
        "has_dwarf": image.has_dwarf,
        "aranges": arange_block(aranges if aranges is not None else ArangeTable.of([])),
        "unit_ranges": unit_range_block(ranges),
        "units": [[off, unit_to_record(cu)] for off, cu in sorted(units.items())],
        "code": [[i, c] for i, c in sorted(code.items())],
    }
