"""A small pcapng writer (``--pcapng FILE``): the dropped packets for Wireshark and tshark.

The file is one section (little-endian): a Section Header Block naming dropcapture, then an Interface
Description Block the first time a device appears, keyed by (network namespace, ifindex, link type),
with ``if_name`` (the device's name and its namespace) and ``if_description``; then one Enhanced Packet
Block per drop with the captured bytes, the packet's original length, a nanosecond timestamp (``if_tsresol``
9: the kernel stamps drops in nanoseconds) and an
``opt_comment`` naming the drop reason, the drop location and, when symbolized, its file:line.
Block layouts: the pcapng specification (draft-ietf-opsawg-pcapng), sections 4.1, 4.2 and 4.3.
"""

from __future__ import annotations

import struct
from typing import IO, TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .events import DropEvent
    from .output import Summary

__all__ = [
    "LINKTYPE_ETHERNET",
    "LINKTYPE_RAW",
    "PcapngInterface",
    "PcapngPacket",
    "PcapngSink",
    "PcapngWriter",
    "drop_comment",
]

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # the packet starts with an IPv4 or IPv6 header

_SHB = 0x0A0D0D0A
_IDB = 0x00000001
_EPB = 0x00000006
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_END = 0
_OPT_COMMENT = 1
_SHB_USERAPPL = 4
_IF_NAME = 2
_IF_DESCRIPTION = 3
_IF_TSRESOL = 9
_MAX_SNAPLEN = 0x40000


class PcapngInterface(NamedTuple):
    """One device as the drops saw it."""

    netns: int
    ifindex: int
    linktype: int
    name: str


class PcapngPacket(NamedTuple):
    """One dropped packet: its interface, nanoseconds since the epoch, bytes, original length, comment."""

    interface: PcapngInterface
    timestamp_ns: int
    data: bytes
    orig_len: int
    comment: str


def _option(code: int, value: bytes) -> bytes:
    pad = -len(value) % 4
    return struct.pack("<HH", code, len(value)) + value + b"\0" * pad


def _options(opts: list[tuple[int, bytes]]) -> bytes:
    if not opts:
        return b""
    return b"".join(_option(c, v) for c, v in opts) + struct.pack("<HH", _OPT_END, 0)


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


class PcapngWriter:
    """Writes one pcapng section to a binary file object (``with PcapngWriter(f, ...) as w``)."""

    def __init__(self, out: IO[bytes], snaplen: int, application: str = "dropcapture") -> None:
        self.out = out
        self.snaplen = snaplen
        self.packets = 0
        self._ifaces: dict[tuple[int, int, int], int] = {}
        body = struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1) + _options(
            [(_SHB_USERAPPL, application.encode())]
        )
        out.write(_block(_SHB, body))

    def interface_id(self, iface: PcapngInterface) -> int:
        """The IDB number of ``iface``, writing its block the first time."""
        key = (iface.netns, iface.ifindex, iface.linktype)
        got = self._ifaces.get(key)
        if got is None:
            got = self._ifaces[key] = len(self._ifaces)
            desc = f"netns {iface.netns} ifindex {iface.ifindex}"
            body = struct.pack("<HHI", iface.linktype, 0, min(self.snaplen, _MAX_SNAPLEN)) + _options(
                [
                    (_IF_NAME, iface.name.encode("utf-8", "replace")),
                    (_IF_DESCRIPTION, desc.encode()),
                    (_IF_TSRESOL, b"\x09"),  # nanoseconds (10^-9 s)
                ]
            )
            self.out.write(_block(_IDB, body))
        return got

    def write(self, pkt: PcapngPacket) -> None:
        iface = self.interface_id(pkt.interface)
        data = pkt.data
        ts = pkt.timestamp_ns
        body = (
            struct.pack(
                "<IIIII",
                iface,
                (ts >> 32) & 0xFFFFFFFF,
                ts & 0xFFFFFFFF,
                len(data),
                max(pkt.orig_len, len(data)),
            )
            + data
            + b"\0" * (-len(data) % 4)
            + _options([(_OPT_COMMENT, pkt.comment.encode("utf-8", "replace"))] if pkt.comment else [])
        )
        self.out.write(_block(_EPB, body))
        self.packets += 1

    @property
    def interfaces(self) -> int:
        return len(self._ifaces)

    def close(self) -> None:
        self.out.flush()

    def __enter__(self) -> PcapngWriter:  # noqa: PYI034 - typing.Self needs 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def drop_comment(ev: DropEvent, source_line: str = "") -> str:
    """The packet comment: ``NETFILTER_DROP at nft_do_chain+0x46f net/netfilter/nf_tables_core.c:272
    (comm curl, pid 4211)`` (the file:line only when symbolized)."""
    where = f"{ev.location_text} {source_line}" if source_line else ev.location_text
    return f"{ev.reason_name} at {where} (comm {ev.comm}, pid {ev.pid})"


class PcapngSink:
    """``--pcapng FILE``: every delivered drop as one packet (a drop whose bytes could not be read is a
    packet of length 0 with its comment, so the file has one packet per drop)."""

    def __init__(self, out: IO[bytes], snaplen: int) -> None:
        self._file = out
        self.writer = PcapngWriter(out, snaplen)
        self._ifaces: dict[tuple[int | None, int | None, str | None, int], PcapngInterface] = {}
        # wall clock minus the kernel's CLOCK_MONOTONIC stamp, in ns, fixed at the first drop: the
        # packets keep the kernel's nanoseconds exactly relative to each other
        self._offset_ns: int | None = None

    @classmethod
    def open(cls, path: str, snaplen: int) -> PcapngSink:
        """:raises ValueError: the file cannot be created."""
        try:
            out = open(path, "wb", buffering=1 << 16)  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise ValueError(f"--pcapng {path}: {exc.strerror or exc}") from None
        return cls(out, snaplen)

    def write_event(self, ev: DropEvent, summary: Summary | None = None) -> None:
        linktype = ev.linktype or LINKTYPE_RAW
        key = (ev.netns, ev.ifindex, ev.ifname, linktype)
        iface = self._ifaces.get(key)
        if iface is None:
            name = ev.ifname or (f"ifindex{ev.ifindex}" if ev.ifindex else "-")
            iface = self._ifaces[key] = PcapngInterface(ev.netns or 0, ev.ifindex or 0, linktype, name)
        if self._offset_ns is None:
            self._offset_ns = round(ev.timestamp * 1e9) - ev.ktime_ns
        source = summary.site((ev.reason_name, ev.location)).source_line if summary is not None else ""
        self.writer.write(
            PcapngPacket(
                iface,
                ev.ktime_ns + self._offset_ns,
                ev.packet,
                ev.wire_len or len(ev.packet),
                drop_comment(ev, source),
            )
        )

    @property
    def packets(self) -> int:
        return self.writer.packets

    def close(self) -> None:
        self.writer.close()
        self._file.close()
