"""``ksym index build``: the portable index file of a debug vmlinux (:mod:`ksym.portable`), made by
forked worker processes.

The parent opens the vmlinux as a :class:`ksym.symbolizer.Symbolizer` does (symbol table, aranges,
banner, faddr2line's path prefix), writes the header's metadata and the small blocks, then hands out
the work: every compilation unit an address can reach (read whole by
:func:`ksym.dwarf.compile_whole_unit`, stored as its index record and compressed) and every 64 KiB
chunk of the allocated sections (compressed). Workers take tasks a few at a time from a shared
counter, biggest units first so they finish together, and send back the compressed pieces; the parent
writes them in order once all are done (the same vmlinux gives the same file, byte for byte). Workers get everything through the arguments of the process
they run in (with the ``fork`` start method those are inherited, not pickled); the parent reaps every
worker before it returns, also on an error. The file is written to a temporary and renamed into place.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import sys
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import BadFileError, KsymError, MissingDebugInfoError
from .index import usable_cpus
from .portable import (
    CODE_CHUNK,
    LEVEL,
    BlockKind,
    PortableMeta,
    PortableWriter,
    arange_block,
    compress,
    unit_range_block,
)
from .records import NamedTuple

if TYPE_CHECKING:
    from .dwarf import DwarfSections

__all__ = ["BuildResult", "build_index"]

#: Tasks a worker takes at once from the shared counter.
TASKS_PER_TAKE = 4


class BuildTask(NamedTuple):
    """One piece of work: a unit (``kind`` "unit", ``key`` its offset) or a code chunk (``kind`` "code",
    ``key`` its address, ``size`` its length)."""

    kind: str
    key: int
    size: int


class BuiltPiece(NamedTuple):
    """What a worker sends back for one task: the compressed piece and its length before."""

    kind: str
    key: int
    stored: bytes
    raw_length: int


class BuildResult(NamedTuple):
    """What :func:`build_index` made."""

    path: Path
    size: int
    units: int
    code_chunks: int
    processes: int
    seconds: float
    build_id: str | None
    #: modules written (``modules``)
    modules: int = 0


def _created_by() -> str:
    from . import __version__

    return f"ksym {__version__}"


def build_index(
    vmlinux: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    processes: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    level: int = LEVEL,
    modules: str | os.PathLike[str] | None = None,
) -> BuildResult:
    """Write the portable index file of ``vmlinux`` to ``output``.

    :param processes: worker processes (default: every CPU this process may use).
    :param progress: called with (tasks done, tasks in all) as pieces arrive.
    :param level: the zlib level of the units and code chunks.
    :param modules: a directory of module debug files (searched recursively, as ``ksym annotate
        --modules``): each module (the first file of each name) is read whole into the file too.
    :raises FileNotFoundKsymError: no such vmlinux, or ``output``'s directory cannot be written.
    :raises BadFileError: not a usable ELF file, or damaged DWARF (in any unit).
    :raises MissingDebugInfoError: no DWARF.
    """
    from . import dwarf as D
    from .dwarf_image import ArangeTable, UnitRange
    from .symbolizer import Symbolizer
    from .version import choose_tag

    started = time.monotonic()
    out = Path(output)
    module_files = _module_files(modules) if modules is not None else []
    with Symbolizer(vmlinux, use_index=False) as sym:
        if not sym.has_dwarf or sym.dwarf_image is None:
            raise MissingDebugInfoError(f"{sym.path}: no DWARF debug info (.debug_info): nothing to index")
        dw = sym.dwarf_image
        sec = dw.sections
        with D.damage_is_bad_file(sym.path):
            aranges = ArangeTable.of(D.read_aranges(sec))
            covered = set(aranges.units)
            ranges: list[UnitRange] = []
            spans = {s.offset: s.end - s.offset for s in D.scan_cu_headers(sec)}
            for off in spans:
                if off not in covered:
                    ranges.extend(UnitRange(lo, hi, off) for lo, hi in D.unit_ranges(sec, off))
        ranges.sort()
        units = sorted(covered | {r.unit for r in ranges})
        meta = PortableMeta(
            build_id=sym.build_id,
            banner=sym.banner,
            kernel_tag=choose_tag(sym.banner).tag,
            machine=sym.machine,
            elf_type=sym.elf_type,
            elfclass=sym.elfclass,
            little_endian=sym.little_endian,
            sections=tuple(sym.sections),
            dir_prefix=sym.dir_prefix,
            dynamic_symbols=sym.symbols.dynamic_count,
            byteorder=sys.byteorder,
            source_name=Path(sym.path).name,
            source_size=os.stat(sym.path).st_size,
            created_by=_created_by(),
        )
        tasks = [BuildTask("unit", off, spans.get(off, 0)) for off in units]
        for s in sym.sections:
            if s.flags & 0x2 and s.type != 8 and s.size:
                tasks.extend(
                    BuildTask("code", a, min(CODE_CHUNK, s.addr + s.size - a))
                    for a in range(s.addr, s.addr + s.size, CODE_CHUNK)
                )
        # biggest first: the workers finish together
        tasks.sort(key=lambda t: t.size, reverse=True)
        try:
            writer = PortableWriter(out, meta, modules=modules is not None)
        except OSError as exc:
            from .errors import FileNotFoundKsymError

            raise FileNotFoundKsymError(f"{out}: cannot write: {exc.strerror or exc}") from None
        try:
            writer.add_block(BlockKind.SYMBOLS, sym.symbols.to_buffer(), compress_it=False)
            writer.add_block(BlockKind.ARANGES, arange_block(aranges))
            writer.add_block(BlockKind.UNIT_RANGES, unit_range_block(ranges))
            n = max(1, min(processes or usable_cpus(), len(tasks)))
            done = 0
            code_bytes = sym.code_bytes
            # kept until all are done and written in order: the same vmlinux gives the same file
            pieces: dict[tuple[str, int], BuiltPiece] = {}
            with contextlib.closing(_run_tasks(_Pieces(sec, code_bytes, level, sym.path), tasks, n)) as built:
                for piece in built:
                    pieces[piece.kind, piece.key] = piece
                    done += 1
                    if progress is not None:
                        progress(done, len(tasks))
            for _key, piece in sorted(pieces.items()):
                if piece.kind == "unit":
                    writer.add_unit(piece.key, piece.stored, piece.raw_length)
                else:
                    writer.add_code(piece.key, piece.stored, piece.raw_length)
            pieces.clear()
            nmod = 0
            for path in module_files:
                writer.add_module(*_module_piece(path, level))
                nmod += 1
            size = writer.finish()
        except BaseException:
            writer.abort()
            raise
    return BuildResult(
        out, size, len(units), len(tasks) - len(units), n, time.monotonic() - started, meta.build_id, nmod
    )


def _module_files(root: str | os.PathLike[str]) -> list[str]:
    """The module debug files under ``root``: the first (by suffix: ``.ko`` before ``.ko.debug``, ``.xz``,
    ...) of each module name, by name.

    :raises FileNotFoundKsymError: ``root`` is not a directory."""
    from .errors import FileNotFoundKsymError
    from .modules import _module_files_under

    if not os.path.isdir(root):
        raise FileNotFoundKsymError(f"{root}: no such directory (--modules)")
    found = _module_files_under(os.path.realpath(root))
    return [paths[0] for _name, paths in sorted(found.items()) if paths]


def _module_piece(path: str, level: int) -> tuple[str, str | None, bytes, int]:
    """One module read whole: (normalized name, build id, its compressed record, its length)."""
    from . import dwarf as D
    from .dwarf_image import ArangeTable, UnitRange
    from .modules import ModuleImage, normalize_module_name
    from .portable import PortableModule

    img = ModuleImage(path)
    raw_symbols, _placed = img.symbol_tables()
    aranges: ArangeTable | None = None
    ranges: list[UnitRange] = []
    units: dict[int, D.CompiledUnit] = {}
    if img.has_dwarf:
        sec = img.dwarf_sections()
        with D.damage_is_bad_file(img.path):
            aranges = ArangeTable.of(D.read_aranges(sec))
            covered = set(aranges.units)
            for s in D.scan_cu_headers(sec):
                if s.offset not in covered:
                    ranges.extend(UnitRange(lo, hi, s.offset) for lo, hi in D.unit_ranges(sec, s.offset))
            ranges.sort()
            for off in sorted(covered | {r.unit for r in ranges}):
                units[off] = D.compile_whole_unit(sec, off)
    code = {
        s.index: img.section_data(s, 0, s.size)
        for s in img.sections
        if s.flags & 0x2 and s.type != 8 and s.size
    }
    raw = marshal.dumps(PortableModule.record(img, raw_symbols, aranges, ranges, units, code), 4)
    return normalize_module_name(img.module_name), img.build_id, compress(raw, level), len(raw)


def _piece(
    sec: DwarfSections, code_bytes: Callable[[int, int], bytes], level: int, path: object, task: BuildTask
) -> BuiltPiece:
    """In a worker: one task done."""
    from . import dwarf as D

    if task.kind == "unit":
        with D.damage_is_bad_file(path):
            cu = D.compile_whole_unit(sec, task.key)
        raw = marshal.dumps(D.unit_to_record(cu))
    else:
        raw = code_bytes(task.key, task.size)
        if len(raw) != task.size:
            raise BadFileError(f"{path}: section contents at {task.key:#x} cut short")
    return BuiltPiece(task.kind, task.key, compress(raw, level), len(raw))


class _Pieces:
    """The work of one worker: a task's piece (the arguments :func:`_piece` needs but the task)."""

    def __init__(
        self, sec: DwarfSections, code_bytes: Callable[[int, int], bytes], level: int, path: object
    ) -> None:
        self._sec = sec
        self._code_bytes = code_bytes
        self._level = level
        self._path = path

    def __call__(self, task: BuildTask) -> BuiltPiece:
        return _piece(self._sec, self._code_bytes, self._level, self._path, task)


def _run_tasks(make: _Pieces, tasks: list[BuildTask], n: int) -> Generator[BuiltPiece, None, None]:
    """The pieces of ``tasks`` as they come from ``n`` forked workers (in this process when ``n`` is 1
    or fork is missing); every worker is reaped before this ends."""
    if n < 2 or not hasattr(os, "fork"):
        for t in tasks:
            yield make(t)
        return
    from .workers import ForkedWorkers

    got = 0
    with ForkedWorkers(make, take=TASKS_PER_TAKE) as workers:
        for piece in workers.run(tasks, n):
            got += 1
            yield piece
    if got != len(tasks):
        raise KsymError(f"index build: {len(tasks) - got} tasks were not done (a worker died)")
