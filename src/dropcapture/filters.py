"""Which drops to keep: ``--comm``, ``--pid``, ``--proto``, ``--host``, ``--port``, ``--reason``, ``--netns``,
``--pcap-filter``.

A :class:`Filters` is applied twice: compiled into the BPF program (every filter is checked in the
kernel, so unwanted drops cost no copy to user space) and again on each decoded event by
:meth:`Filters.matches` (which serves API users and documents the semantics in Python).
Within one option the values are alternatives (``--port 80 --port 443``); options combine with AND.

Every value is checked when the :class:`Filters` is built (``TypeError`` for a value of the wrong
type, ``ValueError`` for one out of range), so nothing but validated integers reaches the C text.
Protocols may be given by name (``"tcp"``), hosts as strings, and drop reasons by name
(``"NO_SOCKET"``); reason names are resolved against the running kernel's table when a capture
starts (:meth:`Filters.resolve_reasons`). Hosts may be CIDR prefixes (``"10.0.0.0/8"``, ``"fd00::/8"``);
network namespaces are inode numbers (:func:`netns_inode` turns ``/var/run/netns/NAME`` or
``/proc/PID/ns/net`` into one). The pcap filter (tcpdump syntax) is compiled by libpcap and checked in
the kernel only (:mod:`dropcapture.pcapfilter`); :meth:`Filters.matches` does not evaluate it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Protocol

from .events import DropEvent, l4_number

__all__ = ["PID_MAX", "Filters", "IPAddress", "IPNetwork", "host_network", "netns_inode"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The kernel's PID_MAX_LIMIT (4M on 64-bit): no process or thread id is larger.
PID_MAX = 4 * 1024 * 1024

_REASON_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*(:0x[0-9a-fA-F]+)?\Z")


def _collection(name: str, value: object, what: str) -> list[object]:
    if isinstance(value, (str, bytes, int)) or not isinstance(value, Iterable):
        raise TypeError(
            f"Filters.{name} must be a collection (set, frozenset, list) of {what}, "
            f"not {type(value).__name__} {value!r}"
        )
    return list(value)


def _int(name: str, item: object, lo: int, hi: int) -> int:
    if isinstance(item, bool) or not isinstance(item, int):
        raise TypeError(f"Filters.{name}: {item!r} is a {type(item).__name__}, not an int")
    if not lo <= item <= hi:
        raise ValueError(f"Filters.{name}: {item} is out of range {lo}..{hi}")
    return item


@dataclass(frozen=True)
class Filters:
    """Drop filters; an empty set or None means "any".

    Any collection is accepted for the sets (set, frozenset, list, tuple); after construction each
    is a ``frozenset`` of validated values: protocol names became numbers, host strings addresses.

    :raises TypeError: a value of the wrong type (e.g. ``protos="tcp"`` instead of ``{"tcp"}``).
    :raises ValueError: a value out of range or an unknown protocol name.
    """

    comm: str | None = None
    #: Process or thread ids, 0 (the idle task) .. :data:`PID_MAX`.
    pids: AbstractSet[int] = field(default_factory=frozenset)
    #: IP protocol numbers 0..255 (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6); names (``"tcp"``) are converted.
    protos: AbstractSet[int | str] = field(default_factory=frozenset)
    #: Addresses or CIDR prefixes matched against source or destination; strings (``"127.0.0.1"``,
    #: ``"10.0.0.0/8"``) are accepted and converted; after construction each is an ``ip_network``
    #: (a single address is a /32 or /128).
    hosts: AbstractSet[IPAddress | IPNetwork | str] = field(default_factory=frozenset)
    #: Ports 1..65535 matched against source or destination (TCP, UDP, SCTP, UDP-Lite).
    ports: AbstractSet[int] = field(default_factory=frozenset)
    #: Drop reason numbers of the running kernel, or names (``"NO_SOCKET"``) resolved when a capture starts.
    reasons: AbstractSet[int | str] = field(default_factory=frozenset)
    #: Network namespace inodes (``ls -iL /var/run/netns/NAME``); path strings are resolved by :func:`netns_inode`.
    netns: AbstractSet[int | str] = field(default_factory=frozenset)
    #: A tcpdump expression, evaluated in the kernel on the captured packet bytes.
    pcap_filter: str | None = None

    def __post_init__(self) -> None:
        if self.comm is not None:
            if not isinstance(self.comm, str):
                raise TypeError(f"Filters.comm must be a str, not {type(self.comm).__name__} {self.comm!r}")
            if not self.comm or "\0" in self.comm:
                raise ValueError("Filters.comm must be a non-empty command name without NUL bytes")
        pids = frozenset(_int("pids", p, 0, PID_MAX) for p in _collection("pids", self.pids, "process ids"))
        protos = set()
        for p in _collection("protos", self.protos, "protocol numbers or names"):
            if isinstance(p, str):
                protos.add(l4_number(p))  # ValueError names the accepted names
            else:
                protos.add(_int("protos", p, 0, 255))
        hosts: set[IPNetwork] = set()
        for h in _collection("hosts", self.hosts, "IP addresses or prefixes"):
            if isinstance(h, (ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Network,
                              ipaddress.IPv6Network)):
                hosts.add(ipaddress.ip_network(h))
            elif isinstance(h, str):
                hosts.add(host_network(h))
            else:
                raise TypeError(f"Filters.hosts: {h!r} is a {type(h).__name__}, not an address, a prefix or a str")
        netns = frozenset(
            netns_inode(n) if isinstance(n, str) else _int("netns", n, 1, 0xFFFFFFFF)
            for n in _collection("netns", self.netns, "namespace inodes or paths")
        )
        if self.pcap_filter is not None:
            if not isinstance(self.pcap_filter, str):
                raise TypeError(f"Filters.pcap_filter must be a str, not {type(self.pcap_filter).__name__}")
            if not self.pcap_filter.strip() or "\0" in self.pcap_filter:
                raise ValueError("Filters.pcap_filter must be a non-empty tcpdump expression without NUL bytes")
        ports = frozenset(_int("ports", p, 1, 65535) for p in _collection("ports", self.ports, "port numbers"))
        reasons: set[int | str] = set()
        for r in _collection("reasons", self.reasons, "drop reason numbers or names"):
            if isinstance(r, str):
                if not _REASON_NAME.match(r):
                    raise ValueError(f"Filters.reasons: {r!r} is not a drop reason name (e.g. NO_SOCKET)")
                reasons.add(r.upper().removeprefix("SKB_DROP_REASON_"))
            else:
                reasons.add(_int("reasons", r, 0, 0xFFFFFFFF))
        object.__setattr__(self, "pids", pids)
        object.__setattr__(self, "protos", frozenset(protos))
        object.__setattr__(self, "hosts", frozenset(hosts))
        object.__setattr__(self, "ports", ports)
        object.__setattr__(self, "reasons", frozenset(reasons))
        object.__setattr__(self, "netns", netns)

    @property
    def empty(self) -> bool:
        return not (self.comm or self.pids or self.protos or self.hosts or self.ports or self.reasons
                    or self.netns or self.pcap_filter)

    @property
    def proto_numbers(self) -> frozenset[int]:
        """The protocols as numbers (every one after construction)."""
        return frozenset(p for p in self.protos if isinstance(p, int))

    @property
    def host_networks(self) -> frozenset[IPNetwork]:
        """The hosts as network objects (every one after construction; an address is a /32 or /128)."""
        return frozenset(h for h in self.hosts if isinstance(h, (ipaddress.IPv4Network, ipaddress.IPv6Network)))

    @property
    def netns_inodes(self) -> frozenset[int]:
        """The namespaces as inode numbers (every one after construction)."""
        return frozenset(n for n in self.netns if isinstance(n, int))

    @property
    def reason_numbers(self) -> frozenset[int]:
        """The reasons given as numbers (all of them after :meth:`resolve_reasons`)."""
        return frozenset(r for r in self.reasons if isinstance(r, int))

    def resolve_reasons(self, lookup: ReasonLookup) -> Filters:
        """A copy whose reason names are numbers from ``lookup`` (a :class:`~dropcapture.reasons.ReasonTable`).

        :raises ValueError: the running kernel has no reason of that name.
        """
        if all(isinstance(r, int) for r in self.reasons):
            return self
        out: set[int | str] = set()
        for r in self.reasons:
            if isinstance(r, int):
                out.add(r)
                continue
            try:
                out.add(lookup.value(r))
            except KeyError:
                raise ValueError(f"this kernel has no drop reason {r!r}") from None
        return dataclasses.replace(self, reasons=frozenset(out))

    def matches(self, ev: DropEvent) -> bool:
        """True when the event passes every filter."""
        if self.comm is not None and ev.comm != self.comm[:15]:
            return False
        if self.pids and ev.pid not in self.pids and ev.tid not in self.pids:
            return False
        if self.protos and ev.l4proto not in self.protos:
            return False
        if self.ports and ev.sport not in self.ports and ev.dport not in self.ports:
            return False
        if self.reasons and ev.reason not in self.reasons and ev.reason_name not in self.reasons:
            return False
        if self.netns and ev.netns not in self.netns:
            return False
        if self.hosts:
            addrs = [ipaddress.ip_address(a) for a in (ev.saddr, ev.daddr) if a is not None]
            nets = self.host_networks
            if not any(a in n for a in addrs for n in nets):
                return False
        return True


def host_network(text: str) -> IPNetwork:
    """``"10.0.0.1"`` or ``"10.0.0.0/8"`` (host bits must be zero).

    :raises ValueError: not an address or prefix, or host bits set.
    """
    try:
        return ipaddress.ip_network(text.strip())
    except ValueError as exc:
        if "/" in text:
            raise ValueError(f"bad host prefix {text!r}: {exc}") from None
        raise ValueError(f"bad host {text!r}: not an IPv4 or IPv6 address or prefix") from None


def netns_inode(spec: str | int) -> int:
    """The inode of a network namespace given as a number or a path (``/var/run/netns/NAME``,
    ``/proc/PID/ns/net``), which is what events carry as ``netns``.

    :raises ValueError: not a number and no such path, or out of range.
    """
    if isinstance(spec, int) and not isinstance(spec, bool):
        return _int("netns", spec, 1, 0xFFFFFFFF)
    if not isinstance(spec, str):
        raise TypeError(f"a network namespace is an inode number or a path, not {type(spec).__name__}")
    text = spec.strip()
    if text.isdigit():
        return _int("netns", int(text), 1, 0xFFFFFFFF)
    try:
        st = os.stat(text)
        nsfs = os.stat("/proc/self/ns/net").st_dev
    except OSError as exc:
        raise ValueError(f"--netns {spec}: {exc.strerror} (give /var/run/netns/NAME, /proc/PID/ns/net "
                         "or an inode number)") from None
    if st.st_dev != nsfs:
        raise ValueError(f"--netns {spec}: not a namespace file (give /var/run/netns/NAME, /proc/PID/ns/net "
                         "or an inode number)")
    return st.st_ino


class ReasonLookup(Protocol):
    """What :meth:`Filters.resolve_reasons` needs: ``value(name) -> int`` raising ``KeyError``."""

    def value(self, name: str) -> int: ...
