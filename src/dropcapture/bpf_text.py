"""The BPF C program, with the running kernel's layouts and the filters filled in.

Nothing here comes from kernel headers: the tracepoint record offsets come from the tracefs format
file (:mod:`dropcapture.tpformat`) and the ``struct sk_buff`` offsets from BTF (:mod:`dropcapture.btf`);
both are substituted into the text as constants and read with ``bpf_probe_read_kernel``. bcc still
needs headers to compile (its helper definitions include them), see tools/dropcapture-setup.sh.

``dropcapture --ebpf`` prints the generated text.
"""

from __future__ import annotations

import sys
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from .btf import Btf
from .errors import TracefsError
from .events import c_struct
from .filters import Filters
from .tpformat import TracepointFormat

__all__ = ["SKB_MEMBERS", "STAT_EMITTED", "STAT_FILTERED", "STAT_HITS", "STAT_LOST", "Layout", "build_text"]

#: ``struct sk_buff`` members the program reads; offsets come from BTF.
SKB_MEMBERS = ("head", "network_header", "transport_header", "protocol", "len")

#: Indexes in the per-CPU ``dc_stats`` array.
STAT_HITS, STAT_EMITTED, STAT_LOST, STAT_FILTERED = 0, 1, 2, 3


@dataclass(frozen=True)
class Layout:
    """Offsets and sizes the BPF program needs, all from the running kernel."""

    #: tracepoint record: name -> (offset, size); ``reason``/``rx_sk`` may be absent.
    tp_fields: dict[str, tuple[int, int]]
    #: struct sk_buff: name -> (offset, size).
    skb: dict[str, tuple[int, int]]

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
            skb[name] = (m.offset, m.size)
        return cls(tp, skb)


_TEMPLATE = r"""
/* dropcapture: skb:kfree_skb -> drop events with kernel stacks.
 * Layouts from the running kernel: tracepoint format (tracefs) and struct sk_buff (BTF). */
#include <uapi/linux/ptrace.h>

DEFINES

EVENT_STRUCT

BPF_STACK_TRACE(dc_stacks, STACK_ENTRIES);
BPF_PERCPU_ARRAY(dc_stats, u64, 5);
OUTPUT_DECL

static __always_inline void dc_count(u32 idx)
{
    u64 *v = dc_stats.lookup(&idx);
    if (v)
        (*v)++;
}

#define DC_BE16(p) ((u16)(((u16)(p)[0] << 8) | (p)[1]))

int dc_kfree_skb(void *ctx)
{
    struct dc_event ev = {};
    u64 skb = 0, head = 0, l4 = 0;
    u16 nh = 0, proto_be = 0;
    u8 ip[40] = {};
    u8 l4h[14] = {};
    int have_l4 = 0;

    dc_count(STAT_HITS);
    u64 pid_tgid = bpf_get_current_pid_tgid();
    ev.pid = pid_tgid >> 32;
    ev.tid = (u32)pid_tgid;
    FILTER_PID
    bpf_get_current_comm(&ev.comm, sizeof(ev.comm));
    FILTER_COMM

    bpf_probe_read_kernel(&skb, sizeof(skb), (char *)ctx + TP_OFF_SKBADDR);
    bpf_probe_read_kernel(&ev.location, sizeof(ev.location), (char *)ctx + TP_OFF_LOCATION);
#ifdef TP_OFF_REASON
    bpf_probe_read_kernel(&ev.reason, TP_SIZE_REASON, (char *)ctx + TP_OFF_REASON);
#endif
    FILTER_REASON
#ifdef TP_OFF_PROTOCOL
    /* the tracepoint stores ntohs(skb->protocol) */
    bpf_probe_read_kernel(&ev.eth_protocol, sizeof(ev.eth_protocol), (char *)ctx + TP_OFF_PROTOCOL);
#else
    bpf_probe_read_kernel(&proto_be, sizeof(proto_be), (void *)(skb + SKB_OFF_PROTOCOL));
    ev.eth_protocol = ((proto_be & 0xff) << 8) | (proto_be >> 8);
#endif
    ev.skbaddr = skb;
    bpf_probe_read_kernel(&head, sizeof(head), (void *)(skb + SKB_OFF_HEAD));
    bpf_probe_read_kernel(&nh, sizeof(nh), (void *)(skb + SKB_OFF_NETWORK_HEADER));
    bpf_probe_read_kernel(&ev.len, sizeof(ev.len), (void *)(skb + SKB_OFF_LEN));

    if (head && nh != 0xffff && (ev.eth_protocol == 0x0800 || ev.eth_protocol == 0x86DD
                                 || (ev.eth_protocol == 0 && nh != 0))) {
        u64 p = head + nh;
        if (bpf_probe_read_kernel(ip, 20, (void *)p) == 0) {
            u8 ver = ip[0] >> 4;
            if (ver == 4 && ev.eth_protocol != 0x86DD) {
                u32 ihl = (ip[0] & 0xf) * 4;
                u16 frag = ((u16)(ip[6] & 0x1f) << 8) | ip[7];
                ev.family = 4;
                ev.l4proto = ip[9];
                __builtin_memcpy(ev.saddr, &ip[12], 4);
                __builtin_memcpy(ev.daddr, &ip[16], 4);
                if (frag == 0 && ihl >= 20) {
                    l4 = p + ihl;
                    have_l4 = 1;
                }
            } else if (ver == 6 && ev.eth_protocol != 0x0800
                       && bpf_probe_read_kernel(ip, 40, (void *)p) == 0) {
                u8 next = ip[6];
                ev.family = 6;
                __builtin_memcpy(ev.saddr, &ip[8], 16);
                __builtin_memcpy(ev.daddr, &ip[24], 16);
                l4 = p + 40;
                have_l4 = 1;
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    u8 xh[2] = {};
                    if (next != 0 && next != 43 && next != 44 && next != 60 && next != 51)
                        break;
                    if (bpf_probe_read_kernel(xh, 2, (void *)l4) != 0) {
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
                ev.l4proto = next;
            }
        }
    }
    if (have_l4 && bpf_probe_read_kernel(l4h, sizeof(l4h), (void *)l4) == 0) {
        ev.has_l4 = 1;
        ev.sport = DC_BE16(&l4h[0]);
        ev.dport = DC_BE16(&l4h[2]);
        ev.icmp_type = l4h[0];
        ev.icmp_code = l4h[1];
        ev.tcp_flags = l4h[13];
    }
    FILTER_PROTO
    FILTER_PORT
    FILTER_HOST

    ev.ts_ns = bpf_ktime_get_ns();
    ev.cpu = bpf_get_smp_processor_id();
    ev.stack_id = dc_stacks.get_stackid(ctx, 0);
    OUTPUT_SUBMIT
    return 0;
}
"""

_FILTERED = "{ dc_count(STAT_FILTERED); return 0; }"


def _any_of(expr: str, values: AbstractSet[int]) -> str:
    # Filters holds validated ints only; int() keeps anything else out of the C text
    return " || ".join(f"{expr} == {int(v)}" for v in sorted(values))


def build_text(
    layout: Layout,
    filters: Filters | None = None,
    *,
    ringbuf: bool = True,
    ringbuf_pages: int = 1024,
    stack_entries: int = 16384,
    wakeup_every: int = 1,
) -> str:
    """The complete BPF C text for ``layout`` and ``filters``.

    With ``ringbuf`` the events go through one BPF ring buffer (kernel >= 5.8); wake-ups are batched:
    a CPU wakes the consumer on every ``wakeup_every``-th event it emits (1: on each); the consumer
    also polls on a short timeout, so batched wake-ups only add latency, never lose events.
    Without it a per-CPU perf buffer is used.
    """
    f = filters or Filters()
    defines = [
        f"#define TP_OFF_SKBADDR {layout.tp_fields['skbaddr'][0]}",
        f"#define TP_OFF_LOCATION {layout.tp_fields['location'][0]}",
        f"#define STAT_HITS {STAT_HITS}",
        f"#define STAT_EMITTED {STAT_EMITTED}",
        f"#define STAT_LOST {STAT_LOST}",
        f"#define STAT_FILTERED {STAT_FILTERED}",
        f"#define STACK_ENTRIES {int(stack_entries)}",
    ]
    if "reason" in layout.tp_fields:
        off, size = layout.tp_fields["reason"]
        defines += [f"#define TP_OFF_REASON {off}", f"#define TP_SIZE_REASON {min(size, 4)}"]
    if "protocol" in layout.tp_fields:
        defines.append(f"#define TP_OFF_PROTOCOL {layout.tp_fields['protocol'][0]}")
    for name, (off, _size) in layout.skb.items():
        defines.append(f"#define SKB_OFF_{name.upper()} {off}")

    pid = f"if (!({_any_of('ev.pid', f.pids)} || {_any_of('ev.tid', f.pids)})) {_FILTERED}" if f.pids else ""
    comm = ""
    if f.comm:
        want = f.comm.encode()[:15]
        checks = [f"ev.comm[{i}] != {b}" for i, b in enumerate(want)]
        checks.append(f"ev.comm[{len(want)}] != 0")
        comm = f"if ({' || '.join(checks)}) {_FILTERED}"
    if f.reasons != f.reason_numbers:
        raise ValueError("reason names must be resolved to this kernel's numbers first (Filters.resolve_reasons)")
    reason = f"if (!({_any_of('ev.reason', f.reason_numbers)})) {_FILTERED}" if f.reasons else ""
    proto = f"if (!({_any_of('ev.l4proto', f.proto_numbers)})) {_FILTERED}" if f.protos else ""
    port = (
        f"if (!ev.has_l4 || !({_any_of('ev.sport', f.ports)} || {_any_of('ev.dport', f.ports)})) {_FILTERED}"
        if f.ports
        else ""
    )
    host = ""
    if f.hosts:
        conds = []
        for addr in sorted(f.host_addresses, key=lambda a: (a.version, a.packed)):
            if addr.version == 4:
                v = int.from_bytes(addr.packed, sys.byteorder)  # the 4 bytes read back as a native u32
                conds.append(f"(ev.family == 4 && (*(u32 *)ev.saddr == {v:#x}U || *(u32 *)ev.daddr == {v:#x}U))")
            else:
                lo = int.from_bytes(addr.packed[:8], sys.byteorder)
                hi = int.from_bytes(addr.packed[8:], sys.byteorder)
                same = "(*(u64 *)&{a}[0] == {lo:#x}ULL && *(u64 *)&{a}[8] == {hi:#x}ULL)"
                conds.append(
                    "(ev.family == 6 && ("
                    + same.format(a="ev.saddr", lo=lo, hi=hi)
                    + " || "
                    + same.format(a="ev.daddr", lo=lo, hi=hi)
                    + "))"
                )
        host = f"if (!({' || '.join(conds)})) {_FILTERED}"
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
            "    if (dc_events.ringbuf_output(&ev, sizeof(ev), dc_flags) < 0)\n"
            "        dc_count(STAT_LOST);\n"
            "    else\n"
            "        dc_count(STAT_EMITTED);"
        )
    else:
        decl = "BPF_PERF_OUTPUT(dc_events);"
        submit = (
            "if (dc_events.perf_submit(ctx, &ev, sizeof(ev)) < 0)\n"
            "        dc_count(STAT_LOST);\n"
            "    else\n"
            "        dc_count(STAT_EMITTED);"
        )
    text = _TEMPLATE
    for key, val in (
        ("DEFINES", "\n".join(defines)),
        ("EVENT_STRUCT", c_struct()),
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
