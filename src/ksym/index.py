"""The persistent index: what ksym learns about a kernel image, kept per build id and content.

Layout under ``$KSYM_CACHE_DIR`` (default ``$XDG_CACHE_HOME/ksym``, i.e. ``~/.cache/ksym``)::

    paths/<checksums of the real path>.v11 → PathRecord: the file's identity (size, mtime, ctime, inode,
                                          device) and its key, so a warm run neither opens nor hashes it
    index/<key>/image.v11                → ImageRecord: sections, aranges, faddr2line prefix, banner, the
                                          size and CRC-32 of the symbols file
    index/<key>/symbols.v11              → the symbol table as one flat buffer
                                          (:meth:`ksym.symbols.SymbolTable.to_buffer`), mapped read-only
                                          when a lookup first needs the whole table (its CRC-32 checked
                                          then): its columns are views of the map
    index/<key>/units-<...>.v11          → a pack of compilation units as read (function tree + line
                                          table, each possibly partial: read on when an address needs it)
    index/<key>/units.v11                → unit offset → the pack holding its newest record
    index/<key>/cu--1.v11                → UnitRange records: ranges of the units .debug_aranges misses
    index/<key>/answers.v11              → AnswerRecords: address → StoredChain (inline chain, line-row
                                          start) of every address looked up before; (return address,
                                          function start) → StoredInstruction (the instruction before
                                          it); callers' own answers (annotate's frames): a dump seen
                                          again needs no CU at all

Every file but the symbols file is written with ``marshal`` after an 8-byte header: ``ksym`` and the CRC-32
of the payload (u32 little-endian). A file whose header or CRC-32 does not match, or that ``marshal`` cannot
read, is damaged: deleted, and rebuilt as if it were missing; so is a symbols file of another size or CRC-32
than the image record names. (The CRC-32s find damage, not intent: a file written on purpose with matching
ones is read as data, and its symbol table's index columns are still checked as a lookup reads them.)

One image's index is used through an :class:`ImageIndex` session (units read, answers given, written by
its :meth:`ImageIndex.flush`); :class:`IndexStore` only reads and writes the files.

``key`` is ``<GNU build id>-<fingerprint>`` (``nobuildid-<fingerprint>`` for a file without a build id):
the fingerprint is a SHA-256 of every byte of the file ksym may read (all of it but the contents of
relocation sections), so a damaged or altered copy that carries the genuine build id gets an index of
its own and can neither be answered from the genuine file's index nor write into it. It is computed
once per file identity and remembered in the path memo. Files are written with ``marshal`` (plain data
only: loading never runs code) to a temporary name (``.tmp-<16 hex digits>``) and renamed into place,
so readers never see half a file (the symbols file is written before the image record naming its
size and CRC-32); a file that fails to load or to match its CRC-32 is deleted and rebuilt; temporaries left
by an interrupted write are deleted by a later write to the same directory once they are an hour old.
"""

from __future__ import annotations

import marshal
import mmap
import os
import re
import struct
import time
import zlib
from collections.abc import Iterable
from typing import Any

from .checksum import crc32
from .dwarf_image import UnitRange
from .errors import BadFileError
from .lru import LRUCache
from .records import NamedTuple
from .searchopts import path_text
from .session import AnswerRecords, ImageRecord, StoredAnswers
from .symbols import Section, SymbolTable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

    from .units import CompiledUnit

__all__ = [
    "FORMAT_VERSION",
    "RECENT_CHANGE_SECONDS",
    "STALE_TEMP_SECONDS",
    "DamagedSymbolsFile",
    "FileIdentity",
    "Fingerprinting",
    "ImageIndex",
    "IndexStore",
    "PathRecord",
    "default_cache_dir",
    "fingerprint",
    "xdg_cache_home",
]

#: Version of the layout and of every record; files of other versions are never read. 7: keys bind the
#: file's contents (build id + fingerprint), the path memo records device and ctime too. 8: answers from the
#: symbol table follow bfd's rules (.symtab only, unnamed STT_FILE, local labels). 9: named records
#: (ImageRecord; stored answers split into chains, instructions and callers' answers). 11: every file is
#: checked before use (a marshal file's header holds the CRC-32 of its payload, the image record the
#: symbols file's), and a symbols file is mapped when a lookup first needs the whole table.
FORMAT_VERSION = 11
#: Units read or expanded are written in batches of this many (a unit often grows several times).
MAX_DIRTY_UNITS = 64
#: The answers file is dropped and started again when it grows past this many addresses.
MAX_ANSWERS = 250_000
#: A temporary of an index write older than this is left over from an interrupted run: deleted.
STALE_TEMP_SECONDS = 3600
#: A file changed less than this long ago is not remembered in the path memo: file timestamps are
#: coarser than the time between two writes, so a second write of the same size could leave its
#: identity unchanged (git's "racy" files). It is fingerprinted again until it is older.
RECENT_CHANGE_SECONDS = 3

# what ksym's writes name their temporaries, and what tempfile.mkstemp named them before format 7
_TEMP_NAME = r"\.tmp-(?:[0-9a-f]{16}|[a-z0-9_]{8})"  # compiled when a write first sweeps (re keeps it)
# a marshal file of the index: this magic, the CRC-32 of the payload (u32 little-endian), the payload
_MARSHAL_MAGIC = b"ksym"
_MARSHAL_HEAD = len(_MARSHAL_MAGIC) + 4
# the fingerprint hashes the file in pieces of this size, each on its own (threads share them), and
# lets the kernel drop each from the mapping after hashing it
_FINGERPRINT_PIECE = 1 << 24


def xdg_cache_home() -> Path:
    """``$XDG_CACHE_HOME``, or ``~/.cache`` when it is unset, empty or relative (the XDG Base Directory
    specification: relative paths are invalid and are ignored)."""
    from pathlib import Path

    return Path(_xdg_cache_home_text())


def _xdg_cache_home_text() -> str:
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return path_text(xdg if xdg and os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache"))


def default_cache_dir() -> Path:
    """``$KSYM_CACHE_DIR``, else ``ksym`` under :func:`xdg_cache_home`."""
    from pathlib import Path

    return Path(_default_cache_dir_text())


def _default_cache_dir_text() -> str:
    """:func:`default_cache_dir` as text (a warm run does not load pathlib)."""
    env = os.environ.get("KSYM_CACHE_DIR")
    if env:
        return path_text(env)
    return os.path.join(_xdg_cache_home_text(), "ksym")


class FileIdentity(NamedTuple):
    """Which file a path names, and which version of it: any write changes size, mtime or ctime."""

    path: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> FileIdentity:
        """The identity of the file at ``path`` now (``path`` resolved as :meth:`pathlib.Path.resolve`
        does). :raises OSError: it cannot be stat'ed."""
        st = os.stat(path)
        return cls(os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


class PathRecord(NamedTuple):
    """The path memo: the index key of a file, valid while its identity is unchanged."""

    identity: FileIdentity
    key: str


def fingerprint(data: mmap.mmap, skip: Iterable[tuple[int, int]] = ()) -> str:
    """A SHA-256 hash list (hex, first 128 bits) of the mapped file's bytes outside the ``(offset, size)``
    ranges of ``skip``: those bytes are cut into pieces of ``_FINGERPRINT_PIECE`` bytes at fixed places
    (so that threads can hash them apart, :class:`Fingerprinting`), and the result is the SHA-256 of
    each piece's place, length and SHA-256, in file order, with each skipped range's bounds in its place
    (moving one changes the fingerprint). Two files with one fingerprint would make a SHA-256 collision."""
    hashing = _PieceHashing(data, skip)
    hashing.work()
    return hashing.digest()


class _PieceHashing:
    """The pieces of one :func:`fingerprint`, taken in turn by whichever thread calls :meth:`work`."""

    def __init__(self, data: mmap.mmap, skip: Iterable[tuple[int, int]]) -> None:
        import itertools

        self._data = data
        end = len(data)
        #: (start, length) of each piece, in file order
        self.pieces: list[tuple[int, int]] = []
        #: the file in order: ("piece", index, 0) or ("skip", offset, size)
        self.layout: list[tuple[str, int, int]] = []
        pos = 0
        for off, size in sorted({(max(0, o), max(0, s)) for o, s in skip}) + [(end, 0)]:
            stop = min(max(off, pos), end)
            while pos < stop:
                n = min(_FINGERPRINT_PIECE, stop - pos)
                self.layout.append(("piece", len(self.pieces), 0))
                self.pieces.append((pos, n))
                pos += n
            self.layout.append(("skip", off, size))
            pos = max(pos, min(off + size, end))
        self.digests: list[bytes | None] = [None] * len(self.pieces)
        self._next = itertools.count()  # next() of a count is atomic: each piece goes to one thread
        self.stopped = False

    def work(self) -> None:
        """Hash pieces until none is left (or :attr:`stopped`); hashlib releases the GIL while it hashes."""
        # imported here (only on a file's first use: a warm run does not load OpenSSL), so that a thread
        # rather than the caller loads it
        import hashlib

        sha256 = hashlib.sha256
        data = self._data
        page = mmap.PAGESIZE
        dontneed = getattr(mmap, "MADV_DONTNEED", None)
        while not self.stopped:
            k = next(self._next)
            if k >= len(self.pieces):
                return
            pos, n = self.pieces[k]
            h = sha256()
            with memoryview(data) as view:
                h.update(view[pos : pos + n])
            self.digests[k] = h.digest()
            if dontneed is not None:
                # read once: keep it out of this process's resident memory (the page cache keeps it)
                first = pos - pos % page
                try:
                    data.madvise(dontneed, first, pos + n - first)
                except (OSError, ValueError):
                    pass

    def digest(self) -> str:
        """The fingerprint, once every piece is hashed."""
        import hashlib

        h = hashlib.sha256()
        for kind, a, b in self.layout:
            if kind == "piece":
                pos, n = self.pieces[a]
                got = self.digests[a]
                assert got is not None, "a piece not hashed"
                h.update(b"P" + struct.pack("<QQ", pos, n) + got)
            else:
                h.update(b"S" + struct.pack("<QQ", a, b))
        return h.hexdigest()[:32]


class Fingerprinting:
    """:func:`fingerprint` computed in threads while the caller reads the same mapped file for other
    things: one thread fewer than the CPUs this process may use (at least one, at most three), and the
    caller itself hashes what is left when it asks for :meth:`result`, so that on two CPUs the hash
    shares them with the caller's own work without taking a CPU from it. :meth:`result` joins the
    threads; a caller that fails on the way calls :meth:`join` (which stops the hashing) before it
    raises, so no thread outlives the command."""

    def __init__(self, data: mmap.mmap, skip: Iterable[tuple[int, int]] = ()) -> None:
        import threading  # only on a file's first use

        from .workers import usable_cpus

        self._hashing = _PieceHashing(data, skip)
        self._error: BaseException | None = None
        self._threads = [threading.Thread(target=self._run, name=f"ksym-fingerprint-{k}", daemon=True)
                         for k in range(max(1, min(usable_cpus() - 1, 3)))]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        try:
            self._hashing.work()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by result()
            self._error = exc
            self._hashing.stopped = True

    def join(self) -> None:
        """Stop hashing and wait for the threads."""
        self._hashing.stopped = True
        for t in self._threads:
            t.join()

    def result(self) -> str:
        """The fingerprint (the caller hashes the pieces no thread took yet); what a thread raised is
        raised here."""
        try:
            self._hashing.work()
        except BaseException:
            self._hashing.stopped = True  # the threads stop after their piece
            raise
        finally:
            for t in self._threads:
                t.join()
        if self._error is not None:
            raise self._error
        return self._hashing.digest()



class IndexStore:
    """Reads and writes index files; every failure degrades to "not cached"."""

    def __init__(self, root: str | os.PathLike[str] | None = None, enabled: bool = True) -> None:
        #: the cache directory (its paths are text: a warm run does not load pathlib)
        self.root = path_text(root) if root else _default_cache_dir_text()
        self.enabled = enabled
        # directories whose stale temporaries this store has already looked for
        self._swept: set[str] = set()

    # -- path → key memo --

    def _memo_file(self, identity: FileIdentity) -> str:
        # named by two checksums of the path (zlib is loaded anyway; hashlib would load OpenSSL in every
        # warm run); the memo holds the path itself, so a clash only costs a re-check
        b = identity.path.encode("utf-8", "surrogateescape")
        return os.path.join(self.root, "paths", f"{zlib.crc32(b):08x}{zlib.adler32(b):08x}.v{FORMAT_VERSION}")

    def key_for(self, identity: FileIdentity) -> str | None:
        """The key remembered for this exact file (same path, size, mtime, ctime, inode and device), or
        None."""
        if not self.enabled:
            return None
        data = self._load(self._memo_file(identity))
        try:
            rec = PathRecord(FileIdentity(**{f: data[f] for f in FileIdentity._fields}), str(data["key"]))
        except (TypeError, KeyError):
            return None
        return rec.key if rec.identity == identity else None

    def remember(self, identity: FileIdentity, key: str) -> None:
        """Remember ``key`` for the file of ``identity`` (taken before its contents were read), unless it
        changed less than :data:`RECENT_CHANGE_SECONDS` ago."""
        recent = time.time_ns() - max(identity.mtime_ns, identity.ctime_ns) < RECENT_CHANGE_SECONDS * 10**9
        if self.enabled and not recent:
            rec = PathRecord(identity, key)
            self._save(self._memo_file(identity), {**rec.identity._asdict(), "key": rec.key})

    # -- image and CU records --

    def directory(self, key: str) -> str:
        """The directory of the index of ``key``."""
        safe = "".join(c for c in key if c.isalnum() or c in "-_")
        return os.path.join(self.root, "index", safe)

    def load_image(self, key: str) -> ImageRecord | None:
        """The image record of ``key``, or None (none, another version's, damaged)."""
        if not self.enabled:
            return None
        data = self._load(os.path.join(self.directory(key), f"image.v{FORMAT_VERSION}"))
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION or data.get("key") != key:
            return None  # another version's, or a directory not made for this key
        try:
            return ImageRecord.from_record(data)
        except (KeyError, TypeError, ValueError, IndexError):
            return None  # damaged: rebuilt

    def save_image(self, key: str, record: ImageRecord) -> None:
        if self.enabled:
            self._save(os.path.join(self.directory(key), f"image.v{FORMAT_VERSION}"),
                       {**record.to_record(), "format": FORMAT_VERSION, "key": key})

    def save_symbols(self, key: str, buffer: bytes) -> None:
        """Write the symbol table's flat buffer (:meth:`ksym.symbols.SymbolTable.to_buffer`)."""
        if self.enabled:
            self._save(self.symbols_file(key), buffer, raw=True)

    def symbols_file(self, key: str) -> str:
        """The path of the symbols file of ``key``."""
        return os.path.join(self.directory(key), f"symbols.v{FORMAT_VERSION}")

    def map_symbols(self, key: str, size: int, crc: int) -> mmap.mmap | None:
        """The symbols file of ``key`` mapped read-only, or None (none, disabled, or not the file the image
        record names: not ``size`` bytes long or not of CRC-32 ``crc``, a damaged or another write's file,
        deleted to be rebuilt). The whole file is read once here, for its CRC."""
        if not self.enabled:
            return None
        path = self.symbols_file(key)
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size != size or size == 0:
                    raise ValueError("not the symbols file the image record names")
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            if crc32(mm) != crc:
                mm.close()
                raise ValueError("a damaged symbols file")
            return mm
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            self.drop(path)
            return None

    def load_unit_ranges(self, key: str) -> list[UnitRange] | None:
        """The ranges of the units .debug_aranges misses, as stored, or None."""
        if not self.enabled:
            return None
        data = self._load(os.path.join(self.directory(key), f"cu--1.v{FORMAT_VERSION}"))
        if not isinstance(data, list):
            return None
        try:
            return [UnitRange.from_record(r) for r in data]
        except (TypeError, ValueError, IndexError):
            return None

    def save_unit_ranges(self, key: str, ranges: Iterable[UnitRange]) -> None:
        if self.enabled:
            self._save(os.path.join(self.directory(key), f"cu--1.v{FORMAT_VERSION}"), [r.to_record() for r in ranges])

    # -- compilation units, written in packs (one file per batch: creating files is what costs) --

    def load_unit_map(self, key: str) -> dict[int, str]:
        """Unit offset → name of the pack file holding it."""
        if not self.enabled:
            return {}
        data = self._load(os.path.join(self.directory(key), f"units.v{FORMAT_VERSION}"))
        return data if isinstance(data, dict) else {}

    def save_units(self, key: str, records: dict[int, Any]) -> str | None:
        """Write ``records`` (offset → unit record) as one new pack; its name, or None if not written."""
        if not self.enabled or not records:
            return None
        name = f"units-{min(records)}-{os.getpid()}-{os.urandom(4).hex()}.v{FORMAT_VERSION}"
        return name if self._save(os.path.join(self.directory(key), name), records) else None

    def save_unit_map(self, key: str, new: dict[int, str]) -> None:
        """Add ``new`` to the unit map (re-read first: another process may have added units), and
        delete packs no unit refers to any more (after a minute: a pack just written by another
        process may not be in the map yet)."""
        if not self.enabled or not new:
            return
        units = self.load_unit_map(key)
        units.update(new)
        d = self.directory(key)
        if not self._save(os.path.join(d, f"units.v{FORMAT_VERSION}"), units):
            return
        live = set(units.values())
        try:
            old = [e for e in os.scandir(d) if e.name.startswith("units-") and e.name not in live]
            now = time.time()
            for e in old:
                if now - e.stat().st_mtime > 60:
                    os.unlink(e.path)
        except OSError:
            pass

    def load_pack(self, key: str, name: str) -> dict[int, Any]:
        data = self._load(os.path.join(self.directory(key), name)) if self.enabled and name.startswith("units-") else None
        return data if isinstance(data, dict) else {}

    def load_answers(self, key: str, view: str) -> AnswerRecords:
        """What was answered before for this image, as shown with the display settings ``view``."""
        if not self.enabled:
            return AnswerRecords.empty()
        data = self._load(os.path.join(self.directory(key), f"answers.v{FORMAT_VERSION}"))
        if not isinstance(data, dict) or data.get("view") != view:
            return AnswerRecords.empty()
        return AnswerRecords.from_record(data)

    def save_answers(self, key: str, view: str, new: AnswerRecords) -> None:
        """Add ``new`` to the stored answers (re-read first: another process may have added some)."""
        if not self.enabled or not len(new):
            return
        answers = self.load_answers(key, view)
        if len(answers) + len(new) > MAX_ANSWERS:
            answers = AnswerRecords.empty()
        answers.update(new)
        self._save(os.path.join(self.directory(key), f"answers.v{FORMAT_VERSION}"), {"view": view, **answers.to_record()})

    def evict(self, key: str | None = None) -> None:
        """Delete the index of one key, or everything."""
        import shutil

        target = self.directory(key) if key else self.root
        shutil.rmtree(target, ignore_errors=True)

    # -- file helpers --

    @staticmethod
    def _load(path: str) -> Any:
        """The object of a marshal file (:meth:`_save`), or None: none, or damaged (a header that is not
        ksym's, a payload of another CRC-32, or one marshal cannot read: deleted, it is rebuilt)."""
        try:
            with open(path, "rb") as f:
                # one read, then decode: marshal.load(f) reads the file in many small pieces
                data = f.read()
            payload = memoryview(data)[_MARSHAL_HEAD:]  # not copied
            if (data[: len(_MARSHAL_MAGIC)] != _MARSHAL_MAGIC
                    or crc32(payload) != int.from_bytes(data[len(_MARSHAL_MAGIC) : _MARSHAL_HEAD], "little")):
                raise ValueError("a damaged index file")
            return marshal.loads(payload)
        except FileNotFoundError:
            return None
        except (OSError, EOFError, ValueError, TypeError):
            # corrupt or unreadable: drop it, it will be rebuilt
            IndexStore.drop(path)
            return None

    @staticmethod
    def drop(path: str) -> None:
        """Delete a damaged index file (it is rebuilt)."""
        try:
            os.unlink(path)
        except OSError:
            pass

    def _save(self, path: str, obj: Any, raw: bool = False) -> bool:
        """Write ``obj`` (marshalled, after a header with the magic and the payload's CRC-32: :meth:`_load`;
        ``raw``: bytes as they are) to a temporary, renamed to ``path``."""
        parent = os.path.dirname(path)
        try:
            os.makedirs(parent, exist_ok=True)
            for d in (parent, os.path.join(self.root, "paths")):
                if d not in self._swept:
                    self._swept.add(d)
                    self._sweep(d)
            while True:
                tmp = os.path.join(parent, f".tmp-{os.urandom(8).hex()}")
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
                    break
                except FileExistsError:
                    continue
            try:
                with os.fdopen(fd, "wb") as f:
                    if raw:
                        f.write(obj)
                    else:
                        payload = marshal.dumps(obj)
                        f.write(_MARSHAL_MAGIC + crc32(payload).to_bytes(4, "little"))
                        f.write(payload)
                os.replace(tmp, path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        except (OSError, ValueError):
            # a cache that cannot be written is only slower, never wrong
            return False
        return True

    @staticmethod
    def _sweep(directory: str) -> None:
        """Delete the temporaries of interrupted writes in ``directory``: only files named as ksym names
        them, only once they are :data:`STALE_TEMP_SECONDS` old (a younger one may be a write under way)."""
        try:
            now = time.time()
            with os.scandir(directory) as entries:
                for e in entries:
                    if (re.fullmatch(_TEMP_NAME, e.name) and e.is_file(follow_symlinks=False)
                            and now - e.stat(follow_symlinks=False).st_mtime > STALE_TEMP_SECONDS):
                        os.unlink(e.path)
        except OSError:
            pass


class DamagedSymbolsFile(BadFileError):
    """A lookup in a mapped symbols file met an index column pointing past the table (a file made so: its
    CRC-32 matches). The file is deleted when this is raised, and it is the run's error (exit 4, naming the
    file): the next run builds the table from the image again. Damage a CRC-32 finds (a changed byte) is
    not this: such a file is dropped and rebuilt before it is used."""


class _SymbolsDamage:
    """:attr:`ksym.symbols.SymbolTable.damaged` of a mapped symbols file: deletes the file and gives the
    error naming it (:class:`DamagedSymbolsFile`)."""

    __slots__ = ("path", "store")

    def __init__(self, store: IndexStore, path: str) -> None:
        self.store = store
        self.path = path

    def __call__(self, what: str) -> Exception:
        self.store.drop(self.path)
        return DamagedSymbolsFile(f"{self.path}: damaged ksym cache file: symbol table: {what} (deleted: rebuilt by the next run)")


class ImageIndex:
    """A session on one image's index: the units it stored (unit map, packs loaded), the units read or
    grown since (written as packs of :data:`MAX_DIRTY_UNITS`, and at :meth:`flush`), and the stored
    answers (:meth:`answers_for`). It is the :class:`ksym.dwarf_image.UnitStore` of the image's
    :class:`ksym.dwarf_image.DwarfImage`. :meth:`close` (or leaving a ``with`` block) flushes; nothing
    is written at exit or by the garbage collector."""

    def __init__(self, store: IndexStore, key: str) -> None:

        self.store = store
        self.key = key
        self._unit_map: dict[int, str] | None = None
        self._new_units: dict[int, str] = {}
        self._packs: LRUCache[str, dict[int, Any]] = LRUCache(maxsize=4)
        self._dirty: dict[int, CompiledUnit] = {}
        self._answers: StoredAnswers | None = None
        # the mapped symbols file and the table whose columns are views of it (released by close())
        self._symbols_map: mmap.mmap | None = None
        self._symbols: SymbolTable | None = None

    @property
    def directory(self) -> str | None:
        """Where the index of this image lives (None: the store is disabled)."""
        return self.store.directory(self.key) if self.store.enabled else None

    # -- the symbol table --

    def load_symbols(self, size: int, crc: int, sections: list[Section]) -> SymbolTable | None:
        """The image's symbol table from its symbols file of ``size`` bytes and CRC-32 ``crc``, mapped for
        the session's life (its columns are views of the map until :meth:`close`); None when there is
        none or it is damaged (deleted: it is rebuilt). A lookup that meets an index column pointing
        past the table (a file made so, with the right CRC) deletes the file and raises
        :class:`DamagedSymbolsFile` naming it (:attr:`ksym.symbols.SymbolTable.damaged`)."""
        self.release_symbols()
        mm = self.store.map_symbols(self.key, size, crc)
        if mm is None:
            return None
        path = self.store.symbols_file(self.key)
        try:
            table = SymbolTable.from_buffer(mm, sections, _SymbolsDamage(self.store, path))
        except ValueError:
            mm.close()
            self.store.drop(path)
            return None
        self._symbols_map, self._symbols = mm, table
        return table

    def release_symbols(self) -> None:
        """Release the mapped symbol table: its columns first, then the map."""
        if self._symbols is not None:
            self._symbols.release()
            self._symbols = None
        if self._symbols_map is not None:
            mm, self._symbols_map = self._symbols_map, None
            try:
                mm.close()
            except BufferError:
                pass  # a view of it is still held somewhere: the map goes with its last view

    # -- units (the UnitStore of the image's DwarfImage) --

    def pack_of(self, offset: int) -> str | None:
        """The pack holding the stored unit at ``offset``, or None."""
        if self._unit_map is None:
            self._unit_map = self.store.load_unit_map(self.key)
        return self._unit_map.get(offset)

    def part_of(self, offset: int, address: int | None) -> int:
        return 0  # units are stored whole (or read part way), never in parts

    def load_unit(self, offset: int, part: int = 0) -> CompiledUnit | None:
        from .units import unit_from_record

        pack = self.pack_of(offset)
        if pack is None:
            return None
        units = self._packs.get(pack)
        if units is None:  # units of one pack are usually asked for together (prefetch sorts so)
            units = self._packs[pack] = self.store.load_pack(self.key, pack)
        rec = units.get(offset)
        if rec is None:
            return None
        try:
            return unit_from_record(rec)
        except (TypeError, ValueError, IndexError):
            return None

    def unit_changed(self, unit: CompiledUnit) -> None:
        self._dirty[unit.offset] = unit
        if len(self._dirty) >= MAX_DIRTY_UNITS:
            self.write_units()

    def forget_unit(self, offset: int) -> None:
        self._dirty.pop(offset, None)

    def load_unit_ranges(self) -> list[UnitRange] | None:
        return self.store.load_unit_ranges(self.key)

    def save_unit_ranges(self, ranges: list[UnitRange]) -> None:
        self.store.save_unit_ranges(self.key, ranges)

    def write_units(self) -> None:
        """Write the units read or grown since the last call as one pack (mapped at :meth:`flush`)."""
        if not self._dirty:
            return
        from .units import unit_to_record

        recs = {off: unit_to_record(cu) for off, cu in self._dirty.items()}
        self._dirty.clear()
        name = self.store.save_units(self.key, recs)
        if name is not None:
            self.add_units(dict.fromkeys(recs, name))

    def add_units(self, units: dict[int, str]) -> None:
        """Units now stored in packs (by this session, or a prefetch worker for it)."""
        if self._unit_map is None:
            self._unit_map = self.store.load_unit_map(self.key)
        self._unit_map.update(units)
        self._new_units.update(units)

    def take_new_units(self) -> dict[int, str]:
        """The units stored since the last call (a prefetch worker sends them to its parent)."""
        new, self._new_units = self._new_units, {}
        return new

    # -- answers --

    def answers_for(self, view: str) -> StoredAnswers:
        """The stored answers of this image as shown with ``view`` (one view per session)."""
        if self._answers is None or self._answers.view != view:
            self._answers = StoredAnswers(self.store, self.key, view)
        return self._answers

    # -- lifecycle --

    def flush(self) -> None:
        """Write what this session learnt: units read or grown, where they are, answers given."""
        self.write_units()
        if self._new_units:
            self.store.save_unit_map(self.key, self._new_units)
            self._new_units = {}
        if self._answers is not None:
            self._answers.flush()

    def close(self) -> None:
        """:meth:`flush`, then drop what is held in memory and release the mapped symbol table."""
        try:
            self.flush()
        finally:
            self._packs.clear()
            self._unit_map = None
            self.release_symbols()

    def __enter__(self) -> ImageIndex:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
