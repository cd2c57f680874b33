"""Parse frame text → what to look up: ``func+off[/size]`` the way faddr2line reads it, or an address.

faddr2line splits ``func+off/size`` with bash parameter expansion: the name is everything before the
*last* ``+``, the offset everything after the *first* ``+`` up to the last ``/``, the size everything
after the first ``/``; numbers follow bash arithmetic: ``0x`` hex, a leading ``0`` octal, else decimal.
The offset text is echoed unchanged in the header (``__ip_local_out+219/0x160:``).
"""

from __future__ import annotations

import re

from .errors import SpecError
from .records import NamedTuple

__all__ = ["AddressSpec", "FuncSpec", "parse_number", "parse_spec"]

#: a raw address: ``0x`` and any number of hex digits (``0x5e0``: a small program's or an object's), or
#: 16 bare hex digits (``ffffffff8184586e``: never a symbol name there)
_ADDR_RE = re.compile(r"^(?:0[xX][0-9a-fA-F]+|[0-9a-fA-F]{16})$")
_NAME_RE = re.compile(r"^[A-Za-z_.$][\w.$@-]*$")


class FuncSpec(NamedTuple):
    """``name+offset[/size]``."""

    text: str
    name: str
    offset: int
    offset_text: str
    size: int | None = None
    size_text: str | None = None


class AddressSpec(NamedTuple):
    """A raw (link-time) address such as ``0xffffffff81845790``."""

    text: str
    address: int


Spec = FuncSpec | AddressSpec


def parse_number(text: str) -> int:
    """A number as bash arithmetic reads it: ``0x1f`` hex, ``017`` octal, ``219`` decimal."""
    t = text.strip()
    neg = t.startswith("-")
    if neg or t.startswith("+"):
        t = t[1:]
    if re.fullmatch(r"0[xX][0-9a-fA-F]+", t):
        v = int(t, 16)
    elif re.fullmatch(r"0[0-7]*", t):
        v = int(t, 8) if len(t) > 1 else 0
    elif re.fullmatch(r"[1-9][0-9]*", t):
        v = int(t)
    else:
        raise ValueError(f"not a number: {text!r}")
    return -v if neg else v


def parse_spec(text: str) -> Spec:
    """Parse one input; raises :class:`SpecError` with faddr2line's message when malformed."""
    t = text.strip()
    if "+" not in t:
        if _ADDR_RE.match(t):
            address = int(t, 16)
            if address >> 64:
                raise SpecError(f"bad func+offset {text}: address beyond 64 bits", text)
            return AddressSpec(text, address)
        raise SpecError(f"bad func+offset {text}", text)
    name = t[: t.rfind("+")]
    rest = t[t.find("+") + 1 :]
    off_text = rest[: rest.rfind("/")] if "/" in rest else rest
    size_text = t[t.find("/") + 1 :] if "/" in t else None
    if not name or not off_text:
        raise SpecError(f"bad func+offset {text}", text)
    if not _NAME_RE.match(name):
        raise SpecError(f"bad func+offset {text}: {name!r} is not a symbol name", text)
    try:
        offset = parse_number(off_text)
    except ValueError:
        raise SpecError(f"bad func+offset {text}: offset {off_text!r} is not a number", text) from None
    size = None
    if size_text is not None:
        try:
            size = parse_number(size_text)
        except ValueError:
            raise SpecError(f"bad func+offset {text}: size {size_text!r} is not a number", text) from None
    return FuncSpec(text, name, offset, off_text, size, size_text)
