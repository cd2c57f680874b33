"""A damaged on-disk index (``$KSYM_CACHE_DIR``) is never answered from: on the Debian 6.1 vmlinux.

The index of the vmlinux is made warm by ``ksym resolve`` of real frames (their answers stored, their units
in a pack, the symbol table in the symbols file); then one byte of one file of it is flipped (seeded, several
places in each kind of file: the stored answers, the image record, a unit pack, the unit map, the path memo,
the symbols file; and in three of them a byte the output shows: a symbol's name, the path prefix, a
unit's file name), and the same frames and new ones (in
the same functions, and in functions not looked up before: they need the unit packs and the whole symbol
table) are resolved again by the real CLI. Its output and exit code must be those of a run with an empty
cache, and so must a run after it (the damaged file rebuilt).

A symbols file crafted with the right checksum but an index column pointing past the table is not a
defect of ksym (it was exit 70: an IndexError): the lookup that meets it deletes it and the run ends with
one line naming it (exit 4, as a damaged file does); the next run builds the table again and answers.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from anchors import REPO_ROOT

from ksym.index import IndexStore
from ksym.session import ImageRecord

pytestmark = pytest.mark.vmlinux

#: frames looked up while the cache is made warm (more than a few: the whole symbol table is built)
WARM = ["program_hpx_type0+0x6e", "__ip_local_out+0xde", "pci_bus_read_config_byte+0x10", "tcp_v4_rcv+0x100",
        "do_sys_openat2+0x40", "vfs_read+0x90"]
#: looked up after the damage: the warm ones (stored answers), others in the same functions (their units
#: from the packs) and in functions not looked up before (the symbol table)
RUN = [*WARM, "program_hpx_type0+0x20", "vfs_read+0x30", "tcp_v4_rcv+0x300", "vfs_write+0x50", "ksys_read+0x10",
       "schedule+0x20"]
#: each kind of file of the index: a glob under the cache directory
KINDS = {"answers": "index/*/answers.v*", "image record": "index/*/image.v*", "unit pack": "index/*/units-*.v*",
         "unit map": "index/*/units.v*", "path memo": "paths/*.v*", "symbols": "index/*/symbols.v*"}
PLACES = 4


def _ksym(vmlinux: Path, cache: Path, frames: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "KSYM_CACHE_DIR": str(cache)}
    for name in ("KSYM_STATS", "KSYM_DEBUG"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "ksym", "resolve", "--vmlinux", str(vmlinux), *frames],
                          check=False, capture_output=True, text=True, timeout=600, env=env)


def _outcome(got: subprocess.CompletedProcess[str]) -> tuple[int, str, str]:
    return got.returncode, got.stdout, got.stderr


def _one(cache: Path, pattern: str) -> Path:
    found = sorted(cache.glob(pattern))
    assert len(found) == 1, (pattern, found)
    return found[0]


@pytest.fixture(scope="module")
def warm(vmlinux: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[int, str, str]]:
    """A warm cache of the vmlinux, and the outcome of :data:`RUN` with an empty cache."""
    base = tmp_path_factory.mktemp("index-damage")
    want = _outcome(_ksym(vmlinux, base / "empty", RUN))
    assert want[0] == 0 and "pci-acpi.c:155" in want[1] and want[2] == "", want
    cache = base / "warm"
    assert _ksym(vmlinux, cache, WARM).returncode == 0
    for pattern in KINDS.values():
        _one(cache, pattern)
    return cache, want


def _places(data: bytes, kind: str, rng: random.Random) -> list[tuple[int, int]]:
    """(offset, bit mask) of each byte to damage in a file of ``kind``."""
    places = [(rng.randrange(len(data)), 1 << rng.randrange(8)) for _ in range(PLACES)]
    # and a byte that a run answering from the damaged file shows: in a name looked up after the
    # damage, in the path prefix faddr2line cuts, in a file name of a unit a new frame needs (its first and
    # last occurrence)
    aim = {"symbols": b"\0vfs_write\0", "image record": b"debian/build/build_amd64", "unit pack": b"pci-acpi.c"}
    if kind in aim:
        places += [(data.index(aim[kind]) + 4, 0x01), (data.rindex(aim[kind]) + 4, 0x01)]
    return places


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_damaged_index_file_is_never_answered_from(vmlinux: Path, warm: tuple[Path, tuple[int, str, str]],
                                                     tmp_path: Path, kind: str) -> None:
    cache0, want = warm
    rng = random.Random(f"index-damage-{kind}")
    good = _one(cache0, KINDS[kind]).read_bytes()
    for k, (offset, mask) in enumerate(_places(good, kind, rng)):
        cache = tmp_path / f"cache-{k}"
        shutil.copytree(cache0, cache)
        damaged = bytearray(good)
        damaged[offset] ^= mask
        _one(cache, KINDS[kind]).write_bytes(bytes(damaged))
        what = f"{kind}: byte {offset:#x} of {len(good):#x} ^ {mask:#x}"
        assert _outcome(_ksym(vmlinux, cache, RUN)) == want, what
        assert _outcome(_ksym(vmlinux, cache, RUN)) == want, f"{what}, the run after"


def test_a_symbols_file_pointing_past_its_table_is_no_internal_error(
        vmlinux: Path, warm: tuple[Path, tuple[int, str, str]], tmp_path: Path) -> None:
    """Every entry of the name-order column (what a lookup by name bisects) points past the table; the
    file's checksum in the image record is made to match (a file crafted so, not damaged by chance)."""
    cache0, want = warm
    cache = tmp_path / "cache"
    shutil.copytree(cache0, cache)
    symbols = _one(cache, KINDS["symbols"])
    good = symbols.read_bytes()
    data = bytearray(good)
    # the column table starts after the 8-byte magic and the byte-order byte: (offset, size) pairs; the
    # name order is the second column, of u32 entries
    off, size = struct.unpack_from("<QQ", data, 9 + 16)
    n = size // 4
    data[off : off + size] = struct.pack(f"={n}I", *[n + 1000] * n)
    symbols.write_bytes(bytes(data))
    if "symbols_crc" in ImageRecord._fields:  # the image record holds the file's CRC-32: made to match
        store = IndexStore(cache)
        key = symbols.parent.name
        rec = store.load_image(key)
        assert rec is not None
        store.save_image(key, rec._replace(symbols_size=len(data), symbols_crc=zlib.crc32(data)))
    got = _ksym(vmlinux, cache, RUN)
    assert got.returncode == 4, _outcome(got)
    assert got.stderr.count("\n") == 1 and str(symbols) in got.stderr and "Traceback" not in got.stderr, got.stderr
    assert not symbols.exists()  # deleted: the next run that needs the whole table writes it again
    assert _outcome(_ksym(vmlinux, cache, RUN)) == want, "the run after"
    assert _ksym(vmlinux, cache, ["0xffffffff81000000"]).returncode == 0
    assert symbols.read_bytes() == good
