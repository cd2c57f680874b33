"""``ksym index build``: the portable index file of a debug vmlinux (:mod:`ksym.portable`), made by
forked worker processes.

The parent opens the vmlinux as a :class:`ksym.symbolizer.Symbolizer` does (symbol table, aranges,
banner, faddr2line's path prefix), writes the header's metadata and the small blocks, then hands out
the work: every compilation unit an address can reach (read whole by
:func:`ksym.dwarf.compile_whole_unit`, cut into address parts by :func:`ksym.unit_parts.unit_parts`,
each stored as its index record and compressed), every 64 KiB
chunk of the allocated sections (compressed) and, with ``modules``, every module debug file (read
whole: :func:`_module_piece`). Workers take jobs one at a time from a shared counter (a module is one
job, vmlinux pieces go four to a job), biggest first so they finish together, and send back the
compressed pieces. The parent appends each piece as it arrives to a spool (an unnamed temporary file
beside the output) and, once all are done, copies them into the file in a fixed order: code chunks and
units by address and offset, then modules by name. The same inputs give the same file, byte for byte,
whatever the number of workers and the order they finish in.

Memory: the parent holds the vmlinux (as a :class:`ksym.symbolizer.Symbolizer` does) and one piece at a
time; each worker holds the vmlinux's mapping (shared with the parent) and one job's data: one unit, or
one module read whole (its file, its units and its record: a few times the module file's size, about
150 MB for the largest modules of a distribution kernel). Peak memory is therefore bounded by the
number of workers times the largest module, not by the number of modules.

Workers get everything through the arguments of the process they run in (with the ``fork`` start
method those are inherited, not pickled); the parent reaps every worker before it returns, also on an
error. An error in any job (a damaged unit or module debug file: :class:`ksym.errors.BadFileError`)
ends the build with that error, leaves no file and stops the other workers; so does a worker killed by
a signal (the out-of-memory killer, a user: :class:`ksym.errors.WorkerDiedError`, told by the exit the
worker was reaped with, :class:`ksym.workers.WorkerExit`). The file is written to a
temporary and renamed into place.
"""

from __future__ import annotations

import contextlib
import gc
import marshal
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

from .errors import BadFileError, KsymError, MissingDebugInfoError, WorkerDiedError
from .portable import CODE_CHUNK, LEVEL, BlockKind, PortableMeta
from .portable_write import (
    PortableWriter,
    StoredPart,
    arange_block,
    compress,
    module_record,
    name_pieces,
    unit_range_block,
)
from .records import NamedTuple
from .workers import usable_cpus

if TYPE_CHECKING:
    from .dwarf import DwarfSections
    from .workers import ForkedWorkers

__all__ = ["BuildResult", "WorkerShare", "build_index"]

#: vmlinux tasks (units and code chunks) in one job; a module is a job of its own.
TASKS_PER_JOB = 4


class BuildTask(NamedTuple):
    """One piece of work: a unit (``kind`` "unit", ``key`` its offset), a code chunk (``kind`` "code",
    ``key`` its address, ``size`` its length) or a module (``kind`` "module", ``key`` its place in the
    sorted list of module files, ``size`` the file's size)."""

    kind: str
    key: int
    size: int


class BuildJob(NamedTuple):
    """What a worker takes from the shared counter at once: a few vmlinux tasks, or one module."""

    tasks: tuple[BuildTask, ...]
    size: int


class BuiltPiece(NamedTuple):
    """What a worker sends back for one task: the compressed piece, its length before, the process that
    made it and, for a module, its name and build id."""

    kind: str
    key: int
    stored: bytes
    raw_length: int
    pid: int
    name: str = ""
    build_id: str | None = None
    #: a unit's address parts, their compressed records one after the other in ``stored``
    parts: tuple[PartLength, ...] = ()


class PartLength(NamedTuple):
    """Where one address part of a unit is in its :class:`BuiltPiece`'s bytes."""

    #: the lowest address it answers
    low: int
    #: its compressed record's length
    length: int
    #: its record's length
    raw_length: int


class SpooledPiece(NamedTuple):
    """A piece in the spool: where its compressed bytes are, and what the file's directory says of it."""

    kind: str
    key: int
    offset: int
    length: int
    raw_length: int
    name: str
    build_id: str | None
    parts: tuple[PartLength, ...]


class WorkerShare(NamedTuple):
    """The pieces one process built (the builder itself when it used no workers)."""

    pid: int
    pieces: int
    modules: int


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
    #: who built the pieces, by pid
    workers: tuple[WorkerShare, ...] = ()


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
    :raises WorkerDiedError: a worker process was killed by a signal (the out-of-memory killer, a user).
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
        jobs = _jobs(tasks, module_files)
        ntasks = len(tasks) + len(module_files)
        try:
            writer = PortableWriter(out, meta, modules=modules is not None)
        except OSError as exc:
            from .errors import FileNotFoundKsymError

            raise FileNotFoundKsymError(f"{out}: cannot write: {exc.strerror or exc}") from None
        try:
            with _writing(out):
                writer.add_block(BlockKind.SYMBOLS, sym.symbols.to_buffer(), compress_it=False)
                writer.add_block(BlockKind.ARANGES, arange_block(aranges))
                writer.add_block(BlockKind.UNIT_RANGES, unit_range_block(ranges))
            names = [(compress(raw, level), len(raw)) for raw in name_pieces(sym.symbols.faddr2line_names())]
            n = max(1, min(processes or usable_cpus(), len(jobs)))
            make = _Pieces(sec, sym.code_bytes, level, sym.path, module_files)
            shares: dict[int, WorkerShare] = {}
            # the pieces go to the spool as they come, and into the file in order once all are done
            with _Spool(out.parent) as spool:
                with contextlib.closing(_run_jobs(make, jobs, ntasks, n)) as built:
                    for piece in built:
                        spool.add(piece)
                        was = shares.get(piece.pid, WorkerShare(piece.pid, 0, 0))
                        shares[piece.pid] = WorkerShare(
                            piece.pid, was.pieces + 1, was.modules + (piece.kind == "module")
                        )
                        if progress is not None:
                            progress(len(spool), ntasks)
                nmod = 0
                with _writing(out):
                    for at, stored in spool.in_order():
                        if at.kind == "unit":
                            writer.add_unit(at.key, _stored_parts(at.parts, stored))
                        elif at.kind == "code":
                            writer.add_code(at.key, stored, at.raw_length)
                        else:
                            writer.add_module(at.name, at.build_id, stored, at.raw_length)
                            nmod += 1
                    for i, (stored, raw_length) in enumerate(names):
                        writer.add_names(i, stored, raw_length)
                    size = writer.finish()
        except BaseException:
            writer.abort()
            raise
    return BuildResult(
        out,
        size,
        len(units),
        len(tasks) - len(units),
        n,
        time.monotonic() - started,
        meta.build_id,
        nmod,
        tuple(sorted(shares.values())),
    )


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Writing ``path`` (the file, or the spool beside it): a write that fails (a full disk, a file size
    limit) is :class:`ksym.errors.FileNotFoundKsymError` naming it, as an output that cannot be created is."""
    from .errors import FileNotFoundKsymError

    try:
        yield
    except OSError as exc:
        raise FileNotFoundKsymError(f"{path}: cannot write: {exc.strerror or exc}") from None


def _jobs(tasks: list[BuildTask], module_files: Sequence[str]) -> list[BuildJob]:
    """The jobs of a build, biggest first (the workers finish together): the vmlinux's tasks, biggest
    first, :data:`TASKS_PER_JOB` to a job, and one job per module (its size: the file's)."""
    tasks = sorted(tasks, key=lambda t: t.size, reverse=True)
    jobs = [
        BuildJob(tuple(part), sum(t.size for t in part))
        for part in (tasks[i : i + TASKS_PER_JOB] for i in range(0, len(tasks), TASKS_PER_JOB))
    ]
    for i, path in enumerate(module_files):
        try:
            size = os.stat(path).st_size
        except OSError:  # reported by the job that reads it
            size = 0
        jobs.append(BuildJob((BuildTask("module", i, size),), size))
    jobs.sort(key=lambda j: j.size, reverse=True)
    return jobs


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
    raw = marshal.dumps(module_record(img, raw_symbols, aranges, ranges, units, code), 4)
    return normalize_module_name(img.module_name), img.build_id, compress(raw, level), len(raw)


def _stored_parts(parts: Sequence[PartLength], stored: bytes) -> list[StoredPart]:
    """A unit's parts, cut out of the bytes its worker sent (``stored``: their records one after the other)."""
    out = []
    at = 0
    for p in parts:
        out.append(StoredPart(p.low, stored[at : at + p.length], p.raw_length))
        at += p.length
    return out


def _piece(
    sec: DwarfSections, code_bytes: Callable[[int, int], bytes], level: int, path: object, task: BuildTask
) -> BuiltPiece:
    """In a worker: one task of the vmlinux done."""
    from . import dwarf as D

    if task.kind == "unit":
        from .unit_parts import unit_parts

        with D.damage_is_bad_file(path):
            cu = D.compile_whole_unit(sec, task.key)
        stored = []
        lengths = []
        for part in unit_parts(cu):
            raw = marshal.dumps(D.unit_to_record(part.unit))
            stored.append(compress(raw, level))
            lengths.append(PartLength(part.low, len(stored[-1]), len(raw)))
        return BuiltPiece(task.kind, task.key, b"".join(stored), sum(p.raw_length for p in lengths), os.getpid(),
                          parts=tuple(lengths))
    else:
        raw = code_bytes(task.key, task.size)
        if len(raw) != task.size:
            raise BadFileError(f"{path}: section contents at {task.key:#x} cut short")
    return BuiltPiece(task.kind, task.key, compress(raw, level), len(raw), os.getpid())


class _Pieces:
    """The work of one worker: a job's pieces (the arguments :func:`_piece` and :func:`_module_piece`
    need but the task)."""

    def __init__(
        self,
        sec: DwarfSections,
        code_bytes: Callable[[int, int], bytes],
        level: int,
        path: object,
        module_files: Sequence[str],
    ) -> None:
        self._sec = sec
        self._code_bytes = code_bytes
        self._level = level
        self._path = path
        self._module_files = module_files

    def __call__(self, job: BuildJob) -> list[BuiltPiece]:
        return [self._one(t) for t in job.tasks]

    def _one(self, task: BuildTask) -> BuiltPiece:
        if task.kind != "module":
            return _piece(self._sec, self._code_bytes, self._level, self._path, task)
        name, build_id, stored, raw_length = _module_piece(self._module_files[task.key], self._level)
        if not gc.isenabled():
            # a worker runs with the collector off (ksym.workers), and pyelftools' ELFFile of a module
            # is a reference cycle holding the whole module file: without this a worker grows by the
            # size of every module it reads
            gc.collect()
        return BuiltPiece(task.kind, task.key, stored, raw_length, os.getpid(), name, build_id)


class _Spool:
    """The pieces of a build as they arrive, in an unnamed temporary file (gone when closed, also when
    the process dies), read back in the file's order by :meth:`in_order`."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._f: IO[bytes] | None = None
        self._at: list[SpooledPiece] = []
        self._end = 0

    def __enter__(self) -> _Spool:  # noqa: PYI034 - typing.Self needs Python 3.11
        with _writing(self._directory):
            self._f = tempfile.TemporaryFile(dir=self._directory)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __len__(self) -> int:
        return len(self._at)

    def add(self, piece: BuiltPiece) -> None:
        assert self._f is not None
        with _writing(self._directory):
            self._f.write(piece.stored)
        self._at.append(
            SpooledPiece(
                piece.kind,
                piece.key,
                self._end,
                len(piece.stored),
                piece.raw_length,
                piece.name,
                piece.build_id,
                piece.parts,
            )
        )
        self._end += len(piece.stored)

    def in_order(self) -> Iterator[tuple[SpooledPiece, bytes]]:
        """Each piece with its bytes: the vmlinux's code chunks by address and units by offset (as the
        file has always held them), then the modules in the order of their files' names."""
        assert self._f is not None
        self._f.flush()
        fd = self._f.fileno()
        for at in sorted(self._at, key=lambda p: (p.kind == "module", p.kind, p.key)):
            yield at, os.pread(fd, at.length, at.offset)


def _run_jobs(make: _Pieces, jobs: list[BuildJob], ntasks: int, n: int) -> Generator[BuiltPiece, None, None]:
    """The pieces of ``jobs`` as they come from ``n`` forked workers (in this process when ``n`` is 1
    or fork is missing); every worker is reaped before this ends."""
    if n < 2 or not hasattr(os, "fork"):
        for job in jobs:
            yield from make(job)
        return
    from .workers import ForkedWorkers

    got = 0
    with ForkedWorkers(make, take=1) as workers:
        with contextlib.closing(workers.run(jobs, n)) as results:
            for pieces in results:
                # a dead worker's job is lost: stop the others at once rather than after their work
                _check_workers(workers)
                got += len(pieces)
                yield from pieces
        _check_workers(workers)
    if got != ntasks:
        raise KsymError(f"index build: {ntasks - got} tasks were not done, and every worker finished")


def _check_workers(workers: ForkedWorkers[BuildJob, list[BuiltPiece]]) -> None:
    """Raise if a worker of the build died.

    :raises WorkerDiedError: it was killed by a signal (the out-of-memory killer, a user).
    :raises KsymError: it exited with an error of its own without sending it (a bug)."""
    died = workers.died
    if not died:
        return
    ended = next((e for e in died if e.signal is not None), died[0])
    if ended.signal is None:
        raise KsymError(f"index build: worker process {ended.pid} {ended} without saying why: no file written")
    # SIGKILL is what the out-of-memory killer sends: more workers hold more memory at once
    how = ended.how("out of memory? try fewer --jobs" if ended.signal == signal.SIGKILL else None)
    raise WorkerDiedError(f"index build: worker process {ended.pid} was {how}: no file written", ended.pid,
                          ended.signal)
