"""``--metrics HOST:PORT``: drop counters in the Prometheus exposition format (prometheus_client).

Served series (all counters, reset when dropcapture starts)::

    dropcapture_drops_total{reason="NO_SOCKET"}                                  drops delivered, by reason
    dropcapture_site_drops_total{reason=..., location="__udp4_lib_rcv+0x4bc", source="net/ipv4/udp.c:2420"}
    dropcapture_kernel_hits_total, dropcapture_kernel_filtered_total, dropcapture_kernel_emitted_total
    dropcapture_lost_total{cause="buffer_full"|"unread_at_exit"}

The per-drop path adds nothing: a scrape reads the capture's :class:`~dropcapture.output.Summary`
(copies of its counters, taken atomically) and the capture counters the main loop last stored (at most
a second old).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from .capture import CaptureStats
from .output import Summary

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

__all__ = ["MetricsAddress", "MetricsServer", "parse_metrics_address"]


class MetricsAddress(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_metrics_address(text: str) -> MetricsAddress:
    """``127.0.0.1:9101``, ``[::1]:9101``, ``:9101`` (every address) -> host and port.

    :raises ValueError: not ``HOST:PORT`` with a port in 1..65535 and an IP address (or empty) as host.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"--metrics {text}: expected HOST:PORT with a port in 1..65535, e.g. 127.0.0.1:9101")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"--metrics {text}: {host!r} is not an IP address") from None
    else:
        host = "0.0.0.0"
    return MetricsAddress(host, int(port_text))


def import_prometheus_client() -> Any:
    """:raises ValueError: the library is missing (a usage error: it is an optional dependency)."""
    try:
        import prometheus_client
    except ImportError:
        raise ValueError(
            "--metrics needs the prometheus_client library: pip install prometheus_client "
            "(or the package's [metrics] extra)"
        ) from None
    return prometheus_client


class _Collector:
    """Yields the metric families from the summary and the last capture counters at each scrape."""

    def __init__(self, server: MetricsServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        summary = self.server.summary
        by_reason = summary.by_reason.copy()
        sites = summary.site_counts()
        drops = CounterMetricFamily(
            "dropcapture_drops", "Packet drops delivered, by drop reason", labels=["reason"]
        )
        for reason, n in sorted(by_reason.items()):
            drops.add_metric([reason], n)
        yield drops
        site_drops = CounterMetricFamily(
            "dropcapture_site_drops",
            "Packet drops delivered, by drop site: reason, drop location (func+0xoff) and its file:line",
            labels=["reason", "location", "source"],
        )
        for key, n in sorted(sites.items()):
            site = summary.site(key)
            site_drops.add_metric([site.reason, site.location, site.source_line], n)
        yield site_drops
        stats = self.server.stats
        if stats is not None:
            for name, value, text in (
                ("hits", stats.hits, "skb:kfree_skb hits seen by the program"),
                ("filtered", stats.filtered, "hits rejected by the filters"),
                ("emitted", stats.emitted, "hits that passed the filters (delivered or lost)"),
            ):
                fam = CounterMetricFamily(f"dropcapture_kernel_{name}", text)
                fam.add_metric([], value)
                yield fam
            lost = CounterMetricFamily(
                "dropcapture_lost", "Drops that passed the filters and were not delivered", labels=["cause"]
            )
            lost.add_metric(["buffer_full"], stats.lost_full)
            lost.add_metric(["unread_at_exit"], stats.lost_at_exit)
            yield lost


class MetricsServer:
    """An HTTP server (prometheus_client's, in a thread) serving :class:`Summary` counters.

    Use as ``with MetricsServer(addr, summary) as m: ... m.update(cap.stats())``.
    """

    def __init__(self, address: MetricsAddress, summary: Summary) -> None:
        self.address = address
        self.summary = summary
        self.stats: CaptureStats | None = None
        self._registry: CollectorRegistry | None = None
        self._server: Any = None
        self._thread: Any = None

    def start(self) -> MetricsServer:
        """Listen (before the capture starts, so a busy port fails fast).

        :raises ValueError: the library is missing or the address cannot be bound.
        """
        prom = import_prometheus_client()
        from prometheus_client.registry import CollectorRegistry

        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Collector(self))
        try:
            self._server, self._thread = prom.start_http_server(
                self.address.port, addr=self.address.host, registry=self._registry
            )
        except OSError as exc:
            raise ValueError(f"--metrics {self.address}: cannot listen: {exc.strerror or exc}") from None
        return self

    def update(self, stats: CaptureStats) -> None:
        """Store the capture counters served from now on (called by the main loop)."""
        self.stats = stats

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> MetricsServer:  # noqa: PYI034 - typing.Self needs 3.11
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
