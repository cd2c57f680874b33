"""The one entry point: :class:`Symbolizer` turns frames and addresses into :class:`Resolution` records.

    >>> from ksym import Symbolizer
    >>> with Symbolizer("/usr/lib/debug/boot/vmlinux-6.1.0-53-cloud-amd64") as s:
    ...     print(s.resolve("__ip_local_out+222")[0])
    __ip_local_out+222/0x160:
    nf_hook at include/linux/netfilter.h:257
    (inlined by) __ip_local_out at net/ipv4/ip_output.c:115

It composes the image's parts: the on-disk index (:mod:`ksym.index`: the image record, each unit once
read, the answers given), the image's DWARF (:mod:`ksym.dwarf_image`: sections, address to unit, an
in-memory LRU of compiled units) and the parallel prefetch for batch work (:mod:`ksym.prefetch`). The
ELF file itself is opened only when the index cannot answer. What a session learns (units read, answers given) is written to the index by
:meth:`Symbolizer.close` (or leaving a ``with`` block), or :meth:`Symbolizer.flush`; never at exit or
by the garbage collector.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

from .checksum import crc32
from .dwarf_image import ArangeTable, DwarfImage, FileSections, dwarf_sections
from .errors import BadFileError, KsymError, SpecError
from .lru import LRUCache
from .model import Resolution, SourceLocation
from .pathmap import PathMap
from .prefetch import Prefetcher
from .records import NamedTuple
from .searchopts import Located
from .session import CallerKey, ImageRecord, MemorySession, Session, StoredChain, StoredInstruction, image_key
from .spec import AddressSpec, FuncSpec, parse_spec
from .symbols import FaddrMatch, SymbolTable, SymbolView, faddr2line_select, inline_chain

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

    from . import dwarf as D
    from .index import IndexStore
    from .portable import PortableFile
    from .searchopts import DebuginfoOptions
    from .units import CompiledUnit

__all__ = ["IndexStats", "Symbolizer", "source_relative"]

_KERNEL_TOP_DIRS = (
    "arch", "block", "certs", "crypto", "drivers", "fs", "include", "init", "io_uring", "ipc", "kernel",
    "lib", "mm", "net", "rust", "samples", "scripts", "security", "sound", "tools", "usr", "virt",
)
# compiled on first use (re keeps it), by source_relative alone: not at import
_TOP_PATTERN = "/(?:" + "|".join(_KERNEL_TOP_DIRS) + ")/"

#: SHT_RELA, SHT_REL: sections the Symbolizer never reads (it does not relocate DWARF), left out of
#: the fingerprint of a file (they are half of a debug vmlinux).
_RELOCATION_SECTION_TYPES = (4, 9)

def _prefix_regex(prefix: str | None) -> re.Pattern[str] | None:
    """faddr2line strips ``sed "s; $prefix\\(\\./\\)*; ;"``: a basic regex where '.' is any character."""
    if not prefix:
        return None
    body = "".join("." if c == "." else re.escape(c) for c in prefix)
    return re.compile(" " + body + "(?:\\./)*")


def source_relative(path: str, prefix: str | None = None) -> str:
    """Best source-tree-relative form of a DWARF path (for links and source lookup)."""
    if prefix and path.startswith(prefix):
        path = path[len(prefix):]
        while path.startswith("./"):
            path = path[2:]
        return path
    if path.startswith("/"):
        m = re.search(_TOP_PATTERN, path)
        if m:
            return path[m.start() + 1:]
    return path


class IndexStats(NamedTuple):
    """What a :class:`Symbolizer` read so far (``Symbolizer.stats``; ``KSYM_STATS=1`` prints it)."""

    #: compilation units read from the DWARF (or read further than the index held)
    units_read: int
    #: units loaded from the index
    units_loaded: int
    #: addresses answered from the index's stored answers
    answers_stored: int
    #: addresses looked up in a unit
    answers_looked_up: int
    #: whether the file's contents were hashed for its index key (its first use, or it changed)
    fingerprinted: bool
    #: the index directory of the image (None: ``use_index=False``)
    index: str | None  # type: ignore[assignment]  # a field named as tuple.index, which it hides

    def __str__(self) -> str:
        return (f"units_read={self.units_read} units_loaded={self.units_loaded} answers_stored={self.answers_stored} "
                f"answers_looked_up={self.answers_looked_up} fingerprinted={int(self.fingerprinted)} "
                f"index={self.index or '-'}")


class _ImageTables(NamedTuple):
    """What a first use reads from the file while its fingerprint is computed."""

    #: None: not built (the file's symbols are looked up name by name: :meth:`Symbolizer._named`)
    symbols: SymbolTable | None
    #: :meth:`ksym.symbols.SymbolTable.to_buffer`: the index's symbols file (empty: no index, no table)
    symbols_buffer: bytes
    aranges: ArangeTable
    #: the DWARF sections as opened to read the aranges (None: no DWARF)
    opened: D.DwarfSections | None


class Symbolizer:
    """Resolve kernel frames (``func+off[/size]``) and link-time addresses against one debug image.

    :param vmlinux: the debug vmlinux (or any ELF with DWARF); default: ``$KSYM_VMLINUX``, then the
        running kernel's debug vmlinux where distributions install it.
    :param use_index: read and write the on-disk index (``$KSYM_CACHE_DIR``, default ~/.cache/ksym).
    :param cache_dir: where the index lives, overriding the default.
    :param warn: called with warning lines (build id mismatch); default: ignore them (see ``warnings``).
    :param build_id: with no ``vmlinux``, use the debug vmlinux of this build id (``.build-id`` trees,
        distribution paths, debuginfod: docs/debuginfo.md) instead of the running kernel's.
    :param debuginfo: where to look for it (debug dirs, debuginfod servers, offline).
    :param path_map: ``"OLD=NEW"`` rules (or ``(OLD, NEW)`` pairs) rewriting the start of each location's
        raw DWARF path; a rewritten path is shown as rewritten, without faddr2line's prefix strip
        (:mod:`ksym.pathmap`). ``raw_file`` keeps the DWARF path.
    :raises FileNotFoundKsymError: no such file / nothing found.
    :raises BadFileError: not ELF, truncated, no symbol table. In a file with a symbol table and no DWARF
        (``has_dwarf`` False) addresses are answered from the symbols alone (function names, no
        file:line), as addr2line does, and ``func+off`` frames raise :class:`MissingDebugInfoError`, as
        scripts/faddr2line refuses such a file (also raised when only stripped images were found).
    :raises PathMapError: a malformed ``path_map`` rule (a ``ValueError``).

    It is made of: the image's :class:`ksym.index.ImageRecord` (from the index, or built from the file
    once), its :class:`ksym.dwarf_image.DwarfImage` (``dwarf_image``: sections, units, chains; None
    without DWARF), its :class:`ksym.index.ImageIndex` session (units and answers stored) and, for a
    batch, a :class:`ksym.prefetch.Prefetcher`. It holds a memory map of the file and what it learnt for
    the index: use it in a ``with`` block or call :meth:`close`, which writes the index (:meth:`flush`)
    and releases the file. A Symbolizer that is not closed writes nothing more to the index.

    It only resolves: its chains carry no links, and the kernel tag they would point at is the presenting
    side's choice (:func:`ksym.links.links_for` its ``banner``).
    """

    def __init__(
        self,
        vmlinux: str | os.PathLike[str] | None = None,
        *,
        use_index: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        warn: Callable[[str], None] | None = None,
        cu_cache_size: int = 256,
        build_id: str | None = None,
        debuginfo: DebuginfoOptions | None = None,
        path_map: Iterable[str | tuple[str, str]] | PathMap | None = None,
        index_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path_map = PathMap.parse(path_map)
        #: the portable index file answering instead of a vmlinux (``index_file``), else None
        self.portable: PortableFile | None = None
        self._reads_index_file = index_file is not None
        if index_file is not None:
            located = Located(index_file, "ksym index file given")
        elif vmlinux:
            located = Located(vmlinux, "given on the command line")  # as find_vmlinux says it
        else:
            from .locate import find_vmlinux
            from .searchopts import DebuginfoOptions

            if debuginfo is None and cache_dir is not None:
                debuginfo = DebuginfoOptions(cache_dir=str(cache_dir))
            located = find_vmlinux(vmlinux, build_id=build_id, options=debuginfo, warn=warn)
        self.located = located
        # the file as text, for opening it and naming it in messages (``path`` is the same as a Path)
        self._file = located.path_text
        self.warnings: list[str] = list(located.warnings)
        for w in self.warnings:
            if warn:
                warn(w)
        # the on-disk index of a debug file (made by _load_index; an index file is complete: nothing is
        # learnt, nothing written, and the store is not even imported)
        self._use_index = use_index
        self._cache_dir = cache_dir
        self._store: IndexStore | None = None
        #: the image's session (:mod:`ksym.session`): a debug file's on-disk index once _load_index opens
        #: it; a portable file's stays this one, in memory
        self._index: Session = MemorySession()
        self._image: Any = None
        self._cu_cache_size = cu_cache_size
        #: the image's DWARF (None: the file has none, or it is not read yet)
        self.dwarf_image: DwarfImage | None = None
        self._sections: FileSections | None = None
        # address → inline chain, for frames seen again (stack dumps repeat them)
        self._chains: LRUCache[int, tuple[SourceLocation, ...]] = LRUCache(maxsize=16384)
        self._fingerprinted = False
        self._answers_looked_up = 0
        #: the whole symbol table (None: not needed yet; see :attr:`symbols`)
        self._symbols: SymbolTable | None = None
        #: the image record as stored (its ``symbols_size`` 0: no symbols file yet)
        self._record: ImageRecord | None = None
        #: whether a symbol table built here is saved to the index
        self._saves_symbols = False
        #: frames whose symbols may still be looked up without the whole table (a batch builds it)
        self._lookups_by_name = 4
        self._plain_symtab: tuple[bytes, bytes] | None = None
        self._by_name: SymbolTable | None = None
        try:
            self._load_index()
        except BaseException:
            self._release()  # a file that cannot be used is not kept open until the collector runs
            raise
        self._answers = self._index.answers_for(self._view())

    @property
    def path(self) -> Path:
        """The debug file."""
        return self.located.path

    # -- index ---------------------------------------------------------------------------------------

    @classmethod
    def from_index(cls, path: str | os.PathLike[str], **options: Any) -> Symbolizer:
        """A Symbolizer answering from a portable index file (``ksym index build``, :mod:`ksym.portable`)
        alone, without the vmlinux it was made from: the same answers, read from the parts of the file's
        units (:mod:`ksym.unit_parts`).
        ``options``: those of the constructor that do not name a file (``path_map``, ``cu_cache_size``,
        ``warn``).

        :raises FileNotFoundKsymError: no such file.
        :raises BadFileError: not an index file of this format, or damaged (also raised by a lookup that
            meets a damaged unit or code chunk)."""
        return cls(None, index_file=path, **options)

    def _load_portable(self) -> None:
        """The image from a portable index file: its record, symbols, aranges and units (in parts)."""
        from .portable import NoSections, PortableFile

        self.portable = PortableFile(self._file)
        # its session is the MemorySession the constructor made: nothing is stored
        self.key: str = image_key(self.portable.meta.build_id, "portable")
        rec = self.portable.image_record()
        self.dwarf_image = DwarfImage(self._file, NoSections(self._file), rec.aranges, units=self.portable,
                                      cache_size=self._cu_cache_size)
        self._apply_record(rec, None)  # the symbol table when a lookup needs it (:attr:`symbols`)

    def _load_index(self) -> None:
        if self._reads_index_file:
            self._load_portable()
            return
        if not os.path.exists(self._file):
            from .errors import FileNotFoundKsymError

            raise FileNotFoundKsymError(f"{self._file}: no such file")
        from .index import FileIdentity, Fingerprinting, IndexStore

        store = self._store = IndexStore(self._cache_dir or None, enabled=self._use_index)
        identity = None
        if store.enabled:
            # taken before the contents are read: a file changed meanwhile has another identity later
            with contextlib.suppress(OSError):
                identity = FileIdentity.of(self._file)
        key = store.key_for(identity) if identity is not None else None
        rec = store.load_image(key) if key else None
        if rec is not None and key and self._use_record(key, rec):
            return
        img = self._open_image()
        self.build_id: str | None = img.build_id
        if identity is None:
            # no index to read or write: the key names nothing on disk
            self._open_session(image_key(self.build_id, "unindexed"))
            self._record, syms = self._build_record(img, self._read_tables(img, for_index=False))
            self._apply_record(self._record, syms)
            return
        # the index binds the contents, not only the build id: a damaged copy carrying the genuine
        # build id must neither be answered from the genuine file's index nor write into it. The
        # contents are hashed in a thread while the symbol table and the aranges are read (what an
        # index of this key made from a copy at another path would make unnecessary: rare)
        hashing = Fingerprinting(img.mm, [(s.offset, s.size) for s in img.sections
                                          if s.type in _RELOCATION_SECTION_TYPES])
        try:
            tables = self._read_tables(img)
        except BaseException:
            hashing.join()
            raise
        key = image_key(self.build_id, hashing.result())
        self._fingerprinted = True
        rec = store.load_image(key)
        if rec is not None and self._use_record(key, rec):
            if tables.symbols is not None:
                self._set_symbols(tables.symbols)  # read already: the symbols file is not mapped
            store.remember(identity, key)
            return
        self._open_session(key)
        self._saves_symbols = True
        rec, syms = self._build_record(img, tables)
        self._apply_record(rec, syms)
        # none when the table is not built yet: the first run that needs it saves it
        self._save_record(rec, tables.symbols_buffer)
        store.remember(identity, key)

    def _save_record(self, rec: ImageRecord, symbols_buffer: bytes) -> None:
        """Save the image record naming the symbols file of ``symbols_buffer`` (its size and CRC-32; empty:
        none yet), the symbols file first: a record names only a symbols file written before it."""
        store = self._index_store()
        if symbols_buffer:
            store.save_symbols(self.key, symbols_buffer)
        self._record = rec._replace(symbols_size=len(symbols_buffer), symbols_crc=crc32(symbols_buffer))
        store.save_image(self.key, self._record)

    def _index_store(self) -> IndexStore:
        """The on-disk store of a debug file's index (:meth:`_load_index` made it)."""
        assert self._store is not None, "a portable index file has no on-disk store"
        return self._store

    def _open_session(self, key: str) -> None:
        """The session of a debug file's on-disk index under ``key``."""
        from .index import ImageIndex

        self.key = key
        self._index = ImageIndex(self._index_store(), key)

    def _use_record(self, key: str, rec: ImageRecord) -> bool:
        """Take the image from a stored record (its symbols file is mapped when a lookup first needs the
        whole table: :attr:`symbols`); False when it is not usable (rebuilt)."""
        self._open_session(key)
        self._record = rec
        self._saves_symbols = True
        try:
            self._apply_record(rec, None)
        except (KeyError, TypeError, ValueError, IndexError):
            self.dwarf_image = self._sections = None
            return False  # a stale or damaged index: rebuild it
        return True

    def _open_image(self) -> Any:
        if self.portable is not None:
            raise BadFileError(f"{self.path}: a ksym index file holds no ELF image")
        if self._image is None:
            from .image import KernelImage

            self._image = KernelImage(self._file)
        return self._image

    def _read_tables(self, img: Any, for_index: bool = True) -> _ImageTables:
        """The symbol table (and, ``for_index``, its flat form for the index) and the aranges, read from
        the file."""
        # a file of one plain ELF64 .symtab: its symbols are looked up name by name until a lookup needs
        # the whole table (a batch, an address, annotate), which is built then (:attr:`symbols`)
        self._plain_symtab = img.plain_symtab()
        syms = img.load_symbols() if self._plain_symtab is None else None
        # a file with a symbol table and no DWARF is answered from the symbols alone, as addr2line does
        aranges = ArangeTable.of(())
        opened = None
        if img.has_dwarf:
            from . import dwarf as D

            opened = self._dwarf_sections_from_image(img)
            with D.damage_is_bad_file(self._file):
                aranges = ArangeTable.of(D.read_aranges(opened))
        return _ImageTables(syms, syms.to_buffer() if for_index and syms is not None else b"", aranges, opened)

    def _build_record(self, img: Any, tables: _ImageTables) -> tuple[ImageRecord, SymbolTable | None]:
        """The image record (its ``symbols_size`` is set when the symbols file is written) and the
        symbol table, from ``tables`` and the file."""
        syms, aranges, opened = tables.symbols, tables.aranges, tables.opened
        banner = None
        self.sections = list(img.sections)  # what the lookups by name size symbols with
        banner_addr = (syms if syms is not None else self._named("linux_banner")).address_of("linux_banner")
        if banner_addr is not None:
            banner = img.read_cstring_at_address(banner_addr)
        rec = ImageRecord(
            path=self._file, build_id=img.build_id, elf_type=img.elf_type, little_endian=img.little_endian,
            elfclass=img.elfclass, machine=img.machine, sections=tuple(img.sections), symbols_size=0,
            aranges=aranges, banner=banner, has_dwarf=bool(img.has_dwarf),
            dynamic_symbols=syms.dynamic_count if syms is not None else 0,
            dir_prefix=None,
        )
        self._apply_record(rec, syms, opened)
        # faddr2line's path prefix: addr2line's file for start_kernel, cut before init/main.c
        return rec._replace(dir_prefix=self._find_dir_prefix()), syms

    def _apply_record(self, rec: ImageRecord, symbols: SymbolTable | None,
                      opened: D.DwarfSections | None = None) -> None:
        self.build_id = rec.build_id
        self.elf_type = rec.elf_type
        self.little_endian = rec.little_endian
        self.elfclass = rec.elfclass
        self.machine = rec.machine
        self.banner: str | None = rec.banner
        self.sections = list(rec.sections)
        self._dynamic_symbols = rec.dynamic_symbols
        if symbols is not None:
            self._set_symbols(symbols)
        self.dir_prefix: str | None = rec.dir_prefix
        self.has_dwarf = rec.has_dwarf
        self._prefix_re = _prefix_regex(self.dir_prefix)
        if self.has_dwarf and self.dwarf_image is None:
            self._sections = FileSections(self._file, self.sections, self.little_endian, self.elfclass,
                                          lambda: self._dwarf_sections_from_image(self._open_image()), opened)
            self.dwarf_image = DwarfImage(self._file, self._sections, rec.aranges, units=self._index,
                                          cache_size=self._cu_cache_size)

    def _set_symbols(self, symbols: SymbolTable) -> None:
        symbols.machine = self.machine
        symbols.dynamic_count = self._dynamic_symbols
        self._symbols = symbols
        self._by_name = None

    @property
    def symbols(self) -> SymbolTable:
        """The image's whole symbol table, the first time it is needed: a portable file's (mapped, its
        CRC-32 checked), else the index's symbols file (mapped, checked against the image record's size
        and CRC-32), else built from the file (and saved to the index then)."""
        if self._symbols is None:
            rec = self._record
            syms = None
            if self.portable is not None:
                syms = self.portable.symbols()
            elif rec is not None and rec.symbols_size:
                syms = self._index.load_symbols(rec.symbols_size, rec.symbols_crc, list(rec.sections))
            if syms is None:
                syms = self._open_image().load_symbols()
                if self._saves_symbols and rec is not None:
                    self._save_record(rec, syms.to_buffer())  # none yet, or a damaged one (deleted)
            self._set_symbols(syms)
        assert self._symbols is not None
        return self._symbols

    def _named(self, name: str, faddr2line: bool = False) -> SymbolTable:
        """A table holding what a lookup of ``name`` reads (:meth:`ksym.symbols.SymbolTable.named`):
        the whole table once there is one, else the few symbols it needs."""
        if self._symbols is None:
            if self._plain_symtab is None and self._record is not None and not self._record.symbols_size:
                self._plain_symtab = self._open_image().plain_symtab()
            if self._plain_symtab is not None:
                sub = SymbolTable.named(*self._plain_symtab, self.sections, name, faddr2line,
                                        lambda: self.symbols)
                if sub is not None:
                    return sub
        return self.symbols

    def _faddr2line_matches(self, name: str) -> list[FaddrMatch]:
        """:meth:`ksym.symbols.SymbolTable.faddr2line_matches` of ``name``, without the whole table when
        it is not at hand: from the stored answers, else (the first few frames of a run that has none)
        :meth:`_matches_by_name`, else from the whole table; then stored (a name seen again needs no
        table: the symbols file is not even mapped)."""
        key = ("faddr2line", name)
        stored = self._answers.caller(key)
        if isinstance(stored, tuple):
            try:
                return [FaddrMatch.from_record(r) for r in stored]
            except (TypeError, ValueError):
                pass  # damaged: look it up again
        if self._symbols is not None or self._lookups_by_name <= 0:
            got = self.symbols.faddr2line_matches(name)
        else:
            self._lookups_by_name -= 1
            got = self._matches_by_name(name)
        self._answers.add_caller(key, tuple(m.to_record() for m in got))
        return got

    def _matches_by_name(self, name: str) -> list[FaddrMatch]:
        """faddr2line's matches of ``name`` read without the whole table: from a portable file's name
        piece, else from the symbols :meth:`_named` finds (the whole table when it cannot). A chain is
        then given a table that asks for the whole one only when it needs it (:attr:`_by_name`)."""
        if self.portable is not None:
            got = self.portable.faddr2line_matches(name)
            table = self._by_name
            if table is None:
                table = SymbolTable.deferred(self.sections, lambda: self.symbols)
        else:
            table = self._named(name, faddr2line=True)
            got = table.faddr2line_matches(name)
        if table is not self._symbols:
            self._by_name = table  # its bfd_function asks the whole table
        return got

    def _find_dir_prefix(self) -> str | None:
        table = self._named("start_kernel")
        for i in table.indices_named("start_kernel"):
            if self.dwarf_image is None:
                return None
            loc = self.dwarf_image.line_at(int(table.values[i]))
            if loc is None:
                return None
            file_line = f"{loc[0]}:{loc[1]}"
            cut = file_line.rfind("init/main.c:")
            if cut <= 0:
                return None
            return file_line[:cut]
        return None

    def _dwarf_sections_from_image(self, img: Any) -> D.DwarfSections:
        """The DWARF sections as :class:`ksym.image.KernelImage` reads them (each compressed section
        inflated once)."""
        return dwarf_sections(self._file, img.section_bytes, img.little_endian, img.elfclass, img.require_dwarf)

    def compiled_unit(self, offset: int, address: int | None = None) -> CompiledUnit:
        """The unit at ``offset`` of .debug_info (from memory, the index or the DWARF); given an
        ``address``, a unit read from the DWARF decodes its line program only as far as that
        address needs (:meth:`ksym.dwarf_image.DwarfImage.read_on` reads on)."""
        if self.dwarf_image is None:
            self._open_image().require_dwarf()
            raise BadFileError(f"{self._file}: no DWARF")
        return self.dwarf_image.compiled_unit(offset, address)

    def flush(self) -> None:
        """Write what this session learnt to the on-disk index: the units read or expanded and the
        answers given. :meth:`close` (and leaving a ``with`` block) calls it; nothing else writes them,
        so a Symbolizer that is never closed leaves only its image record in the index."""
        self._index.flush()

    # -- lookups ---------------------------------------------------------------------------------------

    @property
    def stats(self) -> IndexStats:
        """What this Symbolizer read so far: units from the DWARF and from the index, answers."""
        dwarf = self.dwarf_image
        return IndexStats(len(dwarf.units_read) if dwarf else 0, dwarf.units_loaded if dwarf else 0,
                          self._answers.stored_hits, self._answers_looked_up, self._fingerprinted,
                          self._index.directory)

    def chain(self, address: int) -> tuple[SourceLocation, ...]:
        """The inline chain at a link-time address, innermost first (without links: the presenting side
        adds them, :meth:`ksym.links.ElixirLinks.chain`)."""
        got = self._chains.get(address)
        if got is None:
            got = self._answer(address).chain
            self._chains[address] = got
        return got

    def instruction_before(self, return_address: int, function_start: int | None = None,
                           name_of: Callable[[int], str | None] | None = None) -> Any:
        """:func:`ksym.disasm.instruction_before` for this image's code, starting its sweep at the line
        row before the address; the result is kept with the stored answers (a dump seen again
        disassembles nothing). ``name_of`` must name addresses by this image's symbols."""
        from .disasm import Instruction, PrecedingInstruction, instruction_before

        stored = self._answers.instruction(return_address, function_start)
        if stored is not None:
            try:
                insn = Instruction(*stored.fields) if stored.fields is not None else None
                return PrecedingInstruction(insn, stored.boundary)
            except (TypeError, ValueError, IndexError):
                pass  # damaged: disassemble again
        got = instruction_before(return_address, self.code_bytes, self.machine, function_start=function_start,
                                 name_of=name_of, boundary_hint=self.line_row_start(return_address - 1))
        fields = None if got.instruction is None else got.instruction.fields()
        self._answers.add_instruction(return_address, function_start, StoredInstruction(got.boundary, fields))
        return got

    def remembered(self, key: CallerKey) -> Any:
        """What :meth:`remember` kept under ``key`` (in this session or an earlier one), or None."""
        return self._answers.caller(key)

    def remember(self, key: CallerKey, value: Any) -> None:
        """Keep a caller's answer that depends on this image alone (and on how paths are shown) with
        the index's stored answers, written by :meth:`flush`. ``key``: a tuple starting with the
        caller's tag (``"frame"``: :mod:`ksym.annotate`); ``value``: tuples, str, int, bytes, None."""
        self._answers.add_caller(key, value)

    def line_row_start(self, address: int) -> int | None:
        """Start of the line-table row covering ``address``: an instruction boundary at or before it
        (what the call-site disassembly starts from), or None without line information."""
        row = self._answer(address).row_start
        return row if row >= 0 else None

    def name_of(self, address: int) -> str | None:
        """``symbol`` or ``symbol+0x1a`` for a link-time address (how call targets are named), or None."""
        hit = self.symbols.containing(address)
        if hit is None:
            return None
        s, _ = hit
        return s.name if address == s.address else f"{s.name}+{address - s.address:#x}"

    def prefetch(self, addresses: Iterable[int], *, processes: int | None = None,
                 call_sites: Iterable[tuple[int, int | None]] = ()) -> int:
        """Answer ``addresses`` ahead of :meth:`chain` (a dump's frames, before they are printed), and
        for each ``(return_address, function_start)`` of ``call_sites`` the instruction before it
        (:meth:`instruction_before`, targets named by :meth:`name_of`).

        When many compilation units must be read from the DWARF for them and this process runs a
        single thread, they are read by up to ``processes`` forked worker processes (default: the CPUs
        this process may use, at most 8), each writing the units it read to the index; the answers
        come back to this process (:class:`ksym.prefetch.Prefetcher`). Returns how many addresses were
        answered. Errors are left for :meth:`chain` to raise in order.
        """
        with Prefetcher(self.dwarf_image, self._index, self._answers, self._answer, self._answer_call,
                        processes=processes) as prefetcher:
            got = prefetcher.run(addresses, call_sites)
            self._answers_looked_up += prefetcher.looked_up
        return got

    def _answer_call(self, return_address: int, function_start: int | None) -> None:
        self.instruction_before(return_address, function_start, self.name_of)

    def prefetch_frames(self, frames: Iterable[str], *, processes: int | None = None) -> int:
        """:meth:`prefetch` for the addresses ``func+off[/size]`` frames and raw addresses name
        (malformed or unknown ones are left for :meth:`resolve` to report)."""
        want: set[int] = set()
        for text in frames:
            try:
                spec = parse_spec(text)
            except SpecError:
                continue
            if isinstance(spec, AddressSpec):
                want.add(spec.address)
            else:
                want.update(m.symbol.address + spec.offset for m in self._faddr2line_matches(spec.name))
        return self.prefetch(want, processes=processes)

    def _view(self) -> str:
        """What the stored answers depend on besides the image: how paths are displayed."""
        return f"prefix={self.dir_prefix!r} map={self.path_map.rules!r}"

    def _answer(self, address: int) -> StoredChain:
        got = self._answers.chain(address)
        if got is not None:
            return got
        self._answers_looked_up += 1
        # a table of some symbols only asks the whole one when the chain needs it (no DWARF function)
        symbols = self._symbols if self._symbols is not None else self._by_name
        if symbols is None:
            symbols = self.symbols
        if self.dwarf_image is None:
            got = StoredChain(inline_chain(None, address, symbols, self._display), -1)
        else:
            got = StoredChain(*self.dwarf_image.chain(address, symbols, self._display))
        self._answers.add_chain(address, got)
        return got

    def _display(self, raw: str) -> str:
        if raw in ("", "??"):
            return "??"
        if self.path_map:
            mapped = self.path_map.apply(raw)
            if mapped is not None:
                return mapped
        if self._prefix_re is not None:
            m = self._prefix_re.match(" " + raw)
            if m:
                return raw[m.end() - 1:]
        return raw

    def symbolize(self, address: int, query: str | None = None) -> Resolution:
        """Resolve one link-time address (no KASLR adjustment)."""
        hit = self.symbols.containing(address)
        chain = self.chain(address)
        q = query if query is not None else f"{address:#x}"
        if hit is None:
            return Resolution(q, address, None, None, None, None, chain)
        sym, size = hit
        return Resolution(q, address, sym.name, address - sym.address, size, None, chain)

    def symbolize_many(self, addresses: Iterable[int]) -> list[Resolution]:
        return [self.symbolize(a) for a in addresses]

    def resolve(self, frame: str, *, chains: bool = True,
                view: SymbolView = SymbolView.FADDR2LINE) -> list[Resolution]:
        """Resolve ``func+off[/size]`` (every matching symbol, as faddr2line) or a raw address.

        :param chains: look the inline chains up; without, each ``Resolution.chain`` of a ``func+off``
            frame is empty (for a caller that looks up another address, such as the call site).
        :param view: which symbols ``func`` may name and how they are sized (:class:`SymbolView`): by
            default scripts/faddr2line's (FUNC symbols only); ``SymbolView.KALLSYMS`` for names the
            kernel printed (stack traces, BPF stacks): untyped assembly labels such as
            ``entry_SYSCALL_64_after_hwframe`` too, each with the size kallsyms gives it. The line is
            the one at ``func``'s address plus ``off`` either way (no return-address adjustment).
        :raises SpecError: malformed text.
        :raises SymbolNotFoundError: no symbol matched; ``.reasons`` holds faddr2line's skip messages.
        """
        spec = parse_spec(frame)
        if isinstance(spec, AddressSpec):
            return [self.symbolize(spec.address, frame)]
        return self._resolve_func(spec, chains, SymbolView(view))

    def _resolve_func(self, spec: FuncSpec, chains: bool = True,
                      view: SymbolView = SymbolView.FADDR2LINE) -> list[Resolution]:
        if not self.has_dwarf:
            self._open_image().require_dwarf()  # scripts/faddr2line refuses a file without DWARF
        matches = (self._faddr2line_matches(spec.name) if view is SymbolView.FADDR2LINE
                   else self.symbols.matches(spec.name, view))
        return faddr2line_select(spec, matches,
                                 (lambda _m, a: self.chain(a)) if chains else (lambda _m, _a: ()))

    def code_bytes(self, address: int, size: int) -> bytes:
        """Up to ``size`` bytes of the image at a link-time address (empty when no section holds it)."""
        if self.portable is not None:
            return self.portable.code_bytes(address, size)
        for s in self.sections:
            if s.flags & 0x2 and s.type != 8 and s.addr <= address < s.addr + s.size:
                n = min(size, s.addr + s.size - address)
                off = s.offset + (address - s.addr)
                if self.dwarf_image is not None:
                    _ = self.dwarf_image.sections  # maps the file when its sections are plain
                mapping = self._sections.mapping if self._sections is not None else None
                if mapping is not None:
                    return bytes(mapping[off : off + n])
                img = self._open_image()
                return bytes(img.view[off : off + n])
        return b""

    def address_of(self, name: str) -> int | None:
        """Link-time address of a symbol (functions first), or None."""
        addr: int | None = self.symbols.address_of(name)
        return addr

    def close(self) -> None:
        """Write pending index data (:meth:`flush`) and release the file."""
        try:
            self._index.close()
        finally:
            self._release()

    def _release(self) -> None:
        self._index.release_symbols()
        if self._image is not None:
            self._image.close()
            self._image = None
        if self.dwarf_image is not None:
            self.dwarf_image.close()
        elif self._sections is not None:
            self._sections.close()
        # the portable file after the DWARF image read from it
        if self.portable is not None:
            self.portable.close()
            self.portable = None

    def __enter__(self) -> Symbolizer:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# keep the public errors reachable from here for users of this module alone
_ = (KsymError, SpecError)
