"""The flat form of the symbol table (``SymbolTable.to_buffer`` / ``from_buffer``): a table read back
from it, as a mapped file, answers every lookup as the table read from the ELF file does.

Real files only: a fixture program of each ELF class and, when present, the Debian 6.1 debug vmlinux.
"""

from __future__ import annotations

import mmap
import random
from pathlib import Path

import pytest
from anchors import find_test_vmlinux, requires

from ksym.image import KernelImage
from ksym.symbols import SymbolTable, SymbolView

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "bin"
VMLINUX = find_test_vmlinux()


def _check_round_trip(path: Path, tmp_path: Path, samples: int) -> None:
    img = KernelImage(path)
    try:
        table = img.load_symbols()
    finally:
        img.close()
    flat = tmp_path / "symbols"
    flat.write_bytes(table.to_buffer())
    with open(flat, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    back = SymbolTable.from_buffer(mapped, table.sections)
    back.machine = table.machine
    back.dynamic_count = table.dynamic_count
    assert back.to_record() == table.to_record()
    rng = random.Random(14)
    names = [table.names[i] for i in rng.sample(range(len(table)), min(samples, len(table)))]
    for name in names:
        assert back.faddr2line_matches(name) == table.faddr2line_matches(name), name
        assert back.matches(name, SymbolView.KALLSYMS) == table.matches(name, SymbolView.KALLSYMS), name
        assert back.address_of(name) == table.address_of(name), name
    addrs = table._text_index()[1]
    assert len(addrs) > 0
    lo, hi = min(addrs), max(addrs) + 64
    for a in [*rng.sample(range(lo, hi), min(samples, hi - lo)), *list(addrs)[:samples]]:
        assert back.containing(a) == table.containing(a), hex(a)
        assert back.bfd_function(a) == table.bfd_function(a), hex(a)
    del back  # its columns are views of the mapping
    mapped.close()


@pytest.mark.parametrize("name", ["kshapes-dwarf5.elf", "kshapes-i386-dwarf5-zlib.elf", "kshapes-clang-thinlto.elf"])
def test_fixture_table_round_trips(name: str, tmp_path: Path) -> None:
    _check_round_trip(FIXTURES / name, tmp_path, 200)


@pytest.mark.vmlinux
@requires(VMLINUX is not None, "the Debian 6.1 debug vmlinux is missing: run tools/fetch-testdata.sh")
def test_vmlinux_table_round_trips(tmp_path: Path) -> None:
    assert VMLINUX is not None
    _check_round_trip(VMLINUX, tmp_path, 2000)


def test_buffer_of_another_kind_is_refused() -> None:
    img = KernelImage(FIXTURES / "kshapes-dwarf5.elf")
    try:
        table = img.load_symbols()
    finally:
        img.close()
    buf = table.to_buffer()
    with pytest.raises(ValueError, match="not a symbol table buffer"):
        SymbolTable.from_buffer(b"\x7fELF" + buf[4:], table.sections)
    with pytest.raises(ValueError, match="cut short"):
        SymbolTable.from_buffer(buf[: len(buf) // 2], table.sections)


def _check_named(path: Path, samples: int) -> None:
    """:meth:`SymbolTable.named` (the symbols one lookup reads, found in the raw ``.symtab``) gives what
    the whole table gives: faddr2line's matches and sizes, and the address of a name."""
    img = KernelImage(path)
    try:
        table = img.load_symbols()
        plain = img.plain_symtab()
    finally:
        img.close()
    assert plain is not None
    rng = random.Random(14)
    names = [table.names[i] for i in rng.sample(range(len(table)), min(samples, len(table)))]
    funcs = [n for n in names if any(table.infos[i] & 0xF == 2 for i in table.indices_named(n))]
    assert funcs
    answered = 0
    for name in names:
        sub = SymbolTable.named(*plain, table.sections, name, faddr2line=True, whole=lambda: table)
        if sub is not None:
            answered += 1
            assert sub.faddr2line_matches(name) == table.faddr2line_matches(name), name
        named = SymbolTable.named(*plain, table.sections, name)
        assert named is not None and named.address_of(name) == table.address_of(name), name
    assert answered >= len(names) * 0.95, "the subset answers nearly every name"
    unnamed = SymbolTable.named(*plain, table.sections, "no such symbol", faddr2line=True)
    assert unnamed is not None and unnamed.faddr2line_matches("no such symbol") == []
    assert table.faddr2line_matches("no such symbol") == []


@pytest.mark.parametrize("name", ["kshapes-dwarf5.elf", "kshapes-clang-thinlto.elf"])
def test_fixture_named_lookups_agree_with_the_whole_table(name: str) -> None:
    _check_named(FIXTURES / name, 200)


@pytest.mark.vmlinux
@requires(VMLINUX is not None, "the Debian 6.1 debug vmlinux is missing: run tools/fetch-testdata.sh")
def test_vmlinux_named_lookups_agree_with_the_whole_table() -> None:
    assert VMLINUX is not None
    _check_named(VMLINUX, 2000)
