"""Resolve address → inline chain from DWARF, reading only the one compilation unit that holds it.

The readers here are small and targeted on purpose: a kernel CU such as net/ipv4/ip_output.c has ~22,000
DIEs and a 15,000-row line program, and a generic walk (pyelftools' ``iter_DIEs``) takes most of a
second. Here a CU is read once into a compact :class:`~ksym.units.CompiledUnit` (the subprogram/inlined-
subroutine tree with its address ranges, and the line table) which is cheap to keep in memory and to store
in the on-disk index; top-level DIEs are skipped by their DW_AT_sibling, and subtrees are entered only when
they hold code. Those records, and the lookups in them, live in :mod:`ksym.units` (which a lookup in stored
units imports without this parser); this module re-exports them and reads on in a unit read part way
(:func:`walk_on`, :func:`expand_for`, :func:`extend_lines`).

The lookup rules follow binutils' bfd (what ``addr2line -i`` and therefore the kernel's faddr2line
print), so ksym agrees with them:

* line table: within the sequence holding the address, rows with the same address keep only the last
  one; the answer is the last row whose address is <= the address;
* functions: among all subprograms and inlined subroutines whose ranges contain the address, the one
  whose containing range is the smallest (ties go to the later DIE); the chain goes up through the
  enclosing functions of the DIE tree, each outer level located at the inner level's call_file/call_line;
* file names: ``comp_dir/dir/name`` joined the way bfd's concat_filename does it.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable, Sequence
from typing import Any, Literal

from .records import MutableRecord, NamedTuple
from .unit_state import LineDecoderState, LineProgramHeader, WalkState
from .units import (
    TAG_INLINED_SUBROUTINE,
    CompiledUnit,
    DwarfError,
    FunctionNode,
    LineLocation,
    LineRow,
    LineSequence,
    LineTable,
    _Rows,
    damage_is_bad_file,
    unit_from_record,
    unit_to_record,
)

__all__ = [
    "ArangeEntry",
    "CompiledUnit",
    "DwarfError",
    "DwarfSections",
    "FunctionNode",
    "LineDecoderState",
    "LineLocation",
    "LineProgramHeader",
    "LineRow",
    "LineSequence",
    "LineTable",
    "UnitSpan",
    "WalkState",
    "check_unit",
    "compile_unit",
    "compile_whole_unit",
    "concat_filename",
    "damage_is_bad_file",
    "expand_for",
    "extend_lines",
    "read_aranges",
    "scan_cu_headers",
    "unit_from_record",
    "unit_line_table",
    "unit_ranges",
    "unit_to_record",
]


#: What a reader of damaged data runs into besides its own checks: an index or struct read past the end
#: of a section, a value that does not fit (an address past 2**64), a division by a zero header field.
_CUT_SHORT = (IndexError, struct.error, ValueError, OverflowError, ZeroDivisionError)


def _damage(exc: BaseException, section: str, offset: int) -> DwarfError:
    """``exc`` (a DwarfError, or one of :data:`_CUT_SHORT`) as a DwarfError at ``offset`` of ``section``:
    the start of the unit (or line program, or aranges set) whose reading failed."""
    if isinstance(exc, DwarfError):
        return exc
    if isinstance(exc, (IndexError, struct.error)):
        return DwarfError(section, offset, "the unit's data runs past its end")
    return DwarfError(section, offset, f"malformed unit ({type(exc).__name__}: {exc})")


# --- tags, attributes, forms -------------------------------------------------------------------------

TAG_ENTRY_POINT = 0x03
TAG_LEXICAL_BLOCK = 0x0B
TAG_COMPILE_UNIT = 0x11
# TAG_INLINED_SUBROUTINE = 0x1D is ksym.units' (a lookup reads it), imported above
TAG_SUBPROGRAM = 0x2E
TAG_PARTIAL_UNIT = 0x3C
TAG_SKELETON_UNIT = 0x4A
TAG_TYPE_UNIT = 0x41
FUNCTION_TAGS = frozenset({TAG_SUBPROGRAM, TAG_INLINED_SUBROUTINE, TAG_ENTRY_POINT})

AT_SIBLING = 0x01
AT_NAME = 0x03
AT_STMT_LIST = 0x10
AT_LANGUAGE = 0x13
AT_LOW_PC = 0x11
AT_HIGH_PC = 0x12
AT_COMP_DIR = 0x1B
AT_ABSTRACT_ORIGIN = 0x31
AT_SPECIFICATION = 0x47
AT_RANGES = 0x55
AT_CALL_COLUMN = 0x57
AT_CALL_FILE = 0x58
AT_CALL_LINE = 0x59
AT_LINKAGE_NAME = 0x6E
AT_MIPS_LINKAGE_NAME = 0x2007
AT_STR_OFFSETS_BASE = 0x72
AT_ADDR_BASE = 0x73
AT_RNGLISTS_BASE = 0x74
AT_GNU_RANGES_BASE = 0x2132
AT_GNU_ADDR_BASE = 0x2133

# attribute kinds we decode (others are skipped)
_WANTED = frozenset(
    {
        AT_SIBLING, AT_NAME, AT_STMT_LIST, AT_LOW_PC, AT_HIGH_PC, AT_COMP_DIR, AT_ABSTRACT_ORIGIN,
        AT_SPECIFICATION, AT_RANGES, AT_CALL_COLUMN, AT_CALL_FILE, AT_CALL_LINE, AT_LINKAGE_NAME,
        AT_MIPS_LINKAGE_NAME, AT_STR_OFFSETS_BASE, AT_ADDR_BASE, AT_RNGLISTS_BASE, AT_GNU_RANGES_BASE,
        AT_GNU_ADDR_BASE, AT_LANGUAGE,
    }
)

#: DW_LANG_C89, C, C99, C11, C17 and assembler (gas): languages whose types cannot hold code, so a
#: walk for functions need not enter structures and unions (C++ member functions can live there).
_C_LANGUAGES = frozenset({0x01, 0x02, 0x0C, 0x1D, 0x2C, 0x8001})
#: Languages whose units have at most one top-level function DIE with code at an address (C: an alias is a
#: symbol, not a DIE); assembly is not one (GNU as writes a DIE per SYM_FUNC_ALIAS name, at one address).
_ONE_FUNCTION_PER_ADDRESS = frozenset({0x01, 0x02, 0x0C, 0x1D, 0x2C})
#: Tags whose children may hold functions with code: namespace, module, and (not in C) class,
#: structure and union types with member functions defined inline.
_SCOPE_TAGS = frozenset({0x39, 0x1E})
_TYPE_SCOPE_TAGS = frozenset({0x02, 0x13, 0x17})

FORM_ADDR = 0x01
FORM_BLOCK2 = 0x03
FORM_BLOCK4 = 0x04
FORM_DATA2 = 0x05
FORM_DATA4 = 0x06
FORM_DATA8 = 0x07
FORM_STRING = 0x08
FORM_BLOCK = 0x09
FORM_BLOCK1 = 0x0A
FORM_DATA1 = 0x0B
FORM_FLAG = 0x0C
FORM_SDATA = 0x0D
FORM_STRP = 0x0E
FORM_UDATA = 0x0F
FORM_REF_ADDR = 0x10
FORM_REF1 = 0x11
FORM_REF2 = 0x12
FORM_REF4 = 0x13
FORM_REF8 = 0x14
FORM_REF_UDATA = 0x15
FORM_INDIRECT = 0x16
FORM_SEC_OFFSET = 0x17
FORM_EXPRLOC = 0x18
FORM_FLAG_PRESENT = 0x19
FORM_STRX = 0x1A
FORM_ADDRX = 0x1B
FORM_REF_SUP4 = 0x1C
FORM_STRP_SUP = 0x1D
FORM_DATA16 = 0x1E
FORM_LINE_STRP = 0x1F
FORM_REF_SIG8 = 0x20
FORM_IMPLICIT_CONST = 0x21
FORM_LOCLISTX = 0x22
FORM_RNGLISTX = 0x23
FORM_REF_SUP8 = 0x24
FORM_STRX1 = 0x25
FORM_STRX2 = 0x26
FORM_STRX3 = 0x27
FORM_STRX4 = 0x28
FORM_ADDRX1 = 0x29
FORM_ADDRX2 = 0x2A
FORM_ADDRX3 = 0x2B
FORM_ADDRX4 = 0x2C
FORM_GNU_ADDR_INDEX = 0x1F01
FORM_GNU_STR_INDEX = 0x1F02
FORM_GNU_REF_ALT = 0x1F20
FORM_GNU_STRP_ALT = 0x1F21

_INTERESTING_TAGS = frozenset(
    {TAG_SUBPROGRAM, TAG_INLINED_SUBROUTINE, TAG_ENTRY_POINT, TAG_LEXICAL_BLOCK, TAG_COMPILE_UNIT,
     TAG_PARTIAL_UNIT, TAG_SKELETON_UNIT}
)
_SIBLING_ONLY = frozenset({AT_SIBLING})
#: Forms whose value is one LEB128 number.
_LEB128_FORMS = frozenset({FORM_UDATA, FORM_SDATA, FORM_REF_UDATA, FORM_STRX, FORM_ADDRX, FORM_LOCLISTX,
                           FORM_RNGLISTX, FORM_GNU_ADDR_INDEX, FORM_GNU_STR_INDEX})
_EMPTY: dict[int, tuple[int, Any]] = {}

_CONST_FORMS = frozenset(
    {FORM_DATA1, FORM_DATA2, FORM_DATA4, FORM_DATA8, FORM_UDATA, FORM_SDATA, FORM_IMPLICIT_CONST}
)
#: (byte order, size) → the struct decoding an unsigned integer of that size.
_STRUCTS = {(e, n): struct.Struct(e + c) for e in "<>" for n, c in ((1, "B"), (2, "H"), (4, "I"), (8, "Q"))}

_REF_LOCAL_FORMS = frozenset({FORM_REF1, FORM_REF2, FORM_REF4, FORM_REF8, FORM_REF_UDATA})

_REF_FORMS = _REF_LOCAL_FORMS | {FORM_REF_ADDR, FORM_REF_SIG8, FORM_REF_SUP4, FORM_REF_SUP8, FORM_GNU_REF_ALT}
_STRING_FORMS = frozenset({FORM_STRING, FORM_STRP, FORM_LINE_STRP, FORM_STRP_SUP, FORM_GNU_STRP_ALT, FORM_STRX,
                           FORM_STRX1, FORM_STRX2, FORM_STRX3, FORM_STRX4, FORM_GNU_STR_INDEX})
_ADDR_FORMS = frozenset({FORM_ADDR, FORM_ADDRX, FORM_ADDRX1, FORM_ADDRX2, FORM_ADDRX3, FORM_ADDRX4,
                         FORM_GNU_ADDR_INDEX})
_OFFSET_FORMS = frozenset({FORM_SEC_OFFSET, FORM_DATA4, FORM_DATA8})
#: The forms each attribute this module decodes may have: another is damage (not guessed at).
_FORMS_OF = {
    AT_SIBLING: _REF_FORMS, AT_ABSTRACT_ORIGIN: _REF_FORMS, AT_SPECIFICATION: _REF_FORMS,
    AT_NAME: _STRING_FORMS, AT_COMP_DIR: _STRING_FORMS, AT_LINKAGE_NAME: _STRING_FORMS,
    AT_MIPS_LINKAGE_NAME: _STRING_FORMS,
    AT_LOW_PC: _ADDR_FORMS, AT_HIGH_PC: _ADDR_FORMS | _CONST_FORMS, AT_RANGES: _OFFSET_FORMS | {FORM_RNGLISTX},
    AT_CALL_FILE: _CONST_FORMS, AT_CALL_LINE: _CONST_FORMS, AT_CALL_COLUMN: _CONST_FORMS, AT_LANGUAGE: _CONST_FORMS,
    AT_STMT_LIST: _OFFSET_FORMS, AT_STR_OFFSETS_BASE: _OFFSET_FORMS, AT_ADDR_BASE: _OFFSET_FORMS,
    AT_RNGLISTS_BASE: _OFFSET_FORMS, AT_GNU_RANGES_BASE: _OFFSET_FORMS, AT_GNU_ADDR_BASE: _OFFSET_FORMS,
}

#: Every form :meth:`_CUReader._read_form` knows; an abbreviation with another is damage (binutils:
#: "invalid or unhandled FORM value").
_KNOWN_FORMS = frozenset(v for k, v in globals().items() if k.startswith("FORM_"))


def _byteorder(e: str) -> Literal["little", "big"]:
    return "little" if e == "<" else "big"


def _initial_length(data: bytes | memoryview, pos: int, e: str) -> tuple[int, int, int]:
    """A unit's initial length: (length, position after it, offset size 4 or 8 for 64-bit DWARF)."""
    (length,) = struct.unpack_from(e + "I", data, pos)
    if length == 0xFFFFFFFF:
        (length,) = struct.unpack_from(e + "Q", data, pos + 4)
        return length, pos + 12, 8
    return length, pos + 4, 4


def _uleb(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    result = b & 0x7F
    shift = 7
    pos += 1
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _sleb(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            if b & 0x40:
                result -= 1 << shift
            return result, pos


def _cstr(buf: bytes | memoryview, pos: int) -> tuple[str, int]:
    end = bytes(buf[pos : pos + 4096]).find(b"\0") if isinstance(buf, memoryview) else buf.find(b"\0", pos)
    if isinstance(buf, memoryview):
        if end < 0:
            end = bytes(buf[pos:]).find(b"\0")
            if end < 0:
                raise IndexError("a string runs past the end of the section")
        raw = bytes(buf[pos : pos + end])
        return raw.decode("utf-8", "replace"), pos + end + 1
    if end < 0:
        raise IndexError("a string runs past the end of the section")
    return buf[pos:end].decode("utf-8", "replace"), end + 1


_Mutable = MutableRecord


class DwarfSections(_Mutable):
    """The raw DWARF sections (bytes or memoryviews over an mmap) a lookup reads."""

    _fields = ("info", "abbrev", "line", "debug_str", "line_str", "ranges", "rnglists", "addr", "str_offsets",
               "aranges", "little_endian", "default_address_size")
    __slots__ = (*_fields, "_abbrevs", "_joined", "_strings")

    def __init__(self, info: bytes | memoryview, abbrev: bytes | memoryview, line: bytes | memoryview | None = None,
                 debug_str: bytes | memoryview | None = None, line_str: bytes | memoryview | None = None,
                 ranges: bytes | memoryview | None = None, rnglists: bytes | memoryview | None = None,
                 addr: bytes | memoryview | None = None, str_offsets: bytes | memoryview | None = None,
                 aranges: bytes | memoryview | None = None, little_endian: bool = True,
                 default_address_size: int = 8) -> None:
        self.info = info
        self.abbrev = abbrev
        self.line = line
        self.debug_str = debug_str
        self.line_str = line_str
        self.ranges = ranges
        self.rnglists = rnglists
        self.addr = addr
        self.str_offsets = str_offsets
        self.aranges = aranges
        self.little_endian = little_endian
        self.default_address_size = default_address_size
        # (id of a string section, offset) → string: units share their include files' and types' names
        self._strings: dict[tuple[int, int], str] = {}
        # comp_dir → {(directory's .debug_line_str offset, name's offset): joined file name} (GCC's tables)
        self._joined: dict[str, dict[tuple[int, int], str]] = {}
        self._abbrevs: dict[int, dict[int, Abbrev]] = {}

    def abbrev_table(self, offset: int) -> dict[int, Abbrev]:
        """The abbreviations at ``offset`` (:func:`parse_abbrevs`), kept for a unit opened again to
        be read on."""
        got = self._abbrevs.get(offset)
        if got is None:
            if len(self._abbrevs) >= 64:  # a unit is read on soon after it was opened, if at all
                self._abbrevs.clear()
            try:
                got = parse_abbrevs(self, offset)
            except _CUT_SHORT as exc:
                raise DwarfError(".debug_abbrev", offset, "the abbreviation table runs past the end of "
                                 "the section") from exc
            self._abbrevs[offset] = got
        return got

    def string_at(self, section: bytes | memoryview | None, offset: int) -> str:
        """The string at ``offset`` of .debug_str or .debug_line_str (``section``).

        :raises DwarfError: the section is missing or the offset lies past its end."""
        key = (id(section), offset)
        got = self._strings.get(key)
        if got is None:
            if section is None or not 0 <= offset < len(section):
                name = ".debug_line_str" if section is self.line_str and section is not None else ".debug_str"
                what = "missing" if section is None else f"{len(section):#x} bytes long"
                raise DwarfError(name, offset, f"a string offset past the end of the section ({what})")
            got = self._strings[key] = self._string_at(section, offset)
        return got

    def _string_at(self, section: bytes | memoryview, offset: int) -> str:
        if isinstance(section, memoryview):
            chunk = bytes(section[offset : offset + 512])
            end = chunk.find(b"\0")
            while end < 0:
                more = bytes(section[offset + len(chunk) : offset + len(chunk) + 4096])
                if not more:
                    end = len(chunk)
                    break
                chunk += more
                end = chunk.find(b"\0")
            return chunk[:end].decode("utf-8", "replace")
        end = section.find(b"\0", offset)
        if end < 0:
            end = len(section)
        return section[offset:end].decode("utf-8", "replace")


# --- .debug_aranges ---------------------------------------------------------------------------------


class ArangeEntry(NamedTuple):
    """An address range of .debug_aranges: addresses ``start`` to ``end`` (exclusive) are in the unit
    at ``unit_offset`` of .debug_info."""

    start: int
    end: int
    unit_offset: int


def read_aranges(sec: DwarfSections) -> list[ArangeEntry]:
    """All address ranges of .debug_aranges, unsorted.

    :raises DwarfError: a set's length runs past the end of the section, its header is cut short or
        names a unit offset past the end of .debug_info, its address size is not 2, 4 or 8 (or not
        the ELF class's when that is known), it has segment selectors, or a range ends past the
        largest address."""
    if sec.aranges is None:
        return []
    try:
        return _read_aranges(sec, bytes(sec.aranges))
    except _CUT_SHORT as exc:
        raise _damage(exc, ".debug_aranges", 0) from None


def _read_aranges(sec: DwarfSections, data: bytes) -> list[ArangeEntry]:
    out: list[ArangeEntry] = []
    e = "<" if sec.little_endian else ">"
    pos = 0
    n = len(data)
    info_size = len(sec.info)
    while pos < n:
        unit_start = pos
        if pos + 4 > n or (pos + 12 > n and data[pos : pos + 4] == b"\xff\xff\xff\xff"):
            raise DwarfError(".debug_aranges", pos, "a set length cut off by the end of the section")
        length, pos, off_size = _initial_length(data, pos, e)
        end = pos + length
        if end > n:
            raise DwarfError(".debug_aranges", unit_start, f"the set's length {length:#x} runs past the end "
                             "of the section")
        if pos + 2 + off_size + 2 > end:
            raise DwarfError(".debug_aranges", unit_start, "the set ends inside its header")
        (version,) = struct.unpack_from(e + "H", data, pos)
        cu_off = struct.unpack_from(e + ("I" if off_size == 4 else "Q"), data, pos + 2)[0]
        p = pos + 2 + off_size
        addr_size = data[p]
        seg_size = data[p + 1]
        p += 2
        if version != 2:
            raise DwarfError(".debug_aranges", unit_start, f"unsupported version {version}")
        if cu_off >= info_size:
            raise DwarfError(".debug_aranges", unit_start, f"unit offset {cu_off:#x} past the end of .debug_info")
        if addr_size not in (2, 4, 8) or addr_size != sec.default_address_size:
            raise DwarfError(".debug_aranges", unit_start, f"unsupported address size {addr_size}")
        if seg_size:
            raise DwarfError(".debug_aranges", unit_start, f"unsupported segment selector size {seg_size}")
        tuple_size = 2 * addr_size
        # tuples are aligned to twice the address size from the unit start
        rel = p - unit_start
        if rel % tuple_size:
            p += tuple_size - rel % tuple_size
        fmt = e + {4: "I", 8: "Q", 2: "H"}[addr_size] * 2
        top = 1 << (8 * addr_size)
        while p + tuple_size <= end:
            start, length_ = struct.unpack_from(fmt, data, p)
            if start == 0 and length_ == 0:
                break
            if start + length_ >= top:
                raise DwarfError(".debug_aranges", p, f"the range {start:#x}+{length_:#x} ends past the "
                                 "largest address")
            p += tuple_size
            if length_:
                out.append(ArangeEntry(start, start + length_, cu_off))
        pos = end
    return out


# --- CU headers and abbreviations --------------------------------------------------------------------


class CUHeader(NamedTuple):
    """The header of a unit of .debug_info (:func:`parse_cu_header`)."""

    offset: int
    version: int
    unit_type: int
    address_size: int
    offset_size: int
    abbrev_offset: int
    die_offset: int  # first DIE
    end: int  # one past the unit


def parse_cu_header(sec: DwarfSections, offset: int) -> CUHeader:
    """The header of the unit at ``offset`` of .debug_info.

    :raises DwarfError: the offset, the unit's length or its abbreviation offset lie past the end of
        their section, or the version is not 2 to 5."""
    data = sec.info
    e = "<" if sec.little_endian else ">"
    if not 0 <= offset <= len(data) - 11:
        raise DwarfError(".debug_info", offset, "no unit header fits there: past the end of the section")
    length, pos, off_size = _initial_length(data, offset, e)
    end = pos + length
    if end > len(data):
        raise DwarfError(".debug_info", offset, f"the unit's length {length:#x} runs past the end of the section")
    (version,) = struct.unpack_from(e + "H", data, pos)
    pos += 2
    ofmt = e + ("I" if off_size == 4 else "Q")
    unit_type = 1
    if version >= 5:
        unit_type = data[pos]
        address_size = data[pos + 1]
        (abbrev_off,) = struct.unpack_from(ofmt, data, pos + 2)
        pos += 2 + off_size
        if unit_type in (4, 5):  # skeleton, split_compile: dwo id
            pos += 8
        elif unit_type in (2, 6):  # type, split_type: signature + type offset
            pos += 8 + off_size
    else:
        (abbrev_off,) = struct.unpack_from(ofmt, data, pos)
        address_size = data[pos + off_size]
        pos += off_size + 1
    if not 2 <= version <= 5:
        raise DwarfError(".debug_info", offset, f"unsupported DWARF version {version}")
    if unit_type not in (1, 2, 3, 4, 5, 6):
        raise DwarfError(".debug_info", offset, f"unknown unit type {unit_type:#x}")
    if address_size not in (2, 4, 8):
        raise DwarfError(".debug_info", offset, f"unsupported address size {address_size}")
    if abbrev_off >= len(sec.abbrev):
        raise DwarfError(".debug_info", offset, f"abbreviation offset {abbrev_off:#x} past the end of "
                         ".debug_abbrev")
    if pos >= end:
        raise DwarfError(".debug_info", offset, "the unit ends inside its header")
    return CUHeader(offset, version, unit_type, address_size, off_size, abbrev_off, pos, end)


class UnitSpan(NamedTuple):
    """Where a unit lies in .debug_info (:func:`scan_cu_headers`)."""

    offset: int
    #: one past the unit
    end: int


def scan_cu_headers(sec: DwarfSections) -> list[UnitSpan]:
    """Where every unit of .debug_info lies, reading only the unit lengths.

    :raises DwarfError: a unit length runs past the end of the section."""
    data = sec.info
    e = "<" if sec.little_endian else ">"
    out = []
    pos = 0
    n = len(data)
    while pos < n:
        if pos + 4 > n or (pos + 12 > n and data[pos : pos + 4] == b"\xff\xff\xff\xff"):
            raise DwarfError(".debug_info", pos, "a unit length cut off by the end of the section")
        length, body, _off_size = _initial_length(data, pos, e)
        end = body + length
        if end > n:
            raise DwarfError(".debug_info", pos, f"the unit's length {length:#x} runs past the end of the section")
        if length == 0:
            raise DwarfError(".debug_info", pos, "a unit of length 0")
        out.append(UnitSpan(pos, end))
        pos = end
    return out


# An abbreviation: (tag, has_children, attrs) where attrs is a tuple of (attr, form, implicit_const).
Abbrev = tuple[int, bool, tuple[tuple[int, int, int], ...]]


def parse_abbrevs(sec: DwarfSections, offset: int) -> dict[int, Abbrev]:
    data = sec.abbrev
    table: dict[int, Abbrev] = {}
    pos = offset
    while True:
        code, pos = _uleb(data, pos)
        if code == 0:
            break
        tag, pos = _uleb(data, pos)
        children = data[pos] != 0
        pos += 1
        attrs = []
        while True:
            # one-byte LEB128 (attributes below 0x80, every standard form) is the common case
            at = data[pos]
            if at < 0x80:
                pos += 1
            else:
                at, pos = _uleb(data, pos)
            form_pos = pos
            form = data[pos]
            if form < 0x80:
                pos += 1
            else:
                form, pos = _uleb(data, pos)
            const = 0
            if form == FORM_IMPLICIT_CONST:
                const, pos = _sleb(data, pos)
            if at == 0 and form == 0:
                break
            if form not in _KNOWN_FORMS:
                raise DwarfError(".debug_abbrev", form_pos, f"abbreviation {code}: unknown form {form:#x}")
            attrs.append((at, form, const))
        table[code] = (tag, children, tuple(attrs))
    return table


# --- the compact form of one CU ----------------------------------------------------------------------


# --- reading one CU ------------------------------------------------------------------------------------


# the plan's steps and plans are made once per abbreviation and read for every DIE: plain slotted
# classes (attribute reads as fast as a dataclass's with slots, made without importing dataclasses)


class _SkipBytes:
    """A read plan's step: step over ``size`` bytes of attribute values of fixed-size forms."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


class _DecodeFixed:
    """A read plan's step: decode attribute ``attr``, of a 1-, 2-, 4- or 8-byte integer form, with a
    precompiled struct's ``unpack_from``."""

    __slots__ = ("attr", "form", "size", "unpack")

    def __init__(self, attr: int, form: int, unpack: Callable[[bytes | memoryview, int], tuple[int, ...]],
                 size: int) -> None:
        self.attr = attr
        self.form = form
        self.unpack = unpack
        self.size = size


class _Decode:
    """A read plan's step: decode attribute ``attr`` (:meth:`_CUReader._read_form`) whose
    abbreviation gives DW_FORM_implicit_const value ``const``."""

    __slots__ = ("attr", "const", "form")

    def __init__(self, attr: int, form: int, const: int) -> None:
        self.attr = attr
        self.form = form
        self.const = const


class _SkipForm:
    """A read plan's step: step over an attribute value of a variable-size form."""

    __slots__ = ("const", "form")

    def __init__(self, form: int, const: int) -> None:
        self.form = form
        self.const = const


_PlanStep = _SkipBytes | _DecodeFixed | _Decode | _SkipForm


class _DiePlan:
    """How to read a DIE of one abbreviation (:meth:`_CUReader._plan`); ``fixed_size``: the size of the
    DIE's attributes when every step is a :class:`_SkipBytes` (nothing decoded), else -1."""

    __slots__ = ("fixed_size", "has_children", "steps", "tag")

    def __init__(self, tag: int, has_children: bool, steps: tuple[_PlanStep, ...], fixed_size: int) -> None:
        self.tag = tag
        self.has_children = has_children
        self.steps = steps
        self.fixed_size = fixed_size


class _DieSkip:
    """How the function walk steps over a DIE of one abbreviation without decoding it
    (:meth:`_CUReader.fast_skip`): at most one of the two is >= 0; both -1: read the DIE.

    ``fixed_size``: a childless DIE whose attributes take this many bytes after the code;
    ``sibling_at``: a DIE whose children are not entered, with a DW_AT_sibling (ref4) this many bytes
    after the code."""

    __slots__ = ("fixed_size", "sibling_at")

    def __init__(self, fixed_size: int, sibling_at: int) -> None:
        self.fixed_size = fixed_size
        self.sibling_at = sibling_at


class _CUReader:
    """Decodes DIEs of one CU, skipping what it does not need."""

    def __init__(self, sec: DwarfSections, hdr: CUHeader) -> None:
        self.sec = sec
        self.hdr = hdr
        self.data = sec.info
        self.abbrevs = sec.abbrev_table(hdr.abbrev_offset)
        self.e = "<" if sec.little_endian else ">"
        self.str_offsets_base = 8 if hdr.offset_size == 4 else 16
        self.addr_base = 8
        self.rnglists_base = 0
        self.low_pc = 0
        #: DW_AT_language of the unit (None: not said)
        self.language: int | None = None
        #: abbreviation code → :meth:`fast_skip`
        self.skips: dict[int, _DieSkip] = {}
        #: abbreviation code → :func:`_check_plan`
        self._checks: dict[int, _CheckPlan] = {}
        # per-abbrev plans: fixed skip size when nothing wanted and all forms fixed-size
        self._fixed: dict[int, int] = {}
        asz = hdr.address_size
        osz = hdr.offset_size
        self._form_size = {
            FORM_ADDR: asz, FORM_DATA1: 1, FORM_REF1: 1, FORM_FLAG: 1, FORM_STRX1: 1, FORM_ADDRX1: 1,
            FORM_DATA2: 2, FORM_REF2: 2, FORM_STRX2: 2, FORM_ADDRX2: 2, FORM_STRX3: 3, FORM_ADDRX3: 3,
            FORM_DATA4: 4, FORM_REF4: 4, FORM_REF_SUP4: 4, FORM_STRX4: 4, FORM_ADDRX4: 4,
            FORM_DATA8: 8, FORM_REF8: 8, FORM_REF_SIG8: 8, FORM_REF_SUP8: 8, FORM_DATA16: 16,
            FORM_STRP: osz, FORM_SEC_OFFSET: osz, FORM_LINE_STRP: osz, FORM_STRP_SUP: osz,
            FORM_GNU_REF_ALT: osz, FORM_GNU_STRP_ALT: osz,
            FORM_REF_ADDR: osz if hdr.version >= 3 else asz,
            FORM_FLAG_PRESENT: 0, FORM_IMPLICIT_CONST: 0,
        }
        # A plan per abbreviation: which attributes to decode (only what the function tree needs:
        # for other DIEs just DW_AT_sibling) and how far to jump over the rest
        # (made on the first DIE of each abbreviation: most of a unit's are stepped over unread)
        self._plans: dict[int, _DiePlan] = {}

    def _plan(self, code: int, die_pos: int) -> _DiePlan | None:
        abbrev = self.abbrevs.get(code)
        if abbrev is None:
            return None
        tag, ch, attrs = abbrev
        wanted = _WANTED if tag in _INTERESTING_TAGS else _SIBLING_ONLY
        steps: list[_PlanStep] = []
        fixed_total = 0
        all_fixed = True
        for at, form, const in attrs:
            sz = self._form_size.get(form)
            if at in wanted:
                if form not in _FORMS_OF[at]:
                    raise DwarfError(".debug_info", die_pos, f"attribute {at:#x} of abbreviation {code} has "
                                     f"form {form:#x}, which it cannot have")
                # fixed-size integer forms (1, 2, 4, 8 bytes) are decoded here with a precompiled struct
                st = _STRUCTS.get((self.e, sz)) if sz else None
                steps.append(_DecodeFixed(at, form, st.unpack_from, sz) if st is not None and sz
                             else _Decode(at, form, const))
                all_fixed = False
            elif sz is not None:
                last = steps[-1] if steps else None
                if isinstance(last, _SkipBytes):
                    last.size += sz
                else:
                    steps.append(_SkipBytes(sz))
                fixed_total += sz
            else:
                steps.append(_SkipForm(form, const))
                all_fixed = False
        plan = self._plans[code] = _DiePlan(tag, ch, tuple(steps), fixed_total if all_fixed else -1)
        return plan

    def fast_skip(self, code: int) -> _DieSkip:
        """For the function walk: how to step over a DIE of abbreviation ``code`` without decoding it.
        Worked out on the first DIE of each abbreviation and kept in :attr:`skips`."""
        skip = _DieSkip(-1, -1)  # read it
        abbrev = self.abbrevs.get(code)
        if abbrev is not None:
            tag, ch, attrs = abbrev
            enter = _SCOPE_TAGS if self.language in _C_LANGUAGES else _SCOPE_TAGS | _TYPE_SCOPE_TAGS
            # a function DIE whose abbreviation has no address attribute never has code
            # (declarations, abstract instances): the walk skips it and its children anyway
            if not (ch and tag in enter) and not (tag in _INTERESTING_TAGS and (
                    tag not in FUNCTION_TAGS or any(at in (AT_LOW_PC, AT_RANGES) for at, _f, _c in attrs))):
                at_off = 0
                sib = -1
                for at, form, _const in attrs:
                    if at == AT_SIBLING and form == FORM_REF4 and sib < 0:
                        sib = at_off
                    sz = self._form_size.get(form)
                    if sz is None:
                        at_off = -1
                        break
                    at_off += sz
                if ch and sib >= 0:
                    skip = _DieSkip(-1, sib)
                elif not ch and at_off >= 0:
                    skip = _DieSkip(at_off, -1)
        self.skips[code] = skip
        return skip

    def _read_form(self, form: int, pos: int, const: int) -> tuple[Any, int]:
        data = self.data
        e = self.e
        if form == FORM_ADDR:
            asz = self.hdr.address_size
            return int.from_bytes(data[pos : pos + asz], _byteorder(e)), pos + asz
        if form in (FORM_DATA1, FORM_REF1, FORM_FLAG, FORM_STRX1, FORM_ADDRX1):
            return data[pos], pos + 1
        if form in (FORM_DATA2, FORM_REF2, FORM_STRX2, FORM_ADDRX2):
            return struct.unpack_from(e + "H", data, pos)[0], pos + 2
        if form in (FORM_STRX3, FORM_ADDRX3):
            return int.from_bytes(data[pos : pos + 3], _byteorder(e)), pos + 3
        if form in (FORM_DATA4, FORM_REF4, FORM_REF_SUP4, FORM_STRX4, FORM_ADDRX4):
            return struct.unpack_from(e + "I", data, pos)[0], pos + 4
        if form in (FORM_DATA8, FORM_REF8, FORM_REF_SIG8, FORM_REF_SUP8):
            return struct.unpack_from(e + "Q", data, pos)[0], pos + 8
        if form in (FORM_STRP, FORM_SEC_OFFSET, FORM_LINE_STRP, FORM_STRP_SUP, FORM_GNU_REF_ALT,
                    FORM_GNU_STRP_ALT, FORM_REF_ADDR):
            sz = self._form_size[form]
            return struct.unpack_from(e + ("I" if sz == 4 else "Q"), data, pos)[0], pos + sz
        if form in (FORM_UDATA, FORM_REF_UDATA, FORM_STRX, FORM_ADDRX, FORM_LOCLISTX, FORM_RNGLISTX,
                    FORM_GNU_ADDR_INDEX, FORM_GNU_STR_INDEX):
            return _uleb(data, pos)
        if form == FORM_SDATA:
            return _sleb(data, pos)
        if form == FORM_STRING:
            return _cstr(data, pos)
        if form == FORM_FLAG_PRESENT:
            return 1, pos
        if form == FORM_IMPLICIT_CONST:
            return const, pos
        if form == FORM_DATA16:
            return bytes(data[pos : pos + 16]), pos + 16
        if form in (FORM_BLOCK1, FORM_BLOCK2, FORM_BLOCK4, FORM_BLOCK, FORM_EXPRLOC):
            if form == FORM_BLOCK1:
                n, pos = data[pos], pos + 1
            elif form == FORM_BLOCK2:
                n, pos = struct.unpack_from(e + "H", data, pos)[0], pos + 2
            elif form == FORM_BLOCK4:
                n, pos = struct.unpack_from(e + "I", data, pos)[0], pos + 4
            else:
                n, pos = _uleb(data, pos)
            return None, pos + n
        if form == FORM_INDIRECT:
            real, pos = _uleb(data, pos)
            return self._read_form(real, pos, const)
        raise DwarfError(".debug_info", pos, f"unknown form {form:#x}")

    def read_die(self, pos: int) -> tuple[int, int, bool, dict[int, tuple[int, Any]], int]:
        """(code, tag, has_children, {attr: (form, value)} of wanted attrs, next position)."""
        data = self.data
        die_pos = pos
        code = data[pos]
        if code < 0x80:
            pos += 1
        else:
            code, pos = _uleb(data, pos)
        if code == 0:
            return 0, 0, False, _EMPTY, pos
        plan = self._plans.get(code) or self._plan(code, die_pos)
        if plan is None:
            raise DwarfError(".debug_info", die_pos, f"unknown abbreviation code {code} (unit at "
                             f"{self.hdr.offset:#x})")
        fixed = plan.fixed_size
        if fixed >= 0:
            return code, plan.tag, plan.has_children, _EMPTY, pos + fixed
        vals: dict[int, tuple[int, Any]] = {}
        # dispatch on the step's exact type (cheaper than isinstance; mypy does not narrow through
        # ``kind``, hence ``Any``)
        step: Any
        for step in plan.steps:
            kind = type(step)
            if kind is _SkipBytes:
                pos += step.size
            elif kind is _DecodeFixed:
                vals[step.attr] = (step.form, step.unpack(data, pos)[0])
                pos += step.size
            elif kind is _Decode:
                val, pos = self._read_form(step.form, pos, step.const)
                vals[step.attr] = (step.form, val)
            else:
                pos = self._skip_form(step.form, pos, step.const)
        return code, plan.tag, plan.has_children, vals, pos

    def _skip_form(self, form: int, pos: int, const: int) -> int:
        """Where an attribute value of variable size (``form``) at ``pos`` ends, without decoding it."""
        data = self.data
        if form == FORM_STRING:
            end = bytes(data[pos : pos + 64]).find(b"\0")
            if end >= 0:
                return pos + end + 1
        elif form in _LEB128_FORMS:
            while data[pos] & 0x80:
                pos += 1
            return pos + 1
        elif form == FORM_EXPRLOC or form == FORM_BLOCK:
            n, pos = _uleb(data, pos)
            return pos + n
        elif form == FORM_BLOCK1:
            return pos + 1 + data[pos]
        return self._read_form(form, pos, const)[1]

    # -- attribute helpers --

    def string(self, form: int, val: Any) -> str:
        if form == FORM_STRING:
            return str(val)
        if form == FORM_STRP:
            return self.sec.string_at(self.sec.debug_str, int(val))
        if form == FORM_LINE_STRP:
            return self.sec.string_at(self.sec.line_str, int(val))
        if form in (FORM_STRX, FORM_STRX1, FORM_STRX2, FORM_STRX3, FORM_STRX4, FORM_GNU_STR_INDEX):
            so = self.sec.str_offsets
            sz = self.hdr.offset_size
            p = self.str_offsets_base + int(val) * sz
            if so is None or p + sz > len(so):
                raise DwarfError(".debug_str_offsets", p, f"string index {int(val)} (unit at {self.hdr.offset:#x})"
                                 " past the end of the section")
            off = struct.unpack_from(self.e + ("I" if sz == 4 else "Q"), so, p)[0]
            return self.sec.string_at(self.sec.debug_str, off)
        if form in (FORM_STRP_SUP, FORM_GNU_STRP_ALT):
            # a string of the supplementary debug file (.debug_sup, .gnu_debugaltlink), which ksym does
            # not read: the unit cannot be answered from (binutils stops at it too)
            raise DwarfError(".debug_info", self.hdr.offset,
                             f"a string in a supplementary debug file (form {form:#x}, unit at "
                             f"{self.hdr.offset:#x}), which ksym does not read")
        return "??"

    def address(self, form: int, val: Any) -> int:
        if form in (FORM_ADDRX, FORM_ADDRX1, FORM_ADDRX2, FORM_ADDRX3, FORM_ADDRX4, FORM_GNU_ADDR_INDEX):
            return self.indexed_address(int(val))
        return int(val)

    def indexed_address(self, index: int) -> int:
        a = self.sec.addr
        asz = self.hdr.address_size
        p = self.addr_base + index * asz
        if a is None or p + asz > len(a):
            raise DwarfError(".debug_addr", p, f"address index {index} (unit at {self.hdr.offset:#x}) past "
                             "the end of the section")
        return int.from_bytes(a[p : p + asz], "little" if self.e == "<" else "big")

    def ranges_of(self, vals: dict[int, tuple[int, Any]]) -> list[tuple[int, int]]:
        lo = vals.get(AT_LOW_PC)
        if AT_RANGES in vals:
            form, v = vals[AT_RANGES]
            return self.read_ranges(form, int(v))
        if lo is not None:
            low = self.address(*lo)
            hi = vals.get(AT_HIGH_PC)
            if hi is None:
                return [(low, low + 1)]
            hform, hval = hi
            if hform in _CONST_FORMS:
                return [(low, low + int(hval))]
            return [(low, self.address(hform, hval))]
        return []

    def read_ranges(self, form: int, value: int) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        e = self.e
        asz = self.hdr.address_size
        order = _byteorder(e)
        base = self.low_pc
        if self.hdr.version < 5 and form != FORM_RNGLISTX:
            data = self.sec.ranges
            if data is None or value >= len(data):
                raise DwarfError(".debug_ranges", value, f"a range list offset (unit at {self.hdr.offset:#x}) "
                                 "past the end of the section")
            pos = value
            maxaddr = (1 << (8 * asz)) - 1
            while True:
                if pos + 2 * asz > len(data):
                    raise DwarfError(".debug_ranges", value, "the range list runs past the end of the section")
                a = int.from_bytes(data[pos : pos + asz], order)
                b = int.from_bytes(data[pos + asz : pos + 2 * asz], order)
                pos += 2 * asz
                if a == 0 and b == 0:
                    break
                if a == maxaddr:
                    base = b
                    continue
                out.append((base + a, base + b))
            return out
        data = self.sec.rnglists
        if form == FORM_RNGLISTX:
            sz = self.hdr.offset_size
            p = self.rnglists_base + value * sz
            if data is None or p + sz > len(data):
                raise DwarfError(".debug_rnglists", p, f"range list index {value} (unit at "
                                 f"{self.hdr.offset:#x}) past the end of the section")
            rel = struct.unpack_from(e + ("I" if sz == 4 else "Q"), data, p)[0]
            pos = self.rnglists_base + rel
        else:
            pos = value
        if data is None or not 0 <= pos < len(data):
            raise DwarfError(".debug_rnglists", pos, f"a range list offset (unit at {self.hdr.offset:#x}) "
                             "past the end of the section")
        start = pos
        while True:
            if pos >= len(data):
                raise DwarfError(".debug_rnglists", start, "the range list runs past the end of the section")
            kind = data[pos]
            pos += 1
            if kind == 0:  # end_of_list
                break
            if kind == 1:  # base_addressx
                idx, pos = _uleb(data, pos)
                base = self.indexed_address(idx)
            elif kind == 2:  # startx_endx
                i1, pos = _uleb(data, pos)
                i2, pos = _uleb(data, pos)
                out.append((self.indexed_address(i1), self.indexed_address(i2)))
            elif kind == 3:  # startx_length
                i1, pos = _uleb(data, pos)
                ln, pos = _uleb(data, pos)
                s = self.indexed_address(i1)
                out.append((s, s + ln))
            elif kind == 4:  # offset_pair
                a, pos = _uleb(data, pos)
                b, pos = _uleb(data, pos)
                out.append((base + a, base + b))
            elif kind == 5:  # base_address
                base = int.from_bytes(data[pos : pos + asz], order)
                pos += asz
            elif kind == 6:  # start_end
                a = int.from_bytes(data[pos : pos + asz], order)
                b = int.from_bytes(data[pos + asz : pos + 2 * asz], order)
                pos += 2 * asz
                out.append((a, b))
            elif kind == 7:  # start_length
                a = int.from_bytes(data[pos : pos + asz], order)
                pos += asz
                ln, pos = _uleb(data, pos)
                out.append((a, a + ln))
            else:
                raise DwarfError(".debug_rnglists", pos - 1, f"unknown range list entry kind {kind}")
        return out


def _ref_target(reader: _CUReader, form: int, val: Any) -> int:
    """Absolute .debug_info offset of a reference attribute (-1: not a reference into .debug_info).

    :raises DwarfError: a unit-local reference past the end of its unit, or a DW_FORM_ref_addr past
        the end of .debug_info."""
    if form in _REF_LOCAL_FORMS:
        target = reader.hdr.offset + int(val)
        if target >= reader.hdr.end:
            raise DwarfError(".debug_info", reader.hdr.offset, f"a reference {int(val):#x} past the end of the unit")
        return target
    if form == FORM_REF_ADDR:
        if int(val) >= len(reader.data):
            raise DwarfError(".debug_info", reader.hdr.offset, f"a reference {int(val):#x} past the end of the "
                             "section")
        return int(val)
    return -1


def _name_of(reader: _CUReader, offset: int, readers: Callable[[int], _CUReader], depth: int = 0) -> str:
    """The name of the DIE at ``offset``, following abstract_origin/specification like bfd."""
    if depth > 8 or offset < 0:
        return "??"
    if not reader.hdr.offset <= offset < reader.hdr.end:
        reader = readers(offset)
    _c, _t, _ch, vals, _p = reader.read_die(offset)
    if _c == 0:
        raise DwarfError(".debug_info", offset, "a reference to a null entry")
    # bfd prefers the linkage name for languages that mangle; for C (the kernel) both are the same
    # plain name and DW_AT_name is what it prints
    if AT_NAME in vals:
        return reader.string(*vals[AT_NAME])
    for at in (AT_LINKAGE_NAME, AT_MIPS_LINKAGE_NAME):
        if at in vals:
            return reader.string(*vals[at])
    for at in (AT_ABSTRACT_ORIGIN, AT_SPECIFICATION):
        if at in vals:
            return _name_of(reader, _ref_target(reader, *vals[at]), readers, depth + 1)
    return "??"


class _OpenedUnit(NamedTuple):
    """A unit opened by :func:`_open_unit`."""

    reader: _CUReader
    #: the wanted attributes of the unit's top DIE ({attr: (form, value)})
    attrs: dict[int, tuple[int, Any]]
    has_children: bool
    #: .debug_info offset of the DIE after the top one
    next_pos: int


def _open_unit(sec: DwarfSections, cu_offset: int) -> _OpenedUnit:
    """Read a unit's top DIE and set the reader's bases."""
    hdr = parse_cu_header(sec, cu_offset)
    reader = _CUReader(sec, hdr)
    _code, tag, children, vals, pos = reader.read_die(hdr.die_offset)
    if tag not in (TAG_COMPILE_UNIT, TAG_PARTIAL_UNIT, TAG_SKELETON_UNIT) and not (
            tag == TAG_TYPE_UNIT and hdr.unit_type in (2, 6)):
        raise DwarfError(".debug_info", cu_offset, f"the unit does not start with a compile unit DIE (tag {tag:#x})")
    # bases first: other attributes of the CU DIE may depend on them
    if AT_STR_OFFSETS_BASE in vals:
        reader.str_offsets_base = int(vals[AT_STR_OFFSETS_BASE][1])
    for at in (AT_ADDR_BASE, AT_GNU_ADDR_BASE):
        if at in vals:
            reader.addr_base = int(vals[at][1])
    for at in (AT_RNGLISTS_BASE, AT_GNU_RANGES_BASE):
        if at in vals:
            reader.rnglists_base = int(vals[at][1])
    if AT_LOW_PC in vals:
        reader.low_pc = reader.address(*vals[AT_LOW_PC])
    if AT_LANGUAGE in vals:
        reader.language = int(vals[AT_LANGUAGE][1])
    return _OpenedUnit(reader, vals, children, pos)


#: DW_AT_decl_file: binutils names a function's or variable's file from it, so a number past the line
#: table's files is an error there too.
AT_DECL_FILE = 0x3A
TAG_VARIABLE = 0x34
_DECL_FILE_TAGS = FUNCTION_TAGS | {TAG_VARIABLE}


#: The kinds of :class:`_CheckStep`.
_CHECK_SKIP = 0  # step over ``size`` bytes
_CHECK_STRING = 1  # a .debug_str / .debug_line_str offset (``form``) that must lie inside its section
_CHECK_FILE = 2  # a file number (DW_AT_call_file, DW_AT_decl_file) that must name a line table file
_CHECK_SKIP_FORM = 3  # step over a value of a variable-size ``form``
_CHECK_ORIGIN = 4  # a function's origin or specification, which must land on a DIE (binutils reads its name)
_CHECK_SIBLING = 5  # a DW_AT_sibling, which must land just after the DIE's children


class _CheckStep(NamedTuple):
    """A step of :func:`_check_dies` over a DIE's attributes (``kind``: one of ``_CHECK_*``)."""

    kind: int
    form: int
    #: the DW_FORM_implicit_const value (:data:`_CHECK_FILE`, :data:`_CHECK_SKIP_FORM`), or the size
    #: (:data:`_CHECK_SKIP`)
    value: int


class _CheckPlan(NamedTuple):
    """How :func:`_check_dies` reads a DIE of one abbreviation (:func:`_check_plan`)."""

    has_children: bool
    steps: tuple[_CheckStep, ...]


def _check_plan(reader: _CUReader, code: int, die_pos: int) -> _CheckPlan:
    """How :func:`_check_dies` steps over a DIE of abbreviation ``code``."""
    abbrev = reader.abbrevs.get(code)
    if abbrev is None:
        raise DwarfError(".debug_info", die_pos, f"unknown abbreviation code {code} (unit at "
                         f"{reader.hdr.offset:#x})")
    tag, ch, attrs = abbrev
    steps: list[_CheckStep] = []
    for at, form, const in attrs:
        sz = reader._form_size.get(form)
        if at == AT_SIBLING and form in _REF_LOCAL_FORMS:
            steps.append(_CheckStep(_CHECK_SIBLING, form, 0))
        elif at in (AT_ABSTRACT_ORIGIN, AT_SPECIFICATION) and tag in FUNCTION_TAGS and form in _REF_LOCAL_FORMS:
            steps.append(_CheckStep(_CHECK_ORIGIN, form, 0))
        elif form in (FORM_STRP, FORM_LINE_STRP):
            steps.append(_CheckStep(_CHECK_STRING, form, 0))
        elif (at == AT_CALL_FILE or (at == AT_DECL_FILE and tag in _DECL_FILE_TAGS)) and form in _CONST_FORMS:
            steps.append(_CheckStep(_CHECK_FILE, form, const))
        elif sz is not None:
            if steps and steps[-1].kind == _CHECK_SKIP:
                steps[-1] = _CheckStep(_CHECK_SKIP, 0, steps[-1].value + sz)
            else:
                steps.append(_CheckStep(_CHECK_SKIP, 0, sz))
        else:
            steps.append(_CheckStep(_CHECK_SKIP_FORM, form, const))
    plan = reader._checks[code] = _CheckPlan(ch, tuple(steps))
    return plan


def check_unit(sec: DwarfSections, cu_offset: int) -> None:
    """Check every DIE of the unit at ``cu_offset`` and its whole line program, as binutils reads them.

    A lookup (:func:`compile_unit`, :func:`expand_for`) checks what it reads, and steps over most
    DIEs by their DW_AT_sibling without reading them; this reads them all (at several times the cost
    of a lookup's read): an unknown abbreviation code, a string offset past the end of its section, a
    DW_AT_decl_file or DW_AT_call_file past the line table's files, a DW_AT_sibling that is not where
    the DIE's children end, a function origin that is no DIE, or a DIE running past the end of its unit.

    :raises DwarfError: the damage found first."""
    try:
        reader, vals, _children, _pos = _open_unit(sec, cu_offset)
        lines = None
        if AT_STMT_LIST in vals and sec.line is not None:
            comp_dir = reader.string(*vals[AT_COMP_DIR]) if AT_COMP_DIR in vals else ""
            lines = read_line_table(sec, int(vals[AT_STMT_LIST][1]), comp_dir, reader.hdr.address_size)
        _check_dies(reader, reader.hdr.die_offset, lines)
    except _CUT_SHORT as exc:
        raise _damage(exc, ".debug_info", cu_offset) from None


def _check_dies(reader: _CUReader, pos: int, lines: LineTable | None) -> None:
    """:func:`check_unit`'s pass over the DIEs from ``pos`` on (``lines``: the unit's line table)."""
    data = reader.data
    end = reader.hdr.end
    checks = reader._checks
    skip_form = reader._skip_form
    read_form = reader._read_form
    sec = reader.sec
    limits = {FORM_STRP: len(sec.debug_str) if sec.debug_str is not None else 0,
              FORM_LINE_STRP: len(sec.line_str) if sec.line_str is not None else 0}
    off_struct = _STRUCTS[(reader.e, reader.hdr.offset_size)]
    osz = reader.hdr.offset_size
    n_files = len(lines.files) if lines is not None else -1
    v5 = lines is not None and lines.file_base == 0
    unit = reader.hdr.offset
    starts: list[int] = []  # every DIE's offset
    targets: list[int] = []  # where functions' origins and specifications point
    siblings: list[int] = []  # for each open DIE with children: where its DW_AT_sibling points (-1: none)
    while pos < end:
        die_pos = pos
        code = data[pos]
        if code < 0x80:
            pos += 1
        else:
            code, pos = _uleb(data, pos)
        if code == 0:
            if siblings:
                sib = siblings.pop()
                if sib >= 0 and sib != pos:
                    raise DwarfError(".debug_info", die_pos, f"a DW_AT_sibling {sib:#x} that is not where the "
                                     f"DIE's children end ({pos:#x})")
            continue
        starts.append(die_pos)
        plan = checks.get(code) or _check_plan(reader, code, die_pos)
        sib = -1
        for kind, form, value in plan.steps:
            if kind == _CHECK_SKIP:
                pos += value
            elif kind == _CHECK_STRING:
                off = off_struct.unpack_from(data, pos)[0]
                if off >= limits[form]:
                    name = ".debug_str" if form == FORM_STRP else ".debug_line_str"
                    raise DwarfError(".debug_info", pos, f"string offset {off:#x} past the end of {name}")
                pos += osz
            elif kind == _CHECK_FILE:
                number, pos = read_form(form, pos, value)
                if n_files >= 0 and not (0 <= number < n_files if v5 else 0 <= number <= n_files):
                    raise DwarfError(".debug_info", die_pos, f"file number {number} past the line program's "
                                     f"{n_files} files")
            elif kind == _CHECK_SKIP_FORM:
                pos = skip_form(form, pos, value)
            else:
                ref, pos = read_form(form, pos, 0)
                if kind == _CHECK_ORIGIN:
                    targets.append(unit + ref)
                else:  # _CHECK_SIBLING
                    sib = unit + ref
        if plan.has_children:
            siblings.append(sib)
        elif sib >= 0 and sib != pos:
            raise DwarfError(".debug_info", die_pos, f"a DW_AT_sibling {sib:#x} that is not where the DIE ends")
    if targets:
        known = set(starts)
        for t in targets:
            if t not in known:
                raise DwarfError(".debug_info", t, "a function's DW_AT_abstract_origin or DW_AT_specification "
                                 "does not point at a DIE")
    if pos > end:
        raise DwarfError(".debug_info", reader.hdr.offset, f"the last DIE runs past the end of the unit at {end:#x}")


def _reader_getter(sec: DwarfSections, reader: _CUReader) -> Callable[[int], _CUReader]:
    """A function giving the reader of the unit holding a .debug_info offset (for DW_FORM_ref_addr)."""
    cache: dict[int, _CUReader] = {reader.hdr.offset: reader}
    cu_list: list[UnitSpan] = []

    def get(offset: int) -> _CUReader:
        if not cu_list:
            cu_list.extend(scan_cu_headers(sec))
        starts = [c.offset for c in cu_list]
        i = bisect.bisect_right(starts, offset) - 1
        if i < 0 or offset >= cu_list[i].end:
            raise DwarfError(".debug_info", offset, "a reference outside every unit")
        start = cu_list[i].offset
        if start not in cache:
            cache[start] = _open_unit(sec, start).reader
        return cache[start]

    return get


def compile_unit(sec: DwarfSections, cu_offset: int, until: int | None = None,
                 expect: int | None = None) -> CompiledUnit:
    """Read one CU: its top-level functions (their subtrees are read on demand by
    :func:`expand_for`) and its line table (with ``until``, only as far as that address needs:
    :func:`extend_lines` reads on).

    :param expect: an address .debug_aranges gives this unit: the unit's own ranges must hold it.
    :raises DwarfError: the unit, its abbreviations, line program or range lists are damaged."""
    try:
        return _compile_unit(sec, cu_offset, until, expect)
    except _CUT_SHORT as exc:
        raise _damage(exc, ".debug_info", cu_offset) from None


def _compile_unit(sec: DwarfSections, cu_offset: int, until: int | None, expect: int | None) -> CompiledUnit:
    reader, vals, children, pos = _open_unit(sec, cu_offset)
    if expect is not None and (AT_RANGES in vals or AT_HIGH_PC in vals) and not any(
            lo <= expect < hi for lo, hi in reader.ranges_of(vals)):
        raise DwarfError(".debug_info", cu_offset, f"the unit does not hold {expect:#x}, which .debug_aranges "
                         "gives it")
    name = reader.string(*vals[AT_NAME]) if AT_NAME in vals else ""
    comp_dir = reader.string(*vals[AT_COMP_DIR]) if AT_COMP_DIR in vals else ""
    stmt_list = int(vals[AT_STMT_LIST][1]) if AT_STMT_LIST in vals else -1
    functions: list[FunctionNode] = []
    walk: WalkState | None = None
    if children:
        stack = [-1]
        stop = _walk_children(reader, pos, functions, _reader_getter(sec, reader), stack, top_only=True,
                              until=until if reader.language in _ONE_FUNCTION_PER_ADDRESS else None)
        walk = None if stop is None else WalkState(stop, stack)
    lines = None
    if stmt_list >= 0 and sec.line is not None:
        lines = read_line_table(sec, stmt_list, comp_dir, reader.hdr.address_size, until)
    cu = CompiledUnit(cu_offset, name, comp_dir, functions, lines, walk)
    cu.reader = reader
    return cu.finish()


def walk_on(sec: DwarfSections, cu: CompiledUnit, address: int) -> bool:
    """Read on through a unit's top-level DIEs (compiled with ``until``) until a function holding
    ``address`` is found or the unit ends. Returns True when the unit changed."""
    if not cu.needs_walk(address):
        return False
    assert cu.walk is not None
    n = len(cu.functions)
    try:
        reader = _unit_reader(sec, cu)
        pos, stack = cu.walk
        stack = list(stack)
        stop = _walk_children(reader, pos, cu.functions, _reader_getter(sec, reader), stack, top_only=True,
                              until=address)
    except (DwarfError, *_CUT_SHORT) as exc:
        del cu.functions[n:]  # the unit stays as it was: a lookup again meets the same damage
        raise _damage(exc, ".debug_info", cu.offset) from None
    cu.walk = None if stop is None else WalkState(stop, stack)
    cu.finish()
    return True


def compile_whole_unit(sec: DwarfSections, cu_offset: int) -> CompiledUnit:
    """Read one CU whole: every top-level function, every function subtree and the whole line program
    (what :func:`compile_unit` and the readers on would read for all addresses together). Nothing is
    left to read on: ``walk`` and ``lines.pending`` are None and no function has an unread subtree
    (the portable index file, :mod:`ksym.portable`, stores such units).

    :raises DwarfError: the unit, its abbreviations, line program or range lists are damaged."""
    cu = compile_unit(sec, cu_offset)
    try:
        reader = _unit_reader(sec, cu)
        getter = _reader_getter(sec, reader)
        i = 0
        while i < len(cu.functions):  # subtrees append their nodes: those are entered too
            fn = cu.functions[i]
            if fn.child_pos >= 0:
                pos, fn.child_pos = fn.child_pos, -1
                _walk_children(reader, pos, cu.functions, getter, [i], top_only=False)
            i += 1
    except (DwarfError, *_CUT_SHORT) as exc:
        raise _damage(exc, ".debug_info", cu_offset) from None
    cu.reader = None
    return cu.finish()


def _unit_reader(sec: DwarfSections, cu: CompiledUnit) -> _CUReader:
    """The reader that built ``cu`` (or a new one, for a unit loaded from the index), kept with it."""
    reader = cu.reader
    if not isinstance(reader, _CUReader) or reader.sec is not sec:
        reader = cu.reader = _open_unit(sec, cu.offset).reader
    return reader


def expand_for(sec: DwarfSections, cu: CompiledUnit, address: int) -> bool:
    """Read the subtrees of the functions containing ``address`` that are not read yet.

    Returns True when the unit changed (so a cached copy may be refreshed)."""
    todo = [i for i, _ln in cu.containing(address) if cu.functions[i].child_pos >= 0]
    if not todo:
        return False
    n = len(cu.functions)
    saved = [(i, cu.functions[i].child_pos) for i in todo]
    try:
        reader = _unit_reader(sec, cu)
        getter = _reader_getter(sec, reader)
        while todo:
            i = todo.pop()
            fn = cu.functions[i]
            pos, fn.child_pos = fn.child_pos, -1
            _walk_children(reader, pos, cu.functions, getter, [i], top_only=False)
    except (DwarfError, *_CUT_SHORT) as exc:
        # leave the unit as it was (not half-expanded: a lookup again meets the same damage rather
        # than answering from the functions read before it)
        del cu.functions[n:]
        for i, child_pos in saved:
            cu.functions[i].child_pos = child_pos
        raise _damage(exc, ".debug_info", cu.offset) from None
    cu.finish()
    return True


def _walk_children(
    reader: _CUReader,
    pos: int,
    functions: list[FunctionNode],
    getter: Callable[[int], _CUReader],
    stack: list[int],
    top_only: bool,
    until: int | None = None,
) -> int | None:
    """Walk the CU's DIE tree iteratively, recording function DIEs that have code.

    A subtree is skipped (via DW_AT_sibling when present) unless its root is a function or lexical
    block with code, or a DIE that may hold such (a DW_TAG without ranges that has children).
    With ``top_only`` and ``until``, the walk stops after the first function holding that address
    (only for units of :data:`_ONE_FUNCTION_PER_ADDRESS` languages) and returns where to go on from
    (``stack`` is left as it is there); else it returns None at the end.
    """
    data_end = reader.hdr.end
    # stack entries: index of the enclosing function node (or -1); with ``top_only`` the subtrees
    # of functions are not entered but remembered (FunctionNode.child_pos) for expand_for()
    read_die = reader.read_die
    data = reader.data
    skips = reader.skips
    fast_skip = reader.fast_skip
    unit = reader.hdr.offset
    sib_fmt = reader.e + "I"
    enter_types = reader.language not in _C_LANGUAGES
    while pos < data_end and stack:
        die_off = pos
        # most DIEs (types, members, declarations) are stepped over without decoding them
        code = data[pos]
        if 0 < code < 0x80:
            sk = skips.get(code) or fast_skip(code)
            if sk.fixed_size >= 0:
                pos += 1 + sk.fixed_size
                continue
            if sk.sibling_at >= 0:
                target = unit + struct.unpack_from(sib_fmt, data, pos + 1 + sk.sibling_at)[0]
                if target > pos:
                    pos = target
                    continue
        code, tag, children, vals, pos = read_die(pos)
        if code == 0:
            stack.pop()
            continue
        enclosing = stack[-1]
        if tag in FUNCTION_TAGS or tag == TAG_LEXICAL_BLOCK:
            rngs = reader.ranges_of(vals) if (AT_LOW_PC in vals or AT_RANGES in vals) else []
            if tag in FUNCTION_TAGS and rngs:
                nm = "??"
                if AT_NAME in vals:
                    nm = reader.string(*vals[AT_NAME])
                elif AT_LINKAGE_NAME in vals or AT_MIPS_LINKAGE_NAME in vals:
                    nm = reader.string(*vals.get(AT_LINKAGE_NAME) or vals[AT_MIPS_LINKAGE_NAME])
                else:
                    for at in (AT_ABSTRACT_ORIGIN, AT_SPECIFICATION):
                        if at in vals:
                            nm = _name_of(reader, _ref_target(reader, *vals[at]), getter)
                            break
                node = FunctionNode(
                    die_offset=die_off,
                    tag=tag,
                    ranges=rngs,
                    name=nm,
                    parent=enclosing,
                    call_file=int(vals[AT_CALL_FILE][1]) if AT_CALL_FILE in vals else 0,
                    call_line=int(vals[AT_CALL_LINE][1]) if AT_CALL_LINE in vals else 0,
                    call_column=int(vals[AT_CALL_COLUMN][1]) if AT_CALL_COLUMN in vals else 0,
                )
                functions.append(node)
                if children:
                    if top_only:
                        node.child_pos = pos
                        pos = _skip_subtree(reader, pos, vals)
                    else:
                        stack.append(len(functions) - 1)
                if until is not None and top_only and any(lo <= until < hi for lo, hi in rngs):
                    return pos
                continue
            if tag in FUNCTION_TAGS:
                # an abstract instance or declaration: no code, nothing inside can have code
                # that bfd attributes to it; skip it
                if children:
                    pos = _skip_subtree(reader, pos, vals)
                continue
            # lexical block: transparent for the function tree
            if children:
                stack.append(enclosing)
            continue
        if children:
            # types, variables, namespaces...: their children cannot hold code, except that a
            # namespace or module might; kernel C has none, but be exact for C++ (DW_TAG_namespace
            # 0x39, DW_TAG_module 0x1e, class/structure types with member functions defined inline)
            if tag in _SCOPE_TAGS or (enter_types and tag in _TYPE_SCOPE_TAGS):
                stack.append(enclosing)
            else:
                pos = _skip_subtree(reader, pos, vals)
    if pos > data_end:
        raise DwarfError(".debug_info", unit, f"a DIE or sibling reference runs past the end of the unit at "
                         f"{data_end:#x}")
    return None


def _skip_subtree(reader: _CUReader, pos: int, vals: dict[int, tuple[int, Any]]) -> int:
    """Position after the children of a DIE whose attributes end at ``pos``."""
    sib = vals.get(AT_SIBLING)
    if sib is not None:
        target = _ref_target(reader, *sib)
        if target > pos:
            return target
    depth = 1
    read_die = reader.read_die
    end = reader.hdr.end
    while depth:
        if pos >= end:
            raise DwarfError(".debug_info", reader.hdr.offset, "the DIE tree runs past the end of the unit")
        code, _tag, children, _vals, pos = read_die(pos)
        if code == 0:
            depth -= 1
        elif children:
            depth += 1
    return pos


# --- line programs -----------------------------------------------------------------------------------


def concat_filename(comp_dir: str, dirs: Sequence[str], name: str, dir_index: int, version: int) -> str:
    """Join a line-table file name as binutils' concat_filename does."""
    d = dir_index if version >= 5 else dir_index - 1
    key = (comp_dir, dirs[d] if 0 <= d < len(dirs) else None, name)
    got = _JOINED.get(key)
    if got is None:
        got = _JOINED[key] = _concat_filename(comp_dir, dirs, name, dir_index, version)
    return got


#: (comp_dir, directory, name) → concat_filename: units share their include files
_JOINED: dict[tuple[str, str | None, str], str] = {}


def _concat_filename(comp_dir: str, dirs: Sequence[str], name: str, dir_index: int, version: int) -> str:
    if name.startswith("/"):
        return name
    d = dir_index if version >= 5 else dir_index - 1
    subdir = dirs[d] if 0 <= d < len(dirs) else None
    dir_name: str | None = None
    if subdir is None or not subdir.startswith("/"):
        dir_name = comp_dir or None
    if dir_name is None:
        dir_name, subdir = subdir, None
    if dir_name is None:
        return name
    if subdir is not None:
        return f"{dir_name}/{subdir}/{name}"
    return f"{dir_name}/{name}"


def read_line_table(sec: DwarfSections, offset: int, comp_dir: str, cu_address_size: int,
                    until: int | None = None) -> LineTable:
    """The line table of the program at ``offset`` of .debug_line; with ``until``, decoded only as far
    as needed for that address (:meth:`LineTable.covers`, :func:`extend_lines`)."""
    data = sec.line
    assert data is not None
    try:
        return _read_line_table(sec, data, offset, comp_dir, cu_address_size, until)
    except _CUT_SHORT as exc:
        if isinstance(exc, IndexError | struct.error):
            raise DwarfError(".debug_line", offset, "the line program's data runs past its end") from None
        raise DwarfError(".debug_line", offset, f"malformed line program ({type(exc).__name__}: {exc})") from None


def extend_lines(table: LineTable, sec: DwarfSections, address: int) -> bool:
    """Decode ``table``'s line program (read from ``sec`` as far as another address needed) on until
    ``address`` is covered (or the program ends); True when rows were added.

    :raises DwarfError: the program is damaged (the table is left as it was)."""
    if table.covers(address) or sec.line is None:
        return False
    _decode_guarded(table, sec.line, address)
    return True


def _read_line_table(sec: DwarfSections, data: bytes | memoryview, offset: int, comp_dir: str,
                     cu_address_size: int, until: int | None) -> LineTable:
    e = "<" if sec.little_endian else ">"
    if not 0 <= offset <= len(data) - 4:
        raise DwarfError(".debug_line", offset, "a line program offset past the end of the section")
    length, pos, off_size = _initial_length(data, offset, e)
    end = pos + length
    if end > len(data):
        raise DwarfError(".debug_line", offset, f"the line program's length {length:#x} runs past the end "
                         "of the section")
    (version,) = struct.unpack_from(e + "H", data, pos)
    if not 2 <= version <= 5:
        raise DwarfError(".debug_line", offset, f"unsupported line program version {version}")
    pos += 2
    address_size = cu_address_size
    if version >= 5:
        address_size = data[pos]
        if address_size not in (2, 4, 8):
            raise DwarfError(".debug_line", offset, f"unsupported address size {address_size}")
        if data[pos + 1]:
            raise DwarfError(".debug_line", offset, f"unsupported segment selector size {data[pos + 1]}")
        pos += 2
    ofmt = e + ("I" if off_size == 4 else "Q")
    (header_length,) = struct.unpack_from(ofmt, data, pos)
    pos += off_size
    prog_start = pos + header_length
    min_inst = data[pos]
    pos += 1
    if version >= 4:
        pos += 1  # maximum_operations_per_instruction (VLIW only)
    default_is_stmt = data[pos]
    line_base = struct.unpack_from("b", data, pos + 1)[0]
    line_range = data[pos + 2]
    opcode_base = data[pos + 3]
    if prog_start > end:
        raise DwarfError(".debug_line", offset, f"the header length {header_length:#x} runs past the end "
                         "of the line program")
    if line_range == 0:
        raise DwarfError(".debug_line", offset, "line_range is 0")
    if opcode_base == 0:
        raise DwarfError(".debug_line", offset, "opcode_base is 0")
    pos += 4
    std_lengths = list(data[pos : pos + opcode_base - 1])
    pos += opcode_base - 1
    dirs: list[str] = []
    raw_files: list[tuple[str, int]] = []
    files: list[str] | None = None
    if version >= 5:
        gcc = _gcc_v5_files(sec, data, pos, off_size, e, comp_dir) if off_size == 4 else None
        if gcc is not None:
            dirs, files, pos = gcc
            if pos > prog_start:
                raise DwarfError(".debug_line", offset, "the file table runs past the header")
        else:
            dirs_e, pos = _v5_entries(sec, data, pos, off_size, e)
            dirs = [str(d.get(1, "")) for d in dirs_e]
            files_e, pos = _v5_entries(sec, data, pos, off_size, e)
            raw_files = [(str(f.get(1, "")), int(f.get(2, 0))) for f in files_e]
            if any(not 0 <= d < len(dirs) for _n, d in raw_files):
                raise DwarfError(".debug_line", offset, "a file's directory index past the directories")
            if pos > prog_start:
                raise DwarfError(".debug_line", offset, "the file table runs past the header")
    else:
        while data[pos] != 0:
            s, pos = _cstr(data, pos)
            dirs.append(s)
        pos += 1
        while data[pos] != 0:
            s, pos = _cstr(data, pos)
            di, pos = _uleb(data, pos)
            _m, pos = _uleb(data, pos)
            _l, pos = _uleb(data, pos)
            raw_files.append((s, di))
        pos += 1
        if pos > prog_start:
            raise DwarfError(".debug_line", offset, "the file table runs past the header")
    if files is None:
        files = [concat_filename(comp_dir, dirs, n, d, version) for n, d in raw_files]
    del default_is_stmt, pos

    # DWARF < 5 numbers files from 1; rows keep the file number as written
    table = LineTable(files=files, file_base=0 if version >= 5 else 1, offset=offset)
    # binutils starts every sequence of a DWARF 5 table at file 0 (the spec says 1); rows before the
    # first DW_LNS_set_file differ when entries 0 and 1 name different files. Match addr2line.
    first_file = 0 if version >= 5 else 1
    # the decoder's state at the start of the program
    header = LineProgramHeader(end, min_inst, line_base, line_range, opcode_base, address_size, first_file,
                               e == ">", tuple(std_lengths))
    table.pending = LineDecoderState(prog_start, 0, first_file, 1, 0, 0, -1, 0, header)
    _decode_guarded(table, data, until)
    return table


def _decode_guarded(table: LineTable, data: bytes | memoryview, until: int | None) -> None:
    """:func:`_decode_lines`, leaving ``table`` as it was when the program turns out to be damaged.

    :raises DwarfError: the program is damaged."""
    addrs, rows, seqs = table.addrs, table.rows, table.seqs
    n_rows, n_seqs = len(addrs), len(seqs)
    last = rows[-1] if n_rows and not isinstance(rows, _Rows) else None
    try:
        _decode_lines(table, data, until)
        if len(table.addrs) > n_rows and max(table.addrs[n_rows:]) >= 1 << 64:
            raise DwarfError(".debug_line", max(table.offset, 0), "a row address past the largest address")
    except (DwarfError, *_CUT_SHORT) as exc:
        # the decoder appends rows (and may replace the last one) before it knows the program is bad
        if table.rows is rows:
            del rows[n_rows:]
            del addrs[n_rows:]
            if last is not None:
                rows[-1] = last
        else:  # it turned stored columns into lists: go back to them
            table.rows, table.addrs = rows, addrs
        del seqs[n_seqs:]
        if isinstance(exc, DwarfError):
            raise
        at = max(table.offset, 0)
        if isinstance(exc, IndexError | struct.error):
            raise DwarfError(".debug_line", at, "the line program's data runs past its end") from None
        raise DwarfError(".debug_line", at, f"malformed line program ({type(exc).__name__}: {exc})") from None


#: (opcode_base, line_range, min_inst_length, line_base) → the address and line advance of each special
#: opcode (every unit of a compiler's output has the same header constants)
_ADVANCES: dict[tuple[int, int, int, int], tuple[list[int], list[int]]] = {}


def _decode_lines(table: LineTable, data: bytes | memoryview, until: int | None) -> None:
    """Run ``table``'s line program on from where it stopped (``table.pending``): to its end, or with
    ``until`` only until the row covering that address is known for certain (a row past it was
    decoded in a sequence that starts at or below it), leaving the rest for a later call."""
    state = table.pending
    assert state is not None
    # the registers and constants as locals for the loop
    start, address, file, line, column, disc, last_addr, seq_first, header = state
    end, min_inst, line_base, line_range, ob, address_size, first_file, big, std_lengths = header
    e = ">" if big else "<"
    order = _byteorder(e)
    if isinstance(table.rows, _Rows):  # loaded from the index: decode on into plain lists
        r = table.rows
        table.rows = list(zip(r.files, r.lines, r.cols, r.discs, map(bool, r.ends)))
        table.addrs = list(table.addrs)
    addrs = table.addrs
    rows = table.rows
    seqs = table.seqs
    file_base = table.file_base
    n_files = len(table.files)
    # the program as bytes (indexing a memoryview over the mapped file is slower), positions shifted
    d = bytes(data[start:end])
    n_end = end - start
    pos = 0
    lr = line_range
    # stop once a row above ``stop`` is decoded (never without ``until``; not in a sequence that
    # starts above it)
    never = 1 << 64
    stop = never if until is None else until
    if until is not None and len(rows) > seq_first and addrs[seq_first] > until:
        stop = never  # resuming inside a sequence that starts above ``until``
    # bfd keeps only the last row for one address within a sequence (PR ld/4986): a row at the
    # address of the previous one replaces it (``last_addr``)
    # the address and line advance of each special opcode, computed once
    advances = _ADVANCES.get((ob, lr, min_inst, line_base))
    if advances is None:
        advances = _ADVANCES[ob, lr, min_inst, line_base] = (
            [((op - ob) // lr) * min_inst if op >= ob else 0 for op in range(256)],
            [line_base + (op - ob) % lr if op >= ob else 0 for op in range(256)])
    addr_adv, line_adv = advances
    # branches in the order of how often GCC's kernel line programs use the opcodes: copy, special,
    # set_column, negate_stmt, advance_line, set_file, extended
    # opcode 1 is DW_LNS_copy unless the header makes every opcode special (opcode_base 1)
    copy_op = 1 if ob > 1 else -1
    while pos < n_end:
        op = d[pos]
        pos += 1
        if op == copy_op or op >= ob:  # copy, special
            if op != copy_op:
                address += addr_adv[op]
                line += line_adv[op]
            if address == last_addr:
                rows[-1] = (file, line, column, disc, False)
            else:
                addrs.append(address)
                rows.append((file, line, column, disc, False))
                last_addr = address
                if address > stop:
                    if addrs[seq_first] <= stop:
                        # every row below this one is final (a later row at this row's address would
                        # replace only this one): ``until`` is answered
                        disc = 0
                        break
                    stop = never  # a sequence that starts above ``until``: decode it through
            disc = 0
        elif op == 5:  # set_column (one-byte LEB128 is the common case for these operands)
            column = d[pos]
            if column < 0x80:
                pos += 1
            else:
                column, pos = _uleb(d, pos)
        elif op == 6:  # negate_stmt: bfd's lookup does not use is_stmt
            pass
        elif op == 3:  # advance_line: one- and two-byte SLEB128 inline
            v = d[pos]
            if v < 0x40:
                pos += 1
            elif v < 0x80:
                v -= 0x80
                pos += 1
            else:
                w = d[pos + 1]
                if w < 0x80:
                    v = (v & 0x7F) | (w << 7)
                    if w & 0x40:
                        v -= 0x4000
                    pos += 2
                else:
                    v, pos = _sleb(d, pos)
            line += v
        elif op == 4:  # set_file: one- and two-byte ULEB128 inline
            file = d[pos]
            if file < 0x80:
                pos += 1
            elif d[pos + 1] < 0x80:
                file = (file & 0x7F) | (d[pos + 1] << 7)
                pos += 2
            else:
                file, pos = _uleb(d, pos)
            if not 0 <= file - file_base < n_files:
                raise DwarfError(".debug_line", start + pos, f"DW_LNS_set_file {file} past the line "
                                 f"program's {n_files} files")
        elif op == 0:
            ln = d[pos]
            if ln < 0x80:
                pos += 1
            else:
                ln, pos = _uleb(d, pos)
            if ln == 0:
                raise DwarfError(".debug_line", start + pos, "an extended opcode of length 0")
            sub = d[pos]
            nxt = pos + ln
            if sub == 1:  # end_sequence
                addrs.append(address)
                rows.append((file, line, column, disc, True))
                seqs.append(LineSequence(min(addrs[seq_first:]), address, seq_first, len(rows)))
                seq_first = len(rows)
                last_addr = -1
                address = 0
                file = first_file
                line = 1
                column = 0
                disc = 0
                stop = never if until is None else until
            elif sub == 2:  # set_address
                address = int.from_bytes(d[pos + 1 : pos + 1 + min(address_size, ln - 1)], order)
            elif sub == 4:  # set_discriminator
                disc = d[pos + 1]
                if disc >= 0x80:
                    disc, _ = _uleb(d, pos + 1)
            elif sub != 3 and sub != 0x80:  # define_file, HP_source_file_correlation: skipped as bfd does
                raise DwarfError(".debug_line", start + pos, f"unknown extended opcode {sub:#x}")
            if nxt > n_end:
                raise DwarfError(".debug_line", start + pos, "an extended opcode runs past the end of the program")
            pos = nxt
        elif op == 2:  # advance_pc
            v = d[pos]
            if v < 0x80:
                pos += 1
            else:
                v, pos = _uleb(d, pos)
            address += v * min_inst
        elif op == 8:  # const_add_pc
            address += ((255 - ob) // lr) * min_inst
        elif op == 9:  # fixed_advance_pc
            address += struct.unpack_from(e + "H", d, pos)[0]
            pos += 2
        elif op in (7, 10, 11):
            pass
        else:  # set_isa (12) and unknown standard opcodes: skip their uleb operands
            for _ in range(std_lengths[op - 1] if op - 1 < len(std_lengths) else 0):
                _v, pos = _uleb(d, pos)
    seqs.sort()
    if pos >= n_end:
        table.pending = None
    else:
        table.pending = LineDecoderState(start + pos, address, file, line, column, disc, last_addr, seq_first,
                                         header)



def _gcc_v5_files(sec: DwarfSections, data: bytes | memoryview, pos: int, off_size: int, e: str,
                  comp_dir: str) -> tuple[list[str], list[str], int] | None:
    """The directories and joined file names of a DWARF 5 line table header at ``pos`` (its directory
    entry formats) when they are in GCC's form (each path a 32-bit .debug_line_str offset, each file's
    directory an index), else None. A kernel unit names a few hundred headers that other units name
    too: names are joined once per (directory, name) offset pair."""
    line_str = sec.line_str
    if line_str is None or data[pos] != 1 or data[pos + 1] != 1 or data[pos + 2] != FORM_LINE_STRP:
        return None
    u32 = _STRUCTS[(e, 4)].unpack_from
    count, pos = _uleb(data, pos + 3)
    dir_offs = [u32(data, pos + 4 * i)[0] for i in range(count)]
    pos += 4 * count
    ndirs = count
    if bytes(data[pos : pos + 5]) != bytes((2, 1, FORM_LINE_STRP, 2, FORM_UDATA)):
        return None
    string_at = sec.string_at
    dirs = [string_at(line_str, o) for o in dir_offs]
    count, pos = _uleb(data, pos + 5)
    joined = sec._joined.setdefault(comp_dir, {})
    files: list[str] = []
    for _ in range(count):
        name_off = u32(data, pos)[0]
        di = data[pos + 4]
        if di < 0x80:
            pos += 5
        else:
            di, pos = _uleb(data, pos + 4)
        if di >= ndirs:
            raise DwarfError(".debug_line", pos, f"directory index {di} past the {ndirs} directories")
        key = (dir_offs[di], name_off)
        got = joined.get(key)
        if got is None:
            got = joined[key] = concat_filename(comp_dir, dirs, string_at(line_str, name_off), di, 5)
        files.append(got)
    return dirs, files, pos


def _v5_entries(
    sec: DwarfSections, data: bytes | memoryview, pos: int, off_size: int, e: str
) -> tuple[list[dict[int, Any]], int]:
    fmt_count = data[pos]
    pos += 1
    fmts = []
    for _ in range(fmt_count):
        ct, pos = _uleb(data, pos)
        if not (1 <= ct <= 5 or 0x2000 <= ct <= 0x3FFF):
            raise DwarfError(".debug_line", pos - 1, f"unknown entry format content type {ct:#x}")
        form, pos = _uleb(data, pos)
        fmts.append((ct, form))
    count, pos = _uleb(data, pos)
    out: list[dict[int, Any]] = []
    ofmt = e + ("I" if off_size == 4 else "Q")
    for _ in range(count):
        ent: dict[int, Any] = {}
        for ct, form in fmts:
            val: Any
            if form == FORM_STRING:
                val, pos = _cstr(data, pos)
            elif form in (FORM_LINE_STRP, FORM_STRP):
                (o,) = struct.unpack_from(ofmt, data, pos)
                pos += off_size
                val = sec.string_at(sec.line_str if form == FORM_LINE_STRP else sec.debug_str, o)
            elif form in (FORM_UDATA,):
                val, pos = _uleb(data, pos)
            elif form == FORM_DATA1:
                val, pos = data[pos], pos + 1
            elif form == FORM_DATA2:
                val, pos = struct.unpack_from(e + "H", data, pos)[0], pos + 2
            elif form == FORM_DATA4:
                val, pos = struct.unpack_from(e + "I", data, pos)[0], pos + 4
            elif form == FORM_DATA8:
                val, pos = struct.unpack_from(e + "Q", data, pos)[0], pos + 8
            elif form == FORM_DATA16:
                val, pos = None, pos + 16
            elif form == FORM_BLOCK:
                n, pos = _uleb(data, pos)
                val, pos = None, pos + n
            else:
                raise DwarfError(".debug_line", pos, f"unsupported form {form:#x} in a line program header")
            ent[ct] = val
        out.append(ent)
    return out, pos


# --- (de)serialisation for the on-disk index ----------------------------------------------------------


def unit_ranges(sec: DwarfSections, cu_offset: int) -> list[tuple[int, int]]:
    """Address ranges of a unit from its top DIE (DW_AT_ranges or low/high pc). A unit DIE with neither
    DW_AT_ranges nor DW_AT_high_pc (old clang writes DW_AT_low_pc alone) covers its line program's
    sequences: bfd tries such a unit for every address and adds each sequence to its ranges once it
    has decoded the line program.

    :raises DwarfError: the unit, its range list or its line program is damaged."""
    try:
        reader, vals, _children, _pos = _open_unit(sec, cu_offset)
        if AT_RANGES not in vals and AT_HIGH_PC not in vals:
            if AT_STMT_LIST not in vals or sec.line is None:
                return []
            comp_dir = reader.string(*vals[AT_COMP_DIR]) if AT_COMP_DIR in vals else ""
            table = read_line_table(sec, int(vals[AT_STMT_LIST][1]), comp_dir, reader.hdr.address_size)
            return [(seq.low, seq.high) for seq in table.seqs if seq.high > seq.low]
        return [r for r in reader.ranges_of(vals) if r[1] > r[0]]
    except _CUT_SHORT as exc:
        raise _damage(exc, ".debug_info", cu_offset) from None


def unit_line_table(sec: DwarfSections, cu_offset: int) -> LineTable | None:
    """Only the line table of a unit (no DIE walk): enough for a file:line without inline chain.

    :raises DwarfError: the unit or its line program is damaged."""
    try:
        reader, vals, _children, _pos = _open_unit(sec, cu_offset)
        if AT_STMT_LIST not in vals or sec.line is None:
            return None
        comp_dir = reader.string(*vals[AT_COMP_DIR]) if AT_COMP_DIR in vals else ""
        return read_line_table(sec, int(vals[AT_STMT_LIST][1]), comp_dir, reader.hdr.address_size)
    except _CUT_SHORT as exc:
        raise _damage(exc, ".debug_info", cu_offset) from None
