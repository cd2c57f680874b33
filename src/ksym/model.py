"""The records ksym returns: named tuples (immutable, fields by name) with a readable ``str()``.

A :class:`Resolution` is one answer for one input (a ``func+off`` frame or an address); its ``chain``
is the inline chain, innermost first, the way faddr2line and addr2line -i print it: the first entry is
the code at the address, each later entry is the function the previous one was inlined into, located
at the call site, and the last entry is the real (out-of-line) function.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from .records import NamedTuple

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

__all__ = ["ImageResolver", "Resolution", "SourceLocation", "frozen_record"]

_T = TypeVar("_T")


def frozen_record(cls: type[_T], fields: dict[str, Any]) -> _T:
    """An instance of the frozen dataclass ``cls`` with ``fields`` (every field, by name), made without
    its ``__init__``, which sets each field through ``object.__setattr__``: the per-line records of a
    long dump (parsed lines, frames, annotated frames) are made this way."""
    new = object.__new__(cls)
    object.__setattr__(new, "__dict__", fields)
    return new


class SourceLocation(NamedTuple):
    """One level of an inline chain."""

    #: Function name as the debug info names it (``"??"`` when unknown).
    function: str
    #: Source-relative path, e.g. ``net/ipv4/ip_output.c`` (``"??"`` when unknown).
    file: str
    #: 1-based line, 0 when unknown.
    line: int
    #: Column, 0 when unknown (only the innermost level has one).
    column: int = 0
    #: DWARF line-table discriminator of the innermost level (0: none).
    discriminator: int = 0
    #: The path as the DWARF names it, before the build directory prefix is stripped.
    raw_file: str = ""
    #: True when this function was inlined into the next entry of the chain.
    inlined: bool = False
    #: elixir.bootlin.com link to the line, for the kernel version of the image (None when unknown).
    url: str | None = None
    #: elixir.bootlin.com identifier link for the function.
    ident_url: str | None = None

    def __str__(self) -> str:
        text = f"{self.function} at {self.file}:{self.line if self.line else '?'}"
        if self.discriminator:
            text += f" (discriminator {self.discriminator})"
        return text

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


class Resolution(NamedTuple):
    """The answer for one input: the symbol it falls in and the inline chain at its address."""

    #: The input as given (``__ip_local_out+222``, ``0xffffffff81845796``).
    query: str
    #: Link-time address that was looked up.
    address: int
    #: Symbol the address falls in (``None`` for a raw address outside every symbol).
    symbol: str | None = None
    #: Offset of ``address`` from the symbol start.
    offset: int | None = None
    #: Symbol size as the kernel's kallsyms sees it (distance to the next symbol), as faddr2line prints.
    size: int | None = None
    #: The offset exactly as the input spelled it (``219``, ``0xdb``); faddr2line echoes it.
    offset_text: str | None = None
    #: Inline chain, innermost first; empty when the address has no line information.
    chain: tuple[SourceLocation, ...] = ()

    @property
    def header(self) -> str:
        """The faddr2line header line, e.g. ``__ip_local_out+222/0x160:``."""
        if self.offset_text is None:
            # a raw address: name the address, then where it falls
            if self.symbol is None:
                return f"{self.address:#x}:"
            return f"{self.address:#x} ({self.symbol}+{(self.offset or 0):#x}/{(self.size or 0):#x}):"
        return f"{self.symbol}+{self.offset_text}/{(self.size or 0):#x}:"

    def __str__(self) -> str:
        lines = [self.header]
        for i, loc in enumerate(self.chain):
            lines.append(("(inlined by) " if i else "") + str(loc))
        if not self.chain:
            lines.append("?? ??:0")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "symbol": self.symbol,
            "offset": self.offset,
            "size": self.size,
            "address": f"{self.address:#x}",
            "chain": [loc.to_dict() for loc in self.chain],
        }


@runtime_checkable
class ImageResolver(Protocol):
    """What callers ask of one debug image, a vmlinux (:class:`ksym.Symbolizer`) or a module
    (:class:`ksym.modules.ModuleSymbolizer`). Addresses are the image's own: link-time addresses of a
    vmlinux; for a module, what ``addr2line -e MODULE`` takes (:meth:`symbolize`) and its placed
    addresses (:meth:`chain`)."""

    @property
    def path(self) -> Path:
        """The debug file."""
        ...

    @property
    def build_id(self) -> str | None: ...

    @property
    def has_dwarf(self) -> bool:
        """False: addresses are answered from the symbol table alone, ``func+off`` frames refused."""
        ...

    def resolve(self, frame: str) -> list[Resolution]:
        """``func+off[/size]`` (every matching symbol, as faddr2line) or a raw address."""
        ...

    def symbolize(self, address: int, query: str | None = None) -> Resolution:
        """One address: the symbol it falls in and the inline chain."""
        ...

    def chain(self, address: int) -> tuple[SourceLocation, ...]:
        """The inline chain at an address, innermost first."""
        ...

    def prefetch_frames(self, frames: Iterable[str], *, processes: int | None = None) -> int:
        """Answer these frames ahead of :meth:`resolve` (errors are left for it); how many addresses."""
        ...

    def close(self) -> None:
        """Release the file (and write what the session learnt, where there is an index)."""
        ...
