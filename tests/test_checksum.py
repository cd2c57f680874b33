"""``ksym.checksum.crc32`` is zlib's CRC-32, computed by ISA-L for large buffers when python-isal is
installed (a dependency on the machines it has wheels for) and by zlib otherwise: on the symbol table of a
real portable index file (mapped, as the reader checks it), on pieces of it below and above the size
where ISA-L takes over, and in a process where isal cannot be imported."""

from __future__ import annotations

import mmap
import platform
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from anchors import REPO_ROOT

from ksym.checksum import LARGE, crc32
from ksym.portable import BlockKind, PortableFile

#: what pyproject.toml's marker installs isal on
ISAL_MACHINES = {"x86_64", "AMD64", "aarch64", "arm64"}


def _symbol_block(index: Path) -> tuple[bytes, int]:
    """The symbol table block of the file, and the CRC-32 its block table states."""
    with PortableFile(index) as pf:
        b = pf.header.blocks[BlockKind.SYMBOLS]
        return pf._mm[b.offset : b.offset + b.length], b.crc


def test_the_crc_of_a_mapped_symbol_table_and_of_its_pieces_is_zlibs(portable_index: Path) -> None:
    data, stated = _symbol_block(portable_index)
    assert len(data) > 2 * LARGE  # a kernel's table is above the size where ISA-L takes over
    with open(portable_index, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)
        start = mm.find(data[:64])
        assert start > 0
        try:
            whole = view[start : start + len(data)]
            assert crc32(whole) == zlib.crc32(data) == stated
            for size in (0, 1, 4095, LARGE - 1, LARGE, LARGE + 1, len(data) - 3):
                piece = view[start + 3 : start + 3 + size]
                assert crc32(piece) == zlib.crc32(piece), size
                assert crc32(bytes(piece)) == zlib.crc32(piece), size
                piece.release()
            whole.release()
        finally:
            view.release()


def _in_a_process(code: str) -> str:
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120,
                         env={"PYTHONPATH": str(REPO_ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert got.returncode == 0, got.stderr
    return got.stdout.strip()


PROBE = """
import sys, zlib
{before}
from ksym.checksum import LARGE, crc32
data = bytes(range(256)) * (2 * LARGE // 256 + 7)
small = data[:LARGE - 1]
print(crc32(data) == zlib.crc32(data), crc32(small) == zlib.crc32(small), "isal.isal_zlib" in sys.modules)
"""


@pytest.mark.skipif(platform.machine() not in ISAL_MACHINES, reason="python-isal is installed only where it has wheels")
def test_isal_computes_the_large_ones_where_it_is_installed() -> None:
    assert _in_a_process(PROBE.format(before="")) == "True True True"


def test_without_isal_zlib_computes_them_all() -> None:
    # an entry of None in sys.modules makes "import isal" raise ImportError, as when it is not installed
    assert _in_a_process(PROBE.format(before="sys.modules['isal'] = None")) == "True True False"
