"""The one entry point: :class:`Symbolizer` turns frames and addresses into :class:`Resolution` records.

    >>> from ksym import Symbolizer
    >>> s = Symbolizer("/usr/lib/debug/boot/vmlinux-6.1.0-53-cloud-amd64")
    >>> print(s.resolve("__ip_local_out+222")[0])
    __ip_local_out+222/0x160:
    nf_hook at include/linux/netfilter.h:257
    (inlined by) __ip_local_out at net/ipv4/ip_output.c:115

It owns every cache: the on-disk index (symbols, aranges, each CU once read; see :mod:`ksym.index`) and
an in-memory LRU of compiled units for batch work. The ELF file itself is opened only when the index
cannot answer.
"""

from __future__ import annotations

import bisect
import mmap
import os
import re
from array import array
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from cachetools import LRUCache

from . import dwarf as D
from .errors import BadFileError, KsymError, SpecError
from .index import IndexStore
from .locate import find_vmlinux
from .model import Resolution, SourceLocation
from .spec import AddressSpec, FuncSpec, parse_spec
from .symbols import Section, SymbolTable, faddr2line_select, inline_chain

__all__ = ["Symbolizer", "source_relative"]

_KERNEL_TOP_DIRS = (
    "arch", "block", "certs", "crypto", "drivers", "fs", "include", "init", "io_uring", "ipc", "kernel",
    "lib", "mm", "net", "rust", "samples", "scripts", "security", "sound", "tools", "usr", "virt",
)
_TOP_RE = re.compile("/(?:" + "|".join(_KERNEL_TOP_DIRS) + ")/")

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


class Symbolizer:
    """Resolve kernel frames (``func+off[/size]``) and link-time addresses against one debug image.

    :param vmlinux: the debug vmlinux (or any ELF with DWARF); default: ``$KSYM_VMLINUX``, then the
        running kernel's debug vmlinux where distributions install it.
    :param use_index: read and write the on-disk index (``$KSYM_CACHE_DIR``, default ~/.cache/ksym).
    :param cache_dir: where the index lives, overriding the default.
    :param warn: called with warning lines (build id mismatch); default: ignore them (see ``warnings``).
    :raises FileNotFoundKsymError: no such file / nothing found.
    :raises BadFileError: not ELF, truncated, no symbol table; :class:`MissingDebugInfoError`: no DWARF.
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
    ) -> None:
        located = find_vmlinux(vmlinux)
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
        self._load_index()

    # -- index ---------------------------------------------------------------------------------------

    def _load_index(self) -> None:
        if not self.path.exists():
            from .errors import FileNotFoundKsymError

            raise FileNotFoundKsymError(f"{self.path}: no such file")
        key = self._store.key_for_path(self.path)
        rec = self._store.load_image(key) if key else None
        if rec is not None and key:
            try:
                self._apply_record(rec)
                self.key: str = key
                return
            except (KeyError, TypeError, ValueError):
                pass  # a stale or damaged index: rebuild it
        img = self._open_image()
        img.require_dwarf()
        self.build_id: str | None = img.build_id
        self.key = self.build_id or self._store.fallback_key(self.path)
        rec = self._store.load_image(self.key)
        if rec is not None:
            try:
                self._apply_record(rec)
                self._store.remember_path(self.path, self.key)
                return
            except (KeyError, TypeError, ValueError):
                pass
        rec = self._build_record(img)
        self._apply_record(rec)
        self._store.save_image(self.key, rec)
        self._store.remember_path(self.path, self.key)

    def _open_image(self) -> Any:
        if self._image is None:
            from .image import KernelImage

            self._image = KernelImage(self.path)
        return self._image

    def _build_record(self, img: Any) -> dict[str, Any]:
        syms = img.load_symbols()
        sec = self._dwarf_sections_from_image(img)
        ar = D.read_aranges(sec)
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
        s, e, c = (array("Q"), array("Q"), array("Q"))
        s.frombytes(rec["aranges"][0])
        e.frombytes(rec["aranges"][1])
        c.frombytes(rec["aranges"][2])
        self._ar_starts = s.tolist()
        self._ar_ends = e.tolist()
        self._ar_cus = c.tolist()
        self._ar_maxlen = max((b - a for a, b in zip(self._ar_starts, self._ar_ends)), default=0)
        self.dir_prefix: str | None = rec.get("dir_prefix")
        self._prefix_re = _prefix_regex(self.dir_prefix)

    def _find_dir_prefix(self) -> str | None:
        for i in self.symbols.indices_named("start_kernel"):
            addr = int(self.symbols.values[i])
            cu_off = self._cu_offset_for(addr)
            if cu_off is None:
                return None
            # addr2line without -i: the innermost line; the line table alone answers that
            cu = self._cus.get(cu_off)
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
        if any(by_name[n].flags & 0x800 for n in _DWARF_SECTIONS.values() if n in by_name) or not all(
            n in by_name for n in (".debug_info", ".debug_abbrev")
        ):
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
                for off, _end in D.scan_cu_headers(sec):
                    if off in covered:
                        continue
                    try:
                        for lo, hi in D.unit_ranges(sec, off):
                            out.append((lo, hi, off))
                    except (D.DwarfError, IndexError, ValueError):
                        continue
                out.sort()
                self._cu_list = out
                self._store.save_cu(self.key, -1, out)
        for lo, hi, off in self._cu_list:
            if lo <= address < hi:
                return off
        return None

    def compiled_unit(self, offset: int) -> D.CompiledUnit:
        cu = self._cus.get(offset)
        if cu is not None:
            return cu
        rec = self._store.load_cu(self.key, offset)
        if rec is not None:
            try:
                cu = D.unit_from_record(rec)
            except (TypeError, ValueError, IndexError):
                cu = None
        if cu is None:
            try:
                cu = D.compile_unit(self._dwarf(), offset)
            except (D.DwarfError, IndexError, ValueError) as exc:
                raise BadFileError(f"{self.path}: corrupt DWARF in the unit at {offset:#x}: {exc}") from None
            except __import__("struct").error as exc:
                raise BadFileError(f"{self.path}: corrupt DWARF in the unit at {offset:#x}: {exc}") from None
            self._store.save_cu(self.key, offset, D.unit_to_record(cu))
        self._cus[offset] = cu
        return cu

    # -- lookups ---------------------------------------------------------------------------------------

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
            got = self._with_links(self._chain(address))
            self._chains[address] = got
        return got

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
        if self._prefix_re is not None:
            m = self._prefix_re.match(" " + raw)
            if m:
                return raw[m.end() - 1:]
        return raw

    def _chain(self, address: int) -> tuple[SourceLocation, ...]:
        """The inline chain at ``address``, innermost first, as addr2line -i reports it."""
        cu_off = self._cu_offset_for(address)
        if cu_off is None:
            return inline_chain(None, address, self.symbols, self._display)
        cu = self.compiled_unit(cu_off)
        if cu.needs_expansion(address):
            try:
                changed = D.expand_for(self._dwarf(), cu, address)
            except (D.DwarfError, IndexError, ValueError) as exc:
                raise BadFileError(f"{self.path}: corrupt DWARF in the unit at {cu_off:#x}: {exc}") from None
            if changed:
                self._store.save_cu(self.key, cu_off, D.unit_to_record(cu))
        return inline_chain(cu, address, self.symbols, self._display)

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

    def resolve(self, frame: str) -> list[Resolution]:
        """Resolve ``func+off[/size]`` (every matching symbol, as faddr2line) or a raw address.

        :raises SpecError: malformed text.
        :raises SymbolNotFoundError: no symbol matched; ``.reasons`` holds faddr2line's skip messages.
        """
        spec = parse_spec(frame)
        if isinstance(spec, AddressSpec):
            return [self.symbolize(spec.address, frame)]
        return self._resolve_func(spec)

    def _resolve_func(self, spec: FuncSpec) -> list[Resolution]:
        return faddr2line_select(spec, self.symbols.faddr2line_matches(spec.name), lambda _m, a: self.chain(a))

    def code_bytes(self, address: int, size: int) -> bytes:
        """Up to ``size`` bytes of the image at a link-time address (empty when no section holds it)."""
        for s in self.sections:
            if s.flags & 0x2 and s.type != 8 and s.addr <= address < s.addr + s.size:
                n = min(size, s.addr + s.size - address)
                off = s.offset + (address - s.addr)
                if self._mm is None:
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


# keep the public errors reachable from here for users of this module alone
_ = (KsymError, SpecError)
