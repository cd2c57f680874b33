#!/usr/bin/env python3
"""Memory of streaming ``ksym annotate``: a ~100 MB oops-style dump of real return-address frames of the
Debian 6.1 vmlinux (bench/dump.py's 1,000 distinct frames, its 10,000-frame dump repeated with the
timestamps running on), annotated as a file and through a pipe; peak RSS (``os.wait4``'s ``ru_maxrss``)
and wall time of each run.

    .venv/bin/python bench/annotate_memory.py                  # writes bench/results/annotate-memory-DATE.md
    .venv/bin/python bench/annotate_memory.py --size-mb 20     # a smaller dump
    .venv/bin/python bench/annotate_memory.py --compare-src DIR  # also run another checkout's src/ (a file)

Linux carries the high-water RSS of a forked process across exec, so the measuring process stays small:
it imports no ksym, makes the dump in a child process, and feeds the pipe run from the file in 1 MiB
blocks. Each run's output is hashed as it comes, not kept; the file and pipe runs must give the same
output.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import BinaryIO, NamedTuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TARGET_MB = 300.0


class Run(NamedTuple):
    """One ``ksym annotate`` run."""

    name: str
    wall_s: float
    #: User + system CPU seconds of the command and its workers (less drift than wall time on a shared
    #: machine).
    cpu_s: float
    peak_rss_mb: float
    status: int
    out_bytes: int
    out_sha256: str


def make_dump(path: Path, size_mb: float) -> None:
    """Write the dump (in this process: run it as a child, it holds a Symbolizer)."""
    for p in (REPO, REPO / "tests"):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    from anchors import find_test_vmlinux

    from bench.dump import make_dump as dump_lines

    vmlinux = find_test_vmlinux()
    if vmlinux is None:
        raise SystemExit("bench/annotate_memory.py: no Debian 6.1 debug vmlinux (run tools/fetch-testdata.sh)")
    with tempfile.TemporaryDirectory(prefix="ksym-mem-dump-") as work:
        messages = [line.split("]", 1)[1] for line in dump_lines(vmlinux, Path(work))]
    want = int(size_mb * 1e6)
    t = 100.0
    written = 0
    with open(path, "w") as fh:
        while written < want:
            block = []
            for msg in messages:
                t += 0.000011
                block.append(f"[{t:12.6f}]{msg}\n")
            text = "".join(block)
            fh.write(text)
            written += len(text)


def _drain(src: BinaryIO, sink: list[object]) -> None:
    h = hashlib.sha256()
    n = 0
    while chunk := src.read(1 << 20):
        h.update(chunk)
        n += len(chunk)
    sink.extend((n, h.hexdigest()))


def _feed(path: Path, dst: BinaryIO) -> None:
    with open(path, "rb") as fh:
        try:
            while block := fh.read(1 << 20):
                dst.write(block)
        except BrokenPipeError:
            pass
    dst.close()


def run(name: str, cmd: list[str], env: dict[str, str], *, file: Path | None = None,
        pipe_from: Path | None = None) -> Run:
    stdin: BinaryIO | int = subprocess.DEVNULL
    if file is not None:
        stdin = open(file, "rb")  # noqa: SIM115 - closed below
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if pipe_from is not None else stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    got: list[object] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=_drain, args=(proc.stdout, got))
    reader.start()
    feeder = None
    if pipe_from is not None:
        assert proc.stdin is not None
        feeder = threading.Thread(target=_feed, args=(pipe_from, proc.stdin))
        feeder.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    if feeder is not None:
        feeder.join()
    if not isinstance(stdin, int):
        stdin.close()
    return Run(name, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0, proc.returncode, int(got[0]), str(got[1]))  # type: ignore[call-overload]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=float, default=100.0, help="dump size in MB (default 100)")
    ap.add_argument("--make-dump", metavar="FILE", help=argparse.SUPPRESS)
    ap.add_argument("--compare-src", metavar="DIR", help="also annotate the file with DIR (another checkout's "
                    "src/) on PYTHONPATH")
    ap.add_argument("--out", metavar="FILE", help="report path (default bench/results/annotate-memory-DATE.md)")
    args = ap.parse_args(argv)
    if args.make_dump:
        make_dump(Path(args.make_dump), args.size_mb)
        return 0
    today = datetime.date.today().isoformat()
    out = Path(args.out) if args.out else HERE / "results" / f"annotate-memory-{today}.md"
    with tempfile.TemporaryDirectory(prefix="ksym-mem-bench-") as work_dir:
        work = Path(work_dir)
        dump = work / "dump.txt"
        subprocess.run([sys.executable, __file__, "--make-dump", str(dump), "--size-mb", str(args.size_mb)],
                       check=True)
        lines = 0
        with open(dump, "rb") as fh:
            while block := fh.read(1 << 20):
                lines += block.count(b"\n")
        size = dump.stat().st_size
        vmlinux = subprocess.run([sys.executable, "-c", ("import sys; sys.path.insert(0, 'tests'); "
                                  "from anchors import find_test_vmlinux; print(find_test_vmlinux())")],
                                 cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        env = {**os.environ, "LC_ALL": "C", "PYTHONPATH": str(REPO / "src")}
        cache = work / "index"
        base = [sys.executable, "-m", "ksym", "annotate", "--vmlinux", vmlinux, "--cache-dir", str(cache)]
        runs = [
            run("file (cold: empty index)", [*base, str(dump)], env),
            run("file (warm index)", [*base, str(dump)], env),
            run("standard input, a regular file", base, env, file=dump),
            run("pipe (cat dump, piped)", base, env, pipe_from=dump),
        ]
        if args.compare_src:
            other = {**env, "PYTHONPATH": str(Path(args.compare_src).resolve())}
            runs.append(run(f"file, {args.compare_src} (warm index)", [*base, str(dump)], other))
    ok = len({(r.out_bytes, r.out_sha256) for r in runs}) == 1 and all(r.status in (0, 1) for r in runs)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                            check=False).stdout.strip() or "?"
    report = [
        f"# `ksym annotate` memory on a {size / 1e6:.0f} MB dump ({today})",
        "",
        ("Generated by `bench/annotate_memory.py` (do not edit): a dump of "
        f"{lines:,} lines ({size:,} bytes) of real return-address frames of the Debian 6.1 vmlinux "
        "(bench/dump.py's 10,000-frame dump, 1,000 distinct frames, repeated with running timestamps), "
        f"annotated by ksym {commit} on {platform.machine()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs. Peak RSS is the child's `ru_maxrss` (`os.wait4`); target: under "
        f"{TARGET_MB:.0f} MB."),
        "",
        "| run | wall s | CPU s | peak RSS MB | output MB | exit |",
        "|---|---|---|---|---|---|",
        *(f"| {r.name} | {r.wall_s:.1f} | {r.cpu_s:.1f} | {r.peak_rss_mb:.0f} | {r.out_bytes / 1e6:.0f} | {r.status} |"
          for r in runs),
        "",
        f"Every run gave the same output: {'yes' if ok else 'NO'} (sha256 {runs[0].out_sha256[:16]}...).",
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(report))
    print("\n".join(report))
    print(f"written to {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
