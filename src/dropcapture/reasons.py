"""Names of the kernel's packet drop reasons, read from the running kernel.

The numbers of ``enum skb_drop_reason`` change between kernel versions, so no table is hard-coded.
Sources, in order:

1. the ``__print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, ...)`` list in the tracefs format file
   of ``skb:kfree_skb`` - exactly what ``perf``/``trace`` print;
2. BTF ``enum skb_drop_reason`` (names without the ``SKB_DROP_REASON_`` prefix);
3. nothing: reasons are shown as numbers (``REASON_12``).

Reasons of other subsystems (mac80211, openvswitch) carry the subsystem id in the upper 16 bits
(``SKB_DROP_REASON_SUBSYS_SHIFT``); they are shown as ``SUBSYS:0xNN`` with the subsystem name from BTF.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .btf import Btf
from .errors import CaptureError
from .tpformat import TracepointFormat

__all__ = ["ReasonTable", "parse_print_symbolic"]

_SYM_RE = re.compile(r"\{\s*(-?(?:0x[0-9a-fA-F]+|\d+))\s*,\s*\"([^\"]*)\"\s*\}")
_SUBSYS_SHIFT = 16


def parse_print_symbolic(print_fmt: str, field_name: str = "reason") -> dict[int, str]:
    """The {value: name} pairs of ``__print_symbolic(REC->field_name, ...)`` in a print fmt."""
    key = f"__print_symbolic(REC->{field_name},"
    start = print_fmt.find(key)
    if start < 0:
        return {}
    # up to the matching close parenthesis
    depth = 0
    end = len(print_fmt)
    for i in range(start, len(print_fmt)):
        c = print_fmt[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                end = i
                break
    return {int(v, 0): name for v, name in _SYM_RE.findall(print_fmt[start:end])}


@dataclass
class ReasonTable:
    """Map drop reason numbers to names (and back) for one kernel."""

    names: dict[int, str] = field(default_factory=dict)
    #: Where the names came from: "tracefs", "btf" or "none".
    source: str = "none"
    subsystems: dict[int, str] = field(default_factory=dict)

    @classmethod
    def from_kernel(cls, fmt: TracepointFormat | None, btf: Btf | None) -> ReasonTable:
        """Build the table from the tracepoint format, falling back to BTF, then to numbers."""
        subsystems: dict[int, str] = {}
        if btf is not None:
            try:
                for name, val in btf.enum("skb_drop_reason_subsys").items():
                    if not name.endswith("_NUM"):
                        subsystems[val] = name.removeprefix("SKB_DROP_REASON_SUBSYS_")
            except CaptureError:
                pass
        if fmt is not None:
            names = parse_print_symbolic(fmt.print_fmt)
            if names:
                return cls(names, "tracefs", subsystems)
        if btf is not None:
            try:
                enum = btf.enum("skb_drop_reason")
            except CaptureError:
                enum = {}
            if enum:
                names = {}
                for name, val in enum.items():
                    if name.startswith("SKB_DROP_REASON_"):
                        short = name[len("SKB_DROP_REASON_") :]
                    else:
                        short = name.removeprefix("SKB_")
                    names.setdefault(val, short)
                return cls(names, "btf", subsystems)
        return cls({}, "none", subsystems)

    def name(self, value: int) -> str:
        """The reason's name, e.g. ``NETFILTER_DROP``; unknown values read ``REASON_<n>``."""
        got = self.names.get(value)
        if got is not None:
            return got
        sub = value >> _SUBSYS_SHIFT
        if sub:
            return f"{self.subsystems.get(sub, f'SUBSYS{sub}')}:{value & 0xFFFF:#x}"
        return f"REASON_{value}"

    def value(self, name: str) -> int:
        """The number of reason ``name`` (case-insensitive, with or without ``SKB_DROP_REASON_``).

        :raises KeyError: no such reason on this kernel.
        """
        want = name.upper().removeprefix("SKB_DROP_REASON_")
        for val, n in self.names.items():
            if n == want:
                return val
        if want.startswith("REASON_") and want[7:].isdigit():
            return int(want[7:])
        if want.isdigit():
            return int(want)
        raise KeyError(name)
