"""ksym.modules against real Debian 6.1 module debug files (ET_REL, DWARF 5, .rela.debug_*), compared
with the anchors run in the test itself: the same kernel version's scripts/faddr2line (its stdout as
text) and ``addr2line -a -f -i -j SECTION`` (one batch process per section).

The modules come from tools/fetch-testdata.sh (``$KSYM_TESTDATA/modules/kernel/net/...``). Elsewhere
the tests skip with the reason printed; under CI=true missing data is a failure, never a skip.
"""

from __future__ import annotations

import itertools
import lzma
import os
import random
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from anchors import FAddr2lineResult, Frame, faddr2line, find_faddr2line, missing, parse_addr2line_output

import ksym.modules as km
from ksym.errors import (
    BadFileError,
    FileNotFoundKsymError,
    MissingDebugInfoError,
    SkipKind,
    SkipReason,
    SpecError,
    SymbolNotFoundError,
)
from ksym.modules import (
    ModuleSet,
    ModuleSymbolizer,
    find_module_debug_file,
    is_module_file,
    normalize_module_name,
)

pytestmark = pytest.mark.vmlinux

_DATA = Path(os.environ.get("KSYM_TESTDATA", "/var/tmp/ksym-testdata"))
MODULES_DIR = _DATA / "modules" / "kernel" / "net"
NF_TABLES = MODULES_DIR / "netfilter" / "nf_tables.ko"
NF_CONNTRACK = MODULES_DIR / "netfilter" / "nf_conntrack.ko"
SMALL = MODULES_DIR / "netfilter" / "nft_ct.ko"
FADDR2LINE = find_faddr2line()
MODULES = [NF_TABLES, NF_CONNTRACK]


def _need(path: Path | None, what: str) -> Path:
    if path is None or not path.is_file():
        msg = f"{what} not found ({path}): run tools/fetch-testdata.sh (Debian 6.1 module debug files)"
        missing(msg)
    assert path is not None
    return path


def _need_tool(name: str) -> str:
    tool = shutil.which(name)
    if tool is None:
        msg = f"{name} is not installed (binutils)"
        missing(msg)
    assert tool is not None
    return tool


_SYMS: dict[Path, ModuleSymbolizer] = {}


def _sym(path: Path) -> ModuleSymbolizer:
    if path not in _SYMS:
        _SYMS[path] = ModuleSymbolizer(_need(path, path.name))
    return _SYMS[path]


# --- faddr2line, as text -----------------------------------------------------------------------------


def _render(m: ModuleSymbolizer, specs: list[str]) -> tuple[str, list[str]]:
    """What scripts/faddr2line prints on stdout for ``specs``, from ksym's answers, and its
    ``no match for`` lines (stderr)."""
    out: list[str] = []
    nomatch: list[str] = []
    first = True
    for spec in specs:
        try:
            found = m.resolve(spec)
        except SymbolNotFoundError as exc:
            # "bad address"/"bad symbol size" end the spec in the script's first pass (DONE=1): no
            # second pass, no skip lines, no "no match"
            if any(r.stops for r in exc.reasons):
                continue
            out.extend(r.text for r in exc.reasons if not r.stops)
            nomatch.append(f"no match for {spec}")
            continue
        for r in found:
            if not first:
                out.append("")
            first = False
            out.append(str(r))
    return ("\n".join(out) + "\n") if out else "", nomatch


def _sample_specs(m: ModuleSymbolizer, n: int, seed: int) -> list[str]:
    st = m.raw_symbols
    rng = random.Random(seed)
    funcs = sorted({st.names[i] for i in range(len(st)) if st.infos[i] & 0xF == 2 and st.sizes[i] > 0})
    chosen = rng.sample(funcs, min(n, len(funcs)))
    # functions outside .text: .init.text, .exit.text, .text.unlikely (.cold)
    others = sorted({st.names[i] for i in range(len(st)) if st.infos[i] & 0xF == 2
                     and m.image.sections[st.shndx[i]].name != ".text"})
    chosen += [nm for nm in others[:6] if nm not in chosen]
    specs: list[str] = []
    for k, name in enumerate(chosen):
        match = st.faddr2line_matches(name)[0]
        size = match.size or match.symbol.elf_size or 1
        off = rng.randrange(size + 1)
        kind = k % 7
        if kind == 0:
            specs.append(f"{name}+{off}")
        elif kind == 1:
            specs.append(f"{name}+{off:#x}")
        elif kind == 2:
            specs.append(f"{name}+{off:#x}/{size:#x}")
        elif kind == 3:
            specs.append(f"{name}+{off:#x}/{size + 16:#x}")  # wrong size: skipped
        elif kind == 4:
            specs.append(f"{name}+{off}/{size}")
        elif kind == 5:
            specs.append(f"{name}+{size + 1:#x}")  # past the end: skipped
        else:
            specs.append(f"{name}+{size:#x}/{size:#x}")  # exactly the size: allowed
    return specs


_FIXED = {
    NF_TABLES: [
        "nft_do_chain+0x3e8/0x5d0", "nft_do_chain+0x3e8", "nft_do_chain+1000",
        "jhash+0x10", "__nft_trace_packet+0", "__nft_trace_packet+0x5", "cleanup_module+0x5",
        "nf_tables_module_exit+0x7/0x7d", "nf_tables_module_init+0x10", "nft_request_module.cold+0x3",
        "no_such_function+0x10", "nft_do_chain+0x3e8/0x5d1", "nft_do_chain+0x5d0", "nft_do_chain+0x5d1",
    ],
    NF_CONNTRACK: ["nf_conntrack_in+0x10", "nf_conntrack_in+0x10/0x1", "__nf_conntrack_find_get+33"],
}


@pytest.fixture(scope="module")
def faddr2line_runs() -> dict[Path, tuple[list[str], FAddr2lineResult]]:
    """One scripts/faddr2line run per module over all its specs; the modules' runs in parallel (the
    script takes a few tenths of a second per spec)."""
    script = _need(FADDR2LINE, "scripts/faddr2line of linux-source-6.1")
    _need_tool("addr2line")
    specs = {mod: _FIXED.get(mod, []) + _sample_specs(_sym(mod), 30, seed=len(mod.name)) for mod in MODULES}
    with ThreadPoolExecutor(len(MODULES)) as pool:
        runs = dict(zip(MODULES, pool.map(lambda mod: faddr2line(mod, specs[mod], script), MODULES)))
    return {mod: (specs[mod], runs[mod]) for mod in MODULES}


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_specs_match_faddr2line_text(
    module: Path, faddr2line_runs: dict[Path, tuple[list[str], FAddr2lineResult]]
) -> None:
    specs, ref = faddr2line_runs[module]
    assert len(specs) >= 30
    got, nomatch = _render(_sym(module), specs)
    assert got == ref.stdout
    assert nomatch == [ln for ln in ref.stderr.splitlines() if ln.startswith("no match")]
    assert ref.stdout.count(":\n") >= 20  # most specs resolved: this compares chains, not only skips


def test_tutorial_frame() -> None:
    m = _sym(NF_TABLES)
    (r,) = m.resolve("nft_do_chain+0x3e8/0x5d0 [nf_tables]")
    assert str(r) == (
        "nft_do_chain+0x3e8/0x5d0:\n"
        "expr_call_ops_eval at debian/build/build_amd64_none_cloud-amd64/net/netfilter/nf_tables_core.c:202\n"
        "(inlined by) nft_do_chain at debian/build/build_amd64_none_cloud-amd64/net/netfilter/"
        "nf_tables_core.c:264"
    )
    assert r.chain[0].raw_file == r.chain[0].file
    assert r.chain[0].inlined and not r.chain[1].inlined
    assert m.section_of(r) == ".text"
    assert m.module_name == "nf_tables"


# --- section-relative addresses vs addr2line -j --------------------------------------------------------


def _addr2line_section(module: Path, section: str, offsets: list[int]) -> list[list[Frame]]:
    tool = _need_tool("addr2line")
    proc = subprocess.run(
        [tool, "-a", "-f", "-i", "-j", section, "-e", str(module)],
        input="".join(f"{o:#x}\n" for o in offsets), capture_output=True, text=True, check=True,
        env={**os.environ, "LC_ALL": "C"},
    )
    recs = parse_addr2line_output(proc.stdout)
    assert len(recs) == len(offsets)
    return recs


def _mine(m: ModuleSymbolizer, section: str, offset: int) -> list[Frame]:
    chain = m.section_chain(section, offset)
    return [(x.function, x.file, x.line, x.discriminator) for x in chain] or [("??", "??", 0, 0)]


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_section_offsets_match_addr2line(module: Path) -> None:
    m = _sym(module)
    rng = random.Random(7)
    total = 0
    for sec in m.image.sections:
        if not sec.flags & 0x4 or sec.size == 0:
            continue
        n = 300 if sec.name == ".text" else 40
        offsets = sorted({rng.randrange(sec.size) for _ in range(n)} | {0, sec.size - 1, sec.size})
        ref = _addr2line_section(module, sec.name, offsets)
        got = [_mine(m, sec.name, o) for o in offsets]
        bad = [(hex(o), g, r) for o, g, r in zip(offsets, got, ref) if g != r]
        assert bad == [], f"{sec.name}: {len(bad)} of {len(offsets)} differ, e.g. {bad[:3]}"
        total += len(offsets)
    assert total >= 300


def test_symbolize_section_offset() -> None:
    m = _sym(NF_TABLES)
    (r,) = m.resolve("nft_do_chain+0x3e8")
    got = m.symbolize_section_offset(".text", r.address)
    assert got.symbol == "nft_do_chain" and got.offset == 0x3E8 and got.chain == r.chain
    assert got.address == r.address
    with pytest.raises(SpecError):
        m.symbolize_section_offset(".no_such_section", 0)


def test_sections_do_not_overlap() -> None:
    m = _sym(NF_TABLES)
    spans = sorted((m.image.bases[s.index], m.image.bases[s.index] + s.size) for s in m.image.sections
                   if s.index in m.image.bases and s.size)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert m.section_base(".init.text") != m.section_base(".text")


# --- files: compression, identity, errors ----------------------------------------------------------------


def test_xz_module_resolves_the_same(tmp_path: Path) -> None:
    plain = _need(SMALL, SMALL.name)
    xz = tmp_path / (plain.name + ".xz")
    xz.write_bytes(lzma.compress(plain.read_bytes(), check=lzma.CHECK_CRC32, preset=1))
    a, b = ModuleSymbolizer(plain), ModuleSymbolizer(xz)
    assert b.build_id == a.build_id and b.module_name == a.module_name == "nft_ct"
    st = a.raw_symbols
    names = sorted({st.names[i] for i in range(len(st)) if st.infos[i] & 0xF == 2 and st.sizes[i] > 4})[:20]
    for nm in names:
        assert [str(r) for r in b.resolve(f"{nm}+0x4")] == [str(r) for r in a.resolve(f"{nm}+0x4")]


def test_xz_tool_output(tmp_path: Path) -> None:
    xz_tool = shutil.which("xz")
    if xz_tool is None:
        missing("xz is not installed (xz-utils)")
    plain = _need(SMALL, SMALL.name)
    copy = tmp_path / plain.name
    shutil.copy(plain, copy)
    subprocess.run([xz_tool, "--check=crc32", "-1", str(copy)], check=True)
    assert ModuleSymbolizer(tmp_path / (plain.name + ".xz")).build_id == ModuleSymbolizer(plain).build_id


def test_zstd_module_error(tmp_path: Path) -> None:
    zst = tmp_path / "nft_ct.ko.zst"
    zst.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 32)
    with pytest.raises(BadFileError) as ei:
        ModuleSymbolizer(zst)
    assert "\n" not in str(ei.value)
    assert "zstd" in str(ei.value)


def test_build_id_and_name_agree_with_readelf() -> None:
    m = _sym(NF_TABLES)
    notes = subprocess.run(["readelf", "-n", str(NF_TABLES)], capture_output=True, text=True, check=True).stdout
    assert m.build_id is not None and f"Build ID: {m.build_id}" in notes
    assert m.build_id.startswith("df1a2bb2")


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundKsymError):
        ModuleSymbolizer(tmp_path / "missing.ko")
    junk = tmp_path / "junk.ko"
    junk.write_bytes(b"not an elf file at all")
    with pytest.raises(BadFileError, match="not an ELF"):
        ModuleSymbolizer(junk)
    bad_xz = tmp_path / "bad.ko.xz"
    bad_xz.write_bytes(b"\xfd7zXZ\x00garbage")
    with pytest.raises(BadFileError, match="xz"):
        ModuleSymbolizer(bad_xz)
    with pytest.raises(FileNotFoundKsymError):
        ModuleSymbolizer(tmp_path)


def test_not_a_module_and_stripped(tmp_path: Path) -> None:
    plain = _need(SMALL, SMALL.name)
    objcopy = _need_tool("objcopy")
    stripped = tmp_path / "stripped.ko"
    subprocess.run([objcopy, "--strip-debug", str(plain), str(stripped)], check=True)
    # as scripts/faddr2line: func+off needs DWARF; a raw offset is answered from the symbols, as addr2line
    with pytest.raises(MissingDebugInfoError):
        ModuleSymbolizer(stripped).resolve("nft_ct_get_eval+0x10")
    exe = Path("/bin/true").resolve()
    with pytest.raises(BadFileError, match="not a kernel module"):
        ModuleSymbolizer(exe)


def test_resolve_errors() -> None:
    m = _sym(NF_TABLES)
    with pytest.raises(SymbolNotFoundError) as ei:
        m.resolve("no_such_function+0x10")
    assert "no symbol named" in str(ei.value)
    with pytest.raises(SymbolNotFoundError) as ei:
        m.resolve("nft_do_chain+0x3e8/0x10")
    assert [r.kind for r in ei.value.reasons] == [SkipKind.SIZE_MISMATCH]
    assert "size mismatch" in ei.value.reasons[0].text
    with pytest.raises(SymbolNotFoundError) as ei:
        m.resolve("__nft_trace_packet+0")
    assert ei.value.reasons == (SkipReason(SkipKind.BAD_ADDRESS, "bad address: 0x0000000000000000 + 0"),)
    with pytest.raises(SpecError):
        m.resolve("0xffffffffc0a01234")
    with pytest.raises(SpecError):
        m.resolve("nft_do_chain")


# --- finding debug files ------------------------------------------------------------------------------------


def test_find_module_debug_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = _need(NF_TABLES, NF_TABLES.name)
    root = tmp_path / "debug"
    rel = "6.1.0-53-cloud-amd64"
    d = root / rel / "kernel" / "net" / "netfilter"
    d.mkdir(parents=True)
    (d / "nf_tables.ko").symlink_to(plain)
    (d / "nf_conntrack.ko.debug").symlink_to(_need(NF_CONNTRACK, NF_CONNTRACK.name))
    monkeypatch.setattr(km, "MODULE_DEBUG_ROOT", root)
    assert find_module_debug_file("nf_tables", rel) == d / "nf_tables.ko"
    assert find_module_debug_file("nf-tables", rel) == d / "nf_tables.ko"
    assert find_module_debug_file("nf_conntrack", rel) == d / "nf_conntrack.ko.debug"
    assert find_module_debug_file("nf_tables", "other-release") is None
    bid = ModuleSymbolizer(plain).build_id
    assert bid is not None
    assert find_module_debug_file("nf_tables", rel, build_id=bid) == d / "nf_tables.ko"
    assert find_module_debug_file("nf_tables", rel, build_id=bid[:8]) == d / "nf_tables.ko"
    assert find_module_debug_file("nf_tables", rel, build_id="00" * 20) is None
    # extra --modules directories come first; .ko.xz found there
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "nft_ct.ko.xz").write_bytes(lzma.compress(_need(SMALL, SMALL.name).read_bytes(), preset=0))
    assert find_module_debug_file("nft_ct", "other-release", [extra]) == extra / "nft_ct.ko.xz"
    assert find_module_debug_file("nft_ct", "other-release", [extra / "nft_ct.ko.xz"]) == extra / "nft_ct.ko.xz"
    assert normalize_module_name("nf-tables") == "nf_tables"


def test_module_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = _need(NF_TABLES, NF_TABLES.name)
    monkeypatch.setattr(km, "MODULE_DEBUG_ROOT", tmp_path / "nowhere")
    ms = ModuleSet("6.1.0-53-cloud-amd64", [plain.parent])
    (r,) = ms.resolve("nf_tables", "nft_do_chain+0x3e8/0x5d0", build_id="df1a2bb2")
    assert r.chain[0].function == "expr_call_ops_eval"
    assert ms.get("nf-tables") is ms.get("nf_tables")
    with pytest.raises(FileNotFoundKsymError) as ei:
        ms.get("nf_tables", build_id="0123456789")
    assert "build id 0123456789" in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(FileNotFoundKsymError):
        ms.get("no_such_module")
    ms.close()


def test_code_bytes() -> None:
    m = _sym(NF_TABLES)
    objdump = _need_tool("objdump")
    (r,) = m.resolve("nft_do_chain+0")
    got = m.code_bytes(".text", r.address, 16)
    dump = subprocess.run([objdump, "-d", "-j", ".text", f"--start-address={r.address:#x}",
                           f"--stop-address={r.address + 16:#x}", str(NF_TABLES)],
                          capture_output=True, text=True, check=True).stdout
    hexbytes = "".join(w for ln in dump.splitlines() if ":\t" in ln for w in ln.split("\t")[1].split())
    assert got.hex() == hexbytes
    assert m.code_bytes(".text", 1 << 40, 4) == b""


def test_is_module_file(tmp_path: Path) -> None:
    plain = _need(NF_TABLES, NF_TABLES.name)
    renamed = tmp_path / "nf_tables.o"
    renamed.symlink_to(plain)
    assert is_module_file(plain) and is_module_file(renamed) and is_module_file(tmp_path / "x.ko.xz")
    assert not is_module_file(Path("/bin/true").resolve())
    assert not is_module_file(tmp_path / "missing")
    assert is_module_file(f"{tmp_path}//x.ko.zst/./") and not is_module_file(f"{tmp_path}/x.ko/..")


def test_path_text_and_name_are_pathlibs() -> None:
    """The file names of messages and the module test take paths apart as pathlib does, without it."""
    from pathlib import PurePosixPath

    from ksym.searchopts import path_name, path_parts, path_text

    for p in ("", ".", "/", "//", "///", "a", "a/", "a//b/", "./a/./b", "//x/y", "///x", "a/..", "/x.ko/.",
              "../a/./", ".hidden", "a/.../b"):
        pure = PurePosixPath(p)
        assert (path_text(p), path_name(p)) == (str(pure), pure.name), p
        assert path_parts(p) == [c for c in pure.parts if c not in ("/", "//")], p
