#!/usr/bin/env python3
"""Benchmark dropcapture: drops/s captured without loss, and the overhead on the dropping workload.

Workload: UDP datagrams from N sender processes to a closed port on 127.0.0.1; each one is a
NO_SOCKET drop at the skb:kfree_skb tracepoint (loopback only, nothing leaves the machine).

1. overhead: each sender sends as fast as it can for --seconds; datagrams/s without dropcapture and
   with ``dropcapture --quiet --json --port P`` running (the real CLI, full decoding, stacks, summary).
2. capacity: senders paced at fixed rates; the CLI's summary says how many drops passed the filter
   (emitted), how many the CLI received (delivered) and lost; emitted == delivered + lost is checked.

Run as root on a machine prepared by tools/dropcapture-setup.sh:
    .venv/bin/python tools/dropcapture_bench.py [--seconds 5] [--senders 2] [--rates 10000,20000,40000]

The tables are printed and the run's full log (machine, load, versions, commit, every table) is appended
to bench/results/dropcapture-<YYYY-MM-DD>.md (bench/results.py); docs/dropcapture.md keeps a summary.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.results import (
    RESULTS,
    append_log,
    first_line,
    ksym_commit,
    ksym_source,
    load_average,
    machine_info,
    machine_line,
    now,
)


def _sender(port: int, seconds: float, rate: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dst = ("127.0.0.1", port)
    payload = b"x" * 16
    sent = 0
    start = time.monotonic()
    end = start + seconds
    batch = 64
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if rate > 0:
            due = int((now - start) * rate)
            if sent >= due:
                time.sleep(min(0.0005, end - now))
                continue
            n = min(batch, due - sent)
        else:
            n = batch
        for _ in range(n):
            try:
                s.sendto(payload, dst)
            except OSError:
                pass
        sent += n
    out.put((sent, time.monotonic() - start))


def workload(port: int, seconds: float, senders: int, rate_total: float = 0) -> float:
    """Run the senders; return datagrams per second (all senders)."""
    q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    per = rate_total / senders if rate_total else 0
    procs = [mp.Process(target=_sender, args=(port, seconds, per, q)) for _ in range(senders)]
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    return float(sum(n for n, _ in results) / max(t for _, t in results))


def start_cli(port: int, extra: list[str]) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dropcapture", "--quiet", "--json", "--port", str(port), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    if "tracing" not in line:
        raise SystemExit(f"dropcapture failed to start: {line}{proc.stderr.read()}")
    return proc


def stop_cli(proc: subprocess.Popen[str]) -> dict[str, object]:
    time.sleep(0.5)
    proc.send_signal(2)
    out, _err = proc.communicate(timeout=60)
    last = [ln for ln in out.splitlines() if ln.strip()][-1]
    summary: dict[str, object] = json.loads(last)["summary"]
    k = summary["kernel"]
    assert isinstance(k, dict)
    # the capture's own invariant (docs/dropcapture.md, Accounting)
    assert k["emitted"] == k["delivered"] + k["lost"] == k["hits"] - k["filtered"], k
    assert k["delivered"] == summary["drops"], summary
    return summary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bcc_version() -> str:
    code = "try:\n    import bcc\n    print(bcc.__version__)\nexcept ImportError:\n    print('not installed')"
    return first_line([sys.executable, "-c", code])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--senders", type=int, default=2)
    ap.add_argument("--rates", default="10000,20000,40000,80000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--perf-buffer", action="store_true", help="benchmark the perf buffer path")
    ap.add_argument("--results", type=Path, default=RESULTS,
                    help="directory of the run logs (default bench/results): the log goes to dropcapture-<date>.md")
    args = ap.parse_args()
    extra = ["--perf-buffer"] if args.perf_buffer else []
    started, load_start = now(), load_average()
    commit, source = ksym_commit(), ksym_source()  # before the run: the working tree's HEAD may move
    lines: list[str] = []

    def emit(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    emit(f"* {os.uname().release}, {os.cpu_count()} CPUs, {args.senders} senders, {args.seconds}s per run,"
         f" {'perf' if args.perf_buffer else 'ring'} buffer")

    emit("\n### overhead (senders unpaced; rounds alternate without/with)\n")
    emit("| round | without /s | probe only (filter rejects in kernel) /s | change | full capture /s | change"
          " | kernel matched | received | lost |")
    emit("|---|---|---|---|---|---|---|---|---|")
    bases, probes, withs = [], [], []
    for rnd in range(args.rounds):
        port = free_port()
        base = workload(port, args.seconds, args.senders)
        # the program runs on every drop but its --port filter rejects them: in-kernel cost only
        proc = start_cli(free_port(), extra)
        probe = workload(port, args.seconds, args.senders)
        stop_cli(proc)
        proc = start_cli(port, extra)
        with_cap = workload(port, args.seconds, args.senders)
        s = stop_cli(proc)
        k = s["kernel"]
        assert isinstance(k, dict)
        bases.append(base)
        probes.append(probe)
        withs.append(with_cap)
        emit(f"| {rnd + 1} | {base:,.0f} | {probe:,.0f} | {(probe / base - 1) * 100:+.1f}% | {with_cap:,.0f} |"
              f" {(with_cap / base - 1) * 100:+.1f}% | {k['emitted']:,} | {s['drops']:,} | {k['lost']:,} |")
    mb, mp_, mw = statistics.median(bases), statistics.median(probes), statistics.median(withs)
    emit(f"| median | {mb:,.0f} | {mp_:,.0f} | {(mp_ / mb - 1) * 100:+.1f}% | {mw:,.0f} | {(mw / mb - 1) * 100:+.1f}%"
          " | | | |")

    emit("\n### capacity (senders paced)\n")
    emit("| offered drops/s | achieved/s | kernel matched | received | lost | loss |")
    emit("|---|---|---|---|---|---|")
    for rate in [float(r) for r in args.rates.split(",") if r]:
        port = free_port()
        proc = start_cli(port, extra)
        got = workload(port, args.seconds, args.senders, rate)
        s = stop_cli(proc)
        k = s["kernel"]
        assert isinstance(k, dict)
        matched = k["emitted"]
        drops = s["drops"]
        assert isinstance(drops, int)
        loss = (matched - drops) / matched * 100 if matched else 0.0
        emit(f"| {rate:,.0f} | {got:,.0f} | {matched:,} | {drops:,} | {k['lost']:,} | {loss:.2f}% |")
    cmd = " ".join([".venv/bin/python tools/dropcapture_bench.py", *sys.argv[1:]])
    head = [f"Command: `{cmd}` (as root), started {started}, ksym {source}.", "",
            f"* machine: {machine_line(machine_info())}",
            f"* load average (1/5/15 min) at start {load_start}, at end {load_average()}",
            f"* python {first_line([sys.executable, '--version'])}; bcc {bcc_version()}"]
    path = append_log("dropcapture", "tools/dropcapture_bench.py", f"{started}, ksym {commit}",
                      [*head, *lines], day=started[:10], results=args.results)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
