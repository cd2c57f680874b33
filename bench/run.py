#!/usr/bin/env python3
"""ksym benchmark: accuracy against addr2line and scripts/faddr2line, speed and memory against them
and llvm-symbolizer, eu-addr2line and drgn. Appends the run's full log (machine, load, versions, commit,
every table) to bench/results/run-<YYYY-MM-DD>.md with a chart beside it (run-<YYYY-MM-DD>-<HHMM>.png),
and prints the summary rows that docs/benchmarks.md keeps.

    .venv/bin/python bench/run.py --ksym-commit HEAD   # full run (~2,400 addresses, ~520 specs, 3 runs per row)
    .venv/bin/python bench/run.py --quick              # smaller samples, for trying it out

Needs the Debian 6.1 debug vmlinux and the same version's scripts/faddr2line (tools/fetch-testdata.sh
is run when they are missing), binutils, llvm (llvm-symbolizer), elfutils (eu-addr2line). drgn and
matplotlib live in a separate venv, bench/.venv (created with pip on first use; ``--bench-python``
points elsewhere); without them the drgn column is left out and the PNG is drawn by a tiny writer.

scripts/faddr2line takes seconds per spec; its output for the accuracy specs is stored in bench/.cache
and reused when the vmlinux, the script and the spec list are unchanged (``--fresh-anchors`` re-runs
it). The report says which.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.accuracy import (  # noqa: I001
    AddressReport, SpecReport, compare_addresses, compare_specs, sample_addresses, sample_specs,
)
from bench.speed import (
    DRGN_INPROCESS, DRGN_SCRIPT, Measure, in_process_us, ksym_cmd, median_of, run_timed,
    tool_cmds,
)
from bench.results import (
    RESULTS, append_log, first_line, ksym_commit, ksym_source, load_average, machine_info, machine_line,
)
from anchors import addr2line_batch, find_faddr2line, find_test_vmlinux
from ksym import Symbolizer

TARGETS = {"cold_s": 1.0, "cold_rss_mb": 400.0, "warm_s": 0.15, "inproc_us": 100.0}
SINGLE_FRAME = "__ip_local_out+219"


# ------------------------------------------------------------------------------------------- setup


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def ensure_testdata() -> tuple[Path, Path]:
    vm, script = find_test_vmlinux(), find_faddr2line()
    if vm is None or script is None:
        log("test data missing: running tools/fetch-testdata.sh")
        subprocess.run(["bash", str(REPO / "tools" / "fetch-testdata.sh")], check=True)
        vm, script = find_test_vmlinux(), find_faddr2line()
    if vm is None or script is None:
        raise SystemExit("no vmlinux / scripts/faddr2line even after tools/fetch-testdata.sh")
    return vm, script


def ensure_bench_python(explicit: str | None) -> str | None:
    """A Python with drgn (and matplotlib): --bench-python, else bench/.venv (created on first use)."""
    if explicit:
        return explicit
    py = HERE / ".venv" / "bin" / "python"
    if not py.exists():
        log("creating bench/.venv with drgn and matplotlib (pip)")
        try:
            subprocess.run([sys.executable, "-m", "venv", str(HERE / ".venv")], check=True)
            subprocess.run([str(py), "-m", "pip", "install", "-q", "drgn", "matplotlib"], check=True)
        except (subprocess.CalledProcessError, OSError) as exc:
            log(f"bench venv unavailable ({exc}); drgn left out")
            return None
    return str(py)


def has_module(python: str | None, module: str) -> bool:
    if python is None:
        return False
    return subprocess.run([python, "-c", f"import {module}"], capture_output=True, check=False).returncode == 0


def versions(bench_python: str | None) -> dict[str, str]:
    where = first_line([sys.executable, "-c", "import ksym; print(ksym.__file__)"])
    src = f"{ksym_source()}, imported from {Path(where).parent}"
    v = {
        "ksym": f"{first_line([sys.executable, '-c', 'import ksym; print(ksym.__version__)'])}, {src}",
        "python": platform.python_version(),
        "addr2line": first_line(["addr2line", "--version"]),
        "llvm-symbolizer": next((ln.strip() for ln in subprocess.run(
            ["llvm-symbolizer", "--version"], capture_output=True, text=True, check=False).stdout.splitlines()
            if "version" in ln.lower()), "not installed") if shutil.which("llvm-symbolizer") else "not installed",
        "eu-addr2line": first_line(["eu-addr2line", "--version"]),
        "capstone": first_line([sys.executable, "-c", "import capstone; print(capstone.__version__)"]),
    }
    v["drgn"] = (first_line([bench_python or "python3", "-c", "import drgn; print(drgn.__version__)"])
                 if has_module(bench_python, "drgn") else "not installed")
    return v


# ------------------------------------------------------------------------------------------- accuracy


def recheck_single(vmlinux: Path, rep: AddressReport) -> list[tuple[int, bool]]:
    """Each mismatch re-asked of a fresh one-address addr2line (how faddr2line runs it): does ksym
    agree with that? binutils' answer at some addresses depends on which CUs earlier lookups loaded."""
    out = []
    for s, got, _want in rep.mismatches:
        single = addr2line_batch(vmlinux, [s.address])[0]
        out.append((s.address, single == got))
    return out


def print_accuracy(a: AddressReport, single: list[tuple[int, bool]], sp: SpecReport) -> None:
    print(f"\naddresses vs addr2line (one batch): {a.agree}/{a.total} = {a.percent:.2f}%")
    for kind, (ok, n) in a.by_kind.items():
        print(f"  {kind:7} {ok}/{n}")
    for (s, got, want), (_, ok1) in zip(a.mismatches, single):
        print(f"  MISMATCH {s.address:#x} ({s.kind}){' [ksym == one-address addr2line]' if ok1 else ''}")
        print(f"    ksym:      {got}\n    addr2line: {want}")
    print(f"specs vs scripts/faddr2line: {sp.agree}/{sp.total} = {sp.percent:.2f}%; "
          f"whole stdout identical: {sp.text_identical}; 'no match' lines identical: {sp.no_match_identical}")
    for shape, (ok, n) in sp.by_shape.items():
        print(f"  {shape:15} {ok}/{n}")
    for bad, mine, theirs in sp.mismatches:
        print(f"  MISMATCH {bad.spec} ({bad.shape})\n--- ksym:\n{mine}\n--- faddr2line:\n{theirs}")
    for line in sp.no_match_diff:
        print(f"  {line}")


# ------------------------------------------------------------------------------------------- speed


@dataclass
class SpeedResults:
    rows: dict[str, dict[str, Measure]]
    inproc: dict[str, tuple[float, float]]  # tool -> (first pass µs, warm µs)
    load_before: str
    load_after: str
    seconds: float


def frames_for(sym: Symbolizer, addrs: list[int]) -> list[str]:
    """``sym+0xoff`` for each address (the text symbol it falls in, as kallsyms would name it)."""
    out = []
    for a in addrs:
        hit = sym.symbols.containing(a)
        out.append(f"{hit[0].name}+{a - hit[0].address:#x}" if hit else f"{a:#x}")
    return out


def annotate_lines(sym: Symbolizer, addrs: list[int]) -> list[str]:
    """``sym+0xoff/0xsize`` for each address, as a kernel stack prints it."""
    out = []
    for a in addrs:
        hit = sym.symbols.containing(a)
        out.append(f"{hit[0].name}+{a - hit[0].address:#x}/{hit[1]:#x}" if hit else f"{a:#x}")
    return out


def has_annotate() -> bool:
    return has_module(sys.executable, "ksym.annotate")


def measure_speed(vmlinux: Path, script: Path, bench_python: str | None, runs: int, quick: bool,
                  work: Path) -> SpeedResults:
    load_before = load_average()
    t0 = time.monotonic()
    base = Symbolizer(vmlinux, cache_dir=work / "base")
    single_addr = base.resolve(SINGLE_FRAME)[0].address
    # 1,000 distinct return addresses (what stacks hold) and a 10,000-frame list drawn from them
    rets = [s.address for s in sample_addresses(base, vmlinux, 0, 0, 1200, seed=7)]
    # keep return addresses whose kallsyms-style symbol is a FUNC (not an asm label such as .slowpath)
    rets = [a for a in rets if (hit := base.symbols.containing(a)) and hit[0].type == 2][:1000]
    frames = frames_for(base, rets)
    rng = random.Random(10000)
    idx10k = [rng.randrange(len(rets)) for _ in range(10000)]
    addrs10k = [rets[i] for i in idx10k]
    frames10k = [frames[i] for i in idx10k]
    drgn_ok = has_module(bench_python, "drgn")
    drgn_py = bench_python or "python3"
    drgn_file = work / "drgn_resolve.py"
    drgn_file.write_text(DRGN_SCRIPT)
    drgn_inproc = work / "drgn_inprocess.py"
    drgn_inproc.write_text(DRGN_INPROCESS)
    rows: dict[str, dict[str, Measure]] = {}
    v = str(vmlinux)

    def ok_status(*allowed: int) -> Callable[[int, str], None]:
        def check(status: int, _out: str) -> None:
            if status not in allowed:
                raise RuntimeError(f"exit status {status}")
        return check

    # --- single frame, first ever (fresh empty cache each run) and warm
    log("speed: single frame")
    cold_dirs = [work / f"cold{i}" for i in range(runs)]
    r: dict[str, Measure] = {}
    r["ksym"] = median_of(runs, lambda i: (ksym_cmd(vmlinux, cold_dirs[i], [SINGLE_FRAME]), None),
                          ok_status(0))
    r["ksym"].note = "fresh empty --cache-dir each run (OS page cache warm)"
    rows["first-ever single frame"] = r
    warm_dir = work / "warm"
    run_timed(ksym_cmd(vmlinux, warm_dir, [SINGLE_FRAME]))  # builds the index
    w: dict[str, Measure] = {}
    w["ksym"] = median_of(runs, lambda i: (ksym_cmd(vmlinux, warm_dir, [SINGLE_FRAME]), None),
                          ok_status(0))
    w["ksym"].note = "index built by an earlier run"
    # anchors have no persistent state: one single-frame measurement serves both rows
    anchor_single: dict[str, Measure] = {}
    anchor_single["scripts/faddr2line"] = median_of(
        runs, lambda i: (["bash", str(script), v, SINGLE_FRAME], None), ok_status(0, 1))
    for name, mk in tool_cmds(vmlinux).items():
        anchor_single[name] = median_of(runs, lambda i, mk=mk: mk([single_addr]), ok_status(0))  # type: ignore[misc]
    if drgn_ok:
        anchor_single["drgn"] = median_of(
            runs, lambda i: ([drgn_py, str(drgn_file), v], f"{single_addr:#x}\n"), ok_status(0))
    for name, m in anchor_single.items():
        m.note = "no persistent cache (same measurement in both single-frame rows)"
        r[name] = m
        w[name] = m
    rows["warm single frame"] = w

    # --- batch of 1,000 addresses and the 10,000-frame list, one process each
    n20 = 20
    log("speed: scripts/faddr2line 20-spec batch (extrapolated to the batch rows)")
    f20 = median_of(1,
                    lambda i: (["bash", str(script), v, *frames[:n20]], None), ok_status(0, 1))
    for label, addrs, kframes in (("batch of 1,000 addresses", rets, [f"{a:#x}" for a in rets]),
                                  ("10,000-frame list (1,000 unique)", addrs10k, frames10k)):
        log(f"speed: {label}")
        b: dict[str, Measure] = {}
        run_timed(ksym_cmd(vmlinux, warm_dir, kframes))  # warm-up: stores the CUs these frames need
        b["ksym"] = median_of(runs, lambda i, k=kframes: (ksym_cmd(vmlinux, warm_dir, k), None),  # type: ignore[misc]
                              ok_status(0, 1))
        b["ksym"].note = ("`ksym resolve` with 1,000 `0x…` arguments, warm index" if len(addrs) == 1000 else
                          "`ksym resolve` with 10,000 `sym+0xoff` arguments, warm index "
                          "(the `ksym annotate` row below reads the same frames as a pasted stack)")
        fresh = [work / f"fresh-{len(addrs)}-{i}" for i in range(runs)]
        b["ksym (empty cache)"] = median_of(
            1, lambda i, k=kframes, f=fresh: (ksym_cmd(vmlinux, f[i], k), None), ok_status(0, 1))  # type: ignore[misc]
        b["ksym (empty cache)"].note = "fresh empty --cache-dir (first-ever run over these frames; 1 run)"
        scale = len(addrs) / n20
        b["scripts/faddr2line"] = Measure(
            (f20.seconds or 0) * scale, f20.rss_mb, f20.runs,
            note=f"EXTRAPOLATED: measured {n20}-spec batch ({f20.seconds:.1f} s, median of {f20.runs}) "
                 f"× {scale:g}")
        for name, mk in tool_cmds(vmlinux).items():
            b[name] = median_of(runs, lambda i, mk=mk, a=addrs: mk(a), ok_status(0))  # type: ignore[misc]
        if drgn_ok:
            afile = work / f"addrs-{len(addrs)}.txt"
            afile.write_text("".join(f"{a:#x}\n" for a in addrs))
            b["drgn"] = median_of(runs, lambda i, f=afile: ([drgn_py, str(drgn_file), v, str(f)], None),  # type: ignore[misc]
                                  ok_status(0))
        if len(addrs) == 10000 and has_annotate():
            tfile = work / "frames-10000.txt"
            tfile.write_text("".join(f" {f}\n" for f in annotate_lines(base, addrs)))
            acmd = [sys.executable, "-m", "ksym", "annotate", str(tfile), "--vmlinux", v, "--cache-dir",
                    str(warm_dir)]
            run_timed(acmd)  # warm-up
            b["ksym annotate"] = median_of(runs, lambda i, c=acmd: (c, None), ok_status(0, 1))  # type: ignore[misc]
            b["ksym annotate"].note = ("`ksym annotate FILE`: a 10,000-line `sym+0xoff/0xsize` list, warm index; "
                                       "return addresses looked up at the call site, call instruction disassembled")
        rows[label] = b

    # --- in-process per frame
    log("speed: in-process per frame")
    inproc: dict[str, tuple[float, float]] = {"ksym": in_process_us(vmlinux, warm_dir, frames, max(runs, 3))}
    if drgn_ok:
        afile = work / "addrs-1000.txt"
        p = subprocess.run([drgn_py, str(drgn_inproc), v, str(afile), str(max(runs, 3))], capture_output=True,
                           text=True, check=True)
        d = json.loads(p.stdout)
        inproc["drgn"] = (float(d["first"]), float(d["warm"]))
    base.close()
    return SpeedResults(rows, inproc, load_before, load_average(), time.monotonic() - t0)


# ------------------------------------------------------------------------------------------- report


def fmt_s(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def speed_tables(sp: SpeedResults) -> list[str]:
    out: list[str] = []
    for label, row in sp.rows.items():
        k = row.get("ksym")
        out += [f"##### {label}", "", "| tool | wall s (median) | runs | peak RSS MB | wall ÷ ksym | note |",
                "|---|---:|---:|---:|---:|---|"]
        for name, m in row.items():
            ratio = (f"{m.seconds / k.seconds:.1f}×" if k and k.seconds and m.seconds is not None else "–")
            rss = f"{m.rss_mb:.0f}" if m.rss_mb is not None else "–"
            out.append(f"| {name} | {fmt_s(m.seconds)} | {m.runs} | {rss} | {ratio} | {m.note} |")
        out.append("")
    out += ["##### in-process resolve per frame (1,000 distinct return-address frames)", "",
            "| tool | first pass µs/frame | warm µs/frame (median) | warm ÷ ksym |", "|---|---:|---:|---:|"]
    kw = sp.inproc["ksym"][1]
    for name, (first, warm) in sp.inproc.items():
        out.append(f"| {name} | {first:.0f} | {warm:.1f} | {warm / kw:.1f}× |")
    out += ["", ("ksym: `Symbolizer.resolve('sym+0xoff')` over the frames with the warm on-disk index "
            "(first pass), then again with everything in memory (warm); drgn: `prog.source_location(addr)` "
            "on the same addresses, after loading the vmlinux (first pass includes drgn's lazy DWARF indexing)."),
            ""]
    if not any("ksym annotate" in row for row in sp.rows.values()):
        out += ["##### `ksym annotate` over 10,000 frames", "",
                ("TODO: `ksym annotate` is not available in the measured ksym. The 10,000-frame row above "
                "measures `ksym resolve` with the 10,000 frames as arguments instead."), ""]
    return out


def targets_table(sp: SpeedResults) -> list[str]:
    cold = sp.rows["first-ever single frame"]["ksym"]
    warm = sp.rows["warm single frame"]["ksym"]
    inp = sp.inproc["ksym"][1]

    def ok(b: bool) -> str:
        return "met" if b else "**not met**"

    return ["| issue target | measured (median) | |", "|---|---:|---|",
            (f"| first-ever `ksym resolve` ≤ {TARGETS['cold_s']} s wall | {fmt_s(cold.seconds)} s | "
            f"{ok((cold.seconds or 99) <= TARGETS['cold_s'])} |"),
            (f"| first-ever peak RSS ≤ {TARGETS['cold_rss_mb']:.0f} MB | {cold.rss_mb:.0f} MB | "
            f"{ok((cold.rss_mb or 1e9) <= TARGETS['cold_rss_mb'])} |"),
            (f"| warm `ksym resolve` ≤ {TARGETS['warm_s']} s | {fmt_s(warm.seconds)} s | "
            f"{ok((warm.seconds or 99) <= TARGETS['warm_s'])} |"),
            (f"| in-process warm ≤ {TARGETS['inproc_us']:.0f} µs/frame | {inp:.1f} µs | "
            f"{ok(inp <= TARGETS['inproc_us'])} |"), ""]


def run_command(argv: list[str]) -> str:
    """The command line this run was started with (as a user would type it)."""
    return " ".join([".venv/bin/python bench/run.py", *argv])


#: The heads of docs/benchmarks.md's summary tables (one row per run: :func:`summary_rows`).
ACCURACY_HEADER = (("| date | ksym | addresses = addr2line (one batch) | = one-address addr2line | "
                   "specs = scripts/faddr2line | stdout byte-identical |"), "|---|---|---:|---:|---:|---|")
SPEED_HEADER = (("| date | ksym | measurement | ksym s | ksym peak RSS MB | llvm-symbolizer s | addr2line -fi s | "
                "scripts/faddr2line s | ksym ÷ llvm-symbolizer | ksym ÷ addr2line |"),
                "|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
INPROCESS_HEADER = (("| date | ksym | first pass µs/frame (warm index on disk) | warm µs/frame (all in memory) | "
                    "drgn warm µs/frame |"),
                    "|---|---|---:|---:|---:|")


def summary_rows(day: str, commit: str, addr: AddressReport | None, single: list[tuple[int, bool]],
                 spec: SpecReport | None, speed: SpeedResults | None) -> list[str]:
    """The rows docs/benchmarks.md keeps for this run: accuracy, then speed against the anchors of the
    same run (ksym's wall time divided by llvm-symbolizer's and addr2line's)."""
    out: list[str] = []
    if addr is not None and spec is not None:
        adjusted = addr.agree + sum(1 for _, ok in single if ok)
        out += ["Accuracy row:", "", *ACCURACY_HEADER,
                (f"| {day} | {commit} | {addr.agree}/{addr.total} ({addr.percent:.2f}%) | {adjusted}/{addr.total} | "
                 f"{spec.agree}/{spec.total} ({spec.percent:.2f}%) | "
                 f"{'yes' if spec.text_identical and spec.no_match_identical else 'no'} |"), ""]
    if speed is not None:
        labels = {"first-ever single frame": "one frame, first-ever (empty index)",
                  "warm single frame": "one frame, warm index",
                  "batch of 1,000 addresses": "1,000 addresses, warm index",
                  "10,000-frame list (1,000 unique)": "10,000 frames, warm index"}
        out += ["Speed rows:", "", *SPEED_HEADER]
        for label, row in speed.rows.items():
            k, llvm, a2l, fa = (row.get(n) for n in ("ksym", "llvm-symbolizer", "addr2line -fi",
                                                      "scripts/faddr2line"))
            if k is None or not k.seconds:
                continue

            def ratio(m: Measure | None, k: Measure = k) -> str:
                return f"{k.seconds / m.seconds:.2f}" if m is not None and m.seconds and k.seconds else "–"

            extra = " (extrapolated)" if fa is not None and fa.note.startswith("EXTRAPOLATED") else ""
            out.append(f"| {day} | {commit} | {labels.get(label, label)} | {fmt_s(k.seconds)} | "
                       f"{k.rss_mb or 0:.0f} | {fmt_s(llvm.seconds if llvm else None)} | "
                       f"{fmt_s(a2l.seconds if a2l else None)} | {fmt_s(fa.seconds if fa else None)}{extra} | "
                       f"{ratio(llvm)} | {ratio(a2l)} |")
            ann = row.get("ksym annotate")
            if ann is not None and ann.seconds:
                out.append(f"| {day} | {commit} | `ksym annotate`, the same 10,000 frames, warm index | "
                           f"{fmt_s(ann.seconds)} | {ann.rss_mb or 0:.0f} | {fmt_s(llvm.seconds if llvm else None)} | "
                           f"{fmt_s(a2l.seconds if a2l else None)} | {fmt_s(fa.seconds if fa else None)}{extra} | "
                           f"{ratio(llvm, ann)} | {ratio(a2l, ann)} |")
        first, warm = speed.inproc["ksym"]
        out += ["", "In-process row:", "", *INPROCESS_HEADER,
                f"| {day} | {commit} | {first:.0f} | {warm:.1f} | "
                + (f"{speed.inproc['drgn'][1]:.1f} |" if "drgn" in speed.inproc else "– |"), ""]
    return out


def run_log(*, args: argparse.Namespace, argv: list[str], commit: str, vmlinux: Path, script: Path, info: dict[str, str],
            vers: dict[str, str], addr: AddressReport | None, single: list[tuple[int, bool]],
            spec: SpecReport | None, speed: SpeedResults | None, started: str, build_id: str,
            load_start: str, load_end: str, png: str | None, stored: dict[str, str] | None = None,
            ) -> list[str]:
    """The full log of one run, as markdown lines under the run's heading in bench/results."""
    L: list[str] = [f"Command: `{run_command(argv)}`, started {started}.", "",
                    *[f"The {part} section was measured by an earlier `bench/run.py` invocation on this "
                      f"machine at {when} and reused (`--reuse {part}`)." for part, when in (stored or {}).items()],
                    "", "### Summary for docs/benchmarks.md", "",
                    *summary_rows(started[:10], commit, addr, single, spec, speed),
                    "### Setup", "",
                    f"* machine: {machine_line(info)}",
                    (f"* load average (1/5/15 min) at start {load_start}, at end {load_end}. Absolute times "
                     "depend on the machine and its load; medians of several runs are reported, and the ratios "
                     "come from the same run."),
                    (f"* vmlinux: `{vmlinux}` ({vmlinux.stat().st_size / 1e6:.0f} MB, build id {build_id}); "
                    f"anchor script: `{script}`"),
                    ("* the OS page cache holds the vmlinux for every tool (no caches were dropped); \"first-ever\""
                    " means ksym's own on-disk index is empty"),
                    ]
    for k, val in vers.items():
        L.append(f"* {k}: {val}")
    L += ["", "Commands (V = the vmlinux, C = a cache directory):", "", "```",
          "ksym:            .venv/bin/python -m ksym resolve --vmlinux V --cache-dir C FRAME...",
          "faddr2line:      bash linux-source-6.1/scripts/faddr2line V FRAME...",
          "addr2line:       addr2line -f -i -e V  < addresses",
          "llvm-symbolizer: llvm-symbolizer --inlines --functions=linkage --obj=V  < addresses",
          "eu-addr2line:    eu-addr2line -f -i -e V ADDRESS...",
          "drgn:            bench/.venv/bin/python drgn_resolve.py V addresses.txt   (prog.extra_module + try_file,",
          "                 then prog.source_location(addr) per address; script text in bench/speed.py)",
          "```", ""]
    if addr is not None and spec is not None:
        adjusted = addr.agree + sum(1 for _, ok in single if ok)
        L += ["### Accuracy", "",
              (f"Addresses: {addr.total} sampled across kernel text (every executable section's FUNC symbols), "
              f"each compared level by level (function, raw file, line, discriminator, depth) with one "
              f"`addr2line -a -f -i` batch; {addr.seconds:.0f} s."), "",
              "| kind | agree | total |", "|---|---:|---:|"]
        for kind, (ok, n) in addr.by_kind.items():
            L.append(f"| {kind} | {ok} | {n} |")
        L += [f"| **all** | **{addr.agree}** ({addr.percent:.2f}%) | {addr.total} |", ""]
        if addr.mismatches:
            L += [(f"After re-asking each differing address of a fresh one-address addr2line (how "
                  f"scripts/faddr2line runs it): {adjusted}/{addr.total} "
                  f"({100.0 * adjusted / addr.total:.2f}%) agree."), "", "Differences:", ""]
            for (s, got, want), (_, ok1) in zip(addr.mismatches, single):
                L += [f"* `{s.address:#x}` ({s.kind}) — "
                      + ("ksym equals a one-address `addr2line` run; the batch answer depends on earlier "
                         "lookups in the same process (binutils keeps state between lookups)" if ok1 else "**ksym differs**"),
                      f"  * ksym: `{got}`", f"  * addr2line (batch): `{want}`"]
            L.append("")
        src = (f"reused from a stored run of {spec.faddr2line_cached}" if spec.faddr2line_cached
               else "run now")
        L += [(f"Specs: {spec.total} `sym+off` specs compared as text with scripts/faddr2line ({spec.blocks} "
              f"output blocks). ksym's CLI ran once over all specs ({spec.ksym_seconds:.1f} s, cache warm); "
              f"the script ran in 2 parallel batches ({spec.faddr2line_seconds:.0f} s wall, {src})."), "",
              "| shape | agree | total |", "|---|---:|---:|"]
        for shape, (ok, n) in spec.by_shape.items():
            L.append(f"| {shape} | {ok} | {n} |")
        L += [f"| **all** | **{spec.agree}** ({spec.percent:.2f}%) | {spec.total} |", "",
              (f"Whole stdout byte-identical: **{spec.text_identical}**; the `no match for …` lines on stderr "
              f"identical: **{spec.no_match_identical}**."), ""]
        for bad, mine, theirs in spec.mismatches:
            L += [f"* `{bad.spec}` ({bad.shape})", "", "  ksym:", "", "  ```", *("  " + x for x in mine.splitlines()),
                  "  ```", "", "  faddr2line:", "", "  ```", *("  " + x for x in theirs.splitlines()), "  ```", ""]
        for line in spec.no_match_diff:
            L.append(f"* {line}")
        L += [("Shapes: duplicate-name = several FUNC symbols share the name (faddr2line prints one block "
              "per symbol); `.cold`/`.isra`/`.constprop`/`.part` = compiler-made names; decimal and hex "
              "offsets; size-right / size-wrong = `/size` equal to or different from the symbol's size; "
              "offset==size and offset>size (faddr2line resolves the first and skips the second)."), ""]
    if speed is not None:
        L += ["### Speed and memory", "",
              (f"Median of {args.runs} runs per row unless the row says otherwise; wall clock from fork to "
              "exit, peak RSS = `ru_maxrss` from `wait4` (for scripts/faddr2line: its largest child). "
              f"Speed section took {speed.seconds:.0f} s; load average before {speed.load_before}, "
              f"after {speed.load_after}."), "", "#### Issue targets", "", *targets_table(speed),
              "#### Tables", "", *speed_tables(speed)]
        if png:
            L += [f"![benchmarks]({png})", ""]
    L += ["### Notes", "",
          ("* the 10,000-frame dump against the kernel's scripts/decode_stacktrace.sh (cold and warm, whole "
           "dump, same run) is measured by bench/dump.py (bench/results/dump-*.md)."),
          ("* scripts/faddr2line's batch rows are extrapolated from a measured 20-spec batch (it costs "
          "seconds per spec)."),
          "* Cold means ksym's index is empty; the OS page cache was warm for every tool.", ""]
    return L


def write_png(path: Path, speed: SpeedResults, bench_python: str | None) -> str:
    """Bar charts of the wall times (log scale). matplotlib in bench/.venv, else a tiny PNG writer."""
    data = {label: {k + (" (extrapolated)" if m.note.startswith("EXTRAPOLATED") else ""): m.seconds
                    for k, m in row.items() if m.seconds} for label, row in speed.rows.items()}
    if has_module(bench_python, "matplotlib"):
        code = r"""
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
data = json.load(open(sys.argv[1]))
fig, axes = plt.subplots(1, len(data), figsize=(5 * len(data), 4.5))
for ax, (label, row) in zip(axes, data.items()):
    names = list(row)
    vals = [row[n] for n in names]
    colors = ["#1f77b4" if n.startswith("ksym") else "#aaaaaa" for n in names]
    ax.barh(names, vals, color=colors)
    ax.set_xscale("log")
    ax.set_xlim(left=min(vals) / 4, right=max(vals) * 4)
    ax.set_title(label, fontsize=10)
    ax.set_xlabel("wall seconds (log)")
    ax.invert_yaxis()
    for y, v in enumerate(vals):
        ax.text(v, y, f" {v:.3g}", va="center", fontsize=8)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=90)
"""
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(data, f)
        p = subprocess.run([str(bench_python), "-c", code, f.name, str(path)], capture_output=True, text=True,
                           check=False)
        os.unlink(f.name)
        if p.returncode == 0:
            return "matplotlib"
        log(f"matplotlib failed: {p.stderr.strip()[-300:]}")
    _tiny_png(path, data)
    return "built-in PNG writer"


def _tiny_png(path: Path, data: dict[str, dict[str, float]]) -> None:
    """Horizontal log-scale bars, one group per row, ksym blue, anchors grey; no text (see the tables)."""
    import math

    bars = [(k.startswith("ksym"), v) for row in data.values() for k, v in row.items()] or [(True, 1.0)]
    lo = min(v for _, v in bars)
    hi = max(v for _, v in bars)
    width, bar_h, gap = 600, 10, 4
    rows: list[bytes] = []
    white = b"\xff\xff\xff"
    for row in data.values():
        for k, v in row.items():
            span = math.log10(hi / lo) or 1.0
            n = 20 + int((width - 40) * math.log10(v / lo) / span)
            color = b"\x1f\x77\xb4" if k.startswith("ksym") else b"\xaa\xaa\xaa"
            line = b"\x00" + color * n + white * (width - n)
            rows += [line] * bar_h + [b"\x00" + white * width] * 2
        rows += [b"\x00" + white * width] * gap * 3
    raw = b"".join(rows)

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, len(rows), 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    path.write_bytes(png)


# ------------------------------------------------------------------------------------------- main


def save_result(part: str, quick: bool, value: object) -> None:
    """Keep a phase's results in bench/.cache so a later invocation can ``--reuse`` them."""
    path = HERE / ".cache" / f"{part}{'-quick' if quick else ''}.pickle"
    path.parent.mkdir(parents=True, exist_ok=True)
    what = os.environ.get("KSYM_BENCH_COMMIT") or "the working tree"
    when = f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with ksym {what}"
    path.write_bytes(pickle.dumps((when, value)))


def load_result(part: str, quick: bool) -> tuple[Any, str]:
    path = HERE / ".cache" / f"{part}{'-quick' if quick else ''}.pickle"
    when, value = pickle.loads(path.read_bytes())  # our own file, written by save_result
    log(f"reusing the {part} results measured at {when}")
    return value, str(when)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller samples and fewer runs")
    ap.add_argument("--runs", type=int, default=None, help="runs per speed row (default 3; --quick: 3)")
    ap.add_argument("--fresh-anchors", action="store_true", help="do not reuse stored faddr2line output")
    ap.add_argument("--bench-python", help="python with drgn and matplotlib (default: bench/.venv)")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--reuse", action="append", default=[], choices=("accuracy", "speed"),
                    help="take this section from the previous invocation's stored results (bench/.cache)")
    ap.add_argument("--no-accuracy", action="store_true")
    ap.add_argument("--results", type=Path, default=RESULTS,
                    help="directory of the run logs (default bench/results): the log goes to run-<date>.md")
    ap.add_argument("--ksym-commit", metavar="REV",
                    help="measure ksym as committed at REV (git archive into a temporary directory, put first "
                         "on PYTHONPATH) instead of the working tree other people may be editing")
    args = ap.parse_args(argv)
    if args.ksym_commit and not os.environ.get("KSYM_BENCH_COMMIT"):
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.ksym_commit],
                             capture_output=True, text=True, check=True).stdout.strip()
        dest = Path(tempfile.mkdtemp(prefix=f"ksym-{rev}-"))
        archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        # byte-compile it as pip does on install: without .pyc files (and with PYTHONDONTWRITEBYTECODE set)
        # every ksym process would compile its modules again, which no installed copy does
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(dest / "src")], check=True)
        env = {**os.environ, "KSYM_BENCH_COMMIT": rev, "KSYM_BENCH_SRCDIR": str(dest),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(dest / "src"), os.environ.get("PYTHONPATH")]))}
        log(f"measuring ksym at {rev} from {dest / 'src'}")
        os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()),
                                   *(argv if argv is not None else sys.argv[1:])], env)
    args.runs = args.runs or 3
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    day = started[:10]
    commit = ksym_commit()  # before the run: the working tree's HEAD may move while it runs
    load_start = load_average()
    vmlinux, script = ensure_testdata()
    for tool in ("addr2line", "llvm-symbolizer", "eu-addr2line", "readelf"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install binutils llvm elfutils)")
    bench_python = ensure_bench_python(args.bench_python)
    info, vers = machine_info(), versions(bench_python)
    log(f"vmlinux {vmlinux}; load {load_start}")
    work = Path(tempfile.mkdtemp(prefix="ksym-bench-"))
    try:
        sym = Symbolizer(vmlinux, cache_dir=work / "acc")
        addr = spec = None
        single: list[tuple[int, bool]] = []
        stored: dict[str, str] = {}
        if "accuracy" in args.reuse:
            (addr, single, spec), stored["accuracy"] = load_result("accuracy", args.quick)
            print_accuracy(addr, single, spec)
        elif not args.no_accuracy:
            n = 200 if args.quick else 800
            samples = sample_addresses(sym, vmlinux, n, n, n)
            log(f"accuracy: {len(samples)} addresses vs addr2line")
            addr = compare_addresses(sym, vmlinux, samples)
            single = recheck_single(vmlinux, addr)
            specs = sample_specs(sym, 120 if args.quick else 520)
            log(f"accuracy: {len(specs)} specs vs scripts/faddr2line")
            spec = compare_specs(vmlinux, script, work / "acc", specs,
                                 None if args.fresh_anchors else HERE / ".cache")
            print_accuracy(addr, single, spec)
            save_result("accuracy", args.quick, (addr, single, spec))
        speed = None
        if "speed" in args.reuse:
            speed, stored["speed"] = load_result("speed", args.quick)
        elif not args.no_speed:
            speed = measure_speed(vmlinux, script, bench_python, args.runs, args.quick, work)
            save_result("speed", args.quick, speed)
        png_name = None
        if speed is not None:
            png = args.results / f"run-{day}-{started[11:16].replace(':', '')}.png"
            png.parent.mkdir(parents=True, exist_ok=True)
            how = write_png(png, speed, bench_python)
            png_name = png.name
            log(f"wrote {png} ({how})")
        body = run_log(args=args, argv=sys.argv[1:] if argv is None else argv, commit=commit, vmlinux=vmlinux, script=script, info=info, vers=vers, addr=addr,
                       single=single, spec=spec, speed=speed, started=started, build_id=sym.build_id or "?",
                       load_start=load_start, load_end=load_average(), png=png_name, stored=stored)
        out = append_log("run", "bench/run.py", f"{started}, ksym {commit}", body, day=day,
                         results=args.results)
        log(f"wrote {out}")
        if speed is not None:
            print("\n".join(targets_table(speed) + speed_tables(speed)))
        print("\n".join(summary_rows(day, commit, addr, single, spec, speed)))
        sym.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if os.environ.get("KSYM_BENCH_SRCDIR", "").startswith(tempfile.gettempdir()):
            shutil.rmtree(os.environ["KSYM_BENCH_SRCDIR"], ignore_errors=True)
    bad = (addr is not None and len(addr.mismatches) > sum(1 for _, ok in single if ok)) or (
        spec is not None and (spec.mismatches or not spec.text_identical))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
