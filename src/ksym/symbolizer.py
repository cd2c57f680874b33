"""The one entry point: :class:`Symbolizer` turns frames and addresses into :class:`Resolution` records.

    >>> from ksym import Symbolizer
    >>> with Symbolizer("/usr/lib/debug/boot/vmlinux-6.1.0-53-cloud-amd64") as s:
    ...     print(s.resolve("__ip_local_out+222")[0])
    __ip_local_out+222/0x160:
    nf_hook at include/linux/netfilter.h:257
    (inlined by) __ip_local_out at net/ipv4/ip_output.c:115

It owns every cache: the on-disk index (symbols, aranges, each CU once read; see :mod:`ksym.index`) and
an in-memory LRU of compiled units for batch work. The ELF file itself is opened only when the index
cannot answer. What a session learns (units read, answers given) is written to the index by
:meth:`Symbolizer.close` (or leaving a ``with`` block), or :meth:`Symbolizer.flush`; never at exit or
by the garbage collector.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import mmap
import os
import re
import threading
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cachetools import LRUCache

from . import dwarf as D
from .compress import SHF_COMPRESSED
from .debuginfo import DebuginfoOptions
from .errors import BadFileError, KsymError, SpecError
from .index import FileIdentity, IndexStore, fingerprint, image_key
from .locate import find_vmlinux
from .model import Resolution, SourceLocation
from .pathmap import PathMap
from .spec import AddressSpec, FuncSpec, parse_spec
from .symbols import Section, SymbolTable, SymbolView, faddr2line_select, inline_chain

__all__ = ["IndexStats", "Symbolizer", "source_relative"]

_KERNEL_TOP_DIRS = (
    "arch", "block", "certs", "crypto", "drivers", "fs", "include", "init", "io_uring", "ipc", "kernel",
    "lib", "mm", "net", "rust", "samples", "scripts", "security", "sound", "tools", "usr", "virt",
)
_TOP_RE = re.compile("/(?:" + "|".join(_KERNEL_TOP_DIRS) + ")/")

#: SHT_RELA, SHT_REL: sections the Symbolizer never reads (it does not relocate DWARF), left out of
#: the fingerprint of a file (they are half of a debug vmlinux).
_RELOCATION_SECTION_TYPES = (4, 9)

_DWARF_SECTIONS = {
    "info": ".debug_info", "abbrev": ".debug_abbrev", "line": ".debug_line", "debug_str": ".debug_str",
    "line_str": ".debug_line_str", "ranges": ".debug_ranges", "rnglists": ".debug_rnglists",
    "addr": ".debug_addr", "str_offsets": ".debug_str_offsets", "aranges": ".debug_aranges",
}


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
        m = _TOP_RE.search(path)
        if m:
            return path[m.start() + 1:]
    return path


@dataclass(frozen=True, slots=True)
class IndexStats:
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
    index: str | None

    def __str__(self) -> str:
        return (f"units_read={self.units_read} units_loaded={self.units_loaded} answers_stored={self.answers_stored} "
                f"answers_looked_up={self.answers_looked_up} fingerprinted={int(self.fingerprinted)} "
                f"index={self.index or '-'}")


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

    It holds a memory map of the file and what it learnt for the index: use it in a ``with`` block or
    call :meth:`close`, which writes the index (:meth:`flush`) and releases the file. A Symbolizer
    that is not closed writes nothing more to the index.
    """

    def __init__(
        self,
        vmlinux: str | os.PathLike[str] | None = None,
        *,
        use_index: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        warn: Callable[[str], None] | None = None,
        cu_cache_size: int = 256,
        kernel_tag: str | None = None,
        elixir_url: str | None = None,
        links: bool = True,
        build_id: str | None = None,
        debuginfo: DebuginfoOptions | None = None,
        path_map: Iterable[str | tuple[str, str]] | PathMap | None = None,
    ) -> None:
        self.path_map = PathMap.parse(path_map)
        if debuginfo is None and cache_dir is not None:
            debuginfo = DebuginfoOptions(cache_dir=str(cache_dir))
        located = find_vmlinux(vmlinux, build_id=build_id, options=debuginfo, warn=warn)
        self.located = located
        self.path = located.path
        self.warnings: list[str] = list(located.warnings)
        for w in self.warnings:
            if warn:
                warn(w)
        self._store = IndexStore(Path(cache_dir) if cache_dir else None, enabled=use_index)
        self._image: Any = None
        self._mm: mmap.mmap | None = None
        self._sections_cache: D.DwarfSections | None = None
        self._cus: LRUCache[int, D.CompiledUnit] = LRUCache(maxsize=cu_cache_size)
        self._cu_list: list[tuple[int, int, int]] | None = None
        self._tag_override = kernel_tag
        self._elixir_url = elixir_url
        self._want_links = links
        self._links: Any = None
        # address → inline chain with links, for frames seen again (stack dumps repeat them)
        self._chains: LRUCache[int, tuple[SourceLocation, ...]] = LRUCache(maxsize=16384)
        # address → (chain as plain tuples, line-row start or -1): loaded from the index on first use;
        # new answers and CUs read or expanded are written by flush() (close(), the end of a with block)
        self._answers: dict[Any, Any] | None = None
        self._new_answers: dict[Any, Any] = {}
        self._dirty_cus: dict[int, D.CompiledUnit] = {}
        # unit offset → pack file in the index (loaded on first use); entries this session added
        self._unit_map: dict[int, str] | None = None
        self._new_units: dict[int, str] = {}
        self._packs: LRUCache[str, dict[int, Any]] = LRUCache(maxsize=4)
        self._units_read: set[int] = set()
        self._fingerprinted = False
        self._units_loaded = 0
        self._answers_stored = 0
        self._answers_looked_up = 0
        try:
            self._load_index()
        except BaseException:
            self._release()  # a file that cannot be used is not kept open until the collector runs
            raise

    # -- index ---------------------------------------------------------------------------------------

    def _load_index(self) -> None:
        if not self.path.exists():
            from .errors import FileNotFoundKsymError

            raise FileNotFoundKsymError(f"{self.path}: no such file")
        identity = None
        if self._store.enabled:
            # taken before the contents are read: a file changed meanwhile has another identity later
            with contextlib.suppress(OSError):
                identity = FileIdentity.of(self.path)
        key = self._store.key_for(identity) if identity is not None else None
        rec = self._store.load_image(key) if key else None
        if rec is not None and key:
            try:
                self._apply_record(rec)
                self.key: str = key
                return
            except (KeyError, TypeError, ValueError):
                pass  # a stale or damaged index: rebuild it
        img = self._open_image()
        self.build_id: str | None = img.build_id
        if identity is None:
            # no index to read or write: the key names nothing on disk
            self.key = image_key(self.build_id, "unindexed")
            self._apply_record(self._build_record(img))
            return
        # the index binds the contents, not only the build id: a damaged copy carrying the genuine
        # build id must neither be answered from the genuine file's index nor write into it
        self.key = image_key(self.build_id, fingerprint(
            img.mm, [(s.offset, s.size) for s in img.sections if s.type in _RELOCATION_SECTION_TYPES]))
        self._fingerprinted = True
        rec = self._store.load_image(self.key)
        if rec is not None:
            try:
                self._apply_record(rec)
                self._store.remember(identity, self.key)
                return
            except (KeyError, TypeError, ValueError):
                pass
        rec = self._build_record(img)
        self._apply_record(rec)
        self._store.save_image(self.key, rec)
        self._store.remember(identity, self.key)

    def _open_image(self) -> Any:
        if self._image is None:
            from .image import KernelImage

            self._image = KernelImage(self.path)
        return self._image

    def _build_record(self, img: Any) -> dict[str, Any]:
        syms = img.load_symbols()
        # a file with a symbol table and no DWARF is answered from the symbols alone, as addr2line does
        ar: list[Any] = []
        if img.has_dwarf:
            with D.damage_is_bad_file(self.path):
                ar = D.read_aranges(self._dwarf_sections_from_image(img))
        ar.sort()
        banner = None
        self.symbols = syms
        self.sections = list(img.sections)
        banner_addr = syms.address_of("linux_banner")
        if banner_addr is not None:
            banner = img.read_cstring_at_address(banner_addr)
        rec: dict[str, Any] = {
            "path": str(self.path),
            "build_id": img.build_id,
            "elf_type": img.elf_type,
            "little_endian": img.little_endian,
            "elfclass": img.elfclass,
            "machine": img.machine,
            "sections": [(s.index, s.name, s.type, s.flags, s.addr, s.offset, s.size) for s in img.sections],
            "syms": syms.to_record(),
            "aranges": (array("Q", [a[0] for a in ar]).tobytes(), array("Q", [a[1] for a in ar]).tobytes(),
                        array("Q", [a[2] for a in ar]).tobytes()),
            "banner": banner,
            "has_dwarf": bool(img.has_dwarf),
            "dynamic_symbols": syms.dynamic_count,
        }
        # faddr2line's path prefix: addr2line's file for start_kernel, cut before init/main.c
        self._apply_record({**rec, "dir_prefix": None})
        rec["dir_prefix"] = self._find_dir_prefix()
        return rec

    def _apply_record(self, rec: dict[str, Any]) -> None:
        self.build_id = rec["build_id"]
        self.elf_type = rec["elf_type"]
        self.little_endian = bool(rec["little_endian"])
        self.elfclass = int(rec["elfclass"])
        self.machine = rec.get("machine")
        self.banner: str | None = rec.get("banner")
        self.sections = [Section(*s) for s in rec["sections"]]
        self.symbols = SymbolTable.from_record(rec["syms"], self.sections)
        self.symbols.machine = self.machine
        self.symbols.dynamic_count = int(rec["dynamic_symbols"])
        s, e, c = (array("Q"), array("Q"), array("Q"))
        s.frombytes(rec["aranges"][0])
        e.frombytes(rec["aranges"][1])
        c.frombytes(rec["aranges"][2])
        self._ar_starts = s.tolist()
        self._ar_ends = e.tolist()
        self._ar_cus = c.tolist()
        self._ar_maxlen = max((b - a for a, b in zip(self._ar_starts, self._ar_ends)), default=0)
        self.dir_prefix: str | None = rec.get("dir_prefix")
        self.has_dwarf = bool(rec["has_dwarf"])
        self._prefix_re = _prefix_regex(self.dir_prefix)

    def _find_dir_prefix(self) -> str | None:
        for i in self.symbols.indices_named("start_kernel"):
            addr = int(self.symbols.values[i])
            cu_off = self._cu_offset_for(addr)
            if cu_off is None:
                return None
            # addr2line without -i: the innermost line; the line table alone answers that
            cu = self._cus.get(cu_off)
            if cu is not None:
                self._read_on(cu, addr, functions=False)
            with D.damage_is_bad_file(self.path):
                table = cu.lines if cu is not None else D.unit_line_table(self._dwarf(), cu_off)
                loc = table.lookup(addr) if table is not None else None
            if loc is None:
                return None
            file_line = f"{loc[0]}:{loc[1]}"
            cut = file_line.rfind("init/main.c:")
            if cut <= 0:
                return None
            return file_line[:cut]
        return None

    # -- DWARF access ------------------------------------------------------------------------------------

    def _dwarf_sections_from_image(self, img: Any) -> D.DwarfSections:
        kw = {k: img.section_bytes(v) for k, v in _DWARF_SECTIONS.items()}
        if kw["info"] is None or kw["abbrev"] is None:
            img.require_dwarf()
            raise BadFileError(f"{self.path}: DWARF without .debug_abbrev")
        sec = D.DwarfSections(little_endian=img.little_endian,
                              default_address_size=img.elfclass // 8, **kw)
        self._sections_cache = sec
        return sec

    def _dwarf(self) -> D.DwarfSections:
        if self._sections_cache is not None:
            return self._sections_cache
        by_name = {s.name: s for s in self.sections}
        # compressed sections (SHF_COMPRESSED, legacy .zdebug_*) are read through KernelImage, which
        # decompresses each once; the plain ones are views over a mapping of the file
        if any(by_name[n].flags & SHF_COMPRESSED for n in _DWARF_SECTIONS.values() if n in by_name) or any(
            s.name.startswith(".zdebug_") for s in self.sections
        ) or not all(n in by_name for n in (".debug_info", ".debug_abbrev")):
            return self._dwarf_sections_from_image(self._open_image())
        try:
            with open(self.path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            from .errors import FileNotFoundKsymError

            raise FileNotFoundKsymError(f"{self.path}: cannot open: {exc.strerror}") from None
        view = memoryview(self._mm)
        kw: dict[str, Any] = {}
        for k, name in _DWARF_SECTIONS.items():
            s = by_name.get(name)
            kw[k] = view[s.offset : s.offset + s.size] if s is not None and s.type != 8 else None
        self._sections_cache = D.DwarfSections(little_endian=self.little_endian,
                                               default_address_size=self.elfclass // 8, **kw)
        return self._sections_cache

    def _cu_offset_for(self, address: int) -> int | None:
        if not self.has_dwarf:
            return None
        i = bisect.bisect_right(self._ar_starts, address) - 1
        while i >= 0 and self._ar_starts[i] >= address - self._ar_maxlen:
            if address < self._ar_ends[i]:
                return int(self._ar_cus[i])
            i -= 1
        return self._cu_offset_fallback(address)

    def _cu_offset_fallback(self, address: int) -> int | None:
        """For CUs missing from .debug_aranges: the ranges of every CU DIE (read once, then indexed)."""
        if self._cu_list is None:
            cached = self._store.load_cu(self.key, -1)
            if isinstance(cached, list):
                self._cu_list = [(int(x[0]), int(x[1]), int(x[2])) for x in cached]
            else:
                sec = self._dwarf()
                covered = set(self._ar_cus)
                out: list[tuple[int, int, int]] = []
                with D.damage_is_bad_file(self.path):
                    for off, _end in D.scan_cu_headers(sec):
                        if off not in covered:
                            out.extend((lo, hi, off) for lo, hi in D.unit_ranges(sec, off))
                out.sort()
                self._cu_list = out
                self._store.save_cu(self.key, -1, out)
        for lo, hi, off in self._cu_list:
            if lo <= address < hi:
                return off
        return None

    def compiled_unit(self, offset: int, address: int | None = None) -> D.CompiledUnit:
        """The unit at ``offset`` of .debug_info (from memory, the index or the DWARF); given an
        ``address``, a unit read from the DWARF decodes its line program only as far as that
        address needs (:meth:`_lines_for` reads on)."""
        cu = self._cus.get(offset)
        if cu is not None:
            return cu
        rec = None
        pack = self._units().get(offset)
        if pack is not None:
            units = self._packs.get(pack)
            if units is None:  # units of one pack are usually asked for together (prefetch sorts so)
                units = self._packs[pack] = self._store.load_pack(self.key, pack)
            rec = units.get(offset)
        if rec is not None:
            try:
                cu = D.unit_from_record(rec)
                self._units_loaded += 1
            except (TypeError, ValueError, IndexError):
                cu = None
        if cu is None:
            with D.damage_is_bad_file(self.path):
                cu = D.compile_unit(self._dwarf(), offset, until=address, expect=address)
            self._mark_dirty(cu)
        self._cus[offset] = cu
        return cu

    def _read_on(self, cu: D.CompiledUnit, address: int, functions: bool = True) -> None:
        """Read as much more of ``cu`` as ``address`` needs: its line program, and with ``functions``
        its top-level functions and the subtree of the one holding it; a unit that grew is written
        back to the index. The DWARF is opened only when something is missing."""
        changed = False
        # the readers leave ``cu`` as it was when they meet damage, and a unit that failed to read is
        # dropped from memory and from the pending writes: nothing half-read is kept or stored
        try:
            with D.damage_is_bad_file(self.path):
                lines = cu.lines
                if lines is not None and not lines.covers(address):
                    changed = lines.extend(self._dwarf(), address)
                if functions:
                    if cu.needs_walk(address):
                        changed = D.walk_on(self._dwarf(), cu, address) or changed
                    if cu.needs_expansion(address):
                        changed = D.expand_for(self._dwarf(), cu, address) or changed
        except BadFileError:
            self._forget_unit(cu.offset)
            raise
        if changed:
            self._mark_dirty(cu)

    def _mark_dirty(self, cu: D.CompiledUnit) -> None:
        self._units_read.add(cu.offset)
        self._dirty_cus[cu.offset] = cu
        if len(self._dirty_cus) >= _MAX_DIRTY_CUS:
            self._write_cus()

    def _forget_unit(self, offset: int) -> None:
        """A unit whose reading failed part way: never stored (its record may be half grown), and read
        again from the start if asked again."""
        self._dirty_cus.pop(offset, None)
        self._cus.pop(offset, None)

    def _units(self) -> dict[int, str]:
        if self._unit_map is None:
            self._unit_map = self._store.load_unit_map(self.key)
        return self._unit_map

    def _write_cus(self) -> None:
        """Write the units read or grown since the last call as one pack (mapped at :meth:`flush`)."""
        if not self._dirty_cus:
            return
        recs = {off: D.unit_to_record(cu) for off, cu in self._dirty_cus.items()}
        self._dirty_cus.clear()
        name = self._store.save_units(self.key, recs)
        if name is not None:
            self._add_units(dict.fromkeys(recs, name))

    def _add_units(self, units: dict[int, str]) -> None:
        self._units().update(units)
        self._new_units.update(units)

    def flush(self) -> None:
        """Write what this session learnt to the on-disk index: the units read or expanded and the
        answers given. :meth:`close` (and leaving a ``with`` block) calls it; nothing else writes them,
        so a Symbolizer that is never closed leaves only its image record in the index."""
        self._write_cus()
        if self._new_units:
            self._store.save_unit_map(self.key, self._new_units)
            self._new_units = {}
        if self._new_answers:
            self._store.save_answers(self.key, self._view(), self._new_answers)
            self._new_answers = {}

    # -- lookups ---------------------------------------------------------------------------------------

    @property
    def stats(self) -> IndexStats:
        """What this Symbolizer read so far: units from the DWARF and from the index, answers."""
        return IndexStats(len(self._units_read), self._units_loaded, self._answers_stored, self._answers_looked_up,
                          self._fingerprinted, str(self._store.directory(self.key)) if self._store.enabled else None)

    @property
    def tag_guess(self) -> Any:
        """The upstream kernel tag of this image (:class:`ksym.version.TagGuess`): from
        ``kernel_tag=`` if given, else derived from its ``linux_banner``."""
        from .version import choose_tag

        return choose_tag(self.banner, self._tag_override)

    @property
    def links(self) -> Any:
        """:class:`ksym.links.ElixirLinks` for this image's kernel tag (None when links are off)."""
        if self._links is None and self._want_links:
            from .links import DEFAULT_ELIXIR_URL, ElixirLinks

            self._links = ElixirLinks(self.tag_guess.tag, self._elixir_url or DEFAULT_ELIXIR_URL)
        return self._links

    def chain(self, address: int) -> tuple[SourceLocation, ...]:
        """The inline chain at a link-time address, innermost first (with links when enabled)."""
        got = self._chains.get(address)
        if got is None:
            got = self._with_links(self._answer(address)[0])
            self._chains[address] = got
        return got

    def instruction_before(self, return_address: int, function_start: int | None = None,
                           name_of: Callable[[int], str | None] | None = None) -> Any:
        """:func:`ksym.disasm.instruction_before` for this image's code, starting its sweep at the line
        row before the address; the result is kept with the stored answers (a dump seen again
        disassembles nothing). ``name_of`` must name addresses by this image's symbols."""
        from .disasm import Instruction, PrecedingInstruction, instruction_before

        answers = self._load_answers()
        key = ("insn", return_address, function_start)
        rec = answers.get(key)
        if rec is not None:
            try:
                insn = Instruction(*rec[1]) if rec[1] is not None else None
                return PrecedingInstruction(insn, rec[0])
            except (TypeError, ValueError, IndexError):
                pass
        got = instruction_before(return_address, self.code_bytes, self.machine, function_start=function_start,
                                 name_of=name_of, boundary_hint=self.line_row_start(return_address - 1))
        fields = None if got.instruction is None else got.instruction.fields()
        answers[key] = self._new_answers[key] = (got.boundary, fields)
        return got

    def remembered(self, key: tuple[Any, ...]) -> Any:
        """What :meth:`remember` kept under ``key`` (in this session or an earlier one), or None."""
        return self._load_answers().get(key)

    def remember(self, key: tuple[Any, ...], value: Any) -> None:
        """Keep a caller's answer that depends on this image alone (and on how paths are shown) with
        the index's stored answers, written by :meth:`flush`. ``key``: a tuple starting with the
        caller's tag (``"frame"``: :mod:`ksym.annotate`); ``value``: tuples, str, int, bytes, None."""
        answers = self._load_answers()
        answers[key] = self._new_answers[key] = value

    def line_row_start(self, address: int) -> int | None:
        """Start of the line-table row covering ``address``: an instruction boundary at or before it
        (what the call-site disassembly starts from), or None without line information."""
        row = self._answer(address)[1]
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
        come back to this process. Returns how many addresses were answered. Errors are left for
        :meth:`chain` to raise in order.
        """
        answers = self._load_answers()
        todo = sorted({a for a in addresses if a not in answers})
        if not todo:
            return 0
        by_unit: dict[int | None, list[int]] = {}
        for a in todo:
            by_unit.setdefault(self._cu_offset_for(a), []).append(a)
        units = self._units()
        cold = [off for off in by_unit if off is not None and off not in self._cus and off not in units]
        n = processes if processes is not None else _usable_cpus()
        n = min(n, 8, max(1, len(cold) // _UNITS_PER_PROCESS))
        # fork only a single-threaded process (a forked copy of a thread holding a lock can hang)
        if n < 2 or not hasattr(os, "fork") or threading.active_count() > 1:
            # unit by unit, the stored ones pack by pack
            for off in sorted(by_unit, key=lambda o: (units.get(o, "") if o is not None else "", o or 0)):
                for a in by_unit[off]:
                    with contextlib.suppress(KsymError):
                        self._answer(a)
            return len(todo)
        import multiprocessing

        # a call site is disassembled by the worker that reads the unit of the call (its line row
        # is where the sweep starts)
        calls_by_unit: dict[int | None, list[tuple[int, int | None]]] = {}
        for c in sorted({c for c in call_sites if ("insn", c[0], c[1]) not in answers}):
            calls_by_unit.setdefault(self._cu_offset_for(c[0] - 1), []).append(c)
        work = [(group, calls_by_unit.pop(off, [])) for off, group in by_unit.items()]
        work += [([], group) for group in calls_by_unit.values()]
        # units differ tenfold in cost: hand them out a few at a time, biggest groups first, so the
        # workers finish together
        work.sort(key=lambda w: len(w[0]) + len(w[1]), reverse=True)
        size = max(1, min(_UNITS_PER_TASK, len(work) // (4 * n)))
        tasks = [work[i : i + size] for i in range(0, len(work), size)]
        global _FORKED
        _FORKED = self
        got = 0
        # the workers share this process's objects copy-on-write: keep the collector off them
        gc.freeze()
        try:
            with multiprocessing.get_context("fork").Pool(n) as pool:
                for part, stored in pool.imap_unordered(_prefetch_worker, tasks):
                    for a, rec in part.items():
                        answers[a] = self._new_answers[a] = rec
                        got += not isinstance(a, tuple)
                    self._answers_looked_up += sum(not isinstance(a, tuple) for a in part)
                    self._units_read.update(stored)
                    self._add_units(stored)
        finally:
            _FORKED = None
            gc.unfreeze()
        return got

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
                want.update(m.symbol.address + spec.offset for m in self.symbols.faddr2line_matches(spec.name))
        return self.prefetch(want, processes=processes)

    def _load_answers(self) -> dict[Any, Any]:
        if self._answers is None:
            self._answers = self._store.load_answers(self.key, self._view())
        return self._answers

    def _view(self) -> str:
        """What the stored answers depend on besides the image: how paths are displayed."""
        return f"prefix={self.dir_prefix!r} map={self.path_map.rules!r}"

    def _answer(self, address: int) -> tuple[tuple[SourceLocation, ...], int]:
        answers = self._load_answers()
        rec = answers.get(address)
        if rec is not None:
            try:
                got = tuple(SourceLocation(*loc) for loc in rec[0]), int(rec[1])
                if address not in self._new_answers:
                    self._answers_stored += 1
                return got
            except (TypeError, ValueError, IndexError):
                pass  # damaged: answer again
        self._answers_looked_up += 1
        chain, row = self._chain(address)
        rec = (tuple((c.function, c.file, c.line, c.column, c.discriminator, c.raw_file, c.inlined)
                     for c in chain), row)
        answers[address] = self._new_answers[address] = rec
        return chain, row

    def _with_links(self, chain: tuple[SourceLocation, ...]) -> tuple[SourceLocation, ...]:
        links = self.links
        if links is None or not chain:
            return chain
        return tuple(
            replace(loc, url=links.source_url(loc.file, loc.line), ident_url=links.ident_url(loc.function))
            for loc in chain
        )

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

    def _chain(self, address: int) -> tuple[tuple[SourceLocation, ...], int]:
        """The inline chain at ``address``, innermost first, as addr2line -i reports it, and the start
        of the line row covering it (-1: none)."""
        cu_off = self._cu_offset_for(address)
        if cu_off is None:
            return inline_chain(None, address, self.symbols, self._display), -1
        cu = self.compiled_unit(cu_off, address)
        self._read_on(cu, address)
        row = cu.lines.row_address(address) if cu.lines is not None else None
        with D.damage_is_bad_file(self.path):  # a file number past the line table's files
            chain = inline_chain(cu, address, self.symbols, self._display)
        return chain, -1 if row is None else row

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
        return faddr2line_select(spec, self.symbols.matches(spec.name, view),
                                 (lambda _m, a: self.chain(a)) if chains else (lambda _m, _a: ()))

    def code_bytes(self, address: int, size: int) -> bytes:
        """Up to ``size`` bytes of the image at a link-time address (empty when no section holds it)."""
        for s in self.sections:
            if s.flags & 0x2 and s.type != 8 and s.addr <= address < s.addr + s.size:
                n = min(size, s.addr + s.size - address)
                off = s.offset + (address - s.addr)
                if self._mm is None and self.has_dwarf:
                    self._dwarf()
                if self._mm is not None:
                    return bytes(self._mm[off : off + n])
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
            self.flush()
        finally:
            self._release()

    def _release(self) -> None:
        if self._image is not None:
            self._image.close()
            self._image = None
        self._sections_cache = None
        self._cus.clear()
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass
            self._mm = None

    def __enter__(self) -> Symbolizer:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Units read or expanded are written in batches of this many (a unit often grows several times).
_MAX_DIRTY_CUS = 64

#: Fewer units than this per process are read in this process (a fork costs more than they do).
_UNITS_PER_PROCESS = 24

#: At most this many units make one task of a prefetch worker.
_UNITS_PER_TASK = 8

#: The symbolizer a forked prefetch worker works for (set in the parent just before the fork).
_FORKED: Symbolizer | None = None


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _prefetch_worker(
    task: list[tuple[list[int], list[tuple[int, int | None]]]],
) -> tuple[dict[Any, Any], dict[int, str]]:
    """In a forked process: answer each group of addresses and call sites (one unit each), write the
    units read to the index as one pack, and send back the answers and where the units are."""
    sym = _FORKED
    assert sym is not None
    # a short-lived process making many small objects and no cycles worth finding: the collector
    # would cost a tenth of its time
    gc.disable()
    sym._new_answers = {}
    sym._new_units = {}
    for group, calls in task:
        for a in group:
            with contextlib.suppress(KsymError):
                sym._answer(a)
        for ret, start in calls:
            with contextlib.suppress(KsymError):
                sym.instruction_before(ret, start, sym.name_of)
    with contextlib.suppress(OSError):
        sym._write_cus()
    return sym._new_answers, sym._new_units


# keep the public errors reachable from here for users of this module alone
_ = (KsymError, SpecError)
