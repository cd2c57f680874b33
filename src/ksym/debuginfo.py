"""Find debug files by GNU build id: local ``.build-id`` trees, distribution paths, then debuginfod.

A kernel (or module) build is named by its GNU build id: the running kernel's is in
``/sys/kernel/notes``, oopses print module ones (``[nf_tables 5f3c...]``), dropcapture writes
``# build-id: ...``, and every vmlinux carries its own in ``.note.gnu.build-id`` (all read, normalised
and compared by :mod:`ksym.buildid`). Given one,
:func:`locate_debuginfo` looks, in this order (docs/debuginfo.md):

1. ``<dir>/.build-id/xx/yyyy.debug`` for each ``--debug-dir``, each ``$KSYM_DEBUG_DIRS`` entry and
   ``/usr/lib/debug``;
2. the distribution paths of the kernel release (:func:`ksym.locate.candidate_paths`), for a vmlinux;
3. the debuginfod caches: ksym's own ``<ksym cache>/debuginfod``, then the elfutils client's
   (``$DEBUGINFOD_CACHE_PATH``, ``~/.cache/debuginfod_client``), which are read and never written;
4. each debuginfod server (``$DEBUGINFOD_URLS`` or ``--debuginfod-url``), ``GET /buildid/<hex>/debuginfo``,
   unless offline.

Every file found is opened and its build id compared with the one asked for; each step is recorded as
an :class:`Attempt`, so ``ksym debuginfo`` can show why a file was taken or passed over.

Example::

    from ksym.debuginfo import DebuginfoOptions, locate_debuginfo
    found = locate_debuginfo("a0cbedb00f5d2f58c58a64ab870493b01512572d", DebuginfoOptions(offline=True))
    print(found.path, [str(a) for a in found.attempts])
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO

from .buildid import normalize_build_id, same_build_id
from .errors import BadFileError, DebuginfodError, FileNotFoundKsymError, KsymError
from .index import STALE_TEMP_SECONDS
from .records import NamedTuple
from .searchopts import Attempt, DebuginfoOptions, DebugLookup
from .temporaries import lock_temporary, remove_stale, unlink_quietly
from .transfer import Limits, ProgressLine, Transfer, TransferError, sigterm_unwinds

__all__ = [
    "DEFAULT_DEADLINE",
    "DEFAULT_DEBUG_ROOT",
    "DEFAULT_MAX_SIZE",
    "STALE_TEMPORARY_AGE",
    "Attempt",
    "DebugLookup",
    "DebuginfoOptions",
    "DebuginfodCaches",
    "DebuginfodClient",
    "ElfFacts",
    "build_id_paths",
    "check_file",
    "debug_roots",
    "debuginfod_cache_dirs",
    "debuginfod_servers",
    "elf_facts",
    "file_build_id",
    "locate_debuginfo",
    "mismatch_warning",
    "package_hint",
    "read_os_release",
    "remove_stale_temporaries",
]

DEFAULT_DEBUG_ROOT = Path("/usr/lib/debug")
#: below this size no progress bar is drawn unless --progress asks for one
_PROGRESS_MIN = 1 << 20
_TRIES = 4
_ELF_MAGIC = b"\x7fELF"
#: the names of download temporaries in ksym's cache (``<build id>/.tmp-debuginfo-XXXXXXXX``)
_TEMP_PREFIX = ".tmp-debuginfo-"
#: a download's overall deadline (seconds) and size cap (bytes) when neither option nor environment sets one
DEFAULT_DEADLINE = 1800.0
DEFAULT_MAX_SIZE = 4 << 30
#: a temporary nothing wrote to for this long (seconds) and no ksym holds is removed: the same age as
#: the index's temporaries (one policy for every temporary in ksym's cache)
STALE_TEMPORARY_AGE = float(STALE_TEMP_SECONDS)


def file_build_id(path: str | os.PathLike[str]) -> str | None:
    """The GNU build id of an ELF file (vmlinux, module, any debug file), or None when it has none.

    :raises FileNotFoundKsymError: cannot open it; :raises BadFileError: not a (complete) ELF file.
    """
    return elf_facts(path).build_id


class ElfFacts(NamedTuple):
    """What a lookup needs of a candidate debug file: its GNU build id (None: no note) and whether it has
    DWARF."""

    build_id: str | None
    has_dwarf: bool


def elf_facts(path: str | os.PathLike[str]) -> ElfFacts:
    """The build id and DWARF presence of an ELF file, read without trusting it: any failure to read a
    damaged file (an offset past its end, an impossible size) is a :class:`BadFileError`.

    :raises FileNotFoundKsymError: cannot open it; :raises BadFileError: not a (complete, sound) ELF file.
    """
    from .image import KernelImage

    try:
        img = KernelImage(path)
        try:
            return ElfFacts(img.build_id, img.has_dwarf)
        finally:
            img.close()
    except KsymError:
        raise
    except OSError as exc:  # pyelftools seeking to an offset the file cannot have (EINVAL)
        raise BadFileError(f"{path}: corrupt ELF file: reading it failed: {exc.strerror or exc}") from None
    except (OverflowError, ValueError, LookupError, struct.error) as exc:
        raise BadFileError(f"{path}: corrupt ELF file: {exc}") from None


# --------------------------------------------------------------------------------------------------
# Where to look


def debug_roots(options: DebuginfoOptions) -> list[Path]:
    """``--debug-dir`` entries, then ``$KSYM_DEBUG_DIRS`` (``:``-separated), then ``/usr/lib/debug``."""
    roots = [Path(d) for d in options.debug_dirs]
    if options.use_env:
        roots += [Path(d) for d in os.environ.get("KSYM_DEBUG_DIRS", "").split(":") if d]
    if options.system_root:
        roots.append(DEFAULT_DEBUG_ROOT)
    out: list[Path] = []
    for r in roots:
        if r not in out:
            out.append(r)
    return out


def build_id_paths(build_id: str, options: DebuginfoOptions) -> list[Path]:
    """``<root>/.build-id/xx/yyyy.debug`` for every root (and ``<root>/xx/yyyy.debug`` when the root is
    itself a ``.build-id`` directory)."""
    bid = build_id.lower()
    out: list[Path] = []
    for root in debug_roots(options):
        base = root if root.name == ".build-id" else root / ".build-id"
        out.append(base / bid[:2] / (bid[2:] + ".debug"))
    return out


def debuginfod_servers(options: DebuginfoOptions) -> list[str]:
    if options.servers is not None:
        urls: Iterable[str] = options.servers
    elif options.use_env:
        urls = os.environ.get("DEBUGINFOD_URLS", "").split()
    else:
        urls = ()
    return [u.rstrip("/") for u in urls if u.strip()]


class DebuginfodCaches(NamedTuple):
    """The debuginfod caches: ``own`` (``<ksym cache>/debuginfod``), the only one ksym writes, renames or
    deletes in, and ``reads``: that one first, then the elfutils client's (``$DEBUGINFOD_CACHE_PATH``, and
    ``$XDG_CACHE_HOME/debuginfod_client``), which are only ever read."""

    own: Path
    reads: list[Path]


def debuginfod_cache_dirs(options: DebuginfoOptions) -> DebuginfodCaches:
    """ksym's own debuginfod cache, and every cache read (see :class:`DebuginfodCaches`)."""
    from .index import default_cache_dir

    own = (Path(options.cache_dir) if options.cache_dir else default_cache_dir()) / "debuginfod"
    reads = [own]
    if options.use_env:
        env = os.environ.get("DEBUGINFOD_CACHE_PATH")
        xdg = os.environ.get("XDG_CACHE_HOME")
        for foreign in ([Path(env)] if env else []) + [(Path(xdg) if xdg else Path.home() / ".cache")
                                                       / "debuginfod_client"]:
            if foreign not in reads:
                reads.append(foreign)
    return DebuginfodCaches(own, reads)


# --------------------------------------------------------------------------------------------------
# Records


def _is_file(path: Path) -> bool | None:
    """Whether ``path`` is a file; None when it cannot be known (a directory on the way is not
    searchable, e.g. another user's cache under a shared $HOME)."""
    try:
        return path.is_file()
    except OSError:
        return None


def check_file(path: Path, want: str | None, kind: str, need_dwarf: bool) -> Attempt:
    present = _is_file(path)
    if present is None:
        return Attempt(kind, str(path), "unusable", None, "permission denied")
    if not present:
        return Attempt(kind, str(path), "missing")
    try:
        have, dwarf = elf_facts(path)
    except KsymError as exc:
        return Attempt(kind, str(path), "unusable", None, str(exc).removeprefix(f"{path}: "))
    if need_dwarf and not dwarf:
        return Attempt(kind, str(path), "unusable", have, "no DWARF (a stripped image)", False)
    if want is None:
        return Attempt(kind, str(path), "match", have, "no build id to compare with", dwarf)
    if have is None:
        return Attempt(kind, str(path), "no build id", None, "", dwarf)
    if not same_build_id(want, have):
        return Attempt(kind, str(path), "mismatch", have, "", dwarf)
    return Attempt(kind, str(path), "match", have, "", dwarf)


def locate_debuginfo(
    build_id: str,
    options: DebuginfoOptions | None = None,
    *,
    source: str = "given",
    candidates: Sequence[Path] = (),
    need_dwarf: bool = True,
    warn: Callable[[str], None] | None = None,
    network: bool = True,
) -> DebugLookup:
    """Find the debug file of ``build_id`` (see the module docstring for the order).

    :param candidates: distribution paths to check after the ``.build-id`` trees (vmlinux only).
    :param network: False: stop before debuginfod (callers that try other local places first).
    Never raises for a miss: ``path`` is None and ``attempts``/``failures`` say why.
    """
    opts = options or DebuginfoOptions()
    want = normalize_build_id(build_id)
    found = DebugLookup(want, source, servers=debuginfod_servers(opts))
    for p in build_id_paths(want, opts):
        a = check_file(p, want, "build-id dir", need_dwarf)
        found.attempts.append(a)
        if a.outcome == "match":
            found.path, found.found_by = p, "build-id dir"
            return found
    for p in candidates:
        a = check_file(p, want, "distribution path", need_dwarf)
        found.attempts.append(a)
        if a.outcome == "match":
            found.path, found.found_by = p, "distribution path"
            return found
    if not network:
        return found
    client = DebuginfodClient(opts, warn=warn)
    path = client.find(want, found.attempts, found.failures)
    if path is not None:
        found.path = path
        found.found_by = "debuginfod cache" if found.attempts[-1].kind == "debuginfod cache" else "debuginfod"
    return found


# --------------------------------------------------------------------------------------------------
# debuginfod


class DebuginfodClient:
    """Fetch ``/buildid/<hex>/debuginfo`` from debuginfod servers into an on-disk cache.

    Downloads go to a locked temporary file next to the entry in ksym's own cache (never the elfutils
    client's), resume with a ``Range`` request when the connection breaks off or a killed ksym left a
    partial file (or start over when the server ignores ranges), end within an overall deadline and a size
    cap, must start as an ELF file and have the build id asked for, and are renamed into
    ``<cache>/<build id>/debuginfo`` (the elfutils client's layout). Nothing touches the network when
    ``options.offline``.
    """

    def __init__(self, options: DebuginfoOptions | None = None, *,
                 warn: Callable[[str], None] | None = None, stream: IO[str] | None = None) -> None:
        self.options = options or DebuginfoOptions()
        self.servers = debuginfod_servers(self.options)
        self.cache_dir, self.cache_reads = debuginfod_cache_dirs(self.options)  # own (written), all read
        t = self.options.timeout
        if t is None and self.options.use_env:
            try:
                t = float(os.environ.get("DEBUGINFOD_TIMEOUT", "") or 30)
            except ValueError:
                t = 30.0
        self.timeout = t if t and t > 0 else 30.0
        #: a bound always holds: 0, a negative or a malformed value (elfutils' 0 is "no limit") is the default
        self.deadline = _positive(self.options.deadline, "DEBUGINFOD_MAXTIME" if self.options.use_env else None,
                                  DEFAULT_DEADLINE)
        self.max_size = int(_positive(self.options.max_size, "DEBUGINFOD_MAXSIZE" if self.options.use_env
                                      else None, DEFAULT_MAX_SIZE))
        self._swept = False
        self.warn = warn
        self.stream = stream if stream is not None else sys.stderr
        p = self.options.progress
        self.progress = p if p is not None else _isatty(self.stream)
        self.forced_progress = bool(p)

    def cached(self, build_id: str) -> Path | None:
        for root in self.cache_reads:
            p = root / build_id / "debuginfo"
            if _is_file(p):
                return p
        return None

    def find(self, build_id: str, attempts: list[Attempt] | None = None,
             failures: list[str] | None = None) -> Path | None:
        """The cached or downloaded debug file of ``build_id``, or None; every step is appended to
        ``attempts`` and every server failure to ``failures``."""
        attempts = attempts if attempts is not None else []
        failures = failures if failures is not None else []
        bid = normalize_build_id(build_id)
        for root in self.cache_reads:
            p = root / bid / "debuginfo"
            a = check_file(p, bid, "debuginfod cache", False)
            if a.outcome == "match":
                attempts.append(a)
                return p
            if a.outcome != "missing" and root != self.cache_dir:
                # another program's cache (elfutils'): passed over, never repaired, moved or deleted
                a.detail = "; ".join(d for d in (a.detail, "not ksym's cache: left as it is") if d)
            # a damaged entry of ksym's own cache stays until a download replaces it (one rename)
            attempts.append(a)
        if not self._swept:  # not cached: before any download, what killed downloads left behind
            self._swept = True
            remove_stale_temporaries(self.cache_dir)
        if not self.servers:
            attempts.append(Attempt("debuginfod", "(no servers)", "skipped",
                                    detail="set $DEBUGINFOD_URLS or pass --debuginfod-url"))
            return None
        for server in self.servers:
            url = f"{server}/buildid/{bid}/debuginfo"
            if self.options.offline:
                attempts.append(Attempt("debuginfod", url, "skipped", detail="offline"))
                continue
            try:
                path = self._download(url, bid)
            except _NotFound as exc:
                attempts.append(Attempt("debuginfod", url, "not found", detail=str(exc)))
                continue
            except _Failed as exc:
                attempts.append(Attempt("debuginfod", url, "failed", exc.build_id, str(exc)))
                failures.append(f"{url}: {exc}")
                continue
            attempts.append(Attempt("debuginfod", url, "match", bid, f"saved as {path}"))
            return path
        return None

    def fetch(self, build_id: str) -> Path:
        """Like :meth:`find`, raising when nothing comes back.

        :raises DebuginfodError: a server failed; :raises FileNotFoundKsymError: every server said 404.
        """
        attempts: list[Attempt] = []
        failures: list[str] = []
        path = self.find(build_id, attempts, failures)
        if path is not None:
            return path
        raise _miss_error(normalize_build_id(build_id), attempts, failures, "debug file")

    # -- one download --

    def _download(self, url: str, build_id: str) -> Path:
        """Fetch ``url`` into ksym's own cache as ``<build id>/debuginfo``: a bounded transfer
        (:mod:`ksym.transfer`: within the deadline, at most ``max_size`` bytes, an ELF file from its first
        bytes) resuming a partial file a killed ksym left, and of ``build_id`` once complete. This thread
        draws the progress bar, verifies and renames; the temporary stays locked until it is renamed or
        removed, and is closed by whichever of this thread and the transfer's worker ends last."""
        dest_dir = self.cache_dir / build_id
        try:
            dest_dir.mkdir(parents=True, exist_ok=True)
            part = _claim_temporary(dest_dir)
        except OSError as exc:
            raise _Failed(f"cannot write the cache {self.cache_dir}: {exc.strerror or exc}") from None
        transfer: Transfer[None] = Transfer(Limits(self.deadline, self.max_size, self.timeout, _ELF_MAGIC),
                                            got=part.size, head=part.head, release=part.file.close)
        bars: list[ProgressLine] = []

        def tick(t: Transfer[None]) -> None:
            if not bars and self.progress and t.answered and (
                    self.forced_progress or t.total is None or t.total >= _PROGRESS_MIN):
                bars.append(ProgressLine(self.stream, f"ksym: debuginfod: {build_id[:16]}", t.total))
            if bars:
                bars[0].update(t.got)

        with sigterm_unwinds():  # outside the try: its finally runs before SIGTERM ends the process
            try:
                with transfer:
                    renamed = False
                    try:
                        transfer.run(lambda t: self._transfer(url, part.file, t),
                                     name=f"ksym-debuginfod-{build_id[:16]}", tick=tick)
                        have = self._verify(part.path, build_id)
                        if have != build_id:
                            raise _Failed(f"the server sent a file with build id {have or 'none'}, not "
                                          f"{build_id}: discarded", have)
                        dest = dest_dir / "debuginfo"
                        os.replace(part.path, dest)  # still locked: no other ksym takes it for a partial file
                        renamed = True
                        return dest
                    finally:
                        if not renamed:
                            unlink_quietly(part.path)  # before its lock goes with the file
            except TransferError as exc:  # the deadline: the worker words its other misses itself
                if exc.kind != "deadline":
                    raise _Failed(str(exc)) from None
                raise _Failed(f"no complete file within {self.deadline:g} s ($DEBUGINFOD_MAXTIME; "
                              f"{transfer.got} bytes arrived)") from None
            except OSError as exc:
                raise _Failed(f"cannot write the cache {self.cache_dir}: {exc.strerror or exc}") from None
            finally:
                if bars:
                    bars[0].done()
                try:
                    dest_dir.rmdir()  # only if left empty (a failed first download)
                except OSError:
                    pass

    def _transfer(self, url: str, out: IO[bytes], transfer: Transfer[None]) -> None:
        """The download with its resumes, run by ``transfer``'s worker thread."""
        import requests

        cap = self.max_size
        breaks: list[str] = []
        for _try in range(_TRIES):
            # identity: byte counts and ranges are then those of the file itself
            headers = {"Accept-Encoding": "identity", "User-Agent": "ksym"}
            if transfer.got:
                headers["Range"] = f"bytes={transfer.got}-"
            try:
                r = transfer.get(url, headers)
            except TransferError as exc:
                if exc.kind == "timeout":
                    raise _Failed(f"no connection within {self.timeout:g} s" if exc.phase == "connect"
                                  else f"no answer within {self.timeout:g} s") from None
                if exc.kind != "network":
                    raise
                if not isinstance(exc.cause, requests.ConnectionError):
                    raise _Failed(_short(exc.cause or exc)) from None
                if transfer.got:
                    breaks.append(_short(exc.cause))
                    continue
                raise _Failed(f"cannot connect: {_short(exc.cause)}") from None
            with r:
                if r.status_code == 404:
                    raise _NotFound("HTTP 404")
                whole: int | None = None
                if transfer.got and r.status_code == 206 and _range_start(r.headers.get("Content-Range")) == transfer.got:
                    whole = _range_total(r.headers.get("Content-Range"))  # resumed where it broke off
                else:
                    if r.status_code != 200 and not (transfer.got and r.status_code == 416):
                        raise _Failed(f"HTTP {r.status_code} {r.reason or ''}".rstrip())
                    if transfer.got:  # the server ignored the range (or refused it): start over
                        transfer.restart(out)
                    if r.status_code == 416:
                        breaks.append("HTTP 416: the range asked for was refused")
                        continue
                try:
                    transfer.read(r, out, total=whole)
                except TransferError as exc:
                    if exc.kind == "size":
                        raise _Failed(f"the file is {transfer.total} bytes, over the limit of {cap} "
                                      "($DEBUGINFOD_MAXSIZE): not downloaded" if exc.phase == "answer" else
                                      f"the file is over the limit of {cap} bytes ($DEBUGINFOD_MAXSIZE): "
                                      "discarded") from None
                    if exc.kind == "content":
                        raise _Failed(f"the server sent no usable ELF file (it {exc}): discarded") from None
                    if exc.kind == "timeout":
                        raise _Failed(f"no data for {self.timeout:g} s (after {transfer.got} bytes)") from None
                    if exc.kind != "network":
                        raise
                    breaks.append(_short(exc.cause or exc))  # cut short (IncompleteRead, a reset): ask for the rest
                    continue
            if transfer.total is None or transfer.got >= transfer.total:
                out.flush()
                return
            breaks.append(f"connection closed after {transfer.got} of {transfer.total} bytes")
        raise _Failed(f"the download broke off {len(breaks)} times ({breaks[-1] if breaks else '?'})")

    @staticmethod
    def _verify(path: Path, build_id: str) -> str | None:
        try:
            return file_build_id(path)
        except (BadFileError, FileNotFoundKsymError) as exc:
            raise _Failed(f"the server sent no usable ELF file ({str(exc).removeprefix(f'{path}: ')}): "
                          "discarded") from None


class _Temporary(NamedTuple):
    """A download's file in ksym's cache, locked (``flock``) for as long as a ksym writes it: a new one, or
    a partial one a killed ksym left, taken over to resume from ``size``."""

    path: Path
    file: IO[bytes]
    size: int
    head: bytes


def _claim_temporary(dest_dir: Path) -> _Temporary:
    """The file a download of ``dest_dir``'s build id writes: a partial one left by a ksym that was killed
    (unlocked, starting as an ELF file does) to resume, else a new one; other abandoned ones are removed.

    :raises OSError: the cache cannot be written."""
    taken: _Temporary | None = None
    for p in sorted(dest_dir.glob(_TEMP_PREFIX + "*")):
        locked = lock_temporary(p, writable=True)
        if locked is None:
            continue  # another download's, running now
        fd, st = locked
        head = os.pread(fd, len(_ELF_MAGIC), 0)
        if taken is None and st.st_size > 0 and head == _ELF_MAGIC[: len(head)]:
            taken = _Temporary(p, os.fdopen(fd, "r+b"), st.st_size, head)
            taken.file.seek(0, os.SEEK_END)
            continue
        unlink_quietly(p)
        os.close(fd)
    if taken is not None:
        return taken
    import tempfile  # only here: it imports shutil and random

    for _try in range(3):
        fd, name = tempfile.mkstemp(dir=dest_dir, prefix=_TEMP_PREFIX)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(name).st_ino == os.fstat(fd).st_ino:
                return _Temporary(Path(name), os.fdopen(fd, "r+b"), 0, b"")
        except OSError:
            pass  # another ksym took it in the instant between creating and locking it: a new one
        os.close(fd)
    raise OSError(f"cannot lock a temporary file in {dest_dir}")


def remove_stale_temporaries(cache: Path, age: float = STALE_TEMPORARY_AGE) -> list[Path]:
    """Remove the download temporaries (``<build id>/.tmp-debuginfo-*``) in ksym's own debuginfod cache
    ``cache`` that no running ksym holds and that nothing wrote to for ``age`` seconds (left by a ksym
    killed with SIGKILL, or by a power cut); returns what was removed. Never raises."""
    removed: list[Path] = []
    try:
        dirs = [d for d in os.scandir(cache) if d.is_dir(follow_symlinks=False)]
    except OSError:
        return removed
    for d in dirs:
        here = remove_stale(Path(d.path), _TEMP_PREFIX, age)
        if here:
            try:
                os.rmdir(d.path)  # only if that left it empty
            except OSError:
                pass
        removed += here
    return removed


class _NotFound(Exception):
    pass


class _Failed(Exception):
    def __init__(self, message: str, build_id: str | None = None) -> None:
        super().__init__(message)
        self.build_id = build_id


def build_id_of_url(url: str) -> str:
    m = re.search(r"/buildid/([0-9a-fA-F]+)/", url)
    return m.group(1) if m else url


def _range_start(value: str | None) -> int | None:
    m = re.match(r"bytes (\d+)-", value or "")
    return int(m.group(1)) if m else None


def _range_total(value: str | None) -> int | None:
    """The whole file's size in a ``Content-Range: bytes a-b/N`` (None for ``*`` or none)."""
    m = re.match(r"bytes \d+-\d+/(\d+)$", (value or "").strip())
    return int(m.group(1)) if m else None


def _positive(given: float | None, env: str | None, default: float) -> float:
    """``given``, else the environment variable ``env``, else ``default``; a value that is not a positive
    number is the default."""
    value: float | None = given
    if value is None and env:
        try:
            value = float(os.environ.get(env, "") or 0)
        except ValueError:
            value = None
    return value if value is not None and value > 0 else default


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _short(exc: BaseException) -> str:
    # requests wraps urllib3 wraps http.client and socket: keep the innermost reason, one short line
    text = str(exc)
    for pat in (r"\[Errno -?\d+\] [^'\")]+", r"IncompleteRead\([^)]*\)", r"Connection broken: [^'\")]+",
                r"Read timed out", r"Connection aborted"):
        m = re.search(pat, text)
        if m:
            return m.group(0).strip().rstrip(",")
    return " ".join(text.split())[:160]


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _miss_error(build_id: str, attempts: Sequence[Attempt], failures: Sequence[str], what: str,
                hint: str = "") -> KsymError:
    looked = [a.where for a in attempts if a.outcome != "skipped" and a.kind != "debuginfod"]
    shown = ", ".join(looked[:3]) + (", ..." if len(looked) > 3 else "")
    if failures:
        return DebuginfodError(f"no {what} with build id {build_id}: " + "; ".join(failures)
                               + (f" (also looked in {shown})" if shown else ""), tuple(failures))
    return FileNotFoundKsymError(f"no {what} with build id {build_id} (looked in {shown})"
                                 + (f": {hint}" if hint else ""))


# --------------------------------------------------------------------------------------------------
# Build-id mismatches, and what to install


def mismatch_warning(expected: str | None, where: str, path: str | os.PathLike[str],
                     have: str | None) -> str | None:
    """The one-line warning when ``path``'s build id is not the ``expected`` one (from ``where``)."""
    if not expected:
        return None
    if have is None:
        return (f"ksym: warning: {path} has no build id; {where} is {expected}: cannot check that they "
                "match")
    if same_build_id(expected, have):
        return None
    return (f"ksym: warning: build id mismatch: {path} has {have} but {where} is {expected}: "
            "results may be wrong")


def read_os_release(path: str | os.PathLike[str] = "/etc/os-release") -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep and k.strip() and not k.startswith("#"):
            out[k.strip()] = v.strip().strip("\"'")
    return out


def package_hint(release: str | None = None, os_release: dict[str, str] | None = None) -> str:
    """The command that installs the debug vmlinux of ``release`` on this distribution."""
    rel = release or os.uname().release
    osr = read_os_release() if os_release is None else os_release
    ids = [osr.get("ID", "").lower(), *osr.get("ID_LIKE", "").lower().split()]
    name = osr.get("PRETTY_NAME") or osr.get("NAME") or (ids[0] or "this system")
    if "ubuntu" in ids:
        return (f"{name}: apt install linux-image-{rel}-dbgsym (or linux-image-unsigned-{rel}-dbgsym) from "
                "ddebs.ubuntu.com, or DEBUGINFOD_URLS=https://debuginfod.ubuntu.com")
    if "debian" in ids:
        return (f"{name}: apt install linux-image-{rel}-dbg, "
                "or DEBUGINFOD_URLS=https://debuginfod.debian.net")
    if any(i in ids for i in ("fedora", "rhel", "centos", "rocky", "almalinux", "ol")):
        return (f"{name}: dnf debuginfo-install kernel-{rel} (package kernel-debuginfo-{rel}), "
                "or DEBUGINFOD_URLS=https://debuginfod.fedoraproject.org")
    if any(i.startswith(("suse", "opensuse", "sles", "sle")) for i in ids):
        flavor = rel.rsplit("-", 1)[-1] if "-" in rel else "default"
        return (f"{name}: zypper install kernel-{flavor}-debuginfo (version {rel.rsplit('-', 1)[0]}; "
                "enable the debug repository), or DEBUGINFOD_URLS=https://debuginfod.opensuse.org")
    if "arch" in ids:
        return (f"{name}: no debug package for the kernel; use DEBUGINFOD_URLS=https://debuginfod.archlinux.org "
                "or build with CONFIG_DEBUG_INFO and pass --vmlinux")
    from .image import DEBUG_PACKAGES

    return DEBUG_PACKAGES
