"""Misses are data: a frame no symbol answers carries a :class:`ksym.errors.SkipReason` per symbol passed
over, of a :class:`ksym.errors.SkipKind`, and the command routes each by its kind (scripts/faddr2line's
``skipping ...`` lines on stdout, ``bad ...`` lines on stderr), never by its text. Checked on the real
Debian 6.1 vmlinux against the kernel's own scripts/faddr2line, run in the test.

The frames are real symbols of that vmlinux: ``c_start`` (three static functions of that name, 0x50, 0x40
and 0x30 bytes), ``state_show`` (four), ``ftrace_ops_list_func`` (an alias of zero size: the script's
``bad symbol size``) and ``__ip_local_out`` with an offset that wraps its address to 0 (``bad address``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from anchors import faddr2line, find_faddr2line, missing

from ksym import Symbolizer, SymbolNotFoundError
from ksym.annotate import MISFIT_SIZE, annotate
from ksym.errors import SkipKind, SkipReason

pytestmark = [pytest.mark.vmlinux, pytest.mark.usefixtures("private_cache")]

FADDR2LINE = find_faddr2line()

#: frame -> the kinds of its skip reasons, in the script's order
MISSES = {
    "c_start+0x10/0x99": [SkipKind.SIZE_MISMATCH] * 3,
    "c_start+0x60": [SkipKind.OFFSET_BEYOND_SIZE] * 3,
    "state_show+0x50/0x40": [SkipKind.OFFSET_BEYOND_SIZE, SkipKind.SIZE_MISMATCH, SkipKind.SIZE_MISMATCH,
                             SkipKind.SIZE_MISMATCH],
    "ftrace_ops_list_func+0x0": [SkipKind.BAD_SYMBOL_SIZE],
}



@pytest.fixture(scope="module")
def sym(vmlinux: Path) -> Iterator[Symbolizer]:
    with Symbolizer(vmlinux) as s:
        yield s


@pytest.fixture(scope="module")
def wrap_to_zero(sym: Symbolizer) -> str:
    """``__ip_local_out`` plus the offset that wraps its address to 0."""
    (m,) = sym.resolve("__ip_local_out+0")
    return f"__ip_local_out+{(1 << 64) - m.address:#x}"


def _miss(sym: Symbolizer, frame: str) -> SymbolNotFoundError:
    with pytest.raises(SymbolNotFoundError) as ei:
        sym.resolve(frame)
    return ei.value


def test_each_symbol_passed_over_has_a_kind(sym: Symbolizer, wrap_to_zero: str) -> None:
    for frame, kinds in MISSES.items():
        exc = _miss(sym, frame)
        assert [r.kind for r in exc.reasons] == kinds, frame
        assert all(isinstance(r, SkipReason) and r.stops == (r.kind is SkipKind.BAD_SYMBOL_SIZE)
                   for r in exc.reasons)
    (bad,) = _miss(sym, wrap_to_zero).reasons
    assert bad.kind is SkipKind.BAD_ADDRESS and bad.stops
    assert bad.text == f"bad address: 0x{(1 << 64) - int(wrap_to_zero.split('+')[1], 16):016x} + " \
        + wrap_to_zero.split("+")[1]
    assert len(sym.resolve("c_start+0x10/0x50")) == 1  # not a miss: one c_start is 0x50 long


def _ksym(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KSYM_VMLINUX"}
    return subprocess.run([sys.executable, "-m", "ksym", *args], capture_output=True, text=True, check=False,
                          env={**env, "LC_ALL": "C"}, timeout=300)


def test_the_reasons_are_faddr2lines_lines(vmlinux: Path, sym: Symbolizer, wrap_to_zero: str) -> None:
    """Each reason's text is the script's line, and ``ksym faddr2line`` prints each where the script does
    (by kind): stdout byte for byte, the same ``bad ...`` and ``no match`` lines on stderr."""
    if FADDR2LINE is None:
        missing("scripts/faddr2line of linux-source-6.1 not found: run tools/fetch-testdata.sh")
    assert FADDR2LINE is not None
    frames = [*MISSES, wrap_to_zero]
    ref = faddr2line(vmlinux, frames, FADDR2LINE)
    skipped = [r.text for f in frames for r in _miss(sym, f).reasons if not r.stops]
    stopped = [r.text for f in frames for r in _miss(sym, f).reasons if r.stops]
    assert ref.stdout == "".join(line + "\n" for line in skipped)
    assert [ln for ln in ref.stderr.splitlines() if ln.startswith("bad ")] == stopped
    got = _ksym("faddr2line", str(vmlinux), *frames)
    assert got.returncode == 1, got.stderr
    assert got.stdout == ref.stdout
    assert [ln for ln in got.stderr.splitlines() if ln.startswith(("bad ", "no match"))] == \
        [ln for ln in ref.stderr.splitlines() if ln.startswith(("bad ", "no match"))]


def test_annotate_reads_the_reasons(sym: Symbolizer) -> None:
    """An annotated frame whose offset fits no symbol of its name: unresolved, MISFIT_SIZE, and its reason
    holds the skip lines."""
    result = annotate(" c_start+0x60/0x50\n", sym)
    (af,) = result.frames
    assert not af.resolved and af.misfit == MISFIT_SIZE
    texts = [r.text for r in _miss(sym, "c_start+0x60/0x50").reasons]
    assert af.reason is not None and af.reason.endswith("; ".join(texts))
