"""Parse: open a kernel image (vmlinux or any ELF with DWARF) and expose its raw parts.

The file is memory-mapped; the ELF header and section table are read with ``struct`` when nothing in
them needs more (:func:`_plain_section_table`), else by pyelftools, which checks the file; the big
sections (.symtab, .debug_*) are handed on as memoryviews over the mapping, so opening even a large
debug vmlinux reads only its headers and copies no section. Compressed debug sections (SHF_COMPRESSED
zlib or zstd, legacy ``.zdebug_*``; see :mod:`ksym.compress`) are decompressed by ksym on first use, once
per image, and ``.zdebug_X`` answers for ``.debug_X``.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
from typing import Any

from .compress import SectionContents
from .errors import BadFileError, FileNotFoundKsymError, MissingDebugInfoError
from .records import NamedTuple
from .searchopts import path_name
from .symbols import Section, SymbolTable

__all__ = [
    "DEBUG_PACKAGES",
    "DEBUG_PACKAGE_HINT",
    "MODULE_SUFFIXES",
    "KernelImage",
    "SectionTableCheck",
    "SectionTableError",
    "is_module_file",
    "strip_module_suffix",
]

SHT_SYMTAB = 2
SHT_NOTE = 7
SHT_NOBITS = 8
SHT_DYNSYM = 11

#: The packages that hold a kernel's debug vmlinux, per distribution.
DEBUG_PACKAGES = ("Debian: linux-image-$(uname -r)-dbg; Ubuntu: linux-image-$(uname -r)-dbgsym; "
                  "Fedora/RHEL: kernel-debuginfo")
#: The advice for a file that was named and has no DWARF or symbols (no "--vmlinux": it may be the one given).
DEBUG_PACKAGE_HINT = f"use the kernel's debug vmlinux instead (install its debug symbols: {DEBUG_PACKAGES})"


class KernelImage:
    """An opened ELF file: header facts, sections, the symbol table and the raw DWARF sections."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from pathlib import Path  # an image is opened only when the index cannot answer

        self.path = Path(path)
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - kept open for the mmap
        except FileNotFoundError:
            raise FileNotFoundKsymError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise FileNotFoundKsymError(f"{self.path}: is a directory, not a vmlinux") from None
        except PermissionError:
            raise FileNotFoundKsymError(f"{self.path}: permission denied") from None
        except OSError as exc:
            raise FileNotFoundKsymError(f"{self.path}: cannot open: {exc.strerror}") from None
        try:
            self._open()
        except BaseException:
            # the error's frames keep this half-made image alive as long as the caller keeps the error
            self._unmap()
            self._file.close()
            raise

    def _open(self) -> None:
        st = os.fstat(self._file.fileno())
        self.size = st.st_size
        head = self._file.read(64)
        if len(head) < 4 or head[:4] != b"\x7fELF":
            raise BadFileError(f"{self.path}: not an ELF file")
        if len(head) < 64 and not (len(head) >= 52 and head[4] == 1):
            raise BadFileError(f"{self.path}: truncated ELF file ({self.size} bytes)")
        self.mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        self.view = memoryview(self.mm)
        plain = _plain_section_table(self.mm, self.size)
        if plain is not None:
            self.elf_type, self.little_endian, self.elfclass, self.machine, sections, self._links = plain
        else:
            sections = self._sections_by_pyelftools()
        self.sections = sections
        self._by_name = {s.name: s for s in sections}
        # each compressed section is inflated once per image
        self._contents = SectionContents(self.view, sections, self.little_endian, self.elfclass, self.path)
        for s in sections:
            if s.type != SHT_NOBITS and s.offset + s.size > self.size:
                raise BadFileError(
                    f"{self.path}: truncated ELF file: section {s.name} ends at {s.offset + s.size:#x}, "
                    f"past the end of the file ({self.size:#x})"
                )

    def _sections_by_pyelftools(self) -> list[Section]:
        """The header facts and the section table as pyelftools reads them: for a file
        :func:`_plain_section_table` leaves to it (its checks and messages decide then)."""
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile

        try:
            elf = ELFFile(self._file)
            shoff = elf.header["e_shoff"]
            shnum = elf.num_sections()
            if shoff + shnum * elf.header["e_shentsize"] > self.size:
                raise BadFileError(
                    f"{self.path}: truncated ELF file: section table ends past the file's {self.size} bytes"
                )
            self.elf_type = str(elf.header["e_type"])
            self.little_endian = elf.little_endian
            self.elfclass = elf.elfclass
            self.machine = str(elf.header["e_machine"])
            sections = []
            check = SectionTableCheck(elf, self.size)
            links = []
            for i, sec in enumerate(elf.iter_sections()):
                h = sec.header
                check.entry(i, h)
                links.append(int(h["sh_link"]))
                sections.append(Section(i, sec.name, int(h["sh_type"]) if isinstance(h["sh_type"], int)
                                        else _sh_type_num(str(h["sh_type"])),
                                        int(h["sh_flags"]), int(h["sh_addr"]), int(h["sh_offset"]),
                                        int(h["sh_size"])))
        except SectionTableError as exc:
            raise BadFileError(f"{self.path}: damaged ELF section table: {exc}") from None
        except (ELFError, struct.error, ValueError, OSError, OverflowError) as exc:
            # OSError, OverflowError: pyelftools seeking to a section offset past the end of the file
            if isinstance(exc, BadFileError):
                raise
            raise BadFileError(f"{self.path}: corrupt ELF file: {exc}") from None
        self._links = links
        return sections

    def close(self) -> None:
        self._contents.clear()
        self._unmap()
        self._file.close()

    def _unmap(self) -> None:
        """Release the view and the mapping (none yet when the file was refused before mapping it)."""
        view: memoryview | None = getattr(self, "view", None)
        mm: mmap.mmap | None = getattr(self, "mm", None)
        try:
            if view is not None:
                view.release()
            if mm is not None:
                mm.close()
        except (BufferError, ValueError):
            pass  # a view of it is still held: the mapping goes with the last one

    # -- facts --

    def section(self, name: str) -> Section | None:
        return self._by_name.get(name)

    def section_bytes(self, name: str) -> bytes | memoryview | None:
        """Contents of a section, decompressed if needed, or None.

        ``.debug_X`` falls back to a legacy ``.zdebug_X``. Uncompressed sections are memoryviews over the
        mapping; compressed ones are decompressed on the first call and kept.

        :raises BadFileError: corrupt compressed data, or zstd without a decompressor.
        """
        s = self._contents.find(name)
        if s is None or s.type == SHT_NOBITS:
            return None
        return self._contents.of(s)

    @property
    def build_id(self) -> str | None:
        from .buildid import read_build_id_from_notes  # not on a warm run: only is_module_file is

        for s in self.sections:
            if s.type == SHT_NOTE:
                data = self.section_bytes(s.name)
                if data is not None:
                    bid = read_build_id_from_notes(bytes(data), self.little_endian)
                    if bid:
                        return bid
        return None

    @property
    def has_dwarf(self) -> bool:
        return ".debug_info" in self._by_name or ".zdebug_info" in self._by_name

    def require_dwarf(self) -> None:
        if not self.has_dwarf:
            raise MissingDebugInfoError(
                f"{self.path}: no DWARF debug info (.debug_info): this is a stripped image; "
                + DEBUG_PACKAGE_HINT
            )

    def load_symbols(self) -> SymbolTable:
        tables = []
        for s in self.sections:
            if s.type in (SHT_DYNSYM, SHT_SYMTAB):
                link = self._links[s.index]
                strsec = self.sections[link] if 0 <= link < len(self.sections) else None
                if strsec is None:
                    continue
                tables.append((s.type, bytes(self.section_bytes(s.name) or b""),
                               bytes(self.section_bytes(strsec.name) or b"")))
        if not any(t == SHT_SYMTAB for t, _d, _s in tables):
            raise BadFileError(f"{self.path}: no symbol table (.symtab): the file was stripped; "
                               + DEBUG_PACKAGE_HINT)
        tables.sort(key=lambda t: 0 if t[0] == SHT_DYNSYM else 1)
        table = SymbolTable.from_raw(((d, s) for _t, d, s in tables), self.sections,
                                     self.little_endian, self.elfclass)
        table.machine = self.machine
        ent = 24 if self.elfclass == 64 else 16  # from_raw leaves out each table's null entry
        table.dynamic_count = sum(max(len(d) // ent - 1, 0) for t, d, _s in tables if t == SHT_DYNSYM)
        return table

    def plain_symtab(self) -> tuple[bytes, bytes] | None:
        """(``.symtab``, its string table) when they are the file's only symbols, ELF64 little-endian
        read on a little-endian host (what :meth:`ksym.symbols.SymbolTable.named` reads); else None."""
        if self.elfclass != 64 or not self.little_endian or sys.byteorder != "little":
            return None
        tables = [s for s in self.sections if s.type in (SHT_DYNSYM, SHT_SYMTAB)]
        if len(tables) != 1 or tables[0].type != SHT_SYMTAB:
            return None
        link = self._links[tables[0].index]
        if not 0 <= link < len(self.sections):
            return None
        return (bytes(self.section_bytes(tables[0].name) or b""),
                bytes(self.section_bytes(self.sections[link].name) or b""))

    def read_cstring_at_address(self, address: int, limit: int = 512) -> str | None:
        """A NUL-terminated string at a link-time address (e.g. ``linux_banner``)."""
        for s in self.sections:
            if s.type != SHT_NOBITS and s.flags & 0x2 and s.addr <= address < s.addr + s.size:
                off = s.offset + (address - s.addr)
                raw = bytes(self.view[off : off + limit])
                return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        return None


class SectionTableError(ValueError):
    """A section header entry that cannot be right (see :class:`SectionTableCheck`)."""


class SectionTableCheck:
    """Checks of each section header entry, before anything is read through it: its name lies in the
    section name table, its contents (unless SHT_NOBITS) end inside the file, and a symbol table has
    the entry size of its ELF class, a whole number of entries and a link to a string table; no link
    names a section that does not exist (binutils refuses such a file: "file format not recognized")."""

    def __init__(self, elf: Any, file_size: int) -> None:
        self.file_size = file_size
        self.count = elf.num_sections()
        self.sym_size = 24 if elf.elfclass == 64 else 16
        strndx = elf.header["e_shstrndx"]
        if strndx == 0xFFFF and self.count:  # SHN_XINDEX: the index is in section 0's sh_link
            strndx = elf._get_section_header(0)["sh_link"]
        if self.count and not 0 <= strndx < self.count:
            raise SectionTableError(f"e_shstrndx {strndx} past the {self.count} sections")
        self.names = elf._get_section_header(strndx) if self.count else None
        if self.names is not None and self.names["sh_offset"] + self.names["sh_size"] > file_size:
            raise SectionTableError(f"the section name table (section {strndx}) ends past the end of the file")

    def entry(self, index: int, h: Any) -> None:
        where = f"section header {index}"
        if self.names is not None and index and h["sh_name"] >= self.names["sh_size"]:
            raise SectionTableError(f"{where}: name offset {h['sh_name']:#x} past the section name table")
        stype = h["sh_type"]
        if h["sh_link"] >= self.count:
            raise SectionTableError(f"{where}: sh_link {h['sh_link']} past the {self.count} sections")
        if stype != "SHT_NOBITS" and h["sh_offset"] + h["sh_size"] > self.file_size:
            raise SectionTableError(f"{where}: contents at {h['sh_offset']:#x}+{h['sh_size']:#x} end past the "
                                    f"end of the file ({self.file_size:#x} bytes): a truncated or damaged file")
        if stype in ("SHT_SYMTAB", "SHT_DYNSYM"):
            if h["sh_entsize"] != self.sym_size or h["sh_size"] % self.sym_size:
                raise SectionTableError(f"{where}: a symbol table of entry size {h['sh_entsize']} and size "
                                        f"{h['sh_size']:#x} (entries are {self.sym_size} bytes)")
            if not 0 < h["sh_link"] < self.count:
                raise SectionTableError(f"{where}: the symbol table's string table {h['sh_link']} is no section")


#: e_type and e_machine values read without pyelftools, with the names pyelftools gives them (the
#: names ksym keeps: ``ImageRecord.machine``, ``disasm``); a file of another type or machine is read by
#: pyelftools
_PLAIN_ELF_TYPES = {0: "ET_NONE", 1: "ET_REL", 2: "ET_EXEC", 3: "ET_DYN", 4: "ET_CORE"}
_PLAIN_MACHINES = {2: "EM_SPARC", 3: "EM_386", 8: "EM_MIPS", 20: "EM_PPC", 21: "EM_PPC64", 22: "EM_S390",
                   40: "EM_ARM", 43: "EM_SPARCV9", 62: "EM_X86_64", 183: "EM_AARCH64", 243: "EM_RISCV",
                   258: "EM_LOONGARCH"}
#: section types whose pyelftools section objects read nothing more when they are made (no links to
#: follow, no contents to parse), with the number ksym keeps for each (:func:`_sh_type_num` of the name
#: pyelftools gives it); a file with a section of another type is read by pyelftools
_PLAIN_SECTION_TYPES = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 7: 7, 8: 8, 9: 9, 11: 11, 14: 0x70000000, 15: 0x70000000,
                        16: 0x70000000, 17: 0x70000000}
_SHF_COMPRESSED = 0x800


class _PlainTable(NamedTuple):
    """The ELF header facts and section table of a plain file, as :class:`KernelImage` keeps them."""

    elf_type: str
    little_endian: bool
    elfclass: int
    machine: str
    sections: list[Section]
    #: ``sh_link`` of each section
    links: list[int]


def _plain_section_table(mm: mmap.mmap, size: int) -> _PlainTable | None:
    """The header facts and section table read with ``struct``, for a file whose reading by pyelftools
    (and :class:`SectionTableCheck`) would find nothing wrong and give the same facts: a known type and
    machine, no extended section numbering, section header entries of the class's size, every section
    of a type in ``_PLAIN_SECTION_TYPES``, none compressed, and every check of
    :class:`SectionTableCheck` and pyelftools' section objects passed (symbol tables linked to a string
    table, relocation entries of their size). None for any other file: pyelftools reads it then (and
    its errors are reported as before). Importing pyelftools costs more than reading a vmlinux's
    section table."""
    if size < 64:
        return None
    elfclass, data = mm[4], mm[5]
    if elfclass not in (1, 2) or data not in (1, 2):
        return None
    e = "<" if data == 1 else ">"
    e_type, e_machine = struct.unpack_from(e + "HH", mm, 16)
    if elfclass == 2:
        (shoff,) = struct.unpack_from(e + "Q", mm, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(e + "HHH", mm, 0x3A)
        entry, fmt, sym_size, rel_size, rela_size = 64, e + "IIQQQQIIQQ", 24, 16, 24
    else:
        (shoff,) = struct.unpack_from(e + "I", mm, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(e + "HHH", mm, 0x2E)
        entry, fmt, sym_size, rel_size, rela_size = 40, e + "IIIIIIIIII", 16, 8, 12
    if e_type not in _PLAIN_ELF_TYPES or e_machine not in _PLAIN_MACHINES:
        return None
    if not shoff or not shnum or shentsize != entry or shstrndx >= shnum or shoff + shnum * entry > size:
        return None  # also no extended numbering: e_shnum 0, e_shstrndx SHN_XINDEX
    heads = [struct.unpack_from(fmt, mm, shoff + i * entry) for i in range(shnum)]
    names_at, names_size = heads[shstrndx][4], heads[shstrndx][5]
    if names_at + names_size > size:
        return None
    sections = []
    links = []
    for i, (name, stype, flags, addr, offset, ssize, link, _info, _align, entsize) in enumerate(heads):
        kept = _PLAIN_SECTION_TYPES.get(stype)
        if kept is None or flags & _SHF_COMPRESSED or link >= shnum or (i and name >= names_size):
            return None
        if stype != SHT_NOBITS and offset + ssize > size:
            return None
        if stype in (SHT_SYMTAB, SHT_DYNSYM) and (entsize != sym_size or ssize % sym_size or not link
                                                  or heads[link][1] != 3):
            return None
        if (stype == 4 and entsize != rela_size) or (stype == 9 and entsize != rel_size):
            return None
        # pyelftools' name: the bytes up to a NUL, wherever it is in the file ("" with none)
        start = names_at + name
        end = mm.find(b"\0", start)
        text = mm[start:end].decode("utf-8", "replace") if end > start else ""
        sections.append(Section(i, text, kept, flags, addr, offset, ssize))
        links.append(link)
    return _PlainTable(_PLAIN_ELF_TYPES[e_type], data == 1, 64 if elfclass == 2 else 32, _PLAIN_MACHINES[e_machine],
                       sections, links)


def _sh_type_num(name: str) -> int:
    table = {"SHT_NULL": 0, "SHT_PROGBITS": 1, "SHT_SYMTAB": 2, "SHT_STRTAB": 3, "SHT_RELA": 4,
             "SHT_HASH": 5, "SHT_DYNAMIC": 6, "SHT_NOTE": 7, "SHT_NOBITS": 8, "SHT_REL": 9,
             "SHT_DYNSYM": 11}
    return table.get(name, 0x70000000)


#: The file names of module debug files.
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz", ".ko.debug")
_ET_REL = 1


def strip_module_suffix(file_name: str) -> str | None:
    """``file_name`` without its module suffix (``.ko``, ``.ko.xz``, ...); None: it has none."""
    for suffix in sorted(MODULE_SUFFIXES, key=len, reverse=True):
        if file_name.endswith(suffix):
            return file_name[: -len(suffix)]
    return None


def is_module_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like a module debug file: a ``.ko*`` name, or an ELF relocatable object
    (e_type ET_REL). Cheap: reads 18 bytes at most; False for unreadable files."""
    if strip_module_suffix(path_name(path)) is not None:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(18)
    except OSError:
        return False
    if len(head) < 18 or head[:4] != b"\x7fELF":
        return False
    return int.from_bytes(head[16:18], "little" if head[5] == 1 else "big") == _ET_REL
