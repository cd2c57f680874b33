"""The records a debug-file search takes and gives: :class:`DebuginfoOptions` (where to look),
:class:`Attempt` and :class:`DebugLookup` (what it tried and found) and :class:`Located` (which file,
and why); and :class:`SourceOptions`, where source text and links come from (:mod:`ksym.source`,
:mod:`ksym.links`, :func:`ksym.report.report_for_command`).

They live apart from :mod:`ksym.debuginfo`, :mod:`ksym.locate` and :mod:`ksym.source` so that a command
given its file (``--vmlinux``) builds them without importing the search itself; those modules and
:mod:`ksym.cli.options` re-export them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Attempt", "DebugLookup", "DebuginfoOptions", "Located", "SourceOptions"]


@dataclass(frozen=True)
class DebuginfoOptions:
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


@dataclass(frozen=True, slots=True)
class SourceOptions:
    """The kernel version and source: links (``kernel_tag``, ``elixir_url``) and where source text comes
    from for ``--list`` and the reports (``source_dir``, ``source_url``, ``offline``)."""

    kernel_tag: str | None = None
    elixir_url: str | None = None
    source_dir: str | None = None
    source_url: str | None = None
    offline: bool = False


@dataclass
class Attempt:
    """One place looked at: ``kind`` (build-id dir, distribution path, cache, debuginfod), where, and the
    outcome (``missing``, ``match``, ``mismatch``, ``no build id``, ``unusable``, ``not found``,
    ``failed``, ``skipped``), with the build id the file has and a detail."""

    kind: str
    where: str
    outcome: str
    build_id: str | None = None
    detail: str = ""
    has_dwarf: bool | None = None

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


@dataclass
class DebugLookup:
    """What :func:`locate_debuginfo` found: ``path`` (None when nothing), and every attempt."""

    build_id: str | None
    source: str
    path: Path | None = None
    found_by: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    servers: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: facts shown by ``ksym debuginfo`` (the running kernel's build id, a given vmlinux's, ...)
    notes: list[str] = field(default_factory=list)
    #: what to install when nothing was found
    install: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"build_id": self.build_id, "build_id_source": self.source, "found": self.path is not None,
                "path": str(self.path) if self.path else None, "found_by": self.found_by,
                "attempts": [a.to_dict() for a in self.attempts], "servers": self.servers,
                "failures": self.failures, "warnings": self.warnings, "notes": self.notes,
                "install": self.install}


@dataclass
class Located:
    """The file to use (``path``), why it was taken (``reason``), what the search warned about it, and
    the search itself (``lookup``; None when the file was given)."""

    path: Path
    reason: str
    warnings: list[str] = field(default_factory=list)
    lookup: DebugLookup | None = None
