"""Everything that touches bcc, which has no type information, isolated behind a typed surface.

bcc is imported lazily (on :func:`import_bcc`), so ``dropcapture --help``, the offline parts and the
unit tests work without it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable, Iterator
from typing import Any

from .errors import BccMissingError, CaptureError, HeadersError, PrivilegeError

__all__ = ["BccProgram", "import_bcc"]

_BCC_HINT = (
    "install it with 'apt-get install python3-bpfcc' (Debian/Ubuntu; it serves /usr/bin/python3, so use "
    "that interpreter or a venv created with --system-site-packages), or run tools/dropcapture-setup.sh"
)


def import_bcc() -> Any:
    """The ``bcc`` module.

    :raises BccMissingError: bcc is not installed for this interpreter.
    """
    try:
        import bcc
    except ImportError as exc:
        raise BccMissingError(f"the bcc Python module is missing ({exc}): {_BCC_HINT}") from exc
    except OSError as exc:  # libbcc.so missing or broken
        raise BccMissingError(f"bcc cannot load libbcc ({exc}): {_BCC_HINT}") from exc
    return bcc


def _classify(exc: BaseException, what: str) -> CaptureError:
    text = str(exc)
    low = text.lower()
    if "permission denied" in low or "operation not permitted" in low or "eperm" in low:
        return PrivilegeError(
            f"{what}: {text.strip()} - run as root (or with CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN)"
        )
    return CaptureError(f"{what}: {text.strip()}")


class BccProgram:
    """A compiled and attached dropcapture program."""

    def __init__(self, text: str, *, ringbuf: bool) -> None:
        bcc = import_bcc()
        self.ringbuf = ringbuf
        self._attached = False
        try:
            self._b: Any = bcc.BPF(text=text.encode(), cflags=["-w"])
        except Exception as exc:  # bcc raises bare Exception
            low = str(exc).lower()
            if "compile" in low:
                raise HeadersError(
                    "bcc could not compile the BPF program (compiler messages above): the kernel headers "
                    f"it uses ({_headers_dir()}) are missing or unusable - run tools/dropcapture-setup.sh "
                    "or install linux-headers-$(uname -r)"
                ) from exc
            raise _classify(exc, "cannot load the BPF program") from exc
        try:
            self._b.attach_tracepoint(tp=b"skb:kfree_skb", fn_name=b"dc_kfree_skb")
            self._attached = True
        except Exception as exc:
            self.close()
            raise _classify(exc, "cannot attach to the skb:kfree_skb tracepoint") from exc

    def open_output(self, callback: Callable[[RawPointer], int], pages: int) -> None:
        """Route records to ``callback(pointer_to_record)``.

        In ring buffer mode a negative return value ends the current :meth:`poll`/:meth:`consume`
        after that record (libbpf stops consuming), which bounds the work of one call; perf buffers
        ignore it (bcc's perf reader empties each CPU's buffer).
        """

        def _cb(_ctx: Any, data: Any, _size: Any) -> int:
            return callback(data)

        def _cb_perf(_cpu: Any, data: Any, _size: Any) -> None:
            callback(data)

        def _lost(_count: Any) -> None:
            # Not counted here: the program counts every failed perf_submit itself (the one source
            # of "lost"), and perf's lost records report the same samples again, late or never.
            # The callback only keeps bcc from printing "Possibly lost N samples".
            return None

        table = self._b[b"dc_events"]
        if self.ringbuf:
            table.open_ring_buffer(_cb)
        else:
            table.open_perf_buffer(_cb_perf, page_cnt=pages, lost_cb=_lost)

    def ring_map(self) -> tuple[int, int]:
        """The ring buffer map's file descriptor and its data size in bytes (ring buffer mode)."""
        table = self._b[b"dc_events"]
        return int(table.map_fd), int(table.max_entries)

    def poll(self, timeout_ms: int) -> None:
        """Wait up to ``timeout_ms`` for a wake-up, then read what is there."""
        if self.ringbuf:
            self._b.ring_buffer_poll(timeout_ms)
        else:
            self._b.perf_buffer_poll(timeout_ms)

    def consume(self) -> None:
        """Read what is in the buffers now, without waiting (records whose wake-up was batched)."""
        if self.ringbuf:
            self._b.ring_buffer_consume()
        else:
            self._b.perf_buffer_consume()

    def detach(self) -> None:
        """Detach the tracepoint: no new records; the maps and buffers stay readable until :meth:`close`."""
        if self._attached:
            self._attached = False
            with contextlib.suppress(Exception):  # bcc raises bare Exception when already detached
                self._b.detach_tracepoint(tp=b"skb:kfree_skb")

    def stack(self, stack_id: int) -> list[int]:
        """Return addresses of one kernel stack from the stack map."""
        try:
            return [int(a) for a in self._b[b"dc_stacks"].walk(stack_id)]
        except KeyError:
            return []

    def stats(self) -> list[int]:
        """Per-CPU counters summed: hits, emitted, lost, filtered."""
        table = self._b[b"dc_stats"]
        out = []
        for i in range(4):
            vals: Iterator[Any] = iter(table[ctypes.c_int(i)])
            out.append(sum(int(v) for v in vals))
        return out

    def close(self) -> None:
        """Detach the tracepoint and free the program and maps."""
        b = getattr(self, "_b", None)
        if b is None:
            return
        self.detach()
        self._b = None
        b.cleanup()


RawPointer = Any


def _headers_dir() -> str:
    return os.environ.get("BCC_KERNEL_SOURCE") or f"/lib/modules/{os.uname().release}/build"
