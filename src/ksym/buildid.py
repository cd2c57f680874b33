"""GNU build ids: the one place ksym and dropcapture read, normalise and compare them.

A build id is the hash the linker writes into an ELF note (owner ``GNU``, type ``NT_GNU_BUILD_ID``): the
kernel's is in the vmlinux's ``.notes`` section and, for the running kernel, in ``/sys/kernel/notes``
(the same raw note block); a module's is in its ``.note.gnu.build-id`` section. Debug files are found
by it (``.build-id`` trees, debuginfod; :mod:`ksym.debuginfo`), a vmlinux is checked against the dump's
or the running kernel's with it (:mod:`ksym.locate`), and dumps print it (``Build ID: <hex>``).

This module reads note blocks (:func:`read_build_id_from_notes`), the running kernel's build id
(:func:`running_build_id`), the kernel's build id printed in a dump (:func:`kernel_build_id_in_text`),
normalises a build id a user typed (:func:`normalize_build_id`) and compares two
(:func:`same_build_id`). It opens no ELF file itself: :attr:`ksym.image.KernelImage.build_id` hands it
the note sections, :func:`ksym.debuginfo.file_build_id` gives the build id of a file by path.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator

from .records import NamedTuple

__all__ = [
    "KERNEL_NOTES_PATH",
    "NT_GNU_BUILD_ID",
    "ElfNote",
    "elf_notes",
    "kernel_build_id_in_text",
    "normalize_build_id",
    "read_build_id_from_notes",
    "running_build_id",
    "same_build_id",
]

#: The note type of a build id (owner ``GNU``); other owners use 3 for other things (Xen's notes in a
#: vmlinux do).
NT_GNU_BUILD_ID = 3
#: The running kernel's ELF notes, as the raw note block of its vmlinux's ``.notes`` section.
KERNEL_NOTES_PATH = "/sys/kernel/notes"

_HEX = re.compile(r"^[0-9a-f]{8,128}$")


class ElfNote(NamedTuple):
    """One ELF note: its owner (``b"GNU"``, ``b"Xen"``, ``b"Linux"``; trailing NULs removed), type and
    descriptor bytes."""

    owner: bytes
    type: int
    desc: bytes


def elf_notes(data: bytes | memoryview, little_endian: bool = True) -> Iterator[ElfNote]:
    """The notes of a block of ELF notes (the contents of a ``SHT_NOTE`` section or ``PT_NOTE`` segment,
    or ``/sys/kernel/notes``), in order: each a 12-byte header (name size, descriptor size, type) and
    the name and descriptor, each padded to 4 bytes. A header cut short ends the block."""
    e = "<" if little_endian else ">"
    pos = 0
    while pos + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from(e + "III", data, pos)
        pos += 12
        name = bytes(data[pos : pos + namesz])
        pos += (namesz + 3) & ~3
        desc = bytes(data[pos : pos + descsz])
        pos += (descsz + 3) & ~3
        yield ElfNote(name.rstrip(b"\0"), ntype, desc)


def read_build_id_from_notes(data: bytes | memoryview, little_endian: bool = True) -> str | None:
    """The GNU build id (lower-case hex) in a block of ELF notes, or None when it holds none."""
    for note in elf_notes(data, little_endian):
        if note.type == NT_GNU_BUILD_ID and note.owner == b"GNU":
            return note.desc.hex()
    return None


def running_build_id(notes_path: str = KERNEL_NOTES_PATH) -> str | None:
    """The running kernel's build id, from ``/sys/kernel/notes``; None when it cannot be read or holds
    none."""
    try:
        with open(notes_path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return read_build_id_from_notes(data)


def normalize_build_id(text: str) -> str:
    """Lower-case hex without separators (``0x``, ``:`` and ``-`` removed); :class:`ValueError` for
    anything else."""
    bid = text.strip().lower().replace(":", "").replace("-", "")
    bid = bid.removeprefix("0x")
    if not _HEX.match(bid) or len(bid) % 2:
        raise ValueError(f"not a build id (an even number of hex digits, at least 8): {text!r}")
    return bid


def same_build_id(want: str, have: str) -> bool:
    """Whether a file with build id ``have`` is the one of build id ``want``: equal, or ``want`` a
    prefix of it (dumps may print a shortened id), case ignored."""
    w, h = want.lower(), have.lower()
    return h == w or (len(w) < len(h) and h.startswith(w))


_TEXT_BUILD_ID = re.compile(
    r"(?:^|[\s#])(?:build[-_ ]?id|buildid)(?:\[\w+\])?\s*[:=]\s*\"?(?:0x)?(?P<bid>[0-9a-fA-F]{16,128})\b",
    re.IGNORECASE | re.MULTILINE,
)
_BUILD_WORD = re.compile(r"build[-_ ]?id", re.IGNORECASE)
_JSON_BUILD_ID = re.compile(r"\"build_id\"\s*:\s*\"(?P<bid>[0-9a-fA-F]{16,128})\"")


def kernel_build_id_in_text(text: str) -> str | None:
    """The kernel's build id named in a dump: a ``Build ID: <hex>``, ``# build-id: <hex>`` (dropcapture),
    ``BuildID[sha1]=<hex>`` (file(1)) or ``"build_id": "<hex>"`` line. Module build ids (``[mod <hex>]`` on
    frames) are not this: they belong to each module."""
    m = None
    # the pattern's leading ``(?:^|[\s#])`` makes a search try it at every character: find its words by
    # their letters, then match the pattern just before each
    for word in _BUILD_WORD.finditer(text):
        p = word.start()
        m = _TEXT_BUILD_ID.match(text, p - 1) if p else None
        if m is None and (p == 0 or text[p - 1] == "\n"):
            m = _TEXT_BUILD_ID.match(text, p)
        if m is not None:
            break
    if m is None:
        m = _JSON_BUILD_ID.search(text)
    return m.group("bid").lower() if m else None
