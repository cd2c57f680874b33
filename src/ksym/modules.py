"""Kernel modules: ``nft_do_chain+0x3e8/0x5d0 [nf_tables]`` → file:line with the inline chain.

A module's debug file (``nf_tables.ko``, ``.ko.xz``, ``.ko.zst``, ``.ko.debug``) is a relocatable ELF
object (ET_REL): every SHF_ALLOC section starts at address 0, symbol values are offsets into their own
section, and the DWARF addresses only mean something once the ``.rela.debug_*`` sections are applied.
The kernel's scripts/faddr2line hands such a file to ``addr2line --section=SEC`` with the section-relative
address; binutils (bfd's ``place_sections``) then gives every SHF_ALLOC section a distinct address — in
section-header order, each aligned to its ``sh_addralign``, one after the other — and relocates the debug
sections against that layout. :class:`ModuleSymbolizer` does exactly the same, so ``.text``,
``.init.text``, ``.exit.text`` and ``.text.unlikely`` never overlap and the answers are addr2line's.

    >>> from ksym.modules import ModuleSymbolizer
    >>> m = ModuleSymbolizer("nf_tables.ko")
    >>> print(m.resolve("nft_do_chain+0x3e8")[0])
    nft_do_chain+0x3e8/0x5d0:
    expr_call_ops_eval at debian/build/build_amd64_none_cloud-amd64/net/netfilter/nf_tables_core.c:202
    (inlined by) nft_do_chain at debian/build/build_amd64_none_cloud-amd64/net/netfilter/nf_tables_core.c:264

The relocation types applied to the debug sections: x86-64 ``R_X86_64_64``, ``R_X86_64_32``,
``R_X86_64_32S``, ``R_X86_64_PC32``, ``R_X86_64_PC64``; arm64 ``R_AARCH64_ABS64``, ``R_AARCH64_ABS32``;
i386 ``R_386_32`` (REL); ``*_NONE`` is skipped. Any other type in a debug section read is an error
(one line). A :class:`ksym.model.Resolution` from a module carries the *section-relative* address (what
``addr2line -j SECTION`` takes) in ``address``. See docs/modules.md.
"""

from __future__ import annotations

import contextlib
import functools
import io
import lzma
import os
import re
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .buildid import read_build_id_from_notes, same_build_id
from .compress import ZSTD_MAGIC, SectionContents, zstd_decompress
from .debuginfo import DebuginfodClient, DebuginfoOptions, build_id_paths
from .dwarf_image import DwarfImage, ReadySections, dwarf_sections
from .errors import (
    BadFileError,
    DebuginfodError,
    FileNotFoundKsymError,
    KsymError,
    MissingDebugInfoError,
    SpecError,
)
from .image import MODULE_SUFFIXES as _MODULE_SUFFIXES
from .image import SectionTableCheck, SectionTableError, is_module_file
from .image import strip_module_suffix as _strip_module_suffix
from .model import Resolution, SourceLocation
from .pathmap import PathMap
from .spec import AddressSpec, FuncSpec, parse_spec
from .symbols import FaddrMatch, Section, SymbolTable, faddr2line_select, inline_chain

if TYPE_CHECKING:
    from . import dwarf as D

__all__ = [
    "MODULE_DEBUG_ROOT",
    "ModuleImage",
    "ModuleSet",
    "ModuleSymbolizer",
    "find_module_debug_file",
    "is_module_file",
    "module_file_names",
    "normalize_module_name",
    "read_module_file",
]

#: Where distributions install module debug files: ``<root>/<release>/kernel/...``.
MODULE_DEBUG_ROOT = Path("/usr/lib/debug/lib/modules")

SHT_SYMTAB = 2
SHT_RELA = 4
SHT_NOTE = 7
SHT_NOBITS = 8
SHT_REL = 9
SHF_ALLOC = 0x2
ET_REL = 1

# machine → {type: (width in bytes, pc-relative, name)}; width 0: no-op
_RELOCS: dict[int, dict[int, tuple[int, bool, str]]] = {
    62: {0: (0, False, "R_X86_64_NONE"), 1: (8, False, "R_X86_64_64"), 2: (4, True, "R_X86_64_PC32"),
         10: (4, False, "R_X86_64_32"), 11: (4, False, "R_X86_64_32S"), 24: (8, True, "R_X86_64_PC64")},
    183: {0: (0, False, "R_AARCH64_NONE"), 256: (0, False, "R_AARCH64_NONE"),
          257: (8, False, "R_AARCH64_ABS64"), 258: (4, False, "R_AARCH64_ABS32")},
    3: {0: (0, False, "R_386_NONE"), 1: (4, False, "R_386_32"), 2: (4, True, "R_386_PC32")},
}


# --- reading the file ---------------------------------------------------------------------------------


def read_module_file(path: str | os.PathLike[str]) -> bytes:
    """The ELF bytes of a module file, decompressing ``.xz`` (stdlib lzma), ``.gz`` (zlib) and ``.zst``.

    ``.zst`` needs a Zstandard decompressor (:mod:`ksym.compress`): ``compression.zstd`` (Python 3.14+) or
    the ``zstandard`` package (a default dependency of ksym before Python 3.14; ``ksym[zstd]`` where it was
    left out); without one, :class:`BadFileError` says so in one line. The file type is told by its magic
    bytes, not its name.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundKsymError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise FileNotFoundKsymError(f"{p}: is a directory, not a module") from None
    except PermissionError:
        raise FileNotFoundKsymError(f"{p}: permission denied") from None
    except OSError as exc:
        raise FileNotFoundKsymError(f"{p}: cannot open: {exc.strerror}") from None
    if raw[:6] == b"\xfd7zXZ\x00":
        try:
            return lzma.decompress(raw)
        except lzma.LZMAError as exc:
            raise BadFileError(f"{p}: corrupt xz data: {exc}") from None
    if raw[:4] == ZSTD_MAGIC:
        return zstd_decompress(raw, str(p), hint="unzstd the file first")
    if raw[:2] == b"\x1f\x8b":
        import gzip

        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise BadFileError(f"{p}: corrupt gzip data: {exc}") from None
    return raw


def _log2(n: int) -> int:
    return max(n.bit_length() - 1, 0) if n > 0 else 0



def _raw_path(path: str) -> str:
    # faddr2line strips no prefix in a module (it has no start_kernel): paths as addr2line prints them
    return path or "??"

class ModuleImage:
    """An opened module debug file: sections, the bfd-style layout of its SHF_ALLOC sections, symbol
    tables, and the relocated DWARF sections.

    ``bases`` maps each SHF_ALLOC section index to the address bfd's ``place_sections`` gives it.
    """

    def __init__(self, path: str | os.PathLike[str], data: bytes | None = None) -> None:
        self.path = Path(path)
        self.data = data if data is not None else read_module_file(self.path)
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile

        if self.data[:4] != b"\x7fELF":
            raise BadFileError(f"{self.path}: not an ELF file")
        try:
            self.elf = ELFFile(io.BytesIO(self.data))
            self.elf_type = str(self.elf.header["e_type"])
            self.little_endian = bool(self.elf.little_endian)
            self.elfclass = int(self.elf.elfclass)
            self.machine_number = _machine_number(self.data, self.little_endian)
            secs: list[Section] = []
            self._align: dict[int, int] = {}
            self._link: dict[int, int] = {}
            self._info: dict[int, int] = {}
            check = SectionTableCheck(self.elf, len(self.data))
            for i, sec in enumerate(self.elf.iter_sections()):
                h = sec.header
                check.entry(i, h)
                st = h["sh_type"]
                stype = st if isinstance(st, int) else _sh_type_num(str(st))
                secs.append(Section(i, sec.name, stype, int(h["sh_flags"]), int(h["sh_addr"]),
                                    int(h["sh_offset"]), int(h["sh_size"])))
                self._align[i] = int(h["sh_addralign"])
                self._link[i] = int(h["sh_link"])
                self._info[i] = int(h["sh_info"])
        except SectionTableError as exc:
            raise BadFileError(f"{self.path}: damaged ELF section table: {exc}") from None
        except (ELFError, struct.error, ValueError, KeyError, OSError, OverflowError) as exc:
            raise BadFileError(f"{self.path}: corrupt ELF file: {exc}") from None
        if self.elf_type != "ET_REL":
            raise BadFileError(f"{self.path}: not a kernel module (ELF type {self.elf_type}, expected ET_REL)")
        for s in secs:
            if s.type != SHT_NOBITS and s.offset + s.size > len(self.data):
                raise BadFileError(f"{self.path}: truncated ELF file: section {s.name} ends past the end of the file")
        self.sections = secs
        self._by_name = {s.name: s for s in secs}
        # each compressed section is inflated once per image
        self._contents = SectionContents(self.data, secs, self.little_endian, self.elfclass, self.path)
        self.bases = self._place_sections()
        # sections at their synthetic addresses (for address → section and bfd's function fallback)
        self.placed_sections = [
            Section(s.index, s.name, s.type, s.flags, self.bases.get(s.index, 0), s.offset, s.size) for s in secs
        ]

    # -- layout --

    def _place_sections(self) -> dict[int, int]:
        """bfd's ``place_sections`` for relocatable objects: SHF_ALLOC sections in header order, each at
        the running end aligned to its alignment."""
        bases: dict[int, int] = {}
        last = 0
        for s in self.sections:
            if not s.flags & SHF_ALLOC or s.index == 0:
                continue
            align = 1 << _log2(self._align.get(s.index, 0))
            last = (last + align - 1) & -align
            bases[s.index] = last
            last += s.size
        return bases

    # -- facts --

    def section(self, name: str) -> Section | None:
        return self._by_name.get(name)

    def _lookup(self, name: str) -> Section | None:
        found: Section | None = self._contents.find(name)  # a legacy .zdebug_X answers for .debug_X
        return found

    def section_bytes(self, name: str) -> bytes | None:
        """Contents of a section, decompressed if needed (SHF_COMPRESSED zlib/zstd, ``.zdebug_*``: once per
        image), or None; ``.debug_X`` falls back to ``.zdebug_X``. Not relocated: see
        :meth:`relocated_section`."""
        s = self._lookup(name)
        if s is None or s.type == SHT_NOBITS:
            return None
        return bytes(self._contents.of(s))  # the file is in memory as bytes: no copy

    @property
    def build_id(self) -> str | None:
        for s in self.sections:
            if s.type == SHT_NOTE:
                bid = read_build_id_from_notes(self.section_bytes(s.name) or b"", self.little_endian)
                if bid:
                    return bid
        return None

    @property
    def modinfo(self) -> dict[str, str]:
        """``.modinfo`` as key → value (the first of repeated keys)."""
        out: dict[str, str] = {}
        for item in (self.section_bytes(".modinfo") or b"").split(b"\0"):
            key, sep, value = item.partition(b"=")
            if sep and key.decode("utf-8", "replace") not in out:
                out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        return out

    @property
    def module_name(self) -> str:
        """``name=`` of ``.modinfo``, else the file name without its ``.ko*`` suffix."""
        name = self.modinfo.get("name")
        if name:
            return name
        base = self.path.name
        for suffix in sorted(_MODULE_SUFFIXES, key=len, reverse=True):
            if base.endswith(suffix):
                return base[: -len(suffix)]
        return base

    @property
    def has_dwarf(self) -> bool:
        return self._lookup(".debug_info") is not None

    def make_dwarf_image(self) -> DwarfImage:
        """The module's DWARF, relocated, read on first use."""
        return DwarfImage(self.path, ReadySections(self.dwarf_sections))

    def section_data(self, s: Section, offset: int, size: int) -> bytes:
        """``size`` bytes of section ``s`` (with contents) from ``offset``, not relocated."""
        return self.data[s.offset + offset : s.offset + offset + size]

    def require_dwarf(self) -> None:
        if self._lookup(".debug_info") is None:
            raise MissingDebugInfoError(
                f"{self.path}: no DWARF debug info (.debug_info): this is a stripped module; install the "
                "kernel's debug symbols (Debian: linux-image-<release>-dbg) or pass the module's debug file"
            )

    def symbol_tables(self) -> tuple[SymbolTable, SymbolTable]:
        """(raw, placed): symbol values section-relative as readelf prints them (faddr2line's sizes), and
        the same table with every value moved to its section's synthetic address (bfd's view)."""
        tables = []
        for s in self.sections:
            if s.type == SHT_SYMTAB:
                link = self._link.get(s.index, 0)
                if 0 < link < len(self.sections):
                    tables.append((self.section_bytes(s.name) or b"",
                                   self.section_bytes(self.sections[link].name) or b""))
        if not tables:
            raise BadFileError(f"{self.path}: no symbol table (.symtab): the module was stripped")
        raw = SymbolTable.from_raw(tables, self.sections, self.little_endian, self.elfclass)
        return raw, placed_symbol_table(raw, self.bases, self.placed_sections)

    # -- relocation --

    def _symbol_values(self, symtab_index: int) -> list[int]:
        """Per symbol of a symbol table: its value moved to its section's synthetic address."""
        s = self.sections[symtab_index]
        data = self.section_bytes(s.name) or b""
        e = "<" if self.little_endian else ">"
        out: list[int] = []
        if self.elfclass == 64:
            for _n, _i, _o, sh, value, _sz in struct.iter_unpack(e + "IBBHQQ", data[: len(data) - len(data) % 24]):
                out.append(value + self.bases.get(sh, 0))
        else:
            for _n, value, _sz, _i, _o, sh in struct.iter_unpack(e + "IIIBBH", data[: len(data) - len(data) % 16]):
                out.append(value + self.bases.get(sh, 0))
        return out

    def relocated_section(self, name: str) -> bytes | None:
        """A section's contents with its ``.rela``/``.rel`` section applied against the layout."""
        target = self._lookup(name)
        if target is None or target.type == SHT_NOBITS:
            return None
        data = self.section_bytes(name)
        if data is None:
            return None
        relocs = [s for s in self.sections if s.type in (SHT_RELA, SHT_REL) and self._info.get(s.index) == target.index]
        if not relocs:
            return data
        buf = bytearray(data)
        e = "<" if self.little_endian else ">"
        kinds = _RELOCS.get(self.machine_number)
        if kinds is None:
            raise BadFileError(f"{self.path}: relocations for ELF machine {self.machine_number} are not supported")
        values_cache: dict[int, list[int]] = {}
        for rs in relocs:
            symtab = self._link.get(rs.index, 0)
            if symtab not in values_cache:
                values_cache[symtab] = self._symbol_values(symtab)
            values = values_cache[symtab]
            rdata = self.section_bytes(rs.name) or b""
            rela = rs.type == SHT_RELA
            if self.elfclass == 64:
                ent = 24 if rela else 16
                fmt = e + ("QQq" if rela else "QQ")
            else:
                ent = 12 if rela else 8
                fmt = e + ("IIi" if rela else "II")
            pack = {8: struct.Struct(e + "Q"), 4: struct.Struct(e + "I")}
            for t in struct.iter_unpack(fmt, rdata[: len(rdata) - len(rdata) % ent]):
                off, info = t[0], t[1]
                if self.elfclass == 64:
                    rtype, rsym = info & 0xFFFFFFFF, info >> 32
                else:
                    rtype, rsym = info & 0xFF, info >> 8
                kind = kinds.get(rtype)
                if kind is None:
                    raise BadFileError(f"{self.path}: relocation type {rtype} in {rs.name} is not supported")
                width, pcrel, _rname = kind
                if width == 0:
                    continue
                if off + width > len(buf):
                    raise BadFileError(f"{self.path}: relocation at {off:#x} lies outside {name}")
                st = pack[width]
                addend = t[2] if rela else st.unpack_from(buf, off)[0]
                value = (values[rsym] if rsym < len(values) else 0) + addend
                if pcrel:
                    value -= self.bases.get(target.index, 0) + off
                st.pack_into(buf, off, value & ((1 << (8 * width)) - 1))
        return bytes(buf)

    def dwarf_sections(self) -> D.DwarfSections:
        """The DWARF sections, relocated against the layout."""
        self.require_dwarf()
        return dwarf_sections(self.path, self.relocated_section, self.little_endian, self.elfclass,
                              self.require_dwarf)


def placed_symbol_table(raw: SymbolTable, bases: dict[int, int], placed_sections: list[Section]) -> SymbolTable:
    """``raw`` with every value moved to its section's synthetic address (bfd's view of a module)."""
    from array import array

    placed_values = array("Q", (
        (v + bases.get(sh, 0)) & 0xFFFFFFFFFFFFFFFF for v, sh in zip(raw.values, raw.shndx)
    ))
    placed = SymbolTable(raw.names, placed_values, raw.sizes, raw.infos, raw.others, raw.shndx, placed_sections)
    placed.damaged = raw.damaged  # the names (and their stored order) are raw's
    return placed


class ModuleDebugImage(Protocol):
    """What :class:`ModuleSymbolizer` reads of a module: a :class:`ModuleImage` (its debug file) or a
    module of a portable index file (:class:`ksym.portable.PortableModule`)."""

    @property
    def path(self) -> Path: ...
    @property
    def build_id(self) -> str | None: ...
    @property
    def module_name(self) -> str: ...
    @property
    def has_dwarf(self) -> bool: ...
    @property
    def sections(self) -> list[Section]: ...
    @property
    def bases(self) -> dict[int, int]: ...
    def section(self, name: str) -> Section | None: ...
    def require_dwarf(self) -> None: ...
    def symbol_tables(self) -> tuple[SymbolTable, SymbolTable]: ...
    def make_dwarf_image(self) -> DwarfImage: ...
    def section_data(self, s: Section, offset: int, size: int) -> bytes: ...


class ModuleSource(Protocol):
    """Modules kept elsewhere than in debug files (:class:`ksym.portable.PortableFile`)."""

    @property
    def path(self) -> Path:
        """Where they are (named where a module is not found)."""
        ...

    def module_build_ids(self, module_name: str) -> list[str | None]:
        """The build ids of the modules of this name it holds (normalized name)."""
        ...

    def module(self, module_name: str, build_id: str | None) -> ModuleDebugImage:
        """The module of this name and exact build id (one :meth:`module_build_ids` gave)."""
        ...


def _machine_number(data: bytes, little_endian: bool) -> int:
    return int(struct.unpack_from("<H" if little_endian else ">H", data, 18)[0])


def _sh_type_num(name: str) -> int:
    table = {"SHT_NULL": 0, "SHT_PROGBITS": 1, "SHT_SYMTAB": 2, "SHT_STRTAB": 3, "SHT_RELA": 4,
             "SHT_HASH": 5, "SHT_DYNAMIC": 6, "SHT_NOTE": 7, "SHT_NOBITS": 8, "SHT_REL": 9,
             "SHT_DYNSYM": 11}
    return table.get(name, 0x70000000)


# --- resolving ------------------------------------------------------------------------------------------


class ModuleSymbolizer:
    """Resolve frames of one kernel module the way ``scripts/faddr2line MODULE.ko func+off`` does.

    :param path: the module's debug file (``.ko``, ``.ko.xz``, ``.ko.zst``, ``.ko.gz``, ``.ko.debug``).
    :raises FileNotFoundKsymError: no such file.
    :raises BadFileError: not ELF, not ET_REL, no symbol table, unsupported relocation or compression.
        A module without DWARF answers addresses from its symbol table (see ``has_dwarf``).

    It is a :class:`ksym.model.ImageResolver`, as the vmlinux :class:`ksym.Symbolizer` is, and does its
    DWARF through the same :class:`ksym.dwarf_image.DwarfImage` (over the relocated sections, with no
    index: a module is read whole when opened). Use it in a ``with`` block or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str], *,
                 path_map: Iterable[str | tuple[str, str]] | PathMap | None = None,
                 image: ModuleDebugImage | None = None) -> None:
        self.path_map = PathMap.parse(path_map)
        #: the module's debug file, or ``image`` (a module of a portable index file: ``path`` unused)
        self.image: ModuleDebugImage = image if image is not None else ModuleImage(path)
        self.path = self.image.path
        #: False for a module stripped of its DWARF: addresses are answered from the symbol table alone
        #: (function names, no file:line), as addr2line does; ``func+off`` frames raise
        #: MissingDebugInfoError, as scripts/faddr2line refuses such a file.
        self.has_dwarf = self.image.has_dwarf
        self.build_id: str | None = self.image.build_id
        self.module_name: str = self.image.module_name
        self.raw_symbols, self.symbols = self.image.symbol_tables()
        #: the module's DWARF (None: it has none): its relocated sections, read on first use
        self.dwarf_image: DwarfImage | None = self.image.make_dwarf_image() if self.has_dwarf else None
        self._chains: dict[int, tuple[SourceLocation, ...]] = {}

    def chain(self, address: int) -> tuple[SourceLocation, ...]:
        """The inline chain at a *placed* (synthetic) address, innermost first, as ``addr2line -i``."""
        got = self._chains.get(address)
        if got is None:
            if self.dwarf_image is None:
                got = inline_chain(None, address, self.symbols, self._display)
            else:
                got = self.dwarf_image.chain(address, self.symbols, self._display)[0]
            self._chains[address] = got
        return got

    def prefetch_frames(self, frames: Iterable[str], *, processes: int | None = None) -> int:
        """Read ahead what :meth:`resolve` of these frames will need (what :class:`ksym.model.ImageResolver`
        asks): the chain at each distinct placed address they name, kept for :meth:`chain`, so that
        :meth:`resolve` then only picks the symbols. A module's units are few and small: read in this
        process, ``processes`` is not used. Returns how many addresses were answered; malformed or
        unknown frames and errors are left for :meth:`resolve` to report."""
        want: set[int] = set()
        for frame in frames:
            try:
                spec = parse_spec(re.sub(r"\s*\[[^\]]*\]\s*$", "", frame))
            except SpecError:
                continue
            if isinstance(spec, AddressSpec):
                # symbolize_address tries the sections holding it in turn: the first one is the usual answer
                holding = self._holding(spec.address)
                if holding:
                    want.add(self.image.bases[holding[0].index] + spec.address - holding[0].addr)
                continue
            for m in self.raw_symbols.faddr2line_matches(spec.name):
                shndx = m.symbol.shndx
                sec = self.image.sections[shndx] if 0 < shndx < len(self.image.sections) else None
                offset = m.symbol.address + spec.offset
                if sec is not None and sec.index in self.image.bases and 0 <= offset < sec.size:
                    want.add(self.image.bases[sec.index] + offset)
        got = 0
        for address in want:
            with contextlib.suppress(KsymError):
                self.chain(address)
                got += 1
        return got

    def _holding(self, address: int) -> list[Section]:
        """The allocated sections holding section offset ``address``, in section-header order."""
        return [s for s in self.image.sections
                if s.index in self.image.bases and s.addr <= address < s.addr + s.size]

    def _display(self, raw: str) -> str:
        mapped = self.path_map.apply(raw) if self.path_map and raw not in ("", "??") else None
        return mapped if mapped is not None else _raw_path(raw)

    # -- public lookups --

    def section_base(self, section_name: str) -> int:
        """The synthetic address of an SHF_ALLOC section (see docs/modules.md)."""
        s = self.image.section(section_name)
        if s is None or s.index not in self.image.bases:
            raise SpecError(f"{self.path}: no allocated section {section_name}", section_name)
        return self.image.bases[s.index]

    def section_chain(self, section_name: str, offset: int) -> tuple[SourceLocation, ...]:
        """The chain ``addr2line -fi -j SECTION -e MODULE OFFSET`` prints (empty: ``?? ??:0``)."""
        s = self.image.section(section_name)
        if s is None or s.index not in self.image.bases:
            raise SpecError(f"{self.path}: no allocated section {section_name}", section_name)
        if not 0 <= offset < s.size:
            return ()  # addr2line finds nothing past the section's end
        return self.chain(self.image.bases[s.index] + offset)

    def symbolize_section_offset(self, section_name: str, offset: int, query: str | None = None) -> Resolution:
        """Resolve an offset into a section (``.text+0x1234``): the symbol it falls in and the chain.

        ``Resolution.address`` is the section-relative ``offset``."""
        chain = self.section_chain(section_name, offset)
        q = query if query is not None else f"{section_name}+{offset:#x}"
        placed = self.section_base(section_name) + offset
        hit = self.symbols.containing(placed)
        if hit is None:
            return Resolution(q, offset, None, None, None, None, chain)
        sym, size = hit
        return Resolution(q, offset, sym.name, placed - int(sym.address), size, None, chain)

    def resolve(self, frame: str, *, refuse_zero: bool = True) -> list[Resolution]:
        """Resolve ``func+off[/size]`` (every matching FUNC symbol, as faddr2line), e.g.
        ``nft_do_chain+0x3e8/0x5d0``; a trailing `` [module]`` or `` [module buildid]`` is ignored.
        A raw address (``0x17ce7``) is what ``addr2line -e MODULE`` makes of it: :meth:`symbolize_address`.
        ``refuse_zero=False``: a function at section offset 0 with offset 0 is answered (addr2line -j
        answers it) instead of faddr2line's ``bad address``.

        :raises SpecError: malformed text, or an address past every allocated section (a runtime address:
            a module has no link-time addresses).
        :raises SymbolNotFoundError: no symbol matched; ``.reasons`` holds faddr2line's skip messages.
        """
        text = re.sub(r"\s*\[[^\]]*\]\s*$", "", frame)
        spec = parse_spec(text)
        if isinstance(spec, AddressSpec):
            return [self.symbolize_address(spec.address, frame.strip())]
        return self._resolve_func(spec, refuse_zero)

    def symbolize(self, address: int, query: str | None = None) -> Resolution:
        """:meth:`symbolize_address` (the name :class:`ksym.model.ImageResolver` gives it)."""
        return self.symbolize_address(address, query)

    def symbolize_address(self, address: int, query: str | None = None) -> Resolution:
        """A raw address as ``addr2line -e MODULE ADDRESS`` (no ``-j``) takes it: every allocated section
        of a relocatable object starts at 0, so it is an offset into the first one, in section-header
        order, that holds it and has an answer for it (bfd tries them in turn); ``Resolution.address``
        is ``address``, the symbol is the one the offset falls in.

        :raises SpecError: no allocated section is that long (a runtime address needs the module's load
            address; see docs/modules.md).
        """
        q = query if query is not None else f"{address:#x}"
        holding = self._holding(address)
        if not holding:
            raise SpecError(f"{q}: past the end of every allocated section of {self.path.name}: an address "
                            "in a module is an offset into its sections (a runtime address needs the "
                            "module's load address)", q)
        chain: tuple[SourceLocation, ...] = ()
        sec = holding[0]
        for s in holding:
            chain = self.section_chain(s.name, address - s.addr)
            if chain:
                sec = s
                break
        placed = self.image.bases[sec.index] + address - sec.addr
        hit = self.symbols.containing(placed)
        if hit is None:
            return Resolution(q, address, None, None, None, None, chain)
        sym, size = hit
        return Resolution(q, address, sym.name, placed - int(sym.address), size, None, chain)

    def _resolve_func(self, spec: FuncSpec, refuse_zero: bool = True) -> list[Resolution]:
        if not self.has_dwarf:
            self.image.require_dwarf()  # scripts/faddr2line refuses a file without DWARF

        def chain_for(m: FaddrMatch, addr: int) -> tuple[SourceLocation, ...]:
            shndx = m.symbol.shndx
            sec = self.image.sections[shndx] if 0 < shndx < len(self.image.sections) else None
            if sec is not None and sec.index in self.image.bases:
                return self.section_chain(sec.name, addr)
            return ()

        return faddr2line_select(spec, self.raw_symbols.faddr2line_matches(spec.name), chain_for, refuse_zero)

    def code_bytes(self, section_name: str, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of a section from ``offset`` (not relocated: call targets read 0), for
        disassembling the call before a return address; empty outside the section."""
        s = self.image.section(section_name)
        if s is None or s.type == SHT_NOBITS or not 0 <= offset < s.size:
            return b""
        return self.image.section_data(s, offset, min(size, s.size - offset))

    def section_of(self, resolution: Resolution) -> str | None:
        """The section a :meth:`resolve` answer's address is relative to."""
        if resolution.symbol is None:
            return None
        for m in self.raw_symbols.faddr2line_matches(resolution.symbol):
            if m.size is not None and m.symbol.address + (resolution.offset or 0) == resolution.address:
                return self.image.sections[m.symbol.shndx].name
        return None

    def close(self) -> None:
        """Drop the units and answers in memory and release the sections (the file is read whole when
        opened: nothing else is held)."""
        if self.dwarf_image is not None:
            self.dwarf_image.close()
        self._chains.clear()

    def __enter__(self) -> ModuleSymbolizer:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ModuleSet:
    """The debug files of one kernel release's modules, opened on first use and kept.

    :param release: ``uname -r`` of the kernel the frames come from (default: the running kernel's);
        with a vmlinux at hand, the word after ``Linux version`` in its banner.
    :param search_dirs: extra directories (searched recursively) or files, tried before
        ``/usr/lib/debug/lib/modules/<release>/``.
    :param debuginfo: for frames with a build id: the ``.build-id`` trees to search and the debuginfod
        servers to ask when no local file has it (docs/debuginfo.md); None: only ``/usr/lib/debug``.
    :param path_map: source path rules for every module (see :class:`ksym.pathmap.PathMap`).
    """

    def __init__(self, release: str | None = None,
                 search_dirs: Sequence[str | os.PathLike[str]] = (),
                 debuginfo: DebuginfoOptions | None = None, *,
                 path_map: Iterable[str | tuple[str, str]] | PathMap | None = None,
                 index: ModuleSource | None = None) -> None:
        self.path_map = PathMap.parse(path_map)
        #: a portable index file made with ``--modules``: its modules are used before any debug file
        self.index = index
        self.release = release
        self.search_dirs = list(search_dirs)
        self.debuginfo = debuginfo
        self._open: dict[tuple[str, str | None], ModuleSymbolizer] = {}

    def get(self, module_name: str, build_id: str | None = None) -> ModuleSymbolizer:
        """The symbolizer of a module.

        :raises FileNotFoundKsymError: no debug file found (or none with that build id).
        """
        key = (normalize_module_name(module_name), build_id.lower() if build_id else None)
        got = self._open.get(key)
        if got is None and self.index is not None:
            for have in self.index.module_build_ids(key[0]):
                if key[1] is None or (have is not None and same_build_id(key[1], have)):
                    got = ModuleSymbolizer(key[0], image=self.index.module(key[0], have), path_map=self.path_map)
                    self._open[key] = got
                    break
        if got is None:
            path = find_module_debug_file(module_name, self.release, self.search_dirs, build_id,
                                          debuginfo=self.debuginfo)
            failures: list[str] = []
            if path is None and build_id and self.debuginfo is not None:
                path = DebuginfodClient(self.debuginfo).find(build_id, failures=failures)
            if path is None:
                rel = self.release if self.release is not None else os.uname().release
                where = ", ".join([*([str(self.index.path)] if self.index is not None else []),
                                   *(str(d) for d in self.search_dirs), str(MODULE_DEBUG_ROOT / rel)])
                bid = f" with build id {build_id}" if build_id else ""
                if failures:
                    raise DebuginfodError(f"no debug file for module {module_name}{bid} in {where}; debuginfod: "
                                          + "; ".join(failures), tuple(failures))
                raise FileNotFoundKsymError(
                    f"no debug file for module {module_name}{bid} in {where} (install the kernel's debug "
                    "package, pass --modules DIR, or set DEBUGINFOD_URLS)"
                )
            got = ModuleSymbolizer(path, path_map=self.path_map)
            self._open[key] = got
        return got

    def resolve(self, module_name: str, frame: str, build_id: str | None = None) -> list[Resolution]:
        """``func+off[/size]`` of a module, as :meth:`ModuleSymbolizer.resolve`."""
        return self.get(module_name, build_id).resolve(frame)

    def close(self) -> None:
        for m in self._open.values():
            m.close()
        self._open.clear()


# --- finding a module's debug file ------------------------------------------------------------------------


def normalize_module_name(name: str) -> str:
    """The kernel treats ``-`` and ``_`` in module names alike: compare with ``_``."""
    return name.replace("-", "_")


def module_file_names(module_name: str) -> list[str]:
    """File names a module's debug file may have (``nf_tables.ko``, ``nf_tables.ko.xz``, ...)."""
    return [module_name + suffix for suffix in _MODULE_SUFFIXES]


@functools.lru_cache(maxsize=32)
def _module_files_under(root: str) -> dict[str, tuple[str, ...]]:
    """normalized module name → paths of its candidate files under ``root`` (walked once)."""
    found: dict[str, list[str]] = {}
    for dirpath, _dirs, files in os.walk(root, followlinks=True):
        for f in files:
            stem = _strip_module_suffix(f)
            if stem is not None:
                found.setdefault(normalize_module_name(stem), []).append(os.path.join(dirpath, f))
    return {k: tuple(sorted(v, key=_suffix_rank)) for k, v in found.items()}


def _suffix_rank(path: str) -> tuple[int, str]:
    order = (".ko", ".ko.debug", ".ko.xz", ".ko.zst", ".ko.gz")
    for i, suffix in enumerate(order):
        if path.endswith(suffix) and (suffix != ".ko" or not path.endswith(".ko.debug")):
            return (i, path)
    return (len(order), path)


def _file_build_id(path: str) -> str | None:
    try:
        img = ModuleImage(path)
    except (BadFileError, FileNotFoundKsymError):
        return None
    return img.build_id


def find_module_debug_file(
    module_name: str,
    release: str | None = None,
    search_dirs: Iterable[str | os.PathLike[str]] = (),
    build_id: str | None = None,
    *,
    debuginfo: DebuginfoOptions | None = None,
) -> Path | None:
    """The debug file of a module, or None.

    Looks in every ``search_dirs`` entry (a directory, searched recursively, or a file itself), then under
    ``/usr/lib/debug/lib/modules/<release>/`` (``release`` defaults to the running kernel's), for
    ``<name>.ko``, ``.ko.debug``, ``.ko.xz``, ``.ko.zst``, ``.ko.gz``, with ``-`` and ``_`` equivalent.
    With ``build_id`` (full or a prefix, as oopses print ``[nf_tables df1a2bb2...]``), only a file of
    that build id qualifies, and ``<dir>/.build-id/xx/yyyy.debug`` is tried as well for each debug dir of
    ``debuginfo`` (``--debug-dir``, ``$KSYM_DEBUG_DIRS``, ``/usr/lib/debug``).
    """
    want = normalize_module_name(module_name)
    roots: list[str] = [os.fspath(d) for d in search_dirs]
    rel = release if release is not None else os.uname().release
    roots.append(str(MODULE_DEBUG_ROOT / rel))
    candidates: list[str] = []
    for root in roots:
        if os.path.isfile(root):
            stem = _strip_module_suffix(os.path.basename(root))
            if stem is not None and normalize_module_name(stem) == want:
                candidates.append(root)
            continue
        if os.path.isdir(root):
            candidates.extend(_module_files_under(os.path.realpath(root)).get(want, ()))
    if build_id:
        bid = build_id.lower()
        if len(bid) > 2:
            for p in build_id_paths(bid, debuginfo or DebuginfoOptions()):
                if p.is_file():
                    candidates.append(str(p))
        for c in candidates:
            if (have := _file_build_id(c)) is not None and same_build_id(bid, have):
                return Path(c)
        return None
    return Path(candidates[0]) if candidates else None
