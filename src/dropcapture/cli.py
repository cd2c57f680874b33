"""dropcapture: capture packet drops (skb:kfree_skb) with their kernel stacks.

USAGE: dropcapture [--comm C] [--pid P] [--proto tcp|udp|icmp...] [--host ADDR|CIDR] [--port N]
                   [--reason NAME] [--netns PATH|INODE] [--pcap-filter EXPR] [--snaplen N]
                   [--count N] [--duration S] [--json] [--save FILE]
                   [--vmlinux PATH | --index FILE] [--build-id HEX] [--offline] [--no-stack] [--quiet]

Replaces the bpftrace dropwatch.bt script (kprobe:kfree_skb, TCP only) with the skb:kfree_skb
tracepoint, every protocol, the kernel's drop reason by name, and stacks that ksym can turn into
file:line. Needs root; see docs/dropcapture.md (exit codes, save format).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from .capture import Capture, CaptureStats
from .errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CaptureError
from .events import DEFAULT_SNAPLEN, SNAPLEN_MAX, l4_number
from .filters import PID_MAX, Filters, IPNetwork, host_network, netns_inode
from .output import SaveWriter, Summary, TextFormatter
from .reasons import ReasonTable

if TYPE_CHECKING:
    from .metrics import MetricsServer
    from .pcapng import PcapngSink
    from .top import TopView

__all__ = ["CLI_RINGBUF_PAGES", "build_parser", "main"]

#: Ring buffer size of the command line, in pages (16 MiB); ``--buffer-pages`` overrides it.
CLI_RINGBUF_PAGES = 4096

EPILOG = """\
examples:
  dropcapture                          # every drop, with stacks, until Ctrl-C
  dropcapture --comm curl              # drops while curl runs (send path, loopback receive)
  dropcapture --proto tcp --port 80    # TCP drops from or to port 80
  dropcapture --reason NETFILTER_DROP --count 10
  dropcapture --netns /var/run/netns/blue --host 10.0.0.0/8   # one namespace, a prefix
  dropcapture --pcap-filter 'tcp[tcpflags] & tcp-syn != 0'    # tcpdump syntax, in the kernel
  dropcapture --json --duration 30 > drops.jsonl
  dropcapture --save drops.txt         # stacks for 'ksym annotate' on another machine
  dropcapture --vmlinux /usr/lib/debug/boot/vmlinux-$(uname -r)   # file:line via ksym
  dropcapture --index vmlinux.ksym-index      # file:line from a portable index file, no DWARF on the host
  KSYM_INDEX_URLS=https://kernels.example.org/ksym dropcapture   # its index file fetched by build id
  dropcapture --summary --duration 60  # drops per site (reason, location, file:line), dropwatch style
  dropcapture --top                    # live drop sites on the terminal, redrawn every second
  dropcapture --quiet --metrics 127.0.0.1:9101   # Prometheus counters at http://127.0.0.1:9101/metrics
  dropcapture --pcapng drops.pcapng    # the dropped packets for Wireshark/tshark, one comment each

Ctrl-C: stop tracing, print what is left in the buffer, then the summary; Ctrl-C again: stop at
once (what is left counts as lost). The summary's counters always add up: emitted = delivered + lost.

exit codes: 0 ok, 1 capture failed, 2 usage, 3 bcc (or libpcap for --pcap-filter) missing, 4 not privileged,
            5 kernel lacks tracefs/tracepoint/BPF/BTF, 6 bcc cannot compile (kernel headers),
            130 interrupted before the capture started
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dropcapture",
        description="Capture packet drops with their kernel stacks and the kernel's drop reason.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    f = p.add_argument_group("filters (repeat an option for alternatives)")
    f.add_argument("--comm", help="only drops in tasks with this command name")
    f.add_argument("--pid", type=int, action="append", default=[],
                   help="only this process (or thread) id; 0 is the idle task (softirq on an idle CPU)")
    f.add_argument("--proto", action="append", default=[], help="tcp, udp, icmp, icmpv6, sctp or a number")
    f.add_argument("--host", action="append", default=[],
                   help="source or destination address or CIDR prefix (v4 or v6), e.g. 10.0.0.0/8")
    f.add_argument("--port", type=int, action="append", default=[], help="source or destination port")
    f.add_argument("--reason", action="append", default=[], help="drop reason name, e.g. NO_SOCKET")
    _add_packet_options(p, f)
    lim = p.add_argument_group("limits")
    lim.add_argument("--count", type=int, help="stop after N drops")
    lim.add_argument("--duration", type=float, help="stop after S seconds")
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="one JSON object per drop (summary as a last line)")
    o.add_argument("--save", metavar="FILE", help="also write stacks in the offline format ksym annotate reads")
    o.add_argument("--no-stack", action="store_true", help="one line per drop, no stack")
    o.add_argument("--quiet", "-q", action="store_true", help="no per-drop output, summary only")
    o.add_argument("--no-summary", action="store_true", help="no summary at exit")
    debug = o.add_mutually_exclusive_group()
    debug.add_argument("--vmlinux", help="debug vmlinux of the running kernel, for file:line through ksym")
    debug.add_argument("--index", metavar="FILE", help="portable index file of the running kernel (ksym index "
                       "build), for file:line without its debug vmlinux; default: when no debug vmlinux is found, "
                       "the one of its build id in ksym's cache, $KSYM_INDEX_PATH or $KSYM_INDEX_URLS")
    o.add_argument("--build-id", metavar="HEX", help="the build id the debug file must have, instead of the running "
                   "kernel's (/sys/kernel/notes); frames then get the lines of that build")
    o.add_argument("--offline", action="store_true", help="never download an index file ($KSYM_INDEX_URLS)")
    # drop sites, the live view, metrics and pcapng (docs/dropcapture.md "Drop sites", "Metrics", "pcapng")
    v = p.add_argument_group("drop sites, live view, metrics, packets")
    v.add_argument("--summary", action="store_true",
                   help="no per-drop output: at exit the summary on stdout, with drops per site (reason, location, "
                        "file:line), dropwatch style")
    v.add_argument("--top", action="store_true",
                   help="live view of the drop sites for a terminal, redrawn every second, most drops first")
    v.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve drop counters by reason and by drop site for Prometheus at http://HOST:PORT/metrics")
    v.add_argument("--pcapng", metavar="FILE", help="also write the dropped packets as pcapng (Wireshark, tshark)")
    b = p.add_argument_group("buffers")
    b.add_argument("--perf-buffer", action="store_true", help="per-CPU perf buffers instead of a ring buffer")
    b.add_argument("--buffer-pages", type=int,
                   help="buffer size in pages, a power of two (ring buffer: 4096 = 16 MiB; perf buffer: 256 per CPU)")
    p.add_argument("--ebpf", action="store_true", help=argparse.SUPPRESS)
    return p


# -- packet capture and kernel filters (--netns, --pcap-filter, --snaplen) -------------------------


def _add_packet_options(p: argparse.ArgumentParser, f: argparse._ArgumentGroup) -> None:
    f.add_argument("--netns", action="append", default=[], metavar="PATH|INODE",
                   help="only drops in this network namespace: /var/run/netns/NAME, /proc/PID/ns/net or an inode")
    f.add_argument("--pcap-filter", metavar="EXPR",
                   help="tcpdump expression, compiled by libpcap and checked in the kernel on the packet bytes")
    pk = p.add_argument_group("packet bytes")
    pk.add_argument("--snaplen", type=int, default=DEFAULT_SNAPLEN,
                    help=f"packet bytes each drop carries, from the L2 or L3 header (default {DEFAULT_SNAPLEN}, "
                         f"0..{SNAPLEN_MAX}); --pcap-filter sees these bytes")


def _netns(args: argparse.Namespace) -> frozenset[int]:
    """--netns as inodes (ValueError: a usage error)."""
    return frozenset(netns_inode(spec) for spec in args.netns)


def _pcap_filter(args: argparse.Namespace) -> str | None:
    """--pcap-filter, compiled once here so a bad expression is a usage error before anything is loaded."""
    if not 0 <= args.snaplen <= SNAPLEN_MAX:
        raise ValueError(f"--snaplen {args.snaplen}: must be 0..{SNAPLEN_MAX}")
    expr: str | None = args.pcap_filter
    if expr is not None:
        from .pcapfilter import compile_filters

        compile_filters(expr, args.snaplen)  # PcapFilterError is a ValueError
    return expr


def _filters(args: argparse.Namespace, reasons_lookup: ReasonTable) -> Filters:
    """The command line's filters, every value checked (ValueError: a usage error)."""
    protos = set()
    for spec in args.proto:
        for item in spec.split(","):
            protos.add(l4_number(item))
    hosts: set[IPNetwork] = set()
    for h in args.host:
        hosts.add(host_network(h))
    for port in args.port:
        if not 0 < port < 65536:
            raise ValueError(f"bad port {port} (1..65535)")
    for pid in args.pid:
        if not 0 <= pid <= PID_MAX:
            raise ValueError(f"bad pid {pid} (0..{PID_MAX})")
    if args.comm is not None and not args.comm:
        raise ValueError("--comm needs a command name")
    reasons: set[int | str] = set()
    for spec in args.reason:
        for item in spec.split(","):
            try:
                reasons.add(reasons_lookup.value(item))
            except KeyError:
                raise ValueError(f"this kernel has no drop reason {item!r}") from None
    return Filters(
        comm=args.comm,
        pids=frozenset(args.pid),
        protos=frozenset(protos),
        hosts=frozenset(hosts),
        ports=frozenset(args.port),
        reasons=frozenset(reasons),
        netns=_netns(args),
        pcap_filter=_pcap_filter(args),
    )


def _check_output(path: str, option: str = "--save") -> None:
    """:raises ValueError: ``--save path`` cannot be written (checked before any BPF is loaded)."""
    target = Path(path)
    parent = target.parent
    if target.is_dir():
        raise ValueError(f"{option} {path}: is a directory")
    if not parent.is_dir():
        raise ValueError(f"{option} {path}: directory {str(parent)!r} does not exist")
    if target.exists():
        if not os.access(target, os.W_OK):
            raise ValueError(f"{option} {path}: not writable")
    elif not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: directory {str(parent)!r} is not writable")


def _check_views(args: argparse.Namespace) -> None:
    """:raises ValueError: ``--top``/``--summary``/``--metrics``/``--pcapng`` misused (before any BPF)."""
    if args.top:
        for flag, name in ((args.json, "--json"), (args.quiet, "--quiet"), (args.summary, "--summary")):
            if flag:
                raise ValueError(f"--top draws the drop sites on the terminal; {name} prints elsewhere: use one")
        if not sys.stdout.isatty():
            raise ValueError("--top needs a terminal on stdout (for a pipe or a file use --summary or --json)")
    if args.summary and args.json:
        raise ValueError("--summary prints the text summary and --json the JSON one: use one")
    if args.metrics:
        from .metrics import import_prometheus_client, parse_metrics_address

        parse_metrics_address(args.metrics)
        import_prometheus_client()
    if args.pcapng:
        _check_output(args.pcapng, "--pcapng")


def _running_build_id() -> str | None:
    """The running kernel's build id, read by :func:`ksym.buildid.running_build_id`; None when ksym cannot
    be imported (then :func:`~dropcapture.symbolize.ksym_annotator` says so)."""
    try:
        from ksym.buildid import running_build_id
    except ImportError:
        return None
    return running_build_id()


def _build_id_option(text: str | None) -> str | None:
    """``--build-id``, normalised by ksym; :raises ValueError: not a build id (or ksym missing)."""
    if not text:
        return None
    try:
        from ksym.buildid import normalize_build_id
    except ImportError:
        raise ValueError("--build-id needs ksym, which is not importable") from None
    return normalize_build_id(text)


def _index_search(offline: bool) -> Any:
    """Where ksym looks for the running kernel's portable index file: its cache and the ``KSYM_INDEX_*``
    variables (read by ksym's ``IndexFileOptions.from_environment``); None when ksym cannot be imported."""
    try:
        from ksym.searchopts import IndexFileOptions
    except ImportError:
        return None
    return IndexFileOptions.from_environment(os.environ, offline=offline)


def _err(msg: str) -> None:
    print(f"dropcapture: error: {msg}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except CaptureError as exc:
        _err(str(exc))
        return exc.exit_code
    except ValueError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except BrokenPipeError:
        return EXIT_OK
    except KeyboardInterrupt:  # Ctrl-C before the capture's own handler is installed
        _err("interrupted before the capture started")
        return EXIT_INTERRUPTED
    except Exception as exc:
        if os.environ.get("DROPCAPTURE_DEBUG"):
            raise
        _err(f"internal error: {type(exc).__name__}: {exc} (DROPCAPTURE_DEBUG=1 shows the traceback)")
        return EXIT_INTERNAL


def _run(args: argparse.Namespace) -> int:
    from .btf import Btf
    from .reasons import ReasonTable
    from .tpformat import read_format

    # every usage check comes before the program is built and loaded
    if args.count is not None and args.count <= 0:
        raise ValueError("--count must be positive")
    if args.duration is not None and args.duration <= 0:
        raise ValueError("--duration must be positive")
    pages = args.buffer_pages
    if pages is not None and (pages <= 0 or pages & (pages - 1)):
        raise ValueError(f"--buffer-pages {pages}: must be a power of two")
    for opt, given in (("--vmlinux", args.vmlinux), ("--index", args.index)):
        if args.no_stack and given:
            raise ValueError(f"{opt} annotates stack frames and --no-stack prints none: use one of them")
        if given and not os.path.isfile(given):
            raise ValueError(f"{opt} {given}: no such file")
    override = _build_id_option(args.build_id)
    if args.save:
        _check_output(args.save)
    _check_views(args)
    # reason names need the running kernel's table before the program is built
    table = ReasonTable()
    if args.reason:
        try:
            btf: Btf | None = Btf.load()
        except CaptureError:
            btf = None
        table = ReasonTable.from_kernel(read_format(), btf)
    filters = _filters(args, table)

    from .symbolize import ksym_annotator

    annotate = None
    # closes ksym's Symbolizer at the end of the capture: what it learnt goes to its index then
    closing = contextlib.ExitStack()
    if not args.ebpf and not args.no_stack:
        annotate, status = ksym_annotator(args.vmlinux, override or _running_build_id(), closing=closing,
                                          index_file=args.index, index_search=_index_search(args.offline),
                                          build_id=override)
        if args.vmlinux or args.index or annotate is not None:
            print(f"dropcapture: {status}", file=sys.stderr)

    # the command line's ring buffer is 16 MiB (the API's Capture default is 4 MiB): on a busy 2-CPU
    # machine the reader is descheduled for longer than 4 MiB of records lasts (docs: Benchmark)
    sizes = {"ringbuf_pages": CLI_RINGBUF_PAGES} if pages is None else {"ringbuf_pages": pages, "perf_pages": pages}
    try:
        cap = Capture(filters, ringbuf=False if args.perf_buffer else None, annotate=annotate, snaplen=args.snaplen,
                      **sizes)
    except BaseException:
        closing.close()  # the Symbolizer (the finally below closes it on every later way out)
        raise
    if args.ebpf:
        print(cap.prepare())
        return EXIT_OK

    signals = {"count": 0}

    def _on_signal(_sig: int, _frame: FrameType | None) -> None:
        # first SIGINT/SIGTERM: stop tracing, deliver what is in the buffer, summary;
        # second: stop at once (the rest counts as lost), summary; a third one kills
        signals["count"] += 1
        if signals["count"] == 1:
            cap.stop()
            msg = b"dropcapture: stopping: reading what is left in the buffer (Ctrl-C again to stop at once)\n"
        else:
            cap.abandon()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            msg = b"dropcapture: stopping at once: records left in the buffer count as lost\n"
        with contextlib.suppress(OSError):
            os.write(2, msg)  # not print(): the handler may interrupt a write to sys.stderr

    old_int = signal.signal(signal.SIGINT, _on_signal)
    old_term = signal.signal(signal.SIGTERM, _on_signal)
    out: IO[str] = sys.stdout
    save: IO[str] | None = None
    fmt = TextFormatter(stacks=not args.no_stack)
    summary = Summary(annotate=annotate)
    # no per-drop output: --quiet, --summary, --top (which draws the sites instead)
    quiet = args.quiet or args.summary or args.top
    views = _Views(args, summary, out)
    try:
        views.open()
        cap.open()
        if args.save:
            try:
                save = open(args.save, "w", encoding="utf-8")  # noqa: SIM115
            except OSError as exc:
                raise ValueError(f"--save {args.save}: {exc.strerror or exc}") from None
        saver = SaveWriter(save, cap.kernel, cap.reasons.source) if save else None
        views.open_outputs()
        print(
            f"dropcapture: tracing skb:kfree_skb ({'ring buffer' if cap.ringbuf else 'perf buffer'}, "
            f"reasons from {cap.reasons.source}); Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        if not args.json and not quiet:
            print(fmt.header(), file=out)
        annotated = False
        pcap = views.pcap
        # what is loaded by now (kallsyms, BTF, the program) lives to the end: keep the collector from
        # walking it again and again while the short-lived events come and go
        gc.freeze()
        # a terminal sees each drop at once; a pipe or a file gets whole buffers, which the ticker
        # flushes (no write call per drop)
        interactive = out.isatty()
        for ev in cap.events(count=args.count, duration=args.duration, stop=views.ticker(cap)):
            summary.add(ev)
            if annotate is not None and not annotated:
                annotated = any(fr.source for fr in ev.stack)
            if saver:
                saver.write(ev)
            if pcap is not None:
                pcap.write_event(ev, summary)
            if quiet:
                continue
            if args.json:
                out.write(fmt.json(ev) + "\n")
            else:
                out.write(fmt.format(ev) + "\n")
            if interactive:
                out.flush()
    finally:
        cap.close()
        closing.close()
        if signals["count"] < 2:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
        if save:
            save.close()
        views.close(cap.stats())
    stats = cap.stats()
    elapsed = cap.elapsed
    if annotate is not None and summary.total and not annotated:
        print(
            "dropcapture: note: no frame got a file:line: the debug vmlinux does not match this kernel "
            f"({os.uname().release}; symbol sizes differ), or it lacks line information",
            file=sys.stderr,
        )
    if not args.no_summary:
        if args.json:
            out.write(json.dumps(summary.to_dict(stats, elapsed)) + "\n")
        else:
            print(summary.render(stats, elapsed), file=out if quiet else sys.stderr)
    out.flush()
    return EXIT_OK


class _Views:
    """The outputs besides the per-drop lines: ``--top``, ``--metrics`` and ``--pcapng``; their life
    cycle in one place (opened before the capture starts, closed after it ends)."""

    def __init__(self, args: argparse.Namespace, summary: Summary, out: IO[str]) -> None:
        self.args = args
        self.summary = summary
        self.out = out
        self.top: TopView | None = None
        self.metrics: MetricsServer | None = None
        self.pcap: PcapngSink | None = None
        self._next = 0.0

    def open(self) -> None:
        """Bind the metrics port (a busy port fails before anything is compiled)."""
        if self.args.metrics:
            from .metrics import MetricsServer, parse_metrics_address

            self.metrics = MetricsServer(parse_metrics_address(self.args.metrics), self.summary).start()
            print(f"dropcapture: metrics at http://{self.metrics.address}/metrics", file=sys.stderr, flush=True)

    def open_outputs(self) -> None:
        """Open the pcapng file and start the --top view (once the capture is attached)."""
        if self.args.pcapng:
            from .pcapng import PcapngSink

            self.pcap = PcapngSink.open(self.args.pcapng, self.args.snaplen)
        if self.args.top:
            from .top import TopView

            self.top = TopView(self.out, self.summary)

    def ticker(self, cap: Capture) -> Callable[[], bool]:
        """A ``stop`` callback for ``Capture.events`` (called between events and before every poll) that
        flushes stdout every 0.1 s, redraws ``--top`` and refreshes the counters ``--metrics`` serves
        once a second; it never asks to stop."""
        flush_at = 0.0

        def tick() -> bool:
            nonlocal flush_at
            now = time.monotonic()
            if now >= flush_at:
                flush_at = now + 0.1
                self.out.flush()
            if now >= self._next and (self.top is not None or self.metrics is not None):
                self._next = now + 1.0
                stats = cap.stats()
                if self.metrics is not None:
                    self.metrics.update(stats)
                if self.top is not None:
                    self.top.tick(stats)
            return False

        return tick

    def close(self, stats: CaptureStats) -> None:
        try:
            if self.top is not None:
                self.top.close(stats)
            if self.pcap is not None:
                self.pcap.close()
        finally:
            if self.metrics is not None:
                self.metrics.update(stats)
                self.metrics.close()

if __name__ == "__main__":
    sys.exit(main())
