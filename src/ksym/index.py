"""The persistent index: what ksym learns about a kernel image, kept per build id and content.

Layout under ``$KSYM_CACHE_DIR`` (default ``$XDG_CACHE_HOME/ksym``, i.e. ``~/.cache/ksym``)::

    paths/<checksums of the real path>.v8 → PathRecord: the file's identity (size, mtime, ctime, inode,
                                          device) and its key, so a warm run neither opens nor hashes it
    index/<key>/image.v8                → sections, symbol table arrays, aranges, faddr2line prefix, banner
    index/<key>/units-<...>.v8          → a pack of compilation units as read (function tree + line
                                          table, each possibly partial: read on when an address needs it)
    index/<key>/units.v8                → unit offset → the pack holding its newest record
    index/<key>/cu--1.v8                → ranges of the units .debug_aranges misses
    index/<key>/answers.v8              → address → (inline chain, line-row start) of every address
                                          looked up before, and the instruction before each return
                                          address disassembled: a dump seen again needs no CU at all

``key`` is ``<GNU build id>-<fingerprint>`` (``nobuildid-<fingerprint>`` for a file without a build id):
the fingerprint is a SHA-256 of every byte of the file ksym may read (all of it but the contents of
relocation sections), so a damaged or altered copy that carries the genuine build id gets an index of
its own and can neither be answered from the genuine file's index nor write into it. It is computed
once per file identity and remembered in the path memo. Files are written with ``marshal`` (plain data
only: loading never runs code) to a temporary name (``.tmp-<16 hex digits>``) and renamed into place,
so readers never see half a file; a file that fails to load is deleted and rebuilt; temporaries left
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
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "FORMAT_VERSION",
    "RECENT_CHANGE_SECONDS",
    "STALE_TEMP_SECONDS",
    "FileIdentity",
    "IndexStore",
    "PathRecord",
    "default_cache_dir",
    "fingerprint",
    "image_key",
    "xdg_cache_home",
]

#: Version of the layout and of every record; files of other versions are never read. 7: keys bind the
#: file's contents (build id + fingerprint), the path memo records device and ctime too. 8: answers from the
#: symbol table follow bfd's rules (.symtab only, unnamed STT_FILE, local labels).
FORMAT_VERSION = 8
#: The answers file is dropped and started again when it grows past this many addresses.
MAX_ANSWERS = 250_000
#: A temporary of an index write older than this is left over from an interrupted run: deleted.
STALE_TEMP_SECONDS = 3600
#: A file changed less than this long ago is not remembered in the path memo: file timestamps are
#: coarser than the time between two writes, so a second write of the same size could leave its
#: identity unchanged (git's "racy" files). It is fingerprinted again until it is older.
RECENT_CHANGE_SECONDS = 3

# what ksym's writes name their temporaries, and what tempfile.mkstemp named them before format 7
_TEMP_NAME = re.compile(r"\.tmp-(?:[0-9a-f]{16}|[a-z0-9_]{8})")
# the fingerprint reads the file in pieces of this size and lets the kernel drop each from the mapping
_FINGERPRINT_CHUNK = 1 << 24


def xdg_cache_home() -> Path:
    """``$XDG_CACHE_HOME``, or ``~/.cache`` when it is unset, empty or relative (the XDG Base Directory
    specification: relative paths are invalid and are ignored)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"


def default_cache_dir() -> Path:
    """``$KSYM_CACHE_DIR``, else ``ksym`` under :func:`xdg_cache_home`."""
    env = os.environ.get("KSYM_CACHE_DIR")
    if env:
        return Path(env)
    return xdg_cache_home() / "ksym"


class FileIdentity(NamedTuple):
    """Which file a path names, and which version of it: any write changes size, mtime or ctime."""

    path: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity:
        """The identity of the file at ``path`` now. :raises OSError: it cannot be stat'ed."""
        st = path.stat()
        return cls(str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


class PathRecord(NamedTuple):
    """The path memo: the index key of a file, valid while its identity is unchanged."""

    identity: FileIdentity
    key: str


def fingerprint(data: mmap.mmap, skip: Iterable[tuple[int, int]] = ()) -> str:
    """SHA-256 (hex, first 128 bits) of the mapped file's bytes outside the ``(offset, size)`` ranges of
    ``skip``; the skipped ranges are hashed as their bounds, so moving one changes the fingerprint."""
    import hashlib  # only on a file's first use: OpenSSL costs a warm run milliseconds

    h = hashlib.sha256()
    end = len(data)
    pos = 0
    page = mmap.PAGESIZE
    view = memoryview(data)
    try:
        for off, size in sorted({(max(0, o), max(0, s)) for o, s in skip}) + [(end, 0)]:
            stop = min(max(off, pos), end)
            while pos < stop:
                n = min(_FINGERPRINT_CHUNK, stop - pos)
                h.update(view[pos : pos + n])
                if hasattr(mmap, "MADV_DONTNEED"):
                    # read once: keep it out of this process's resident memory (the page cache keeps it)
                    first = pos - pos % page
                    try:
                        data.madvise(mmap.MADV_DONTNEED, first, pos + n - first)
                    except (OSError, ValueError):
                        pass
                pos += n
            h.update(struct.pack("<QQ", off, size))
            pos = max(pos, min(off + size, end))
    finally:
        view.release()
    return h.hexdigest()[:32]


def image_key(build_id: str | None, content: str) -> str:
    """The index key of a file: its build id (if any) and the :func:`fingerprint` of its contents."""
    return f"{build_id or 'nobuildid'}-{content}"


class IndexStore:
    """Reads and writes index files; every failure degrades to "not cached"."""

    def __init__(self, root: Path | None = None, enabled: bool = True) -> None:
        self.root = root or default_cache_dir()
        self.enabled = enabled
        # directories whose stale temporaries this store has already looked for
        self._swept: set[Path] = set()

    # -- path → key memo --

    def _memo_file(self, identity: FileIdentity) -> Path:
        # named by two checksums of the path (zlib is loaded anyway, hashlib's OpenSSL costs 4 ms of
        # a warm run); the memo holds the path itself, so a clash only costs a re-check
        b = identity.path.encode("utf-8", "surrogateescape")
        return self.root / "paths" / f"{zlib.crc32(b):08x}{zlib.adler32(b):08x}.v{FORMAT_VERSION}"

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

    def directory(self, key: str) -> Path:
        """The directory of the index of ``key``."""
        safe = "".join(c for c in key if c.isalnum() or c in "-_")
        return self.root / "index" / safe

    def load_image(self, key: str) -> dict[str, Any] | None:
        if not self.enabled:
            return None
        data = self._load(self.directory(key) / f"image.v{FORMAT_VERSION}")
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION or data.get("key") != key:
            return None  # another version's, or a directory not made for this key
        return data

    def save_image(self, key: str, record: dict[str, Any]) -> None:
        if self.enabled:
            self._save(self.directory(key) / f"image.v{FORMAT_VERSION}", {**record, "format": FORMAT_VERSION, "key": key})

    def load_cu(self, key: str, offset: int) -> Any:
        if not self.enabled:
            return None
        return self._load(self.directory(key) / f"cu-{offset}.v{FORMAT_VERSION}")

    def save_cu(self, key: str, offset: int, record: Any) -> None:
        if self.enabled:
            self._save(self.directory(key) / f"cu-{offset}.v{FORMAT_VERSION}", record)

    # -- compilation units, written in packs (one file per batch: creating files is what costs) --

    def load_unit_map(self, key: str) -> dict[int, str]:
        """Unit offset → name of the pack file holding it."""
        if not self.enabled:
            return {}
        data = self._load(self.directory(key) / f"units.v{FORMAT_VERSION}")
        return data if isinstance(data, dict) else {}

    def save_units(self, key: str, records: dict[int, Any]) -> str | None:
        """Write ``records`` (offset → unit record) as one new pack; its name, or None if not written."""
        if not self.enabled or not records:
            return None
        name = f"units-{min(records)}-{os.getpid()}-{os.urandom(4).hex()}.v{FORMAT_VERSION}"
        return name if self._save(self.directory(key) / name, records) else None

    def save_unit_map(self, key: str, new: dict[int, str]) -> None:
        """Add ``new`` to the unit map (re-read first: another process may have added units), and
        delete packs no unit refers to any more (after a minute: a pack just written by another
        process may not be in the map yet)."""
        if not self.enabled or not new:
            return
        units = self.load_unit_map(key)
        units.update(new)
        d = self.directory(key)
        if not self._save(d / f"units.v{FORMAT_VERSION}", units):
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
        data = self._load(self.directory(key) / name) if self.enabled and name.startswith("units-") else None
        return data if isinstance(data, dict) else {}

    def load_answers(self, key: str, view: str) -> dict[Any, Any]:
        """Addresses answered before for this image, as shown with the display settings ``view``."""
        if not self.enabled:
            return {}
        data = self._load(self.directory(key) / f"answers.v{FORMAT_VERSION}")
        if not isinstance(data, dict) or data.get("view") != view or not isinstance(data.get("answers"), dict):
            return {}
        answers: dict[Any, Any] = data["answers"]
        return answers

    def save_answers(self, key: str, view: str, new: dict[Any, Any]) -> None:
        """Add ``new`` to the stored answers (re-read first: another process may have added some)."""
        if not self.enabled or not new:
            return
        answers = self.load_answers(key, view)
        if len(answers) + len(new) > MAX_ANSWERS:
            answers = {}
        answers.update(new)
        self._save(self.directory(key) / f"answers.v{FORMAT_VERSION}", {"view": view, "answers": answers})

    def evict(self, key: str | None = None) -> None:
        """Delete the index of one key, or everything."""
        import shutil

        target = self.directory(key) if key else self.root
        shutil.rmtree(target, ignore_errors=True)

    # -- file helpers --

    @staticmethod
    def _load(path: Path) -> Any:
        try:
            with open(path, "rb") as f:
                # one read, then decode: marshal.load(f) reads the file in many small pieces
                return marshal.loads(f.read())
        except FileNotFoundError:
            return None
        except (OSError, EOFError, ValueError, TypeError):
            # corrupt or unreadable: drop it, it will be rebuilt
            try:
                path.unlink()
            except OSError:
                pass
            return None

    def _save(self, path: Path, obj: Any) -> bool:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            for d in (path.parent, self.root / "paths"):
                if d not in self._swept:
                    self._swept.add(d)
                    self._sweep(d)
            while True:
                tmp = path.parent / f".tmp-{os.urandom(8).hex()}"
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
                    break
                except FileExistsError:
                    continue
            try:
                with os.fdopen(fd, "wb") as f:
                    marshal.dump(obj, f)
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
    def _sweep(directory: Path) -> None:
        """Delete the temporaries of interrupted writes in ``directory``: only files named as ksym names
        them, only once they are :data:`STALE_TEMP_SECONDS` old (a younger one may be a write under way)."""
        try:
            now = time.time()
            with os.scandir(directory) as entries:
                for e in entries:
                    if (_TEMP_NAME.fullmatch(e.name) and e.is_file(follow_symlinks=False)
                            and now - e.stat(follow_symlinks=False).st_mtime > STALE_TEMP_SECONDS):
                        os.unlink(e.path)
        except OSError:
            pass
