"""The records a debug-file search takes and gives: :class:`DebuginfoOptions` (where to look),
:class:`Attempt` and :class:`DebugLookup` (what it tried and found) and :class:`Located` (which file,
and why); :class:`SourceOptions`, where source text and links come from (:mod:`ksym.source`,
:mod:`ksym.links`, :func:`ksym.report.report_for_command`); and :class:`IndexFileOptions`, where ksym's
portable index files are looked for by build id (:mod:`ksym.index_files`).

They live apart from :mod:`ksym.debuginfo`, :mod:`ksym.locate` and :mod:`ksym.source` so that a command
given its file (``--vmlinux``) builds them without importing the search itself; those modules and
:mod:`ksym.cli.options` re-export them.
"""

from __future__ import annotations

import os

from .records import MutableRecord, NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path
    from typing import Any

__all__ = [
    "INDEX_DEFAULT_DEADLINE",
    "INDEX_DEFAULT_MAX_SIZE",
    "INDEX_DEFAULT_TIMEOUT",
    "INDEX_ENVIRONMENT",
    "Attempt",
    "DebugLookup",
    "DebuginfoOptions",
    "IndexFileOptions",
    "Located",
    "SourceOptions",
    "path_name",
    "path_parts",
    "path_text",
]

#: an index file download's overall deadline (seconds), size cap (bytes) and connect/read timeout
#: (seconds) when neither an option nor the environment sets one
INDEX_DEFAULT_DEADLINE = 600.0
INDEX_DEFAULT_MAX_SIZE = 1 << 30
INDEX_DEFAULT_TIMEOUT = 30.0
#: the environment variables :meth:`IndexFileOptions.from_environment` reads, and nothing else does
INDEX_ENVIRONMENT = ("KSYM_INDEX_PATH", "KSYM_INDEX_URLS", "KSYM_INDEX_MAXTIME", "KSYM_INDEX_MAXSIZE",
                     "KSYM_INDEX_TIMEOUT")


def path_text(path: str | os.PathLike[str]) -> str:
    """``str(pathlib.PurePosixPath(path))`` without importing pathlib (a warm run does without it): the
    path as pathlib spells it, so that messages name a file as they always did. Repeated slashes and
    ``.`` components go, and a trailing slash; ``..`` stays; a leading ``//`` (exactly two) stays, as
    POSIX allows; the empty path is ``.``."""
    text = os.fspath(path)
    root = "//" if text[:2] == "//" and text[2:3] != "/" else "/" if text[:1] == "/" else ""
    return root + "/".join(path_parts(text)) or "."


def path_parts(path: str | os.PathLike[str]) -> list[str]:
    """The components of ``path`` as pathlib takes it apart, without importing pathlib: no empty ones
    (repeated and trailing slashes, the root) and no ``.``; ``..`` stays."""
    return [p for p in os.fspath(path).split("/") if p and p != "."]


def path_name(path: str | os.PathLike[str]) -> str:
    """``pathlib.PurePosixPath(path).name`` without importing pathlib: the last component, ``""`` for
    the root and the empty path."""
    parts = path_parts(path)
    return parts[-1] if parts else ""


class DebuginfoOptions(NamedTuple):
    """How to look for debug files.

    :param debug_dirs: roots searched before ``$KSYM_DEBUG_DIRS`` and ``/usr/lib/debug`` (each holding a
        ``.build-id`` tree, or being one).
    :param servers: debuginfod base URLs; None: ``$DEBUGINFOD_URLS`` (space-separated).
    :param offline: no network at all (the cache is still read).
    :param cache_dir: the ksym cache (default ``$KSYM_CACHE_DIR``, ``~/.cache/ksym``); debuginfod files go
        under its ``debuginfod/``, the only place ksym writes them.
    :param progress: draw a progress bar on stderr; None: only when stderr is a terminal.
    :param timeout: connect and read (no data) timeout in seconds; None: ``$DEBUGINFOD_TIMEOUT``, else 30.
    :param deadline: overall seconds one download may take, all of it (connecting, every retry); None:
        ``$DEBUGINFOD_MAXTIME``, else :data:`ksym.debuginfo.DEFAULT_DEADLINE`.
    :param max_size: the largest file downloaded, in bytes; None: ``$DEBUGINFOD_MAXSIZE``, else
        :data:`ksym.debuginfo.DEFAULT_MAX_SIZE`.
    :param use_env: read ``$KSYM_DEBUG_DIRS``/``$DEBUGINFOD_*`` (tests turn it off).
    """

    debug_dirs: tuple[str, ...] = ()
    servers: tuple[str, ...] | None = None
    offline: bool = False
    cache_dir: str | None = None
    progress: bool | None = None
    timeout: float | None = None
    deadline: float | None = None
    max_size: int | None = None
    use_env: bool = True
    system_root: bool = True


class SourceOptions(NamedTuple):
    """The kernel version and source: links (``kernel_tag``, ``elixir_url``) and where source text comes
    from for ``--list`` and the reports (``source_dir``, ``source_url``, ``offline``)."""

    kernel_tag: str | None = None
    elixir_url: str | None = None
    source_dir: str | None = None
    source_url: str | None = None
    offline: bool = False


_Record = MutableRecord


class Attempt(_Record):
    """One place looked at: ``kind`` (build-id dir, distribution path, cache, debuginfod), where, and the
    outcome (``missing``, ``match``, ``mismatch``, ``no build id``, ``unusable``, ``not found``,
    ``failed``, ``skipped``), with the build id the file has and a detail."""

    _fields = ("kind", "where", "outcome", "build_id", "detail", "has_dwarf")
    __slots__ = _fields

    def __init__(self, kind: str, where: str, outcome: str, build_id: str | None = None, detail: str = "",
                 has_dwarf: bool | None = None) -> None:
        self.kind = kind
        self.where = where
        self.outcome = outcome
        self.build_id = build_id
        self.detail = detail
        self.has_dwarf = has_dwarf

    def __str__(self) -> str:
        text = f"{self.kind}: {self.where}: {self.outcome}"
        if self.build_id:
            text += f" (build id {self.build_id})"
        if self.detail:
            text += f": {self.detail}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "where": self.where, "outcome": self.outcome, "build_id": self.build_id,
                "detail": self.detail or None}


class DebugLookup(_Record):
    """What :func:`locate_debuginfo` found: ``path`` (None when nothing), and every attempt.

    ``notes``: facts shown by ``ksym debuginfo`` (the running kernel's build id, a given vmlinux's, ...);
    ``install``: what to install when nothing was found.
    """

    _fields = ("build_id", "source", "path", "found_by", "attempts", "servers", "failures", "warnings", "notes",
               "install")
    __slots__ = _fields

    def __init__(self, build_id: str | None, source: str, path: Path | None = None, found_by: str | None = None,
                 attempts: list[Attempt] | None = None, servers: list[str] | None = None,
                 failures: list[str] | None = None, warnings: list[str] | None = None,
                 notes: list[str] | None = None, install: str | None = None) -> None:
        self.build_id = build_id
        self.source = source
        self.path = path
        self.found_by = found_by
        self.attempts: list[Attempt] = [] if attempts is None else attempts
        self.servers: list[str] = [] if servers is None else servers
        self.failures: list[str] = [] if failures is None else failures
        self.warnings: list[str] = [] if warnings is None else warnings
        self.notes: list[str] = [] if notes is None else notes
        self.install = install

    def to_dict(self) -> dict[str, Any]:
        return {"build_id": self.build_id, "build_id_source": self.source, "found": self.path is not None,
                "path": str(self.path) if self.path else None, "found_by": self.found_by,
                "attempts": [a.to_dict() for a in self.attempts], "servers": self.servers,
                "failures": self.failures, "warnings": self.warnings, "notes": self.notes,
                "install": self.install}


class Located(_Record):
    """The file to use (``path``; ``path_text``, the same as text), why it was taken (``reason``), what
    the search warned about it, and the search itself (``lookup``; None when the file was given)."""

    _fields = ("path", "reason", "warnings", "lookup")
    __slots__ = ("_path", "lookup", "path_text", "reason", "warnings")

    def __init__(self, path: str | os.PathLike[str], reason: str, warnings: list[str] | None = None,
                 lookup: DebugLookup | None = None) -> None:
        self.path_text = path_text(path)
        self._path: Path | None = None
        self.reason = reason
        self.warnings: list[str] = [] if warnings is None else warnings
        self.lookup = lookup

    @property
    def path(self) -> Path:
        """The file, as a :class:`pathlib.Path` (made when first asked for: a warm run does not load
        pathlib)."""
        if self._path is None:
            from pathlib import Path

            self._path = Path(self.path_text)
        return self._path


class IndexFileOptions(NamedTuple):
    """Where ksym's portable index files (``ksym index build``) are looked for by build id, and how one
    is downloaded (docs/index-files.md). The library reads no environment variable:
    :meth:`from_environment` is the one place that does, for the commands.

    :param dirs: directories laid out as the URL layout, ``<dir>/buildid/<BUILD-ID>/ksym-index``, in order.
    :param urls: base URLs; the file of a build id is ``<url>/buildid/<BUILD-ID>/ksym-index``.
    :param offline: no network: the cache and ``dirs`` only.
    :param cache_dir: the ksym cache (None: :func:`ksym.index.default_cache_dir`); files are kept under its
        ``index-files/<BUILD-ID>/ksym-index``, the only place ksym writes them.
    :param timeout: connect and read (no data) timeout, seconds.
    :param deadline: overall seconds one download may take, every retry included.
    :param max_size: the largest file downloaded, bytes.
    :param progress: draw a download's progress on stderr; None: when stderr is a terminal and the file is
        1 MB or more.
    """

    dirs: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()
    offline: bool = False
    cache_dir: str | None = None
    timeout: float = INDEX_DEFAULT_TIMEOUT
    deadline: float = INDEX_DEFAULT_DEADLINE
    max_size: int = INDEX_DEFAULT_MAX_SIZE
    progress: bool | None = None

    @classmethod
    def from_environment(
        cls,
        environ: Mapping[str, str],
        *,
        dirs: tuple[str, ...] = (),
        urls: tuple[str, ...] = (),
        offline: bool = False,
        cache_dir: str | None = None,
        progress: bool | None = None,
    ) -> IndexFileOptions:
        """The options of a command: ``dirs`` (``--index-dir``) then ``$KSYM_INDEX_PATH`` (``:``-separated);
        ``urls`` (``--index-url``), else ``$KSYM_INDEX_URLS`` (space-separated); ``$KSYM_INDEX_MAXTIME``,
        ``$KSYM_INDEX_MAXSIZE`` and ``$KSYM_INDEX_TIMEOUT`` for the bounds (a value that is not a positive
        number: the default; a bound always holds)."""
        path = tuple(d for d in environ.get("KSYM_INDEX_PATH", "").split(":") if d)
        env_urls = tuple(environ.get("KSYM_INDEX_URLS", "").split())
        return cls(
            dirs=tuple(dict.fromkeys(dirs + path)),
            urls=tuple(urls) if urls else env_urls,
            offline=offline,
            cache_dir=cache_dir,
            timeout=_positive(environ.get("KSYM_INDEX_TIMEOUT"), INDEX_DEFAULT_TIMEOUT),
            deadline=_positive(environ.get("KSYM_INDEX_MAXTIME"), INDEX_DEFAULT_DEADLINE),
            max_size=int(_positive(environ.get("KSYM_INDEX_MAXSIZE"), INDEX_DEFAULT_MAX_SIZE)),
            progress=progress,
        )


def _positive(text: str | None, default: float) -> float:
    try:
        value = float(text) if text else default
    except ValueError:
        return default
    return value if 0 < value < float("inf") else default  # NaN compares false: the default
