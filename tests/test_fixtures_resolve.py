"""Differential tests: ksym against addr2line and the kernel's scripts/faddr2line, on fixtures/bin.

(a) every instruction boundary of every FUNC symbol: ``Symbolizer.symbolize(addr).chain`` against
    ``addr2line -f -i`` (function, source-relative file, line, discriminator, inline depth);
(b) the ``ksym resolve`` command line against faddr2line's stdout, byte for byte, for specs covering
    every fixture shape (see fixtures/README.md);
(c) unusable inputs: one line on stderr, no traceback, the documented exit code.

The anchors are run, never reimplemented (tests/anchors.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import capstone
import pytest
from anchors import (
    Frame,
    addr2line_batch,
    dir_prefix,
    faddr2line,
    find_addr2line,
    find_faddr2line,
    fixture,
    requires,
    strip_prefix,
)
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

import ksym
from ksym import (
    BadFileError,
    FileNotFoundKsymError,
    MissingDebugInfoError,
    SpecError,
    Symbolizer,
    SymbolNotFoundError,
)
from ksym.image import KernelImage

DEBUG_ELVES = ["kshapes-dwarf5.elf", "kshapes-dwarf4.elf"]

ADDR2LINE = find_addr2line()
FADDR2LINE = find_faddr2line()

needs_addr2line = requires(ADDR2LINE is not None, "addr2line (binutils) is not installed")
needs_faddr2line = requires(
    FADDR2LINE is not None,
    "the kernel's scripts/faddr2line was not found (set KSYM_FADDR2LINE or run tools/fetch-testdata.sh)",
)

#: Frames covering every fixture shape; both DWARF builds have the same code layout (see README).
SPECS: list[str] = [
    # 'nf_hook' shapes: inline chains 2, 3 and 4 levels deep, the call to the out-of-line
    # nf_hook_slow() inside inlined code, and the return address right after it
    "ip_local_out_like+0x1d",
    "ip_local_out_like+0x21",
    "ip_local_out_like+0x40/0x90",
    "ip_local_out_like+0x74",
    "ip_local_out_like+0x79",
    "ip_local_out_like+0x1D",
    "__ip_local_out+45",  # decimal offset, echoed as typed
    "__ip_local_out+0x2d/144",  # decimal size, compared numerically
    "__ip_local_out+0x2d/145",  # decimal size that does not match: "skipping ... (145 != 0x90)"
    "__ip_local_out+0xa",
    # duplicate static names (net/ipv4/raw.c and drivers/char/raw.c)
    "raw_ioctl+0x5",
    "raw_ioctl+0x5/0x20",
    "raw_ioctl+0x5/0x40",
    "raw_ioctl+0x5/0x50",  # no size matches: "skipping" lines on stdout, "no match" on stderr
    "raw_ioctl+0x0",
    # offset == size (resolves into the next function), offset > size (no match)
    "netif_receive_like+0x20/0x20",
    "netif_receive_like+0x20",
    "netif_receive_like+0x21",
    "netif_receive_like+0xc",  # discriminator
    # the .cold part, named after the DWARF function
    "netif_receive_like.cold+0x0",
    "netif_receive_like.cold+0x10/0x5d",
    "netif_receive_like.cold+0x5d",
    "dev_report_error+0x7",
    "dev_report_error+0xa",
    # IPA clones
    "dev_hash.constprop.0.isra.0+4",
    "skb_len_sum.isra.0+0x3/0x10",
    "dev_set_mtu_like.constprop.0+0x8",
    "dev_set_mtu_like.constprop.0+010",  # bash arithmetic: a leading 0 is octal (+8), echoed as typed
    "ip_local_out_like+-1",  # accepted by faddr2line: the padding byte before the symbol
    "start_kernel+0",
    "main+0x4",
    # unknown symbol; the last symbol of .text, whose size faddr2line cannot compute
    "no_such_function+0x10",
    "csum_like+0x4",
]


pytestmark = pytest.mark.usefixtures("private_cache")  # tests/conftest.py


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ksym", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "LC_ALL": "C"},
        timeout=120,
    )


def instruction_addresses(elf: Path) -> list[tuple[str, int, int]]:
    """(symbol, symbol address, instruction address) for each instruction of each FUNC symbol."""
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    out: list[tuple[str, int, int]] = []
    with elf.open("rb") as f:
        ef = ELFFile(f)
        symtab = ef.get_section_by_name(".symtab")
        assert isinstance(symtab, SymbolTableSection)
        for sym in symtab.iter_symbols():
            if sym["st_info"]["type"] != "STT_FUNC" or sym["st_size"] == 0:
                continue
            sec = ef.get_section(sym["st_shndx"])
            start = sym["st_value"] - sec["sh_addr"]
            code = sec.data()[start:start + sym["st_size"]]
            end = sym["st_value"]
            for insn in md.disasm(code, sym["st_value"]):
                out.append((sym.name, sym["st_value"], insn.address))
                end = insn.address + insn.size
            assert end == sym["st_value"] + sym["st_size"], f"capstone stopped early in {sym.name}"
    assert out
    return out


def chain_frames(chain: tuple[ksym.SourceLocation, ...]) -> list[Frame]:
    """ksym's chain in the anchors' shape; no line information is addr2line's ``??`` / ``??:0``."""
    if not chain:
        return [("??", "??", 0, 0)]
    return [(loc.function, loc.file, loc.line, loc.discriminator) for loc in chain]


def stripped(chain: list[Frame], prefix: str | None) -> list[Frame]:
    return [(fn, strip_prefix(file, prefix), line, disc) for fn, file, line, disc in chain]


def _report(mismatches: list[str]) -> str:
    head = "\n".join(mismatches[:25])
    more = f"\n... and {len(mismatches) - 25} more" if len(mismatches) > 25 else ""
    return f"{len(mismatches)} mismatches:\n{head}{more}"


# -- (a) every instruction boundary against addr2line ------------------------------------------------


@needs_addr2line
@pytest.mark.parametrize("elf_name", DEBUG_ELVES)
def test_every_instruction_matches_addr2line(elf_name: str) -> None:
    elf = fixture(elf_name)
    prefix = dir_prefix(elf)
    assert prefix == "debian/build/build_amd64_none_cloud-amd64/"
    insns = instruction_addresses(elf)
    expected = addr2line_batch(elf, [a for _, _, a in insns])
    with Symbolizer(elf) as s:
        mismatches = []
        depths: set[int] = set()
        for (name, base, addr), want_raw in zip(insns, expected):
            want = stripped(want_raw, prefix)
            got = chain_frames(s.symbolize(addr).chain)
            depths.add(len(want))
            if got != want:
                mismatches.append(f"{name}+{addr - base:#x} ({addr:#x}): ksym {got} != addr2line {want}")
        assert not mismatches, _report(mismatches)
        assert {1, 2, 3, 4} <= depths  # the fixture really has the inline shapes


@needs_addr2line
@pytest.mark.parametrize("elf_name", DEBUG_ELVES)
def test_raw_files_and_inlined_flags(elf_name: str) -> None:
    """``raw_file`` is the path as addr2line prints it (before stripping); all but the last level are inlined."""
    elf = fixture(elf_name)
    insns = instruction_addresses(elf)
    expected = addr2line_batch(elf, [a for _, _, a in insns])
    with Symbolizer(elf) as s:
        mismatches = []
        for (name, base, addr), want in zip(insns, expected):
            chain = s.symbolize(addr).chain
            raws = [loc.raw_file for loc in chain]
            if raws != [file for _, file, _, _ in want]:
                mismatches.append(f"{name}+{addr - base:#x}: raw_file {raws} != {[f for _, f, _, _ in want]}")
            flags = [loc.inlined for loc in chain]
            if flags != [True] * (len(chain) - 1) + [False]:
                mismatches.append(f"{name}+{addr - base:#x}: inlined flags {flags}")
        assert not mismatches, _report(mismatches)


@needs_addr2line
@pytest.mark.parametrize("elf_name", DEBUG_ELVES)
def test_every_byte_of_text_matches_addr2line(elf_name: str) -> None:
    """Every address of .text (and a little beyond), padding and mid-instruction bytes included.

    In the padding after ``netif_receive_like.cold`` no DWARF covers the address, and addr2line falls
    back to the ELF symbol table: the preceding symbol's name and, for a LOCAL symbol, the file of the
    preceding STT_FILE symbol, printed as ``netif_receive_like.cold`` / ``dev.c:?`` (a global symbol
    gives ``??:?``).
    """
    elf = fixture(elf_name)
    prefix = dir_prefix(elf)
    with elf.open("rb") as f:
        text = ELFFile(f).get_section_by_name(".text")
        assert text is not None
        start, size = text["sh_addr"], text["sh_size"]
    addrs = list(range(start - 16, start + size + 16))
    expected = addr2line_batch(elf, addrs)
    with Symbolizer(elf) as s:
        mismatches = []
        for addr, want_raw in zip(addrs, expected):
            want = stripped(want_raw, prefix)
            got = chain_frames(s.symbolize(addr).chain)
            if got != want:
                mismatches.append(f"{addr:#x}: ksym {got} != addr2line {want}")
        assert not mismatches, _report(mismatches)


@pytest.mark.parametrize("elf_name", DEBUG_ELVES)
def test_symbolize_names_the_containing_symbol(elf_name: str) -> None:
    elf = fixture(elf_name)
    with Symbolizer(elf) as s:
        for name, base, addr in instruction_addresses(elf):
            r = s.symbolize(addr)
            assert (r.symbol, r.offset, r.address) == (name, addr - base, addr)


# -- API-level resolve against faddr2line -------------------------------------------------------------


@needs_faddr2line
@pytest.mark.parametrize("elf_name", DEBUG_ELVES)
def test_resolve_api_text_matches_faddr2line(elf_name: str) -> None:
    assert FADDR2LINE is not None
    elf = fixture(elf_name)
    with Symbolizer(elf) as s:
        for spec in SPECS:
            ref = faddr2line(elf, [spec], FADDR2LINE)
            blocks = [b for b in ref.stdout.split("\n\n") if b.strip()]
            # drop faddr2line's "skipping ..." lines (printed only when nothing matched)
            blocks = ["\n".join(ln for ln in b.splitlines() if not ln.startswith("skipping ")) for b in blocks]
            blocks = [b for b in blocks if b]
            if not blocks:
                with pytest.raises(SymbolNotFoundError):
                    s.resolve(spec)
                continue
            results = s.resolve(spec)
            assert [str(r) for r in results] == blocks, spec
            for r in results:
                assert str(r).splitlines()[0] == r.header
                assert r.symbol == spec.split("+")[0]
                assert r.size is not None and r.offset is not None
                assert r.address - r.offset > 0


def test_resolve_api_duplicates_and_sizes() -> None:
    with Symbolizer(fixture("kshapes-dwarf5.elf")) as s:
        both = s.resolve("raw_ioctl+0x5")
        assert [(r.symbol, r.offset, r.size) for r in both] == [("raw_ioctl", 5, 0x40), ("raw_ioctl", 5, 0x20)]
        assert [r.chain[-1].file for r in both] == ["net/ipv4/raw.c", "drivers/char/raw.c"]
        one = s.resolve("raw_ioctl+0x5/0x20")
        assert len(one) == 1 and one[0].header == "raw_ioctl+0x5/0x20:"
        r = s.resolve("ip_local_out_like+0x40")[0]
        assert [loc.function for loc in r.chain] == ["nf_hook_state_init", "nf_hook", "ip_local_out_inl",
                                                     "ip_local_out_like"]
        assert r.chain[0].file == "include/linux/netfilter.h"
        assert r.chain[0].raw_file == "debian/build/build_amd64_none_cloud-amd64/include/linux/netfilter.h"
        cold = s.resolve("netif_receive_like.cold+0x10")[0]
        assert cold.symbol == "netif_receive_like.cold"
        assert cold.chain[0].function == "netif_receive_like"
        assert cold.chain[0].discriminator == 4


@needs_faddr2line
def test_cli_padding_of_local_symbol_matches_faddr2line() -> None:
    """Offsets past st_size but within the kallsyms size of a LOCAL symbol without DWARF coverage.

    faddr2line prints ``netif_receive_like.cold at dev.c:?``: addr2line's symbol-table fallback
    names the ELF symbol and the file of the preceding STT_FILE symbol, with an unknown line.
    """
    assert FADDR2LINE is not None
    elf = fixture("kshapes-dwarf5.elf")
    specs = ["netif_receive_like.cold+0x54", "netif_receive_like.cold+0x5c/0x5d"]
    ref = faddr2line(elf, specs, FADDR2LINE)
    assert "netif_receive_like.cold at dev.c:?" in ref.stdout
    got = run_cli("resolve", "--vmlinux", str(elf), *specs)
    assert got.stdout == ref.stdout


@pytest.mark.parametrize("spec", ["no_such_function+0x10", "netif_receive_like+0x21", "raw_ioctl+0x5/0x50"])
def test_resolve_api_not_found(spec: str) -> None:
    with pytest.raises(SymbolNotFoundError), Symbolizer(fixture("kshapes-dwarf5.elf")) as sym:
        sym.resolve(spec)


@pytest.mark.parametrize("spec", ["ip_local_out_like", "+0x10", "ip_local_out_like+", "ip_local_out_like+zz"])
def test_resolve_api_malformed(spec: str) -> None:
    with pytest.raises(SpecError), Symbolizer(fixture("kshapes-dwarf5.elf")) as sym:
        sym.resolve(spec)


# -- (b) the command line against faddr2line ----------------------------------------------------------


@needs_faddr2line
@pytest.mark.parametrize("elf_name", DEBUG_ELVES)
def test_cli_matches_faddr2line_all_specs_at_once(elf_name: str) -> None:
    assert FADDR2LINE is not None
    elf = fixture(elf_name)
    ref = faddr2line(elf, SPECS, FADDR2LINE)
    assert ref.stdout.count("(inlined by)") >= 10, ref  # sanity: faddr2line found the prefix and chains
    assert "debian/build" not in ref.stdout
    got = run_cli("resolve", "--vmlinux", str(elf), *SPECS)
    assert "Traceback" not in got.stderr
    assert got.stdout == ref.stdout
    no_match = [ln for ln in ref.stderr.splitlines() if ln.startswith("no match for ")]
    assert [ln for ln in got.stderr.splitlines() if ln.startswith("no match for ")] == no_match
    assert got.returncode == ksym.EXIT_UNRESOLVED  # some specs do not resolve


@needs_faddr2line
@pytest.mark.parametrize("spec", SPECS)
def test_cli_matches_faddr2line_per_spec(spec: str) -> None:
    assert FADDR2LINE is not None
    elf = fixture("kshapes-dwarf5.elf")
    ref = faddr2line(elf, [spec], FADDR2LINE)
    got = run_cli("resolve", "--vmlinux", str(elf), spec)
    assert "Traceback" not in got.stderr
    assert got.stdout == ref.stdout
    resolved = any(not ln.startswith("skipping ") for ln in ref.stdout.splitlines())
    assert got.returncode == (ksym.EXIT_OK if resolved else ksym.EXIT_UNRESOLVED), got.stderr
    if "no match for" in ref.stderr:
        assert f"no match for {spec}" in got.stderr


@needs_addr2line
def test_cli_json_chains_match_addr2line() -> None:
    elf = fixture("kshapes-dwarf5.elf")
    prefix = dir_prefix(elf)
    got = run_cli("resolve", "--json", "--vmlinux", str(elf), *SPECS)
    assert "Traceback" not in got.stderr
    objs = [json.loads(line) for line in got.stdout.splitlines()]
    assert [o["query"] for o in objs] == SPECS
    with Symbolizer(elf) as s:
        for spec, obj in zip(SPECS, objs):
            try:
                api = s.resolve(spec)
            except SymbolNotFoundError:
                api = []
            assert obj["resolved"] == bool(api)
            assert len(obj["matches"]) == len(api), spec
            if not api:
                continue
            want_chains = addr2line_batch(elf, [int(m["address"], 16) for m in obj["matches"]])
            for m, want in zip(obj["matches"], want_chains):
                got_chain = [(c["function"], c["file"], c["line"], c["discriminator"]) for c in m["chain"]]
                assert got_chain == stripped(want, prefix), spec


# -- (c) unusable inputs -------------------------------------------------------------------------------


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, type[ksym.KsymError]]]:
    text = tmp / "notes.txt"
    text.write_text("this is not an ELF file\n" * 40)
    empty = tmp / "empty.elf"
    empty.write_bytes(b"")
    return {
        "missing": (tmp / "no-such-vmlinux", FileNotFoundKsymError),
        "truncated": (fixture("kshapes-truncated.elf"), BadFileError),
        "nodebug": (fixture("kshapes-nodebug.elf"), MissingDebugInfoError),
        "nosymtab": (fixture("kshapes-nosymtab.elf"), BadFileError),
        "nosymtab-dwarf": (fixture("kshapes-nosymtab-dwarf.elf"), BadFileError),
        "text": (text, BadFileError),
        "empty": (empty, BadFileError),
    }


BAD_CASES = ["missing", "truncated", "nodebug", "nosymtab", "nosymtab-dwarf", "text", "empty"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_cli_bad_input_one_line_and_exit_code(case: str, tmp_path: Path) -> None:
    path, exc = _bad_inputs(tmp_path)[case]
    got = run_cli("resolve", "--vmlinux", str(path), "start_kernel+0")
    assert got.stdout == ""
    assert "Traceback" not in got.stderr
    lines = got.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), got.stderr
    assert got.returncode == exc.exit_code
    assert got.returncode not in (0, ksym.EXIT_UNRESOLVED, ksym.EXIT_USAGE, ksym.EXIT_INTERNAL)


def test_bad_input_exit_codes_are_distinct() -> None:
    assert FileNotFoundKsymError.exit_code != BadFileError.exit_code
    codes = {ksym.EXIT_OK, ksym.EXIT_UNRESOLVED, ksym.EXIT_USAGE, FileNotFoundKsymError.exit_code,
             BadFileError.exit_code, ksym.EXIT_INTERNAL}
    assert len(codes) == 6


@pytest.mark.parametrize("case", BAD_CASES)
def test_api_bad_input_raises(case: str, tmp_path: Path) -> None:
    path, exc = _bad_inputs(tmp_path)[case]
    with pytest.raises(exc), Symbolizer(path) as sym:
        sym.resolve("start_kernel+0")


def _mapped(path: Path) -> list[str]:
    """The lines of /proc/self/maps naming ``path``."""
    with open("/proc/self/maps", encoding="utf-8") as f:
        return [ln for ln in f if ln.rstrip("\n").endswith(" " + str(path))]


@pytest.mark.parametrize("open_it", [KernelImage, lambda p: Symbolizer(p, use_index=False)], ids=["image", "api"])
def test_a_file_refused_after_it_was_mapped_is_unmapped(open_it: Callable[[Path], object]) -> None:
    """A truncated ELF file is refused after it was mapped: the error comes with neither the file nor its
    mapping open (the half-made image stays alive as long as the caller keeps the exception)."""
    path = fixture("kshapes-truncated.elf").resolve()
    with pytest.raises(BadFileError, match="truncated ELF file") as exc:
        open_it(path)
    assert exc.value is not None
    assert _mapped(path) == []


@needs_faddr2line
@pytest.mark.parametrize("case", ["truncated", "nodebug", "text"])
def test_faddr2line_also_refuses(case: str, tmp_path: Path) -> None:
    """The reference agrees these files are unusable (it prints no resolution for them)."""
    assert FADDR2LINE is not None
    path, _ = _bad_inputs(tmp_path)[case]
    ref = faddr2line(path, ["start_kernel+0"], FADDR2LINE)
    assert ref.stdout == ""
    assert ref.returncode != 0
