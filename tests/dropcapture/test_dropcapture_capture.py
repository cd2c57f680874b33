"""Integration: real BPF on the running kernel, real drops on loopback and in a private netns.

Traffic stays on loopback or inside a namespace created here; no other address is ever contacted.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from dc_helpers import cli_env, dropcapture_cmd

pytestmark = pytest.mark.kernel


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Cli:
    """dropcapture --json running in the background."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(dropcapture_cmd("--json", *args), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=cli_env(), cwd="/")
        self.stderr = ""
        deadline = time.monotonic() + 60
        assert self.proc.stderr is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stderr], [], [], 1)
            if ready:
                line = self.proc.stderr.readline()
                self.stderr += line
                if "tracing skb:kfree_skb" in line:
                    return
                if not line and self.proc.poll() is not None:
                    break
        self.proc.kill()
        raise AssertionError(f"dropcapture did not start: {self.stderr}{self.proc.stderr.read()}")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        time.sleep(0.5)  # let batched ring buffer wake-ups drain
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=timeout)
        self.stderr += err
        assert self.proc.returncode == 0, self.stderr
        assert "Traceback" not in self.stderr
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        assert rows and "summary" in rows[-1], out
        return rows[:-1], rows[-1]["summary"]


def _my_comm() -> str:
    return Path("/proc/self/comm").read_text().strip()


def frames(ev: dict[str, Any]) -> list[str]:
    return [f["sym"] or "" for f in ev["stack"]]


def test_tcp_closed_port_loopback(need_kernel: None) -> None:
    port = free_port()
    cli = Cli("--port", str(port))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    events, summary = cli.stop()
    assert events, cli.stderr
    ev = events[0]
    assert ev["reason"] == "NO_SOCKET" and ev["protocol"] == "TCP" and ev["family"] == 4
    assert (ev["saddr"], ev["daddr"], ev["dport"]) == ("127.0.0.1", "127.0.0.1", port)
    assert ev["sport"] > 0 and ev["tcp_flags"] & 0x02  # the SYN
    # loopback delivers in the sender's softirq: the connecting task is current
    assert ev["pid"] == os.getpid() and ev["comm"] == _my_comm()
    assert ev["location"].startswith("tcp_v4_rcv+")
    assert any(f.startswith("tcp_v4_rcv+") for f in frames(ev)) and ev["stack_id"] >= 0
    assert summary["by_reason"]["NO_SOCKET"] >= 1 and summary["kernel"]["lost"] == 0


def test_udp_closed_port_loopback(need_kernel: None) -> None:
    port = free_port(socket.SOCK_DGRAM)
    cli = Cli("--proto", "udp", "--port", str(port))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"dropcapture", ("127.0.0.1", port))
    events, _ = cli.stop()
    assert events, cli.stderr
    ev = events[0]
    assert ev["reason"] == "NO_SOCKET" and ev["protocol"] == "UDP"
    assert (ev["daddr"], ev["dport"]) == ("127.0.0.1", port) and ev["pid"] == os.getpid()
    assert any(f.startswith("__udp4_lib_rcv+") for f in frames(ev))


def test_udp6_closed_port_loopback(need_kernel: None) -> None:
    try:
        port = free_port(socket.SOCK_DGRAM, "::1")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    cli = Cli("--port", str(port), "--host", "::1")
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.sendto(b"dropcapture", ("::1", port))
    events, _ = cli.stop()
    assert events, cli.stderr
    ev = events[0]
    assert ev["family"] == 6 and ev["protocol"] == "UDP" and ev["daddr"] == "::1" and ev["dport"] == port
    assert ev["reason"] == "NO_SOCKET"


def _nft(ns: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", *args], check=True)


def test_firewall_drop_in_netns(netns: str, tmp_path: Path) -> None:
    # the tutorial's scenario: an OUTPUT rule drops TCP to 127.0.0.2:80; curl inside the namespace
    _nft(netns, "add", "table", "inet", "dctest")
    _nft(netns, "add chain inet dctest out { type filter hook output priority 0; }")
    _nft(netns, "add", "rule", "inet", "dctest", "out", "ip", "daddr", "127.0.0.2", "tcp", "dport", "80", "drop")
    save = tmp_path / "drops.txt"
    cli = Cli("--comm", "curl", "--proto", "tcp", "--port", "80", "--host", "127.0.0.2", "--save", str(save))
    curl = subprocess.Popen(["ip", "netns", "exec", netns, "curl", "-s", "--max-time", "1", "http://127.0.0.2/"])
    curl.wait(timeout=30)  # ip netns exec execs curl: same pid
    events, summary = cli.stop()
    assert events, cli.stderr
    ev = events[0]
    assert ev["pid"] == curl.pid and ev["comm"] == "curl"
    assert (ev["saddr"], ev["daddr"], ev["dport"], ev["protocol"]) == ("127.0.0.1", "127.0.0.2", 80, "TCP")
    assert ev["sport"] > 1024
    assert ev["reason"] == "NETFILTER_DROP"
    names = [f.split("+")[0] for f in frames(ev)]
    assert "__ip_local_out" in names and "nf_hook_slow" in names, names
    assert names.index("nf_hook_slow") < names.index("__ip_local_out") < names.index("tcp_connect")
    assert summary["by_reason"] == {"NETFILTER_DROP": len(events)}
    text = save.read_text()
    assert text.startswith("# dropcapture capture v1\n# release: " + os.uname().release)
    assert "reason=NETFILTER_DROP" in text and 'comm="curl"' in text
    assert any(ln.startswith(" [<ffffffff") and "] __ip_local_out+0x" in ln for ln in text.splitlines())


def test_python_api_all_filters_both_buffers(need_kernel: None) -> None:
    from dropcapture import Capture, Filters
    from dropcapture.btf import Btf
    from dropcapture.reasons import ReasonTable
    from dropcapture.tpformat import read_format

    reasons = ReasonTable.from_kernel(read_format(), Btf.load())
    for ringbuf in (True, False):
        port = free_port()
        flt = Filters(comm=_my_comm(), pids=frozenset({os.getpid()}), protos=frozenset({6}),
                      ports=frozenset({port}), reasons=frozenset({reasons.value("NO_SOCKET")}))
        with Capture(flt, ringbuf=ringbuf) as cap:
            assert cap.ringbuf is ringbuf
            for _ in range(3):
                with pytest.raises(ConnectionRefusedError):
                    socket.create_connection(("127.0.0.1", port), timeout=2)
            got = list(cap.events(count=3, duration=10))
        assert len(got) == 3
        assert all(e.dport == port and e.reason_name == "NO_SOCKET" and e.pid == os.getpid() for e in got)
        st = cap.stats()
        assert st.emitted == 3 and st.lost == 0 and st.delivered == 3 and st.hits >= 3


def _dc_programs() -> int:
    out = subprocess.run(["bpftool", "prog", "show"], check=False, capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if "dc_kfree_skb" in line)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_detaches_and_summarizes(need_kernel: None, sig: int) -> None:
    have_bpftool = shutil.which("bpftool") is not None
    before = _dc_programs() if have_bpftool else 0
    cli = Cli("--port", "9")
    if have_bpftool:
        assert _dc_programs() == before + 1
    _events, summary = cli.stop(sig)
    assert summary["kernel"] is not None
    if have_bpftool:
        assert _dc_programs() == before


def test_count_and_duration_limits(need_kernel: None) -> None:
    port = free_port(socket.SOCK_DGRAM)
    cli = Cli("--port", str(port), "--count", "2")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(5):
            s.sendto(b"x", ("127.0.0.1", port))
    assert cli.proc.wait(timeout=20) == 0
    events, _ = cli.stop()
    assert len(events) == 2
    t0 = time.monotonic()
    cli = Cli("--duration", "1", "--port", "9")
    assert cli.proc.wait(timeout=20) == 0
    assert time.monotonic() - t0 < 15


def test_icmp_drop_in_netns(netns: str) -> None:
    # not only TCP: an ICMP echo dropped by an OUTPUT rule, sent from a raw socket inside the namespace
    _nft(netns, "add", "table", "inet", "dctest")
    _nft(netns, "add chain inet dctest out { type filter hook output priority 0; }")
    _nft(netns, "add", "rule", "inet", "dctest", "out", "ip", "daddr", "127.0.0.3", "ip", "protocol", "icmp", "drop")
    cli = Cli("--proto", "icmp", "--host", "127.0.0.3")
    code = (
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\n"
        "try:\n    s.sendto(bytes([8, 0, 0xf7, 0xff, 0, 0, 0, 0]), ('127.0.0.3', 0))\n"
        "except PermissionError:\n    pass  # the local netfilter drop is reported to the sender as EPERM\n"
    )
    subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code], check=True, timeout=30)
    events, _ = cli.stop()
    assert events, cli.stderr
    ev = events[0]
    assert ev["protocol"] == "ICMP" and ev["daddr"] == "127.0.0.3" and ev["icmp_type"] == 8
    assert ev["reason"] == "NETFILTER_DROP" and ev["sport"] is None


def test_host_filter_in_kernel(need_kernel: None) -> None:
    import ipaddress

    from dropcapture import Capture, Filters

    port = free_port(socket.SOCK_DGRAM)
    other = Filters(ports=frozenset({port}), hosts=frozenset({ipaddress.ip_address("127.0.0.9")}))
    mine = Filters(ports=frozenset({port}), hosts=frozenset({ipaddress.ip_address("127.0.0.1")}))
    with Capture(other) as cap_other, Capture(mine) as cap_mine:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"x", ("127.0.0.1", port))
        got_mine = list(cap_mine.events(count=1, duration=5))
        got_other = list(cap_other.events(duration=0.5))
    assert len(got_mine) == 1 and got_mine[0].daddr == "127.0.0.1"
    assert got_other == []
    st = cap_other.stats()
    assert st.emitted == 0 and st.filtered >= 1
