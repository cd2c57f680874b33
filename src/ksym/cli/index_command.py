"""``ksym index build VMLINUX -o FILE``: the portable index file of a debug vmlinux (:mod:`ksym.portable`,
made by :func:`ksym.portable_build.build_index`), with a progress bar on stderr when it is a terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from ..errors import EXIT_OK, EXIT_USAGE
from .options import IndexBuildOptions

__all__ = ["run_index_build"]


class _Bar:
    """One line on stderr, redrawn in place at most ten times a second: ``[#####     ]  50% 1200/2400``."""

    WIDTH = 30

    def __init__(self, label: str) -> None:
        self.label = label
        self.last = 0.0
        self.drawn = False

    def update(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.1 and done != total:
            return
        self.last = now
        filled = self.WIDTH * done // max(total, 1)
        sys.stderr.write(
            f"\r{self.label} [{'#' * filled}{' ' * (self.WIDTH - filled)}] "
            f"{100 * done // max(total, 1):3d}% {done}/{total}"
        )
        sys.stderr.flush()
        self.drawn = True

    def end(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()


def run_index_build(opts: IndexBuildOptions, out: Callable[[str], None], err: Callable[[str], None]) -> int:
    """Build the file; one line on stdout says what was written. Errors are raised
    (:class:`ksym.errors.KsymError`)."""
    from ..portable_build import build_index

    if opts.jobs is not None and opts.jobs < 1:
        err("ksym index build: error: --jobs must be at least 1")
        return EXIT_USAGE
    bar = _Bar("ksym index build") if opts.progress or sys.stderr.isatty() else None
    try:
        got = build_index(
            opts.vmlinux,
            opts.output,
            processes=opts.jobs,
            progress=bar.update if bar is not None else None,
            modules=opts.modules,
        )
    finally:
        if bar is not None:
            bar.end()
    out(
        f"{got.path}: {got.size} bytes, {got.units} units, {got.code_chunks} code chunks, build id "
        f"{got.build_id or 'none'}, "
        + (f"{got.modules} modules, " if opts.modules is not None else "")
        + f"{got.seconds:.1f} s with {got.processes} processes"
    )
    return EXIT_OK
