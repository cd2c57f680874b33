"""Compressed debug sections and compressed files: zlib and Zstandard, read transparently.

Three kinds of compression reach ksym:

- **SHF_COMPRESSED sections** (the ELF gABI format, ``objcopy --compress-debug-sections=zlib|zstd``,
  ``gcc -gz=zstd``, kernels built with ``CONFIG_DEBUG_INFO_COMPRESSED_{ZLIB,ZSTD}``): an ``Elf64_Chdr``
  (``ch_type``, ``ch_reserved``, ``ch_size``, ``ch_addralign``; 24 bytes) or ``Elf32_Chdr`` (``ch_type``,
  ``ch_size``, ``ch_addralign``; 12 bytes) in the file's byte order, then the stream.
  ``ch_type`` 1 is zlib (``ELFCOMPRESS_ZLIB``), 2 is Zstandard (``ELFCOMPRESS_ZSTD``).
- **legacy GNU ``.zdebug_*`` sections** (``objcopy --compress-debug-sections=zlib-gnu``): ``"ZLIB"``, the
  uncompressed size as 8 big-endian bytes, then a zlib stream. A ``.zdebug_*`` section without that
  magic is used as it is, as binutils does.
- **whole files**: ``.ko.zst`` modules (and ``.ko.xz``/``.ko.gz``, which the standard library handles).

zlib is in the standard library. Zstandard is ``compression.zstd`` from Python 3.14 on; before that, the
``zstandard`` package (a dependency of ksym; ``pip install 'ksym[zstd]'`` where it was left out). Without either, a Zstandard section or file is a
one-line :class:`~ksym.errors.BadFileError` naming what to install. Corrupt or truncated data, a wrong
``ch_size`` and unknown ``ch_type`` values are one-line :class:`BadFileError` too.

    >>> from ksym.compress import decompress_section
    >>> data = decompress_section(raw_section, little_endian=True, elfclass=64, where="vmlinux: .debug_info")
"""

from __future__ import annotations

import importlib
import struct
import zlib
from collections.abc import Callable, Iterable
from typing import Any

from .errors import BadFileError

__all__ = [
    "ELFCOMPRESS_ZLIB",
    "ELFCOMPRESS_ZSTD",
    "SHF_COMPRESSED",
    "ZSTD_INSTALL_HINT",
    "ZSTD_MAGIC",
    "SectionContents",
    "decompress_gnu_zdebug",
    "decompress_section",
    "zstd_available",
    "zstd_decompress",
]

ELFCOMPRESS_ZLIB = 1
ELFCOMPRESS_ZSTD = 2
#: The first four bytes of a Zstandard frame.
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: What to install when no Zstandard decompressor is importable.
ZSTD_INSTALL_HINT = "pip install 'ksym[zstd]' for the zstandard package, or use Python 3.14+"

_CHDR64 = struct.Struct("IIQQ")  # ch_type, ch_reserved, ch_size, ch_addralign (byte order added below)
_CHDR32 = struct.Struct("III")  # ch_type, ch_size, ch_addralign


class _Corrupt(Exception):
    """A decompressor rejected the data (message: its reason)."""


def _zstd_backend() -> Callable[[bytes], bytes] | None:
    """A function decompressing every Zstandard frame of its input, or None when no module is importable.

    Looked up on every call (an import is a dict lookup once done), so a test can block the modules."""
    try:
        stdlib = importlib.import_module("compression.zstd")
    except ImportError:
        stdlib = None
    if stdlib is not None:
        error = stdlib.ZstdError

        def with_stdlib(data: bytes) -> bytes:
            try:
                out: bytes = stdlib.decompress(data)
            except (error, ValueError, EOFError) as exc:
                raise _Corrupt(str(exc) or type(exc).__name__) from None
            return out

        return with_stdlib
    try:
        zstandard = importlib.import_module("zstandard")
    except ImportError:
        return None

    def with_zstandard(data: bytes) -> bytes:
        # decompressobj() handles frames without a content size; one object per frame, as the zstd CLI
        # accepts concatenated frames
        dctx = zstandard.ZstdDecompressor()
        parts: list[bytes] = []
        rest = data
        try:
            while rest:
                dobj = dctx.decompressobj()
                parts.append(dobj.decompress(rest))
                if not dobj.eof:
                    raise _Corrupt("the data ends inside a Zstandard frame (truncated)")
                rest = dobj.unused_data
        except zstandard.ZstdError as exc:
            raise _Corrupt(str(exc)) from None
        return b"".join(parts)

    return with_zstandard


def zstd_available() -> bool:
    """Whether a Zstandard decompressor (``compression.zstd`` or ``zstandard``) can be imported."""
    return _zstd_backend() is not None


def zstd_decompress(data: bytes | memoryview, where: str, hint: str = "") -> bytes:
    """Decompress Zstandard data (one frame or several, concatenated).

    :param where: the message prefix, e.g. ``"nft_ct.ko.zst"`` or ``"vmlinux: .debug_info"``.
    :param hint: added to the no-decompressor message (e.g. ``"or unzstd the file first"``).
    :raises BadFileError: corrupt or truncated data, or no decompressor importable (one line each).
    """
    backend = _zstd_backend()
    if backend is None:
        extra = f", or {hint}" if hint else ""
        raise BadFileError(f"{where}: zstd-compressed, but no Zstandard decompressor is installed "
                           f"({ZSTD_INSTALL_HINT}{extra})")
    try:
        return backend(bytes(data))
    except _Corrupt as exc:
        raise BadFileError(f"{where}: corrupt zstd data: {exc}") from None


def _zlib_decompress(data: bytes | memoryview, where: str) -> bytes:
    dobj = zlib.decompressobj()
    try:
        out = dobj.decompress(data)
    except zlib.error as exc:
        raise BadFileError(f"{where}: corrupt zlib data: {exc}") from None
    if not dobj.eof:
        raise BadFileError(f"{where}: corrupt zlib data: the stream is truncated")
    return out


def decompress_section(raw: bytes | memoryview, little_endian: bool, elfclass: int, where: str) -> bytes:
    """The contents of an SHF_COMPRESSED section, given its raw bytes (compression header included).

    :raises BadFileError: a header cut short, an unknown ``ch_type``, corrupt data, a size other than
        ``ch_size``, or Zstandard without a decompressor.
    """
    e = "<" if little_endian else ">"
    hdr = struct.Struct(e + (_CHDR64 if elfclass == 64 else _CHDR32).format)
    if len(raw) < hdr.size:
        raise BadFileError(f"{where}: compressed section shorter than its {hdr.size}-byte compression header")
    if elfclass == 64:
        ch_type, _reserved, ch_size, _align = hdr.unpack_from(raw, 0)
    else:
        ch_type, ch_size, _align = hdr.unpack_from(raw, 0)
    body = raw[hdr.size:]
    if ch_type == ELFCOMPRESS_ZLIB:
        out = _zlib_decompress(body, where)
    elif ch_type == ELFCOMPRESS_ZSTD:
        out = zstd_decompress(body, where)
    else:
        raise BadFileError(f"{where}: unknown compression type {ch_type} (ch_type: 1 is zlib, 2 is zstd)")
    if len(out) != ch_size:
        raise BadFileError(f"{where}: corrupt compressed section: {len(out)} bytes decompressed, "
                           f"the header says {ch_size}")
    return out


def decompress_gnu_zdebug(raw: bytes | memoryview, where: str) -> bytes | memoryview:
    """The contents of a legacy ``.zdebug_*`` section: ``"ZLIB"`` + 8-byte big-endian size + zlib stream.

    Without the ``"ZLIB"`` magic the section is returned unchanged (binutils reads it as uncompressed).
    """
    if bytes(raw[:4]) != b"ZLIB":
        return raw
    if len(raw) < 12:
        raise BadFileError(f"{where}: .zdebug section shorter than its 12-byte header")
    (size,) = struct.unpack_from(">Q", raw, 4)
    out = _zlib_decompress(raw[12:], where)
    if len(out) != size:
        raise BadFileError(f"{where}: corrupt compressed section: {len(out)} bytes decompressed, "
                           f"the header says {size}")
    return out


#: ELF section flag: the section starts with a compression header (Elf32_Chdr/Elf64_Chdr).
SHF_COMPRESSED = 0x800


class SectionContents:
    """The contents of one image's sections, each compressed one (``SHF_COMPRESSED`` zlib/zstd, or a
    legacy ``.zdebug_*``) decompressed once and kept; a plain one is a slice of ``data`` (no copy).

    ``sections`` are records with ``index``, ``name``, ``flags``, ``offset`` and ``size``;
    ``path`` names the file in error messages."""

    def __init__(self, data: bytes | memoryview, sections: Iterable[Any], little_endian: bool, elfclass: int,
                 path: object) -> None:
        self.data = data
        self.by_name = {s.name: s for s in sections}
        self.little_endian = little_endian
        self.elfclass = elfclass
        self.path = path
        self._inflated: dict[int, bytes] = {}

    def find(self, name: str) -> Any:
        """The section called ``name``; for ``.debug_X`` a legacy ``.zdebug_X`` answers too."""
        s = self.by_name.get(name)
        if s is None and name.startswith(".debug_"):
            s = self.by_name.get(".z" + name[1:])
        return s

    def of(self, s: Any) -> bytes | memoryview:
        """The contents of section ``s``, decompressed if needed.

        :raises BadFileError: corrupt compressed data, or zstd without a decompressor."""
        raw = self.data[s.offset : s.offset + s.size]
        zdebug = s.name.startswith(".zdebug_")
        if not s.flags & SHF_COMPRESSED and not zdebug:
            return raw
        got = self._inflated.get(s.index)
        if got is None:
            where = f"{self.path}: cannot decompress {s.name}"
            if s.flags & SHF_COMPRESSED:
                got = decompress_section(raw, self.little_endian, self.elfclass, where)
            else:
                got = bytes(decompress_gnu_zdebug(raw, where))
            self._inflated[s.index] = got
        return got

    def clear(self) -> None:
        self._inflated.clear()
