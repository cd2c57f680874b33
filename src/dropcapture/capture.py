"""Capture packet drops: feature probes, the BPF program's life cycle, and the event iterator.

Python API::

    from dropcapture import Capture, Filters

    with Capture(Filters(protos=frozenset({6}))) as cap:
        for ev in cap.events(count=10, duration=30):
            print(ev.reason_name, ev.saddr, ev.sport, ev.daddr, ev.dport, ev.stack[0])
    print(cap.stats())

Every failure to start is a :class:`~dropcapture.errors.CaptureError` whose message names the fix.
"""

from __future__ import annotations

import ctypes
import os
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._bcc import BccProgram, import_bcc
from .bpf_text import Layout, build_text
from .btf import BTF_PATH, Btf
from .errors import BtfError, CaptureError, HeadersError, PrivilegeError, UnsupportedKernelError
from .events import DropEvent, RawEvent, StackFrame, decode_event
from .filters import Filters
from .kallsyms import Kallsyms, Symbol
from .reasons import ReasonTable
from .tpformat import TracepointFormat, read_format

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


def read_build_id(notes: bytes) -> str | None:
    """The GNU build id from the raw ELF note section (as in /sys/kernel/notes)."""
    pos = 0
    while pos + 12 <= len(notes):
        namesz, descsz, ntype = (int.from_bytes(notes[pos + i : pos + i + 4], "little") for i in (0, 4, 8))
        name_start = pos + 12
        desc_start = name_start + ((namesz + 3) & ~3)
        name = notes[name_start : name_start + namesz].rstrip(b"\0")
        if ntype == 3 and name == b"GNU":
            return notes[desc_start : desc_start + descsz].hex()
        pos = desc_start + ((descsz + 3) & ~3)
        if namesz == 0 and descsz == 0:
            break
    return None


def kernel_info(ksyms: Kallsyms | None = None) -> KernelInfo:
    """Release, build id (from /sys/kernel/notes) and the KASLR slide of the running kernel."""
    try:
        build_id = read_build_id(Path("/sys/kernel/notes").read_bytes())
    except OSError:
        build_id = None
    text = ksyms.address("_text") if ksyms is not None else None
    return KernelInfo(os.uname().release, build_id, text, (text - _DEFAULT_TEXT) if text else None)


@dataclass(frozen=True)
class CaptureStats:
    """Counters kept by the BPF program (all CPUs) and by user space."""

    #: Every ``skb:kfree_skb`` hit, before filters.
    hits: int
    #: Hits rejected by the in-kernel filters.
    filtered: int
    #: Records written to the ring/perf buffer.
    emitted: int
    #: Records the kernel could not write (buffer full) plus those perf reported lost.
    lost: int
    #: Events handed to the caller (after the user-space filters).
    delivered: int


class Capture:
    """One attached dropcapture program; iterate :meth:`events` to receive :class:`DropEvent` s.

    :param filters: which drops to keep (checked in the kernel where possible).
    :param ringbuf: use a BPF ring buffer (default on kernels that have one) instead of perf buffers.
    :param annotate: optional ``Symbol -> tuple[str, ...]`` adding file:line text to stack frames
        (see :func:`dropcapture.symbolize.ksym_annotator`).
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
        annotate: Callable[[Symbol], tuple[str, ...]] | None = None,
    ) -> None:
        self.filters = filters or Filters()
        self._ringbuf = ringbuf
        self._ringbuf_pages = ringbuf_pages
        self._perf_pages = perf_pages
        self._stack_entries = stack_entries
        self._wakeup_every = max(1, wakeup_every)
        self._annotate = annotate
        self._prog: BccProgram | None = None
        self._pending: list[DropEvent] = []
        self._stack_cache: dict[int, tuple[StackFrame, ...]] = {}
        self._sym_cache: dict[int, Symbol | None] = {}
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
        layout = Layout.from_kernel(self.format, self.btf)
        if self._ringbuf is None:
            self._ringbuf = _has_ringbuf(self.btf)
        self.text = build_text(
            layout,
            self.filters,
            ringbuf=self._ringbuf,
            ringbuf_pages=self._ringbuf_pages,
            stack_entries=self._stack_entries,
            wakeup_every=self._wakeup_every,
        )
        return self.text

    def open(self) -> Capture:
        """Check the environment, compile, load and attach. Idempotent.

        :raises CaptureError: with a one-line message naming the fix.
        """
        if self._prog is not None:
            return self
        import_bcc()
        check_privileges()
        self.prepare()
        check_headers()
        self.ksyms = Kallsyms.load()
        if not self.ksyms.usable:
            raise PrivilegeError("/proc/kallsyms shows no addresses (kptr_restrict): run as root")
        self.kernel = kernel_info(self.ksyms)
        if not os.path.exists("/proc/sys/kernel/bpf_stats_enabled") and not os.path.exists("/sys/fs/bpf"):
            raise UnsupportedKernelError("this kernel has no BPF support (CONFIG_BPF_SYSCALL)")
        self._clock_offset = time.time() - time.monotonic()
        self._prog = BccProgram(self.text, ringbuf=bool(self._ringbuf))
        self._prog.open_output(self._on_record, self._perf_pages)
        return self

    def __enter__(self) -> Capture:  # noqa: PYI034 - typing.Self needs 3.11
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Detach and free everything (safe to call twice); :meth:`stats` still answers."""
        if self._prog is not None:
            try:
                self._final_stats = self.stats()
            finally:
                self._prog.close()
                self._prog = None

    @property
    def ringbuf(self) -> bool:
        return bool(self._ringbuf)

    # -- events ----------------------------------------------------------------------------------

    def _reason_name(self, value: int) -> str:
        name = self._reason_cache.get(value)
        if name is None:
            name = self._reason_cache[value] = self.reasons.name(value)
        return name

    def _symbol(self, addr: int) -> Symbol | None:
        if addr not in self._sym_cache:
            self._sym_cache[addr] = self.ksyms.lookup(addr) if self.ksyms else None
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

    def _on_record(self, data: Any) -> None:
        buf = ctypes.string_at(data, _RAW_SIZE)
        location, reason, stack_id = _PEEK.unpack_from(buf, _PEEK_OFF)
        ev = decode_event(
            buf,
            reason_name=self._reason_name(reason),
            clock_offset=self._clock_offset,
            location_symbol=self._symbol(location),
            stack=self._stack(stack_id),
        )
        if self.filters.matches(ev):
            self._pending.append(ev)

    def poll(self, timeout: float = 0.1) -> list[DropEvent]:
        """Wait up to ``timeout`` seconds and return the drops that arrived."""
        if self._prog is None:
            raise CaptureError("the capture is not open")
        self._prog.poll(max(0, int(timeout * 1000)))
        out, self._pending = self._pending, []
        self._delivered += len(out)
        return out

    def events(
        self,
        *,
        count: int | None = None,
        duration: float | None = None,
        poll_timeout: float = 0.1,
        stop: Callable[[], bool] | None = None,
    ) -> Iterator[DropEvent]:
        """Yield drops until ``count`` events, ``duration`` seconds, or ``stop()`` returns True."""
        self.open()
        deadline = time.monotonic() + duration if duration is not None else None
        seen = 0
        while True:
            if stop is not None and stop():
                return
            timeout = poll_timeout
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                timeout = min(timeout, left)
            for ev in self.poll(timeout):
                yield ev
                seen += 1
                if count is not None and seen >= count:
                    return

    def __iter__(self) -> Iterator[DropEvent]:
        return self.events()

    def stats(self) -> CaptureStats:
        """Counters so far (after :meth:`close`: the final ones)."""
        if self._prog is None:
            if self._final_stats is not None:
                return self._final_stats
            return CaptureStats(0, 0, 0, 0, self._delivered)
        hits, emitted, lost, filtered = self._prog.stats()
        return CaptureStats(hits, filtered, emitted, lost + self._prog.lost_perf, self._delivered)


_RAW_SIZE = ctypes.sizeof(RawEvent)
# location (u64) at offset 16, then pid, tid, cpu (u32), reason (u32) at 36, stack_id (s32) at 40
_PEEK = struct.Struct("@Q12xIi")
_PEEK_OFF = RawEvent.location.offset
assert RawEvent.reason.offset == _PEEK_OFF + 20 and RawEvent.stack_id.offset == _PEEK_OFF + 24


def _has_ringbuf(btf: Btf) -> bool:
    # BPF_MAP_TYPE_RINGBUF exists since 5.8; its kernel struct is a cheap witness in BTF
    try:
        btf.struct("bpf_ringbuf")
        return True
    except CaptureError:
        return False
