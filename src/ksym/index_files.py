"""Portable index files by build id: found in ksym's cache, in directories on a search path, or fetched over
HTTP from static servers (docs/index-files.md).

A portable index file (``ksym index build``) answers for one kernel build without its vmlinux. Given the
build id of the frames (``--build-id``, a dump's ``Build ID:`` line, the running kernel's), when no debug
vmlinux is at hand, :func:`find_index_file` looks, in this order:

1. ksym's cache: ``<ksym cache>/index-files/<BUILD-ID>/ksym-index`` (the only place ksym writes them);
2. each directory of :attr:`~ksym.searchopts.IndexFileOptions.dirs` (``--index-dir``, ``$KSYM_INDEX_PATH``),
   laid out as the URL layout: ``<dir>/buildid/<BUILD-ID>/ksym-index`` (such a directory can be served as it
   is by any static web server);
3. unless offline, each base URL of :attr:`~ksym.searchopts.IndexFileOptions.urls` (``--index-url``,
   ``$KSYM_INDEX_URLS``): ``GET <url>/buildid/<BUILD-ID>/ksym-index``, the debuginfod URL layout.

Every file found is checked with ``verify`` (the file's own build id, read from its header) against the one
asked for; a file of another build, or one that is damaged, is passed over and recorded. A download goes
through :meth:`ksym.transfer.Transfer.download` (overall deadline, size cap, per-read timeout; resumed with
``Range``/``If-Range`` when the connection breaks off) into a locked temporary file in the cache, is verified
once complete and renamed into place; when it fails nothing of it stays (no partial file, no directory it
created). Each step is an :class:`~ksym.searchopts.Attempt` of the returned
:class:`~ksym.searchopts.DebugLookup`, as :mod:`ksym.debuginfo` records its search.

Example::

    from ksym.index_files import find_index_file
    from ksym.searchopts import IndexFileOptions
    look = find_index_file(build_id, IndexFileOptions(urls=("https://kernels.example.org/ksym",)))
    print(look.path, [str(a) for a in look.attempts])
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .buildid import normalize_build_id, same_build_id
from .errors import DebuginfodError, FileNotFoundKsymError, KsymError, MissingDebugInfoError
from .records import NamedTuple
from .searchopts import Attempt, DebugLookup, IndexFileOptions
from .temporaries import remove_stale, unlink_quietly

__all__ = [
    "CACHE_SUBDIR",
    "INDEX_FILE_NAME",
    "STALE_TEMPORARY_AGE",
    "IndexPlaces",
    "Magic",
    "PortableCheck",
    "Verify",
    "check_index_file",
    "fetch_index_file",
    "find_index_file",
    "index_after_miss",
    "index_places",
    "index_url",
    "portable_check",
    "remove_stale_temporaries",
]

#: the file's name in every layout (cache, search path, URL)
INDEX_FILE_NAME = "ksym-index"
#: the directory of ksym's cache holding downloaded index files, one ``<BUILD-ID>/ksym-index`` each
CACHE_SUBDIR = "index-files"
#: a download's temporary, in :data:`CACHE_SUBDIR`
_TEMP_PREFIX = ".tmp-ksym-index-"
#: below this size no progress is drawn unless asked for
_PROGRESS_MIN = 1 << 20
#: a temporary nothing wrote to for this long (seconds) and no ksym holds is removed (a killed ksym's):
#: the age the index's and debuginfod's temporaries have
STALE_TEMPORARY_AGE = 3600.0

#: what checks a file: its build id (None: it names none), or :class:`ksym.errors.KsymError` when it is
#: not a usable index file (:func:`ksym.portable.file_build_id`)
Verify = Callable[[Path], "str | None"]


#: the first bytes of every file a download may bring (a download starting otherwise is cut at once), or
#: what gives them, called when a download starts
Magic = bytes | Callable[[], bytes]


class PortableCheck(NamedTuple):
    """How a portable index file is recognised: ``verify`` reads its build id from its header (checked:
    magic, version, size, CRC), ``magic`` gives its first bytes."""

    verify: Verify
    magic: Callable[[], bytes]


def portable_check() -> PortableCheck:
    """The check of ksym's portable index format (:func:`ksym.portable.file_build_id`,
    :data:`ksym.portable.MAGIC`): what the commands verify every file found or fetched with. The format's
    module is imported when a file is first checked or downloaded, not before (a search that finds nothing
    never reads it)."""
    return PortableCheck(_portable_build_id, _portable_magic)


def _portable_build_id(path: Path) -> str | None:
    from .portable import file_build_id

    return file_build_id(path)


def _portable_magic() -> bytes:
    from .portable import MAGIC

    return MAGIC


class IndexPlaces(NamedTuple):
    """Where the index file of a build id is looked for: ksym's own cache directory (``cache``, its
    :data:`CACHE_SUBDIR`), the search path's directories, and the base URLs."""

    cache: Path
    dirs: tuple[Path, ...]
    urls: tuple[str, ...]


def index_places(options: IndexFileOptions) -> IndexPlaces:
    """The places of ``options``, the cache resolved (``cache_dir``, else :func:`ksym.index.default_cache_dir`)."""
    if options.cache_dir:
        root = Path(options.cache_dir)
    else:
        from .index import default_cache_dir

        root = default_cache_dir()
    urls = tuple(u.rstrip("/") for u in options.urls if u.strip())
    return IndexPlaces(root / CACHE_SUBDIR, tuple(Path(d) for d in options.dirs), urls)


def index_url(base: str, build_id: str) -> str:
    """``<base>/buildid/<BUILD-ID>/ksym-index``."""
    return f"{base.rstrip('/')}/buildid/{build_id}/{INDEX_FILE_NAME}"


def _in_dir(root: Path, build_id: str) -> Path:
    return root / "buildid" / build_id / INDEX_FILE_NAME


def check_index_file(path: Path, want: str, kind: str, verify: Verify) -> Attempt:
    """The outcome of one file on disk: ``missing``, ``unusable`` (unreadable, damaged: the reason in
    ``detail``), ``no build id``, ``mismatch`` (another build's) or ``match``."""
    try:
        present = path.is_file()
    except OSError:
        return Attempt(kind, str(path), "unusable", None, "permission denied")
    if not present:
        return Attempt(kind, str(path), "missing")
    try:
        have = verify(path)
    except KsymError as exc:
        return Attempt(kind, str(path), "unusable", None, str(exc).removeprefix(f"{path}: "))
    except OSError as exc:
        return Attempt(kind, str(path), "unusable", None, exc.strerror or str(exc))
    if have is None:
        return Attempt(kind, str(path), "no build id")
    if not same_build_id(want, have):
        return Attempt(kind, str(path), "mismatch", have)
    return Attempt(kind, str(path), "match", have)


def find_index_file(
    build_id: str,
    options: IndexFileOptions,
    *,
    verify: Verify,
    magic: Magic = b"",
    source: str = "given",
    session: Any = None,
) -> DebugLookup:
    """The index file of ``build_id`` (see the module docstring for the order): ``path`` None when none was
    found, every place in ``attempts``, every server that failed (not a plain 404) in ``failures``.

    :param verify: reads a file's build id (raising :class:`~ksym.errors.KsymError` for a file that is no
        usable index file); every file found, on disk or downloaded, is checked with it.
    :param magic: the first bytes of every index file (or what gives them): a download that starts otherwise
        is cut at once.
    :param session: a ``requests.Session`` for the downloads (default: one per request).
    Never raises for a miss; a malformed ``build_id`` is a :class:`ValueError`.
    """
    want = normalize_build_id(build_id)
    places = index_places(options)
    look = DebugLookup(want, source, servers=list(places.urls))
    cached = places.cache / want / INDEX_FILE_NAME
    candidates = [("index cache", cached)] + [("index dir", _in_dir(d, want)) for d in places.dirs]
    for kind, path in candidates:
        a = check_index_file(path, want, kind, verify)
        look.attempts.append(a)
        if a.outcome == "match":
            look.path, look.found_by = path, kind
            return look
    if not places.urls:
        look.attempts.append(
            Attempt(
                "index server", "(no servers)", "skipped", detail="set $KSYM_INDEX_URLS or pass --index-url"
            )
        )
        return look
    swept = False
    for base in places.urls:
        url = index_url(base, want)
        if options.offline:
            look.attempts.append(Attempt("index server", url, "skipped", detail="offline"))
            continue
        if not swept:  # before the first download: what killed downloads left behind
            swept = True
            remove_stale_temporaries(places.cache)
        try:
            path = _download(url, want, places.cache, options, verify, magic, session)
        except _Missed as exc:
            look.attempts.append(
                Attempt(
                    "index server", url, "not found" if exc.not_found else "failed", exc.build_id, str(exc)
                )
            )
            if not exc.not_found:
                look.failures.append(f"{url}: {exc}")
            continue
        look.attempts.append(Attempt("index server", url, "match", want, f"saved as {path}"))
        look.path, look.found_by = path, "index server"
        return look
    return look


def fetch_index_file(
    build_id: str,
    options: IndexFileOptions,
    *,
    verify: Verify,
    magic: Magic = b"",
    source: str = "given",
    session: Any = None,
) -> Path:
    """Like :func:`find_index_file`, raising when nothing is found.

    :raises DebuginfodError: nothing found and a server failed (exit 5); :raises FileNotFoundKsymError:
        nothing found (exit 3). Each is one line naming the build id and where ksym looked.
    """
    look = find_index_file(build_id, options, verify=verify, magic=magic, source=source, session=session)
    if look.path is not None:
        return look.path
    raise _miss_error(look, options)


def index_after_miss(
    miss: KsymError,
    build_id: str,
    options: IndexFileOptions,
    *,
    verify: Verify,
    magic: Magic = b"",
    source: str = "given",
    session: Any = None,
) -> Path:
    """The index file of ``build_id``, looked for after the debug vmlinux search missed with ``miss``
    (:func:`ksym.locate.find_vmlinux`'s :class:`~ksym.errors.FileNotFoundKsymError`,
    :class:`~ksym.errors.DebuginfodError`, or :class:`~ksym.errors.MissingDebugInfoError` when it found
    only stripped images).

    :raises DebuginfodError: neither was found and a debuginfod or index server failed (exit 5);
        :raises MissingDebugInfoError: neither was found and ``miss`` is one (exit 4: only stripped images);
        :raises FileNotFoundKsymError: neither was found (exit 3). One line: ``miss``'s, then where the index
        file was looked for.
    """
    look = find_index_file(build_id, options, verify=verify, magic=magic, source=source, session=session)
    if look.path is not None:
        return look.path
    index_miss = _miss_error(look, options)
    text = f"{miss}; {index_miss}"
    if isinstance(miss, DebuginfodError) or isinstance(index_miss, DebuginfodError):
        failures = tuple(getattr(miss, "failures", ())) + tuple(look.failures)
        raise DebuginfodError(text, failures)
    if isinstance(miss, MissingDebugInfoError):
        raise MissingDebugInfoError(text)
    raise FileNotFoundKsymError(text)


def _looked_at(a: Attempt) -> str:
    """A place on disk as a miss names it: the path, and why a file there was passed over."""
    if a.outcome == "mismatch":
        return f"{a.where} (build id {a.build_id})"
    if a.outcome != "missing":
        return f"{a.where} ({a.outcome}{': ' + a.detail if a.detail else ''})"
    return a.where


def _miss_error(look: DebugLookup, options: IndexFileOptions) -> KsymError:
    looked = [_looked_at(a) for a in look.attempts if a.outcome != "skipped" and a.kind != "index server"]
    asked = [a.where for a in look.attempts if a.kind == "index server" and a.outcome == "not found"]
    shown = ", ".join(looked[:3]) + (", ..." if len(looked) > 3 else "")
    what = f"no ksym index file with build id {look.build_id}"
    if look.failures:
        return DebuginfodError(
            f"{what}: " + "; ".join(look.failures) + f" (also looked in {shown})", tuple(look.failures)
        )
    where = f"looked in {shown}" + (f" and at {', '.join(asked)} (HTTP 404)" if asked else "")
    if options.offline and look.servers:
        how = "offline: the index servers were not asked"
    elif not look.servers:
        how = "set KSYM_INDEX_URLS (or --index-url) to a server that has it"
    else:
        how = "no server has it"
    return FileNotFoundKsymError(f"{what} ({where}): {how}")


# --------------------------------------------------------------------------------------------------
# One download


class _Missed(Exception):
    """One server did not deliver: a 404 (``not_found``) or a failure, in one line; ``build_id``: the
    build id of the file it sent instead, when that was the reason."""

    def __init__(self, message: str, *, not_found: bool = False, build_id: str | None = None) -> None:
        super().__init__(message)
        self.not_found = not_found
        self.build_id = build_id


def _download(
    url: str, want: str, cache: Path, options: IndexFileOptions, verify: Verify, magic: Magic, session: Any
) -> Path:
    """``url`` into ``<cache>/<want>/ksym-index``: a bounded transfer into a locked temporary in ``cache``,
    verified, then renamed; on any failure the temporary and the directories this made are removed.

    :raises _Missed: why it was not saved."""
    from .transfer import Limits, ProgressLine, Transfer, TransferError, sigterm_unwinds

    made: list[Path] = []
    try:
        made = _make_dirs(cache)
        part = _new_temporary(cache)
    except OSError as exc:
        _remove_empty(made)
        raise _Missed(f"cannot write the cache {cache}: {exc.strerror or exc}") from None
    limits = Limits(
        options.deadline, options.max_size, options.timeout, magic() if callable(magic) else magic
    )
    transfer: Transfer[Any] = Transfer(limits, session=session, release=part.file.close)
    bars: list[ProgressLine] = []
    stream = sys.stderr

    def tick(t: Transfer[Any]) -> None:
        if not bars and t.answered and _show_progress(options.progress, stream, t.total):
            bars.append(ProgressLine(stream, f"ksym: index file: {want[:16]}", t.total))
        if bars:
            bars[0].update(t.got)

    saved = False
    with sigterm_unwinds():  # outside the try: its finally runs before SIGTERM ends the process
        try:
            with transfer:
                try:
                    transfer.run(
                        lambda t: t.download(url, part.file, headers={"User-Agent": "ksym"}),
                        name=f"ksym-index-{want[:16]}",
                        tick=tick,
                    )
                    try:
                        have = verify(part.path)
                    except KsymError as exc:
                        raise _Missed(
                            f"the server sent no usable ksym index file "
                            f"({str(exc).removeprefix(f'{part.path}: ')}): discarded"
                        ) from None
                    if have is None or not same_build_id(want, have):
                        raise _Missed(
                            f"the server sent the index file of build id {have or 'none'}, not "
                            f"{want}: discarded",
                            build_id=have,
                        )
                    dest_dir = cache / want
                    made += _make_dirs(dest_dir)
                    dest = dest_dir / INDEX_FILE_NAME
                    os.replace(part.path, dest)  # still locked: a sweep never takes it for a stale one
                    saved = True
                    return dest
                finally:
                    if not saved:
                        unlink_quietly(part.path)  # before its lock goes with the file
        except TransferError as exc:
            raise _Missed(
                _transfer_text(exc, transfer.got, transfer.total, options),
                not_found=exc.kind == "http" and exc.status == 404,
            ) from None
        except OSError as exc:
            raise _Missed(f"cannot write the cache {cache}: {exc.strerror or exc}") from None
        finally:
            if bars:
                bars[0].done()
            if not saved:
                _remove_empty(made)


def _show_progress(asked: bool | None, stream: Any, total: int | None) -> bool:
    """Whether a download draws its progress: asked for (``--progress``), else on a terminal for a file of
    :data:`_PROGRESS_MIN` bytes or more (or of a size not told)."""
    if asked is not None:
        return asked
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError):
        tty = False
    return tty and (total is None or total >= _PROGRESS_MIN)


def _transfer_text(exc: Any, got: int, total: int | None, options: IndexFileOptions) -> str:
    """One line for a :class:`~ksym.transfer.TransferError` of an index file download."""
    kind, phase = exc.kind, exc.phase
    if kind == "deadline":
        return f"no complete file within {options.deadline:g} s ($KSYM_INDEX_MAXTIME; {got} bytes arrived)"
    if kind == "size":
        if phase == "answer":
            return (
                f"the file is {total} bytes, over the limit of {options.max_size} ($KSYM_INDEX_MAXSIZE): "
                "not downloaded"
            )
        return f"the file is over the limit of {options.max_size} bytes ($KSYM_INDEX_MAXSIZE): discarded"
    if kind == "content":
        return f"the server sent no ksym index file (it {exc}): discarded"
    if kind == "timeout":
        if phase == "connect":
            return f"no connection within {options.timeout:g} s"
        if phase == "answer":
            return f"no answer within {options.timeout:g} s"
        return f"no data for {options.timeout:g} s (after {got} bytes)"
    if kind == "network" and phase == "connect" and exc.cause is not None:
        from .transfer import short_reason

        return f"cannot connect: {short_reason(exc)}"
    return str(exc)


class _Temporary(NamedTuple):
    """A download's file in the cache, locked (``flock``) while this process writes it."""

    path: Path
    file: IO[bytes]


def _new_temporary(cache: Path) -> _Temporary:
    import tempfile  # only here: it imports shutil and random

    fd, name = tempfile.mkstemp(dir=cache, prefix=_TEMP_PREFIX)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new name: nobody else holds it
        return _Temporary(Path(name), os.fdopen(fd, "r+b"))
    except BaseException:
        os.close(fd)
        unlink_quietly(Path(name))
        raise


def _make_dirs(path: Path) -> list[Path]:
    """Make ``path`` and its missing parents; returns those it made, deepest first.

    :raises OSError: one cannot be made."""
    missing: list[Path] = []
    p = path
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    made: list[Path] = []
    try:
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue  # another ksym made it meanwhile: not ours to remove
            made.insert(0, d)
    except OSError:
        _remove_empty(made)
        raise
    return made


def _remove_empty(dirs: list[Path]) -> None:
    """Remove each directory of ``dirs`` (deepest first) that is empty."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            pass  # holds something now (another download's file), or already gone


def remove_stale_temporaries(cache: Path, age: float = STALE_TEMPORARY_AGE) -> list[Path]:
    """Remove the download temporaries in ``cache`` (``<ksym cache>/index-files``) that no running ksym
    holds and nothing wrote to for ``age`` seconds (left by a ksym killed with SIGKILL, or a power cut);
    returns what was removed. Never raises."""
    return remove_stale(cache, _TEMP_PREFIX, age)
