"""A BPF ring buffer read directly through its memory mapping, many records per call.

libbpf's ``ring_buffer__poll`` (what bcc's ``ring_buffer_poll`` runs) calls back into Python once per
record through ctypes. Here the consumer maps the ring like libbpf does (the consumer position page
read-write, the producer position page and the data pages read-only, the data mapped twice so a
record that wraps around is contiguous), copies the span between the two positions with one
``ctypes.string_at`` and splits it into records in Python; no call per record crosses into C.

The layout (kernel/bpf/ringbuf.c, include/uapi/linux/bpf.h): each record starts with an 8-byte header,
a ``u32`` length whose bit 31 says "still being written" (BUSY) and bit 30 "discarded", and a ``u32``
page offset; the record's data follows, and the next header is at the next multiple of 8.

Python has no acquire loads or release stores; plain loads and stores have those semantics only on
x86-64 (TSO), so :data:`SUPPORTED` is False elsewhere and the capture then uses bcc's consumer.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import select
import struct

__all__ = ["SUPPORTED", "RingReader"]

#: The machine orders plain loads and stores as the ring's protocol needs (x86-64).
SUPPORTED = platform.machine().lower() in ("x86_64", "amd64")

_BUSY = 1 << 31
_DISCARD = 1 << 30
_HDR = 8
_LEN = struct.Struct("<I")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


def _map(length: int, prot: int, fd: int, offset: int) -> int:
    addr = _libc.mmap(None, length, prot, mmap.MAP_SHARED, fd, offset)
    if addr is None or addr == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap of the ring buffer: {os.strerror(err)}")
    return int(addr)


class RingReader:
    """Consumer of one BPF ring buffer map (``fd``, ``size`` data bytes, a power of two of pages,
    records of at most ``record_max`` bytes).

    :meth:`read` returns the records' bytes (only the data, without the header) and advances the
    consumer position past them, so the kernel may reuse the space at once.
    """

    def __init__(self, fd: int, size: int, record_max: int) -> None:
        page = mmap.PAGESIZE
        if size <= 0 or size & (size - 1) or size % page:
            raise ValueError(f"ring buffer size {size} is not a power of two of pages")
        self._page = page
        self.size = size
        self._mask = size - 1
        # the most bytes one record (header, data, padding) takes: bounds the copy of one read
        self._record_max = (_HDR + record_max + 7) & ~7
        self._cons_addr = 0
        self._prod_addr = 0
        self._cons_addr = _map(page, mmap.PROT_READ | mmap.PROT_WRITE, fd, 0)
        try:
            self._prod_addr = _map(page + 2 * size, mmap.PROT_READ, fd, page)
        except OSError:
            self.close()
            raise
        self._data = self._prod_addr + page
        self._cons = ctypes.c_uint64.from_address(self._cons_addr)
        self._prod = ctypes.c_uint64.from_address(self._prod_addr)
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    def pending(self) -> bool:
        """True when records (possibly still being written) are in the ring."""
        return bool(self._cons_addr) and self._cons.value < self._prod.value

    def wait(self, timeout_ms: int) -> None:
        """Return when records are there, or after ``timeout_ms`` (the kernel wakes the poll only on
        some records: the program asks for a wake-up on every n-th one)."""
        if not self.pending() and timeout_ms > 0:
            self._poll.poll(timeout_ms)

    def read(self, limit: int) -> list[bytes]:
        """Take up to ``limit`` committed records, in order; stop at the first one still being written."""
        if not self._cons_addr:
            return []
        cons = self._cons.value
        prod = self._prod.value
        if cons >= prod:
            return []
        # never beyond one ring (a sane kernel keeps prod - cons <= size), nor beyond ``limit`` records
        span = min(prod - cons, self.size, limit * self._record_max)
        start = self._data + (cons & self._mask)
        # first pass: the headers, to find how far the records are committed; the data is copied
        # again afterwards, so every byte taken was read after its record's commit was seen
        first = ctypes.string_at(start, span)
        unpack = _LEN.unpack_from
        offsets: list[tuple[int, int]] = []
        pos = 0
        while pos + _HDR <= span and len(offsets) < limit:
            (word,) = unpack(first, pos)
            if word & _BUSY:
                break
            length = word & ~(_BUSY | _DISCARD)
            end = pos + _HDR + length
            if end > span:
                break
            if not word & _DISCARD:
                offsets.append((pos + _HDR, end))
            pos = (end + 7) & ~7
        if not pos:
            return []
        data = ctypes.string_at(start, pos)
        self._cons.value = cons + pos
        return [data[a:b] for a, b in offsets]

    def close(self) -> None:
        """Unmap the ring (idempotent)."""
        if self._prod_addr:
            _libc.munmap(self._prod_addr, self._page + 2 * self.size)
            self._prod_addr = 0
        if self._cons_addr:
            _libc.munmap(self._cons_addr, self._page)
            self._cons_addr = 0
