"""Tracepoint format parsing and drop-reason names, against this kernel's real files."""

from __future__ import annotations

import pytest

from dropcapture.bpf_text import Layout, build_text
from dropcapture.btf import Btf
from dropcapture.errors import TracefsError
from dropcapture.filters import Filters
from dropcapture.reasons import ReasonTable, parse_print_symbolic
from dropcapture.tpformat import TracepointFormat, read_format

# skb:kfree_skb of a 5.10 kernel: no reason, no rx_sk
OLD_FORMAT = """name: kfree_skb
ID: 1234
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned short protocol;\toffset:24;\tsize:2;\tsigned:0;

print fmt: "skbaddr=%p protocol=%u location=%p", REC->skbaddr, REC->protocol, REC->location
"""


def test_running_kernel_format(need_tracefs: None) -> None:
    fmt = read_format()
    assert fmt.name == "kfree_skb"
    for name in ("skbaddr", "location", "protocol"):
        assert fmt.field(name) is not None
    assert fmt.fields["skbaddr"].size == 8
    reason = fmt.field("reason")
    if reason is not None:  # 5.17+
        assert reason.size == 4


def test_reasons_from_tracefs_agree_with_btf(need_tracefs: None, need_btf: None) -> None:
    fmt = read_format()
    btf = Btf.load()
    tr = ReasonTable.from_kernel(fmt, btf)
    bt = ReasonTable.from_kernel(None, btf)
    assert tr.source == "tracefs" and bt.source == "btf"
    assert tr.names, "the format file lists the reasons"
    for value, name in tr.names.items():
        assert bt.names.get(value) == name, (value, name)
    for name in ("NO_SOCKET", "NETFILTER_DROP", "NOT_SPECIFIED"):
        assert tr.name(tr.value(name)) == name
    assert tr.value("skb_drop_reason_no_socket") == tr.value("NO_SOCKET")
    with pytest.raises(KeyError):
        tr.value("NO_SUCH_REASON")
    # values outside the table: numbers, and subsystem-coded values with the subsystem's name
    assert tr.name(60000) == "REASON_60000"
    if 2 in tr.subsystems:
        assert tr.name((2 << 16) | 5).startswith("OPENVSWITCH:")


def test_parse_print_symbolic() -> None:
    fmt = 'print fmt: "x %s", __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 0x3, "NO_SOCKET" })'
    assert parse_print_symbolic(fmt) == {2: "NOT_SPECIFIED", 3: "NO_SOCKET"}
    assert parse_print_symbolic("no symbols") == {}


def test_old_kernel_layout_has_no_reason(need_btf: None) -> None:
    fmt = TracepointFormat.parse(OLD_FORMAT)
    assert fmt.field("reason") is None and fmt.fields["protocol"].offset == 24
    table = ReasonTable.from_kernel(fmt, None)
    assert table.source == "none" and table.name(7) == "REASON_7"
    layout = Layout.from_kernel(fmt, Btf.load())
    text = build_text(layout, Filters())
    assert "#define TP_OFF_PROTOCOL 24" in text
    assert "#define TP_OFF_REASON" not in text


def test_format_parse_errors() -> None:
    with pytest.raises(TracefsError):
        TracepointFormat.parse("garbage")
    with pytest.raises(TracefsError):
        read_format("skb", "no_such_event")


def test_bpf_text_constants_come_from_kernel(need_tracefs: None, need_btf: None) -> None:
    fmt = read_format()
    btf = Btf.load()
    layout = Layout.from_kernel(fmt, btf)
    text = build_text(layout, Filters(comm="curl", pids=frozenset({42}), protos=frozenset({6}),
                                      ports=frozenset({80}), reasons=frozenset({12})))
    assert f"#define SKB_OFF_HEAD {btf.member('sk_buff', 'head').offset}" in text
    assert f"#define SKB_OFF_NETWORK_HEADER {btf.member('sk_buff', 'network_header').offset}" in text
    assert f"#define TP_OFF_SKBADDR {fmt.fields['skbaddr'].offset}" in text
    assert "ev->comm[0] != 99" in text and "ev->pid == 42" in text and "ev->dport == 80" in text
    assert "ev->reason == 12" in text and "ev->l4proto == 6" in text
    # nested members (net_device.nd_net.net, net.ns.inum) from BTF too
    assert f"#define DEV_OFF_NET {btf.member_path('net_device', 'nd_net.net').offset}" in text
    assert f"#define NET_OFF_INUM {btf.member_path('net', 'ns.inum').offset}" in text
    assert f"#define SK_OFF_NET {btf.member_path('sock', '__sk_common.skc_net.net').offset}" in text
    import ipaddress

    hosts = frozenset({ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")})
    htext = build_text(layout, Filters(hosts=hosts))
    assert "(*(u32 *)ev->saddr & 0xffffffffU) == 0x100007fU" in htext  # 127.0.0.1 as a little-endian u32
    assert "ev->family == 6" in htext and "0x100000000000000ULL" in htext  # ::1, second half
    assert "#include <net/" not in text and "struct sk_buff *" not in text and "->head" not in text
    assert "BPF_RINGBUF_OUTPUT" in text
    assert "BPF_PERF_OUTPUT" in build_text(layout, ringbuf=False)
    # names reach the C text as validated numbers; unresolved reason names never reach it
    named = build_text(layout, Filters(protos=frozenset({"tcp", "udp"})))
    assert "ev->l4proto == 6 || ev->l4proto == 17" in named and "'tcp'" not in named
    with pytest.raises(ValueError, match="resolve"):
        build_text(layout, Filters(reasons=frozenset({"NO_SOCKET"})))
    with pytest.raises(ValueError):
        build_text(layout, ringbuf_pages=1000)
