#!/usr/bin/env python3
"""Issue 15's benchmark: the portable index file (``ksym index build``, ``ksym resolve --index``).

    python bench/index_file.py --python /path/to/venv/bin/python [--vmlinux V] [--runs 7] [--jobs 2]

* the build: ``ksym index build VMLINUX -o FILE --jobs N`` once, timed from fork to reap with
  ``os.wait4`` (wall, CPU of the process and its workers, ``ru_maxrss``: the largest of them), and the
  file's size against the vmlinux's;
* lookups, every row a whole process, the median of ``--runs`` interleaved repetitions (as
  bench/resolve_speed.py, whose helpers and frames it uses): ``ksym resolve --index FILE`` with one
  ``sym+0xoff`` frame and with 382, against a warm vmlinux-backed ``ksym resolve`` (an index made by an
  earlier run over the same frames) and llvm-symbolizer on the same addresses; the one-frame rows twice:
  for the first of the drawn frames and for :data:`NET_FRAME`, a frame of the packet path in a large unit
  (the file loads the whole unit holding a frame, so its cost grows with the unit);
* the answers of the three ``ksym`` runs over the 382 frames are compared (they must be identical).

The log is appended to the day's ``bench/results/index-file-<date>.md`` (``--out FILE``: written there).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.resolve_speed import (
    N_FRAMES,
    SEED,
    Row,
    generated_by,
    ksym_location,
    rows_table,
    run_rows,
    run_timed,
    set_up,
    version_of,
    write_log,
)
from bench.results import load_average

#: a frame of the packet path (net/ipv4/ip_output.c: a unit of 645 functions and 2,709 line rows in Debian
#: 6.1, where the first drawn frame's has 104 and 927)
NET_FRAME = "__ip_local_out+0xde"

#: the issue's targets
TARGET_SIZE = 0.10  # file size / vmlinux size
TARGET_BUILD_SECONDS = 180.0  # on 2 cores
TARGET_ONE = 1.0  # one frame from the file / one frame, warm vmlinux-backed index


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--python", required=True, help="the interpreter that runs ksym")
    ap.add_argument("--vmlinux", type=Path, help="the Debian 6.1 debug vmlinux (default: the test data)")
    ap.add_argument("--runs", type=int, default=7, help="repetitions per lookup row (the median is reported)")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes of the build")
    ap.add_argument(
        "--out", type=Path, help="write the log here (default: bench/results/index-file-<date>.md)"
    )
    ap.add_argument("--label", default="", help="what the ksym of --python is, for the log")
    args = ap.parse_args(argv)

    setup = set_up("index_file", args.vmlinux, args.python)
    vmlinux, python, ksym, llvm = setup.vmlinux, setup.python, setup.ksym, setup.llvm
    addrs, frames = setup.addrs, setup.frames
    v = str(vmlinux)

    work = Path(tempfile.mkdtemp(prefix="ksym-index-file-"))
    try:
        index = work / "vmlinux.ksymidx"
        load_build = load_average()
        bwall, bcpu, brss, status, bout, berr = run_timed(
            [*ksym, "index", "build", v, "-o", str(index), "--jobs", str(args.jobs)], None
        )
        if status != 0:
            sys.exit(f"index_file: ksym index build exited {status}: {berr.strip()[-500:]}")
        size = index.stat().st_size
        warm = work / "warm"
        outs = {}
        for name, cmd in (
            ("vmlinux", [*ksym, "resolve", "--vmlinux", v, "--cache-dir", str(warm), *frames]),
            ("vmlinux-again", [*ksym, "resolve", "--vmlinux", v, "--cache-dir", str(warm), *frames]),
            ("index", [*ksym, "resolve", "--index", str(index), *frames]),
        ):
            got = run_timed(cmd, None)
            if got[3] != 0:
                sys.exit(f"index_file: {name} run exited {got[3]}: {got[5].strip()[-500:]}")
            outs[name] = got[4]
        same = outs["vmlinux"] == outs["index"] == outs["vmlinux-again"]
        # the warm index answers the packet-path frame too (asked once before the timed runs)
        got = run_timed([*ksym, "resolve", "--vmlinux", v, "--cache-dir", str(warm), NET_FRAME], None)
        if got[3] != 0:
            sys.exit(f"index_file: the run over {NET_FRAME} exited {got[3]}: {got[5].strip()[-500:]}")
        # an index that knows the image (one run over another frame) but not the frame asked: copied
        # afresh before every run of its row
        other = work / "other"
        got = run_timed([*ksym, "resolve", "--vmlinux", v, "--cache-dir", str(other), frames[1]], None)
        if got[3] != 0:
            sys.exit(f"index_file: the run over {frames[1]} exited {got[3]}: {got[5].strip()[-500:]}")

        def fresh_copy(i: int) -> str:
            target = work / f"new-{i}"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(other, target)
            return str(target)

        one_addr = f"{addrs[0]:#x}\n"
        many_addr = "".join(f"{a:#x}\n" for a in addrs)
        llvm_cmd = [llvm, "--inlines", "--functions=linkage", f"--obj={v}"]
        rows = [
            Row("llvm-1", "llvm-symbolizer", "1 address", lambda i: (llvm_cmd, one_addr)),
            Row(
                "warm-1",
                "ksym resolve --vmlinux, warm index",
                f"1 frame ({frames[0]})",
                lambda i: ([*ksym, "resolve", "--vmlinux", v, "--cache-dir", str(warm), frames[0]], None),
            ),
            Row(
                "new-1",
                "ksym resolve --vmlinux, warm index, new frame",
                "1 frame, its unit not in the index",
                lambda i: ([*ksym, "resolve", "--vmlinux", v, "--cache-dir", fresh_copy(i), frames[0]], None),
            ),
            Row(
                "file-1",
                "ksym resolve --index FILE",
                "1 frame",
                lambda i: ([*ksym, "resolve", "--index", str(index), frames[0]], None),
            ),
            Row(
                "warm-net",
                "ksym resolve --vmlinux, warm index",
                f"1 frame ({NET_FRAME})",
                lambda i: ([*ksym, "resolve", "--vmlinux", v, "--cache-dir", str(warm), NET_FRAME], None),
            ),
            Row(
                "file-net",
                "ksym resolve --index FILE",
                f"1 frame ({NET_FRAME})",
                lambda i: ([*ksym, "resolve", "--index", str(index), NET_FRAME], None),
            ),
            Row("llvm-n", "llvm-symbolizer", f"{N_FRAMES} addresses", lambda i: (llvm_cmd, many_addr)),
            Row(
                "warm-n",
                "ksym resolve --vmlinux, warm index",
                f"{N_FRAMES} frames",
                lambda i: ([*ksym, "resolve", "--vmlinux", v, "--cache-dir", str(warm), *frames], None),
            ),
            Row(
                "file-n",
                "ksym resolve --index FILE",
                f"{N_FRAMES} frames",
                lambda i: ([*ksym, "resolve", "--index", str(index), *frames], None),
            ),
        ]
        runs = run_rows("index_file", rows, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    by = {r.name: r for r in rows}
    vsize = vmlinux.stat().st_size
    now = datetime.datetime.now(datetime.timezone.utc)
    lines = [
        f"# portable index file, {now:%Y-%m-%d %H:%M} UTC",
        "",
        generated_by("bench/index_file.py", argv),
        "",
        (
            f"* machine: {os.cpu_count()} CPUs, {platform.system()} {platform.release()}; load average "
            f"{load_build} before the build, {runs.load_before} before the lookups, {runs.load_after} after; "
            f"{runs.seconds:.0f} s of lookup runs"
        ),
        (
            f"* ksym: `{' '.join(ksym)}` ({version_of([python, '--version'])}), imported from "
            f"{ksym_location(python)}{': ' + args.label if args.label else ''}"
        ),
        f"* {version_of([llvm, '--version']).strip()}",
        f"* vmlinux: {vmlinux} ({vsize / 1e6:.0f} MB); frames as bench/resolve_speed.py (seed {SEED})",
        "",
        "## Build",
        "",
        f"`ksym index build VMLINUX -o FILE --jobs {args.jobs}`: {bout.strip()}",
        "",
        "| wall s | CPU s (all processes) | peak RSS MB (largest process) | file MB | file ÷ vmlinux |",
        "|---:|---:|---:|---:|---:|",
        f"| {bwall:.1f} | {bcpu:.1f} | {brss:.0f} | {size / 1e6:.1f} | {size / vsize:.3f} |",
        "",
        (
            f"The {N_FRAMES} frames through the file, the vmlinux (first run) and the vmlinux's warm index: "
            f"{'identical' if same else '**different**'} output."
        ),
        "",
        "## Lookups",
        "",
        f"Median of {args.runs} runs per row after one uncounted round, rows interleaved; wall from fork to reap.",
        "",
        *rows_table(rows),
    ]
    checks = [
        ("file size ÷ vmlinux size", size / vsize, TARGET_SIZE),
        (f"build wall seconds ({args.jobs} workers)", bwall, TARGET_BUILD_SECONDS),
        (
            "one frame: --index ÷ warm --vmlinux, same frame answered before (wall)",
            by["file-1"].wall / by["warm-1"].wall,
            TARGET_ONE,
        ),
        (
            "one frame: --index ÷ warm --vmlinux, a new frame (wall)",
            by["file-1"].wall / by["new-1"].wall,
            TARGET_ONE,
        ),
        (
            f"one frame: --index ÷ warm --vmlinux, {NET_FRAME} answered before (wall)",
            by["file-net"].wall / by["warm-net"].wall,
            TARGET_ONE,
        ),
    ]
    lines += ["", "| target | value | limit | met |", "|---|---:|---:|---|"]
    failed = not same
    for what, value, limit in checks:
        ok = value <= limit
        failed |= not ok
        lines.append(f"| {what} | {value:.3f} | ≤ {limit} | {'yes' if ok else '**no**'} |")
    lines += [
        "",
        (
            f"CPU: one frame --index ÷ warm --vmlinux same frame {by['file-1'].cpu / by['warm-1'].cpu:.2f}×, "
            f"new frame {by['file-1'].cpu / by['new-1'].cpu:.2f}×, {NET_FRAME} answered before "
            f"{by['file-net'].cpu / by['warm-net'].cpu:.2f}×."
        ),
        "",
        (
            f"Other ratios (wall): one frame --index ÷ llvm-symbolizer "
            f"{by['file-1'].wall / by['llvm-1'].wall:.2f}×; {N_FRAMES} frames --index ÷ warm --vmlinux "
            f"{by['file-n'].wall / by['warm-n'].wall:.2f}×, ÷ llvm-symbolizer "
            f"{by['file-n'].wall / by['llvm-n'].wall:.2f}×."
        ),
    ]
    write_log(lines, args.out, "index-file", "bench/index_file.py", now, args.label)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
