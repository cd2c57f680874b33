#!/usr/bin/env python3
"""Issue 3's annotate benchmark: a 10,000-frame stack dump (1,000 unique return-address frames) of the
real Debian 6.1 vmlinux, annotated by ``ksym annotate`` with an empty index (cold) and a warm one, and
by the kernel's scripts/decode_stacktrace.sh on the same dump in the same run.

    .venv/bin/python bench/dump.py                    # the whole benchmark (decode_stacktrace.sh: ~10 min)
    .venv/bin/python bench/dump.py --no-decode        # ksym only
    .venv/bin/python bench/dump.py --decode-lines 300 # decode_stacktrace.sh on the first 300 lines only
    .venv/bin/python bench/dump.py --make-dump FILE   # only write the dump

Each run appends its full log (machine, load, versions, commit, every run's time) to
bench/results/dump-<YYYY-MM-DD>.md, keeps the raw result in bench/.cache/dump-result.json and prints the
summary row that docs/benchmarks-dump.md keeps.

The dump is an oops-style call trace (``[  12.345678]  func+0x1c/0x80``), deterministic (seeded), made of
return addresses (the instruction after a ``call``) in FUNC symbols, as real stacks hold.
decode_stacktrace.sh costs seconds per distinct frame (``nm`` over the whole vmlinux per new symbol, one
``addr2line`` per new address); by default it runs on the whole dump. ``--decode-lines N`` runs it on a
prefix and scales by distinct frames, and the table says so.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (REPO, REPO / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from anchors import find_faddr2line, find_test_vmlinux

from bench.accuracy import sample_addresses
from bench.results import (
    RESULTS,
    append_log,
    first_line,
    ksym_commit,
    ksym_source,
    load_average,
    machine_info,
    machine_line,
)
from bench.speed import Measure, median_of, run_timed
from ksym import Symbolizer

N_FRAMES = 10_000
N_UNIQUE = 1_000
TARGET_COLD_S = 3.0
TARGET_WARM_S = 0.5


def make_dump(vmlinux: Path, work: Path) -> list[str]:
    """The dump's lines: 1,000 distinct ``sym+0xoff/0xsize`` return-address frames, drawn 10,000 times,
    cut into call traces of 20 frames with oops headers between them."""
    sym = Symbolizer(vmlinux, cache_dir=work / "sample-index")
    try:
        rets = [s.address for s in sample_addresses(sym, vmlinux, 0, 0, 1200, seed=7)]
        frames: list[str] = []
        for a in rets:
            hit = sym.symbols.containing(a)
            if hit and hit[0].type == 2:  # STT_FUNC, as kallsyms names stack entries
                frames.append(f"{hit[0].name}+{a - hit[0].address:#x}/{hit[1]:#x}")
            if len(frames) == N_UNIQUE:
                break
    finally:
        sym.close()
    rng = random.Random(10000)
    lines: list[str] = []
    t = 100.0
    for i in range(N_FRAMES):
        if i % 20 == 0:
            lines.append(f"[{t:12.6f}] Call Trace:")
        t += 0.000011
        lines.append(f"[{t:12.6f}]  {frames[rng.randrange(len(frames))]}")
    return lines


#: A fixed pure-Python loop, timed in a fresh interpreter before and after the runs: how fast this shared
#: machine was at the time (its speed drifts by tens of percent from minute to minute).
REFERENCE_LOOP = ("import time\nt = time.perf_counter()\ns = 0\nd = {}\nfor i in range(1_500_000):\n"
                  "    s += i & 0xff\n    if i % 7 == 0:\n        d[i & 0xfff] = s\n"
                  "print(time.perf_counter() - t)\n")


def reference_seconds() -> float:
    """Best of three runs of :data:`REFERENCE_LOOP`."""
    best = float("inf")
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", REFERENCE_LOOP], capture_output=True, text=True, check=True)
        best = min(best, float(out.stdout))
    return best


def _num(x: object) -> float:
    """A number of a result read back from JSON."""
    assert isinstance(x, (int, float, str)), x
    return float(x)


def distinct_frames(lines: list[str]) -> int:
    return len({ln.split("]", 1)[1].strip() for ln in lines if "+0x" in ln})


#: The head of docs/benchmarks-dump.md's summary table (one row per run: :func:`summary_row`).
SUMMARY_HEADER = ("| date | ksym | cold s | warm s | decode_stacktrace.sh s | it ÷ cold ksym | it ÷ warm ksym |",
                  "|---|---|---:|---:|---:|---:|---:|")


def summary_row(result: dict[str, object]) -> str:
    """The row docs/benchmarks-dump.md keeps for this run."""
    rows: dict[str, dict[str, object]] = result["rows"]  # type: ignore[assignment]
    warm = _num(rows["ksym annotate (warm index)"]["seconds"])
    cold = _num(rows["ksym annotate (cold: empty index)"]["seconds"])
    dec = rows.get("scripts/decode_stacktrace.sh")
    if dec is None:
        decode = "– | – | –"
    else:
        d = _num(dec["seconds"])
        decode = (f"{d:.0f}{' (extrapolated)' if str(dec['note']).startswith('EXTRAPOLATED') else ''} | "
                  f"{d / cold:.0f}× | {d / warm:.0f}×")
    return (f"| {str(result.get('when', '?'))[:10]} | {result.get('commit', '?')} | {cold:.2f} | {warm:.2f} | "
            f"{decode} |")


def run_log(result: dict[str, object]) -> list[str]:
    """The full log of one run (a ``--out`` JSON result), as markdown lines for bench/results."""
    rows: dict[str, dict[str, object]] = result["rows"]  # type: ignore[assignment]
    warm = _num(rows["ksym annotate (warm index)"]["seconds"])
    cold = _num(rows["ksym annotate (cold: empty index)"]["seconds"])
    out = [
        (f"Command: `.venv/bin/python bench/dump.py {result.get('args', '')}`, started {result.get('when', '?')}, "
         f"ksym {result.get('source', result.get('commit', '?'))}."),
        "",
        "Summary row for docs/benchmarks-dump.md:",
        "",
        *SUMMARY_HEADER,
        summary_row(result),
        "",
        (f"* machine: {result.get('machine', '?')}; load average (1/5/15 min) at start "
         f"{result.get('load_before', '?')}, at end {result.get('load_after', '?')}"),
        *([f"* versions: {result['versions']}"] if result.get("versions") else []),
        (f"* machine speed: a fixed pure-Python loop (bench/dump.py REFERENCE_LOOP, best of 3) took "
         f"{result.get('reference_before', '?')} s before the ksym runs and {result.get('reference_after', '?')} s "
         "after them (lower is faster; compare runs on a shared machine by it)"),
        ("* ksym's sources byte-compiled first (`compileall`, as pip does on install); every run's output was "
         "byte-identical to the first run's"),
        (f"* dump: {result['frames']} oops-style frames (`[ t] func+0xoff/0xsize`, return addresses in FUNC "
         f"symbols) drawn from {result['distinct']} distinct ones, in call traces of 20; the real Debian 6.1 "
         "debug vmlinux; the OS page cache warm for every tool"),
        "* cold: a new empty `--cache-dir` per run; warm: the index left by an earlier run over the same dump",
        ("* `ksym annotate` looks return addresses up at the call site and disassembles the call; "
         "scripts/decode_stacktrace.sh (same kernel version) runs `nm` and `addr2line` per distinct frame"),
        "",
        "| tool | wall s (median) | runs | every run, s | peak RSS MB | wall ÷ warm ksym | note |",
        "|---|---:|---:|---|---:|---:|---|",
    ]
    for name, r in rows.items():
        s_ = _num(r["seconds"])
        samples = r.get("samples") or []
        assert isinstance(samples, list)
        every = " ".join(f"{_num(x):.2f}" for x in samples)
        out.append(f"| {name} | {s_:.3f} | {r['runs']} | {every} | {_num(r['rss_mb'] or 0):.0f} | "
                   f"{s_ / warm:.1f}× | {r['note']} |")
    dec = rows.get("scripts/decode_stacktrace.sh")
    out += ["", (f"Targets: cold ≤ {TARGET_COLD_S} s: {'met' if cold <= TARGET_COLD_S else 'not met'} "
            f"({cold:.2f} s); warm ≤ {TARGET_WARM_S} s: {'met' if warm <= TARGET_WARM_S else 'not met'} "
            f"({warm:.2f} s).")]
    if dec is not None:
        d = _num(dec["seconds"])
        out.append(f"scripts/decode_stacktrace.sh ÷ ksym: {d / cold:.0f}× the cold run, {d / warm:.0f}× the warm run.")
    return out


def write_log(result: dict[str, object], results: Path) -> Path:
    """Append the run's log to ``results``/dump-<day of the run>.md."""
    when = str(result.get("when", "?"))
    return append_log("dump", "bench/dump.py", f"{when}, ksym {result.get('commit', '?')}", run_log(result),
                      day=when[:10], results=results)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--decode-lines", type=int, default=0, help="run decode_stacktrace.sh on this many lines "
                    "of the dump and scale (0 = the whole dump)")
    ap.add_argument("--no-decode", action="store_true", help="skip decode_stacktrace.sh")
    ap.add_argument("--make-dump", metavar="FILE", help="write the dump to FILE and exit")
    ap.add_argument("--out", default=str(HERE / ".cache" / "dump-result.json"))
    ap.add_argument("--results", type=Path, default=RESULTS,
                    help="directory of the run logs (default bench/results): the log goes to dump-<date>.md")
    ap.add_argument("--log-only", action="store_true",
                    help="measure nothing: append the log of the result in --out to the run logs")
    args = ap.parse_args(argv)
    if args.log_only:
        print(f"wrote {write_log(json.loads(Path(args.out).read_text()), args.results)}")
        return 0
    vmlinux = find_test_vmlinux()
    if vmlinux is None:
        print("bench/dump.py: no Debian 6.1 debug vmlinux (run tools/fetch-testdata.sh)", file=sys.stderr)
        return 2
    load_before = load_average()
    commit, source = ksym_commit(), ksym_source()  # before the run: the working tree's HEAD may move
    work = Path(tempfile.mkdtemp(prefix="ksym-dump-bench-"))
    try:
        lines = make_dump(vmlinux, work)
        dump = work / "dump.txt"
        dump.write_text("\n".join(lines) + "\n")
        if args.make_dump:
            shutil.copy(dump, args.make_dump)
            return 0
        nframes = sum(1 for ln in lines if "+0x" in ln)
        results: dict[str, dict[str, object]] = {}

        def ann(cache: Path) -> list[str]:
            return [sys.executable, "-m", "ksym", "annotate", str(dump), "--vmlinux", str(vmlinux),
                    "--cache-dir", str(cache)]

        first: list[str] = []

        def ok(status: int, out: str) -> None:
            if status != 0:
                raise RuntimeError(f"exit status {status}")
            if not first:
                first.append(out)
            elif out != first[0]:
                raise RuntimeError("the output differs from the first run's")

        # as installed: byte-compiled (PYTHONDONTWRITEBYTECODE may be set in this environment)
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "src")], check=True)
        reference_before = reference_seconds()

        cold = median_of(args.runs, lambda i: (ann(work / f"cold-{i}"), None), ok)
        warm_dir = work / "warm"
        run_timed(ann(warm_dir))
        warm = median_of(args.runs, lambda i: (ann(warm_dir), None), ok)
        results["ksym annotate (cold: empty index)"] = vars(cold)
        results["ksym annotate (warm index)"] = vars(warm)
        if not args.no_decode:
            script = find_faddr2line()
            decode = script.parent / "decode_stacktrace.sh" if script else None
            if decode is None or not decode.is_file():
                print("bench/dump.py: scripts/decode_stacktrace.sh not found; skipped", file=sys.stderr)
            else:
                part = lines[: args.decode_lines] if args.decode_lines else lines
                pfile = work / "part.txt"
                pfile.write_text("\n".join(part) + "\n")
                m = median_of(1, lambda i: (["bash", str(decode), str(vmlinux)], pfile.read_text()), None)
                whole, sub = distinct_frames(lines), distinct_frames(part)
                note = "whole dump"
                if part is not lines:
                    assert m.seconds is not None
                    m = Measure(m.seconds * whole / max(sub, 1), m.rss_mb, m.runs)
                    note = (f"EXTRAPOLATED from the first {len(part)} lines ({sub} distinct frames), "
                            f"scaled to {whole} distinct frames")
                m.note = note
                results["scripts/decode_stacktrace.sh"] = vars(m)
        reference_after = reference_seconds()
        base = warm.seconds or 1.0
        print(f"{nframes} frames, {distinct_frames(lines)} distinct")
        print(f"{'tool':45} {'wall s':>9} {'RSS MB':>7} {'÷ warm ksym':>11}  note")
        for name, r in results.items():
            s = _num(r["seconds"])
            print(f"{name:45} {s:9.3f} {_num(r['rss_mb'] or 0):7.0f} {s / base:10.1f}×  {r['note']}")
        print(f"targets: cold ≤ {TARGET_COLD_S} s: {'met' if (cold.seconds or 99) <= TARGET_COLD_S else 'NOT met'};"
              f" warm ≤ {TARGET_WARM_S} s: {'met' if (warm.seconds or 99) <= TARGET_WARM_S else 'NOT met'}")
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        result = {"frames": nframes, "distinct": distinct_frames(lines), "rows": results,
                  "args": " ".join(argv if argv is not None else sys.argv[1:]),
                  "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "commit": commit, "source": source, "machine": machine_line(machine_info()),
                  "versions": f"Python {platform.python_version()}, "
                              f"{first_line(['addr2line', '--version'])}, {first_line(['nm', '--version'])}",
                  "load_before": load_before, "load_after": load_average(),
                  "reference_before": f"{reference_before:.3f}", "reference_after": f"{reference_after:.3f}"}
        out.write_text(json.dumps(result, indent=1, default=str) + "\n")
        print(f"wrote {write_log(result, args.results)}")
        print(summary_row(result))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
