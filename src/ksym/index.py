"""The persistent index: what ksym learns about a kernel image, kept per build id.

Layout under ``$KSYM_CACHE_DIR`` (default ``$XDG_CACHE_HOME/ksym``, i.e. ``~/.cache/ksym``)::

    paths/<sha256 of the real path>     → (path, size, mtime_ns, inode, key)   which key a file has
    index/<key>/image.v6                → sections, symbol table arrays, aranges, faddr2line prefix, banner
    index/<key>/units-<...>.v6          → a pack of compilation units as read (function tree + line
                                          table, each possibly partial: read on when an address needs it)
    index/<key>/units.v6                → unit offset → the pack holding its newest record
    index/<key>/cu--1.v6                → ranges of the units .debug_aranges misses
    index/<key>/answers.v6              → address → (inline chain, line-row start) of every address
                                          looked up before, and the instruction before each return
                                          address disassembled: a dump seen again needs no CU at all

``key`` is the GNU build id (or, for a file without one, a hash of path, size and mtime). Files are
written with ``marshal`` (plain data only: loading never runs code) to a temporary name and renamed into
place, so readers never see half a file; a file that fails to load is deleted and rebuilt.
"""

from __future__ import annotations

import marshal
import os
import time
import zlib
from pathlib import Path
from typing import Any

__all__ = ["FORMAT_VERSION", "IndexStore", "default_cache_dir"]

FORMAT_VERSION = 7
#: The answers file is dropped and started again when it grows past this many addresses.
MAX_ANSWERS = 250_000


def default_cache_dir() -> Path:
    env = os.environ.get("KSYM_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "ksym"


class IndexStore:
    """Reads and writes index files; every failure degrades to "not cached"."""

    def __init__(self, root: Path | None = None, enabled: bool = True) -> None:
        self.root = root or default_cache_dir()
        self.enabled = enabled

    # -- path → key memo --

    @staticmethod
    def _stat_key(path: Path) -> tuple[str, int, int, int]:
        st = path.stat()
        return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)

    def _memo_file(self, path: Path) -> Path:
        # named by two checksums of the path (zlib is loaded anyway, hashlib's OpenSSL costs 4 ms of
        # a warm run); the memo holds the path itself, so a clash only costs a re-check
        b = str(path.resolve()).encode("utf-8", "surrogateescape")
        return self.root / "paths" / f"{zlib.crc32(b):08x}{zlib.adler32(b):08x}"

    def key_for_path(self, path: Path) -> str | None:
        """The key remembered for this exact file (same size, mtime and inode), or None."""
        if not self.enabled:
            return None
        data = self._load(self._memo_file(path))
        if not isinstance(data, tuple) or len(data) != 5:
            return None
        try:
            if tuple(data[:4]) != self._stat_key(path):
                return None
        except OSError:
            return None
        return str(data[4])

    def remember_path(self, path: Path, key: str) -> None:
        if self.enabled:
            self._save(self._memo_file(path), (*self._stat_key(path), key))

    @staticmethod
    def fallback_key(path: Path) -> str:
        import hashlib

        st = path.stat()
        h = hashlib.sha256(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()
        return "nobuildid-" + h[:32]

    # -- image and CU records --

    def _dir(self, key: str) -> Path:
        safe = "".join(c for c in key if c.isalnum() or c in "-_")
        return self.root / "index" / safe

    def load_image(self, key: str) -> dict[str, Any] | None:
        if not self.enabled:
            return None
        data = self._load(self._dir(key) / f"image.v{FORMAT_VERSION}")
        return data if isinstance(data, dict) and data.get("format") == FORMAT_VERSION else None

    def save_image(self, key: str, record: dict[str, Any]) -> None:
        if self.enabled:
            self._save(self._dir(key) / f"image.v{FORMAT_VERSION}", {**record, "format": FORMAT_VERSION})

    def load_cu(self, key: str, offset: int) -> Any:
        if not self.enabled:
            return None
        return self._load(self._dir(key) / f"cu-{offset}.v{FORMAT_VERSION}")

    def save_cu(self, key: str, offset: int, record: Any) -> None:
        if self.enabled:
            self._save(self._dir(key) / f"cu-{offset}.v{FORMAT_VERSION}", record)

    # -- compilation units, written in packs (one file per batch: creating files is what costs) --

    def load_unit_map(self, key: str) -> dict[int, str]:
        """Unit offset → name of the pack file holding it."""
        if not self.enabled:
            return {}
        data = self._load(self._dir(key) / f"units.v{FORMAT_VERSION}")
        return data if isinstance(data, dict) else {}

    def save_units(self, key: str, records: dict[int, Any]) -> str | None:
        """Write ``records`` (offset → unit record) as one new pack; its name, or None if not written."""
        if not self.enabled or not records:
            return None
        name = f"units-{min(records)}-{os.getpid()}-{os.urandom(4).hex()}.v{FORMAT_VERSION}"
        return name if self._save(self._dir(key) / name, records) else None

    def save_unit_map(self, key: str, new: dict[int, str]) -> None:
        """Add ``new`` to the unit map (re-read first: another process may have added units), and
        delete packs no unit refers to any more (after a minute: a pack just written by another
        process may not be in the map yet)."""
        if not self.enabled or not new:
            return
        units = self.load_unit_map(key)
        units.update(new)
        d = self._dir(key)
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
        data = self._load(self._dir(key) / name) if self.enabled and name.startswith("units-") else None
        return data if isinstance(data, dict) else {}

    def load_answers(self, key: str, view: str) -> dict[Any, Any]:
        """Addresses answered before for this image, as shown with the display settings ``view``."""
        if not self.enabled:
            return {}
        data = self._load(self._dir(key) / f"answers.v{FORMAT_VERSION}")
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
        self._save(self._dir(key) / f"answers.v{FORMAT_VERSION}", {"view": view, "answers": answers})

    def evict(self, key: str | None = None) -> None:
        """Delete the index of one key, or everything."""
        import shutil

        target = self._dir(key) if key else self.root
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

    @staticmethod
    def _save(path: Path, obj: Any) -> bool:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            import tempfile  # only when writing: it imports shutil and random

            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
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
