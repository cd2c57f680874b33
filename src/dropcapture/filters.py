"""Which drops to keep: ``--comm``, ``--pid``, ``--proto``, ``--host``, ``--port``, ``--reason``.

A :class:`Filters` is applied twice: compiled into the BPF program (every filter is checked in the
kernel, so unwanted drops cost no copy to user space) and again on each decoded event by
:meth:`Filters.matches` (which serves API users and documents the semantics in Python).
Within one option the values are alternatives (``--port 80 --port 443``); options combine with AND.

Every value is checked when the :class:`Filters` is built (``TypeError`` for a value of the wrong
type, ``ValueError`` for one out of range), so nothing but validated integers reaches the C text.
Protocols may be given by name (``"tcp"``), hosts as strings, and drop reasons by name
(``"NO_SOCKET"``); reason names are resolved against the running kernel's table when a capture
starts (:meth:`Filters.resolve_reasons`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Protocol

from .events import DropEvent, l4_number

__all__ = ["PID_MAX", "Filters", "IPAddress"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

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
    #: Addresses matched against source or destination; strings are accepted and converted.
    hosts: AbstractSet[IPAddress | str] = field(default_factory=frozenset)
    #: Ports 1..65535 matched against source or destination (TCP, UDP, SCTP, UDP-Lite).
    ports: AbstractSet[int] = field(default_factory=frozenset)
    #: Drop reason numbers of the running kernel, or names (``"NO_SOCKET"``) resolved when a capture starts.
    reasons: AbstractSet[int | str] = field(default_factory=frozenset)

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
        hosts: set[IPAddress] = set()
        for h in _collection("hosts", self.hosts, "IP addresses"):
            if isinstance(h, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
                hosts.add(h)
            elif isinstance(h, str):
                hosts.add(ipaddress.ip_address(h))  # ValueError: "... does not appear to be an IPv4 or IPv6 address"
            else:
                raise TypeError(f"Filters.hosts: {h!r} is a {type(h).__name__}, not an address or a str")
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

    @property
    def empty(self) -> bool:
        return not (self.comm or self.pids or self.protos or self.hosts or self.ports or self.reasons)

    @property
    def proto_numbers(self) -> frozenset[int]:
        """The protocols as numbers (every one after construction)."""
        return frozenset(p for p in self.protos if isinstance(p, int))

    @property
    def host_addresses(self) -> frozenset[IPAddress]:
        """The hosts as address objects (every one after construction)."""
        return frozenset(h for h in self.hosts if not isinstance(h, str))

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
        return Filters(self.comm, self.pids, self.protos, self.hosts, self.ports, frozenset(out))

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
        if self.hosts:
            addrs = set()
            for a in (ev.saddr, ev.daddr):
                if a is not None:
                    addrs.add(ipaddress.ip_address(a))
            if not addrs & self.hosts:
                return False
        return True


class ReasonLookup(Protocol):
    """What :meth:`Filters.resolve_reasons` needs: ``value(name) -> int`` raising ``KeyError``."""

    def value(self, name: str) -> int: ...
