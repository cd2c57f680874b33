"""A module a portable index file holds (``ksym index build --modules``): :class:`PortableModule`, read
whole from its record when a frame first names it (:meth:`ksym.portable.PortableFile.module`), and the
store of its units (:class:`_ModuleUnits`). Kept apart from :mod:`ksym.portable` so that answering a
vmlinux frame from the file does not load it."""

from __future__ import annotations

from typing import Any

from .portable import NoSections, _aranges_of, _damage, _sections_of, _unit_ranges_of, _whole_unit
from .symbols import Section, SymbolTable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

    from .dwarf_image import ArangeTable, DwarfImage, UnitRange
    from .units import CompiledUnit

__all__ = ["PortableModule"]


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
