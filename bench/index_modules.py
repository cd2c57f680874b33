#!/usr/bin/env python3
"""The portable index file with every module of a kernel: ``ksym index build VMLINUX --modules DIR``.

    python bench/index_modules.py --python /path/to/venv/bin/python --modules DIR [--vmlinux V] [--jobs 2]
        [--frames 200] [--keep FILE]

* the build: ``ksym index build VMLINUX --modules DIR -o FILE --jobs N --progress``, run under
  ``/usr/bin/time -v`` when it is there, timed from fork to reap with ``os.wait4`` (wall, CPU of the
  builder and its workers, ``ru_maxrss``: the largest of them); ``uptime`` before and after (the machine
  may be shared: the CPU time is the measure of the work), the file's size, the modules written;
* module frames: ``--frames`` frames (seeded) at random offsets in random functions of random modules
  of DIR, as a call trace, through ``ksym annotate --index FILE`` and through ``ksym annotate --vmlinux
  VMLINUX --modules DIR`` (the debug files): their output must be identical.

The log is appended to the day's ``bench/results/index-modules-<date>.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.resolve_speed import dirty, git, ksym_command, ksym_location, run_timed, version_of

SEED = 1121

#: prints "NAME FUNC OFFSET SIZE" lines: ``count`` functions (seeded) of the module debug files under a
#: directory, run by the ksym of --python
SAMPLER = r"""
import random, sys
from ksym.modules import ModuleSymbolizer
from ksym.portable_build import _module_files
root, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
files = _module_files(root)
for path in sorted(rng.sample(files, min(count, len(files)))):
    with ModuleSymbolizer(path) as m:
        st = m.raw_symbols
        funcs = [i for i in range(len(st)) if st.infos[i] & 0xF == 2 and st.sizes[i]]
        if not funcs:
            continue
        i = rng.choice(funcs)
        print(m.image.module_name, st.names[i], rng.randrange(st.sizes[i]), st.sizes[i])
"""


def uptime() -> str:
    p = subprocess.run(["uptime"], capture_output=True, text=True, check=False)
    return p.stdout.strip() or "?"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--python", required=True, help="the interpreter that runs ksym")
    ap.add_argument(
        "--modules", type=Path, required=True, help="the module debug files (lib/modules/RELEASE)"
    )
    ap.add_argument("--vmlinux", type=Path, help="the Debian 6.1 debug vmlinux (default: the test data)")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes of the build")
    ap.add_argument("--frames", type=int, default=200, help="module frames compared (one per sampled module)")
    ap.add_argument("--keep", type=Path, help="keep the file here (default: a temporary, deleted)")
    ap.add_argument("--label", default="", help="what the ksym of --python is, for the log")
    args = ap.parse_args(argv)

    vmlinux = args.vmlinux
    if vmlinux is None:
        sys.path.insert(0, str(REPO / "tests"))
        from anchors import find_test_vmlinux

        vmlinux = find_test_vmlinux()
        if vmlinux is None:
            sys.exit("index_modules: no test vmlinux: pass --vmlinux or run tools/fetch-testdata.sh")
    python = shutil.which(args.python) or args.python
    ksym = ksym_command(python)
    v, mods = str(vmlinux), str(args.modules)
    work = Path(tempfile.mkdtemp(prefix="ksym-index-modules-"))
    try:
        index = args.keep or work / "all.ksymidx"
        build = [
            *ksym,
            "index",
            "build",
            v,
            "--modules",
            mods,
            "-o",
            str(index),
            "--jobs",
            str(args.jobs),
            "--progress",
        ]
        timer = ["/usr/bin/time", "-v"] if os.access("/usr/bin/time", os.X_OK) else []
        up_before = uptime()
        wall, cpu, rss, status, out, err = run_timed([*timer, *build], None)
        up_after = uptime()
        if status != 0:
            sys.exit(f"index_modules: ksym index build exited {status}: {err.strip()[-800:]}")
        size = index.stat().st_size
        # the progress bar redraws one line: keep its last state, and /usr/bin/time's report
        bar = err.split("\n", 1)[0].rsplit("\r", 1)[-1]
        timed = err.split("\n", 1)[1] if "\n" in err else ""

        p = subprocess.run(
            [python, "-c", SAMPLER, mods, str(args.frames), str(SEED)],
            capture_output=True,
            text=True,
            check=False,
        )
        if p.returncode:
            sys.exit(f"index_modules: sampling the modules failed: {p.stderr.strip()[-800:]}")
        picked = [ln.split() for ln in p.stdout.splitlines()]
        trace = "Call Trace:\n" + "".join(
            f" {func}+{int(off):#x} [{name}]\n" for name, func, off, _size in picked
        )
        by_file = run_timed([*ksym, "annotate", "--index", str(index)], trace)
        by_ko = run_timed([*ksym, "annotate", "--vmlinux", v, "--modules", mods], trace)
        same = by_file[3] == by_ko[3] and by_file[4] == by_ko[4]
        unresolved = sum(1 for ln in by_ko[4].splitlines() if ln.startswith("   -> unresolved"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    now = datetime.datetime.now(datetime.timezone.utc)
    cmdline = "python " + " ".join(
        shlex.quote(a) for a in ["bench/index_modules.py", *(argv or sys.argv[1:])]
    )
    lines = [
        (
            f"Generated by `{cmdline}` (bench/index_modules.py of {git('rev-parse', '--short', 'HEAD')}"
            f"{' + uncommitted changes' if dirty() else ''})."
        ),
        "",
        f"* machine: {os.cpu_count()} CPUs; `uptime` before the build: {up_before}; after: {up_after}",
        (
            f"* ksym: `{' '.join(ksym)}` ({version_of([python, '--version'])}), imported from "
            f"{ksym_location(python)}{': ' + args.label if args.label else ''}"
        ),
        f"* vmlinux: {vmlinux}; modules: {mods}",
        "",
        "### Build",
        "",
        f"`{' '.join(shlex.quote(a) for a in [*timer, *build])}`",
        "",
        f"    {out.strip()}",
        f"    {bar.strip()}",
        "",
        "| wall s | CPU s (all processes) | peak RSS MB (largest process) | file MB |",
        "|---:|---:|---:|---:|",
        f"| {wall:.1f} | {cpu:.1f} | {rss:.0f} | {size / 1e6:.1f} |",
        "",
    ]
    if timed:
        lines += ["`/usr/bin/time -v`:", "", *(f"    {ln.strip()}" for ln in timed.strip().splitlines()), ""]
    lines += [
        "### Module frames",
        "",
        (
            f"{len(picked)} frames, one in a random function of each of {len(picked)} modules (seed {SEED}), "
            f"as a call trace: `ksym annotate --index FILE` and `ksym annotate --vmlinux VMLINUX --modules DIR` "
            f"print {'identical' if same else '**different**'} output (exit {by_file[3]} and {by_ko[3]}; "
            f"{unresolved} of them unresolved)."
        ),
        "",
        "First lines:",
        "",
        *(f"    {ln}" for ln in by_file[4].splitlines()[:8]),
    ]
    from bench.results import append_log

    title = f"{now:%H:%M} UTC" + (f": {args.label}" if args.label else "")
    path = append_log("index-modules", "bench/index_modules.py", title, lines, day=f"{now:%Y-%m-%d}")
    sys.stdout.write("\n".join(lines) + "\n")
    print(f"\nwritten to {path}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
