#!/usr/bin/env python3
"""Benchmark dropcapture: every output mode against the kernel's own count of the drops, and the overhead.

Workload: UDP datagrams from N sender processes to a closed port on 127.0.0.1 inside a network namespace
made for the run; each one is a NO_SOCKET drop at the skb:kfree_skb tracepoint, and that namespace's
``Udp: NoPorts`` counter (/proc/net/snmp) is the truth (nothing leaves the machine). The senders send 64
datagrams per sendmmsg(2) call and pace themselves by the clock once per batch; the rate they achieved is
reported next to every row (a paced row shows the target only if it reached it).

1. every output mode (text, json, save, pcapng, summary, metrics), senders paced at --rate (50,000/s):
   the real CLI, its stdout to a file; the count the kernel made, what dropcapture emitted, delivered and
   lost, and the drops found in the mode's own output (lines, pcapng packets, the summary's count). Every
   drop delivered means emitted == delivered == kernel count == in the output, 0 lost.
2. the same at saturation (senders unpaced): delivered + lost == kernel count exactly.
3. with --overhead: datagrams/s without dropcapture, with the program attached and every drop rejected in
   the kernel, and with every drop captured (``--quiet --json``); and the loss at --rates.

Run as root on a machine prepared by tools/dropcapture-setup.sh:
    .venv/bin/python tools/dropcapture_bench.py [--seconds 5] [--senders 2] [--rate 50000] [--modes json,text]

The tables are printed and the run's full log (machine, load, versions, commit, every table) is appended
to bench/results/dropcapture-<YYYY-MM-DD>.md (bench/results.py); docs/dropcapture.md keeps a summary.
Exit status 1 when a mode missed a drop.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import multiprocessing as mp
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, NamedTuple

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

_CLONE_NEWNET = 0x40000000


def _enter_netns(netns: str | None) -> None:
    """Move this (sender) process into the benchmark's network namespace."""
    if not netns:
        return

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {netns}: {os.strerror(err)}")
    finally:
        os.close(fd)


class _Mmsghdr(ctypes.Structure):
    """struct mmsghdr (a struct msghdr and the bytes sent) for sendmmsg(2)."""

    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
        ("msg_len", ctypes.c_uint),
    ]


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


#: datagrams per sendmmsg(2) call: one system call and one Python step per batch, not per datagram
SEND_BATCH = 64


def _sender(port: int, seconds: float, rate: float, out: mp.Queue, netns: str | None = None) -> None:  # type: ignore[type-arg]
    """Send 16-byte UDP datagrams to 127.0.0.1:port for ``seconds``, ``rate``/s (0: as fast as it can).

    Batches of SEND_BATCH datagrams through sendmmsg(2); paced by the clock checked once per batch
    (the count due by now is sent, then the sender sleeps until the next batch is due).
    """
    _enter_netns(netns)
    libc = ctypes.CDLL(None, use_errno=True)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # struct sockaddr_in: family, port (network order), address, zero padding
    addr = ctypes.create_string_buffer(struct.pack("=H2s4s8x", socket.AF_INET, struct.pack("!H", port),
                                                   socket.inet_aton("127.0.0.1")), 16)
    payload = ctypes.create_string_buffer(b"x" * 16, 16)
    iov = _Iovec(ctypes.addressof(payload), 16)
    msgs = (_Mmsghdr * SEND_BATCH)()
    for m in msgs:
        m.msg_name, m.msg_namelen = ctypes.addressof(addr), 16
        m.msg_iov, m.msg_iovlen = ctypes.addressof(iov), 1
    sendmmsg = libc.sendmmsg
    fd = s.fileno()
    sent = 0
    start = time.monotonic()
    end = start + seconds
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if rate > 0:
            due = int((now - start) * rate)
            if sent >= due:
                time.sleep(min((sent + SEND_BATCH - due) / rate, end - now))
                continue
            n = min(SEND_BATCH, due - sent)
        else:
            n = SEND_BATCH
        got = sendmmsg(fd, msgs, n, 0)
        if got > 0:
            sent += got
    s.close()
    out.put((sent, time.monotonic() - start))


def workload(port: int, seconds: float, senders: int, rate_total: float = 0, netns: str | None = None) -> float:
    """Run the senders; return datagrams per second (all senders)."""
    q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    per = rate_total / senders if rate_total else 0
    procs = [mp.Process(target=_sender, args=(port, seconds, per, q, netns)) for _ in range(senders)]
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    return float(sum(n for n, _ in results) / max(t for _, t in results))


def start_cli(port: int, extra: list[str], stdout: int | IO[str] = subprocess.PIPE,
              mode: list[str] | None = None) -> subprocess.Popen[str]:
    # as users run it: stdout buffered (the "tracing" line comes on stderr, which is line-buffered)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    env.pop("PYTHONUNBUFFERED", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dropcapture", *(mode if mode is not None else ["--quiet", "--json"]),
         "--port", str(port), *extra],
        stdout=stdout, stderr=subprocess.PIPE, text=True, env=env,
    )
    assert proc.stderr is not None
    while True:
        line = proc.stderr.readline()
        if "tracing" in line:
            return proc
        if not line.startswith("dropcapture: ") or "error" in line:
            raise SystemExit(f"dropcapture failed to start: {line}{proc.stderr.read()}")


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


# -- every output mode against the kernel's own count -----------------------------------------------

#: output mode -> dropcapture options (stdout goes to a file the benchmark reads afterwards)
MODES = {
    "text": [],
    "json": ["--json"],
    "save": ["--quiet", "--save", "{dir}/drops.txt"],
    "pcapng": ["--quiet", "--pcapng", "{dir}/drops.pcapng"],
    "summary": ["--summary"],
    "metrics": ["--quiet", "--metrics", "127.0.0.1:{mport}"],
}

_KERNEL_LINE = re.compile(
    r"kernel: (\d+) kfree_skb hits, (\d+) filtered, (\d+) emitted = (\d+) delivered \+ (\d+) lost "
    r"\((\d+) buffer full, (\d+) unread at exit\)"
)


class ModeResult(NamedTuple):
    emitted: int
    delivered: int
    lost: int
    #: drops found in the mode's own output (lines, packets, the summary's count)
    written: int
    #: of ``lost``: the buffer was full (the rest was still unread when the capture ended)
    lost_full: int
    #: CPU seconds (user + system) dropcapture used while the senders ran, and per delivered drop
    cpu: float = 0.0

    @property
    def cpu_us_per_drop(self) -> float:
        return self.cpu / self.delivered * 1e6 if self.delivered else 0.0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (/proc/PID/stat), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def udp_noports(netns: str) -> int:
    text = subprocess.run(["ip", "netns", "exec", netns, "cat", "/proc/net/snmp"], check=True,
                          capture_output=True, text=True, timeout=30).stdout
    head, values = [ln.split() for ln in text.splitlines() if ln.startswith("Udp:")][:2]
    return int(values[head.index("NoPorts")])


def _pcapng_packets(path: Path) -> int:
    """Enhanced Packet Blocks in a little-endian pcapng file (a block walk, no parsing of contents)."""
    data = path.read_bytes()
    n = pos = 0
    while pos + 8 <= len(data):
        btype, blen = struct.unpack_from("<II", data, pos)
        if blen < 12 or pos + blen > len(data):
            raise SystemExit(f"{path}: damaged block at {pos}")
        n += btype == 6
        pos += blen
    return n


def run_mode(mode: str, port: int, netns: str, seconds: float, senders: int, rate: float,
             extra: list[str], tmp: Path, settle: float = 2.0) -> tuple[ModeResult, float]:
    """One capture in ``mode`` while the senders run; returns its counts and the senders' rate."""
    mport = free_tcp_port()
    opts = [o.format(dir=tmp, mport=mport) for o in MODES[mode]]
    out_path = tmp / f"stdout-{mode}"
    with out_path.open("w") as out:
        if _has_netns_option():  # only the namespace's drops, whatever else the machine drops
            extra = [*extra, "--netns", f"/var/run/netns/{netns}"]
        proc = start_cli(port, extra, stdout=out, mode=opts)
        cpu0 = cpu_seconds(proc.pid)  # compiling and loading are done: from here on it is the drops
        got = workload(port, seconds, senders, rate, netns)
        time.sleep(settle)  # the reader may be behind on a busy machine: let it catch up before Ctrl-C
        cpu = cpu_seconds(proc.pid) - cpu0
        proc.send_signal(2)
        _o, err = proc.communicate(timeout=120)
    text = out_path.read_text(encoding="utf-8", errors="replace")
    if mode == "json":
        lines = text.splitlines()
        summary = json.loads(lines[-1])["summary"]
        k = summary["kernel"]
        res = ModeResult(k["emitted"], k["delivered"], k["lost"], len(lines) - 1, k["lost_full"], cpu)
    else:
        m = _KERNEL_LINE.search(text) or _KERNEL_LINE.search(err)
        if not m:
            raise SystemExit(f"{mode}: no summary: {err[-2000:]}")
        _hits, _filtered, emitted, delivered, lost, full, _exit = (int(g) for g in m.groups())
        written = {
            "text": sum(1 for ln in text.splitlines() if " NO_SOCKET " in ln),
            "save": sum(1 for ln in (tmp / "drops.txt").read_text().splitlines() if ln.startswith("drop "))
            if mode == "save" else 0,
            "pcapng": _pcapng_packets(tmp / "drops.pcapng") if mode == "pcapng" else 0,
        }.get(mode)
        if written is None:  # summary, metrics: the drops counted
            m2 = re.search(r"summary: (\d+) drops", text + err)
            written = int(m2.group(1)) if m2 else -1
        res = ModeResult(emitted, delivered, lost, written, full, cpu)
    return res, got


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bcc_version() -> str:
    code = "try:\n    import bcc\n    print(bcc.__version__)\nexcept ImportError:\n    print('not installed')"
    return first_line([sys.executable, "-c", code])


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@functools.lru_cache(maxsize=1)
def _has_netns_option() -> bool:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    text = subprocess.run([sys.executable, "-m", "dropcapture", "--help"], capture_output=True, text=True,
                          env=env, check=False).stdout
    return "--netns" in text


def overhead(args: argparse.Namespace, extra: list[str], emit: Callable[[str], None]) -> None:
    """The overhead on the workload (root namespace; rounds alternate) and the loss at --rates."""
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--senders", type=int, default=2)
    ap.add_argument("--rate", type=float, default=50000, help="paced drops/s for every output mode")
    ap.add_argument("--modes", default=",".join(MODES), help=f"output modes (default: {','.join(MODES)})")
    ap.add_argument("--no-saturation", action="store_true", help="skip the unpaced run of every mode")
    ap.add_argument("--overhead", action="store_true",
                    help="also the overhead on the workload and the loss at --rates (dropcapture --quiet --json)")
    ap.add_argument("--rates", default="10000,20000,40000,80000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--perf-buffer", action="store_true", help="benchmark the perf buffer path")
    ap.add_argument("--buffer-pages", type=int, help="dropcapture --buffer-pages N")
    ap.add_argument("--results", type=Path, default=RESULTS,
                    help="directory of the run logs (default bench/results): the log goes to dropcapture-<date>.md")
    args = ap.parse_args()
    extra = ["--perf-buffer"] if args.perf_buffer else []
    if args.buffer_pages:
        extra += ["--buffer-pages", str(args.buffer_pages)]
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r} (one of {', '.join(MODES)})")
    started, load_start = now(), load_average()
    commit, source = ksym_commit(), ksym_source()  # before the run: the working tree's HEAD may move
    lines: list[str] = []
    failures = 0

    def emit(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    emit(f"* {os.uname().release}, {os.cpu_count()} CPUs, {args.senders} senders, {args.seconds}s per run,"
         f" {'perf' if args.perf_buffer else 'ring'} buffer"
         f"{f' of {args.buffer_pages} pages' if args.buffer_pages else ''}; the senders in a network namespace of their own,"
         f" whose UdpNoPorts is the truth{'; dropcapture --netns of it' if _has_netns_option() else ''}")
    netns = f"dcbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        with tempfile.TemporaryDirectory(prefix="dcbench-") as tmpdir:
            tmp = Path(tmpdir)
            emit(f"\n### every output mode, senders paced at {args.rate:,.0f} drops/s\n")
            emit("| mode | achieved/s | kernel count (UdpNoPorts) | emitted | delivered | in the output | lost |"
                 " every drop delivered | dropcapture CPU µs/drop |")
            emit("|---|---|---|---|---|---|---|---|---|")
            for mode in modes:
                port = free_port()
                before = udp_noports(netns)
                res, got = run_mode(mode, port, netns, args.seconds, args.senders, args.rate, extra, tmp)
                truth = udp_noports(netns) - before
                ok = res.emitted == res.delivered == truth == res.written and res.lost == 0
                failures += not ok
                emit(f"| {mode} | {got:,.0f} | {truth:,} | {res.emitted:,} | {res.delivered:,} | {res.written:,} |"
                     f" {res.lost:,} ({res.lost_full:,} buffer full) | {'yes' if ok else 'NO'} |"
                     f" {res.cpu_us_per_drop:.1f} |")
            if not args.no_saturation:
                emit("\n### every output mode at saturation (senders unpaced)\n")
                emit("| mode | achieved/s | kernel count (UdpNoPorts) | delivered | lost | in the output |"
                     " delivered + lost == count | dropcapture CPU µs/drop |")
                emit("|---|---|---|---|---|---|---|---|")
                for mode in modes:
                    port = free_port()
                    before = udp_noports(netns)
                    res, got = run_mode(mode, port, netns, args.seconds, args.senders, 0, extra, tmp)
                    truth = udp_noports(netns) - before
                    ok = res.delivered + res.lost == truth == res.emitted and res.written == res.delivered
                    failures += not ok
                    emit(f"| {mode} | {got:,.0f} | {truth:,} | {res.delivered:,} | {res.lost:,} ({res.lost_full:,} buffer"
                         f" full) | {res.written:,} |"
                         f" {'yes' if ok else 'NO'} | {res.cpu_us_per_drop:.1f} |")
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
    if args.overhead:
        overhead(args, extra, emit)
    cmd = " ".join([".venv/bin/python tools/dropcapture_bench.py", *sys.argv[1:]])
    head = [f"Command: `{cmd}` (as root), started {started}, ksym {source}.", "",
            f"* machine: {machine_line(machine_info())}",
            f"* load average (1/5/15 min) at start {load_start}, at end {load_average()}",
            f"* python {first_line([sys.executable, '--version'])}; bcc {bcc_version()}"]
    path = append_log("dropcapture", "tools/dropcapture_bench.py", f"{started}, ksym {commit}",
                      [*head, *lines], day=started[:10], results=args.results)
    print(f"wrote {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
