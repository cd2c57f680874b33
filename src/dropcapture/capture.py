"""Capture packet drops: feature probes, the BPF program's life cycle, and the event iterator.

Python API::

    from dropcapture import Capture, Filters

    with Capture(Filters(protos={"tcp"})) as cap:
        for ev in cap.events(count=10, duration=30):
            print(ev.reason_name, ev.saddr, ev.sport, ev.daddr, ev.dport, ev.stack[0])
    print(cap.stats())

Every failure to start is a :class:`~dropcapture.errors.CaptureError` whose message names the fix.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._bcc import BccProgram, import_bcc
from ._ringbuf import SUPPORTED as ring_supported
from ._ringbuf import RingReader
from .bpf_text import Layout, build_text
from .btf import BTF_PATH, Btf
from .errors import BtfError, CaptureError, HeadersError, PrivilegeError, UnsupportedKernelError
from .events import DEFAULT_SNAPLEN, SNAPLEN_MAX, DropEvent, RawEvent, StackFrame, decode_events
from .filters import Filters
from .reasons import ReasonTable
from .tpformat import TracepointFormat, read_format

if TYPE_CHECKING:
    from ksym.kallsyms import Kallsyms, KallsymsSymbol

__all__ = ["Capture", "CaptureStats", "KernelInfo", "check_headers", "check_privileges", "kernel_info"]

# capability bits (include/uapi/linux/capability.h)
_CAP_SYS_ADMIN, _CAP_PERFMON, _CAP_BPF = 21, 38, 39


def check_privileges() -> None:
    """:raises PrivilegeError: neither root nor CAP_BPF + CAP_PERFMON (+ CAP_SYS_ADMIN for bcc)."""
    if os.geteuid() == 0:
        return
    caps = 0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                caps = int(line.split()[1], 16)
    except OSError:
        pass
    need = (1 << _CAP_BPF) | (1 << _CAP_PERFMON) | (1 << _CAP_SYS_ADMIN)
    if caps & need != need and not caps & (1 << _CAP_SYS_ADMIN):
        raise PrivilegeError(
            "dropcapture needs root to load BPF programs and read kernel addresses: run it with sudo"
        )


def check_headers() -> None:
    """:raises HeadersError: bcc will find no kernel headers to compile against."""
    if os.environ.get("BCC_KERNEL_SOURCE"):
        return
    rel = os.uname().release
    if os.path.exists(f"/lib/modules/{rel}/build/Makefile") or os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return
    raise HeadersError(
        f"bcc needs kernel headers and there are none at /lib/modules/{rel}/build "
        "(nor /sys/kernel/kheaders.tar.xz): run tools/dropcapture-setup.sh as root, or install "
        f"linux-headers-{rel}; dropcapture takes struct layouts from BTF, so headers of a nearby "
        "version are enough"
    )


@dataclass(frozen=True)
class KernelInfo:
    """Facts about the running kernel that go into saved captures."""

    release: str
    build_id: str | None
    #: Address of ``_text`` now, and its offset from the x86-64 default link address (KASLR slide).
    text_address: int | None
    kaslr_offset: int | None


_DEFAULT_TEXT = 0xFFFFFFFF81000000


def kernel_info(ksyms: Kallsyms | None = None) -> KernelInfo:
    """Release, build id (from /sys/kernel/notes, by :func:`ksym.buildid.running_build_id`) and the KASLR
    slide of the running kernel."""
    from ksym.buildid import running_build_id

    text = ksyms.address_of("_text") if ksyms is not None else None
    return KernelInfo(os.uname().release, running_build_id(), text, (text - _DEFAULT_TEXT) if text else None)


@dataclass(frozen=True)
class CaptureStats:
    """Counters of one capture: the program's own (all CPUs) and user space's.

    Every drop the program sees is filtered or emitted, and every emitted one is delivered or lost::

        hits == filtered + emitted        emitted == delivered + lost        lost == lost_full + lost_at_exit

    The second equation holds exactly once the capture is closed; while it runs, the difference
    ``emitted - delivered - lost`` is the drops still on their way (in the buffer, or read and not yet
    handed over).
    """

    #: Every ``skb:kfree_skb`` hit, before filters.
    hits: int
    #: Hits rejected by the filters (in the kernel, and the rare one only user space rejects).
    filtered: int
    #: Hits that passed the filters: each one is owed to the caller.
    emitted: int
    #: Emitted but never delivered: ``lost_full + lost_at_exit``.
    lost: int
    #: Events handed to the caller.
    delivered: int
    #: The kernel could not write the record: the ring/perf buffer was full.
    lost_full: int = 0
    #: Written to the buffer but not delivered when the capture closed (a second Ctrl-C, ``--count``
    #: reached, or the drain at exit ran out of time).
    lost_at_exit: int = 0


class Capture:
    """One attached dropcapture program; iterate :meth:`events` to receive :class:`DropEvent` s.

    :param filters: which drops to keep (checked in the kernel where possible).
    :param ringbuf: use a BPF ring buffer (default on kernels that have one) instead of perf buffers.
    :param ringbuf_pages: ring buffer size in pages (a power of two).
    :param perf_pages: perf buffer size per CPU in pages (a power of two).
    :param batch: at most this many records are read and decoded per :meth:`poll`, so a flood cannot
        keep one call busy and :meth:`stop`/:meth:`abandon` take effect between batches.
    :param annotate: optional ``KallsymsSymbol -> tuple[str, ...]`` adding file:line text to stack frames
        (see :func:`dropcapture.symbolize.ksym_annotator`).
    :param snaplen: packet bytes each event carries (:attr:`DropEvent.packet`), 0..4096; a pcap filter
        sees these bytes.
    """

    def __init__(
        self,
        filters: Filters | None = None,
        *,
        ringbuf: bool | None = None,
        ringbuf_pages: int = 1024,
        perf_pages: int = 256,
        stack_entries: int = 16384,
        wakeup_every: int = 32,
        annotate: Callable[[KallsymsSymbol], tuple[str, ...]] | None = None,
        batch: int = 1024,
        snaplen: int = DEFAULT_SNAPLEN,
    ) -> None:
        if filters is not None and not isinstance(filters, Filters):
            raise TypeError(f"filters must be a dropcapture.Filters, not {type(filters).__name__}")
        for name, pages in (("ringbuf_pages", ringbuf_pages), ("perf_pages", perf_pages)):
            if isinstance(pages, bool) or not isinstance(pages, int) or pages <= 0 or pages & (pages - 1):
                raise ValueError(f"{name} must be a power of two, not {pages!r}")
        if isinstance(snaplen, bool) or not isinstance(snaplen, int) or not 0 <= snaplen <= SNAPLEN_MAX:
            raise ValueError(f"snaplen must be 0..{SNAPLEN_MAX}, not {snaplen!r}")
        self.filters = filters or Filters()
        self.snaplen = snaplen
        self._ringbuf = ringbuf
        self._ringbuf_pages = ringbuf_pages
        self._perf_pages = perf_pages
        self._stack_entries = stack_entries
        self._wakeup_every = max(1, wakeup_every)
        self._annotate = annotate
        self._prog: BccProgram | None = None
        # ring buffer mode: the ring read through its mapping (None: records come through bcc's callback)
        self._ring: RingReader | None = None
        self._batch = max(1, int(batch))
        # records copied out of the buffer, not yet decoded (bytes of one RawEvent each)
        self._raw: deque[bytes] = deque()
        self._round = 0
        self._more = False
        self._received = 0
        self._rejected = 0
        self._stopping = False
        self._abandoned = False
        self._detached = False
        self._kernel: tuple[int, int, int, int] | None = None
        self.started: float | None = None
        self.stopped: float | None = None
        self._stack_cache: dict[int, tuple[StackFrame, ...]] = {}
        self._sym_cache: dict[int, KallsymsSymbol | None] = {}
        self._reason_cache: dict[int, str] = {}
        self._delivered = 0
        self._final_stats: CaptureStats | None = None
        self.format: TracepointFormat | None = None
        self.btf: Btf | None = None
        self.reasons = ReasonTable()
        self.ksyms: Kallsyms | None = None
        self.kernel: KernelInfo | None = None
        self.text = ""
        # wall clock minus CLOCK_MONOTONIC (what bpf_ktime_get_ns counts)
        self._clock_offset = time.time() - time.monotonic()

    # -- set-up ----------------------------------------------------------------------------------

    def prepare(self) -> str:
        """Probe the kernel and build the BPF text without loading it (``--ebpf`` uses this).

        :raises CaptureError: tracefs, the tracepoint or BTF is missing.
        """
        self.format = read_format()
        if not os.path.exists(BTF_PATH):
            raise BtfError(
                f"{BTF_PATH} is missing: dropcapture reads struct sk_buff from BTF; "
                "it needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
            )
        self.btf = Btf.load()
        self.reasons = ReasonTable.from_kernel(self.format, self.btf)
        self.filters = self.filters.resolve_reasons(self.reasons)
        layout = Layout.from_kernel(self.format, self.btf)
        programs = None
        if self.filters.pcap_filter is not None:
            from .pcapfilter import compile_filters

            programs = compile_filters(self.filters.pcap_filter, self.snaplen)
        if self._ringbuf is None:
            self._ringbuf = _has_ringbuf(self.btf)
        self.text = build_text(
            layout,
            self.filters,
            ringbuf=self._ringbuf,
            ringbuf_pages=self._ringbuf_pages,
            stack_entries=self._stack_entries,
            wakeup_every=self._wakeup_every,
            snaplen=self.snaplen,
            pcap_programs=programs,
        )
        return self.text

    def open(self) -> Capture:
        """Check the environment, compile, load and attach. Idempotent.

        :raises CaptureError: with a one-line message naming the fix.
        """
        if self._prog is not None:
            return self
        # a fresh session (a closed Capture may be opened again); stop()/abandon() flags are left
        # alone: a signal handler may have set them while the program compiles
        self._raw.clear()
        self._more = self._detached = False
        self._received = self._rejected = self._delivered = 0
        self._kernel = self._final_stats = None
        self.started = self.stopped = None
        import_bcc()
        check_privileges()
        self.prepare()
        check_headers()
        # ksym is imported where it is used: a usage error or a missing bcc is told before it loads
        from ksym.errors import KsymError
        from ksym.kallsyms import KALLSYMS_PATH, KallsymsHiddenError, load_kallsyms

        try:
            self.ksyms = load_kallsyms(KALLSYMS_PATH)
        except KallsymsHiddenError:
            raise PrivilegeError("/proc/kallsyms shows no addresses (kptr_restrict): run as root") from None
        except KsymError as exc:
            raise CaptureError(f"cannot read the kernel's symbols: {exc}") from None
        self.kernel = kernel_info(self.ksyms)
        if not os.path.exists("/proc/sys/kernel/bpf_stats_enabled") and not os.path.exists("/sys/fs/bpf"):
            raise UnsupportedKernelError("this kernel has no BPF support (CONFIG_BPF_SYSCALL)")
        self._clock_offset = time.time() - time.monotonic()
        self._prog = BccProgram(self.text, ringbuf=bool(self._ringbuf))
        try:
            if self._ringbuf and ring_supported:
                fd, size = self._prog.ring_map()
                try:
                    self._ring = RingReader(fd, size, _RAW_SIZE + self.snaplen)
                except OSError:  # no mapping: libbpf's consumer through bcc
                    self._ring = None
            if self._ring is None:
                self._prog.open_output(
                    self._on_record, self._ringbuf_pages if self._ringbuf else self._perf_pages
                )
        except Exception:
            if self._ring is not None:
                self._ring.close()
                self._ring = None
            self._prog.close()
            self._prog = None
            raise
        self.started = time.monotonic()
        return self

    def __enter__(self) -> Capture:  # noqa: PYI034 - typing.Self needs 3.11
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Detach and free everything (safe to call twice); :meth:`stats` still answers.

        Records still in the buffer are not read: they count as ``lost_at_exit``. Iterate
        :meth:`events` to its end after :meth:`stop` to receive them first.
        """
        if self._prog is not None:
            try:
                self.detach()
                self._final_stats = self.stats()
            finally:
                if self._ring is not None:
                    self._ring.close()
                    self._ring = None
                self._prog.close()
                self._prog = None
                self._raw.clear()
                self._stopping = self._abandoned = False

    def stop(self) -> None:
        """Ask :meth:`events` to end: it detaches, delivers what is left in the buffer, then returns.

        Only sets a flag, so a signal handler may call it.
        """
        self._stopping = True

    def abandon(self) -> None:
        """Ask :meth:`events` to end at once: what is left unread counts as lost (``lost_at_exit``).

        Only sets a flag, so a signal handler may call it (the second Ctrl-C of the command line).
        """
        self._stopping = True
        self._abandoned = True

    def detach(self) -> None:
        """Stop tracing: no new drops are recorded; the buffer can still be read. Idempotent."""
        if self._prog is None or self._detached:
            return
        self._detached = True
        self._prog.detach()
        self.stopped = time.monotonic()
        # A program already running on another CPU finishes after the detach; wait until the
        # counters add up (hits == filtered + written + failed), so the final numbers are exact.
        for _ in range(200):
            hits, written, failed, filtered = self._prog.stats()
            self._kernel = (hits, written, failed, filtered)
            if hits == written + failed + filtered:
                break
            time.sleep(0.001)

    @property
    def elapsed(self) -> float:
        """Seconds traced: from attaching to detaching (or now); 0 before :meth:`open`."""
        if self.started is None:
            return 0.0
        return (self.stopped if self.stopped is not None else time.monotonic()) - self.started

    @property
    def ringbuf(self) -> bool:
        return bool(self._ringbuf)

    # -- events ----------------------------------------------------------------------------------

    def _reason_name(self, value: int) -> str:
        name = self._reason_cache.get(value)
        if name is None:
            name = self._reason_cache[value] = self.reasons.name(value)
        return name

    def _symbol(self, addr: int) -> KallsymsSymbol | None:
        if addr not in self._sym_cache:
            self._sym_cache[addr] = self.ksyms.locate(addr) if self.ksyms else None
        return self._sym_cache[addr]

    def _stack(self, stack_id: int) -> tuple[StackFrame, ...]:
        if stack_id < 0 or self._prog is None:
            return ()
        got = self._stack_cache.get(stack_id)
        if got is None:
            frames = []
            for addr in self._prog.stack(stack_id):
                sym = self._symbol(addr)
                src: tuple[str, ...] = ()
                if self._annotate is not None and sym is not None:
                    src = self._annotate(sym)
                frames.append(StackFrame(addr, sym, src))
            got = tuple(frames)
            # without BPF_F_REUSE_STACKID an id keeps its stack for the map's lifetime
            self._stack_cache[stack_id] = got
        return got

    def _on_record(self, data: Any) -> int:
        if self._abandoned:
            return -1  # stop reading; the record counts as lost at exit
        # the fixed header, then the packet bytes the program captured (caplen <= snaplen, as it wrote)
        caplen = min(ctypes.c_uint16.from_address(data + _CAPLEN_OFF).value, self.snaplen)
        self._raw.append(ctypes.string_at(data, _RAW_SIZE + caplen))
        self._received += 1
        self._round += 1
        return -1 if self._round >= self._batch else 0

    def _read(self, timeout: float) -> None:
        """Copy up to one batch of records out of the buffer (waiting up to ``timeout`` for the first)."""
        if self._prog is None or self._abandoned:
            return
        if self._ring is not None:
            if not self._more and timeout > 0:
                self._ring.wait(int(timeout * 1000))
            records = self._ring.read(self._batch)
            self._raw.extend(records)
            self._received += len(records)
            self._more = len(records) >= self._batch
            return
        self._round = 0
        if self._more or timeout <= 0:
            self._prog.consume()
        else:
            self._prog.poll(max(0, int(timeout * 1000)))
            if self._prog.ringbuf and self._round < self._batch:
                self._prog.consume()  # records whose wake-up was batched
        self._more = self._round >= self._batch

    def _next_batch(self, timeout: float) -> list[DropEvent]:
        """Decode up to one batch, reading the buffer first when nothing is waiting."""
        if self._prog is None:
            raise CaptureError("the capture is not open")
        if not self._raw:
            self._read(timeout)
        if self._abandoned or not self._raw:
            return []
        raw = self._raw
        take = min(self._batch, len(raw))
        bufs = [raw.popleft() for _ in range(take)]
        events = self._decode_many(bufs)
        matches = self.filters.matches
        out = [ev for ev in events if matches(ev)]
        self._rejected += len(events) - len(out)
        return out

    def _decode_many(self, bufs: list[bytes]) -> list[DropEvent]:
        """Decode records copied out of the buffer (tests compare it with a decode through :class:`RawEvent`)."""
        return decode_events(
            bufs,
            reason_name=self._reason_name,
            clock_offset=self._clock_offset,
            location_symbol=self._symbol,
            stack=self._stack,
        )

    @property
    def _drained(self) -> bool:
        # after detach: every record the kernel wrote has been read
        return (
            self._detached and not self._raw and (self._kernel is None or self._received >= self._kernel[1])
        )

    def poll(self, timeout: float = 0.1) -> list[DropEvent]:
        """Wait up to ``timeout`` seconds and return the drops that arrived (at most one batch)."""
        out = self._next_batch(timeout)
        self._delivered += len(out)
        return out

    def events(
        self,
        *,
        count: int | None = None,
        duration: float | None = None,
        poll_timeout: float = 0.1,
        stop: Callable[[], bool] | None = None,
        drain: float = 1.0,
    ) -> Iterator[DropEvent]:
        """Yield drops until ``count`` events, ``duration`` seconds, :meth:`stop` or ``stop()`` returns True.

        On a stop or at the end of ``duration`` the tracepoint is detached and what is still in the
        buffer is delivered for up to ``drain`` seconds; after :meth:`abandon` or at ``count`` the
        iterator ends at once. Whatever is not delivered counts as lost at :meth:`close`.
        """
        self.open()
        deadline = time.monotonic() + duration if duration is not None else None
        # already detached (detach() called first): deliver what is left, for up to ``drain`` seconds
        drain_until = time.monotonic() + drain if self._detached else 0.0

        def _over() -> bool:
            """Detach on a stop or at the deadline; True when the iterator must end."""
            nonlocal drain_until
            if self._abandoned:
                return True
            if not self._detached:
                if not self._stopping and stop is not None and stop():
                    self._stopping = True
                if deadline is not None and time.monotonic() >= deadline:
                    self._stopping = True
                if not self._stopping:
                    return False
                self.detach()
                drain_until = time.monotonic() + drain
            return time.monotonic() >= drain_until

        seen = 0
        while not _over():
            timeout = poll_timeout
            if self._detached:
                if self._drained:
                    return
                timeout = 0
            elif deadline is not None:
                timeout = max(0.0, min(timeout, deadline - time.monotonic()))
            received = self._received
            batch = self._next_batch(timeout)
            if self._detached and not batch and not self._raw and self._received == received:
                return  # the buffer is empty
            for ev in batch:
                if _over():
                    return
                self._delivered += 1
                yield ev
                seen += 1
                if count is not None and seen >= count:
                    return

    def __iter__(self) -> Iterator[DropEvent]:
        return self.events()

    def stats(self) -> CaptureStats:
        """Counters so far (after :meth:`close`: the final ones, where ``emitted == delivered + lost``)."""
        if self._prog is None:
            if self._final_stats is not None:
                return self._final_stats
            return CaptureStats(0, 0, 0, 0, self._delivered)
        if self._detached and self._kernel is not None:
            hits, written, failed, filtered = self._kernel
        else:
            hits, written, failed, filtered = self._prog.stats()
        # after detach nothing more arrives: what was written and not delivered is lost at exit
        at_exit = written - self._rejected - self._delivered if self._detached else 0
        return CaptureStats(
            hits=hits,
            filtered=filtered + self._rejected,
            emitted=written + failed - self._rejected,
            lost=failed + at_exit,
            delivered=self._delivered,
            lost_full=failed,
            lost_at_exit=at_exit,
        )


_RAW_SIZE = ctypes.sizeof(RawEvent)
_CAPLEN_OFF = RawEvent.caplen.offset


def _has_ringbuf(btf: Btf) -> bool:
    # BPF_MAP_TYPE_RINGBUF exists since 5.8; its kernel struct is a cheap witness in BTF
    try:
        btf.struct("bpf_ringbuf")
        return True
    except CaptureError:
        return False
