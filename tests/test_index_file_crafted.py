"""Crafted portable index files: one structure of a genuine file edited and every CRC recomputed after
(the header's, the blocks', the pieces'), so the checksums agree and only the consistency checks stand
between the edited bytes and a lookup. Each file is then read the ways a run reads it (the API's
resolve, symbolize, code bytes and a module's frames, and ``ksym resolve --index``/``ksym annotate
--index`` in this process): every outcome is an answer, a miss, or one line and exit 4
(:class:`BadFileError`), never another exception (exit 70) (docs/index-format.md, "Safety").

The file is built from the shipped fixture ELF (fixtures/bin/kshapes-dwarf5.elf) with one small module of
the Debian 6.1 build (``--modules``: xt_comment), so that hundreds of edits are written and read in
seconds; the edits are drawn from seeded generators, the same on every run.
"""

from __future__ import annotations

import marshal
import os
import random
import struct
import zlib
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest
from anchors import REPO_ROOT, missing
from test_index_file import _cli

from ksym import Symbolizer
from ksym.errors import EXIT_BAD_FILE, EXIT_INTERNAL, BadFileError, KsymError
from ksym.modules import ModuleSymbolizer
from ksym.portable import _BLOCK, _ENTRY, _HEAD, BlockKind, Entry, PortableFile, _whole_unit
from ksym.portable_write import PortableWriter, StoredPart, compress
from ksym.symbols import SymbolTable, SymbolView
from ksym.unit_parts import unit_parts as unit_parts_of
from ksym.units import unit_to_record

ELF = REPO_ROOT / "fixtures/bin/kshapes-dwarf5.elf"
MODULE = "xt_comment"
KO = (
    Path(os.environ.get("KSYM_TESTDATA", "/var/tmp/ksym-testdata"))
    / f"modules/kernel/net/netfilter/{MODULE}.ko"
)

#: frames of every function of the fixture, misses, and raw addresses in and out of .text
FRAMES = [
    "__ip_local_out+0x10",
    "ip_local_out_like+0x79/0x90",
    "nf_hook_slow+0xc/0x30",
    "start_kernel+21",
    "main+9",
    "raw_ioctl+0x4",
    "netif_receive_like.cold+0x3",
    "dev_hash.constprop.0.isra.0+2",
    "dev_report_error+0x5",
    "csum_like+1",
    "nope+1",
    "0x401180",
    "0x401013",
    "0x4013a5",
    "0x402008",
]
ADDRESSES = [0x401000 + k for k in range(0, 0x440, 0x2B)] + [0, 0x400FFF, 0x403060, (1 << 64) - 1]
MODULE_FRAMES = [
    "comment_mt+0x3",
    "comment_mt_init+0x1",
    "cleanup_module+0x0",
    "init_module+2",
    "0x5",
    "nope+1",
]
DUMP = f"""\
RIP: 0010:nf_hook_slow+0xc/0x30
Call Trace:
 <TASK>
 ip_local_out_like+0x79/0x90
 start_kernel+0x2b/0xb0
 comment_mt+0x3/0xf [{MODULE}]
 main+0x9/0x20
 </TASK>
        __ip_local_out+128
        netif_receive_like+3
"""

#: values a hostile record may hold where another type, or another range, is expected
ODD: list[Any] = [
    -1,
    0,
    1,
    7,
    1 << 31,
    1 << 32,
    (1 << 64) - 1,
    1 << 64,
    -(1 << 63),
    1.5,
    float("nan"),
    "x",
    "",
    b"x",
    b"",
    None,
    True,
    [],
    (),
    [1, 2],
    (1, 2),
    {},
    {1: 2},
    frozenset({1}),
    (lambda: 0).__code__,
]



# -- the parts of a file, and writing them back with every CRC agreeing -------------------------------


class Parts:
    """What a file holds, decompressed: written back by :func:`write` with fresh CRCs."""

    def __init__(self, path: Path) -> None:
        with PortableFile(path) as pf:
            self.meta: bytes = pf.meta.to_bytes()
            self.symbols: bytes = pf._block(BlockKind.SYMBOLS)
            self.aranges: bytes = pf._block(BlockKind.ARANGES)
            self.unit_ranges: bytes = pf._block(BlockKind.UNIT_RANGES)
            # each unit's address parts: (lowest address, record)
            self.units: list[tuple[int, list[tuple[int, bytes]]]] = []
            for e in pf.units.entries():
                table = pf._part_table(e.key)
                assert table is not None
                self.units.append((e.key, [(p.key, pf._piece(p, "u")) for p in table.entries()]))
            self.code: list[tuple[int, bytes]] = [(e.key, pf._piece(e, "c")) for e in pf.code.entries()]
            self.modules: list[tuple[str, str | None, bytes]] = [
                (m.name, m.build_id, pf._piece(Entry(0, m.offset, m.length, m.raw_length, m.crc), "m"))
                for m in pf._module_directory()
            ]
            self.names: list[tuple[int, bytes]] = [(e.key, pf._piece(e, "n")) for e in pf._name_directory().entries()]
            self.module_directory: bytes | None = None

    def copy(self) -> Parts:
        new = object.__new__(Parts)
        new.__dict__.update(self.__dict__)
        new.units, new.code, new.modules = list(self.units), list(self.code), list(self.modules)
        new.names = list(self.names)
        return new


class _RawMeta:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def to_bytes(self) -> bytes:
        return self.data


def write(parts: Parts, path: Path) -> None:
    """``parts`` as a file at ``path``: the writer's layout, every CRC computed from what is written."""
    w = PortableWriter(path, cast(Any, _RawMeta(parts.meta)), modules=True)
    try:
        w.add_block(BlockKind.SYMBOLS, parts.symbols)
        w.add_block(BlockKind.ARANGES, parts.aranges)
        w.add_block(BlockKind.UNIT_RANGES, parts.unit_ranges)
        for key, raw in parts.code:  # as the builder writes them
            w.add_code(key, compress(raw), len(raw))
        for key, unit_parts in parts.units:
            w.add_unit(key, [StoredPart(low, compress(raw), len(raw)) for low, raw in unit_parts])
        for name, bid, raw in parts.modules:
            w.add_module(name, bid, compress(raw), len(raw))
        for key, raw in parts.names:
            w.add_names(key, compress(raw), len(raw))
        w.finish()
    except BaseException:
        w.abort()
        raise
    if parts.module_directory is not None:
        # the module directory is the last block: put these bytes in its place
        data = bytearray(path.read_bytes())
        at, _kind, off, _ln = _blocks(data)[BlockKind.MODULES]
        del data[off:]
        data += parts.module_directory
        struct.pack_into("<QQ", data, at + 16, len(parts.module_directory), len(parts.module_directory))
        path.write_bytes(reseal(data))


def _blocks(data: bytes | bytearray) -> dict[int, tuple[int, int, int, int]]:
    """kind: (where its entry is, kind, offset, length) of a file's block table."""
    _m, _v, _length, _size, meta_len, nblocks, _crc = _HEAD.unpack_from(data)
    out = {}
    for i in range(nblocks):
        at = _HEAD.size + meta_len + _BLOCK.size * i
        kind, _codec, _crc, off, ln, _raw = _BLOCK.unpack_from(data, at)
        out[kind] = (at, kind, off, ln)
    return out


def reseal(data: bytearray) -> bytes:
    """``data`` with every CRC recomputed from its bytes (the pieces' in the unit, code and name
    directories, each block's but the payload's, the header's) and its header's file size made its
    length."""
    struct.pack_into("<Q", data, 16, len(data))
    blocks = _blocks(data)
    for kind in (BlockKind.UNITS, BlockKind.CODE, BlockKind.NAMES):
        if kind not in blocks:
            continue
        _at, _k, off, ln = blocks[kind]
        for p in range(off, min(off + ln, len(data)) - _ENTRY.size + 1, _ENTRY.size):
            _key, o, n, _raw, _crc = _ENTRY.unpack_from(data, p)
            if o + n <= len(data):
                struct.pack_into("<I", data, p + 24, zlib.crc32(data[o : o + n]))
    for at, kind, off, ln in blocks.values():
        if kind != BlockKind.PAYLOAD and off + ln <= len(data):
            struct.pack_into("<I", data, at + 4, zlib.crc32(data[off : off + ln]))
    length = _HEAD.unpack_from(data)[2]
    struct.pack_into("<I", data, 32, 0)
    struct.pack_into("<I", data, 32, zlib.crc32(data[:length]))
    return bytes(data)


# -- reading a crafted file the ways a run does ---------------------------------------------------------


def _each(calls: list[Callable[[], object]]) -> None:
    """Run each call: an answer, or a miss (a KsymError of its own exit code) passes; a damaged file
    (BadFileError) ends the reading; anything else is the failure this test looks for."""
    for call in calls:
        try:
            call()
        except BadFileError:
            raise
        except KsymError as exc:
            assert exc.exit_code != EXIT_INTERNAL, exc


def read_all(path: Path) -> str:
    """Every lookup of the fixture's frames and addresses, its code and its module's frames: "ok", or
    "bad" (one BadFileError, of one line)."""
    try:
        for f in FRAMES:  # each the first frame of a run: its name read from the name pieces
            with Symbolizer.from_index(path) as s:
                _each([lambda f=f: s.resolve(f)])  # type: ignore[misc]
        with Symbolizer.from_index(path) as s:
            _each([lambda f=f: s.resolve(f) for f in FRAMES])  # type: ignore[misc]
            _each([lambda f=f: s.resolve(f, view=SymbolView.KALLSYMS) for f in FRAMES])  # type: ignore[misc]
            _each([lambda a=a: s.symbolize(a) for a in ADDRESSES])  # type: ignore[misc]
            _each([lambda a=a: s.code_bytes(a, 40) for a in ADDRESSES])  # type: ignore[misc]
        with PortableFile(path) as pf:
            for bid in pf.module_build_ids(MODULE):
                with ModuleSymbolizer(MODULE, image=pf.module(MODULE, bid)) as m:
                    _each([lambda f=f: m.resolve(f) for f in MODULE_FRAMES])  # type: ignore[misc]
                    _each([lambda o=o: m.section_chain(".text", o) for o in range(0, 0x40, 3)])  # type: ignore[misc]
                    _each([lambda: m.code_bytes(".text", 0, 16)])
    except BadFileError as exc:
        assert len(str(exc).splitlines()) == 1 and str(exc), exc
        return "bad"
    return "ok"


def read_cli(path: Path, tmp: Path) -> None:
    """``ksym resolve --index`` and ``ksym annotate --index``: an answer, a miss, or one line and exit 4."""
    dump = tmp / "dump.txt"
    if not dump.exists():
        dump.write_text(DUMP)
    for args in (
        ("resolve", "--index", str(path), *FRAMES[:6], "0x401180"),
        ("annotate", "--index", str(path), str(dump)),
    ):
        code, _out, err = _cli(*args)
        assert code != EXIT_INTERNAL and "internal error" not in err and "Traceback" not in err, (
            args[0],
            err,
        )
        if code == EXIT_BAD_FILE:
            # a unit's line table naming a file it does not have is reported as the vmlinux's DWARF would be
            assert len(err.splitlines()) == 1 and f"{path}: damaged " in err, err


# -- the edits ------------------------------------------------------------------------------------------


class Crafted:
    """A file written from a genuine one's parts with one edit, named for the failure message."""

    def __init__(self, what: str, parts: Parts | None = None, data: bytes | None = None) -> None:
        self.what, self.parts, self.data = what, parts, data

    def write(self, path: Path) -> None:
        if self.data is not None:
            path.write_bytes(self.data)
        else:
            assert self.parts is not None
            write(self.parts, path)


_COLUMNS = [name for name, _code in SymbolTable._BUFFER_COLUMNS]


def _columns(buf: bytes) -> dict[str, tuple[int, int, int]]:
    """name: (offset, length in bytes, width) of each column of a symbol table buffer."""
    out = {}
    for k, (name, code) in enumerate(SymbolTable._BUFFER_COLUMNS):
        off, size = struct.unpack_from("<QQ", buf, len(SymbolTable._BUFFER_MAGIC) + 1 + 16 * k)
        out[name] = (off, size, {"Q": 8, "I": 4, "B": 1}[code])
    return out


def _odd_number(rng: random.Random, n: int, width: int) -> int:
    top = (1 << (8 * width)) - 1
    v = rng.choice(
        [
            n,
            n + 1,
            n - 1,
            n + rng.randrange(1, 1000),
            top,
            top - rng.randrange(8),
            rng.randrange(top + 1),
            0,
            1,
        ]
    )
    return v & top


def symbol_table_edits(buf: bytes, rng: random.Random, count: int) -> Iterator[tuple[str, bytes]]:
    """``count`` edits of a symbol table buffer: a number of a column made one out of range, out of
    order, or another column's; two swapped; a column header's offset or length changed."""
    cols = _columns(buf)
    n = cols["values"][1] // 8
    for _ in range(count):
        name = rng.choice(_COLUMNS)
        off, size, width = cols[name]
        data = bytearray(buf)
        kind = rng.randrange(6)
        if kind == 5 or size < width:  # the column's place in the header
            k = _COLUMNS.index(name)
            at = len(SymbolTable._BUFFER_MAGIC) + 1 + 16 * k + rng.choice([0, 8])
            struct.pack_into("<Q", data, at, _odd_number(rng, struct.unpack_from("<Q", data, at)[0], 4))
            yield f"symbol table: the header of {name}", bytes(data)
            continue
        count_ = size // width
        i = rng.randrange(count_)
        fmt = {8: "=Q", 4: "=I", 1: "=B"}[width]
        if kind == 4 and count_ > 1:  # two entries swapped
            j = rng.randrange(count_)
            a, b = (
                data[off + i * width : off + (i + 1) * width],
                data[off + j * width : off + (j + 1) * width],
            )
            data[off + i * width : off + (i + 1) * width], data[off + j * width : off + (j + 1) * width] = (
                b,
                a,
            )
            yield f"symbol table: {name}[{i}] and [{j}] swapped", bytes(data)
            continue
        if kind == 3:  # the whole column one value
            v = _odd_number(rng, n, width)
            data[off : off + size] = struct.pack(fmt, v) * count_
            yield f"symbol table: every {name} {v:#x}", bytes(data)
            continue
        limit = {"offsets": cols["blob"][1], "blob": 255}.get(name, n)
        v = _odd_number(rng, limit, width)
        struct.pack_into(fmt, data, off + i * width, v)
        yield f"symbol table: {name}[{i}] = {v:#x}", bytes(data)


def _mutate(value: Any, rng: random.Random, depth: int = 0) -> tuple[str, Any]:
    """One edit somewhere in a marshal'd record: (where, the record with it)."""
    if isinstance(value, (list, tuple)) and value and depth < 8 and rng.random() < 0.85:
        items = list(value)
        i = rng.randrange(len(items))
        r = rng.random()
        if r < 0.06:
            del items[i]
            where = f"[{i}] dropped"
        elif r < 0.1:
            items.append(rng.choice(ODD))
            where = "one more item"
        elif r < 0.14 and len(items) > 1:
            j = rng.randrange(len(items))
            items[i], items[j] = items[j], items[i]
            where = f"[{i}] and [{j}] swapped"
        else:
            sub, items[i] = _mutate(items[i], rng, depth + 1)
            where = f"[{i}]{sub}"
        return where, type(value)(items) if isinstance(value, tuple) else items
    if isinstance(value, dict) and value and depth < 8:
        d = dict(value)
        k = rng.choice(sorted(d))
        if rng.random() < 0.1:
            del d[k]
            return f"[{k!r}] dropped", d
        sub, d[k] = _mutate(d[k], rng, depth + 1)
        return f"[{k!r}]{sub}", d
    if isinstance(value, bytes) and value and rng.random() < 0.7:
        b = bytearray(value)
        r = rng.random()
        if r < 0.3:  # one packed number made another (a row's file, a column's length)
            i = rng.randrange(0, len(b) - 3, 4) if len(b) >= 4 else 0
            b[i : i + 4] = rng.choice([255, 256, 1 << 20, (1 << 32) - 1, 0, 1, 2, 9]).to_bytes(4, "little")[
                : len(b) - i
            ]
            return f" bytes at {i}", bytes(b)
        if r < 0.5:
            cut = rng.randrange(len(b))
            return f" cut to {cut}", bytes(b[:cut])
        if r < 0.6:
            return " longer", bytes(b) + bytes(rng.randrange(1, 9))
        i = rng.randrange(len(b))
        b[i] = rng.randrange(256)
        return f" byte {i}", bytes(b)
    if isinstance(value, int) and not isinstance(value, bool) and rng.random() < 0.6:
        v = rng.choice(
            [value + 1, value - 1, value + rng.randrange(1, 1 << 16), -value - 1, value << 20, 0, -1]
        )
        return f" {value} -> {v}", v
    new = rng.choice(ODD)
    return f" = {new!r}", new


def record_edits(raw: bytes, rng: random.Random, count: int) -> Iterator[tuple[str, bytes]]:
    rec = marshal.loads(raw)
    for _ in range(count):
        where, new = _mutate(rec, rng)
        yield where, marshal.dumps(new, 4)


def unit_attacks(rec: Any) -> Iterator[tuple[str, Any]]:
    """Edits of a unit record aimed at what a lookup reads of it, and records that would make the
    loader work far longer than their bytes (``marshal`` shares an object held twice: a nest of 2**48
    lists, or one list of ranges in every one of 10**5 functions, is a few hundred bytes)."""
    nest: Any = []
    for _ in range(48):
        nest = [nest, nest]
    offset, name, comp_dir, fns, lines, walk = rec
    f0 = list(fns[0])
    yield (
        "a function's name a nest of lists",
        (offset, name, comp_dir, [(*f0[:3], nest, *f0[4:]), *fns[1:]], lines, walk),
    )
    yield "the unit's name a nest of lists", (offset, nest, comp_dir, fns, lines, walk)
    yield "its directory a nest of lists", (offset, name, nest, fns, lines, walk)
    if lines is not None:
        # a part leaves out the names of files it does not name (None): one it names is damage
        yield "its file names left out", (offset, name, comp_dir, fns, ([None] * len(lines[0]), *lines[1:]), walk)
    shared = [(0x401000, 0x401400)] * 10**5
    yield (
        "one list of ranges in every function",
        (offset, name, comp_dir, [(*f0[:2], shared, *f0[3:])] * 10**5, lines, walk),
    )
    for k, f in enumerate(fns):
        for field, values in (
            (4, [k, k + 1, -2, 1 << 40]),
            (5, [1 << 20, -1, 10**6]),
            (0, [nest]),
            (1, [nest]),
        ):
            for v in values:
                g = list(f)
                g[field] = v
                yield (
                    f"function {k} field {field} = {'a nest' if v is nest else v}",
                    (offset, name, comp_dir, [*fns[:k], tuple(g), *fns[k + 1 :]], lines, walk),
                )
    if lines is None:
        return
    files, addrs, cols, ends, seqs, file_base, pending, loff = lines

    def with_lines(*new: Any) -> Any:
        return (offset, name, comp_dir, fns, tuple(new), walk)

    yield (
        "a file name a nest of lists",
        with_lines([nest, *files[1:]], addrs, cols, ends, seqs, file_base, pending, loff),
    )
    yield "no file names", with_lines([], addrs, cols, ends, seqs, file_base, pending, loff)
    for base in (-5, 1, 7, 1 << 40):
        yield f"file base {base}", with_lines(files, addrs, cols, ends, seqs, base, pending, loff)
    for c in range(4):
        for fill in (b"\xff", b"\x07", b"\x00\x00\x00\x80"):
            new = list(cols)
            new[c] = (fill * len(new[c]))[: len(new[c])]
            yield (
                f"line column {c} of {fill!r}",
                with_lines(files, addrs, new, ends, seqs, file_base, pending, loff),
            )
    for q in range(len(seqs)):
        for k, v in enumerate(
            (
                [nest] * 4,
                (0, 1 << 64, 0, len(ends) + 1),
                (0, 1 << 64, 5, 2),
                (0, 1 << 64, -1, 3),
                (1, 2, 3),
                tuple(nest),
            )
        ):
            new = list(seqs)
            new[q] = tuple(v)
            yield (
                f"line sequence {q}: edit {k}",
                with_lines(files, addrs, cols, ends, new, file_base, pending, loff),
            )
    yield "a sequence a nest", with_lines(files, addrs, cols, ends, [nest] * 4, file_base, pending, loff)
    yield "rows without ends", with_lines(files, addrs, cols, b"", seqs, file_base, pending, loff)
    yield "addresses out of order", with_lines(files, addrs[::-1], cols, ends, seqs, file_base, pending, loff)


def crafted_files(genuine: Path) -> Iterator[Crafted]:
    """Every crafted file, in a fixed order (seeded)."""
    base = Parts(genuine)
    rng = random.Random(15_5)
    cols = _columns(base.symbols)
    # the symbol table: every column, each way
    for what, buf in symbol_table_edits(base.symbols, rng, 260):
        p = base.copy()
        p.symbols = buf
        yield Crafted(what, p)
    # a symbol table whose columns are of one count but hold another table's names and numbers
    for name in _COLUMNS:
        off, size, _width = cols[name]
        if name != "blob":
            p = base.copy()
            data = bytearray(base.symbols)
            data[off : off + size] = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
            p.symbols = bytes(data)
            yield Crafted(f"symbol table: {name} a ramp of bytes", p)
    # the metadata
    for _ in range(60):
        where, meta = next(record_edits(base.meta, rng, 1))
        p = base.copy()
        p.meta = meta
        yield Crafted(f"metadata{where}", p)
    # the section table: code where there is none, sections over each other, past the address space
    meta = marshal.loads(base.meta)
    for _ in range(40):
        sections = [list(x) for x in meta["sections"]]
        sec = rng.choice(sections)
        field = rng.choice([0, 2, 3, 4, 6])
        sec[field] = rng.choice([0, 1, 2, 6, 8, 0x401000, 0x401010, 1 << 16, (1 << 64) - 1, 1 << 64, 1 << 70])
        p = base.copy()
        p.meta = marshal.dumps({**meta, "sections": sections}, 4)
        yield Crafted(f"metadata: section {sec[1]!r} field {field} = {sec[field]:#x}", p)
    # the aranges and the unit ranges: numbers out of range, order or agreement
    for name in ("aranges", "unit_ranges"):
        raw = getattr(base, name)
        for _ in range(30):
            data = bytearray(raw)
            if not data:
                data = bytearray(struct.pack("<QQQ", 0x401000, 0x401400, rng.choice([0, 3, 1211, 1 << 40])))
            else:
                i = rng.randrange(0, len(data) - 7, 8)
                struct.pack_into(
                    "<Q", data, i, rng.choice([0, 1, 3, 1211, 0x401000, 0x401400, (1 << 64) - 1, 1 << 40])
                )
            p = base.copy()
            setattr(p, name, bytes(data))
            yield Crafted(f"{name} edited", p)
    # the unit, code and name directories: an entry's key, place, lengths
    data = bytearray(Path(genuine).read_bytes())
    blocks = _blocks(data)
    for kind in (BlockKind.UNITS, BlockKind.CODE, BlockKind.NAMES):
        _at, _k, off, ln = blocks[kind]
        for _ in range(30):
            d = bytearray(data)
            e = off + _ENTRY.size * rng.randrange(ln // _ENTRY.size)
            field = rng.choice([(0, "<Q"), (8, "<Q"), (16, "<I"), (20, "<I")])
            old = struct.unpack_from(field[1], d, e + field[0])[0]
            new = rng.choice([0, old + 1, old - 1 if old else 1, old * 2, 1 << 31, 3])
            struct.pack_into(field[1], d, e + field[0], new)
            yield Crafted(f"directory {kind} entry at {e} field {field[0]}: {old} -> {new}", data=reseal(d))
    # the block table: a block's place or lengths, another block's bytes
    for _ in range(30):
        d = bytearray(data)
        at, kind, off, ln = rng.choice(list(blocks.values()))
        other = rng.choice(list(blocks.values()))
        r = rng.randrange(3)
        if r == 0:
            struct.pack_into("<QQQ", d, at + 8, other[2], other[3], other[3])
        elif r == 1:
            struct.pack_into("<QQ", d, at + 16, ln // 2, ln // 2)
        else:
            struct.pack_into("<QQ", d, at + 8, off + 8, ln - 8 if ln >= 8 else 0)
            struct.pack_into("<Q", d, at + 24, ln - 8 if ln >= 8 else 0)
        yield Crafted(f"block {kind} made {r}", data=reseal(d))
    # each unit's parts' records, edited
    for i, (key, unit_parts) in enumerate(base.units):
        for j, (low, raw) in enumerate(unit_parts):
            for where, new in record_edits(raw, rng, 45 if j == 0 else 15):
                p = base.copy()
                p.units[i] = (key, [*unit_parts[:j], (low, new), *unit_parts[j + 1 :]])
                yield Crafted(f"unit {key:#x} part {j}{where}", p)
            for where, new in unit_attacks(marshal.loads(raw)):
                p = base.copy()
                p.units[i] = (key, [*unit_parts[:j], (low, marshal.dumps(new, 4)), *unit_parts[j + 1 :]])
                yield Crafted(f"unit {key:#x} part {j}: {where}", p)
        p = base.copy()
        p.units[i] = (key, [])
        yield Crafted(f"unit {key:#x} without parts", p)
        p = base.copy()
        p.units[i] = (key, [(0, base.units[(i + 1) % len(base.units)][1][0][1])])
        yield Crafted(f"unit {key:#x} holds another unit's part", p)
    # part tables (on the units cut finer, so that each has several parts): lows out of order, not
    # from 0, twice, past the top of the address space
    fine = cut_finer(base)
    for i, (key, unit_parts) in enumerate(fine.units):
        lows = [low for low, _raw in unit_parts]
        for what, new_lows in (
            ("lows reversed", lows[::-1]),
            ("first low not 0", [1, *lows[1:]]),
            ("a low twice", [*lows, lows[-1]]),
            ("lows past the top", [0, *((1 << 64) - 1 - k for k in range(len(lows) - 1, 0, -1))]),
            ("lows shifted", [0, *(low + 3 for low in lows[1:])]),
        ):
            p = fine.copy()
            recs = [raw for _low, raw in unit_parts]
            p.units[i] = (key, list(zip(new_lows, (recs * 2)[: len(new_lows)])))
            yield Crafted(f"unit {key:#x} cut finer, part table: {what}", p)
    # each name piece's record, edited (what a frame's name reads before any symbol table)
    for i, (key, raw) in enumerate(base.names):
        for where, new in record_edits(raw, rng, 40):
            p = base.copy()
            p.names[i] = (key, new)
            yield Crafted(f"name piece {key}{where}", p)
    p = base.copy()
    p.names = []
    yield Crafted("no name pieces", p)
    # a unit stored under another's key, a code chunk as a unit
    p = base.copy()
    p.units[0] = (p.units[0][0], p.units[1][1])
    yield Crafted("unit 0 holds unit 1", p)
    p = base.copy()
    p.units[0] = (p.units[0][0], [(0, p.code[0][1])])
    yield Crafted("unit 0 holds code", p)
    # code chunks of other lengths
    for i, (key, raw) in enumerate(base.code):
        for cut in (0, 1, len(raw) // 2, len(raw) + 7):
            p = base.copy()
            p.code[i] = (key, (raw * 2)[:cut])
            yield Crafted(f"code {key:#x} of {cut} bytes", p)
    # the module directory
    mods = marshal.loads(data[blocks[BlockKind.MODULES][2] :])
    for where, new in record_edits(marshal.dumps(mods, 4), rng, 40):
        p = base.copy()
        p.module_directory = new
        yield Crafted(f"module directory{where}", p)
    # the module's record: its fields, its symbol table, its units
    name, bid, raw = base.modules[0]
    rec = marshal.loads(raw)
    for where, new in record_edits(raw, rng, 80):
        p = base.copy()
        p.modules[0] = (name, bid, new)
        yield Crafted(f"module{where}", p)
    for what, buf in symbol_table_edits(rec["symbols"], rng, 60):
        p = base.copy()
        p.modules[0] = (name, bid, marshal.dumps({**rec, "symbols": buf}, 4))
        yield Crafted(f"module {what}", p)
    for k in range(len(rec["units"])):
        edits = [
            *record_edits(marshal.dumps(rec["units"][k][1], 4), rng, 30),
            *unit_attacks(rec["units"][k][1]),
        ]
        for where, new in edits:
            units = list(rec["units"])
            units[k] = [units[k][0], marshal.loads(new) if isinstance(new, bytes) else new]
            p = base.copy()
            p.modules[0] = (name, bid, marshal.dumps({**rec, "units": units}, 4))
            yield Crafted(f"module unit {k}{where}", p)


@pytest.fixture(scope="module")
def genuine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture ELF's portable index file, with the xt_comment module of the Debian 6.1 build."""
    if not KO.is_file():
        missing(f"{KO} not found: run tools/fetch-testdata.sh")
    d = tmp_path_factory.mktemp("crafted")
    (d / "modules").mkdir()
    (d / "modules" / f"{MODULE}.ko").symlink_to(KO)
    out = d / "kshapes.ksymidx"
    code, _out, err = _cli(
        "index", "build", str(ELF), "-o", str(out), "--modules", str(d / "modules"), "-j", "1"
    )
    assert code == 0, err
    return out


def test_the_genuine_file_written_back_answers_the_same(genuine: Path, tmp_path: Path) -> None:
    """The harness itself: the parts written back with fresh CRCs are the same file, byte for byte, and
    every frame of it answers."""
    again = tmp_path / "again.ksymidx"
    write(Parts(genuine), again)
    assert again.read_bytes() == genuine.read_bytes()
    assert reseal(bytearray(genuine.read_bytes())) == genuine.read_bytes()
    assert read_all(genuine) == "ok"
    with Symbolizer.from_index(genuine) as s:
        assert [r.chain[0].line for r in s.resolve("ip_local_out_like+0x79/0x90")] != []
    with PortableFile(genuine) as pf:
        assert pf.module_build_ids(MODULE) != []


def cut_finer(parts: Parts, size: int = 64) -> Parts:
    """``parts`` with each unit cut into parts of about ``size`` bytes (the fixture's units are small:
    one part each at the builder's size, the whole unit)."""
    new = parts.copy()
    for i, (key, unit_parts) in enumerate(parts.units):
        ((low, raw),) = unit_parts
        assert low == 0
        whole = _whole_unit(marshal.loads(raw), key, len(raw))
        new.units[i] = (key, [(p.low, marshal.dumps(unit_to_record(p.unit), 4)) for p in unit_parts_of(whole, size)])
    return new


def test_units_cut_finer_answer_the_same(genuine: Path, tmp_path: Path) -> None:
    """The reader finds an address's part among many: the fixture's units cut into parts of 64 bytes
    answer every frame and address as the genuine file does."""
    fine = cut_finer(Parts(genuine))
    assert sum(len(p) > 1 for _key, p in fine.units) >= 3
    path = tmp_path / "fine.ksymidx"
    write(fine, path)

    def answers(p: Path) -> list[object]:
        out: list[object] = []
        with Symbolizer.from_index(p) as s:
            for call in [*(partial(s.resolve, f) for f in FRAMES), *(partial(s.symbolize, a) for a in ADDRESSES)]:
                try:
                    out.append(call())
                except KsymError as exc:  # a frame of the fixture that misses: the same miss
                    out.append(str(exc))
        return out

    assert answers(path) == answers(genuine)


def test_crafted_files_answer_or_fail_in_one_line(genuine: Path, tmp_path: Path) -> None:
    crafted = tmp_path / "crafted.ksymidx"
    seen = {"ok": 0, "bad": 0}
    failures = []
    for n, c in enumerate(crafted_files(genuine)):
        c.write(crafted)
        try:
            seen[read_all(crafted)] += 1
            if n % 7 == 0:
                read_cli(crafted, tmp_path)
        except Exception as exc:  # noqa: BLE001 - each one is reported below
            failures.append(f"{c.what}: {type(exc).__name__}: {str(exc)[:200]}")
    assert not failures, f"{len(failures)} crafted files not refused in one line:\n" + "\n".join(
        failures[:40]
    )
    # both outcomes are reached: many edits are refused, some change nothing a lookup reads
    assert seen["bad"] > 300 and seen["ok"] > 10, seen


def test_blocks_read_when_first_used_are_checked_then(genuine: Path, tmp_path: Path) -> None:
    """The code directory and the unit ranges are read when first used, not when the file is opened:
    a flipped byte in either opens the file and answers a frame, then is refused (its CRC) where a
    lookup first reads the block, before anything is answered from it."""
    parts = Parts(genuine)
    if not parts.unit_ranges:
        # a range of a unit .debug_aranges misses (the fixture's units all have aranges)
        parts.unit_ranges = struct.pack("<QQQ", 0x401000, 0x401400, parts.units[0][0])
    path = tmp_path / "lazy.ksymidx"
    write(parts, path)
    data = path.read_bytes()
    blocks = _blocks(data)
    for kind in (BlockKind.CODE, BlockKind.UNIT_RANGES):
        _at, _k, off, ln = blocks[kind]
        assert ln > 0
        damaged = bytearray(data)
        damaged[off + ln // 2] ^= 0x10
        path.write_bytes(bytes(damaged))
        with PortableFile(path) as pf:  # opened: the block is not read yet
            with pytest.raises(BadFileError, match=f"block {kind} checksum mismatch"):
                if kind == BlockKind.CODE:
                    pf.code_bytes(ADDRESSES[0], 4)
                else:
                    pf.load_unit_ranges()
            if kind == BlockKind.CODE:
                with Symbolizer.from_index(path) as s:
                    assert s.resolve("ip_local_out_like+0x79/0x90") != []
                    with pytest.raises(BadFileError, match="checksum"):
                        s.code_bytes(ADDRESSES[0], 16)
