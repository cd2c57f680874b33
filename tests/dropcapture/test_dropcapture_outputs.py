"""Integration of the outputs (real BPF, real drops inside a network namespace made here): --summary's drop
sites and --pcapng against the kernel's own counters (nft, UdpNoPorts) and tshark, --metrics scraped
over 127.0.0.1 and parsed by prometheus_client's parser, --top on a pseudo-terminal.

Traffic stays on loopback inside the namespace; the metrics server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import pty
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from dc_helpers import cli_env, dropcapture_cmd, udp_noports

pytestmark = pytest.mark.kernel

_SEND = """
import socket, sys
n, port, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    for _ in range(n):
        s.sendto(b"x" * size, ("127.0.0.1", port))
"""


def send_udp(netns: str, n: int, port: int, size: int = 100) -> int:
    """``n`` datagrams to a closed port inside ``netns``; returns the NO_SOCKET drops the kernel counted."""
    before = udp_noports(netns)
    subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", _SEND, str(n), str(port), str(size)],
        check=True,
        timeout=60,
    )
    truth = udp_noports(netns) - before
    assert 0 < truth <= n
    return truth


def ns_port() -> int:
    """A port for drops inside the test's namespace (closed there; unlikely to be another test's)."""
    return random.randint(20000, 59999)


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Run:
    """dropcapture in the background; ``stdout`` may be a pseudo-terminal's slave side (then read
    ``master``). Reaped by the ``run`` fixture whatever happens."""

    def __init__(self, *args: str, tty: bool = False) -> None:
        self.master: int | None = None
        slave: int | None = None
        if tty:
            self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            dropcapture_cmd(*args),
            stdout=slave if tty else subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=cli_env(),
            cwd="/",
        )
        if slave is not None:
            os.close(slave)
        self.stderr = ""
        self.screen = ""
        self.wait_stderr("tracing skb:kfree_skb", timeout=90)

    def wait_stderr(self, text: str, timeout: float) -> None:
        err: IO[str] | None = self.proc.stderr
        assert err is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([err], [], [], 0.1)
            if ready:
                line = err.readline()
                self.stderr += line
                if text in line:
                    return
                if not line:
                    break
            elif self.proc.poll() is not None:
                break
        raise AssertionError(f"no {text!r} on stderr: {self.stderr}")

    def read_tty(self, until: re.Pattern[str], timeout: float = 20) -> re.Match[str]:
        """Read the terminal until ``until`` matches the text after the last screen clear."""
        assert self.master is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    self.screen += os.read(self.master, 65536).decode("utf-8", "replace")
                except OSError:  # EIO: the child closed the terminal
                    break
                m = until.search(self.screen.rsplit("\x1b[2J", 1)[-1])
                if m:
                    return m
        raise AssertionError(f"no {until.pattern!r} on the terminal: {self.screen[-3000:]!r} {self.stderr}")

    def finish(self, sig: int = signal.SIGINT, timeout: float = 60) -> str:
        """Stop it; returns stdout (for a terminal: everything it drew) after checking exit 0."""
        time.sleep(0.3)  # batched ring buffer wake-ups
        self.proc.send_signal(sig)
        if self.master is not None:
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                ready, _, _ = select.select([self.master], [], [], 0.1)
                if ready:
                    try:
                        self.screen += os.read(self.master, 65536).decode("utf-8", "replace")
                    except OSError:
                        break
            out = ""
            _, err = self.proc.communicate(timeout=timeout)
            while True:  # what is left on the terminal
                ready, _, _ = select.select([self.master], [], [], 0.2)
                if not ready:
                    break
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                self.screen += chunk.decode("utf-8", "replace")
            out = self.screen
        else:
            out, err = self.proc.communicate(timeout=timeout)
        self.stderr += err
        assert self.proc.returncode == 0, self.stderr
        assert "Traceback" not in self.stderr
        return out

    def reap(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        if self.master is not None:
            os.close(self.master)
            self.master = None


@pytest.fixture
def run() -> Iterator[Any]:
    started: list[Run] = []

    def _start(*args: str, tty: bool = False) -> Run:
        r = Run(*args, tty=tty)
        started.append(r)
        return r

    yield _start
    for r in started:
        r.reap()


def test_metrics_scraped_during_capture(netns: str, run: Any) -> None:
    parser = pytest.importorskip("prometheus_client.parser", reason="prometheus_client is not installed")
    port, mport = ns_port(), free_tcp_port()
    # --quiet: nobody reads stdout until the end, per-drop lines would fill the pipe and block the capture
    cli = run(
        "--json",
        "--quiet",
        "--netns",
        f"/var/run/netns/{netns}",
        "--proto",
        "udp",
        "--port",
        str(port),
        "--metrics",
        f"127.0.0.1:{mport}",
    )
    assert f"metrics at http://127.0.0.1:{mport}/metrics" in cli.stderr
    truth = send_udp(netns, 300, port)

    def scrape() -> tuple[dict[str, Any], str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10) as resp:
            ctype = resp.headers["Content-Type"]
            text = resp.read().decode()
        return {f.name: f for f in parser.text_string_to_metric_families(text)}, ctype

    deadline = time.monotonic() + 20
    while True:
        fams, ctype = scrape()
        drops = {
            s.labels["reason"]: s.value
            for s in fams["dropcapture_drops"].samples
            if s.name == "dropcapture_drops_total"
        }
        emitted = (
            [
                s.value
                for s in fams.get("dropcapture_kernel_emitted", None).samples
                if s.name.endswith("_total")
            ]
            if "dropcapture_kernel_emitted" in fams
            else []
        )
        if drops.get("NO_SOCKET") == truth and emitted == [truth] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert ctype.startswith("text/plain; version=0.0.4")
    assert drops == {"NO_SOCKET": truth}, (drops, truth)
    assert emitted == [truth]
    sites = [s for s in fams["dropcapture_site_drops"].samples if s.name == "dropcapture_site_drops_total"]
    assert sum(s.value for s in sites) == truth
    assert all(
        s.labels["reason"] == "NO_SOCKET" and s.labels["location"].startswith("__udp4_lib_rcv+0x")
        for s in sites
    ), sites
    lost = {s.labels["cause"]: s.value for s in fams["dropcapture_lost"].samples if s.name.endswith("_total")}
    assert lost == {"buffer_full": 0, "unread_at_exit": 0}
    out = cli.finish()
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 1
    summary = rows[-1]["summary"]
    assert summary["drops"] == summary["kernel"]["emitted"] == truth
    assert [(s["reason"], s["location"], s["count"]) for s in summary["by_site"]] == [
        (s.labels["reason"], s.labels["location"], s.value) for s in sites
    ]
    # the server is gone with the capture
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", mport), timeout=2).close()


def test_top_on_a_terminal(netns: str, run: Any) -> None:
    port = ns_port()
    cli = run("--top", "--netns", f"/var/run/netns/{netns}", "--proto", "udp", "--port", str(port), tty=True)
    cli.read_tty(re.compile(r"DROPS\s+RATE/s\s+REASON\s+LOCATION\s+FILE:LINE"))
    truth = send_udp(netns, 200, port)
    row = re.compile(rf"^\s+{truth}\s+\d+\s+NO_SOCKET\s+__udp4_lib_rcv\+0x[0-9a-f]+\s*$", re.MULTILINE)
    m = cli.read_tty(row)
    head = cli.screen.rsplit("\x1b[2J", 1)[-1].splitlines()[0]
    assert head.startswith(f"dropcapture --top: {truth} drops in ") and "1 drop sites, 0 lost" in head, head
    frames_before = cli.screen.count("\x1b[2J")
    time.sleep(3.5)
    cli.read_tty(row)
    assert cli.screen.count("\x1b[2J") >= frames_before + 2  # redrawn every second, also without drops
    screen = cli.finish()
    assert m is not None and screen.endswith("\x1b[?25h" + screen.rsplit("\x1b[?25h", 1)[-1])
    # the summary follows the last frame, with the same site
    tail = screen.rsplit("\x1b[?25h", 1)[-1]
    assert f"--- dropcapture summary: {truth} drops" in tail
    assert re.search(
        rf"^\s+{truth} drops at __udp4_lib_rcv\+0x[0-9a-f]+ \(NO_SOCKET\)\r?$", tail, re.MULTILINE
    ), tail


def _nft(ns: str, *args: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "nft", *args], check=True, timeout=30, capture_output=True, text=True
    ).stdout


def nft_counter(ns: str) -> int:
    text = _nft(ns, "list", "chain", "inet", "dcout", "out")
    m = re.search(r"counter packets (\d+)", text)
    assert m, text
    return int(m.group(1))


def curl_firewalled(ns: str, port: int) -> None:
    curl = subprocess.Popen(
        ["ip", "netns", "exec", ns, "curl", "-s", "--max-time", "1", f"http://127.0.0.2:{port}/"]
    )
    try:
        curl.wait(timeout=30)
    finally:
        if curl.poll() is None:
            curl.kill()
        curl.wait()


def firewall(ns: str, port: int) -> None:
    """The tutorial's rule, with a counter: TCP to 127.0.0.2:port dropped at the OUTPUT hook."""
    _nft(ns, "add", "table", "inet", "dcout")
    _nft(ns, "add chain inet dcout out { type filter hook output priority 0; }")
    _nft(
        ns,
        "add",
        "rule",
        "inet",
        "dcout",
        "out",
        "ip",
        "daddr",
        "127.0.0.2",
        "tcp",
        "dport",
        str(port),
        "counter",
        "drop",
    )


def test_summary_counts_drop_sites(netns: str, run: Any) -> None:
    tcp, port = ns_port(), ns_port()
    firewall(netns, tcp)
    # only the namespace's drops: its nft counter and UdpNoPorts are the truth
    cli = run("--summary", "--netns", f"/var/run/netns/{netns}")
    curl_firewalled(netns, tcp)
    udp = send_udp(netns, 50, port)
    out = cli.finish()
    nft = nft_counter(netns)
    assert nft >= 1
    lines = out.splitlines()
    assert lines[0].startswith("--- dropcapture summary: ")
    i = lines.index(next(ln for ln in lines if ln.startswith("drops by site (of ")))
    sites = {}
    for ln in lines[i + 1 :]:
        m = re.match(r"^\s+(\d+) drops at (\S+) \((\w+)\)", ln)
        if not m:
            break
        sites[(m.group(3), m.group(2).split("+")[0])] = int(m.group(1))
    assert sites.get(("NETFILTER_DROP", "nft_do_chain")) == nft, (sites, nft)
    assert sites.get(("NO_SOCKET", "__udp4_lib_rcv")) == udp, (sites, udp)
    # stacks whole: the NETFILTER_DROP stack runs down to the syscall entry
    assert "entry_SYSCALL_64" in out.split("top stacks")[1]


def test_pcapng_read_back_by_tshark(netns: str, run: Any, tmp_path: Path) -> None:
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed (tools/setup.sh installs it)")
    tcp, port = ns_port(), ns_port()
    firewall(netns, tcp)
    path = tmp_path / "drops.pcapng"
    inode = os.stat(f"/var/run/netns/{netns}").st_ino
    cli = run("--json", "--pcapng", str(path), "--netns", f"/var/run/netns/{netns}", "--snaplen", "96")
    curl_firewalled(netns, tcp)
    udp = send_udp(netns, 5, port, size=300)
    out = cli.finish()
    nft = nft_counter(netns)
    rows = [json.loads(line) for line in out.splitlines()]
    events, summary = rows[:-1], rows[-1]["summary"]
    assert len(events) == summary["drops"] == nft + udp, (len(events), nft, udp)
    got = tshark_rows(
        path,
        "frame.interface_name",
        "frame.interface_description",
        "frame.comment",
        "frame.time_epoch",
        "frame.cap_len",
        "frame.len",
        "ip.src",
        "ip.dst",
        "ip.len",
        "tcp.dstport",
        "tcp.flags.syn",
        "udp.dstport",
        "eth.type",
    )
    assert len(got) == len(events)  # one packet per drop, in the same order
    for ev, (ifname, desc, comment, epoch, caplen, length, src, dst, iplen, tport, syn, uport, etype) in zip(
        events, got, strict=True
    ):
        assert comment == f"{ev['reason']} at {ev['location']} (comm {ev['comm']}, pid {ev['pid']})"
        assert ifname == (ev["ifname"] or (f"ifindex{ev['ifindex']}" if ev["ifindex"] else "-"))
        assert desc == f"netns {inode} ifindex {ev['ifindex'] or 0}"
        assert abs(float(epoch) - ev["time"]) < 2e-6
        assert (src, dst) == (ev["saddr"], ev["daddr"])
        eth = 14 if etype else 0  # a MAC header before the IP one (LINKTYPE_ETHERNET)
        assert int(length) == eth + int(iplen) and int(caplen) == min(96, int(length))
        if ev["protocol"] == "TCP":
            assert (ev["reason"], int(tport), syn) == ("NETFILTER_DROP", tcp, "1")
        else:
            assert (ev["reason"], int(uport), int(iplen)) == ("NO_SOCKET", port, 20 + 8 + 300)
    assert sum(ev["protocol"] == "UDP" for ev in events) == udp
    # nanosecond timestamps (if_tsresol 9): the packets are as far apart as the kernel's stamps
    ns = [int(sec) * 10**9 + int(frac.ljust(9, "0")) for sec, frac in (r[3].split(".") for r in got)]
    assert [n - ns[0] for n in ns] == [ev["ktime_ns"] - events[0]["ktime_ns"] for ev in events]


def tshark_rows(path: Path, *fields: str) -> list[list[str]]:
    cmd = ["tshark", "-r", str(path), "-T", "fields", "-E", "separator=|", "-E", "occurrence=f"]
    for f in fields:
        cmd += ["-e", f]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [ln.split("|") for ln in proc.stdout.splitlines()]


def test_text_lines_live(netns: str, run: Any) -> None:
    # the text columns of real drops: microsecond time, the IP packet's length, TCP flag names
    tcp, port = ns_port(), ns_port()
    firewall(netns, tcp)
    cli = run("--no-stack", "--netns", f"/var/run/netns/{netns}")
    curl_firewalled(netns, tcp)
    udp = send_udp(netns, 3, port, size=300)
    out = cli.finish()
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["TIME", "PID", "COMM", "CPU", "PROTO", "LEN"]
    rows = [ln.split() for ln in lines[1:] if ln.strip()]
    syn = [r for r in rows if r[4] == "TCP"]
    dgram = [r for r in rows if r[4] == "UDP"]
    assert len(syn) == nft_counter(netns) and len(dgram) == udp
    for r in syn:  # a SYN with options: 20 bytes IP + 40 bytes TCP
        assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{6}", r[0]), r
        assert r[5] == "60" and r[8:11] == [f"127.0.0.2:{tcp}", "SYN", "NETFILTER_DROP"], r
        assert r[11].startswith("nft_do_chain+0x"), r
    for r in dgram:
        assert r[5] == str(20 + 8 + 300) and r[8:11] == [f"127.0.0.1:{port}", "-", "NO_SOCKET"]
