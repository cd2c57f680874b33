#!/usr/bin/env python3
"""Issue 14's resolve benchmark: ``ksym resolve`` against llvm-symbolizer and addr2line, in one run.

    python bench/resolve_speed.py --python /path/to/venv/bin/python [--vmlinux V] [--runs 7]

Every row is a whole process, timed from fork to reap with ``os.wait4`` (wall clock, and ``ru_maxrss``
as the peak RSS); the value is the median of ``--runs`` repetitions, and the rows are interleaved
(every repetition runs each row once) so that a slow stretch of a shared machine falls on all of them.

* llvm-symbolizer (``--inlines --functions=linkage``) and addr2line (``-f -i``): one address, then 382
  addresses, all on stdin to one process;
* ``ksym resolve`` with a warm index (an earlier run over the same 382 frames): one ``sym+0xoff`` frame,
  then the 382 frames as arguments;
* ``ksym resolve`` first-ever: one frame with a new, empty ``--cache-dir`` every run.

The 382 frames are return addresses (the instruction after a ``call``) in distinct FUNC symbols of
``.text`` whose names are unique, drawn with a fixed seed, written ``sym+0xoff``; the anchors get the
same addresses. ksym runs with ``--python`` (a plain venv with ksym installed: its ``ksym`` script when
there is one beside the interpreter, else ``python -m ksym``). The page cache is warm for every tool.
The log is appended to the day's ``bench/results/resolve-speed-<date>.md`` (``--out FILE``: written to FILE).

This process imports nothing of ksym (the frames are drawn by a child running ``--python``): a child's
``ru_maxrss`` can carry this process's own size, which stays far below every tool's.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.results import append_log, load_average

N_FRAMES = 382
SEED = 14
#: the issue's targets: ksym's wall time over the anchor's for the same addresses
TARGET_ONE = 0.5  # one warm frame / llvm-symbolizer, one address
TARGET_MANY = 0.3  # 382 warm frames / llvm-symbolizer, 382 addresses
TARGET_FIRST = 1.0  # first-ever frame / addr2line, one address

# Run by --python: prints "address name+0xoff" lines. Needs only capstone (a dependency of ksym) and the
# standard library, so that it does not lean on ksym's internals.
SAMPLER = r"""
import random, struct, sys
import capstone

path, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path, "rb") as f:
    data = f.read(64)
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        sys.exit(f"{path}: not a little-endian ELF64 file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    f.seek(shoff)
    raw = f.read(shentsize * shnum)
    shdrs = [struct.unpack_from("<IIQQQQIIQQ", raw, i * shentsize) for i in range(shnum)]

    def section(i):
        f.seek(shdrs[i][4])
        return f.read(shdrs[i][5])

    names = section(shstrndx)
    by_name = {names[h[0]:names.index(b"\0", h[0])].decode(): i for i, h in enumerate(shdrs)}
    symtab = section(by_name[".symtab"])
    strtab = section(shdrs[by_name[".symtab"]][6])
    text_i = by_name[".text"]
    text = shdrs[text_i]
    count_by_name = {}
    funcs = []
    for off in range(0, len(symtab), 24):
        name_off, info, _other, shndx, value, size = struct.unpack_from("<IBBHQQ", symtab, off)
        if info & 0xF != 2 or not name_off:
            continue
        name = strtab[name_off:strtab.index(b"\0", name_off)].decode()
        count_by_name[name] = count_by_name.get(name, 0) + 1
        if shndx == text_i and size:
            funcs.append((value, size, name))
    funcs = sorted(set(funcs))
    random.Random(seed).shuffle(funcs)
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.skipdata = True
    rng = random.Random(seed + 1)
    picked = 0
    for value, size, name in funcs:
        if count_by_name[name] != 1:
            continue
        f.seek(text[4] + value - text[3])
        code = f.read(size)
        rets = [i.address + i.size for i in md.disasm(code, value) if i.mnemonic == "call"]
        rets = [r for r in rets if r < value + size]
        if not rets:
            continue
        r = rng.choice(rets)
        print(f"{r:#x} {name}+{r - value:#x}")
        picked += 1
        if picked == count:
            break
if picked < count:
    sys.exit(f"{path}: only {picked} FUNC symbols with a call found")
"""


@dataclass
class Row:
    """One benchmark row: how to run it, and what its runs measured."""

    name: str
    tool: str
    what: str
    make: Callable[[int], tuple[list[str], str | None]]  # run index -> (argv, stdin)
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpus)

    @property
    def rss(self) -> float:
        return statistics.median(self.rss_mb)


def run_timed(cmd: Sequence[str], stdin_text: str | None) -> tuple[float, float, float, int, str, str]:
    """Run ``cmd`` to its end: (wall seconds, CPU seconds (user + system), peak RSS MB, exit status,
    stdout, stderr)."""
    with tempfile.TemporaryFile() as inp, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        if stdin_text is not None:
            inp.write(stdin_text.encode())
            inp.seek(0)
        env = {**os.environ, "LC_ALL": "C"}
        t = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdin=inp, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return (wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0, proc.returncode, out.read().decode(errors="replace"),
                err.read().decode(errors="replace"))


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        sys.exit(f"resolve_speed: {name} not found on PATH (install it: binutils for addr2line, llvm for "
                 "llvm-symbolizer)")
    return path


def ksym_command(python: str) -> list[str]:
    """The ksym command of ``python``'s environment: its ``ksym`` script if there is one, else -m."""
    script = Path(python).parent / "ksym"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [python, "-m", "ksym"]


def ksym_location(python: str) -> str:
    p = subprocess.run([python, "-c", "import ksym, os; print(os.path.dirname(ksym.__file__))"],
                       capture_output=True, text=True, check=False)
    return p.stdout.strip() or "?"


def draw_frames(python: str, vmlinux: Path, count: int, seed: int) -> list[tuple[int, str]]:
    p = subprocess.run([python, "-c", SAMPLER, str(vmlinux), str(count), str(seed)],
                       capture_output=True, text=True, check=False)
    if p.returncode:
        sys.exit(f"resolve_speed: drawing the frames failed: {p.stderr.strip()[-500:]}")
    out = []
    for line in p.stdout.splitlines():
        addr, frame = line.split()
        out.append((int(addr, 16), frame))
    return out


def version_of(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30)
    except OSError:
        return "?"
    lines = [ln.strip() for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]
    return next((ln for ln in lines if any(c.isdigit() for c in ln)), lines[0] if lines else "?")


def git(*a: str) -> str:
    p = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, check=False)
    return p.stdout.strip() or "?"


def dirty() -> bool:
    p = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                       text=True, check=False)
    return bool(p.stdout.strip())


class Setup(NamedTuple):
    """What the lookup benchmarks (this one, bench/index_file.py) start from."""

    vmlinux: Path
    #: the interpreter that runs ksym, and the ksym command of its environment
    python: str
    ksym: list[str]
    llvm: str
    #: the :data:`N_FRAMES` frames drawn with :data:`SEED`: the addresses and their ``sym+0xoff`` frames
    addrs: list[int]
    frames: list[str]


def set_up(script: str, vmlinux: Path | None, python: str) -> Setup:
    """The vmlinux (default: the test data's), the interpreter ``python`` and its ksym command,
    llvm-symbolizer, and the frames; ``script`` names the benchmark in the message that ends it when
    one of them is missing."""
    if vmlinux is None:
        sys.path.insert(0, str(REPO / "tests"))
        from anchors import find_test_vmlinux

        vmlinux = find_test_vmlinux()
        if vmlinux is None:
            sys.exit(f"{script}: no test vmlinux: pass --vmlinux or run tools/fetch-testdata.sh")
    if not vmlinux.is_file():
        sys.exit(f"{script}: {vmlinux}: no such file")
    found = shutil.which(python) or python
    if not os.access(found, os.X_OK):
        sys.exit(f"{script}: {python}: not an executable interpreter")
    llvm = need_tool("llvm-symbolizer")
    drawn = draw_frames(found, vmlinux, N_FRAMES, SEED)
    return Setup(vmlinux, found, ksym_command(found), llvm, [a for a, _ in drawn], [f for _, f in drawn])


class Runs(NamedTuple):
    """How the rows' runs went: the load averages before and after, and how long they took."""

    load_before: str
    load_after: str
    seconds: float


def run_rows(script: str, rows: Sequence[Row], runs: int,
             after: Callable[[Row, int], None] | None = None) -> Runs:
    """Run every row ``runs`` times after one uncounted round that warms the page cache, interleaved
    (every round runs each row once), recording each counted run in its row; ``after`` is called with
    the row and the round once each run is done. A run that fails ends the benchmark."""
    load_before = load_average()
    started = time.monotonic()
    for i in range(-1, runs):
        for row in rows:
            cmd, stdin_text = row.make(i)
            wall, cpu, rss, status, _out, err = run_timed(cmd, stdin_text)
            if status != 0:
                sys.exit(f"{script}: {row.tool} ({row.what}) exited {status}: {err.strip()[-500:]}")
            if after is not None:
                after(row, i)
            if i >= 0:
                row.walls.append(wall)
                row.cpus.append(cpu)
                row.rss_mb.append(rss)
    return Runs(load_before, load_average(), time.monotonic() - started)


def rows_table(rows: Sequence[Row]) -> list[str]:
    """The rows' runs as a markdown table: each row's median wall and CPU time, every run's wall time,
    and its median peak RSS."""
    lines = ["| tool | input | wall ms (median) | every run, ms | CPU ms (median) | peak RSS MB |",
             "|---|---|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.tool} | {r.what} | {r.wall * 1e3:.1f} | "
                     f"{' '.join(f'{x * 1e3:.0f}' for x in r.walls)} | {r.cpu * 1e3:.1f} | {r.rss:.0f} |")
    return lines


def generated_by(script: str, argv: Sequence[str] | None) -> str:
    """The log's line saying which command and which commit of ``script`` (``bench/NAME.py``) made it."""
    cmdline = shlex.join(["python", script, *(sys.argv[1:] if argv is None else argv)])
    return (f"Generated by `{cmdline}` ({script} of {git('rev-parse', '--short', 'HEAD')}"
            f"{' + uncommitted changes' if dirty() else ''}).")


def write_log(lines: list[str], out: Path | None, benchmark: str, script: str, now: datetime.datetime,
              label: str) -> Path:
    """Write the log (``lines``: a ``# heading``, a blank line, then the body) to ``out``, else append
    its body to the day's ``bench/results/<benchmark>-<date>.md``; print it; return where it went."""
    text = "\n".join(lines) + "\n"
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        written = out
    else:  # the day's log: a later run is appended, never written over an earlier one
        title = f"{now:%H:%M} UTC" + (f": {label}" if label else "")
        written = append_log(benchmark, script, title, lines[2:], day=f"{now:%Y-%m-%d}")
    sys.stdout.write(text)
    print(f"\nwritten to {written}")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--python", required=True, help="the interpreter that runs ksym (a plain venv's)")
    ap.add_argument("--vmlinux", type=Path, help="the Debian 6.1 debug vmlinux (default: $KSYM_TEST_VMLINUX, "
                    "then the test-data locations)")
    ap.add_argument("--runs", type=int, default=7, help="repetitions per row (the median is reported)")
    ap.add_argument("--out", type=Path, help="write the log to this file (default: appended to bench/results/resolve-speed-<date>.md)")
    ap.add_argument("--label", default="", help="what the ksym of --python is (a commit, a change), for the log")
    args = ap.parse_args(argv)

    a2l = need_tool("addr2line")
    setup = set_up("resolve_speed", args.vmlinux, args.python)
    vmlinux, python, ksym, llvm = setup.vmlinux, setup.python, setup.ksym, setup.llvm
    addrs, frames = setup.addrs, setup.frames
    one_addr = f"{addrs[0]:#x}\n"
    many_addr = "".join(f"{a:#x}\n" for a in addrs)
    v = str(vmlinux)

    work = Path(tempfile.mkdtemp(prefix="ksym-resolve-speed-"))
    warm_cache = work / "warm"
    try:
        # the warm index: one run over the 382 frames (and its output checked)
        w = run_timed([*ksym, "resolve", "--vmlinux", v, "--cache-dir", str(warm_cache), *frames], None)
        if w[3] != 0:
            sys.exit(f"resolve_speed: ksym resolve of the {N_FRAMES} frames exited {w[3]}: {w[5].strip()[-500:]}")
        llvm_cmd = [llvm, "--inlines", "--functions=linkage", f"--obj={v}"]
        a2l_cmd = [a2l, "-f", "-i", "-e", v]
        kres = [*ksym, "resolve", "--vmlinux", v]
        rows = [
            Row("llvm-1", "llvm-symbolizer", "1 address", lambda i: (llvm_cmd, one_addr)),
            Row("a2l-1", "addr2line -fi", "1 address", lambda i: (a2l_cmd, one_addr)),
            Row("ksym-1", "ksym resolve, warm index", f"1 frame ({frames[0]})",
                lambda i: ([*kres, "--cache-dir", str(warm_cache), frames[0]], None)),
            Row("ksym-first", "ksym resolve, first-ever", "1 frame, new empty --cache-dir",
                lambda i: ([*kres, "--cache-dir", str(work / f"first-{i}"), frames[0]], None)),
            Row("llvm-n", "llvm-symbolizer", f"{N_FRAMES} addresses", lambda i: (llvm_cmd, many_addr)),
            Row("a2l-n", "addr2line -fi", f"{N_FRAMES} addresses", lambda i: (a2l_cmd, many_addr)),
            Row("ksym-n", "ksym resolve, warm index", f"{N_FRAMES} `sym+0xoff` frames",
                lambda i: ([*kres, "--cache-dir", str(warm_cache), *frames], None)),
        ]

        def drop_first_cache(row: Row, i: int) -> None:
            if row.name == "ksym-first":
                shutil.rmtree(work / f"first-{i}", ignore_errors=True)

        runs = run_rows("resolve_speed", rows, args.runs, drop_first_cache)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    by = {r.name: r for r in rows}
    checks = [
        ("one warm frame", "ksym-1", "llvm-1", TARGET_ONE),
        (f"{N_FRAMES} warm frames", "ksym-n", "llvm-n", TARGET_MANY),
        ("first-ever frame", "ksym-first", "a2l-1", TARGET_FIRST),
    ]
    now = datetime.datetime.now(datetime.timezone.utc)
    lines = [
        f"# resolve speed, {now:%Y-%m-%d %H:%M} UTC",
        "",
        generated_by("bench/resolve_speed.py", argv),
        "",
        (f"* machine: {os.cpu_count()} CPUs, {platform.system()} {platform.release()}; load average "
        f"{runs.load_before} before, {runs.load_after} after; {runs.seconds:.0f} s of runs"),
        (f"* ksym: `{' '.join(ksym)}` ({version_of([python, '--version'])}), imported from "
         f"{ksym_location(python)}{': ' + args.label if args.label else ''}"),
        f"* {version_of([llvm, '--version']).strip()}; {version_of([a2l, '--version'])}",
        (f"* vmlinux: {vmlinux} ({vmlinux.stat().st_size / 1e6:.0f} MB); frames: {N_FRAMES} return addresses "
        f"in distinct uniquely-named FUNC symbols, seed {SEED}; the one-frame rows use the first "
        f"({frames[0]} = {addrs[0]:#x})"),
        (f"* median of {args.runs} runs per row after one uncounted round, rows interleaved; wall from fork to reap, peak RSS = "
        f"`ru_maxrss` from `wait4` (this process's own peak, a floor for it: "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)"),
        "",
        *rows_table(rows),
    ]
    lines += ["", ("The targets are on wall time; the CPU column (user + system time of the process and its "
              "children) is steadier on a shared machine and its ratio is shown beside."), "",
              "| target | ksym ÷ anchor (wall) | limit | met | ksym ÷ anchor (CPU) |", "|---|---:|---:|---|---:|"]
    failed = 0
    for what, mine, anchor, limit in checks:
        ratio = by[mine].wall / by[anchor].wall
        ok = ratio <= limit
        failed += not ok
        lines.append(f"| {what}: {by[mine].tool} ÷ {by[anchor].tool} | {ratio:.2f}× | ≤ {limit}× | "
                     f"{'yes' if ok else '**no**'} | {by[mine].cpu / by[anchor].cpu:.2f}× |")
    write_log(lines, args.out, "resolve-speed", "bench/resolve_speed.py", now, args.label)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
