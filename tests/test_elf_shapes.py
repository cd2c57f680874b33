"""Other ELF shapes against binutils ``addr2line -fi``: the binaries pyelftools' test suite ships, and
shapes built here with gcc (and clang when installed).

For every binary and every defined function symbol of an executable section, the function's start,
start+1 and middle are given to ``ksym resolve --vmlinux FILE`` as raw addresses (``0x5e0``: any
number of hex digits) and to ``addr2line -a -f -i -e FILE`` (one process each, batched); ksym's
output, turned into addr2line's two-line form, must be addr2line's text exactly. In a relocatable
object (ET_REL, the type of a ``.ko``) a raw address is what addr2line makes of it: an offset into
the first allocated section that holds it. There ``name+off`` frames are compared too, with
``addr2line -fi -j SECTION`` (what scripts/faddr2line runs) at the symbol's section offset.

The shapes built here: ``gcc -c -g -O2`` objects (a function at section offset 0; with
``-ffunction-sections`` every function at offset 0 of its own section), a ``-nostdlib`` program whose
``_start`` is assembly without DWARF, the same program after ``strip --strip-debug`` (a symbol table,
no DWARF), and clang's objects and program when clang is installed.

pyelftools' sdist comes from tools/fetch-testdata.sh (``$KSYM_TESTDATA/pyelftools``); without it the
pyelftools cases skip with the reason printed, or fail under CI=true. Its binaries are never committed.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from anchors import faddr2line, find_faddr2line, find_test_vmlinux, fixture, missing
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

_DATA = Path(os.environ.get("KSYM_TESTDATA", "/var/tmp/ksym-testdata"))
PYELFTOOLS_SDIST = _DATA / "pyelftools" / "pyelftools-0.33.tar.gz"

#: x86-64 binaries of pyelftools 0.33's test suite that have a symbol table (members of the sdist).
PYELFTOOLS_ELVES = [
    "examples/sample_exe64.elf",
    "test/testfiles_for_readelf/exe_simple64.elf",
    "test/testfiles_for_readelf/issue103.elf",
    "test/testfiles_for_readelf/struct-bitfield-packed.elf",
    "test/testfiles_for_readelf/dwarf_lineprogramv5.so.elf",
    "test/testfiles_for_readelf/dwarf_test_versions_mix.so.elf",
    "test/testfiles_for_readelf/tls64.so.elf",
    "test/testfiles_for_readelf/exe_compressed64.elf",
    "test/testfiles_for_readelf/clang33-simple.o",
    "test/testfiles_for_readelf/gcc48-simple.o",
    "test/testfiles_for_readelf/gcc_tailcall.o.elf",
    "test/testfiles_for_readelf/improved-dwarfv4.o.elf",
    "test/testfiles_for_readelf/empty-cie.o.elf",
    "test/testfiles_for_location_info/test-dwarf2.o",
    "test/testfiles_for_location_info/test-dwarf4.o",
    "test/testfiles_for_dwarfdump/dwarf_llpair.so.elf",
    "test/testfiles_for_unittests/aranges_absent.so.elf",
    "test/testfiles_for_unittests/aranges_partial.so.elf",
    "test/testfiles_for_unittests/compressed_64.o",
    "test/testfiles_for_unittests/dwarf_lineprog_data16.so.elf",
    "test/testfiles_for_unittests/dwarfv5_basic.elf",
    "test/testfiles_for_unittests/debuglink.debug",
    "test/testfiles_for_unittests/lib_versioned64.so.elf",
    "test/testfiles_for_unittests/pascalenum.o",
    "test/testfiles_for_unittests/unicode_symbols.elf",
]

#: C++ binaries of the sdist: addr2line names a C++ function by its linkage name (``_Z3LogPKc``), or by
#: the ELF symbol at the first address of it that the process was asked about (so the name depends on
#: the order of the questions), where ksym prints the DWARF name (``Log``): a kernel is C. Their files,
#: lines, discriminators and inline depth are compared; the function lines are not.
CXX_ELVES = [
    "test/testfiles_for_readelf/dwarf_v5ops.so.elf",
    "test/testfiles_for_readelf/penalty_64_clang.o.elf",
    "test/testfiles_for_readelf/penalty_64_gcc.o.elf",
    "test/testfiles_for_dwarfdump/dwarf_cpptype_volatile.so.elf",
    "test/testfiles_for_unittests/dwarf_gnuops1.o",
    "test/testfiles_for_unittests/lambda.elf",
]

#: Not compared: cuv5_x86-64_gcc.so.elf (DWARF 5 type units ahead of the compile unit in .debug_info:
#: binutils takes the first type unit, which has no address ranges, as covering every address and prints
#: its line table's file without the compile unit's directory; ksym answers from the compile unit) and
#: note_gnu_property.elf (no function symbol), dwarf_v5ops-11.so.elf (clang 11: binutils 2.40 drops the
#: inline levels whose ranges are DW_FORM_rnglistx lists, where ksym prints them as llvm-symbolizer does;
#: docs/usage.md, "Clang and ThinLTO kernels").

ADDR2LINE = shutil.which("addr2line")
FADDR2LINE = find_faddr2line()
GCC = shutil.which("gcc")
CLANG = shutil.which("clang")

_SHAPE_C = r"""
static inline __attribute__((always_inline)) int scale(int x)
{
	return x * 3 + 1;
}

__attribute__((noinline)) int first(int a)
{
	return scale(a) + 2;
}

__attribute__((noinline)) int sum(const int *p, int n)
{
	int s = 0;
	for (int i = 0; i < n; i++)
		s += scale(p[i]);
	return s;
}

int third(int a)
{
	return sum(&a, 1) + first(a);
}
"""

_PROG_C = r"""
__attribute__((noinline)) long twice(long x)
{
	return x * 2;
}

long cmain(long a)
{
	return twice(a) + 1;
}
"""

_START_S = """
	.text
	.globl _start
	.type _start, @function
_start:
	xor %edi, %edi
	call cmain
	mov %eax, %edi
	mov $60, %eax
	syscall
	.size _start, .-_start
"""


pytestmark = pytest.mark.usefixtures("private_cache")  # tests/conftest.py


def _need_addr2line() -> str:
    if ADDR2LINE is None:
        missing("addr2line (binutils) is not installed")
    assert ADDR2LINE is not None
    return ADDR2LINE


@pytest.fixture(scope="module")
def pyelftools_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The x86-64 binaries of pyelftools' sdist, extracted (only those) into a temporary directory."""
    if not PYELFTOOLS_SDIST.is_file():
        missing(f"{PYELFTOOLS_SDIST} is missing: run tools/fetch-testdata.sh (pip download pyelftools==0.33)")
    out = tmp_path_factory.mktemp("pyelftools")
    prefix = "pyelftools-0.33/"
    with tarfile.open(PYELFTOOLS_SDIST) as tar:
        for name in PYELFTOOLS_ELVES + CXX_ELVES:
            member = tar.getmember(prefix + name)
            src = tar.extractfile(member) if member.isreg() else None
            assert src is not None, f"{name} is not a regular file in {PYELFTOOLS_SDIST}"
            dest = out / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(src.read())
    return out


def _compile(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr}"


def _build(compiler: str, out: Path) -> list[Path]:
    """The shapes built with ``compiler`` (gcc or clang) in ``out``."""
    (out / "shape.c").write_text(_SHAPE_C)
    (out / "prog.c").write_text(_PROG_C)
    (out / "start.S").write_text(_START_S)
    cc = Path(compiler).name
    made: list[Path] = []
    for name, flags in ((f"{cc}-shape.o", []), (f"{cc}-shape-fs.o", ["-ffunction-sections"]),
                        (f"{cc}-shape-dwarf4.o", ["-gdwarf-4"])):
        _compile([compiler, "-c", "-g", "-O2", *flags, "shape.c", "-o", name], out)
        made.append(out / name)
    _compile([compiler, "-c", "start.S", "-o", f"{cc}-start.o"], out)  # no -g: _start has no DWARF
    prog = f"{cc}-nostdlib.elf"
    _compile([compiler, "-g", "-O2", "-nostdlib", "-static", "-no-pie", f"{cc}-start.o", "prog.c", "-o", prog],
             out)
    made.append(out / prog)
    nodebug = f"{cc}-nostdlib-nodebug.elf"
    _compile(["strip", "--strip-debug", prog, "-o", nodebug], out)
    made.append(out / nodebug)
    return made


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every shape built here, by file name: gcc's, and clang's when clang is installed."""
    if GCC is None:
        missing("gcc is not installed")
    assert GCC is not None
    out: dict[str, Path] = {}
    for compiler in (GCC, CLANG):
        if compiler is not None:
            d = tmp_path_factory.mktemp(Path(compiler).name)
            out.update((p.name, p) for p in _build(compiler, d))
    return out


BUILT_NAMES = [f"{cc}-{n}" for cc in ("gcc", "clang") for n in
               ("shape.o", "shape-fs.o", "shape-dwarf4.o", "nostdlib.elf", "nostdlib-nodebug.elf")]


# --- reading the binaries ----------------------------------------------------------------------------


class Func(NamedTuple):
    """A defined function symbol of an executable section."""

    name: str
    section: str
    value: int
    size: int


def _functions(elf: Path) -> tuple[bool, list[Func]]:
    """(whether ``elf`` is ET_REL, its FUNC symbols in executable sections)."""
    with elf.open("rb") as f:
        ef = ELFFile(f)
        rel = ef.header["e_type"] == "ET_REL"
        out: list[Func] = []
        for sec in ef.iter_sections():
            if not isinstance(sec, SymbolTableSection) or sec.name != ".symtab":
                continue
            for sym in sec.iter_symbols():
                shndx = sym["st_shndx"]
                if sym["st_info"]["type"] != "STT_FUNC" or not isinstance(shndx, int) or shndx == 0:
                    continue
                target = ef.get_section(shndx)
                if not target["sh_flags"] & 0x4:
                    continue
                out.append(Func(sym.name, target.name, int(sym["st_value"]), int(sym["st_size"])))
    return rel, out


def _has_dwarf(elf: Path) -> bool:
    with elf.open("rb") as f:
        return ELFFile(f).get_section_by_name(".debug_info") is not None


def _probe_offsets(size: int) -> list[int]:
    return sorted({0, 1, size // 2} if size > 1 else {0})


def _split_records(text: str, is_head: object) -> list[list[str]]:
    """Lines grouped under each line that ``is_head`` accepts (the head itself left out)."""
    records: list[list[str]] = []
    for line in text.splitlines():
        if is_head(line):  # type: ignore[operator]
            records.append([])
        elif records:
            records[-1].append(line)
        else:
            raise AssertionError(f"output before the first record: {line!r}")
    return records


def addr2line_texts(elf: Path, inputs: list[int], section: str | None = None) -> list[str]:
    """``addr2line -a -f -i -e ELF`` (``-j SECTION``): per input, the lines after its address line."""
    cmd = [_need_addr2line(), "-a", "-f", "-i", "-e", str(elf)]
    if section is not None:
        cmd[1:1] = ["-j", section]
    proc = subprocess.run(cmd, input="".join(f"{a:#x}\n" for a in inputs), capture_output=True, text=True,
                          check=True, env={**os.environ, "LC_ALL": "C"}, timeout=120)
    recs = _split_records(proc.stdout, lambda ln: ln.startswith("0x"))
    assert len(recs) == len(inputs), proc.stdout
    return ["\n".join(r) for r in recs]


def _addr2line_form(block: list[str]) -> str:
    """One ksym resolve block (after its header) in ``addr2line -f -i`` form: ``FUNC`` then ``FILE:LINE``."""
    out: list[str] = []
    for line in block:
        if line == "?? ??:0":
            out += ["??", "??:0"]
            continue
        line = line.removeprefix("(inlined by) ")
        func, sep, where = line.partition(" at ")
        assert sep, f"not a chain line: {line!r}"
        out += [func, where]
    return "\n".join(out)


def ksym_texts(elf: Path, frames: list[str]) -> tuple[list[str], subprocess.CompletedProcess[str]]:
    """``ksym resolve --vmlinux ELF FRAME...``: per frame, its chain in addr2line's form."""
    proc = subprocess.run([sys.executable, "-m", "ksym", "resolve", "--no-index", "--vmlinux", str(elf), *frames],
                          capture_output=True, text=True, check=False, env={**os.environ, "LC_ALL": "C"},
                          timeout=300)
    blocks = [b.splitlines() for b in proc.stdout.split("\n\n")] if proc.stdout else []
    return [_addr2line_form(b[1:]) for b in blocks], proc


def _report(name: str, mismatches: list[str], total: int) -> str:
    more = f"\n... and {len(mismatches) - 20} more" if len(mismatches) > 20 else ""
    return f"{name}: {len(mismatches)} of {total} differ:\n" + "\n".join(mismatches[:20]) + more


def _without_functions(text: str) -> str:
    """addr2line -f -i text with the function lines left out (every other line, from the first)."""
    return "\n".join(text.splitlines()[1::2])


def check_raw_addresses(elf: Path, cxx: bool = False) -> int:
    """Every function's start, start+1 and middle as raw addresses: ksym's text is addr2line's (with
    ``cxx``, the function lines are left out: see CXX_ELVES)."""
    _rel, funcs = _functions(elf)
    addrs = sorted({f.value + o for f in funcs for o in _probe_offsets(f.size)})
    assert addrs, f"{elf.name}: no function symbols"
    want = addr2line_texts(elf, addrs)
    got, proc = ksym_texts(elf, [f"{a:#x}" for a in addrs])
    if cxx:
        want = [_without_functions(w) for w in want]
        got = [_without_functions(g) for g in got]
    assert proc.returncode == 0, f"{elf.name}: exit {proc.returncode}: {proc.stderr}"
    assert proc.stderr == "" or proc.stderr.startswith("ksym: warning:"), proc.stderr
    assert len(got) == len(addrs), f"{elf.name}: {len(got)} blocks for {len(addrs)} addresses: {proc.stderr}"
    bad = [f"{a:#x}:\n  addr2line: {w!r}\n  ksym:      {g!r}" for a, w, g in zip(addrs, want, got) if w != g]
    assert not bad, _report(elf.name, bad, len(addrs))
    return len(addrs)


def check_module_frames(elf: Path, cxx: bool = False) -> int:
    """In an ET_REL object, ``name+off`` at each function's start, start+1 and middle (names that occur
    once): ksym's chain is ``addr2line -fi -j SECTION`` at the symbol's section offset. At section
    offset 0 (``first+0x0``) scripts/faddr2line refuses the address as 0 (``bad address``), and so does
    ksym in that mode: those frames must give that line on stderr."""
    rel, funcs = _functions(elf)
    assert rel
    if not _has_dwarf(elf):
        # scripts/faddr2line refuses a file without DWARF ("CONFIG_DEBUG_INFO not enabled"): so does ksym
        # in that mode, in one line (exit 4)
        _got, proc = ksym_texts(elf, [f"{funcs[0].name}+0x1"])
        assert (proc.returncode, proc.stdout) == (4, ""), proc
        assert len(proc.stderr.splitlines()) == 1 and "no DWARF" in proc.stderr, proc.stderr
        return 1
    counts: dict[str, int] = {}
    for f in funcs:
        counts[f.name] = counts.get(f.name, 0) + 1
    probes = [(f, o) for f in funcs if counts[f.name] == 1 and f.size > 0 for o in _probe_offsets(f.size)]
    cases = [(f, o) for f, o in probes if f.value + o]
    zero = [f"{f.name}+{o:#x}" for f, o in probes if not f.value + o]
    if zero:
        got_zero, proc = ksym_texts(elf, zero)
        assert proc.returncode == 1 and not got_zero, proc
        assert [ln for ln in proc.stderr.splitlines() if not ln.startswith("ksym: warning:")] == \
            ["bad address: 0x0000000000000000 + 0x0"] * len(zero), proc.stderr
    by_section: dict[str, list[tuple[Func, int]]] = {}
    for f, o in cases:
        by_section.setdefault(f.section, []).append((f, o))
    want: dict[tuple[str, int], str] = {}
    for section, group in by_section.items():
        texts = addr2line_texts(elf, [f.value + o for f, o in group], section)
        want.update(((f.name, o), t) for (f, o), t in zip(group, texts))
    frames = [f"{f.name}+{o:#x}" for f, o in cases]
    got, proc = ksym_texts(elf, frames)
    if cxx:
        want = {k: _without_functions(v) for k, v in want.items()}
        got = [_without_functions(g) for g in got]
    assert proc.returncode == 0, f"{elf.name}: exit {proc.returncode}: {proc.stderr}"
    assert len(got) == len(cases), f"{elf.name}: {len(got)} blocks for {len(cases)} frames: {proc.stderr}"
    bad = [f"{fr}:\n  addr2line -j: {want[(f.name, o)]!r}\n  ksym:         {g!r}"
           for fr, (f, o), g in zip(frames, cases, got) if want[(f.name, o)] != g]
    assert not bad, _report(elf.name, bad, len(cases))
    return len(cases)


# --- the tests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("member", PYELFTOOLS_ELVES, ids=lambda m: Path(m).name)
def test_pyelftools_raw_addresses_match_addr2line(pyelftools_dir: Path, member: str) -> None:
    check_raw_addresses(pyelftools_dir / member)


@pytest.mark.parametrize("member", CXX_ELVES, ids=lambda m: Path(m).name)
def test_pyelftools_cxx_raw_addresses_match_addr2line(pyelftools_dir: Path, member: str) -> None:
    check_raw_addresses(pyelftools_dir / member, cxx=True)


# (testfiles_for_location_info/test-dwarf*.o are linked programs despite their names)
_OBJECTS = [m for m in PYELFTOOLS_ELVES + CXX_ELVES if m.endswith((".o", ".o.elf")) and "location_info" not in m]


@pytest.mark.parametrize("member", _OBJECTS, ids=lambda m: Path(m).name)
def test_pyelftools_object_frames_match_addr2line(pyelftools_dir: Path, member: str) -> None:
    check_module_frames(pyelftools_dir / member, cxx=member in CXX_ELVES)


@pytest.mark.parametrize("name", BUILT_NAMES)
def test_built_raw_addresses_match_addr2line(built: dict[str, Path], name: str) -> None:
    if name not in built:
        pytest.skip("clang is not installed")
    check_raw_addresses(built[name])


@pytest.mark.parametrize("name", [n for n in BUILT_NAMES if n.endswith(".o")])
def test_built_object_frames_match_addr2line(built: dict[str, Path], name: str) -> None:
    if name not in built:
        pytest.skip("clang is not installed")
    check_module_frames(built[name])


# --- the single shapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "address"), [
    ("0x5e0", 0x5E0), ("0x17ce7", 0x17CE7), ("0X1f", 0x1F), ("0x0", 0),
    ("0xffffffff8184586e", 0xFFFFFFFF8184586E), ("ffffffff8184586e", 0xFFFFFFFF8184586E),
    ("0x000000000000000005e0", 0x5E0),
])
def test_raw_addresses_of_any_length(text: str, address: int) -> None:
    from ksym import AddressSpec, parse_spec

    assert parse_spec(text) == AddressSpec(text, address)


@pytest.mark.parametrize("text", ["deadbeef", "5e0", "0x", "0x1ffffffffffffffff", "0xfg"])
def test_not_raw_addresses(text: str) -> None:
    """Bare hex shorter than 16 digits could be a name (faddr2line: ``bad func+offset``); past 64 bits
    is no address."""
    from ksym import SpecError, parse_spec

    with pytest.raises(SpecError, match="bad func\\+offset"):
        parse_spec(text)


def test_module_address_past_every_section_is_refused(built: dict[str, Path]) -> None:
    """A runtime address (``0xffffffffc0a01234``) is no offset into a module's sections: one line, exit 2."""
    from ksym import SpecError
    from ksym.modules import ModuleSymbolizer

    with pytest.raises(SpecError, match="past the end of every allocated section"):
        ModuleSymbolizer(built["gcc-shape.o"]).resolve("0xffffffffc0a01234")
    _got, proc = ksym_texts(built["gcc-shape.o"], ["0xffffffffc0a01234"])
    assert proc.returncode == 2 and proc.stdout == "" and len(proc.stderr.splitlines()) == 1, proc


@pytest.mark.parametrize("name", ["gcc-nostdlib-nodebug.elf", "gcc-shape-nodebug.o"])
def test_symbols_without_dwarf(built: dict[str, Path], name: str, tmp_path: Path) -> None:
    """A symbol table without DWARF: addresses are answered from the symbols as addr2line does (exit 0,
    one warning line), ``func+off`` is refused in one line (exit 4) as scripts/faddr2line refuses it."""
    elf = built.get(name)
    if elf is None:  # the object: stripped here
        elf = tmp_path / name
        _compile(["strip", "--strip-debug", str(built["gcc-shape.o"]), "-o", str(elf)], tmp_path)
    _rel, funcs = _functions(elf)
    f = next(f for f in funcs if f.size > 1)
    want = addr2line_texts(elf, [f.value + 1])
    got, proc = ksym_texts(elf, [f"{f.value + 1:#x}"])
    assert proc.returncode == 0 and got == want and want[0].startswith(f"{f.name}\n"), (got, want, proc)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ksym: warning:") and "no DWARF" in lines[0], proc.stderr
    _got, proc = ksym_texts(elf, [f"{f.name}+0x1"])
    assert (proc.returncode, proc.stdout) == (4, ""), proc
    assert len(proc.stderr.splitlines()) == 1 and "no DWARF" in proc.stderr, proc.stderr
    if FADDR2LINE is not None:
        ref = faddr2line(elf, [f"{f.name}+0x1"], FADDR2LINE)
        assert ref.stdout == "" and "CONFIG_DEBUG_INFO not enabled" in ref.stderr, ref


@pytest.mark.parametrize("member", ["test/testfiles_for_unittests/test_debugsup1.debug",
                                    "test/testfiles_for_unittests/test_gnudebugaltlink1.debug"])
def test_strings_in_a_supplementary_file_are_not_answered(tmp_path: Path, member: str) -> None:
    """Names and directories in a supplementary debug file (DW_FORM_strp_sup, DW_FORM_GNU_strp_alt) are
    not read: no ``??/../sysdeps/...`` path made of a placeholder, but one error line (exit 4). binutils
    stops at a DW_FORM_strp_sup unit (``DWARF error: invalid or unhandled FORM value``) and answers from
    the symbols; without the alternate file it takes a DW_FORM_GNU_strp_alt string as absent and prints
    the path without its directory (``../sysdeps/x86_64/start.S:57``), which ksym does not print."""
    if not PYELFTOOLS_SDIST.is_file():
        missing(f"{PYELFTOOLS_SDIST} is missing: run tools/fetch-testdata.sh (pip download pyelftools==0.33)")
    with tarfile.open(PYELFTOOLS_SDIST) as tar:
        src = tar.extractfile(tar.getmember("pyelftools-0.33/" + member))
        assert src is not None
        elf = tmp_path / Path(member).name
        elf.write_bytes(src.read())
    _rel, funcs = _functions(elf)
    start = next(f for f in funcs if f.name == "_start")
    ref = subprocess.run([_need_addr2line(), "-f", "-e", str(elf), f"{start.value:#x}"], capture_output=True,
                         text=True, check=False, env={**os.environ, "LC_ALL": "C"}, timeout=60)
    if "debugsup" in member:
        assert ref.stdout == "_start\n??:?\n" and "FORM value" in ref.stderr, ref
    else:
        assert ref.stdout.startswith("_start\n../sysdeps/"), ref
    _got, proc = ksym_texts(elf, [f"{start.value:#x}"])
    assert proc.returncode == 4 and proc.stdout == "", proc
    assert len(proc.stderr.splitlines()) == 1 and "supplementary debug file" in proc.stderr, proc.stderr


@pytest.mark.parametrize("name", [n for n in BUILT_NAMES if n.endswith(".o")])
def test_built_object_frames_match_faddr2line(built: dict[str, Path], name: str) -> None:
    """``ksym resolve`` of an object's ``name+off`` frames is scripts/faddr2line's output, byte for byte
    (its ``bad address`` line for a function at section offset 0 included)."""
    if name not in built:
        pytest.skip("clang is not installed")
    if FADDR2LINE is None:
        missing("the kernel's scripts/faddr2line was not found (run tools/fetch-testdata.sh)")
    assert FADDR2LINE is not None
    elf = built[name]
    _rel, funcs = _functions(elf)
    specs = [f"{f.name}+{o:#x}" for f in funcs for o in _probe_offsets(f.size)]
    ref = faddr2line(elf, specs, FADDR2LINE)
    _got, proc = ksym_texts(elf, specs)
    assert proc.stdout == ref.stdout
    assert proc.stderr.splitlines() == [ln for ln in ref.stderr.splitlines() if not ln.startswith("ksym")]
    assert "bad address" in ref.stderr


@pytest.mark.parametrize("name", ["gcc-shape.o", "gcc-shape-fs.o"])
def test_annotate_module_frame_at_section_offset_0(built: dict[str, Path], name: str, tmp_path: Path) -> None:
    """``ksym annotate`` of a module frame ``first+0x0/0x10 [shape]`` where ``first`` starts its section:
    addr2line -fi -j answers that offset, so annotate does (faddr2line's ``bad address`` for address 0 is
    the script's own check, kept by ``ksym resolve`` alone)."""
    import json

    mods = tmp_path / "mods"
    mods.mkdir()
    shutil.copy(built[name], mods / "shape.ko")
    _rel, funcs = _functions(built[name])
    at_zero = [f for f in funcs if f.value == 0]
    assert at_zero
    dump = tmp_path / "dump.txt"
    from ksym.modules import ModuleSymbolizer

    kallsyms_size = {f.name: ModuleSymbolizer(built[name]).raw_symbols.faddr2line_matches(f.name)[0].size
                     for f in at_zero}
    dump.write_text("".join(f" {f.name}+0x0/{kallsyms_size[f.name]:#x} [shape]\n" for f in at_zero))
    vmlinux = Path(__file__).resolve().parent.parent / "fixtures" / "bin" / "kshapes-dwarf5.elf"
    proc = subprocess.run([sys.executable, "-m", "ksym", "annotate", "--json", "--no-index", "--vmlinux",
                           str(vmlinux), "--modules", str(mods), str(dump)], capture_output=True, text=True,
                          check=False, env={**os.environ, "LC_ALL": "C"}, timeout=300)
    assert proc.returncode == 0, proc
    frames = [json.loads(ln) for ln in proc.stdout.splitlines() if '"symbol"' in ln]
    assert len(frames) == len(at_zero)
    for f, got in zip(at_zero, frames):
        want = addr2line_texts(built[name], [0], f.section)[0]
        text = "\n".join(f"{c['function']}\n{c['file']}:{c['line'] or '?'}" for c in got["chain"])
        assert (got["status"], text) == ("resolved", want), got


# --- the section table read without pyelftools ------------------------------------------------------


def _pyelftools_table(path: Path) -> tuple[tuple[str, bool, int, str], list[Any], list[int]] | None:
    """The header facts, sections and links as pyelftools reads them (with ksym's checks of the section
    table, :class:`ksym.image.SectionTableCheck`), or None where that reading refuses the file."""
    from elftools.common.exceptions import ELFError

    from ksym.image import SectionTableCheck, SectionTableError, _sh_type_num
    from ksym.symbols import Section

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            elf = ELFFile(f)
            if elf.header["e_shoff"] + elf.num_sections() * elf.header["e_shentsize"] > size:
                return None
            check = SectionTableCheck(elf, size)
            sections, links = [], []
            for i, sec in enumerate(elf.iter_sections()):
                h = sec.header
                check.entry(i, h)
                t = h["sh_type"]
                sections.append(Section(i, sec.name, t if isinstance(t, int) else _sh_type_num(str(t)), h["sh_flags"],
                                        h["sh_addr"], h["sh_offset"], h["sh_size"]))
                links.append(h["sh_link"])
        except (ELFError, SectionTableError, struct.error, ValueError, OSError, OverflowError):
            return None
        facts = (str(elf.header["e_type"]), bool(elf.little_endian), int(elf.elfclass), str(elf.header["e_machine"]))
        return facts, sections, links


def _plain_table(path: Path) -> Any:
    import mmap

    from ksym.image import _plain_section_table

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return _plain_section_table(mm, len(mm))


def _agrees(path: Path) -> bool:
    """Whether ksym read ``path``'s section table without pyelftools; where it did, it read what
    pyelftools reads."""
    plain = _plain_table(path)
    if plain is None:
        return False
    theirs = _pyelftools_table(path)
    assert theirs is not None, f"{path}: read without pyelftools, which refuses it"
    assert ((plain.elf_type, plain.little_endian, plain.elfclass, plain.machine), plain.sections, plain.links) == theirs
    return True


def test_section_table_without_pyelftools_is_what_pyelftools_reads(pyelftools_dir: Path) -> None:
    """A file's first use reads the ELF header and section table with ``struct`` (importing pyelftools
    costs more than reading them) when nothing in them needs pyelftools' own reading: the same facts and
    sections as pyelftools gives, on every fixture, pyelftools' binaries and the Debian vmlinux files;
    those read so include the vmlinux files and the uncompressed fixtures."""
    files = sorted(fixture("kshapes-dwarf5.elf").parent.glob("*.elf"))
    files += [pyelftools_dir / m for m in PYELFTOOLS_ELVES + CXX_ELVES]
    vmlinux = [p for p in (find_test_vmlinux(), _DATA / "arm64" / "vmlinux-6.1.0-53-arm64") if p and p.is_file()]
    read = {p.name for p in files + vmlinux if _agrees(p)}
    assert {p.name for p in vmlinux} <= read
    assert {"kshapes-dwarf5.elf", "kshapes-i386-dwarf5.elf", "kshapes-clang.elf"} <= read, read
    for p in vmlinux:  # and opening one imports no pyelftools
        code = ("import sys; from ksym.image import KernelImage; img = KernelImage(sys.argv[1]); "
                "img.load_symbols(); img.close(); print(sorted(m for m in sys.modules if m.startswith('elftools')))")
        got = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, check=True)
        assert got.stdout.strip() == "[]", got


def test_section_table_without_pyelftools_on_damaged_headers(tmp_path: Path) -> None:
    """Seeded damage to section header entries and ELF header fields of three fixtures: where ksym reads
    the damaged table without pyelftools, pyelftools reads the same (and accepts it); every other copy
    is left to pyelftools' reading and its errors."""
    rng = random.Random(14)
    bad = tmp_path / "damaged.elf"
    read = refused = 0
    for name in ("kshapes-dwarf5.elf", "kshapes-i386-dwarf5.elf", "kshapes-dwarf4-zlib-gnu.elf"):
        pristine = fixture(name).read_bytes()
        e = "<" if pristine[5] == 1 else ">"
        if pristine[4] == 2:
            (shoff,) = struct.unpack_from(e + "Q", pristine, 0x28)
            shent, shnum = struct.unpack_from(e + "HH", pristine, 0x3A)
            fields = ((0, 4), (4, 4), (8, 8), (16, 8), (24, 8), (32, 8), (40, 4), (44, 4), (48, 8), (56, 8))
            header = ((4, 1), (5, 1), (16, 2), (18, 2), (40, 8), (58, 2), (60, 2), (62, 2))
        else:
            (shoff,) = struct.unpack_from(e + "I", pristine, 0x20)
            shent, shnum = struct.unpack_from(e + "HH", pristine, 0x2E)
            fields = tuple((4 * k, 4) for k in range(10))
            header = ((4, 1), (5, 1), (16, 2), (18, 2), (32, 4), (46, 2), (48, 2), (50, 2))
        for _ in range(150):
            out = bytearray(pristine)
            for _ in range(rng.choice((1, 1, 2))):
                if rng.random() < 0.8:
                    off, size = rng.choice(fields)
                    at = shoff + rng.randrange(shnum) * shent + off
                else:
                    at, size = rng.choice(header)
                fmt = e + {1: "B", 2: "H", 4: "I", 8: "Q"}[size]
                (old,) = struct.unpack_from(fmt, out, at)
                top = (1 << (8 * size)) - 1
                new = rng.choice((0, top, len(out), len(out) + rng.randrange(1, 64), old + rng.randrange(1, 4096),
                                  max(old - rng.randrange(1, 64), 0), rng.randrange(top + 1),
                                  old ^ (1 << rng.randrange(8 * size)), rng.randrange(20)))
                struct.pack_into(fmt, out, at, new & top)
            bad.write_bytes(out)
            if _agrees(bad):
                read += 1
            refused += _pyelftools_table(bad) is None
    assert read > 100 and refused > 100, (read, refused)
