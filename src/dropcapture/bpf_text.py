"""The BPF C program, with the running kernel's layouts and the filters filled in.

Nothing here comes from kernel headers: the tracepoint record offsets come from the tracefs format
file (:mod:`dropcapture.tpformat`) and the ``struct sk_buff`` offsets from BTF (:mod:`dropcapture.btf`);
both are substituted into the text as constants and read with ``bpf_probe_read_kernel``. bcc still
needs headers to compile (its helper definitions include them), see tools/dropcapture-setup.sh.

``dropcapture --ebpf`` prints the generated text.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .btf import Btf
from .errors import TracefsError
from .events import DEFAULT_SNAPLEN, HEADER_SIZE, SNAPLEN_MAX, c_struct
from .filters import Filters, IPNetwork
from .tpformat import TracepointFormat

if TYPE_CHECKING:
    from .pcapfilter import CbpfInsn

__all__ = [
    "NESTED_MEMBERS",
    "SKB_MEMBERS",
    "STAT_EMITTED",
    "STAT_FILTERED",
    "STAT_HITS",
    "STAT_LOST",
    "Layout",
    "build_text",
    "data_size",
]

#: ``struct sk_buff`` members the program reads; offsets come from BTF.
SKB_MEMBERS = (
    "head",
    "data",
    "network_header",
    "mac_header",
    "transport_header",
    "protocol",
    "len",
    "data_len",
    "dev",
    "sk",
    "skb_iif",
)

#: Nested members the program reads for the namespace and the device: (C name, struct, BTF member path).
NESTED_MEMBERS = (
    ("DEV_OFF_IFINDEX", "net_device", "ifindex"),
    ("DEV_OFF_NAME", "net_device", "name"),
    ("DEV_OFF_NET", "net_device", "nd_net.net"),
    ("SK_OFF_NET", "sock", "__sk_common.skc_net.net"),
    ("NET_OFF_INUM", "net", "ns.inum"),
)

# sizes the program's reads assume (a different size in BTF is refused, not misread)
_SKB_SIZES = {
    "head": 8,
    "data": 8,
    "network_header": 2,
    "mac_header": 2,
    "len": 4,
    "data_len": 4,
    "dev": 8,
    "sk": 8,
    "skb_iif": 4,
}
_NESTED_SIZES = {
    "DEV_OFF_IFINDEX": 4,
    "DEV_OFF_NAME": 16,
    "DEV_OFF_NET": 8,
    "SK_OFF_NET": 8,
    "NET_OFF_INUM": 4,
}

#: Indexes in the per-CPU ``dc_stats`` array.
STAT_HITS, STAT_EMITTED, STAT_LOST, STAT_FILTERED = 0, 1, 2, 3


@dataclass(frozen=True)
class Layout:
    """Offsets and sizes the BPF program needs, all from the running kernel."""

    #: tracepoint record: name -> (offset, size); ``reason``/``rx_sk`` may be absent.
    tp_fields: dict[str, tuple[int, int]]
    #: struct sk_buff: name -> (offset, size).
    skb: dict[str, tuple[int, int]]
    #: C name -> offset of the members of :data:`NESTED_MEMBERS` (net_device, sock, net).
    nested: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_kernel(cls, fmt: TracepointFormat, btf: Btf) -> Layout:
        """Take the tracepoint layout from ``fmt`` and the sk_buff layout from ``btf``.

        :raises TracefsError: the tracepoint lacks ``skbaddr``/``location``.
        :raises BtfError: BTF lacks ``struct sk_buff`` or one of :data:`SKB_MEMBERS`.
        """
        tp: dict[str, tuple[int, int]] = {}
        for name in ("skbaddr", "location", "protocol", "reason", "rx_sk"):
            f = fmt.field(name)
            if f is not None:
                tp[name] = (f.offset, f.size)
        for need in ("skbaddr", "location"):
            if need not in tp:
                raise TracefsError(f"the skb:kfree_skb tracepoint has no '{need}' field on this kernel")
        skb: dict[str, tuple[int, int]] = {}
        for name in SKB_MEMBERS:
            m = btf.member("sk_buff", name)
            if m.bitfield_size:
                raise TracefsError(f"sk_buff.{name} is a bitfield in BTF; dropcapture cannot read it")
            if name in _SKB_SIZES and m.size != _SKB_SIZES[name]:
                raise TracefsError(
                    f"sk_buff.{name} is {m.size} bytes in BTF, dropcapture reads {_SKB_SIZES[name]}"
                )
            skb[name] = (m.offset, m.size)
        nested: dict[str, int] = {}
        for cname, struct_name, path in NESTED_MEMBERS:
            m = btf.member_path(struct_name, path)
            want = _NESTED_SIZES[cname]
            if m.bitfield_size or m.size != want:
                raise TracefsError(f"{struct_name}.{path} is {m.size} bytes in BTF, dropcapture reads {want}")
            nested[cname] = m.offset
        return cls(tp, skb, nested)


_TEMPLATE = r"""
/* dropcapture: skb:kfree_skb -> drop events with kernel stacks and the first packet bytes.
 * Layouts from the running kernel: tracepoint format (tracefs) and struct offsets (BTF). */
#include <uapi/linux/ptrace.h>

DEFINES

EVENT_STRUCT

BPF_STACK_TRACE(dc_stacks, STACK_ENTRIES);
BPF_PERCPU_ARRAY(dc_stats, u64, 5);
/* the record is built here, not on the 512-byte stack: it holds up to DC_SNAPLEN packet bytes */
BPF_PERCPU_ARRAY(dc_scratch, struct dc_event, 1);
OUTPUT_DECL

static __always_inline void dc_count(u32 idx)
{
    u64 *v = dc_stats.lookup(&idx);
    if (v)
        (*v)++;
}

#define DC_BE16(p) ((u16)(((u16)(p)[0] << 8) | (p)[1]))
#define DC_READ(dst, size, addr) bpf_probe_read_kernel((dst), (size), (void *)(addr))

PCAP_FILTER_FUNCS

int dc_kfree_skb(void *ctx)
{
    u32 dc_zero = 0;
    struct dc_event *ev = dc_scratch.lookup(&dc_zero);
    u64 skb = 0, head = 0, l4 = 0, data = 0, dev = 0, net = 0, sk = 0;
    u16 nh = 0, mh = 0, proto_be = 0;
    u32 data_len = 0;
    u8 ip[40] = {};
    u8 l4h[14] = {};
    int have_l4 = 0;

    if (!ev)
        return 0;
    __builtin_memset(ev, 0, DC_HDR_SIZE);
    dc_count(STAT_HITS);
    u64 pid_tgid = bpf_get_current_pid_tgid();
    ev->pid = pid_tgid >> 32;
    ev->tid = (u32)pid_tgid;
    FILTER_PID
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
    FILTER_COMM

    DC_READ(&skb, sizeof(skb), (char *)ctx + TP_OFF_SKBADDR);
    DC_READ(&ev->location, sizeof(ev->location), (char *)ctx + TP_OFF_LOCATION);
#ifdef TP_OFF_REASON
    DC_READ(&ev->reason, TP_SIZE_REASON, (char *)ctx + TP_OFF_REASON);
#endif
    FILTER_REASON

    /* namespace and device: skb->dev, else the socket's namespace and skb->skb_iif */
    DC_READ(&dev, sizeof(dev), skb + SKB_OFF_DEV);
    if (dev) {
        DC_READ(&ev->ifindex, sizeof(ev->ifindex), dev + DEV_OFF_IFINDEX);
        DC_READ(ev->ifname, sizeof(ev->ifname), dev + DEV_OFF_NAME);
        DC_READ(&net, sizeof(net), dev + DEV_OFF_NET);
    } else {
        DC_READ(&ev->ifindex, sizeof(ev->ifindex), skb + SKB_OFF_SKB_IIF);
        DC_READ(&sk, sizeof(sk), skb + SKB_OFF_SK);
        if (sk)
            DC_READ(&net, sizeof(net), sk + SK_OFF_NET);
    }
    if (net)
        DC_READ(&ev->netns, sizeof(ev->netns), net + NET_OFF_INUM);
    FILTER_NETNS

#ifdef TP_OFF_PROTOCOL
    /* the tracepoint stores ntohs(skb->protocol) */
    DC_READ(&ev->eth_protocol, sizeof(ev->eth_protocol), (char *)ctx + TP_OFF_PROTOCOL);
#else
    DC_READ(&proto_be, sizeof(proto_be), skb + SKB_OFF_PROTOCOL);
    ev->eth_protocol = ((proto_be & 0xff) << 8) | (proto_be >> 8);
#endif
    ev->skbaddr = skb;
    DC_READ(&head, sizeof(head), skb + SKB_OFF_HEAD);
    DC_READ(&data, sizeof(data), skb + SKB_OFF_DATA);
    DC_READ(&nh, sizeof(nh), skb + SKB_OFF_NETWORK_HEADER);
    DC_READ(&mh, sizeof(mh), skb + SKB_OFF_MAC_HEADER);
    DC_READ(&ev->len, sizeof(ev->len), skb + SKB_OFF_LEN);
    DC_READ(&data_len, sizeof(data_len), skb + SKB_OFF_DATA_LEN);

    if (head && nh != 0xffff && (ev->eth_protocol == 0x0800 || ev->eth_protocol == 0x86DD
                                 || (ev->eth_protocol == 0 && nh != 0))) {
        u64 p = head + nh;
        if (DC_READ(ip, 20, p) == 0) {
            u8 ver = ip[0] >> 4;
            if (ver == 4 && ev->eth_protocol != 0x86DD) {
                u32 ihl = (ip[0] & 0xf) * 4;
                u16 frag = ((u16)(ip[6] & 0x1f) << 8) | ip[7];
                ev->family = 4;
                ev->l4proto = ip[9];
                __builtin_memcpy(ev->saddr, &ip[12], 4);
                __builtin_memcpy(ev->daddr, &ip[16], 4);
                if (frag == 0 && ihl >= 20) {
                    l4 = p + ihl;
                    have_l4 = 1;
                }
            } else if (ver == 6 && ev->eth_protocol != 0x0800 && DC_READ(ip, 40, p) == 0) {
                u8 next = ip[6];
                ev->family = 6;
                __builtin_memcpy(ev->saddr, &ip[8], 16);
                __builtin_memcpy(ev->daddr, &ip[24], 16);
                l4 = p + 40;
                have_l4 = 1;
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    u8 xh[2] = {};
                    if (next != 0 && next != 43 && next != 44 && next != 60 && next != 51)
                        break;
                    if (DC_READ(xh, 2, l4) != 0) {
                        have_l4 = 0;
                        break;
                    }
                    if (next == 44) {
                        l4 += 8;
                    } else if (next == 51) {
                        l4 += ((u64)xh[1] + 2) * 4;
                    } else {
                        l4 += ((u64)xh[1] + 1) * 8;
                    }
                    next = xh[0];
                }
                ev->l4proto = next;
            }
        }
    }
    if (have_l4 && DC_READ(l4h, sizeof(l4h), l4) == 0) {
        ev->has_l4 = 1;
        ev->sport = DC_BE16(&l4h[0]);
        ev->dport = DC_BE16(&l4h[2]);
        ev->icmp_type = l4h[0];
        ev->icmp_code = l4h[1];
        ev->tcp_flags = l4h[13];
    }
    FILTER_PROTO
    FILTER_PORT
    FILTER_HOST

    /* the packet bytes: from the MAC header when the skb has one of ETH_HLEN bytes right before the
     * network header (Ethernet, loopback), else from the IPv4/IPv6 header; only the linear part
     * (skb->len - skb->data_len bytes from skb->data) */
    if (head && data >= head && data - head < 0x10000 && nh != 0xffff && data_len <= ev->len) {
        u32 doff = data - head;
        u32 end = doff + ev->len;                  /* end of the packet, from head */
        u32 lin = doff + (ev->len - data_len);     /* end of the linear part, from head */
        u32 start = 0xffffffff;
        u16 lt = 0;
        if (mh != 0xffff && nh > mh && nh - mh == 14) {
            start = mh;
            lt = 1;
        } else if (ev->family == 4 || ev->family == 6) {
            start = nh;
            lt = 101;
        }
        if (start <= end) {
            u32 cap = lin > start ? lin - start : 0;
            if (cap > DC_SNAPLEN)
                cap = DC_SNAPLEN;
            if (cap > 0 && DC_READ(ev->data, cap, head + start) != 0)
                cap = 0;
            ev->linktype = lt;
            ev->wire_len = end - start;
            ev->caplen = cap;
        }
    }
    FILTER_PCAP

    ev->ts_ns = bpf_ktime_get_ns();
    ev->cpu = bpf_get_smp_processor_id();
    ev->stack_id = dc_stacks.get_stackid(ctx, 0);
    u32 dc_size = ev->caplen;
    if (dc_size > DC_SNAPLEN)
        dc_size = DC_SNAPLEN;
    dc_size += DC_HDR_SIZE;
    OUTPUT_SUBMIT
    return 0;
}
"""

_FILTERED = "{ dc_count(STAT_FILTERED); return 0; }"


def _any_of(expr: str, values: AbstractSet[int]) -> str:
    # Filters holds validated ints only; int() keeps anything else out of the C text
    return " || ".join(f"{expr} == {int(v)}" for v in sorted(values))


def data_size(snaplen: int) -> int:
    """Size of the record's packet array for ``snaplen``: the next power of two, so that an index masked
    with ``size - 1`` is in bounds for the verifier (the pcap filter's indexed loads)."""
    size = 1
    while size < snaplen:
        size <<= 1
    return size


def _host_condition(net: IPNetwork) -> str:
    # the address bytes are compared in memory order: read back as native integers, as the C code does
    if net.version == 4:
        v = int.from_bytes(net.network_address.packed, sys.byteorder)
        m = int.from_bytes(net.netmask.packed, sys.byteorder)
        one = "((*(u32 *)ev->{a} & {m:#x}U) == {v:#x}U)"
        return (
            "(ev->family == 4 && ("
            + one.format(a="saddr", m=m, v=v)
            + " || "
            + one.format(a="daddr", m=m, v=v)
            + "))"
        )
    packed, mask = net.network_address.packed, net.netmask.packed
    parts = []
    for half in (0, 8):
        v = int.from_bytes(packed[half : half + 8], sys.byteorder)
        m = int.from_bytes(mask[half : half + 8], sys.byteorder)
        if m:
            parts.append((half, v, m))
    if not parts:  # ::/0
        return "(ev->family == 6)"

    def same(a: str) -> str:
        return (
            "("
            + " && ".join(f"((*(u64 *)&ev->{a}[{h}] & {m:#x}ULL) == {v:#x}ULL)" for h, v, m in parts)
            + ")"
        )

    return f"(ev->family == 6 && ({same('saddr')} || {same('daddr')}))"


def build_text(
    layout: Layout,
    filters: Filters | None = None,
    *,
    ringbuf: bool = True,
    ringbuf_pages: int = 1024,
    stack_entries: int = 16384,
    wakeup_every: int = 1,
    snaplen: int = DEFAULT_SNAPLEN,
    pcap_programs: Mapping[int, Sequence[CbpfInsn]] | None = None,
) -> str:
    """The complete BPF C text for ``layout`` and ``filters``.

    With ``ringbuf`` the events go through one BPF ring buffer (kernel >= 5.8); wake-ups are batched:
    a CPU wakes the consumer on every ``wakeup_every``-th event it emits (1: on each); the consumer
    also polls on a short timeout, so batched wake-ups only add latency, never lose events.
    Without it a per-CPU perf buffer is used.

    Each record carries up to ``snaplen`` packet bytes (0..:data:`~dropcapture.events.SNAPLEN_MAX`).
    ``pcap_programs`` maps a pcap link type (1 Ethernet, 101 raw IP) to the classic BPF program
    libpcap compiled ``filters.pcap_filter`` to for it (:mod:`dropcapture.pcapfilter`); it is required
    when the filters have a pcap filter. A drop whose bytes have another link type (none) is rejected.
    """
    f = filters or Filters()
    if isinstance(snaplen, bool) or not isinstance(snaplen, int) or not 0 <= snaplen <= SNAPLEN_MAX:
        raise ValueError(f"snaplen must be 0..{SNAPLEN_MAX}, not {snaplen!r}")
    dsize = data_size(snaplen)
    defines = [
        f"#define TP_OFF_SKBADDR {layout.tp_fields['skbaddr'][0]}",
        f"#define TP_OFF_LOCATION {layout.tp_fields['location'][0]}",
        f"#define STAT_HITS {STAT_HITS}",
        f"#define STAT_EMITTED {STAT_EMITTED}",
        f"#define STAT_LOST {STAT_LOST}",
        f"#define STAT_FILTERED {STAT_FILTERED}",
        f"#define STACK_ENTRIES {int(stack_entries)}",
        f"#define DC_HDR_SIZE {HEADER_SIZE}",
        f"#define DC_SNAPLEN {snaplen}",
        f"#define DC_DATA_MASK {dsize - 1}",
    ]
    if "reason" in layout.tp_fields:
        off, size = layout.tp_fields["reason"]
        defines += [f"#define TP_OFF_REASON {off}", f"#define TP_SIZE_REASON {min(size, 4)}"]
    if "protocol" in layout.tp_fields:
        defines.append(f"#define TP_OFF_PROTOCOL {layout.tp_fields['protocol'][0]}")
    for name, (off, _size) in layout.skb.items():
        defines.append(f"#define SKB_OFF_{name.upper()} {off}")
    for cname, off in layout.nested.items():
        defines.append(f"#define {cname} {int(off)}")

    pid = (
        f"if (!({_any_of('ev->pid', f.pids)} || {_any_of('ev->tid', f.pids)})) {_FILTERED}" if f.pids else ""
    )
    comm = ""
    if f.comm:
        want = f.comm.encode()[:15]
        checks = [f"ev->comm[{i}] != {b}" for i, b in enumerate(want)]
        checks.append(f"ev->comm[{len(want)}] != 0")
        comm = f"if ({' || '.join(checks)}) {_FILTERED}"
    if f.reasons != f.reason_numbers:
        raise ValueError(
            "reason names must be resolved to this kernel's numbers first (Filters.resolve_reasons)"
        )
    reason = f"if (!({_any_of('ev->reason', f.reason_numbers)})) {_FILTERED}" if f.reasons else ""
    netns = f"if (!({_any_of('ev->netns', f.netns_inodes)})) {_FILTERED}" if f.netns else ""
    proto = f"if (!({_any_of('ev->l4proto', f.proto_numbers)})) {_FILTERED}" if f.protos else ""
    port = (
        f"if (!ev->has_l4 || !({_any_of('ev->sport', f.ports)} || {_any_of('ev->dport', f.ports)})) {_FILTERED}"
        if f.ports
        else ""
    )
    host = ""
    if f.hosts:
        nets = sorted(f.host_networks, key=lambda n: (n.version, n.network_address.packed, n.prefixlen))
        host = f"if (!({' || '.join(_host_condition(n) for n in nets)})) {_FILTERED}"
    pcap_funcs = pcap = ""
    if f.pcap_filter is not None:
        if not pcap_programs:
            raise ValueError(
                "a pcap filter needs its compiled programs (dropcapture.pcapfilter.compile_filters)"
            )
        from .pcapfilter import cbpf_to_c

        funcs, conds = [], []
        for linktype in sorted(pcap_programs):
            fname = f"dc_pcap_{int(linktype)}"
            funcs.append(cbpf_to_c(fname, pcap_programs[linktype], data_size=dsize))
            conds.append(f"(ev->linktype == {int(linktype)} && {fname}(ev))")
        pcap_funcs = "\n\n".join(funcs)
        pcap = f"if (!({' || '.join(conds)})) {_FILTERED}"
    if ringbuf:
        pages = int(ringbuf_pages)
        if pages <= 0 or pages & (pages - 1):
            raise ValueError("ring buffer pages must be a power of two")
        decl = f"BPF_RINGBUF_OUTPUT(dc_events, {pages});"
        submit = (
            "u64 dc_flags = BPF_RB_NO_WAKEUP;\n"
            "    u32 dc_wk = 4;\n"
            "    u64 *dc_n = dc_stats.lookup(&dc_wk);\n"
            f"    if (dc_n && ((*dc_n)++ % {int(wakeup_every)}) == 0)\n"
            "        dc_flags = BPF_RB_FORCE_WAKEUP;\n"
            "    if (dc_events.ringbuf_output(ev, dc_size, dc_flags) < 0)\n"
            "        dc_count(STAT_LOST);\n"
            "    else\n"
            "        dc_count(STAT_EMITTED);"
        )
    else:
        decl = "BPF_PERF_OUTPUT(dc_events);"
        submit = (
            "if (dc_events.perf_submit(ctx, ev, dc_size) < 0)\n"
            "        dc_count(STAT_LOST);\n"
            "    else\n"
            "        dc_count(STAT_EMITTED);"
        )
    text = _TEMPLATE
    for key, val in (
        ("DEFINES", "\n".join(defines)),
        ("EVENT_STRUCT", c_struct(data_size=dsize)),
        ("PCAP_FILTER_FUNCS", pcap_funcs),
        ("FILTER_NETNS", netns),
        ("FILTER_PCAP", pcap),
        ("OUTPUT_DECL", decl),
        ("OUTPUT_SUBMIT", submit),
        ("FILTER_PID", pid),
        ("FILTER_COMM", comm),
        ("FILTER_REASON", reason),
        ("FILTER_PROTO", proto),
        ("FILTER_PORT", port),
        ("FILTER_HOST", host),
    ):
        text = text.replace(key, val)
    return text
