"""Present: resolutions as faddr2line's text or as JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .model import Resolution

__all__ = ["faddr2line_lines", "frame_json", "resolution_json"]


def faddr2line_lines(res: Resolution) -> list[str]:
    """The lines faddr2line prints for one match: header, innermost location, ``(inlined by)`` lines.

    An address with no debug information prints as addr2line does: ``?? ??:0``.
    """
    return str(res).split("\n")


def resolution_json(res: Resolution) -> dict[str, Any]:
    return res.to_dict()


def frame_json(query: str, matches: Sequence[Resolution], error: str | None = None) -> str:
    """One JSON object for one input: the first match's fields at the top, every match in ``matches``."""
    obj: dict[str, Any] = {"query": query, "resolved": bool(matches), "error": error}
    if matches:
        first = matches[0].to_dict()
        first.pop("query", None)
        obj.update(first)
    obj["matches"] = [m.to_dict() for m in matches]
    return json.dumps(obj, sort_keys=False)
