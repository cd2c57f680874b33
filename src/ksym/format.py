"""Present: resolutions as faddr2line's text or as JSON.

Names and paths come from debug files, which are untrusted: text output shows them through
:func:`terminal_text`, which turns control characters into visible escapes (``\\x1b``), so a crafted
name cannot move the cursor, set the window title or forge output lines. Ordinary names pass unchanged,
so the text stays byte-identical to faddr2line's.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

from .model import Resolution, SourceLocation

__all__ = [
    "faddr2line_lines",
    "frame_json",
    "location_text",
    "output_file",
    "resolution_json",
    "terminal_text",
    "write_output",
]

#: C0 controls (tab and newline included), DEL, C1 controls, and the Unicode line separators and
#: bidirectional overrides that reorder or break what a terminal shows.
_UNSAFE_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(mo: re.Match[str]) -> str:
    n = ord(mo.group())
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"


def terminal_text(text: str, keep: str = "") -> str:
    """``text`` safe to print on a terminal: control characters (C0 including tab and newline, DEL, C1,
    Unicode line separators and bidi overrides) as visible escapes, ``\\x1b``, ``\\x07``, ``\\u202e``;
    the characters in ``keep`` (e.g. ``"\\t"``) stay. Text without them is returned as it is."""
    if _UNSAFE_RE.search(text) is None:
        return text
    if keep:
        return _UNSAFE_RE.sub(lambda mo: mo.group() if mo.group() in keep else _escape(mo), text)
    return _UNSAFE_RE.sub(_escape, text)


def location_text(loc: SourceLocation) -> str:
    """``str(loc)`` (``func at file:line``) with the function and file shown through :func:`terminal_text`."""
    text = f"{terminal_text(loc.function)} at {terminal_text(loc.file)}:{loc.line if loc.line else '?'}"
    if loc.discriminator:
        text += f" (discriminator {loc.discriminator})"
    return text


def faddr2line_lines(res: Resolution, links: bool = False) -> list[str]:
    """The lines faddr2line prints for one match: header, innermost location, ``(inlined by)`` lines,
    names shown through :func:`terminal_text`; with ``links`` each location line ends with its URL.

    An address with no debug information prints as addr2line does: ``?? ??:0``.
    """
    out = [terminal_text(res.header)]
    for i, loc in enumerate(res.chain):
        text = ("(inlined by) " if i else "") + location_text(loc)
        out.append(f"{text}  {terminal_text(loc.url)}" if links and loc.url else text)
    if not res.chain:
        out.append("?? ??:0")
    return out


def resolution_json(res: Resolution) -> dict[str, Any]:
    return res.to_dict()


def frame_json(query: str, matches: Sequence[Resolution], error: str | None = None) -> str:
    """One JSON object for one input: the first match's fields at the top, every match in ``matches``."""
    import json  # only here: plain text output never needs it

    obj: dict[str, Any] = {"query": query, "resolved": bool(matches), "error": error}
    if matches:
        first = matches[0].to_dict()
        first.pop("query", None)
        obj.update(first)
    obj["matches"] = [m.to_dict() for m in matches]
    return json.dumps(obj, sort_keys=False)


@contextlib.contextmanager
def output_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new contents to: a temporary beside it, renamed over it when the
    ``with`` block ends without an error and deleted otherwise, so a failed run leaves no half output."""
    head, name = os.path.split(os.fspath(path))
    tmp = os.path.join(head, f".{name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            yield fh
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def write_output(path: str | os.PathLike[str], payload: str) -> None:
    """Write ``payload`` to ``path`` (UTF-8; undecodable input bytes of the text forms written back as
    they were) through :func:`output_file`."""
    with output_file(path) as fh:
        fh.write(payload.encode("utf-8", "surrogateescape"))
