#!/usr/bin/env python3
"""The accuracy harness of bench/run.py (bench/accuracy.py) run against a portable index file instead of
the vmlinux: the addresses compared level by level with ``addr2line -fi`` on the vmlinux, the ``sym+off``
specs compared as text with scripts/faddr2line on the vmlinux, ksym answering from the file alone.

    python bench/index_accuracy.py --index FILE [--vmlinux V] [--addresses 800] [--specs 520]
                                   [--anchor-cache DIR] [--no-specs]

The samples are bench/run.py's (same seeds and counts by default), so a faddr2line output bench/run.py
stored (bench/.cache, or ``--anchor-cache``) is reused. The log is appended to the day's
``bench/results/index-accuracy-<date>.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (REPO, REPO / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from anchors import addr2line_batch, find_faddr2line, find_test_vmlinux, joined_faddr2line_stdout

from bench.accuracy import compare_addresses, compare_specs, faddr2line_cached, sample_addresses, sample_specs
from bench.results import append_log
from ksym import Symbolizer


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--index", type=Path, required=True, help="the portable index file (ksym index build)")
    ap.add_argument("--vmlinux", type=Path, help="the vmlinux it was made from (default: the test data)")
    ap.add_argument("--addresses", type=int, default=800, help="addresses of each kind (entry, insn, return)")
    ap.add_argument("--specs", type=int, default=520, help="sym+off specs")
    ap.add_argument("--anchor-cache", type=Path, default=HERE / ".cache", help="stored faddr2line outputs")
    ap.add_argument("--no-specs", action="store_true", help="only the addresses (faddr2line is slow)")
    ap.add_argument("--no-addresses", action="store_true", help="only the specs")
    args = ap.parse_args(argv)
    vmlinux = args.vmlinux or find_test_vmlinux()
    script = find_faddr2line()
    if vmlinux is None or script is None:
        sys.exit("index_accuracy: no test vmlinux or scripts/faddr2line: run tools/fetch-testdata.sh")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"* index file: {args.index} ({args.index.stat().st_size / 1e6:.1f} MB); vmlinux {vmlinux}",
        f"* load average {Path('/proc/loadavg').read_text().split()[:3]}",
        "",
    ]
    ok = True
    with Symbolizer.from_index(args.index) as sym:
        if not args.no_addresses:
            samples = sample_addresses(sym, vmlinux, args.addresses, args.addresses, args.addresses)
            addr = compare_addresses(sym, vmlinux, samples)
            kinds = ", ".join(f"{k} {a}/{n}" for k, (a, n) in sorted(addr.by_kind.items()))
            lines.append(
                f"addresses vs `addr2line -fi`: {addr.agree}/{addr.total} identical ({kinds}); "
                f"{addr.seconds:.0f} s"
            )
            # addr2line given one address at a time (bench/run.py does the same: a batch can answer otherwise)
            single = [addr2line_batch(vmlinux, [s.address])[0] == got for s, got, _want in addr.mismatches]
            lines.append(
                f"the {len(addr.mismatches)} that differ, against `addr2line -fi` given that address "
                f"alone: {sum(single)} identical"
            )
            lines += [
                f"  - differs from the batch: {s.address:#x} ({s.kind}): ksym {got} addr2line {want}"
                for s, got, want in addr.mismatches[:20]
            ]
            print("\n".join(lines[3:]), flush=True)
            ok = addr.agree + sum(single) == addr.total
        if not args.no_specs:
            specs = sample_specs(sym, args.specs)
            with tempfile.TemporaryDirectory() as cache:
                rep = compare_specs(
                    vmlinux, script, Path(cache), specs, args.anchor_cache, index_file=args.index
                )
            lines.append(
                f"specs vs scripts/faddr2line: {rep.agree}/{rep.total} identical per spec; whole stdout "
                f"{'identical' if rep.text_identical else '**different**'}; `no match` lines "
                f"{'identical' if rep.no_match_identical else '**different**'}; {rep.blocks} blocks; "
                f"faddr2line {'reused from ' + rep.faddr2line_cached if rep.faddr2line_cached else 'run'}"
            )
            lines += [f"  - differs: {s.spec}" for s, _o, _r in rep.mismatches[:20]]
            print(lines[-1 - min(20, len(rep.mismatches))], flush=True)
            ok = ok and rep.text_identical and rep.no_match_identical
            # one run reads its first names from the file's name pieces, later ones from the symbol table:
            # each spec again as the only frame of a run
            ref_out = faddr2line_cached(vmlinux, script, [s.spec for s in specs], args.anchor_cache)[0]
            alone = joined_faddr2line_stdout([_alone(args.index, s.spec) for s in specs])
            lines.append(
                f"each spec the only frame of its run (its name read from the name pieces): whole stdout "
                f"{'identical' if alone == ref_out else '**different**'}"
            )
            print(lines[-1], flush=True)
            ok = ok and alone == ref_out
    cmd = " ".join(["python", "bench/index_accuracy.py", *(sys.argv[1:] if argv is None else argv)])
    out = append_log("index-accuracy", "bench/index_accuracy.py", started, [f"Command: `{cmd}`", "", *lines])
    print(f"written to {out}")
    return 0 if ok else 1


def _alone(index: Path, spec: str) -> str:
    """What ``ksym resolve --index INDEX SPEC`` prints on stdout (run in this process)."""
    import contextlib
    import io

    from ksym.cli import main as ksym_main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        ksym_main(["resolve", "--index", str(index), spec])
    return out.getvalue()


if __name__ == "__main__":
    sys.exit(main())
