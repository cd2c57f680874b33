"""ksym: kernel stack frames → file:line evidence.

Data flow, one module each: parse text → frames (:mod:`ksym.spec`, :mod:`ksym.parse`); locate frame →
address (:mod:`ksym.symbols`, :mod:`ksym.locate`, :mod:`ksym.image`); resolve address → inline chain
(:mod:`ksym.dwarf`, cached by :mod:`ksym.index`); present (:mod:`ksym.format`, :mod:`ksym.cli`).
The entry point is :class:`Symbolizer`.
"""

from .debuginfo import DebuginfoOptions
from .errors import (
    EXIT_BAD_FILE,
    EXIT_INTERNAL,
    EXIT_NETWORK,
    EXIT_NO_FILE,
    EXIT_OK,
    EXIT_UNRESOLVED,
    EXIT_USAGE,
    BadFileError,
    DebuginfodError,
    FileNotFoundKsymError,
    KsymError,
    MissingDebugInfoError,
    SpecError,
    SymbolNotFoundError,
)
from .model import Resolution, SourceLocation
from .pathmap import PathMap, PathMapError
from .spec import AddressSpec, FuncSpec, parse_spec
from .symbolizer import Symbolizer
from .symbols import SymbolView

__version__ = "0.1.0"

__all__ = [
    "EXIT_BAD_FILE",
    "EXIT_INTERNAL",
    "EXIT_NETWORK",
    "EXIT_NO_FILE",
    "EXIT_OK",
    "EXIT_UNRESOLVED",
    "EXIT_USAGE",
    "AddressSpec",
    "BadFileError",
    "DebuginfoOptions",
    "DebuginfodError",
    "FileNotFoundKsymError",
    "FuncSpec",
    "KsymError",
    "MissingDebugInfoError",
    "PathMap",
    "PathMapError",
    "Resolution",
    "SourceLocation",
    "SpecError",
    "SymbolNotFoundError",
    "SymbolView",
    "Symbolizer",
    "parse_spec",
]
