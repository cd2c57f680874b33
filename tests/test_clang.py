"""Clang-built and ThinLTO fixtures against llvm-symbolizer, ``.llvm.<hash>`` names, and --path-map.

(a) every instruction start of every FUNC symbol, and every byte of .text, of the clang fixtures:
    ``Symbolizer.symbolize(addr).chain`` against ``llvm-symbolizer --inlining`` (fixtures/README.md
    lists where binutils' addr2line differs: it drops inline levels whose ranges are rnglistx lists);
(b) ThinLTO's promoted statics (``name.llvm.<hash>``): ``ksym resolve`` against faddr2line-shaped
    expectations built from llvm-symbolizer at that address, and against the real faddr2line when
    it is available; the bare name (what kernels 6.2-6.10 print) finds them too;
(c) ``--path-map OLD=NEW`` on the clang and gcc fixtures: the path shown, ``--list`` reading through
    it, the library API and malformed rules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from anchors import (
    REPO_ROOT,
    Frame,
    addr2line_batch,
    faddr2line,
    find_addr2line,
    find_faddr2line,
    find_llvm_symbolizer,
    fixture,
    func_symbols,
    llvm_symbolizer_batch,
    requires,
)
from elftools.elf.elffile import ELFFile
from test_fixtures_resolve import instruction_addresses

from ksym import PathMap, PathMapError, SourceLocation, Symbolizer
from ksym.errors import KsymError
from ksym.portable import PortableFile

CLANG_ELVES = ["kshapes-clang.elf", "kshapes-clang-thinlto.elf"]
THINLTO = fixture("kshapes-clang-thinlto.elf")
CLANG_ROOT = "/build/linux"  # DW_AT_comp_dir of the clang builds (fixtures/build.sh)
SRC = REPO_ROOT / "fixtures" / "src"

LLVM_SYMBOLIZER = find_llvm_symbolizer()
if LLVM_SYMBOLIZER is None:
    print("test_clang: llvm-symbolizer is not installed (apt install llvm): the comparisons are skipped",
          file=sys.stderr)
needs_llvm = requires(LLVM_SYMBOLIZER is not None, "llvm-symbolizer is not installed (Debian: apt install llvm)")
needs_addr2line = requires(find_addr2line() is not None, "addr2line (binutils) is not installed")
FADDR2LINE = find_faddr2line()


pytestmark = pytest.mark.usefixtures("private_cache")  # tests/conftest.py


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ksym", *args], capture_output=True, text=True, check=False,
                          env={**os.environ, "LC_ALL": "C"}, timeout=120, cwd=cwd)


def raw_frames(chain: tuple[SourceLocation, ...]) -> list[Frame]:
    """ksym's chain with the raw DWARF paths (what llvm-symbolizer prints); ``??`` when empty."""
    return [(loc.function, loc.raw_file, loc.line, loc.discriminator) for loc in chain] or [("??", "??", 0, 0)]


def _report(mismatches: list[str]) -> str:
    more = f"\n... and {len(mismatches) - 25} more" if len(mismatches) > 25 else ""
    return f"{len(mismatches)} mismatches:\n" + "\n".join(mismatches[:25]) + more


# -- (a) against llvm-symbolizer ---------------------------------------------------------------------


@needs_llvm
@pytest.mark.parametrize("elf_name", CLANG_ELVES)
def test_every_instruction_matches_llvm_symbolizer(elf_name: str) -> None:
    """Whole chains (function, raw path, line, discriminator) with DWARF names (``--functions=short``)."""
    elf = fixture(elf_name)
    insns = instruction_addresses(elf)
    expected = llvm_symbolizer_batch(elf, [a for _, _, a in insns], "short")
    mismatches = []
    depths: set[int] = set()
    with Symbolizer(elf) as s:
        for (name, base, addr), want in zip(insns, expected):
            got = raw_frames(s.symbolize(addr).chain)
            depths.add(len(want))
            if got != want:
                mismatches.append(f"{name}+{addr - base:#x} ({addr:#x}): ksym {got} != llvm-symbolizer {want}")
    assert not mismatches, _report(mismatches)
    assert {1, 2, 3} <= depths  # the inline shapes are there


@needs_llvm
@pytest.mark.parametrize("elf_name", CLANG_ELVES)
def test_linkage_names_are_the_symbols(elf_name: str) -> None:
    """``--functions=linkage`` (llvm-addr2line -f) names the outermost frame after the ELF symbol
    holding the address: that is ksym's ``Resolution.symbol``; the other frames are unchanged."""
    elf = fixture(elf_name)
    insns = instruction_addresses(elf)
    expected = llvm_symbolizer_batch(elf, [a for _, _, a in insns], "linkage")
    mismatches = []
    promoted = set()
    with Symbolizer(elf) as s:
        for (name, base, addr), want in zip(insns, expected):
            r = s.symbolize(addr)
            got = raw_frames(r.chain)
            got[-1] = (r.symbol or "??", *got[-1][1:])
            if ".llvm." in want[-1][0]:
                promoted.add(want[-1][0])
            if got != want:
                mismatches.append(f"{name}+{addr - base:#x} ({addr:#x}): ksym {got} != llvm-symbolizer {want}")
    assert not mismatches, _report(mismatches)
    if "thinlto" in elf_name:
        assert any(p.startswith("skb_csum_slow.llvm.") for p in promoted), promoted


@needs_llvm
def test_thinlto_inlines_across_units() -> None:
    """skb_csum_like (net/core/skbuff.c) inlined into sock_csum_user (net/core/sock.c): the inlined
    subroutine's abstract origin is in another unit (DW_FORM_ref_addr)."""
    addrs = [a for n, _b, a in instruction_addresses(THINLTO) if n == "sock_csum_user"]
    with Symbolizer(THINLTO) as s:
        chains = [raw_frames(s.symbolize(a).chain) for a in addrs]
    cross = [c for c in chains if len(c) == 2 and c[0][0] == "skb_csum_like" and c[1][0] == "sock_csum_user"]
    assert cross, chains
    assert cross[0][0][1] == f"{CLANG_ROOT}/net/core/skbuff.c" and cross[0][1][1] == f"{CLANG_ROOT}/net/core/sock.c"
    assert chains == llvm_symbolizer_batch(THINLTO, addrs)


@needs_llvm
@pytest.mark.parametrize("elf_name", CLANG_ELVES)
def test_every_byte_of_text(elf_name: str) -> None:
    """Every byte of .text (mid-instruction and padding included). Where llvm-symbolizer finds no DWARF
    function (padding) it prints ``??`` and ksym follows addr2line instead (the preceding symbol), so
    those bytes are compared with addr2line."""
    elf = fixture(elf_name)
    with elf.open("rb") as f:
        text = ELFFile(f).get_section_by_name(".text")
        lo, hi = text["sh_addr"], text["sh_addr"] + text["sh_size"]
    addrs = list(range(lo, hi))
    llvm = llvm_symbolizer_batch(elf, addrs, "short")
    padding = [a for a, w in zip(addrs, llvm) if w[-1][0] == "??"]
    bfd = dict(zip(padding, addr2line_batch(elf, padding))) if padding and find_addr2line() else {}
    mismatches = []
    with Symbolizer(elf) as s:
        for a, want in zip(addrs, llvm):
            got = raw_frames(s.symbolize(a).chain)
            if want[-1][0] == "??":
                if a in bfd and got != bfd[a]:
                    mismatches.append(f"{a:#x} (padding): ksym {got} != addr2line {bfd[a]}")
            elif got != want:
                mismatches.append(f"{a:#x}: ksym {got} != llvm-symbolizer {want}")
    assert not mismatches, _report(mismatches)


# -- (b) .llvm.<hash> names ----------------------------------------------------------------------------


def _promoted() -> list[tuple[str, int, int]]:
    return [(n, a, sz) for n, a, sz in func_symbols(THINLTO) if ".llvm." in n]


def _kallsyms_size(name: str) -> int:
    """faddr2line's size: distance to the next symbol of .text at a higher address (readelf's list)."""
    syms = func_symbols(THINLTO)
    addr = next(a for n, a, _ in syms if n == name)
    return min(a for _n, a, _s in syms if a > addr) - addr


def _expected_block(spec_text: str, name: str, offset: int) -> str:
    """faddr2line's output for one frame, built from llvm-symbolizer's chain at the address."""
    addr = next(a for n, a, _ in func_symbols(THINLTO) if n == name) + offset
    chain = llvm_symbolizer_batch(THINLTO, [addr], "short")[0]
    lines = [f"{spec_text}/{_kallsyms_size(name):#x}:"]
    for i, (fn, file, line, disc) in enumerate(chain):
        rel = file[len(CLANG_ROOT) + 1:] if file.startswith(CLANG_ROOT + "/") else file
        text = ("(inlined by) " if i else "") + f"{fn} at {rel}:{line or '?'}"
        lines.append(text + (f" (discriminator {disc})" if disc else ""))
    return "\n".join(lines)


def test_thinlto_fixture_has_promoted_statics() -> None:
    names = [n for n, _a, _s in _promoted()]
    assert any(n.startswith("skb_csum_slow.llvm.") for n in names), names
    assert len([n for n in names if n.startswith("raw_ioctl.llvm.")]) == 2, names


@needs_llvm
def test_resolve_full_llvm_names() -> None:
    specs, blocks = [], []
    for name, _addr, size in _promoted():
        for off in sorted({0, 4, size - 1}):
            spec = f"{name}+{off:#x}"
            specs.append(spec)
            blocks.append(_expected_block(spec, name, off))
    r = run_cli("resolve", "--no-index", "-e", str(THINLTO), *specs)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "\n\n".join(blocks) + "\n"
    assert r.stderr == ""


@requires(FADDR2LINE is not None, "the kernel's scripts/faddr2line was not found (tools/fetch-testdata.sh)")
@needs_addr2line
def test_llvm_names_like_faddr2line() -> None:
    """The real script on the same file: full names match exactly; the bare name is no match there."""
    assert FADDR2LINE is not None
    names = [n for n, _a, _s in _promoted()]
    specs = [f"{n}+0x4" for n in names] + [f"{names[0]}+0x2/{_kallsyms_size(names[0]):#x}"]
    want = faddr2line(THINLTO, specs, FADDR2LINE)
    got = run_cli("resolve", "--no-index", "-e", str(THINLTO), *specs)
    assert (got.stdout, got.returncode) == (want.stdout, want.returncode)
    bare = faddr2line(THINLTO, ["skb_csum_slow+0x10"], FADDR2LINE)
    assert bare.stdout == "" and "no match for skb_csum_slow+0x10" in bare.stderr


def test_bare_name_finds_promoted_static() -> None:
    """Kernels 6.2-6.10 (CONFIG_LTO_CLANG) print ``skb_csum_slow+0x10/0xb0``: ksym tries
    ``skb_csum_slow.llvm.<digits>`` when no symbol has the exact name."""
    full = next(n for n, _a, _s in _promoted() if n.startswith("skb_csum_slow.llvm."))
    with Symbolizer(THINLTO) as s:
        bare = s.resolve("skb_csum_slow+0x10/0xb0")
        exact = s.resolve(f"{full}+0x10/0xb0")
        # two promoted raw_ioctl statics: both, like two statics of one name; the size picks one
        both = s.resolve("raw_ioctl+0x8")
        one = s.resolve("raw_ioctl+0x8/0x10")
    assert len(bare) == 1 and bare[0].chain == exact[0].chain and bare[0].address == exact[0].address
    assert bare[0].symbol == "skb_csum_slow"
    assert [r.chain[-1].raw_file for r in both] == [f"{CLANG_ROOT}/net/ipv4/raw.c", f"{CLANG_ROOT}/drivers/char/raw.c"]
    assert [r.chain[-1].raw_file for r in one] == [f"{CLANG_ROOT}/drivers/char/raw.c"]
    # a wrong hash or a prefix that is not a whole name stays unknown
    for bad in ("skb_csum_slow.llvm.1+0x10", "skb_csum+0x10"):
        r = run_cli("resolve", "--no-index", "-e", str(THINLTO), bad)
        assert r.returncode == 1 and f"no match for {bad}" in r.stderr


def test_an_index_file_finds_promoted_statics_by_name(tmp_path: Path) -> None:
    """A portable index file answers a run's first frames from its name pieces, without its symbol table:
    they hold the bare names of promoted statics too, so each frame answers as the file itself does."""
    out = tmp_path / "thinlto.ksymidx"
    built = run_cli("index", "build", str(THINLTO), "-o", str(out), "-j", "1")
    assert built.returncode == 0, built.stderr
    full = next(n for n, _a, _s in _promoted() if n.startswith("skb_csum_slow.llvm."))
    specs = ["skb_csum_slow+0x10/0xb0", f"{full}+0x10/0xb0", "raw_ioctl+0x8", "raw_ioctl+0x8/0x10", "skb_csum+0x10"]
    with Symbolizer(THINLTO, use_index=False) as elf:
        for spec in specs:
            with Symbolizer.from_index(out) as s:  # the first frame of its run
                try:
                    got: object = s.resolve(spec)
                except KsymError as exc:
                    got = type(exc)
                try:
                    want: object = elf.resolve(spec)
                except KsymError as exc:
                    want = type(exc)
                assert got == want, spec
        assert len(elf.resolve("raw_ioctl+0x8")) == 2
    with PortableFile(out) as pf:
        assert [m.symbol.name for m in pf.faddr2line_matches("skb_csum_slow")] == [full]


# -- (c) --path-map ------------------------------------------------------------------------------------


def test_path_map_clang() -> None:
    """The mapped path is shown (no prefix strip); raw_file and the elixir link keep the DWARF path."""
    with Symbolizer(THINLTO) as s:
        loc = s.resolve("skb_csum_like+0x4")[0].chain[0]
    assert loc.raw_file == f"{CLANG_ROOT}/net/core/skbuff.c" and loc.file == "net/core/skbuff.c"
    args = ("resolve", "--no-index", "-e", str(THINLTO), "--path-map", f"{CLANG_ROOT}={SRC}", "skb_csum_like+0x4")
    text = run_cli(*args)
    assert text.returncode == 0, text.stderr
    assert text.stdout == f"skb_csum_like+0x4/0x20:\nskb_csum_like at {SRC}/net/core/skbuff.c:{loc.line}\n"
    got = json.loads(run_cli(*args, "--json").stdout)["chain"][0]
    assert got["file"] == f"{SRC}/net/core/skbuff.c" and got["raw_file"] == loc.raw_file
    assert got["url"].endswith(f"/source/net/core/skbuff.c#L{loc.line}")


def test_path_map_whole_components_and_first_rule() -> None:
    with Symbolizer(THINLTO, path_map=[(CLANG_ROOT + "/net", "/n"), f"{CLANG_ROOT}=/all", "/build/lin=/never"]) as s:
        chain = s.resolve("ip_local_out_like+0x0")[0].chain
        inc = [loc.file for a in range(0x10, 0x40) for loc in s.symbolize(s.address_of("ip_local_out_like") + a).chain
               if "include" in loc.raw_file]
    assert chain[0].file.startswith("/n/ipv4/") and chain[0].raw_file.startswith(CLANG_ROOT + "/net/")
    assert inc and all(f.startswith("/all/include/") for f in inc)
    with Symbolizer(THINLTO, path_map=["/build/lin=/never"]) as s:
        none = s.resolve("skb_csum_like+0x4")[0].chain[0]
    assert none.file == "net/core/skbuff.c"


def _source_line(rel: str, line: int) -> str:
    return (SRC / rel).read_text().split("\n")[line - 1]


@pytest.mark.parametrize(("elf_name", "old"), [
    ("kshapes-clang-thinlto.elf", CLANG_ROOT),
    ("kshapes-dwarf5.elf", "debian/build/build_amd64_none_cloud-amd64"),  # gcc's relative comp_dir
])
def test_path_map_list_reads_the_mapped_file(elf_name: str, old: str, tmp_path: Path) -> None:
    """--list (offline, from a directory that is no kernel tree) finds the source only through the map."""
    elf = fixture(elf_name)
    spec = "ip_local_out_like+0x21"
    with Symbolizer(elf) as s:
        loc = s.resolve(spec)[0].chain[0]
    rel = loc.file
    args = ("resolve", "--no-index", "-e", str(elf), "--list", "--offline", spec)
    plain = run_cli(*args, cwd=tmp_path)
    mapped = run_cli(*args, "--path-map", f"{old}={SRC}", cwd=tmp_path)
    marker = f">{loc.line}<"
    assert marker not in plain.stdout
    assert mapped.returncode == 0, mapped.stderr
    assert f"{loc.function} at {SRC}/{rel}:{loc.line}" in mapped.stdout
    hit = [ln for ln in mapped.stdout.splitlines() if ln.startswith(marker)]
    assert hit and hit[0] == f"{marker}\t{_source_line(rel, loc.line)}".rstrip()


def test_path_map_bad_syntax() -> None:
    for bad in ("foo", "=/x"):
        r = run_cli("resolve", "--no-index", "-e", str(THINLTO), f"--path-map={bad}", "skb_csum_like+0x4")
        assert r.returncode == 2
        assert r.stdout == ""
        assert len(r.stderr.splitlines()) == 1 and "--path-map" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(PathMapError):
        Symbolizer(THINLTO, path_map=["foo"])
    assert isinstance(PathMapError("x"), ValueError)
    assert PathMap.parse(["/a/=/b"]).apply("/a/c.c") == "/b/c.c"
    assert PathMap.parse(["/a=/b"]).apply("/ab/c.c") is None
    assert PathMap.parse(["/a="]).apply("/a/c.c") == "c.c"


def test_path_map_annotate() -> None:
    r = subprocess.run([sys.executable, "-m", "ksym", "annotate", "--no-index", "--exact", "-e", str(THINLTO),
                        "--path-map", f"{CLANG_ROOT}=/src"], input=" skb_csum_like+0x4/0x20\n",
                       capture_output=True, text=True, check=False, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "skb_csum_like at /src/net/core/skbuff.c:" in r.stdout
