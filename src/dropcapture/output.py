"""Presenting drops: the text table, JSON lines, the offline save format, and the exit summary.

Save format (``--save FILE``), read offline by ``ksym annotate`` on another machine::

    # dropcapture capture v1
    # release: 6.18.44-fc-v782
    # build-id: 85c7e4e2ed76f4417e8aaad7c6b040d2bb897a26
    # text-address: 0xffffffff81000000
    # Kernel Offset: 0x0 from 0xffffffff81000000
    # reasons: tracefs
    # started: 2026-11-25T20:21:12.123456Z

    drop 1 time=2026-11-25T20:21:13.000001Z pid=4211 tid=4211 comm="curl" cpu=1 proto=TCP ...
    Call Trace:
     [<ffffffff8188a2dc>] __ip_local_out+0x11c/0x1d0
     ...

Header lines start with ``#``; each event is a ``drop N key=value ...`` line followed by a
``Call Trace:`` line and one frame per line in the classic oops style ``[<address>] func+0xoff/0xsize``
(address only, ``[<address>] ?``, when kallsyms has no symbol). A blank line ends an event.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, NamedTuple

from .capture import CaptureStats, KernelInfo
from .events import LINKTYPE_ETHERNET, LINKTYPE_RAW, DropEvent, StackFrame

if TYPE_CHECKING:
    from ksym.kallsyms import KallsymsSymbol

__all__ = [
    "SAVE_MAGIC",
    "DropSite",
    "SaveWriter",
    "Summary",
    "TextFormatter",
    "iso_time",
    "packet_length",
    "tcp_flag_names",
]

SAVE_MAGIC = "# dropcapture capture v1"
_DEFAULT_TEXT = 0xFFFFFFFF81000000  # x86-64 link address of _text


def iso_time(ts: float) -> str:
    """``2026-11-25T20:21:13.000001Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"


#: TCP header flag bits (byte 13), lowest first, with the names tcpdump and Wireshark use.
_TCP_FLAGS = ((0x01, "FIN"), (0x02, "SYN"), (0x04, "RST"), (0x08, "PSH"), (0x10, "ACK"), (0x20, "URG"),
              (0x40, "ECE"), (0x80, "CWR"))


def tcp_flag_names(flags: int) -> str:
    """``SYN``, ``SYN,ACK``, ``FIN,ACK`` ... (``-`` for no flag set)."""
    return ",".join(name for bit, name in _TCP_FLAGS if flags & bit) or "-"


_ETH_HEADER = 14


def packet_length(ev: DropEvent) -> int:
    """The packet's length as tcpdump shows the IP packet: the IPv4 total length or the IPv6 payload
    length + 40 from the captured header; without IP bytes the original length from where the bytes
    start (``wire_len``), else ``skb->len``."""
    data = ev.packet
    off = _ETH_HEADER if ev.linktype == LINKTYPE_ETHERNET else 0 if ev.linktype == LINKTYPE_RAW else -1
    if off >= 0 and len(data) >= off + 6 and ev.family in (4, 6):
        version = data[off] >> 4
        if version == 4 and ev.family == 4:
            return int.from_bytes(data[off + 2 : off + 4], "big")
        if version == 6 and ev.family == 6:
            return 40 + int.from_bytes(data[off + 4 : off + 6], "big")
    return ev.wire_len or ev.length


def _info(ev: DropEvent) -> str:
    """The INFO column: TCP flag names, ICMP type/code, else ``-``."""
    if ev.tcp_flags is not None:
        return tcp_flag_names(ev.tcp_flags)
    if ev.icmp_type is not None:
        return f"type={ev.icmp_type},code={ev.icmp_code}"
    return "-"


class TextFormatter:
    """The human-readable table: one line per drop, then its stack (unless ``stacks`` is False).

    TIME is local time with microseconds, LEN the IP packet's length (:func:`packet_length`), INFO the
    TCP flag names (``SYN``, ``SYN,ACK``) or the ICMP type and code.
    """

    COLUMNS = (
        f"{'TIME':<15} {'PID':<7} {'COMM':<15} {'CPU':>3} {'PROTO':<6} {'LEN':>5} {'SRC':<28}    {'DST':<28} "
        f"{'INFO':<11} {'REASON':<16} LOCATION"
    )

    def __init__(self, stacks: bool = True) -> None:
        self.stacks = stacks
        self._stack_text = _PerStack(self._make_stack_text)
        self._stack_json = _PerStack(self._make_stack_json)
        self._loc_json: dict[int, str] = {}
        # the strftime part of the time, made once per second
        self._sec = -1
        self._sec_text = ""

    def header(self) -> str:
        return self.COLUMNS

    def _time(self, ts: float) -> str:
        sec = int(ts)
        if sec != self._sec:
            self._sec, self._sec_text = sec, time.strftime("%H:%M:%S", time.localtime(sec))
        return f"{self._sec_text}.{int((ts - sec) * 1e6):06d}"

    def line(self, ev: DropEvent) -> str:
        return (
            f"{self._time(ev.timestamp)} {ev.pid:<7} {ev.comm:<15} {ev.cpu:>3} {ev.protocol:<6} {packet_length(ev):>5} "
            f"{ev.endpoint('src'):<28} -> {ev.endpoint('dst'):<28} {_info(ev):<11} {ev.reason_name:<16} "
            f"{ev.location_text}"
        )

    def format(self, ev: DropEvent) -> str:
        if not self.stacks:
            return self.line(ev)
        return self.line(ev) + "\n" + self._stack_text.get(ev)

    @staticmethod
    def _make_stack_text(ev: DropEvent) -> str:
        lines = []
        if ev.stack_error:
            lines.append(f"    [Missed Kernel Stack: {ev.stack_error}]")
        for fr in ev.stack:
            text = f"    {fr!s}"
            if fr.source:
                text = f"{text:<44} {fr.source[0]}"
                lines.extend([text] + [f"{'':<44} {s}" for s in fr.source[1:]])
            else:
                lines.append(text)
        lines.append("")
        return "\n".join(lines)

    def json(self, ev: DropEvent) -> str:
        """``json.dumps(ev.to_dict())`` (compact, the same keys in the same order), written directly: the
        stack's JSON is made once per stack, a location's text once per location."""
        loc = self._loc_json.get(ev.location)
        if loc is None:
            loc = self._loc_json[ev.location] = (
                f'"location":{_S(ev.location_text)},"location_addr":"{ev.location:#x}"'
            )
        return (
            f'{{"time":{ev.timestamp!r},"ktime_ns":{ev.ktime_ns},"pid":{ev.pid},"tid":{ev.tid},'
            f'"comm":{_S(ev.comm)},"cpu":{ev.cpu},"family":{ev.family},"protocol":{_S(ev.protocol)},'
            f'"l4proto":{_n(ev.l4proto)},"saddr":{_s(ev.saddr)},"sport":{_n(ev.sport)},"daddr":{_s(ev.daddr)},'
            f'"dport":{_n(ev.dport)},"eth_protocol":{ev.eth_protocol},"reason":{_S(ev.reason_name)},'
            f'"reason_code":{ev.reason},{loc},"skbaddr":"{ev.skbaddr:#x}","len":{ev.length},'
            f'"tcp_flags":{_n(ev.tcp_flags)},"icmp_type":{_n(ev.icmp_type)},"icmp_code":{_n(ev.icmp_code)},'
            f'"netns":{_n(ev.netns)},"ifindex":{_n(ev.ifindex)},"ifname":{_s(ev.ifname)},"stack_id":{ev.stack_id},'
            f'"stack_error":{_s(ev.stack_error)},"stack":{self._stack_json.get(ev)}}}'
        )

    @staticmethod
    def _make_stack_json(ev: DropEvent) -> str:
        return _JSON(ev.to_dict()["stack"])


_JSON = json.JSONEncoder(separators=(",", ":")).encode
#: the string encoder json.dumps uses (ensure_ascii)
_S = json.encoder.encode_basestring_ascii


def _n(value: int | None) -> str:
    return "null" if value is None else str(value)


def _s(value: str | None) -> str:
    return "null" if value is None else _S(value)


class _PerStack:
    """Text made once per stack: a capture hands out one tuple object per stack id (the stack map
    keeps an id's stack for its lifetime), so an entry is reused only for that very tuple."""

    __slots__ = ("_cache", "_make")

    def __init__(self, make: Callable[[DropEvent], str]) -> None:
        self._make = make
        self._cache: dict[int, tuple[tuple[StackFrame, ...], str]] = {}

    def get(self, ev: DropEvent) -> str:
        hit = self._cache.get(ev.stack_id)
        if hit is not None and hit[0] is ev.stack:
            return hit[1]
        text = self._make(ev)
        if len(self._cache) >= 65536:
            self._cache.clear()
        self._cache[ev.stack_id] = (ev.stack, text)
        return text


def _kv(value: object) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in '"=\\' for c in text):
        return json.dumps(text)
    return text


class SaveWriter:
    """Writes the offline format described in the module docstring."""

    def __init__(self, out: IO[str], kernel: KernelInfo | None, reasons_source: str = "") -> None:
        self.out = out
        self.n = 0
        k = kernel
        lines = [
            SAVE_MAGIC,
            f"# release: {k.release if k else '?'}",
            f"# build-id: {(k.build_id if k else None) or '?'}",
            f"# text-address: {hex(k.text_address) if k and k.text_address else '?'}",
            # the panic's own wording, which ksym (find_kaslr_offset) reads
            f"# Kernel Offset: {hex(k.kaslr_offset)} from {_DEFAULT_TEXT:#x}"
            if k and k.kaslr_offset is not None
            else "# Kernel Offset: unknown",
            f"# reasons: {reasons_source or '?'}",
            f"# started: {iso_time(time.time())}",
            "",
        ]
        out.write("\n".join(lines) + "\n")
        self._trace = _PerStack(self._make_trace)
        self._sec = -1
        self._sec_text = ""
        self._comm: dict[str, str] = {}
        self._site: dict[tuple[int, int], str] = {}

    def write(self, ev: DropEvent) -> None:
        self.n += 1
        sec = int(ev.timestamp)
        if sec != self._sec:
            self._sec, self._sec_text = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        # numbers and addresses need no quoting; texts go through _kv (comm is always JSON-quoted), made
        # once per comm and per (reason, location)
        comm = self._comm.get(ev.comm)
        if comm is None:
            comm = self._comm[ev.comm] = json.dumps(ev.comm)
        site = self._site.get((ev.reason, ev.location))
        if site is None:
            loc = str(ev.location_symbol) if ev.location_symbol else f"{ev.location:#x}"
            site = self._site[(ev.reason, ev.location)] = (
                f"reason={_kv(ev.reason_name)} reason_code={ev.reason} location={_kv(loc)} "
                f"location_addr={ev.location:#x}"
            )
        line = (
            f"drop {self.n} time={self._sec_text}.{int(ev.timestamp % 1 * 1e6):06d}Z pid={ev.pid} tid={ev.tid} "
            f"comm={comm} cpu={ev.cpu} proto={_kv(ev.protocol)} src={_kv(ev.endpoint('src'))} "
            f"dst={_kv(ev.endpoint('dst'))} {site} stack_id={ev.stack_id}"
        )
        self.out.write(line + "\n" + self._trace.get(ev))

    @staticmethod
    def _make_trace(ev: DropEvent) -> str:
        lines = ["Call Trace:"]
        if ev.stack_error:
            lines.append(f" [Missed Kernel Stack: {ev.stack_error}]")
        for fr in ev.stack:
            lines.append(f" [<{fr.address:016x}>] {fr.oops if fr.symbol else '?'}")
        return "\n".join(lines) + "\n\n"


class DropSite(NamedTuple):
    """Where drops happen: the drop reason and the drop location (the caller of ``kfree_skb_reason``),
    with its source line when a debug vmlinux symbolized it."""

    reason: str
    #: The location's raw address and its ``func+0xoff`` text (the address in hex without a symbol).
    address: int
    location: str
    #: file:line with the inline chain (the first entry is the real function's line), or empty.
    source: tuple[str, ...]

    @property
    def source_line(self) -> str:
        """``net/ipv4/ip_output.c:115 (inlined nf_hook include/linux/netfilter.h:257)`` or ``""``."""
        return self.source[0] if self.source else ""


class Summary:
    """Counts for the exit summary: drops by reason, by drop site (reason and location), by stack, and
    the capture counters.

    :param top: how many stacks the summary prints (each whole, every frame).
    :param annotate: the ksym annotator (``KallsymsSymbol -> file:line texts``) used for a drop location
        that is not also a frame of the event's stack (whose text is reused otherwise).
    """

    def __init__(
        self, top: int = 5, annotate: Callable[[KallsymsSymbol], tuple[str, ...]] | None = None
    ) -> None:
        self.top = top
        self.annotate = annotate
        self.by_reason: Counter[str] = Counter()
        self._by_site_key: Counter[tuple[str, int]] = Counter()
        self._sites: dict[tuple[str, int], DropSite] = {}
        self._by_stack_id: Counter[int] = Counter()
        self._stack_text: dict[int, tuple[str, ...]] = {}
        #: file:line texts of each frame of a symbolized stack (by its text)
        self._stack_source: dict[tuple[str, ...], tuple[tuple[str, ...], ...]] = {}
        self.total = 0

    def add(self, ev: DropEvent) -> None:
        self.total += 1
        self.by_reason[ev.reason_name] += 1
        site = (ev.reason_name, ev.location)
        self._by_site_key[site] += 1
        if site not in self._sites:
            self._sites[site] = self._site(ev)
        # keyed by stack id (a stack map id always names the same stack); text made once per id
        self._by_stack_id[ev.stack_id] += 1
        if ev.stack_id not in self._stack_text:
            text = tuple(str(f) for f in ev.stack) or (f"[Missed Kernel Stack: {ev.stack_error}]",)
            self._stack_text[ev.stack_id] = text
            if any(f.source for f in ev.stack):
                self._stack_source[text] = tuple(f.source for f in ev.stack)

    def _site(self, ev: DropEvent) -> DropSite:
        source: tuple[str, ...] = ()
        for fr in ev.stack:
            if fr.address == ev.location and fr.source:
                source = fr.source
                break
        else:
            if self.annotate is not None and ev.location_symbol is not None:
                source = self.annotate(ev.location_symbol)
        return DropSite(ev.reason_name, ev.location, ev.location_text, source)

    @property
    def by_site(self) -> list[tuple[DropSite, int]]:
        """``(site, drops)`` for every drop site, most drops first."""
        return [(self._sites[key], n) for key, n in self._by_site_key.most_common()]

    def site_counts(self) -> dict[tuple[str, int], int]:
        """A copy of the drops per ``(reason, location address)``, safe to take from another thread."""
        return self._by_site_key.copy()

    def site(self, key: tuple[str, int]) -> DropSite:
        return self._sites[key]

    @property
    def by_stack(self) -> Counter[tuple[str, ...]]:
        """Drops per distinct stack (as ``func+0xoff`` text, innermost first)."""
        out: Counter[tuple[str, ...]] = Counter()
        for sid, n in self._by_stack_id.items():
            out[self._stack_text[sid]] += n
        return out

    def render(self, stats: CaptureStats | None, elapsed: float) -> str:
        """The summary text; ``elapsed`` is the time traced. Every drop site is listed, dropwatch style
        (``N drops at func+0xoff``) with its reason and file:line; the top stacks are printed whole, one
        frame a line (with its file:line and inline chain when symbolized)."""
        lines = [f"--- dropcapture summary: {self.total} drops in {elapsed:.1f}s ---"]
        if stats is not None:
            lines.append(
                f"kernel: {stats.hits} kfree_skb hits, {stats.filtered} filtered, {stats.emitted} emitted = "
                f"{stats.delivered} delivered + {stats.lost} lost ({stats.lost_full} buffer full, "
                f"{stats.lost_at_exit} unread at exit)"
            )
        if self.by_reason:
            lines.append("drops by reason:")
            for name, n in self.by_reason.most_common():
                lines.append(f"  {n:>8}  {name}")
        sites = self.by_site
        if sites:
            lines.append(f"drops by site (of {len(sites)}):")
            for site, n in sites:
                text = f"  {n:>8} drops at {site.location} ({site.reason})"
                if site.source:
                    text += f" {site.source_line}"
                lines.append(text)
                lines.extend(f"  {'':>8}    {s}" for s in site.source[1:])
        by_stack = self.by_stack
        if by_stack:
            lines.append(f"top stacks (of {len(by_stack)}):")
            for stack, n in by_stack.most_common(self.top):
                sources = self._stack_source.get(stack)
                for i, frame in enumerate(stack):
                    head = f"  {n:>8}  " if i == 0 else f"  {'':>8}  "
                    if sources and sources[i]:
                        lines.append(f"{head}{frame:<40} {sources[i][0]}")
                        lines.extend(f"  {'':>8}  {'':<40} {s}" for s in sources[i][1:])
                    else:
                        lines.append(f"{head}{frame}")
        return "\n".join(lines)

    def to_dict(self, stats: CaptureStats | None, elapsed: float) -> dict[str, object]:
        return {
            "summary": {
                "drops": self.total,
                "seconds": round(elapsed, 3),
                "by_reason": dict(self.by_reason.most_common()),
                "by_site": [
                    {
                        "count": n,
                        "reason": site.reason,
                        "location": site.location,
                        "location_addr": f"{site.address:#x}",
                        "source": list(site.source) or None,
                    }
                    for site, n in self.by_site
                ],
                "top_stacks": [{"count": n, "stack": list(s)} for s, n in self.by_stack.most_common(self.top)],
                "kernel": None
                if stats is None
                else {
                    "hits": stats.hits,
                    "filtered": stats.filtered,
                    "emitted": stats.emitted,
                    "delivered": stats.delivered,
                    "lost": stats.lost,
                    "lost_full": stats.lost_full,
                    "lost_at_exit": stats.lost_at_exit,
                },
            }
        }
