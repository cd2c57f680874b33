"""Event decoding, filters, text/JSON/save formatting and the summary (no BPF needed)."""

from __future__ import annotations

import ctypes
import io
import ipaddress
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from dc_helpers import ROOT, _bcc_importable, ctypes_decode

from dropcapture.capture import CaptureStats, KernelInfo
from dropcapture.events import (
    EVENT_FIELDS,
    LINKTYPE_ETHERNET,
    RawEvent,
    StackFrame,
    c_struct,
    decode_event,
    decode_events,
    l4_number,
)
from dropcapture.filters import Filters
from dropcapture.output import SAVE_MAGIC, SaveWriter, Summary, TextFormatter
from dropcapture.symbolize import format_chain
from ksym.kallsyms import KallsymsHiddenError, KallsymsSymbol, parse_kallsyms

KALLSYMS = """\
ffffffff81000000 T _text
ffffffff81e94f20 T sk_skb_reason_drop
ffffffff81e95050 T consume_skb
ffffffff8205c3e0 t __ip_local_out
ffffffff8205c5b0 T ip_local_out
ffffffff8205c630 T ip_output
ffffffffc0001000 t nft_thing\t[nf_tables]
ffffffffc0001100 t nft_other\t[nf_tables]
"""


def raw_v4(**kw: object) -> RawEvent:
    r = RawEvent()
    r.ts_ns = 5_000_000_000
    r.pid, r.tid, r.cpu = 4211, 4212, 1
    r.comm = b"curl"
    r.family, r.l4proto, r.has_l4 = 4, socket.IPPROTO_TCP, 1
    r.saddr[:4] = list(ipaddress.IPv4Address("10.0.0.1").packed)
    r.daddr[:4] = list(ipaddress.IPv4Address("10.0.0.2").packed)
    r.sport, r.dport = 40412, 80
    r.eth_protocol = 0x0800
    r.reason = 12
    r.location = 0xFFFFFFFF8205C53C
    r.stack_id = 7
    r.tcp_flags = 0x02
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def decode(r: RawEvent, stack: tuple[StackFrame, ...] = ()) -> object:
    ks = parse_kallsyms(KALLSYMS)
    return decode_event(r, reason_name="NETFILTER_DROP", clock_offset=1000.0,
                        location_symbol=ks.locate(r.location), stack=stack)


def test_layout_is_one_definition() -> None:
    text = c_struct()
    for name, _t, ctype in EVENT_FIELDS:
        assert (ctype + ";" if "[" in ctype else f"{ctype} {name};") in text
    assert ctypes.sizeof(RawEvent) % 8 == 0


def _records() -> list[bytes]:
    """Records of every kind the decoder tells apart, each twice (the batch decoder keeps the texts of
    addresses and names it has made), with packet bytes after some headers."""
    v6 = raw_v4(family=6, l4proto=17)
    v6.saddr[:] = list(ipaddress.IPv6Address("::1").packed)
    v6.daddr[:] = list(ipaddress.IPv6Address("fe80::2").packed)
    icmp6 = raw_v4(family=6, l4proto=58, icmp_type=128, icmp_code=3)
    icmp6.saddr[:] = list(ipaddress.IPv6Address("2001:db8::7").packed)
    kinds = [
        bytes(raw_v4()),
        bytes(v6),
        bytes(icmp6),
        bytes(raw_v4(l4proto=1, icmp_type=8, icmp_code=0, tcp_flags=0x12)),
        bytes(raw_v4(l4proto=47)),  # GRE: no ports
        bytes(raw_v4(has_l4=0)),  # TCP without its header captured: no ports, no flags
        bytes(raw_v4(family=0, eth_protocol=0x0806)),  # ARP: no IP fields at all
        bytes(raw_v4(family=9)),  # a family the program never writes is no IP header
        bytes(raw_v4(comm=b"0123456789abcdef", ifname=b"averyveryverylon")),  # no NUL in either
        bytes(raw_v4(comm=b"\xff\xfeok", ifindex=3, ifname=b"eth0", netns=4026531840)),
        bytes(raw_v4(stack_id=-17, reason=2, location=0xFFFFFFFF81E94FB0)),
        bytes(raw_v4(caplen=4, wire_len=90, linktype=LINKTYPE_ETHERNET)) + b"\x01\x02\x03\x04",
        bytes(raw_v4(caplen=0, wire_len=0, linktype=LINKTYPE_ETHERNET)),  # nothing captured: link type 0
        bytes(raw_v4(caplen=3, wire_len=0, linktype=101)) + b"\x45\x00\x00",
        bytes(raw_v4(ts_ns=(1 << 64) - 1, pid=(1 << 32) - 1, sport=65535, dport=1, len=1 << 31)),
    ]
    return kinds + kinds


def test_decode_equals_ctypes_field_by_field() -> None:
    # the one decoder (a struct unpack per record, texts kept across the batch) against the record read
    # field by field through its ctypes mirror
    ks = parse_kallsyms(KALLSYMS)
    bufs = _records()
    reasons = {12: "NETFILTER_DROP", 2: "NOT_SPECIFIED"}
    stacks = {7: _stack(), -17: ()}
    batch = decode_events(bufs, reason_name=reasons.__getitem__, clock_offset=1000.0,
                          location_symbol=ks.locate, stack=stacks.__getitem__)
    expect = []
    for buf in bufs:
        r = RawEvent.from_buffer_copy(buf[: ctypes.sizeof(RawEvent)])
        expect.append(ctypes_decode(buf, reason_name=reasons[r.reason], clock_offset=1000.0,
                                    location_symbol=ks.locate(r.location), stack=stacks[r.stack_id]))
    assert batch == expect
    for got, want in zip(batch, expect, strict=True):  # None and 0, False and 0 compare equal: types too
        assert [type(v) for v in got] == [type(v) for v in want]
    # one record, ctypes mirror or bytes, is the same decode
    first = RawEvent.from_buffer_copy(bufs[0])
    assert decode_event(first, reason_name="NETFILTER_DROP", clock_offset=1000.0,
                        location_symbol=ks.locate(first.location), stack=_stack()) == expect[0]
    assert decode_event(bufs[11], reason_name="NETFILTER_DROP", clock_offset=1000.0,
                        location_symbol=ks.locate(first.location), stack=_stack()) == expect[11]
    assert expect[11].packet == b"\x01\x02\x03\x04" and expect[12].linktype == 0
    assert expect[8].comm == "0123456789abcdef" and expect[9].comm == "\ufffd\ufffdok"


def test_hypothesis_reading_bcc_warns_nothing(tmp_path: Path) -> None:
    """Hypothesis parses the source of the modules it takes for the project's own, bcc among them once
    it is imported (from the system's dist-packages): the parser's warning about bcc's own source
    (``<unknown>:749: invalid escape sequence``) is not the project's, and the test run shows none."""
    if not _bcc_importable():
        pytest.skip("bcc is not importable here")
    test = tmp_path / "test_bcc_then_hypothesis.py"
    test.write_text("import bcc  # noqa: F401\nfrom hypothesis import given, strategies as st\n\n\n"
                    "@given(st.text())\ndef test_text(s: str) -> None:\n    assert isinstance(s, str)\n")
    env = {**os.environ, "HYPOTHESIS_STORAGE_DIRECTORY": str(tmp_path / "hypothesis")}  # nothing cached yet
    got = subprocess.run([sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir",
                          str(tmp_path), "-p", "no:cacheprovider", str(test)],
                         capture_output=True, text=True, env=env, timeout=300, check=False)
    assert got.returncode == 0, got.stdout + got.stderr
    assert "invalid escape sequence" not in got.stdout + got.stderr, got.stdout
    assert list((tmp_path / "hypothesis" / "constants").iterdir()), "Hypothesis read the local modules' constants"


def test_kallsyms_lookup() -> None:
    ks = parse_kallsyms(KALLSYMS)
    s = ks.locate(0xFFFFFFFF8205C53C)
    assert s == KallsymsSymbol("__ip_local_out", 0x15C, 0x1D0)
    assert str(s) == "__ip_local_out+0x15c/0x1d0" and s.short == "__ip_local_out+0x15c"
    assert str(ks.locate(0xFFFFFFFFC0001010)) == "nft_thing+0x10/0x100 [nf_tables]"
    assert ks.locate(0x1000) is None
    assert ks.address_of("ip_output") == 0xFFFFFFFF8205C630
    with pytest.raises(KallsymsHiddenError):
        parse_kallsyms("0000000000000000 T _text\n")


def test_decode_ipv4_tcp() -> None:
    ev = decode(raw_v4())
    assert ev.pid == 4211 and ev.tid == 4212 and ev.comm == "curl" and ev.cpu == 1
    assert (ev.saddr, ev.sport, ev.daddr, ev.dport) == ("10.0.0.1", 40412, "10.0.0.2", 80)
    assert ev.protocol == "TCP" and ev.tcp_flags == 2 and ev.icmp_type is None
    assert ev.timestamp == pytest.approx(1005.0)
    assert ev.location_text == "__ip_local_out+0x15c"
    assert ev.endpoint("src") == "10.0.0.1:40412" and ev.stack_error is None


def test_decode_ipv6_udp_icmp_and_non_ip() -> None:
    r = raw_v4(family=6, l4proto=17)
    r.saddr[:] = list(ipaddress.IPv6Address("::1").packed)
    r.daddr[:] = list(ipaddress.IPv6Address("fe80::2").packed)
    ev = decode(r)
    assert ev.saddr == "::1" and ev.daddr == "fe80::2" and ev.protocol == "UDP"
    assert ev.endpoint("dst") == "[fe80::2]:80" and ev.tcp_flags is None
    ev = decode(raw_v4(l4proto=1, icmp_type=8, icmp_code=0))
    assert ev.protocol == "ICMP" and ev.sport is None and ev.icmp_type == 8 and ev.endpoint("src") == "10.0.0.1"
    ev = decode(raw_v4(family=0, eth_protocol=0x0806, has_l4=0))
    assert ev.protocol == "ARP" and ev.saddr is None and ev.endpoint("src") == "-" and ev.l4proto is None
    ev = decode(raw_v4(l4proto=47))
    assert ev.protocol == "GRE" and ev.sport is None
    ev = decode(raw_v4(stack_id=-17))
    assert ev.stack_error is not None and "EEXIST" in ev.stack_error


def test_filters() -> None:
    ev = decode(raw_v4())
    assert Filters().matches(ev) and Filters().empty
    assert Filters(comm="curl").matches(ev) and not Filters(comm="wget").matches(ev)
    assert Filters(pids=frozenset({4211})).matches(ev) and Filters(pids=frozenset({4212})).matches(ev)
    assert not Filters(pids=frozenset({1})).matches(ev)
    assert Filters(protos=frozenset({6})).matches(ev) and not Filters(protos=frozenset({17})).matches(ev)
    assert Filters(ports=frozenset({80})).matches(ev) and Filters(ports=frozenset({40412})).matches(ev)
    assert not Filters(ports=frozenset({443})).matches(ev)
    assert Filters(hosts=frozenset({ipaddress.ip_address("10.0.0.2")})).matches(ev)
    assert not Filters(hosts=frozenset({ipaddress.ip_address("::1")})).matches(ev)
    assert Filters(reasons=frozenset({12})).matches(ev) and not Filters(reasons=frozenset({3})).matches(ev)
    both = Filters(comm="curl", ports=frozenset({80}), reasons=frozenset({3}))
    assert not both.matches(ev)
    assert l4_number("tcp") == 6 and l4_number("ICMPv6") == 58 and l4_number("132") == 132
    with pytest.raises(ValueError):
        l4_number("bogus")
    with pytest.raises(ValueError, match="0..255"):
        l4_number("999")


def test_filters_validate_and_convert() -> None:
    ev = decode(raw_v4())
    # names and strings are accepted and converted to what the kernel compares
    f = Filters(protos=frozenset({"tcp"}), hosts={"10.0.0.2"}, reasons={"netfilter_drop"}, ports={80})
    assert f.protos == {6} and f.hosts == {ipaddress.ip_network("10.0.0.2/32")} and f.ports == {80}
    assert f.reasons == {"NETFILTER_DROP"} and f.matches(ev)  # an unresolved name matches by name
    assert Filters(reasons={"SKB_DROP_REASON_NO_SOCKET"}).reasons == {"NO_SOCKET"}
    # the wrong type: TypeError naming the field; out of range: ValueError
    bad_type: list[dict[str, object]] = [
        {"protos": "tcp"}, {"protos": 6}, {"protos": {6.0}}, {"pids": {True}}, {"pids": {"42"}},
        {"hosts": {5}}, {"ports": {"80"}}, {"reasons": {1.5}}, {"comm": 5}, {"comm": b"curl"},
    ]
    for kw in bad_type:
        with pytest.raises(TypeError, match=f"Filters.{next(iter(kw))}"):
            Filters(**kw)  # type: ignore[arg-type]
    bad_value: list[dict[str, object]] = [
        {"protos": {999}}, {"protos": {-1}}, {"protos": {"bogus"}}, {"pids": {-5}}, {"pids": {1 << 40}},
        {"ports": {0}}, {"ports": {65536}}, {"hosts": {"not-an-ip"}}, {"reasons": {"no such"}},
        {"reasons": {-1}}, {"comm": ""},
    ]
    for kw in bad_value:
        with pytest.raises(ValueError):
            Filters(**kw)  # type: ignore[arg-type]


def test_filters_resolve_reason_names(need_tracefs: None) -> None:
    from dropcapture.reasons import ReasonTable
    from dropcapture.tpformat import read_format

    table = ReasonTable.from_kernel(read_format(), None)
    f = Filters(reasons={"no_socket", 12}).resolve_reasons(table)
    assert f.reasons == {table.value("NO_SOCKET"), 12} == f.reason_numbers
    with pytest.raises(ValueError, match="NO_SUCH_REASON"):
        Filters(reasons={"NO_SUCH_REASON"}).resolve_reasons(table)


def _stack() -> tuple[StackFrame, ...]:
    ks = parse_kallsyms(KALLSYMS)
    addrs = [0xFFFFFFFF81E94FB0, 0xFFFFFFFF8205C53C, 0xFFFFFFFF8205C5CC, 0x12]
    return tuple(StackFrame(a, ks.locate(a)) for a in addrs)


def test_text_and_json() -> None:
    ev = decode(raw_v4(), _stack())
    fmt = TextFormatter()
    text = fmt.format(ev)
    first = text.splitlines()[0]
    for part in ("4211", "curl", "TCP", "10.0.0.1:40412", "-> 10.0.0.2:80", "NETFILTER_DROP", "__ip_local_out+0x15c"):
        assert part in first
    assert "    sk_skb_reason_drop+0x90" in text and "    0x12" in text
    assert "sk_skb" not in TextFormatter(stacks=False).format(ev)
    d = json.loads(fmt.json(ev))
    assert d["reason"] == "NETFILTER_DROP" and d["reason_code"] == 12 and d["dport"] == 80
    assert d["stack"][1] == {"addr": "0xffffffff8205c53c", "sym": "__ip_local_out+0x15c/0x1d0"}
    assert d["stack"][3]["sym"] is None
    missed = TextFormatter().format(decode(raw_v4(stack_id=-14)))
    assert "[Missed Kernel Stack: EFAULT]" in missed


def test_source_annotation_text() -> None:
    class Loc:
        def __init__(self, function: str, file: str, line: int) -> None:
            self.function, self.file, self.line = function, file, line

    chain = [Loc("nf_hook", "include/linux/netfilter.h", 257), Loc("__ip_local_out", "net/ipv4/ip_output.c", 115)]
    text = format_chain(chain)
    assert text == "net/ipv4/ip_output.c:115 (inlined nf_hook include/linux/netfilter.h:257)"
    ks = parse_kallsyms(KALLSYMS)
    fr = StackFrame(0xFFFFFFFF8205C53C, ks.locate(0xFFFFFFFF8205C53C), (text,))
    ev = decode(raw_v4(), (fr,))
    assert "__ip_local_out+0x15c" in TextFormatter().format(ev) and text in TextFormatter().format(ev)


def test_save_format() -> None:
    buf = io.StringIO()
    info = KernelInfo("6.18.44-test", "85c7e4e2", 0xFFFFFFFF81000000, 0)
    w = SaveWriter(buf, info, "tracefs")
    w.write(decode(raw_v4(comm=b"my prog"), _stack()))
    text = buf.getvalue()
    lines = text.splitlines()
    assert lines[0] == SAVE_MAGIC
    assert "# release: 6.18.44-test" in lines and "# build-id: 85c7e4e2" in lines
    assert "# Kernel Offset: 0x0 from 0xffffffff81000000" in lines
    drop = next(line for line in lines if line.startswith("drop 1 "))
    assert 'comm="my prog"' in drop and "reason=NETFILTER_DROP" in drop and "src=10.0.0.1:40412" in drop
    assert "location=__ip_local_out+0x15c/0x1d0" in drop
    i = lines.index("Call Trace:")
    assert lines[i + 1] == " [<ffffffff81e94fb0>] sk_skb_reason_drop+0x90/0x130"
    assert lines[i + 2] == " [<ffffffff8205c53c>] __ip_local_out+0x15c/0x1d0"
    assert lines[i + 4] == " [<0000000000000012>] ?"
    assert text.endswith("\n\n")


def test_summary() -> None:
    s = Summary()
    for _ in range(3):
        s.add(decode(raw_v4(), _stack()))
    s.add(decode(raw_v4(stack_id=-17)))
    stats = CaptureStats(10, 2, 8, 4, 4, lost_full=1, lost_at_exit=3)
    text = s.render(stats, 2.0)
    assert "4 drops" in text and "NETFILTER_DROP" in text
    assert "8 emitted = 4 delivered + 4 lost (1 buffer full, 3 unread at exit)" in text
    lines = text.splitlines()
    i = lines.index("         3  sk_skb_reason_drop+0x90")
    assert lines[i + 1 : i + 4] == ["            __ip_local_out+0x15c", "            ip_local_out+0x1c", "            0x12"]
    d = s.to_dict(stats, 2.0)["summary"]
    assert d["by_reason"] == {"NETFILTER_DROP": 4}
    assert d["kernel"] == {"hits": 10, "filtered": 2, "emitted": 8, "delivered": 4, "lost": 4,  # type: ignore[index]
                           "lost_full": 1, "lost_at_exit": 3}


def test_summary_prints_whole_stacks() -> None:
    # two stacks that differ only below the sixth frame must print as different stacks, whole
    ks = parse_kallsyms(KALLSYMS)
    base = [0xFFFFFFFF81E94FB0, 0xFFFFFFFF8205C53C, 0xFFFFFFFF8205C5CC] * 3
    s = Summary()
    for sid, tail in ((1, 0x11), (2, 0x22)):
        frames = tuple(StackFrame(a, ks.locate(a)) for a in [*base, tail])
        s.add(decode(raw_v4(stack_id=sid), frames))
    text = s.render(None, 1.0)
    blocks = text.split("top stacks (of 2):\n")[1].split("\n         1  ")
    assert len(blocks) == 2
    assert [len(b.splitlines()) for b in blocks] == [10, 10]
    assert blocks[0].splitlines()[-1].strip() != blocks[1].splitlines()[-1].strip()
    assert {blocks[0].splitlines()[-1].strip(), blocks[1].splitlines()[-1].strip()} == {"0x11", "0x22"}


def test_save_format_is_read_by_ksym_parser() -> None:
    parse = pytest.importorskip("ksym.parse", reason="ksym's parser is not importable")
    buf = io.StringIO()
    w = SaveWriter(buf, KernelInfo("6.18.44-test", "85c7e4e2", 0xFFFFFFFF9A000000, 0x19000000), "tracefs")
    w.write(decode(raw_v4(), _stack()))
    w.write(decode(raw_v4(), _stack()))
    text = buf.getvalue()
    frames = [pl.frame for pl in parse.parse_text(text) if pl.frame is not None]
    # the symbolized frames of both events, none from the "drop N ... location=..." lines
    assert len(frames) == 6
    assert [f.address for f in frames[:3]] == [0xFFFFFFFF81E94FB0, 0xFFFFFFFF8205C53C, 0xFFFFFFFF8205C5CC]
    assert frames[0].stack_index != frames[3].stack_index
    assert parse.find_kaslr_offset(text) == 0x19000000


def test_public_exports() -> None:
    import importlib

    import dropcapture

    for name in dropcapture.__all__:
        assert hasattr(dropcapture, name), name
    for mod in ("btf", "tpformat", "reasons", "events", "filters", "bpf_text", "capture",
                "output", "symbolize", "cli", "errors"):
        m = importlib.import_module(f"dropcapture.{mod}")
        for name in m.__all__:
            assert hasattr(m, name), f"dropcapture.{mod}.{name}"
