"""The text columns, drop sites in the summary, the --top screen, --metrics addresses and the pcapng
writer read back by tshark (no BPF needed)."""

from __future__ import annotations

import io
import ipaddress
import json
import shutil
import socket
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dc_helpers import cli_env, dropcapture_cmd

from dropcapture.capture import CaptureStats
from dropcapture.events import DropEvent, RawEvent, StackFrame, decode_event
from dropcapture.metrics import parse_metrics_address
from dropcapture.output import Summary, TextFormatter, tcp_flag_names
from dropcapture.pcapng import LINKTYPE_ETHERNET, LINKTYPE_RAW, PcapngInterface, PcapngPacket, PcapngWriter
from dropcapture.top import TopView
from ksym.kallsyms import KallsymsSymbol, parse_kallsyms

KALLSYMS = """\
ffffffff81000000 T _text
ffffffff81e94f20 T sk_skb_reason_drop
ffffffff81fbdf90 T nft_do_chain
ffffffff8205c3e0 t __ip_local_out
ffffffff8205c5b0 T ip_local_out
ffffffff8205c630 T ip_output
ffffffff820a7a70 T __udp4_lib_rcv
ffffffff820a8a70 T udp_v4_early_demux
"""
KS = parse_kallsyms(KALLSYMS)
SKB_DROP = 0xFFFFFFFF81E94FB0
NFT = 0xFFFFFFFF81FBE3FF  # nft_do_chain+0x46f
LOCAL_OUT = 0xFFFFFFFF8205C53C  # __ip_local_out+0x15c
UDP_RCV = 0xFFFFFFFF820A7F2C  # __udp4_lib_rcv+0x4bc


def raw(**kw: object) -> RawEvent:
    r = RawEvent()
    r.ts_ns = 5_123_456_000
    r.pid, r.tid, r.cpu = 4211, 4211, 1
    r.comm = b"curl"
    r.family, r.l4proto, r.has_l4 = 4, socket.IPPROTO_TCP, 1
    r.saddr[:4] = list(ipaddress.IPv4Address("127.0.0.1").packed)
    r.daddr[:4] = list(ipaddress.IPv4Address("127.0.0.2").packed)
    r.sport, r.dport = 40412, 80
    r.eth_protocol = 0x0800
    r.len = 60
    r.reason = 12
    r.location = NFT
    r.stack_id = 7
    r.tcp_flags = 0x02
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def event(r: RawEvent, stack: tuple[StackFrame, ...] = (), reason: str = "NETFILTER_DROP") -> DropEvent:
    return decode_event(
        r, reason_name=reason, clock_offset=1000.0, location_symbol=KS.locate(r.location), stack=stack
    )


def frame(addr: int, *source: str) -> StackFrame:
    return StackFrame(addr, KS.locate(addr), tuple(source))


NFT_LINE = "net/netfilter/nf_tables_core.c:272"
NFT_STACK = (
    frame(SKB_DROP),
    frame(NFT, NFT_LINE),
    frame(LOCAL_OUT, "net/ipv4/ip_output.c:115", "nf_hook include/linux/netfilter.h:257"),
)


def test_tcp_flag_names() -> None:
    assert tcp_flag_names(0x02) == "SYN"
    assert tcp_flag_names(0x12) == "SYN,ACK"
    assert tcp_flag_names(0x11) == "FIN,ACK"
    assert tcp_flag_names(0x14) == "RST,ACK"
    assert tcp_flag_names(0xFF) == "FIN,SYN,RST,PSH,ACK,URG,ECE,CWR"
    assert tcp_flag_names(0) == "-"


def test_text_line_time_length_flags() -> None:
    fmt = TextFormatter(stacks=False)
    ev = event(raw(tcp_flags=0x12))
    line = fmt.line(ev)
    header = fmt.header().split()
    assert header[:6] == ["TIME", "PID", "COMM", "CPU", "PROTO", "LEN"] and "INFO" in header
    cols = line.split()
    # local time with microseconds: 1005.123456 s since the epoch
    import time

    assert cols[0] == time.strftime("%H:%M:%S", time.localtime(1005)) + ".123456"
    assert cols[1:7] == ["4211", "curl", "1", "TCP", "60", "127.0.0.1:40412"]
    assert cols[7:12] == ["->", "127.0.0.2:80", "SYN,ACK", "NETFILTER_DROP", "nft_do_chain+0x46f"]
    # the same columns in the header and the line
    assert line.index("60 ") + 2 == fmt.header().index("LEN") + 3
    icmp = event(raw(l4proto=1, tcp_flags=0, icmp_type=8, icmp_code=0))
    assert "type=8,code=0" in fmt.line(icmp).split()
    udp = event(raw(l4proto=17, tcp_flags=0))
    assert fmt.line(udp).split()[9] == "-"


def _summary(annotate: Callable[[KallsymsSymbol], tuple[str, ...]] | None = None) -> Summary:
    s = Summary(annotate=annotate)
    for _ in range(3):
        s.add(event(raw(), NFT_STACK))
    # the same location with another reason is another site
    s.add(event(raw(reason=99), NFT_STACK, reason="OTHER"))
    # a UDP drop whose location is not in its (missing) stack: file:line from the annotator, if any
    for _ in range(2):
        s.add(event(raw(location=UDP_RCV, l4proto=17, reason=3, stack_id=-14), (), reason="NO_SOCKET"))
    return s


def test_summary_counts_drop_sites_with_file_line() -> None:
    calls: list[str] = []

    def annotate(sym: KallsymsSymbol) -> tuple[str, ...]:
        calls.append(sym.short)
        return ("net/ipv4/udp.c:2420",) if sym.name == "__udp4_lib_rcv" else ()

    s = _summary(annotate)
    assert calls == ["__udp4_lib_rcv+0x4bc"]  # once per site, and only when the stack has no line for it
    sites = [(site.reason, site.location, site.source_line, n) for site, n in s.by_site]
    assert sites == [
        ("NETFILTER_DROP", "nft_do_chain+0x46f", NFT_LINE, 3),
        ("NO_SOCKET", "__udp4_lib_rcv+0x4bc", "net/ipv4/udp.c:2420", 2),
        ("OTHER", "nft_do_chain+0x46f", NFT_LINE, 1),
    ]
    text = s.render(CaptureStats(6, 0, 6, 0, 6), 1.0)
    lines = text.splitlines()
    i = lines.index("drops by site (of 3):")
    assert lines[i + 1 : i + 4] == [
        f"         3 drops at nft_do_chain+0x46f (NETFILTER_DROP) {NFT_LINE}",
        "         2 drops at __udp4_lib_rcv+0x4bc (NO_SOCKET) net/ipv4/udp.c:2420",
        f"         1 drops at nft_do_chain+0x46f (OTHER) {NFT_LINE}",
    ]
    d: Any = s.to_dict(None, 1.0)["summary"]
    assert d["by_site"][0] == {
        "count": 3,
        "reason": "NETFILTER_DROP",
        "location": "nft_do_chain+0x46f",
        "location_addr": hex(NFT),
        "source": [NFT_LINE],
    }
    assert sum(x["count"] for x in d["by_site"]) == d["drops"] == 6
    json.dumps(d)
    # without a debug vmlinux: no file:line, the line ends at the reason
    plain = Summary()
    plain.add(event(raw(), (frame(SKB_DROP), frame(NFT))))
    assert "  1 drops at nft_do_chain+0x46f (NETFILTER_DROP)\n" in plain.render(None, 1.0) + "\n"
    assert plain.to_dict(None, 1.0)["summary"]["by_site"][0]["source"] is None  # type: ignore[index]


def test_summary_site_keeps_inline_chain() -> None:
    s = Summary()
    s.add(event(raw(location=LOCAL_OUT), NFT_STACK))
    text = s.render(None, 1.0).splitlines()
    i = text.index("drops by site (of 1):")
    assert text[i + 1] == "         1 drops at __ip_local_out+0x15c (NETFILTER_DROP) net/ipv4/ip_output.c:115"
    assert text[i + 2] == "              nf_hook include/linux/netfilter.h:257"


def test_top_screen() -> None:
    s = _summary()
    buf = io.StringIO()
    top = TopView(buf, s, interval=1.0)
    now = top.started + 2.0
    screen = top.render(now, width=160, height=20).splitlines()
    assert screen[0].startswith("dropcapture --top: 6 drops in 2s, 3 drop sites")
    assert screen[2].split() == ["DROPS", "RATE/s", "REASON", "LOCATION", "FILE:LINE"]
    rows = [ln.split() for ln in screen[3:]]
    # most drops first, the rate over the 2 s since the start
    assert rows[0] == ["3", "2", "NETFILTER_DROP", "nft_do_chain+0x46f", NFT_LINE]
    assert rows[1] == ["2", "1", "NO_SOCKET", "__udp4_lib_rcv+0x4bc"]
    assert rows[2] == ["1", "0", "OTHER", "nft_do_chain+0x46f", NFT_LINE]
    # the next frame's rate counts only the drops since the last one
    for _ in range(4):
        s.add(event(raw(location=UDP_RCV, l4proto=17, reason=3, stack_id=-14), (), reason="NO_SOCKET"))
    screen = top.render(now + 2.0, width=160, height=20).splitlines()
    assert screen[3].split()[:4] == ["6", "2", "NO_SOCKET", "__udp4_lib_rcv+0x4bc"]
    assert screen[4].split()[:2] == ["3", "0"]
    # a small terminal: rows cut, the rest said
    small = top.render(now + 3.0, width=40, height=5).splitlines()
    assert len(small) == 5 and small[-1].startswith("... 2 more drop sites")
    assert all(len(ln) <= 40 for ln in small)
    top.tick()
    top.close(CaptureStats(9, 0, 10, 0, 10))
    out = buf.getvalue()
    assert out.startswith("\x1b[?25l\x1b[H\x1b[2J") and out.endswith("\x1b[?25h") and top.frames == 2


@pytest.mark.parametrize(
    ("text", "want"),
    [("127.0.0.1:9101", ("127.0.0.1", 9101)), ("[::1]:80", ("::1", 80)), (":9101", ("0.0.0.0", 9101))],
)
def test_metrics_address(text: str, want: tuple[str, int]) -> None:
    assert tuple(parse_metrics_address(text)) == want


@pytest.mark.parametrize(
    "text", ["9101", "localhost:9101", "127.0.0.1:0", "127.0.0.1:70000", "127.0.0.1:x", ""]
)
def test_metrics_address_errors(text: str) -> None:
    with pytest.raises(ValueError, match="--metrics"):
        parse_metrics_address(text)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--top"], "--top needs a terminal on stdout"),
        (["--top", "--json"], "--top draws the drop sites on the terminal; --json"),
        (["--summary", "--json"], "--summary prints the text summary and --json the JSON one"),
        (["--metrics", "localhost:1"], "--metrics localhost:1: 'localhost' is not an IP address"),
        (["--pcapng", "/nonexistent-dir/x.pcapng"], "--pcapng /nonexistent-dir/x.pcapng: directory"),
    ],
)
def test_view_usage_errors(args: list[str], message: str) -> None:
    # checked before bcc is imported or anything compiled: exit 2, one line, also as non-root
    proc = subprocess.run(
        dropcapture_cmd(*args),
        check=False,
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dropcapture: error: " + message), proc.stderr
    assert proc.stdout == ""


# -- pcapng, read back by tshark -----------------------------------------------------------------


def tshark_fields(path: Path, *fields: str) -> list[list[str]]:
    """One row per packet, as tshark reads the file (fails if tshark cannot)."""
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed (tools/setup.sh installs it)")
    cmd = ["tshark", "-r", str(path), "-T", "fields", "-E", "separator=|", "-E", "occurrence=f"]
    for f in fields:
        cmd += ["-e", f]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [ln.split("|") for ln in proc.stdout.splitlines()]


def _udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack(
        ">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst)
    )
    return ip + udp


def test_pcapng_writer_read_by_tshark(tmp_path: Path) -> None:
    path = tmp_path / "drops.pcapng"
    lo_a = PcapngInterface(4026531840, 1, LINKTYPE_RAW, "lo")
    lo_b = PcapngInterface(4026532999, 1, LINKTYPE_ETHERNET, "lo")
    eth0 = PcapngInterface(4026531840, 2, LINKTYPE_ETHERNET, "eth0")
    ip1 = _udp("127.0.0.1", "127.0.0.1", 40000, 9, b"x" * 100)
    ip2 = _udp("10.1.2.3", "10.1.2.4", 5353, 53, b"y" * 3)  # odd length: the block is padded
    eth = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip2
    packets = [
        PcapngPacket(
            lo_a,
            1_795_638_884_927_804_123,
            ip1[:64],
            len(ip1),
            "NO_SOCKET at __udp4_lib_rcv+0x4bc net/ipv4/udp.c:2420",
        ),
        PcapngPacket(
            eth0, 1_795_638_884_927_905_001, eth, len(eth), "NETFILTER_DROP at nft_do_chain+0x46f (comm curl)"
        ),
        PcapngPacket(lo_b, 1_795_638_884_928_000_000, eth, len(eth) + 1000, "ü"),
        PcapngPacket(lo_a, 1_795_638_884_929_000_999, ip1, len(ip1), ""),
        PcapngPacket(lo_a, 1_795_638_884_930_000_000, b"", 40, "no bytes"),
    ]
    with path.open("wb") as f, PcapngWriter(f, 128) as w:
        for p in packets:
            w.write(p)
    assert w.interfaces == 3 and w.packets == 5
    rows = tshark_fields(
        path,
        "frame.interface_id",
        "frame.interface_name",
        "frame.interface_description",
        "frame.comment",
        "frame.time_epoch",
        "frame.cap_len",
        "frame.len",
        "ip.src",
        "ip.dst",
        "udp.dstport",
        "eth.src",
    )
    assert len(rows) == 5
    assert [r[0] for r in rows] == ["0", "1", "2", "0", "0"]
    assert [r[1] for r in rows] == ["lo", "eth0", "lo", "lo", "lo"]
    assert rows[0][2] == "netns 4026531840 ifindex 1" and rows[2][2] == "netns 4026532999 ifindex 1"
    assert [r[3] for r in rows] == [p.comment for p in packets]
    assert [r[4] for r in rows] == [
        "1795638884.927804123",
        "1795638884.927905001",
        "1795638884.928000000",
        "1795638884.929000999",
        "1795638884.930000000",
    ]
    assert [(int(r[5]), int(r[6])) for r in rows] == [
        (64, 128),
        (len(eth), len(eth)),
        (len(eth), len(eth) + 1000),
        (128, 128),
        (0, 40),
    ]
    assert rows[0][7:10] == ["127.0.0.1", "127.0.0.1", "9"]
    assert rows[1][7:11] == ["10.1.2.3", "10.1.2.4", "53", "04:04:04:04:04:04"]
    assert rows[3][9] == "9"


def test_pcapng_sink_comment_names_reason_location_and_line(tmp_path: Path) -> None:
    from dropcapture.pcapng import PcapngSink

    ip = _udp("127.0.0.1", "127.0.0.2", 40412, 80, b"z" * 40)
    with_line = event(raw(), NFT_STACK)._replace(
        netns=4026531840, ifindex=None, ifname=None, linktype=LINKTYPE_RAW, wire_len=len(ip), packet=ip[:32]
    )
    no_bytes = event(raw(location=UDP_RCV, reason=3), (), reason="NO_SOCKET")._replace(
        netns=4026531840, ifindex=1, ifname="lo"
    )
    s = Summary()
    path = tmp_path / "x.pcapng"
    sink = PcapngSink.open(str(path), 128)
    for ev in (with_line, no_bytes):
        s.add(ev)
        sink.write_event(ev, s)
    sink.close()
    assert sink.packets == 2
    rows = tshark_fields(
        path, "frame.comment", "frame.interface_name", "frame.cap_len", "frame.len", "ip.dst"
    )
    assert rows == [
        [
            f"NETFILTER_DROP at nft_do_chain+0x46f {NFT_LINE} (comm curl, pid 4211)",
            "-",
            "32",
            str(len(ip)),
            "127.0.0.2",
        ],
        ["NO_SOCKET at __udp4_lib_rcv+0x4bc (comm curl, pid 4211)", "lo", "0", "0", ""],
    ]
    with pytest.raises(ValueError, match="--pcapng /nonexistent-dir/x.pcapng: No such file"):
        PcapngSink.open("/nonexistent-dir/x.pcapng", 128)


def test_per_stack_text_equals_the_plain_formatting() -> None:
    # the JSON, text and save outputs reuse a stack's text for the same stack tuple only
    fmt = TextFormatter()
    a = event(raw(), NFT_STACK)
    b = event(raw(), (frame(SKB_DROP), frame(UDP_RCV)))  # same stack id 7, another stack (another capture)
    c = event(raw(stack_id=-12))
    for ev in (a, b, a, c, b):
        assert json.loads(fmt.json(ev)) == json.loads(json.dumps(ev.to_dict()))
        assert list(json.loads(fmt.json(ev))) == list(ev.to_dict())  # same keys, same order
        assert fmt.format(ev) == TextFormatter().format(ev)  # a fresh formatter: nothing cached
    assert "__udp4_lib_rcv+0x4bc" in fmt.format(b) and "__udp4_lib_rcv" not in fmt.format(a)
    assert "net/ipv4/ip_output.c:115" in fmt.format(a)


def test_summary_stacks_whole_with_file_line() -> None:
    s = Summary()
    long_stack = NFT_STACK + tuple(frame(a) for a in [LOCAL_OUT + 0x10, UDP_RCV] * 20)  # 43 frames
    s.add(event(raw(), long_stack))
    lines = s.render(None, 1.0).splitlines()
    i = lines.index("top stacks (of 1):")
    block = lines[i + 1 :]
    assert len(block) == len(long_stack) + 1  # every frame, and the inline chain's extra line
    assert block[0] == "         1  sk_skb_reason_drop+0x90"
    assert block[1] == f"            {'nft_do_chain+0x46f':<40} {NFT_LINE}"
    assert block[2] == f"            {'__ip_local_out+0x15c':<40} net/ipv4/ip_output.c:115"
    assert block[3] == f"            {'':<40} nf_hook include/linux/netfilter.h:257"
    assert block[-1] == "            __udp4_lib_rcv+0x4bc"
    d: Any = s.to_dict(None, 1.0)["summary"]
    assert len(d["top_stacks"][0]["stack"]) == len(long_stack)


def test_metrics_busy_port_is_a_usage_error() -> None:
    pytest.importorskip("prometheus_client", reason="prometheus_client is not installed")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            dropcapture_cmd("--metrics", f"127.0.0.1:{port}"),
            check=False,
            capture_output=True,
            text=True,
            env=cli_env(),
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert (
        lines[-1] == f"dropcapture: error: --metrics 127.0.0.1:{port}: cannot listen: Address already in use"
    )
    assert "Traceback" not in proc.stderr and "tracing skb:kfree_skb" not in proc.stderr


def test_len_is_the_ip_packet_length() -> None:
    from dropcapture.output import packet_length

    ip = _udp("127.0.0.1", "127.0.0.1", 40000, 9, b"x" * 300)  # 328 bytes of IP
    eth = b"\0" * 12 + b"\x08\x00" + ip
    udp = raw(l4proto=17, tcp_flags=0, len=308)  # skb->len at the UDP receive: from the UDP header
    on_lo = event(udp)._replace(linktype=LINKTYPE_ETHERNET, packet=eth[:64], wire_len=len(eth))
    sent = event(udp)._replace(linktype=LINKTYPE_RAW, packet=ip[:20], wire_len=len(ip))
    assert packet_length(on_lo) == packet_length(sent) == 328
    assert TextFormatter(stacks=False).line(on_lo).split()[5] == "328"
    v6 = bytes([0x60, 0, 0, 0]) + (48).to_bytes(2, "big") + bytes([17, 64]) + bytes(32) + bytes(48)
    ev6 = event(raw(family=6, l4proto=17, tcp_flags=0))._replace(
        linktype=LINKTYPE_RAW, packet=v6[:40], wire_len=88
    )
    assert packet_length(ev6) == 88
    # no IP header in the bytes (too short, ARP, none captured): the original length, else skb->len
    assert packet_length(on_lo._replace(packet=eth[:16])) == len(eth)
    arp = event(raw(family=0, eth_protocol=0x0806))._replace(
        linktype=LINKTYPE_ETHERNET, packet=b"\xff" * 42, wire_len=42
    )
    assert packet_length(arp) == 42
    assert packet_length(event(udp)) == 308
