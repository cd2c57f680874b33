"""The CRC-32 of large buffers, where a run spends its time on it: a kernel's symbol table (8.4 MB for
the Debian 6.1 vmlinux) is checked every time a portable index file is opened and every time a run maps
the on-disk index's symbols file, and zlib's CRC-32 over it takes about 3 ms of a one-frame run of 35 ms.

:func:`crc32` is ISA-L's CRC-32 (python-isal: SIMD on x86-64 and arm64, about 0.4 ms for those 8.4 MB,
and about 1 ms to import) when that package is installed, else zlib's. Both compute the same CRC-32
(the one of zlib, gzip and PNG), so every file reads and writes the same either way; buffers smaller
than :data:`LARGE` always take zlib's, which costs less than the import.
"""

from __future__ import annotations

import zlib
from typing import Any

__all__ = ["LARGE", "crc32"]

#: From this many bytes on, ISA-L's CRC-32 (with its import) costs less than zlib's.
LARGE = 2 << 20


def crc32(data: Any) -> int:
    """The CRC-32 of ``data`` (bytes, or a byte view such as one of a mapped file), as :func:`zlib.crc32`."""
    if len(data) >= LARGE:
        try:
            from isal.isal_zlib import crc32 as isal_crc32
        except ImportError:
            pass
        else:
            return int(isal_crc32(data))
    return zlib.crc32(data)
