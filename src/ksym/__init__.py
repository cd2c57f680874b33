"""ksym: kernel stack frames → file:line evidence.

Data flow, one module each: parse text → frames (:mod:`ksym.spec`, :mod:`ksym.parse`); locate frame →
address (:mod:`ksym.symbols`, :mod:`ksym.locate`, :mod:`ksym.image`); resolve address → inline chain
(:mod:`ksym.dwarf`, cached by :mod:`ksym.index`); present (:mod:`ksym.format`, :mod:`ksym.cli`).
The entry point is :class:`Symbolizer`.

``import ksym`` loads none of them: each name below is imported from its module on first use
(:func:`__getattr__`), so that a command loads only what its work needs.
"""

from __future__ import annotations

# typing.TYPE_CHECKING without importing typing: type checkers take any TYPE_CHECKING as true
TYPE_CHECKING = False
if TYPE_CHECKING:
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
        BuildIdMismatchError,
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

#: the module each public name comes from
_EXPORTS = {
    "DebuginfoOptions": "debuginfo",
    "EXIT_BAD_FILE": "errors",
    "EXIT_INTERNAL": "errors",
    "EXIT_NETWORK": "errors",
    "EXIT_NO_FILE": "errors",
    "EXIT_OK": "errors",
    "EXIT_UNRESOLVED": "errors",
    "EXIT_USAGE": "errors",
    "BadFileError": "errors",
    "BuildIdMismatchError": "errors",
    "DebuginfodError": "errors",
    "FileNotFoundKsymError": "errors",
    "KsymError": "errors",
    "MissingDebugInfoError": "errors",
    "SpecError": "errors",
    "SymbolNotFoundError": "errors",
    "Resolution": "model",
    "SourceLocation": "model",
    "PathMap": "pathmap",
    "PathMapError": "pathmap",
    "AddressSpec": "spec",
    "FuncSpec": "spec",
    "parse_spec": "spec",
    "Symbolizer": "symbolizer",
    "SymbolView": "symbols",
}

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
    "BuildIdMismatchError",
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


def __getattr__(name: str) -> object:
    """A public name, imported from its module the first time it is asked for (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ksym' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next access finds it without calling this again
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
