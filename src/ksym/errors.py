"""Exceptions raised by ksym, and the exit codes the CLI maps them to.

Every error is a :class:`KsymError`; each subclass also derives from the builtin it resembles, so
callers can catch ``LookupError`` or ``ValueError`` as usual. Each carries the exit code the command
line uses for it (see docs/usage.md, "Exit codes").
"""

from __future__ import annotations

import enum

from .records import NamedTuple

__all__ = [
    "EXIT_BAD_FILE",
    "EXIT_INTERNAL",
    "EXIT_NETWORK",
    "EXIT_NO_FILE",
    "EXIT_OK",
    "EXIT_UNRESOLVED",
    "EXIT_USAGE",
    "BadFileError",
    "BuildIdMismatchError",
    "DebuginfodError",
    "FileNotFoundKsymError",
    "KsymError",
    "MissingDebugInfoError",
    "SkipKind",
    "SkipReason",
    "SpecError",
    "SymbolNotFoundError",
    "WorkerDiedError",
]

EXIT_OK = 0
#: At least one frame could not be resolved (unknown symbol, offset beyond the symbol, no line info).
EXIT_UNRESOLVED = 1
#: Bad command line or malformed frame text.
EXIT_USAGE = 2
#: The debug file is missing or unreadable, or none could be found; a file ksym writes cannot be written
#: (nor grow: a full disk), or a worker process of ``ksym index build`` was killed (the out-of-memory
#: killer): the machine ran out of something.
EXIT_NO_FILE = 3
#: The file is not usable: not ELF, truncated, no symbol table, no DWARF.
EXIT_BAD_FILE = 4
#: No debug file was found and a debuginfod server or an index file server failed (timeout, refused
#: connection, HTTP error, a download that kept breaking off, or a file whose build id is not the one
#: asked for).
EXIT_NETWORK = 5
#: A bug in ksym: reported in one line, never as a traceback (run with KSYM_DEBUG=1 for one).
EXIT_INTERNAL = 70


class KsymError(Exception):
    """Base of every error ksym raises on purpose."""

    exit_code: int = EXIT_INTERNAL


class FileNotFoundKsymError(KsymError, FileNotFoundError):
    """The debug file (vmlinux) does not exist, cannot be read, or none was found."""

    exit_code = EXIT_NO_FILE


class BuildIdMismatchError(KsymError, LookupError):
    """The input names another kernel build than the debug file's (``ksym annotate`` without ``--force``:
    its source lines would look right and be wrong)."""

    exit_code = EXIT_NO_FILE


class WorkerDiedError(KsymError, OSError):
    """A worker process was killed by a signal (``signal``: its number) before it finished its work: the
    out-of-memory killer, or a user. Not a bug of ksym; the work it had taken is lost, so the command
    stops (``ksym index build`` writes no file)."""

    exit_code = EXIT_NO_FILE

    def __init__(self, message: str, pid: int, signal: int) -> None:
        super().__init__(message)
        self.pid = pid
        self.signal = signal


class BadFileError(KsymError, ValueError):
    """The file exists but cannot serve: not ELF, truncated, no .symtab, corrupt DWARF."""

    exit_code = EXIT_BAD_FILE


class MissingDebugInfoError(BadFileError):
    """The ELF file has no DWARF (.debug_info): a stripped vmlinux rather than the debug one."""


class SpecError(KsymError, ValueError):
    """Frame text that is not ``func+off[/size]`` or an address."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, text: str = "") -> None:
        super().__init__(message)
        self.text = text


class SkipKind(enum.Enum):
    """Why scripts/faddr2line passed over a symbol of the frame's name (:class:`SkipReason`)."""

    #: The frame's ``/size`` is not the symbol's size: ``skipping ... (SIZE != 0xN)`` on stdout; the
    #: next symbol of that name is tried.
    SIZE_MISMATCH = "size_mismatch"
    #: The offset is beyond the symbol's size: ``skipping ... (OFF > 0xN)`` on stdout; the next symbol
    #: of that name is tried.
    OFFSET_BEYOND_SIZE = "offset_beyond_size"
    #: The symbol's size cannot be told (nothing follows it): ``bad symbol size: ...`` on stderr, and the
    #: script stops looking.
    BAD_SYMBOL_SIZE = "bad_symbol_size"
    #: Symbol plus offset is address 0: ``bad address: ...`` on stderr, and the script stops looking.
    BAD_ADDRESS = "bad_address"


class SkipReason(NamedTuple):
    """One symbol scripts/faddr2line passed over: the ``kind`` of reason and the line the script prints
    for it (``text``, byte for byte)."""

    kind: SkipKind
    text: str

    @property
    def stops(self) -> bool:
        """The script stops looking at this symbol (a ``bad ...`` line, on stderr) instead of trying the
        next one of that name (a ``skipping ...`` line, on stdout)."""
        return self.kind in (SkipKind.BAD_SYMBOL_SIZE, SkipKind.BAD_ADDRESS)

    def __str__(self) -> str:
        return self.text


class SymbolNotFoundError(KsymError, LookupError):
    """No symbol matches the frame; ``reasons`` holds a :class:`SkipReason` for each candidate symbol
    passed over (empty when no symbol has the frame's name)."""

    exit_code = EXIT_UNRESOLVED

    def __init__(self, message: str, name: str = "", reasons: tuple[SkipReason, ...] = ()) -> None:
        super().__init__(message)
        self.name = name
        self.reasons = reasons


class DebuginfodError(KsymError, OSError):
    """No debug file was found locally and debuginfod (or a server of portable index files,
    :mod:`ksym.index_files`) could not deliver one: a server timed out, refused the connection, answered
    with an HTTP error, or sent a file with another build id. ``failures`` holds one line per server that
    failed (a plain 404 is "not found", not a failure)."""

    exit_code = EXIT_NETWORK

    def __init__(self, message: str, failures: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.failures = failures
