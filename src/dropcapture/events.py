"""The drop event: one layout shared by the BPF C text and Python, and the decoded record.

:data:`EVENT_FIELDS` is the single description of the record the BPF program emits; the C
``struct dc_event`` (:func:`c_struct`) and the ctypes mirror (:class:`RawEvent`) are both generated
from it, so they cannot drift apart. :class:`DropEvent` is what users of the Python API receive.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from ksym.kallsyms import KallsymsSymbol

__all__ = [
    "DEFAULT_SNAPLEN",
    "EVENT_FIELDS",
    "HEADER_SIZE",
    "LINKTYPE_ETHERNET",
    "LINKTYPE_NONE",
    "LINKTYPE_RAW",
    "RAW_STRUCT",
    "SNAPLEN_MAX",
    "STACK_ERRORS",
    "DropEvent",
    "RawEvent",
    "StackFrame",
    "c_struct",
    "decode_addr",
    "decode_event",
    "decode_events",
    "ethertype_name",
    "l4_name",
    "l4_number",
]

# (name, ctypes type, C type); order and types define the layout, natural alignment, no packing.
EVENT_FIELDS: list[tuple[str, Any, str]] = [
    ("ts_ns", ctypes.c_uint64, "u64"),
    ("skbaddr", ctypes.c_uint64, "u64"),
    ("location", ctypes.c_uint64, "u64"),
    ("pid", ctypes.c_uint32, "u32"),
    ("tid", ctypes.c_uint32, "u32"),
    ("cpu", ctypes.c_uint32, "u32"),
    ("reason", ctypes.c_uint32, "u32"),
    ("stack_id", ctypes.c_int32, "s32"),
    ("len", ctypes.c_uint32, "u32"),
    ("eth_protocol", ctypes.c_uint16, "u16"),
    ("family", ctypes.c_uint8, "u8"),
    ("l4proto", ctypes.c_uint8, "u8"),
    ("sport", ctypes.c_uint16, "u16"),
    ("dport", ctypes.c_uint16, "u16"),
    ("saddr", ctypes.c_uint8 * 16, "u8 saddr[16]"),
    ("daddr", ctypes.c_uint8 * 16, "u8 daddr[16]"),
    ("comm", ctypes.c_char * 16, "char comm[16]"),
    ("tcp_flags", ctypes.c_uint8, "u8"),
    ("icmp_type", ctypes.c_uint8, "u8"),
    ("icmp_code", ctypes.c_uint8, "u8"),
    ("has_l4", ctypes.c_uint8, "u8"),
    ("netns", ctypes.c_uint32, "u32"),
    ("ifindex", ctypes.c_uint32, "u32"),
    ("wire_len", ctypes.c_uint32, "u32"),
    ("caplen", ctypes.c_uint16, "u16"),
    ("linktype", ctypes.c_uint16, "u16"),
    ("ifname", ctypes.c_char * 16, "char ifname[16]"),
    ("_pad", ctypes.c_uint32, "u32"),
]

#: pcap link types of the captured bytes (``DropEvent.linktype``): from the Ethernet header (the skb has
#: a MAC header of 14 bytes, e.g. an Ethernet device or loopback) or from the IPv4/IPv6 header.
LINKTYPE_NONE, LINKTYPE_ETHERNET, LINKTYPE_RAW = 0, 1, 101

#: Largest ``--snaplen``: the program's scratch record (per-CPU map value) holds this many packet bytes.
SNAPLEN_MAX = 4096
DEFAULT_SNAPLEN = 128


class RawEvent(ctypes.Structure):
    """ctypes mirror of ``struct dc_event`` up to the packet bytes (the record's fixed-size header)."""

    _fields_ = [(n, t) for n, t, _c in EVENT_FIELDS]


#: Size of the fixed part; the first ``caplen`` packet bytes follow it in each record.
HEADER_SIZE = ctypes.sizeof(RawEvent)


def c_struct(name: str = "dc_event", data_size: int = DEFAULT_SNAPLEN) -> str:
    """The C definition of the event record, for the BPF text: the fields of :data:`EVENT_FIELDS`, then
    ``u8 data[data_size]`` (the program emits only the header and the ``caplen`` bytes captured)."""
    lines = [f"struct {name} {{"]
    for fname, _t, ctype in EVENT_FIELDS:
        lines.append(f"    {ctype};" if "[" in ctype else f"    {ctype} {fname};")
    lines.append(f"    u8 data[{int(data_size)}];")
    lines.append("};")
    lines.append(
        f"_Static_assert(__builtin_offsetof(struct {name}, data) == {HEADER_SIZE}, "
        '"struct dc_event differs from its ctypes mirror");'
    )
    return "\n".join(lines)


#: Negative stack ids the stack map returns, as text.
STACK_ERRORS = {
    -14: "EFAULT",
    -17: "EEXIST (hash collision in the stack map)",
    -12: "ENOMEM (stack map full)",
    -22: "EINVAL",
}

_L4 = {
    socket.IPPROTO_TCP: "TCP",
    socket.IPPROTO_UDP: "UDP",
    socket.IPPROTO_ICMP: "ICMP",
    58: "ICMPv6",
    132: "SCTP",
    136: "UDPLITE",
    47: "GRE",
    50: "ESP",
    51: "AH",
    2: "IGMP",
    4: "IPIP",
    41: "IPv6",
    17: "UDP",
    6: "TCP",
    33: "DCCP",
    103: "PIM",
    112: "VRRP",
    255: "RAW",
}
_L4_BY_NAME = {v.upper(): k for k, v in _L4.items()}

_ETHERTYPES = {
    0x0800: "IPv4",
    0x86DD: "IPv6",
    0x0806: "ARP",
    0x8100: "VLAN",
    0x88A8: "QinQ",
    0x8847: "MPLS",
    0x88CC: "LLDP",
    0x0003: "ALL",
    0x0004: "802.2",
    0x0001: "802.3",
    0x0000: "-",
}


def l4_name(proto: int) -> str:
    """``TCP``, ``UDP``, ``ICMP`` ... or ``IP/<n>`` for other IP protocol numbers."""
    return _L4.get(proto, f"IP/{proto}")


def l4_number(name: str) -> int:
    """IP protocol number for ``tcp``/``udp``/``icmp``/``icmpv6``/... or a decimal number 0..255.

    :raises ValueError: unknown name, or a number out of range.
    """
    key = name.strip().upper()
    if key.isdigit():
        if int(key) > 255:
            raise ValueError(f"protocol number {name.strip()} is out of range 0..255")
        return int(key)
    if key in ("ICMP6", "IPV6-ICMP"):
        key = "ICMPV6"
    if key in _L4_BY_NAME:
        return _L4_BY_NAME[key]
    raise ValueError(f"unknown protocol {name!r} (use tcp, udp, icmp, icmpv6, sctp or a number)")


def ethertype_name(eth: int) -> str:
    """Name of an ethertype in host byte order (``ARP``), or ``0x88b5``."""
    return _ETHERTYPES.get(eth, f"{eth:#06x}")


@dataclass(frozen=True)
class StackFrame:
    """One kernel stack frame: the raw address and its kallsyms symbol."""

    address: int
    symbol: KallsymsSymbol | None = None
    #: file:line with inline chain from ksym, when a debug vmlinux was given (already formatted).
    source: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.symbol.short if self.symbol else f"{self.address:#x}"

    @property
    def oops(self) -> str:
        """The frame in the kernel's oops style: ``func+0xoff/0xsize`` (or the raw address)."""
        return str(self.symbol) if self.symbol else f"{self.address:#x}"


class DropEvent(NamedTuple):
    """One packet drop seen at the ``skb:kfree_skb`` tracepoint (immutable; a NamedTuple because
    thousands are made per second)."""

    #: Wall-clock time (seconds since the epoch) and the raw CLOCK_MONOTONIC stamp.
    timestamp: float
    ktime_ns: int
    pid: int
    tid: int
    comm: str
    cpu: int
    #: 4, 6, or 0 when the buffer has no IP header (ARP, unix sockets, ...).
    family: int
    saddr: str | None
    daddr: str | None
    #: IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6), None without an IP header.
    l4proto: int | None
    sport: int | None
    dport: int | None
    #: ``skb->protocol`` (ethertype, host byte order).
    eth_protocol: int
    reason: int
    reason_name: str
    location: int
    location_symbol: KallsymsSymbol | None
    skbaddr: int
    length: int
    stack_id: int
    stack: tuple[StackFrame, ...] = ()
    tcp_flags: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    #: Inode of the network namespace (``ls -i /var/run/netns/NAME``, ``/proc/PID/ns/net``): the device's
    #: namespace, else the socket's; None when the buffer has neither.
    netns: int | None = None
    #: The device (``skb->dev``): its index and name; without a device the index is ``skb->skb_iif`` (the
    #: device it arrived on, 0 for a locally sent buffer) and the name is None.
    ifindex: int | None = None
    ifname: str | None = None
    #: pcap link type of :attr:`packet`: 1 Ethernet, 101 raw IPv4/IPv6, 0 no bytes captured.
    linktype: int = 0
    #: Length of the packet from the header :attr:`packet` starts at (the "original length" of pcap).
    wire_len: int = 0
    #: The first ``snaplen`` bytes of the packet, from the L2 or L3 header (only the buffer's linear part).
    packet: bytes = b""

    @property
    def protocol(self) -> str:
        """``TCP``, ``UDP``, ``ICMP``, ``ICMPv6``, ``IP/<n>``, or the ethertype name without IP."""
        if self.l4proto is not None:
            return l4_name(self.l4proto)
        return ethertype_name(self.eth_protocol)

    @property
    def stack_error(self) -> str | None:
        """Why there is no stack (``stack_id < 0``), else None."""
        if self.stack_id >= 0:
            return None
        return STACK_ERRORS.get(self.stack_id, f"error {self.stack_id}")

    @property
    def location_text(self) -> str:
        return self.location_symbol.short if self.location_symbol else f"{self.location:#x}"

    def endpoint(self, which: str) -> str:
        """``10.0.0.1:40412`` / ``[::1]:80`` / ``10.0.0.1`` (no port) / ``-``."""
        addr = self.saddr if which == "src" else self.daddr
        port = self.sport if which == "src" else self.dport
        if addr is None:
            return "-"
        if port is None:
            return addr
        return f"[{addr}]:{port}" if self.family == 6 else f"{addr}:{port}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (addresses as hex strings, stack frames with raw address and symbol)."""
        return {
            "time": self.timestamp,
            "ktime_ns": self.ktime_ns,
            "pid": self.pid,
            "tid": self.tid,
            "comm": self.comm,
            "cpu": self.cpu,
            "family": self.family,
            "protocol": self.protocol,
            "l4proto": self.l4proto,
            "saddr": self.saddr,
            "sport": self.sport,
            "daddr": self.daddr,
            "dport": self.dport,
            "eth_protocol": self.eth_protocol,
            "reason": self.reason_name,
            "reason_code": self.reason,
            "location": self.location_text,
            "location_addr": f"{self.location:#x}",
            "skbaddr": f"{self.skbaddr:#x}",
            "len": self.length,
            "tcp_flags": self.tcp_flags,
            "icmp_type": self.icmp_type,
            "icmp_code": self.icmp_code,
            "netns": self.netns,
            "ifindex": self.ifindex,
            "ifname": self.ifname,
            "stack_id": self.stack_id,
            "stack_error": self.stack_error,
            "stack": [
                {
                    "addr": f"{f.address:#x}",
                    "sym": f.oops if f.symbol else None,
                    **({"source": list(f.source)} if f.source else {}),
                }
                for f in self.stack
            ],
        }


def decode_addr(family: int, raw: bytes) -> str | None:
    """Text form of a 4- or 16-byte address from the event (None for family 0)."""
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if family == 6:
        return socket.inet_ntop(socket.AF_INET6, raw[:16])
    return None


_STRUCT_CODES = {"u64": "Q", "u32": "I", "s32": "i", "u16": "H", "u8": "B"}


def _struct_format() -> str:
    codes = []
    for _name, _t, ctype in EVENT_FIELDS:
        codes.append("16s" if "[16]" in ctype else _STRUCT_CODES[ctype])
    # no trailing padding in a struct format: the header's size must come out equal
    return "@" + "".join(codes)


#: ``struct`` mirror of the record (native alignment = the C layout); unpacking it is much cheaper
#: than reading ctypes attributes one by one.
RAW_STRUCT = struct.Struct(_struct_format())
assert RAW_STRUCT.size == HEADER_SIZE, "EVENT_FIELDS must end on an 8-byte boundary"
_INDEX = {name: i for i, (name, _t, _c) in enumerate(EVENT_FIELDS)}
_PORT_PROTOS = frozenset((6, 17, 132, 136))
_ICMP_PROTOS = frozenset((1, 58))


def decode_event(
    raw: RawEvent | bytes,
    *,
    reason_name: str,
    clock_offset: float,
    location_symbol: KallsymsSymbol | None,
    stack: tuple[StackFrame, ...],
) -> DropEvent:
    """Turn one raw record (ctypes mirror or its bytes) into a :class:`DropEvent`: :func:`decode_events`
    of one record, with the lookups' answers given.

    ``clock_offset`` is wall-clock minus CLOCK_MONOTONIC in seconds (see ``Capture``).
    """
    buf = bytes(raw) if isinstance(raw, RawEvent) else raw
    return decode_events(
        (buf,),
        reason_name=lambda _reason: reason_name,
        clock_offset=clock_offset,
        location_symbol=lambda _location: location_symbol,
        stack=lambda _stack_id: stack,
    )[0]


def _cstr(raw: bytes) -> str:
    nul = raw.find(b"\0")
    return (raw[:nul] if nul >= 0 else raw).decode("utf-8", "replace")


def decode_events(
    bufs: Iterable[bytes],
    *,
    reason_name: Callable[[int], str],
    clock_offset: float,
    location_symbol: Callable[[int], KallsymsSymbol | None],
    stack: Callable[[int], tuple[StackFrame, ...]],
) -> list[DropEvent]:
    """Turn raw records (the fixed header, then ``caplen`` packet bytes each) into :class:`DropEvent` records.

    ``clock_offset`` is wall-clock minus CLOCK_MONOTONIC in seconds (see ``Capture``). The lookups take
    the record's reason, location and stack id. One loop with everything bound to locals: per record
    one ``unpack_from`` and one tuple, no keyword call per record.
    """
    unpack = RAW_STRUCT.unpack_from
    ntop = socket.inet_ntop
    af4, af6 = socket.AF_INET, socket.AF_INET6
    ports_ok, icmp_ok = _PORT_PROTOS, _ICMP_PROTOS
    new, event = tuple.__new__, DropEvent  # DropEvent._make without its length check per record
    hdr = HEADER_SIZE
    out: list[DropEvent] = []
    append = out.append
    texts4: dict[bytes, str] = {}
    texts6: dict[bytes, str] = {}
    names: dict[bytes, str] = {}
    for buf in bufs:
        (
            ts_ns,
            skbaddr,
            location,
            pid,
            tid,
            cpu,
            reason,
            stack_id,
            length,
            eth_protocol,
            family,
            l4proto,
            sport,
            dport,
            saddr,
            daddr,
            comm,
            tcp_flags,
            icmp_type,
            icmp_code,
            has_l4,
            netns,
            ifindex,
            wire_len,
            caplen,
            linktype,
            ifname,
            _pad,
        ) = unpack(buf)
        if family == 4 or family == 6:
            # the texts of the addresses, the comm and the device name: made once per batch each
            texts = texts4 if family == 4 else texts6
            src = texts.get(saddr)
            if src is None:
                src = texts[saddr] = ntop(af4, saddr[:4]) if family == 4 else ntop(af6, saddr)
            dst = texts.get(daddr)
            if dst is None:
                dst = texts[daddr] = ntop(af4, daddr[:4]) if family == 4 else ntop(af6, daddr)
            has_ip = True
        else:
            family, src, dst, has_ip = 0, None, None, False
        ports = has_ip and has_l4 and l4proto in ports_ok
        icmp = has_ip and has_l4 and l4proto in icmp_ok
        comm_text = names.get(comm)
        if comm_text is None:
            comm_text = names[comm] = _cstr(comm)
        if_text = names.get(ifname)
        if if_text is None:
            if_text = names[ifname] = _cstr(ifname)
        append(
            new(
                event,
                (
                    ts_ns / 1e9 + clock_offset,
                    ts_ns,
                    pid,
                    tid,
                    comm_text,
                    cpu,
                    family,
                    src,
                    dst,
                    l4proto if has_ip else None,
                    sport if ports else None,
                    dport if ports else None,
                    eth_protocol,
                    reason,
                    reason_name(reason),
                    location,
                    location_symbol(location),
                    skbaddr,
                    length,
                    stack_id,
                    stack(stack_id),
                    tcp_flags if (ports and l4proto == 6) else None,
                    icmp_type if icmp else None,
                    icmp_code if icmp else None,
                    netns or None,
                    ifindex or None,
                    if_text or None,
                    linktype if caplen or wire_len else 0,
                    wire_len,
                    buf[hdr : hdr + caplen],
                ),
            )
        )
    return out
