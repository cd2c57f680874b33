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
        self._lost_perf = 0
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
        except Exception as exc:
            self.close()
            raise _classify(exc, "cannot attach to the skb:kfree_skb tracepoint") from exc

    def open_output(self, callback: Callable[[RawPointer], None], perf_pages: int) -> None:
        """Route events to ``callback(pointer_to_record)``."""

        def _cb(_ctx: Any, data: Any, _size: Any) -> None:
            callback(data)

        def _cb_perf(_cpu: Any, data: Any, _size: Any) -> None:
            callback(data)

        def _lost(count: Any) -> None:
            self._lost_perf += int(count)

        table = self._b[b"dc_events"]
        if self.ringbuf:
            table.open_ring_buffer(_cb)
        else:
            table.open_perf_buffer(_cb_perf, page_cnt=perf_pages, lost_cb=_lost)

    def poll(self, timeout_ms: int) -> None:
        """Wait up to ``timeout_ms`` for events and deliver all pending ones."""
        if self.ringbuf:
            self._b.ring_buffer_poll(timeout_ms)
            self._b.ring_buffer_consume()
        else:
            self._b.perf_buffer_poll(timeout_ms)

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

    @property
    def lost_perf(self) -> int:
        """Records the perf buffer reported lost (perf mode only)."""
        return self._lost_perf

    def close(self) -> None:
        """Detach the tracepoint and free the program and maps."""
        b = getattr(self, "_b", None)
        if b is None:
            return
        self._b = None
        with contextlib.suppress(Exception):  # bcc raises bare Exception when already detached
            b.detach_tracepoint(tp=b"skb:kfree_skb")
        b.cleanup()


RawPointer = Any


def _headers_dir() -> str:
    return os.environ.get("BCC_KERNEL_SOURCE") or f"/lib/modules/{os.uname().release}/build"
