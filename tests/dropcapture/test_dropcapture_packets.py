"""Namespaces, devices, packet bytes and the kernel-side filters (--netns, CIDR --host, --pcap-filter).

The kernel tests load real BPF and make real drops on loopback inside network namespaces created
here. The reference for --pcap-filter is libpcap itself: its interpreter (pcap_offline_filter) run on
the bytes an unfiltered capture got, next to captures with the filter compiled into the probe.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from dc_helpers import bpf_prog_exists, bpf_prog_ids, cli_env, dropcapture_cmd

from dropcapture.events import LINKTYPE_ETHERNET, LINKTYPE_RAW, DropEvent

# -- no kernel needed ------------------------------------------------------------------------------


def _libpcap_missing() -> str | None:
    from dropcapture.pcapfilter import PcapMissingError, _libpcap

    try:
        _libpcap()
    except PcapMissingError as exc:
        return str(exc)
    return None


@pytest.fixture
def need_libpcap() -> None:
    why = _libpcap_missing()
    if why is not None:
        pytest.skip(why)


def test_host_prefixes_and_netns_values() -> None:
    from dropcapture import Filters
    from dropcapture.filters import netns_inode

    f = Filters(hosts={"10.1.0.0/16", "fd00::/8", "192.0.2.7"})
    assert f.host_networks == {
        ipaddress.ip_network("10.1.0.0/16"),
        ipaddress.ip_network("fd00::/8"),
        ipaddress.ip_network("192.0.2.7/32"),
    }
    with pytest.raises(ValueError, match="host bits set"):
        Filters(hosts={"10.1.2.3/16"})
    with pytest.raises(ValueError, match="not an IPv4 or IPv6 address or prefix"):
        Filters(hosts={"10.1.2"})
    # a namespace path is its inode (what events carry); a number is taken as it is
    me = os.stat("/proc/self/ns/net").st_ino
    assert netns_inode("/proc/self/ns/net") == me == netns_inode(str(me))
    assert Filters(netns={"/proc/self/ns/net", 7}).netns == {me, 7}
    for bad in ("/nonexistent/ns", "/etc/hostname", "0"):
        with pytest.raises(ValueError):
            netns_inode(bad)


def test_record_header_then_packet_bytes() -> None:
    # the record the probe emits: the fixed header (EVENT_FIELDS) then caplen packet bytes
    import importlib

    from dropcapture.events import HEADER_SIZE, RawEvent, c_struct, decode_event

    for name in importlib.import_module("dropcapture.pcapfilter").__all__:
        assert hasattr(importlib.import_module("dropcapture.pcapfilter"), name), name
    r = RawEvent()
    r.family, r.l4proto, r.eth_protocol = 4, 17, 0x0800
    r.netns, r.ifindex, r.ifname = 4026532178, 3, b"veth0"
    r.linktype, r.wire_len, r.caplen = LINKTYPE_RAW, 300, 5
    pkt = b"\x45\x00\x01\x2c\x00"
    ev = decode_event(bytes(r) + pkt, reason_name="X", clock_offset=0.0, location_symbol=None, stack=())
    assert (ev.netns, ev.ifindex, ev.ifname, ev.linktype, ev.wire_len, ev.packet) == (
        4026532178,
        3,
        "veth0",
        LINKTYPE_RAW,
        300,
        pkt,
    )
    assert ev.to_dict()["ifname"] == "veth0" and ev.to_dict()["netns"] == 4026532178
    # nothing known: null, not 0 or ""
    empty = decode_event(bytes(RawEvent()), reason_name="X", clock_offset=0.0, location_symbol=None, stack=())
    assert (empty.netns, empty.ifindex, empty.ifname, empty.packet, empty.linktype) == (
        None,
        None,
        None,
        b"",
        0,
    )
    text = c_struct(data_size=256)
    assert "u8 data[256];" in text and f"== {HEADER_SIZE}" in text


def test_member_path_adds_nested_offsets(need_btf: None) -> None:
    from dropcapture.btf import Btf

    btf = Btf.load()
    # net_device.nd_net.net = offset of nd_net + offset of net inside possible_net_t, both from BTF
    outer = btf.member("net_device", "nd_net")
    inner = btf.member("possible_net_t", "net")
    got = btf.member_path("net_device", "nd_net.net")
    assert got.offset == outer.offset + inner.offset and got.size == 8
    ns = btf.member_path("net", "ns.inum")
    assert ns.offset == btf.member("net", "ns").offset + btf.member("ns_common", "inum").offset
    from dropcapture.errors import BtfError

    with pytest.raises(BtfError, match="no member 'nope'"):
        btf.member_path("net", "ns.nope")
    with pytest.raises(BtfError, match="not a struct"):
        btf.member_path("sk_buff", "dev.ifindex")  # a pointer is not followed


def test_pcap_filter_bad_expression_is_usage_error(need_libpcap: None) -> None:
    # libpcap's own message, one line, exit 2, before anything is compiled or loaded (no root needed)
    proc = subprocess.run(
        dropcapture_cmd("--pcap-filter", "tcp port"),
        check=False,
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        cwd="/",
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "dropcapture: error: --pcap-filter 'tcp port': can't parse filter expression: syntax error"
    ]
    assert proc.stdout == ""


def test_cbpf_translation_shape(need_libpcap: None) -> None:
    from dropcapture.pcapfilter import CbpfError, CbpfInsn, cbpf_to_c, compile_filters

    progs = compile_filters("tcp[tcpflags] & tcp-syn != 0", 128)
    assert set(progs) == {LINKTYPE_ETHERNET, LINKTYPE_RAW}
    text = cbpf_to_c("f", progs[LINKTYPE_ETHERNET], data_size=128)
    # an indexed load (X from the IP header length) is bounds-checked as libpcap's bpf_filter does
    assert "X > L - " in text and "& DC_DATA_MASK" in text and text.count("return") >= 2
    # an Ethernet-only expression is kept for Ethernet alone
    assert set(compile_filters("ether src 00:00:00:00:00:00", 128)) == {LINKTYPE_ETHERNET}
    with pytest.raises(CbpfError):
        cbpf_to_c("f", [CbpfInsn(0x05, 0, 0, 5)], data_size=128)  # a jump past the end
    with pytest.raises(CbpfError):
        cbpf_to_c("f", [CbpfInsn(0xFF, 0, 0, 0)], data_size=128)


# -- real BPF, real drops ---------------------------------------------------------------------------


def _nft(ns: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", *args], check=True, timeout=30)


def _in_ns(ns: str, code: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args], check=True, timeout=60)


@contextlib.contextmanager
def _second_netns() -> Iterator[str]:
    name = f"dctest{os.getpid()}b"
    subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def _inode(ns: str) -> int:
    return os.stat(f"/var/run/netns/{ns}").st_ino


class ProgramsFreed:
    """Every BPF program this process loads while inside the block is gone from the kernel after it;
    call :meth:`note` while the captures are open."""

    def __init__(self) -> None:
        self.before = bpf_prog_ids(os.getpid())
        self.seen: set[int] = set()

    def note(self) -> None:
        self.seen.update(bpf_prog_ids(os.getpid()) - self.before)

    def __enter__(self) -> ProgramsFreed:  # noqa: PYI034 - typing.Self needs 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            return
        deadline = time.monotonic() + 5  # freed after an RCU grace period
        while any(bpf_prog_exists(p) for p in self.seen) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.seen, "no program seen while capturing"
        assert not [p for p in self.seen if bpf_prog_exists(p)], f"programs {self.seen} still loaded"


_UDP = """\
import socket, sys
host, port, payload = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
with socket.socket(fam, socket.SOCK_DGRAM) as s:
    s.sendto(payload, (host, port))
"""


@pytest.mark.kernel
def test_event_carries_netns_device_and_packet_bytes(netns: str) -> None:
    from dropcapture import Capture, Filters

    port = 40000 + os.getpid() % 20000
    payload = b"dropcapture-payload-" + os.urandom(8).hex().encode()
    with (
        ProgramsFreed() as freed,
        Capture(Filters(ports={port}, netns={_inode(netns)})) as full,
        Capture(Filters(ports={port}), snaplen=40) as short,
    ):
        freed.note()
        _in_ns(netns, _UDP, "127.0.0.1", str(port), payload.hex())
        got = list(full.events(count=1, duration=10))
        got_short = list(short.events(count=1, duration=10))
    assert len(got) == 1 and len(got_short) == 1
    ev = got[0]
    assert ev.reason_name == "NO_SOCKET" and ev.dport == port
    # received on the namespace's own loopback: the device's namespace, index 1, name lo
    assert ev.netns == _inode(netns) != os.stat("/proc/self/ns/net").st_ino
    assert (ev.ifindex, ev.ifname) == (1, "lo")
    # loopback has a 14-byte Ethernet header (zero addresses): the bytes start there
    assert ev.linktype == LINKTYPE_ETHERNET
    assert ev.wire_len == 14 + 20 + 8 + len(payload) == len(ev.packet)
    eth, ip, udp, data = ev.packet[:14], ev.packet[14:34], ev.packet[34:42], ev.packet[42:]
    assert eth == bytes(12) + b"\x08\x00"
    assert ip[0] == 0x45 and ip[9] == 17 and ip[12:16] == ip[16:20] == socket.inet_aton("127.0.0.1")
    assert struct.unpack("!HH", udp[:4])[1] == port and struct.unpack("!H", udp[4:6])[0] == 8 + len(payload)
    assert data == payload
    # a shorter snap length cuts the bytes, not the original length
    s = got_short[0]
    assert s.packet == ev.packet[:40] and s.wire_len == ev.wire_len
    d = ev.to_dict()
    assert (d["netns"], d["ifname"], d["ifindex"]) == (_inode(netns), "lo", 1)


@pytest.mark.kernel
def test_send_path_drop_has_socket_netns_and_raw_ip_bytes(netns: str) -> None:
    # the firewall scenario: the OUTPUT hook drops before a device is set; the namespace is the socket's
    from dropcapture import Capture, Filters

    _nft(netns, "add", "table", "inet", "dctest")
    _nft(netns, "add chain inet dctest out { type filter hook output priority 0; }")
    _nft(
        netns, "add", "rule", "inet", "dctest", "out", "ip", "daddr", "127.0.0.2", "udp", "dport", "7", "drop"
    )
    payload = b"firewalled-" + os.urandom(4).hex().encode()
    with Capture(Filters(netns={f"/var/run/netns/{netns}"}, hosts={"127.0.0.2"})) as cap:
        with contextlib.suppress(subprocess.CalledProcessError):  # EPERM from the local drop
            _in_ns(netns, _UDP, "127.0.0.2", "7", payload.hex())
        got = list(cap.events(count=1, duration=10))
    assert len(got) == 1
    ev = got[0]
    assert ev.reason_name == "NETFILTER_DROP" and ev.netns == _inode(netns)
    assert ev.ifname is None and ev.ifindex is None  # no device yet, and not received on one
    assert (
        ev.linktype == LINKTYPE_RAW
        and ev.packet[0] == 0x45
        and ev.packet[16:20] == socket.inet_aton("127.0.0.2")
    )
    assert ev.packet[28:] == payload and ev.wire_len == 20 + 8 + len(payload)


@pytest.mark.kernel
def test_netns_filter_cli_two_namespaces(netns: str) -> None:
    port = 40000 + (os.getpid() + 1) % 20000
    with _second_netns() as other:
        proc = subprocess.Popen(
            dropcapture_cmd(
                "--json", "--no-stack", "--port", str(port), "--netns", f"/var/run/netns/{netns}"
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
            cwd="/",
        )
        try:
            assert proc.stderr is not None
            err = ""
            deadline = time.monotonic() + 60
            while "tracing skb:kfree_skb" not in err:
                ready, _, _ = select.select([proc.stderr], [], [], 0.1)
                assert time.monotonic() < deadline, f"not started: {err}"
                if ready:
                    line = proc.stderr.readline()
                    assert line, err
                    err += line
            for ns in (netns, other, netns, other):
                _in_ns(ns, _UDP, "127.0.0.1", str(port), b"x".hex())
            time.sleep(0.5)
            proc.send_signal(2)
            out, more = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        assert proc.returncode == 0, err + more
        rows = [json.loads(line) for line in out.splitlines()]
        events = rows[:-1]
        assert len(events) == 2, rows  # the other namespace's two are filtered in the kernel
        assert {(e["netns"], e["ifname"], e["ifindex"]) for e in events} == {(_inode(netns), "lo", 1)}
        assert rows[-1]["summary"]["kernel"]["filtered"] >= 2


@pytest.mark.kernel
def test_cidr_host_in_kernel(netns: str) -> None:
    from dropcapture import Capture, Filters

    subprocess.run(["ip", "-n", netns, "addr", "add", "fd00:1::1/64", "dev", "lo", "nodad"], check=True)
    subprocess.run(["ip", "-n", netns, "addr", "add", "fd00:2::1/64", "dev", "lo", "nodad"], check=True)
    port = 40000 + (os.getpid() + 2) % 20000
    ns = _inode(netns)
    with (
        Capture(Filters(ports={port}, netns={ns}, hosts={"127.0.1.0/24", "fd00:2::/32"})) as cap,
        Capture(Filters(ports={port}, netns={ns})) as every,
    ):
        for host in ("127.0.0.5", "127.0.1.9", "127.0.2.1", "fd00:1::1", "fd00:2::1"):
            _in_ns(netns, _UDP, host, str(port), b"x".hex())
        got = list(cap.events(duration=1.5))
        assert cap.stats().filtered >= 3  # rejected in the kernel
        all_drops = list(every.events(duration=0.5))
    assert sorted(e.daddr for e in all_drops) == sorted(
        ["127.0.0.5", "127.0.1.9", "127.0.2.1", "fd00:1::1", "fd00:2::1"]
    )
    assert sorted(e.daddr for e in got) == ["127.0.1.9", "fd00:2::1"]


# traffic for the pcap filter test, inside the namespace: every packet distinct (ports, payloads)
_MIX = """\
import socket, struct, sys, time
port = int(sys.argv[1])
def udp(host, payload, fam=socket.AF_INET):
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(payload, (host, port))
        except OSError:
            pass
udp("127.0.0.1", b"drop-one")
udp("127.0.0.2", b"drop-two")
udp("127.0.0.1", b"drop-long-" + b"x" * 150)
udp("::1", b"drop-six", socket.AF_INET6)
for host, p in (("127.0.0.1", port), ("127.0.0.2", 80)):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect((host, p))
    except OSError:
        pass
    time.sleep(0.2)
    s.close()
# a data segment ("GET ...", PSH|ACK) to a closed port, from a raw socket: NO_SOCKET with payload bytes
data = b"GET / HTTP/1.0\\r\\n\\r\\n"
tcp = struct.pack("!HHIIBBHHH", 40000, port, 1, 0, 5 << 4, 0x18, 65535, 0, 0) + data
words = socket.inet_aton("127.0.0.1") * 2 + struct.pack("!BBH", 0, 6, len(tcp)) + tcp + bytes(len(tcp) % 2)
c = sum(struct.unpack("!%dH" % (len(words) // 2), words))
while c >> 16:
    c = (c & 0xFFFF) + (c >> 16)
tcp = tcp[:16] + struct.pack("!H", ~c & 0xFFFF) + tcp[18:]
with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP) as t:
    t.sendto(tcp, ("127.0.0.1", 0))
with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as r:
    try:
        r.sendto(bytes([8, 0, 0xf7, 0xff, 0, 0, 0, 0]), ("127.0.0.3", 0))
    except OSError:
        pass
"""

PCAP_EXPRESSIONS = (
    "tcp dst port 80",
    "udp and dst host 127.0.0.2",
    "icmp",
    "ip6",
    "tcp[tcpflags] & tcp-syn != 0",
    "greater 100",
    "udp[8:4] = 0x64726f70",  # "drop": a payload load through the IP header length
    "ether src 00:00:00:00:00:00",  # Ethernet only: raw-IP drops are rejected
    "tcp[(tcp[12] >> 4) * 4 : 4] = 0x47455420",  # "GET " after the TCP header: ALU, TAX, indexed loads
)


def _key(ev: DropEvent) -> tuple[int, int, bytes]:
    return (ev.linktype, ev.wire_len, ev.packet)


@pytest.mark.kernel
def test_pcap_filter_equals_libpcap(netns: str, need_libpcap: None) -> None:
    from dropcapture import Capture, Filters
    from dropcapture.pcapfilter import PcapFilterError, PcapProgram

    _nft(netns, "add", "table", "inet", "dctest")
    _nft(netns, "add chain inet dctest out { type filter hook output priority 0; }")
    _nft(
        netns,
        "add",
        "rule",
        "inet",
        "dctest",
        "out",
        "ip",
        "daddr",
        "127.0.0.2",
        "tcp",
        "dport",
        "80",
        "drop",
    )
    _nft(
        netns,
        "add",
        "rule",
        "inet",
        "dctest",
        "out",
        "ip",
        "daddr",
        "127.0.0.3",
        "ip",
        "protocol",
        "icmp",
        "drop",
    )
    ns = _inode(netns)
    port = 40000 + (os.getpid() + 3) % 20000
    with ProgramsFreed() as freed, contextlib.ExitStack() as stack:
        plain = stack.enter_context(Capture(Filters(netns={ns})))
        caps = {e: stack.enter_context(Capture(Filters(netns={ns}, pcap_filter=e))) for e in PCAP_EXPRESSIONS}
        freed.note()
        _in_ns(netns, _MIX, str(port))
        time.sleep(0.5)
        for cap in (plain, *caps.values()):  # all stop seeing drops before any is read
            cap.detach()
        drops = list(plain.events())
        got = {e: Counter(_key(ev) for ev in cap.events()) for e, cap in caps.items()}
        assert all(c.stats().lost == 0 for c in (plain, *caps.values()))
    linktypes = {ev.linktype for ev in drops}
    assert linktypes == {LINKTYPE_ETHERNET, LINKTYPE_RAW}, drops  # both kinds of bytes are exercised
    assert len(drops) >= 7
    for expr in PCAP_EXPRESSIONS:
        want: Counter[tuple[int, int, bytes]] = Counter()
        for ev in drops:
            try:
                prog = PcapProgram(expr, ev.linktype, 128)
            except PcapFilterError:
                continue  # no meaning on this link type (ether ... on raw IP): rejected
            with prog:
                if prog.matches(ev.packet, ev.wire_len):
                    want[_key(ev)] += 1
        assert 0 < sum(want.values()) < len(drops), (expr, want)  # the expression decides something
        assert got[expr] == want, expr


def test_netns_path_must_exist_cli(tmp_path: Path) -> None:
    proc = subprocess.run(
        dropcapture_cmd("--netns", str(tmp_path / "nope")),
        check=False,
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd="/",
    )
    assert proc.returncode == 2 and proc.stderr.startswith("dropcapture: error: --netns ")
    assert len(proc.stderr.strip().splitlines()) == 1


# -- the translation against libpcap's interpreter, without a kernel: the generated C built with gcc ----

_HARNESS = r"""
#include <stdint.h>
#include <stdio.h>
#include <string.h>
typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
typedef int32_t s32;
#define __always_inline inline __attribute__((always_inline))
#define DC_SNAPLEN 256
#define DC_DATA_MASK 255
STRUCT
FUNCS
static struct dc_event ev;
int main(void)
{
    unsigned fn, wire, cap, i, byte;
    /* lines: function-number wire-length captured-length hex-bytes */
    while (scanf("%u %u %u", &fn, &wire, &cap) == 3) {
        memset(&ev, 0, sizeof(ev));
        for (i = 0; i < cap; i++) {
            if (scanf("%2x", &byte) != 1)
                return 2;
            ev.data[i] = byte;
        }
        ev.caplen = cap;
        ev.wire_len = wire;
        switch (fn) {
        CASES
        default: return 3;
        }
    }
    return 0;
}
"""

# more shapes of classic BPF than the kernel test: every ALU operation, shifts by X, scratch words (vlan)
TRANSLATION_EXPRESSIONS = (
    *PCAP_EXPRESSIONS,
    "vlan and udp",
    "len - 10 > 50",
    "ip[2:2] % 7 = 0",
    "ether[0] ^ 0x45 = 0 or ether[0] = 0",
    "ip[1] << 2 = 0",
    "ip[0] >> ip[1] = 0",
    "tcp[13] = 2",
    "udp[8:2] / 3 = 8571",
    "-ip[0] > 0xffffffb0",
    "ip[8] * 2 = 128",
    "ip[0] & 0xf > 5",
    "icmp6 and ip6[40] = 128",
    "ip[6:2] & 0x1fff != 0",
    "tcp[tcp[12] >> 2 : 2] = 0x4745",
)


def _packets() -> list[tuple[int, bytes]]:
    """(link type, bytes): Ethernet and raw IP packets of several kinds, each cut at every length."""
    import random

    def ip4(proto: int, payload: bytes, opts: bytes = b"", frag: int = 0, dst: str = "127.0.0.2") -> bytes:
        ihl = (20 + len(opts)) // 4
        hdr = struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | ihl,
            0,
            20 + len(opts) + len(payload),
            1,
            frag,
            64,
            proto,
            0,
            socket.inet_aton("127.0.0.1"),
            socket.inet_aton(dst),
        )
        return hdr + opts + payload

    def ip6(nxt: int, payload: bytes) -> bytes:
        return (
            struct.pack(
                "!IHBB16s16s",
                0x60000000,
                len(payload),
                nxt,
                64,
                socket.inet_pton(socket.AF_INET6, "::1"),
                socket.inet_pton(socket.AF_INET6, "::1"),
            )
            + payload
        )

    syn = struct.pack("!HHIIBBHHH", 40000, 80, 1, 0, 10 << 4, 0x02, 65535, 0, 0) + bytes(20)
    get = struct.pack("!HHIIBBHHH", 40001, 8080, 1, 1, 5 << 4, 0x18, 65535, 0, 0) + b"GET / HTTP/1.0\r\n"
    udp = struct.pack("!HHHH", 5000, 9, 8 + 12, 0) + b"drop-payload"
    icmp = bytes([8, 0, 0xF7, 0xFF, 0, 0, 0, 0])
    icmp6 = bytes([128, 0, 0, 0, 0, 1, 0, 1])
    l3 = [
        ip4(6, syn),
        ip4(6, get),
        ip4(17, udp),
        ip4(17, udp + bytes(100)),
        ip4(1, icmp, dst="127.0.0.3"),
        ip4(17, udp, opts=bytes([1, 1, 1, 0])),
        ip4(17, udp, frag=0x0005),
        ip6(17, udp),
        ip6(6, syn),
        ip6(58, icmp6),
    ]
    eth = bytes(12)
    out: list[tuple[int, bytes]] = []
    for pkt in l3:
        etype = b"\x86\xdd" if pkt[0] >> 4 == 6 else b"\x08\x00"
        out.append((LINKTYPE_RAW, pkt))
        out.append((LINKTYPE_ETHERNET, eth + etype + pkt))
    out.append((LINKTYPE_ETHERNET, eth + b"\x81\x00\x00\x05\x08\x00" + ip4(17, udp)))  # VLAN
    out.append((LINKTYPE_ETHERNET, bytes(range(12)) + b"\x08\x06" + bytes(28)))  # ARP
    rng = random.Random(16)
    mutated = []
    for lt, pkt in out:
        for _ in range(3):
            b = bytearray(pkt)
            for _ in range(3):
                b[rng.randrange(len(b))] = rng.randrange(256)
            mutated.append((lt, bytes(b)))
    return [(lt, pkt[:cut]) for lt, pkt in out + mutated for cut in range(len(pkt) + 1)]


def test_cbpf_translation_equals_libpcap_interpreter(need_libpcap: None, tmp_path: Path) -> None:
    import shutil

    from dropcapture.events import c_struct
    from dropcapture.pcapfilter import PcapFilterError, PcapProgram, cbpf_to_c

    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("no gcc (apt-get install gcc)")
    funcs, cases, progs = [], [], {}
    for i, expr in enumerate(TRANSLATION_EXPRESSIONS):
        for lt in (LINKTYPE_ETHERNET, LINKTYPE_RAW):
            try:
                prog = PcapProgram(expr, lt, 65535)
            except PcapFilterError:
                continue
            n = len(progs)
            progs[n] = (expr, lt, prog)
            funcs.append(cbpf_to_c(f"f{n}", prog.insns, data_size=256))
            cases.append(f'case {n}: printf("%d\\n", f{n}(&ev) != 0); break;')
    try:
        src = tmp_path / "harness.c"
        src.write_text(
            _HARNESS.replace("STRUCT", c_struct(data_size=256))
            .replace("FUNCS", "\n\n".join(funcs))
            .replace("CASES", "\n        ".join(cases))
        )
        exe = tmp_path / "harness"
        subprocess.run([gcc, "-O1", "-w", "-o", str(exe), str(src)], check=True, timeout=120)
        packets = _packets()
        lines, want = [], []
        for n, (_expr, lt, prog) in progs.items():
            for plt, pkt in packets:
                if plt != lt:
                    continue
                wire = len(pkt) + 7  # the original length is longer than what was captured
                lines.append(f"{n} {wire} {len(pkt)} {pkt.hex()}")
                want.append(int(prog.matches(pkt, wire)))
        run = subprocess.run(
            [str(exe)], input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=120, check=True
        )
        got = [int(x) for x in run.stdout.split()]
    finally:
        for _e, _lt, prog in progs.values():
            prog.close()
    assert len(got) == len(want)
    bad = [(progs[int(line.split()[0])][:2], line) for line, g, w in zip(lines, got, want) if g != w]
    assert not bad, bad[:5]
    # every expression accepts some packets and rejects others: the comparison decides something
    one_sided = []
    for n, (expr, lt, _p) in progs.items():
        if {w for line, w in zip(lines, want) if line.startswith(f"{n} ")} != {0, 1}:
            one_sided.append((expr, lt))
    assert not one_sided, one_sided
