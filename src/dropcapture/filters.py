"""Which drops to keep: ``--comm``, ``--pid``, ``--proto``, ``--host``, ``--port``, ``--reason``.

A :class:`Filters` is applied twice: compiled into the BPF program (every filter is checked in the
kernel, so unwanted drops cost no copy to user space) and again on each decoded event by
:meth:`Filters.matches` (which serves API users and documents the semantics in Python).
Within one option the values are alternatives (``--port 80 --port 443``); options combine with AND.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .events import DropEvent

__all__ = ["Filters", "IPAddress"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Filters:
    """Drop filters; an empty set or None means "any"."""

    comm: str | None = None
    pids: frozenset[int] = field(default_factory=frozenset)
    #: IP protocol numbers (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6).
    protos: frozenset[int] = field(default_factory=frozenset)
    #: Addresses matched against source or destination.
    hosts: frozenset[IPAddress] = field(default_factory=frozenset)
    #: Ports matched against source or destination (TCP, UDP, SCTP, UDP-Lite).
    ports: frozenset[int] = field(default_factory=frozenset)
    #: Drop reason numbers of the running kernel.
    reasons: frozenset[int] = field(default_factory=frozenset)

    @property
    def empty(self) -> bool:
        return not (self.comm or self.pids or self.protos or self.hosts or self.ports or self.reasons)

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
        if self.reasons and ev.reason not in self.reasons:
            return False
        if self.hosts:
            addrs = set()
            for a in (ev.saddr, ev.daddr):
                if a is not None:
                    addrs.add(ipaddress.ip_address(a))
            if not addrs & self.hosts:
                return False
        return True
