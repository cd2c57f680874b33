"""``--top``: a live view of the drop sites for a terminal, redrawn every second like top(1).

One row per drop site (reason and drop location), most drops first: the count, the rate over the last
redraw interval, the reason, the location and its file:line when a debug vmlinux symbolized it. The
counts come from the capture's :class:`~dropcapture.output.Summary`, so the view costs nothing per drop.
"""

from __future__ import annotations

import shutil
import time
from typing import IO

from .capture import CaptureStats
from .output import Summary

__all__ = ["TopView"]

_CLEAR = "\x1b[H\x1b[2J"  # cursor home, erase the screen
_HIDE_CURSOR = "\x1b[?25l"
_SHOW_CURSOR = "\x1b[?25h"


class TopView:
    """Draws ``summary``'s drop sites on ``out`` (a terminal) at most every ``interval`` seconds.

    Call :meth:`tick` often (it is cheap when no redraw is due) and :meth:`close` at the end, which
    draws the last state and gives the terminal its cursor back.
    """

    def __init__(self, out: IO[str], summary: Summary, interval: float = 1.0) -> None:
        self.out = out
        self.summary = summary
        self.interval = interval
        self.started = time.monotonic()
        self._next = self.started  # first draw at the first tick
        self._last_draw = self.started
        self._last_counts: dict[tuple[str, int], int] = {}
        self.stats: CaptureStats | None = None
        self.frames = 0
        self.out.write(_HIDE_CURSOR)

    def tick(self, stats: CaptureStats | None = None) -> bool:
        """Redraw when due; returns False (so it can serve as a ``stop`` callback of ``Capture.events``)."""
        now = time.monotonic()
        if now >= self._next:
            if stats is not None:
                self.stats = stats
            self.draw(now)
        return False

    def render(self, now: float, width: int = 132, height: int = 40) -> str:
        """The screen's text (without control sequences)."""
        counts = self.summary.site_counts()
        span = max(now - self._last_draw, 1e-9)
        rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        lines = [
            f"dropcapture --top: {self.summary.total} drops in {now - self.started:.0f}s, "
            f"{len(rows)} drop sites"
            + (f", {self.stats.lost} lost" if self.stats is not None else "")
            + f"  ({time.strftime('%H:%M:%S')}, every {self.interval:g}s, Ctrl-C to stop)",
            "",
            f"{'DROPS':>10} {'RATE/s':>9}  {'REASON':<22} {'LOCATION':<36} FILE:LINE",
        ]
        shown = max(1, height - len(lines) - 2)
        for key, n in rows[:shown]:
            site = self.summary.site(key)
            rate = (n - self._last_counts.get(key, 0)) / span
            line = f"{n:>10} {rate:>9.0f}  {site.reason:<22} {site.location:<36} {site.source_line}"
            lines.append(line)
        if len(rows) > shown:
            lines.append(f"... {len(rows) - shown} more drop sites (all of them are in the summary at exit)")
        self._last_counts = counts
        self._last_draw = now
        return "\n".join(line[:width] for line in lines)

    def draw(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        size = shutil.get_terminal_size((132, 40))
        text = self.render(now, size.columns, size.lines)
        self.out.write(_CLEAR + text + "\n")
        self.out.flush()
        self.frames += 1
        self._next = now + self.interval

    def close(self, stats: CaptureStats | None = None) -> None:
        """Draw the final state and show the cursor again."""
        if stats is not None:
            self.stats = stats
        self.draw()
        self.out.write(_SHOW_CURSOR)
        self.out.flush()
