"""Wall time and peak RSS of ksym and of the anchors, measured in one run on one machine.

Every external command is timed with ``os.wait4`` (wall clock from fork to reap, ``ru_maxrss`` of the
process and its waited-for children: for scripts/faddr2line, the largest of its readelf/addr2line
children). Each row is the median of ``runs`` repetitions.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ksym import Symbolizer

# loads the vmlinux into drgn as the kernel module of a host program (both drgn scripts start so)
_DRGN_LOAD = r"""
import drgn
import struct
def kernel_range(path):
    # drgn takes the load bias from the range start and the first PT_LOAD: give it the kernel-half span
    with open(path, "rb") as f:
        head = f.read(64)
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        ph = f.read(phentsize * phnum)
    segs = [struct.unpack_from("<IIQQQQQQ", ph, i * phentsize) for i in range(phnum)]
    spans = [(p[3], p[3] + p[6]) for p in segs if p[0] == 1 and p[3] >= 0xffff000000000000]
    return min(a for a, _ in spans), max(b for _, b in spans)
prog = drgn.Program(drgn.host_platform)
mod = prog.extra_module("vmlinux", create=True)
mod.address_range = kernel_range(sys.argv[1])
mod.try_file(sys.argv[1], force=True)
"""

DRGN_SCRIPT = r"""
import sys, time
""" + _DRGN_LOAD + r"""if len(sys.argv) > 2:
    addrs = [int(a, 16) for a in open(sys.argv[2]).read().split()]
else:
    addrs = [int(a, 16) for a in sys.stdin.read().split()]
out = []
for a in addrs:
    try:
        out.append(str(prog.source_location(a)))
    except LookupError:
        out.append("??")
sys.stdout.write("\n".join(out) + "\n")
"""

DRGN_INPROCESS = r"""
import sys, time, json
""" + _DRGN_LOAD + r"""addrs = [int(a, 16) for a in open(sys.argv[2]).read().split()]
def one_pass():
    t = time.perf_counter()
    for a in addrs:
        try:
            str(prog.source_location(a))
        except LookupError:
            pass
    return (time.perf_counter() - t) / len(addrs) * 1e6
first = one_pass()
warm = sorted(one_pass() for _ in range(int(sys.argv[3])))
print(json.dumps({"first": first, "warm": warm[len(warm) // 2]}))
"""


@dataclass
class Measure:
    """Median wall seconds and peak RSS (MB) over the runs; ``note`` says how it was obtained."""

    seconds: float | None
    rss_mb: float | None
    runs: int = 0
    note: str = ""
    samples: list[float] = field(default_factory=list)


def run_timed(cmd: Sequence[str], stdin_text: str | None = None, env: dict[str, str] | None = None,
              ) -> tuple[float, float, int, str]:
    """Run ``cmd``; return (wall seconds, peak RSS MB, exit status, stdout).

    The peak RSS comes from GNU time, a small process that forks the command: Linux carries the
    high-water RSS of a forked copy across exec, so wait4() on a child of this (large) Python process
    would report this process's size instead."""
    timer = shutil.which("time") if os.path.exists("/usr/bin/time") else None
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as inp, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r") as rss_file:
        if stdin_text is not None:
            inp.write(stdin_text.encode())
            inp.seek(0)
        full = ["/usr/bin/time", "-f", "%M", "-o", rss_file.name, *cmd] if timer else list(cmd)
        t = time.perf_counter()
        proc = subprocess.Popen(full, stdin=inp, stdout=out, stderr=err,
                                env={**os.environ, "LC_ALL": "C", **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
        if proc.returncode not in (0, 1):
            err.seek(0)
            sys.stderr.write(err.read().decode(errors="replace")[-2000:])
        rss_mb = usage.ru_maxrss / 1024.0
        if timer:
            lines = [ln for ln in rss_file.read().splitlines() if ln.strip().isdigit()]
            if lines:
                rss_mb = int(lines[-1]) / 1024.0
    return wall, rss_mb, proc.returncode, text


def median_of(runs: int, make: Callable[[int], tuple[Sequence[str], str | None]],
              check: Callable[[int, str], None] | None = None) -> Measure:
    """Median over ``runs`` of the command ``make(i)`` returns (``i`` lets a run prepare fresh state)."""
    walls: list[float] = []
    rss: list[float] = []
    for i in range(runs):
        cmd, stdin_text = make(i)
        wall, mb, status, out = run_timed(cmd, stdin_text)
        if check is not None:
            try:
                check(status, out)
            except RuntimeError as exc:
                raise RuntimeError(f"{' '.join(cmd)[:200]}: {exc}") from None
        walls.append(wall)
        rss.append(mb)
    return Measure(statistics.median(walls), statistics.median(rss), runs, samples=walls)


def ksym_cmd(vmlinux: Path, cache: Path, frames: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "ksym", "resolve", "--vmlinux", str(vmlinux), "--cache-dir", str(cache),
            *frames]


def tool_cmds(vmlinux: Path) -> dict[str, Callable[[list[int]], tuple[list[str], str | None]]]:
    """Per anchor: addresses -> (argv, stdin) resolving them with inline chains in ONE process."""
    v = str(vmlinux)

    def lines(addrs: list[int]) -> str:
        return "".join(f"{a:#x}\n" for a in addrs)

    return {
        "addr2line -fi": lambda a: (["addr2line", "-f", "-i", "-e", v], lines(a)),
        "llvm-symbolizer": lambda a: (["llvm-symbolizer", "--inlines", "--functions=linkage", f"--obj={v}"],
                                      lines(a)),
        "eu-addr2line -fi": lambda a: (["eu-addr2line", "-f", "-i", "-e", v, *[f"{x:#x}" for x in a]], None),
    }


def in_process_us(vmlinux: Path, cache: Path, frames: list[str], runs: int) -> tuple[float, float]:
    """ksym in-process µs per frame: first pass over ``frames`` with a warm on-disk index, then the
    median of ``runs`` further passes (everything cached)."""
    sym = Symbolizer(vmlinux, cache_dir=cache)
    t = time.perf_counter()
    for f in frames:
        sym.resolve(f)
    first = (time.perf_counter() - t) / len(frames) * 1e6
    warm: list[float] = []
    for _ in range(runs):
        t = time.perf_counter()
        for f in frames:
            sym.resolve(f)
        warm.append((time.perf_counter() - t) / len(frames) * 1e6)
    sym.close()
    return first, statistics.median(warm)

