"""Damaged debug files: ksym reports them (exit 4, one line naming the section and the offset) and never
answers from damaged data.

The anchor is binutils ``addr2line``, run on the same damaged bytes: where it prints ``DWARF error:``,
ksym must not answer; where it answers, ksym's answer must be the same (or ksym must refuse the file).
A seeded fuzz damages section bodies, unit headers, the section header table and the ELF header of the
fixtures, a program built here with gcc, and one module debug file, and runs the command line
in-process on each copy: every case ends with exit 0, 1, 3 or 4 and an error in one line, never an
internal error (exit 70) or a traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from anchors import FIXTURES_BIN, Frame, find_addr2line, missing, parse_addr2line_output

import ksym
import ksym.dwarf as D
from ksym.cli import main

MODULE = Path(os.environ.get("KSYM_TESTDATA", "/var/tmp/ksym-testdata")) / "modules/kernel/net/netfilter/xt_mark.ko"

#: A three-level inline chain (outer -> middle -> inner) in one function, as in the report of item 1.
TINY_C = r"""
volatile int sink;
static inline __attribute__((always_inline)) void inner(int x) { sink = x * 3; sink += x; }
static inline __attribute__((always_inline)) void middle(int x) { inner(x + 1); sink ^= 5; }
static inline __attribute__((always_inline)) void outer(int x) { middle(x * 2); sink -= 7; }
__attribute__((noinline)) void entry(int x) { outer(x); }
int main(void) { entry(4); return 0; }
"""

TINY_FUNCTIONS = ("entry", "main")

ONE_LINE_ERROR = re.compile(r"^ksym: error: .+: damaged DWARF: \.debug_\w+ at offset 0x[0-9a-f]+: .+$")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        missing("gcc is not installed")
    d = tmp_path_factory.mktemp("tiny")
    (d / "t.c").write_text(TINY_C)
    subprocess.run([gcc, "-O2", "-g", "-o", str(d / "t"), str(d / "t.c")], check=True, cwd=d)
    return d / "t"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KSYM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("KSYM_DEBUG", raising=False)


# --- the file's layout (pyelftools on the undamaged file) ---------------------------------------------


@dataclass(frozen=True)
class SectionAt:
    name: str
    index: int
    header: int  # file offset of its section header entry
    offset: int
    size: int


@dataclass(frozen=True)
class Layout:
    elfclass: int
    little: bool
    shentsize: int
    sections: tuple[SectionAt, ...]

    def named(self, name: str) -> SectionAt | None:
        return next((s for s in self.sections if s.name == name), None)


def layout(path: Path) -> Layout:
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        elf = ELFFile(f)
        shoff, shentsize = elf.header["e_shoff"], elf.header["e_shentsize"]
        secs = tuple(SectionAt(s.name, i, shoff + i * shentsize, s["sh_offset"], s["sh_size"])
                     for i, s in enumerate(elf.iter_sections()) if i)
        return Layout(elf.elfclass, elf.little_endian, shentsize, secs)


def function_addresses(path: Path, count: int, names: tuple[str, ...] = ()) -> list[int]:
    """``count`` addresses inside the file's functions (a few bytes into each of the largest; with
    ``names``, only of those)."""
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        elf = ELFFile(f)
        syms = [s for s in elf.get_section_by_name(".symtab").iter_symbols()
                if s["st_info"]["type"] == "STT_FUNC" and s["st_size"] > 8 and (not names or s.name in names)]
    syms.sort(key=lambda s: (-s["st_size"], s.name))
    return sorted({s["st_value"] + min(4, s["st_size"] - 1) for s in syms[:count]})


def function_frames(path: Path, count: int) -> list[str]:
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        elf = ELFFile(f)
        syms = [s for s in elf.get_section_by_name(".symtab").iter_symbols()
                if s["st_info"]["type"] == "STT_FUNC" and s["st_size"] > 8 and s["st_shndx"] != "SHN_UNDEF"]
    syms.sort(key=lambda s: (-s["st_size"], s.name))
    return [f"{s.name}+{min(4, s['st_size'] - 1):#x}" for s in syms[:count]]


# --- running ksym (in-process) and addr2line ---------------------------------------------------------


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def chains(self) -> list[list[Frame]]:
        out = []
        for line in self.stdout.splitlines():
            rec = json.loads(line)
            chain = rec["chain"]
            out.append([(c["function"], c["raw_file"], c["line"], c["discriminator"]) for c in chain]
                       or [("??", "??", 0, 0)])
        return out


def run_ksym(path: Path, frames: list[str]) -> Run:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["resolve", "--json", "--no-index", "--offline", "-e", str(path), *frames])
    return Run(code, out.getvalue(), err.getvalue())


def run_addr2line(path: Path, addresses: list[int]) -> tuple[bool, list[list[Frame]] | None]:
    """(whether addr2line reported a DWARF error, its chains when it answered every address)."""
    tool = find_addr2line()
    if tool is None:
        missing("binutils addr2line is not installed")
    proc = subprocess.run([tool, "-a", "-f", "-i", "-e", str(path)], input="".join(f"{a:#x}\n" for a in addresses),
                          capture_output=True, text=True, errors="replace", env={**os.environ, "LC_ALL": "C"},
                          timeout=60, check=False)
    # "file format not recognized" and the like: bfd refuses the ELF file itself
    errored = "DWARF error" in proc.stderr or proc.returncode != 0 or "format not recognized" in proc.stderr
    records = parse_addr2line_output(proc.stdout)
    return errored, records if len(records) == len(addresses) else None


def address_frames(addresses: list[int]) -> list[str]:
    return [f"0x{a:016x}" for a in addresses]


def same_chain(ours: list[Frame], theirs: list[Frame]) -> bool:
    """ksym's chain (raw DWARF paths) equals addr2line's, line numbers and all."""
    return [(f, file, line) for f, file, line, _d in ours] == [(f, file, line) for f, file, line, _d in theirs]


# --- item 1: an unknown form --------------------------------------------------------------------------


def set_form_byte(data: bytearray, lay: Layout) -> int:
    """Change the form of the first DW_AT_GNU_entry_view (data1) or DW_AT_call_line attribute of the first
    abbreviation with one to 0x47, an unknown form; returns the offset in .debug_abbrev."""
    ab = lay.named(".debug_abbrev")
    assert ab is not None
    body = bytes(data[ab.offset : ab.offset + ab.size])
    for pattern in (b"\xb8\x42\x0b", b"\x59\x0b", b"\x59\x05"):
        i = body.find(pattern)
        if i >= 0:
            pos = i + len(pattern) - 1
            data[ab.offset + pos] = 0x47
            return pos
    raise AssertionError("no attribute to damage in .debug_abbrev")


def test_unknown_form_is_a_bad_file_like_addr2line(tiny: Path, tmp_path: Path) -> None:
    """Item 1: one form byte set to 0x47. addr2line says ``DWARF error: invalid or unhandled FORM value:
    0x47``; ksym exits 4 with one line naming .debug_abbrev and the offset, on every ask (the unit left
    half-read by the first ask must not answer the second)."""
    addresses = function_addresses(tiny, 2, TINY_FUNCTIONS)
    errored, good = run_addr2line(tiny, addresses)
    assert not errored and good is not None
    assert any(len(c) == 4 and [f[0] for f in c] == ["inner", "middle", "outer", "entry"] for c in good), good
    ok = run_ksym(tiny, address_frames(addresses))
    assert ok.code == 0 and all(same_chain(a, b) for a, b in zip(ok.chains(), good)), (ok, good)

    data = bytearray(tiny.read_bytes())
    at = set_form_byte(data, layout(tiny))
    bad = tmp_path / "t.bad"
    bad.write_bytes(data)
    errored, _ = run_addr2line(bad, addresses)
    assert errored, "addr2line should report the damage"
    got = run_ksym(bad, address_frames(addresses))
    assert got.code == 4 and got.stdout == "", got
    lines = got.stderr.splitlines()
    assert len(lines) == 1 and ONE_LINE_ERROR.match(lines[0]), lines
    assert f".debug_abbrev at offset {at:#x}: " in lines[0] and "unknown form 0x47" in lines[0], lines
    # the library: every lookup raises, the second as the first
    sym = ksym.Symbolizer(bad, use_index=False)
    try:
        for _ in range(3):
            for a in addresses:
                with pytest.raises(ksym.BadFileError, match=r"damaged DWARF: \.debug_abbrev at offset"):
                    sym.chain(a)
    finally:
        sym.close()


def damage_found_reading_everything(path: Path, module: bool = False) -> str | None:
    """The DwarfError ksym meets reading every unit of the file whole (:func:`ksym.dwarf.check_unit`,
    each function's subtree, each line program to its end) and .debug_aranges, or None.

    A lookup reads only the unit holding the address, and only as much of it as the address needs
    (most DIEs are stepped over by their DW_AT_sibling); binutils reads every unit's first DIE up to the
    one holding the address, and that unit whole. So damage that addr2line reports may lie where ksym's
    lookup did not read: this tells whether ksym finds it reading what binutils reads."""
    from ksym.modules import ModuleSymbolizer

    try:
        sym = ModuleSymbolizer(path) if module else ksym.Symbolizer(path, use_index=False)
    except ksym.KsymError as exc:
        return str(exc)
    try:
        if sym.dwarf_image is None:
            raise ksym.MissingDebugInfoError(f"{path}: no DWARF debug info")
        sec = sym.dwarf_image.sections
        D.read_aranges(sec)
        for off, _end in D.scan_cu_headers(sec):
            D.check_unit(sec, off)
            cu = D.compile_unit(sec, off)
            for fn in list(cu.functions):
                if fn.child_pos >= 0 and fn.ranges:
                    D.expand_for(sec, cu, fn.ranges[0][0])
    except D.DwarfError as exc:
        return str(exc)
    finally:
        sym.close()
    return None


def test_every_damaged_byte_of_the_tiny_program_agrees_with_addr2line(tiny: Path, tmp_path: Path) -> None:
    """Each byte of .debug_abbrev, .debug_info, .debug_rnglists, .debug_aranges and the start of
    .debug_line of the gcc-built program set to 0x47, or one bit flipped: ksym exits 0, 1, 3 or 4 with
    at most one line on stderr, and wherever addr2line reports a DWARF error, ksym does not answer.

    One exception, checked rather than assumed: ksym decodes a line program only as far as the address
    asked for needs, so damage further on in it is met (and reported) by a lookup that reads that far;
    that ksym reports it then is checked by reading everything (:func:`damage_found_reading_everything`).
    """
    lay = layout(tiny)
    addresses = function_addresses(tiny, 2, TINY_FUNCTIONS)
    frames = address_frames(addresses)
    pristine = tiny.read_bytes()
    bad = tmp_path / "t.bad"
    rng = random.Random(1)
    cases = refused = 0
    mismatches: list[str] = []
    differ: list[str] = []
    for name, limit in ((".debug_abbrev", None), (".debug_info", None), (".debug_line", 80),
                        (".debug_rnglists", None), (".debug_aranges", None)):
        s = lay.named(name)
        if s is None:
            continue
        for pos in range(min(s.size, limit or s.size)):
            for value in (0x47, pristine[s.offset + pos] ^ (1 << rng.randrange(8))):
                data = bytearray(pristine)
                data[s.offset + pos] = value
                bad.write_bytes(data)
                got = run_ksym(bad, frames)
                cases += 1
                where = f"{name}+{pos:#x}={value:#04x}"
                assert got.code in (0, 1, 3, 4), (where, got)
                assert len(got.stderr.splitlines()) <= 1 and "Traceback" not in got.stderr, (where, got)
                if got.code == 4:
                    refused += 1
                    assert ONE_LINE_ERROR.match(got.stderr.strip()) or "corrupt" in got.stderr, (where, got)
                if got.code != 0:
                    continue
                errored, theirs = run_addr2line(bad, addresses)
                if errored:
                    if damage_found_reading_everything(bad):
                        continue
                    mismatches.append(f"{where}: addr2line reports a DWARF error, ksym answered {got.chains()}")
                elif theirs is None or not all(same_chain(a, b) for a, b in zip(got.chains(), theirs)):
                    differ.append(f"{where}: ksym {got.chains()} != addr2line {theirs}")
    print(f"{cases} damaged copies, {refused} refused (exit 4); where addr2line answers, ksym answers "
          f"otherwise for {len(differ)}:", *differ[:20], sep="\n")
    assert cases > 1000 and refused > cases // 4
    assert not mismatches, f"{len(mismatches)} of {cases}:\n" + "\n".join(mismatches[:40])


# --- the seeded fuzz over the fixtures and a module ---------------------------------------------------

#: Sections whose bodies the fuzz damages (those the answers are read from, and the symbol table).
BODY_SECTIONS = (".debug_info", ".debug_abbrev", ".debug_line", ".debug_aranges", ".debug_str", ".debug_line_str",
                 ".debug_rnglists", ".debug_ranges", ".debug_addr", ".debug_str_offsets", ".symtab", ".strtab",
                 ".rela.debug_info", ".rela.debug_line")
#: Sections made of units that start with an initial length (their headers are damaged on purpose).
UNIT_SECTIONS = (".debug_info", ".debug_line", ".debug_aranges", ".debug_rnglists")
#: (offset, size) of each field of a section header entry: ELF64, ELF32.
SHDR_FIELDS = {64: ((0, 4), (4, 4), (8, 8), (16, 8), (24, 8), (32, 8), (40, 4), (44, 4), (48, 8), (56, 8)),
               32: ((0, 4), (4, 4), (8, 4), (12, 4), (16, 4), (20, 4), (24, 4), (28, 4), (32, 4), (36, 4))}
#: (offset, size) of e_shoff, e_shentsize, e_shnum, e_shstrndx in the ELF header: ELF64, ELF32.
EHDR_FIELDS = {64: ((40, 8), (58, 2), (60, 2), (62, 2)), 32: ((32, 4), (46, 2), (48, 2), (50, 2))}


def unit_starts(data: bytes, s: SectionAt, little: bool) -> list[int]:
    """Offsets (in the file) of the units of a section made of initial-length units (32-bit DWARF)."""
    out = []
    pos, end = s.offset, s.offset + s.size
    while pos + 4 <= end:
        out.append(pos)
        (length,) = struct.unpack_from("<I" if little else ">I", data, pos)
        if length == 0 or length >= 0xFFFFFFF0:
            break
        pos += 4 + length
    return out


def damage(rng: random.Random, data: bytes, lay: Layout) -> tuple[bytes, str]:
    """One damaged copy of ``data`` and what was done to it."""
    out = bytearray(data)

    def value(old: int) -> int:
        return rng.choice((0x00, 0xFF, 0x47, 0x80, rng.randrange(256), old ^ (1 << rng.randrange(8))))

    def number(size: int, old: int) -> int:
        top = (1 << (8 * size)) - 1
        return rng.choice((0, top, top >> 1, len(data), len(data) + rng.randrange(1, 64), old + rng.randrange(1, 4096),
                           max(old - rng.randrange(1, 64), 0), rng.randrange(top + 1))) & top

    e = "<" if lay.little else ">"
    kind = rng.choices(("body", "unit", "shdr", "ehdr"), (60, 20, 15, 5))[0]
    if kind == "unit":
        secs = [s for s in lay.sections if s.name in UNIT_SECTIONS and s.size > 16]
        if secs:
            s = rng.choice(secs)
            starts = unit_starts(data, s, lay.little)
            at = rng.choice(starts) + rng.randrange(16)
            if at < s.offset + s.size:
                out[at] = value(out[at])
                return bytes(out), f"{s.name} unit header +{at - s.offset:#x}"
        kind = "body"
    if kind == "body":
        secs = [s for s in lay.sections if s.name in BODY_SECTIONS and s.size > 0 and s.offset + s.size <= len(data)]
        s = rng.choice(secs)
        places = []
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            at = s.offset + rng.randrange(s.size)
            out[at] = value(out[at])
            places.append(f"{at - s.offset:#x}")
        return bytes(out), f"{s.name} body +{','.join(places)}"
    if kind == "shdr":
        s = rng.choice(lay.sections)
        off, size = rng.choice(SHDR_FIELDS[lay.elfclass])
        fmt = e + {2: "H", 4: "I", 8: "Q"}[size]
        (old,) = struct.unpack_from(fmt, out, s.header + off)
        struct.pack_into(fmt, out, s.header + off, number(size, old))
        return bytes(out), f"section header {s.name} field +{off}"
    off, size = rng.choice(EHDR_FIELDS[lay.elfclass])
    fmt = e + {2: "H", 4: "I", 8: "Q"}[size]
    (old,) = struct.unpack_from(fmt, out, off)
    struct.pack_into(fmt, out, off, number(size, old))
    return bytes(out), f"ELF header field +{off}"


@dataclass(frozen=True)
class Outcome:
    code: int
    error: str  # the one line on stderr ("" for none)
    chains: tuple[tuple[Frame, ...], ...]


def resolve_in_process(path: Path, frames: list[str], module: bool) -> Outcome:
    """The library, with the command line's mapping of errors to exit codes and one-line messages
    (``ksym.cli.main`` builds its argument parser per call, which would triple the fuzz's time; every
    tenth case goes through it instead, see :func:`check_case`)."""
    from ksym.errors import KsymError, SymbolNotFoundError
    from ksym.modules import ModuleSymbolizer

    code = 0
    chains: list[tuple[Frame, ...]] = []
    try:
        sym = ModuleSymbolizer(path) if module else ksym.Symbolizer(path, use_index=False)
        try:
            for frame in frames:
                try:
                    for r in sym.resolve(frame):
                        chains.append(tuple((c.function, c.raw_file, c.line, c.discriminator) for c in r.chain))
                except SymbolNotFoundError:
                    code = 1
        finally:
            sym.close()
    except KsymError as exc:
        return Outcome(exc.exit_code, f"ksym: error: {exc}", ())
    return Outcome(code, "", tuple(chains))


def check_case(path: Path, frames: list[str], module: bool, through_cli: bool, where: str) -> Outcome:
    """Run one damaged copy and check the rules every case must keep; returns what happened."""
    if through_cli:
        got = run_ksym(path, frames)
        assert got.code in (0, 1, 3, 4), (where, got)
        assert "Traceback" not in got.stderr and len(got.stderr.splitlines()) <= 1, (where, got)
        if got.code in (3, 4):
            assert got.stderr.startswith("ksym: error: "), (where, got)
        return Outcome(got.code, got.stderr.strip(), ())
    try:
        out = resolve_in_process(path, frames, module)
    except Exception as exc:  # what the command line would report as an internal error (exit 70)
        raise AssertionError(f"{where}: internal error {type(exc).__name__}: {exc}") from exc
    assert out.code in (0, 1, 3, 4), (where, out)
    assert "\n" not in out.error, (where, out)
    return out


#: The fixtures the fuzz damages, and whether binutils addr2line reads them (the sample's anchor).
FUZZ_FIXTURES = (("kshapes-dwarf5.elf", True), ("kshapes-dwarf4.elf", True), ("kshapes-i386-dwarf5.elf", True),
                 ("kshapes-clang.elf", False), ("kshapes-dwarf5-zlib.elf", True))
CASES_PER_FILE = 420
MODULE_CASES = 200


def fuzz_file(path: Path, seed: int, cases: int, frames: list[str], module: bool, anchor_addresses: list[int],
              tmp: Path) -> tuple[int, int, list[str]]:
    """Run ``cases`` damaged copies of ``path``: (cases, refused, rule violations found by the addr2line
    sample)."""
    lay = layout(path)
    pristine = path.read_bytes()
    rng = random.Random(seed)
    bad = tmp / f"damaged-{path.name}"
    refused = 0
    violations: list[str] = []
    for i in range(cases):
        data, what = damage(rng, pristine, lay)
        bad.write_bytes(data)
        where = f"{path.name} seed {seed} case {i}: {what}"
        out = check_case(bad, frames, module, through_cli=i % 10 == 0, where=where)
        refused += out.code == 4
        # the sample: wherever addr2line reports a DWARF error, ksym must not have answered
        if out.code == 0 and anchor_addresses and i % 4 == 0:
            errored, _theirs = run_addr2line(bad, anchor_addresses)
            if errored and not damage_found_reading_everything(bad, module):
                violations.append(f"{where}: addr2line reports a DWARF error, ksym answered and finds no damage "
                                  "reading every unit")
    return cases, refused, violations


@pytest.mark.parametrize(("name", "anchored"), FUZZ_FIXTURES, ids=[f[0] for f in FUZZ_FIXTURES])
def test_fuzz_fixture(name: str, anchored: bool, tmp_path: Path) -> None:
    """420 seeded damaged copies of a fixture: every one ends with exit 0, 1, 3 or 4 and at most one
    error line; a sample of those ksym answers is run through addr2line, which must not find a DWARF
    error in them."""
    path = FIXTURES_BIN / name
    addresses = function_addresses(path, 6)
    frames = [*address_frames(addresses), *function_frames(path, 2)]
    cases, refused, violations = fuzz_file(path, sum(map(ord, name)), CASES_PER_FILE, frames, False,
                                           addresses if anchored and "zlib" not in name else [], tmp_path)
    assert cases == CASES_PER_FILE and refused > cases // 5, (cases, refused)
    assert not violations, "\n".join(violations)


def test_fuzz_module(tmp_path: Path) -> None:
    """The same over a module debug file (ET_REL: relocated DWARF, faddr2line's section semantics)."""
    if not MODULE.is_file():
        missing(f"{MODULE} is missing: run tools/fetch-testdata.sh")
    frames = function_frames(MODULE, 3)
    cases, refused, violations = fuzz_file(MODULE, 7, MODULE_CASES, frames, True, [], tmp_path)
    assert cases == MODULE_CASES and refused > cases // 5, (cases, refused)
    assert not violations


# --- targeted cases of item 4 -------------------------------------------------------------------------


def test_aranges_range_past_the_largest_address_is_a_bad_file(tmp_path: Path) -> None:
    """A .debug_aranges tuple whose start + length passes 2**64 (what made ``_build_record`` fail with
    OverflowError on damaged copies of the vmlinux): exit 4, naming .debug_aranges and the tuple."""
    path = FIXTURES_BIN / "kshapes-dwarf5.elf"
    lay = layout(path)
    data = bytearray(path.read_bytes())
    ar = lay.named(".debug_aranges")
    assert ar is not None
    first_tuple = ar.offset + 16  # 12-byte header (32-bit DWARF), padded to twice the address size
    struct.pack_into("<Q", data, first_tuple + 8, 0xFFFF_FFFF_FFFF_FFF0)  # the first range's length
    bad = tmp_path / "aranges.elf"
    bad.write_bytes(data)
    got = run_ksym(bad, ["start_kernel+0x10"])
    assert got.code == 4, got
    assert got.stderr.splitlines() == [got.stderr.strip()] and ONE_LINE_ERROR.match(got.stderr.strip()), got
    assert f".debug_aranges at offset {first_tuple - ar.offset:#x}: " in got.stderr, got


def test_line_range_zero_is_a_bad_file(tmp_path: Path) -> None:
    """``line_range`` 0 in the line program headers (a ZeroDivisionError before): exit 4 rather than an
    answer without lines."""
    path = FIXTURES_BIN / "kshapes-dwarf5.elf"
    lay = layout(path)
    data = bytearray(path.read_bytes())
    line = lay.named(".debug_line")
    assert line is not None
    for unit in unit_starts(bytes(data), line, lay.little):
        data[unit + 16] = 0  # DWARF 5: length 4, version 2, sizes 2, header_length 4, 4 bytes, line_range
    bad = tmp_path / "line-range.elf"
    bad.write_bytes(data)
    # addr2line (2.40) gives up on these line tables (``??:?``) without a message
    _errored, theirs = run_addr2line(bad, function_addresses(path, 3))
    assert theirs is not None and all(c[-1][1:3] == ("??", 0) for c in theirs), theirs
    got = run_ksym(bad, address_frames(function_addresses(path, 3)))
    assert got.code == 4 and ONE_LINE_ERROR.match(got.stderr.strip()), got
    assert re.search(r"\.debug_line at offset 0x[0-9a-f]+: line_range is 0$", got.stderr.strip()), got


def test_section_offset_past_the_file_is_a_bad_file_also_for_debuginfod(tmp_path: Path) -> None:
    """A section name table whose sh_offset lies far past the end of the file (an OSError, EINVAL, from
    pyelftools' seek before): ksym's open and the build-id check debuginfod downloads go through both
    say "bad file" in one line."""
    from ksym.debuginfo import check_file, file_build_id

    path = FIXTURES_BIN / "kshapes-dwarf5.elf"
    lay = layout(path)
    data = bytearray(path.read_bytes())
    shstrtab = lay.named(".shstrtab")
    assert shstrtab is not None
    struct.pack_into("<Q", data, shstrtab.header + 24, 0x7FFF_FFFF_FFFF_FFF0)  # sh_offset
    bad = tmp_path / "shoff.elf"
    bad.write_bytes(data)
    got = run_ksym(bad, ["start_kernel+0x10"])
    assert got.code == 4 and len(got.stderr.splitlines()) == 1 and "section table" in got.stderr, got
    with pytest.raises(ksym.BadFileError):
        file_build_id(bad)
    attempt = check_file(bad, "00" * 20, "debuginfod", need_dwarf=True)
    assert attempt.outcome == "unusable", attempt


def test_a_unit_that_failed_to_read_is_not_kept_nor_stored(tiny: Path, tmp_path: Path) -> None:
    """Damage met while reading a function's subtree (an inlined call's DW_AT_abstract_origin pointing
    past its unit) after the unit itself was read: the first run exits 4, and so does the second, which
    would find the unit in the index had the half-read unit been written there."""
    from elftools.elf.elffile import ELFFile

    with open(tiny, "rb") as f:
        elf = ELFFile(f)
        info = elf.get_section_by_name(".debug_info")
        at = None
        for cu in elf.get_dwarf_info().iter_CUs():
            for die in cu.iter_DIEs():
                if die.tag == "DW_TAG_inlined_subroutine" and "DW_AT_abstract_origin" in die.attributes:
                    attr = die.attributes["DW_AT_abstract_origin"]
                    assert attr.form == "DW_FORM_ref4"
                    at = info["sh_offset"] + attr.offset
                    break
            if at is not None:
                break
    assert at is not None
    data = bytearray(tiny.read_bytes())
    struct.pack_into("<I", data, at, 0x7FFF_0000)
    bad = tmp_path / "t.bad"
    bad.write_bytes(data)
    frames = address_frames(function_addresses(tiny, 1, ("entry",)))
    for _ in range(2):  # with the index (a private KSYM_CACHE_DIR)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["resolve", "--json", "--offline", "-e", str(bad), *frames])
        assert code == 4 and out.getvalue() == "", (code, out.getvalue(), err.getvalue())
        assert ONE_LINE_ERROR.match(err.getvalue().strip()) and "past the end of the unit" in err.getvalue(), err
