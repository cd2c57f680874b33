"""Presenting drops: the text table, JSON lines, the offline save format, and the exit summary.

Save format (``--save FILE``), read offline by ``ksym annotate`` on another machine::

    # dropcapture capture v1
    # release: 6.18.44-fc-v782
    # build-id: 85c7e4e2ed76f4417e8aaad7c6b040d2bb897a26
    # text-address: 0xffffffff81000000
    # Kernel Offset: 0x0 from 0xffffffff81000000
    # reasons: tracefs
    # started: 2026-11-25T20:21:12.123456Z

    drop 1 time=2026-11-25T20:21:13.000001Z pid=4211 tid=4211 comm="curl" cpu=1 proto=TCP ...
    Call Trace:
     [<ffffffff8188a2dc>] __ip_local_out+0x11c/0x1d0
     ...

Header lines start with ``#``; each event is a ``drop N key=value ...`` line followed by a
``Call Trace:`` line and one frame per line in the classic oops style ``[<address>] func+0xoff/0xsize``
(address only, ``[<address>] ?``, when kallsyms has no symbol). A blank line ends an event.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import IO

from .capture import CaptureStats, KernelInfo
from .events import DropEvent

__all__ = ["SAVE_MAGIC", "SaveWriter", "Summary", "TextFormatter", "iso_time"]

SAVE_MAGIC = "# dropcapture capture v1"
_DEFAULT_TEXT = 0xFFFFFFFF81000000  # x86-64 link address of _text


def iso_time(ts: float) -> str:
    """``2026-11-25T20:21:13.000001Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"


class TextFormatter:
    """The human-readable table: one line per drop, then its stack (unless ``stacks`` is False)."""

    COLUMNS = (
        f"{'TIME':<9} {'PID':<7} {'COMM':<15} {'CPU':>3} {'PROTO':<6} {'SRC':<28}    {'DST':<28} "
        f"{'REASON':<16} LOCATION"
    )

    def __init__(self, stacks: bool = True) -> None:
        self.stacks = stacks

    def header(self) -> str:
        return self.COLUMNS

    def line(self, ev: DropEvent) -> str:
        t = time.strftime("%H:%M:%S", time.localtime(ev.timestamp))
        return (
            f"{t:<9} {ev.pid:<7} {ev.comm:<15} {ev.cpu:>3} {ev.protocol:<6} {ev.endpoint('src'):<28} -> "
            f"{ev.endpoint('dst'):<28} {ev.reason_name:<16} {ev.location_text}"
        )

    def format(self, ev: DropEvent) -> str:
        lines = [self.line(ev)]
        if self.stacks:
            if ev.stack_error:
                lines.append(f"    [Missed Kernel Stack: {ev.stack_error}]")
            for fr in ev.stack:
                text = f"    {fr!s}"
                if fr.source:
                    text = f"{text:<44} {fr.source[0]}"
                    lines.extend([text] + [f"{'':<44} {s}" for s in fr.source[1:]])
                else:
                    lines.append(text)
            lines.append("")
        return "\n".join(lines)

    @staticmethod
    def json(ev: DropEvent) -> str:
        return json.dumps(ev.to_dict(), separators=(",", ":"))


def _kv(value: object) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in '"=\\' for c in text):
        return json.dumps(text)
    return text


class SaveWriter:
    """Writes the offline format described in the module docstring."""

    def __init__(self, out: IO[str], kernel: KernelInfo | None, reasons_source: str = "") -> None:
        self.out = out
        self.n = 0
        k = kernel
        lines = [
            SAVE_MAGIC,
            f"# release: {k.release if k else '?'}",
            f"# build-id: {(k.build_id if k else None) or '?'}",
            f"# text-address: {hex(k.text_address) if k and k.text_address else '?'}",
            # the panic's own wording, which ksym (find_kaslr_offset) reads
            f"# Kernel Offset: {hex(k.kaslr_offset)} from {_DEFAULT_TEXT:#x}"
            if k and k.kaslr_offset is not None
            else "# Kernel Offset: unknown",
            f"# reasons: {reasons_source or '?'}",
            f"# started: {iso_time(time.time())}",
            "",
        ]
        out.write("\n".join(lines) + "\n")

    def write(self, ev: DropEvent) -> None:
        self.n += 1
        fields = [
            ("time", iso_time(ev.timestamp)),
            ("pid", ev.pid),
            ("tid", ev.tid),
            ("comm", json.dumps(ev.comm)),
            ("cpu", ev.cpu),
            ("proto", ev.protocol),
            ("src", ev.endpoint("src")),
            ("dst", ev.endpoint("dst")),
            ("reason", ev.reason_name),
            ("reason_code", ev.reason),
            ("location", str(ev.location_symbol) if ev.location_symbol else f"{ev.location:#x}"),
            ("location_addr", f"{ev.location:#x}"),
            ("stack_id", ev.stack_id),
        ]
        parts = [f"drop {self.n}"]
        for key, val in fields:
            parts.append(f"{key}={val if key == 'comm' else _kv(val)}")
        lines = [" ".join(parts), "Call Trace:"]
        if ev.stack_error:
            lines.append(f" [Missed Kernel Stack: {ev.stack_error}]")
        for fr in ev.stack:
            lines.append(f" [<{fr.address:016x}>] {fr.oops if fr.symbol else '?'}")
        self.out.write("\n".join(lines) + "\n\n")


class Summary:
    """Counts for the exit summary: drops by reason, by stack, and the capture counters."""

    def __init__(self, top: int = 5) -> None:
        self.top = top
        self.by_reason: Counter[str] = Counter()
        self._by_stack_id: Counter[int] = Counter()
        self._stack_text: dict[int, tuple[str, ...]] = {}
        self.total = 0

    def add(self, ev: DropEvent) -> None:
        self.total += 1
        self.by_reason[ev.reason_name] += 1
        # keyed by stack id (a stack map id always names the same stack); text made once per id
        self._by_stack_id[ev.stack_id] += 1
        if ev.stack_id not in self._stack_text:
            text = tuple(str(f) for f in ev.stack) or (f"[Missed Kernel Stack: {ev.stack_error}]",)
            self._stack_text[ev.stack_id] = text

    @property
    def by_stack(self) -> Counter[tuple[str, ...]]:
        """Drops per distinct stack (as ``func+0xoff`` text, innermost first)."""
        out: Counter[tuple[str, ...]] = Counter()
        for sid, n in self._by_stack_id.items():
            out[self._stack_text[sid]] += n
        return out

    def render(self, stats: CaptureStats | None, elapsed: float) -> str:
        """The summary text; ``elapsed`` is the time traced. Top stacks are printed whole, one frame a line."""
        lines = [f"--- dropcapture summary: {self.total} drops in {elapsed:.1f}s ---"]
        if stats is not None:
            lines.append(
                f"kernel: {stats.hits} kfree_skb hits, {stats.filtered} filtered, {stats.emitted} emitted = "
                f"{stats.delivered} delivered + {stats.lost} lost ({stats.lost_full} buffer full, "
                f"{stats.lost_at_exit} unread at exit)"
            )
        if self.by_reason:
            lines.append("drops by reason:")
            for name, n in self.by_reason.most_common():
                lines.append(f"  {n:>8}  {name}")
        by_stack = self.by_stack
        if by_stack:
            lines.append(f"top stacks (of {len(by_stack)}):")
            for stack, n in by_stack.most_common(self.top):
                lines.append(f"  {n:>8}  {stack[0]}")
                lines.extend(f"  {'':>8}  {frame}" for frame in stack[1:])
        return "\n".join(lines)

    def to_dict(self, stats: CaptureStats | None, elapsed: float) -> dict[str, object]:
        return {
            "summary": {
                "drops": self.total,
                "seconds": round(elapsed, 3),
                "by_reason": dict(self.by_reason.most_common()),
                "top_stacks": [{"count": n, "stack": list(s)} for s, n in self.by_stack.most_common(self.top)],
                "kernel": None
                if stats is None
                else {
                    "hits": stats.hits,
                    "filtered": stats.filtered,
                    "emitted": stats.emitted,
                    "delivered": stats.delivered,
                    "lost": stats.lost,
                    "lost_full": stats.lost_full,
                    "lost_at_exit": stats.lost_at_exit,
                },
            }
        }
