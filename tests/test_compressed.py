"""Compressed debug information, read transparently (ksym.compress, docs/usage.md "Compressed debug info").

On the committed fixtures (fixtures/build.sh: ``objcopy --compress-debug-sections=zlib|zstd|zlib-gnu`` of
the DWARF 5 build, 64-bit and i386), every address of .text and a little beyond must resolve exactly as
``addr2line -fi`` resolves it on the same file, and exactly as ksym resolves the uncompressed file; the
CLI must print what scripts/faddr2line prints. A real Debian module (nft_ct.ko) recompressed as
``.ko.zst`` and with zstd/zlib/zlib-gnu debug sections must resolve like the plain one and like
``addr2line -j``. Without a Zstandard decompressor (blocked in a subprocess), and on corrupt data, the
error is one line with the documented exit code.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from anchors import (
    addr2line_batch,
    dir_prefix,
    faddr2line,
    find_addr2line,
    find_faddr2line,
    fixture,
    missing,
    parse_addr2line_output,
    requires,
    strip_prefix,
)
from elftools.elf.elffile import ELFFile

import ksym
from ksym import BadFileError, Symbolizer
from ksym.compress import decompress_gnu_zdebug, decompress_section, zstd_available, zstd_decompress
from ksym.image import KernelImage
from ksym.modules import ModuleSymbolizer

ADDR2LINE = find_addr2line()
FADDR2LINE = find_faddr2line()
needs_addr2line = requires(ADDR2LINE is not None, "addr2line (binutils) is not installed")

#: compressed fixture → (the uncompressed fixture it was made from, what its debug sections hold)
COMPRESSED = {
    "kshapes-dwarf5-zlib.elf": ("kshapes-dwarf5.elf", "zlib"),
    "kshapes-dwarf5-zstd.elf": ("kshapes-dwarf5.elf", "zstd"),
    "kshapes-dwarf4-zlib-gnu.elf": ("kshapes-dwarf4.elf", "zlib-gnu"),
    "kshapes-dwarf5-zlib-gnu.elf": ("kshapes-dwarf5.elf", "zlib-gnu"),
    "kshapes-i386-dwarf5-zlib.elf": ("kshapes-i386-dwarf5.elf", "zlib"),
    "kshapes-i386-dwarf5-zstd.elf": ("kshapes-i386-dwarf5.elf", "zstd"),
}
#: binutils' bfd (2.40 and later) looks for ".zdebug_rnglist", not ".zdebug_rnglists", so addr2line and
#: faddr2line cannot read DWARF 5 in the legacy format (test_binutils_cannot_read_dwarf5_zdebug);
#: that file is checked against the plain file's addr2line answers instead.
BFD_CANNOT_READ = {"kshapes-dwarf5-zlib-gnu.elf"}
CH_TYPE = {"zlib": 1, "zstd": 2}
SHF_COMPRESSED = 0x800

_DATA = Path(os.environ.get("KSYM_TESTDATA", "/var/tmp/ksym-testdata"))
NFT_CT = _DATA / "modules" / "kernel" / "net" / "netfilter" / "nft_ct.ko"

# A Python whose imports of both Zstandard modules fail, then runs what follows.
_BLOCK_ZSTD = "import sys; sys.modules['zstandard'] = None; sys.modules['compression.zstd'] = None; "


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep ksym's on-disk index out of $HOME, for the API and the CLI subprocesses alike."""
    monkeypatch.setenv("KSYM_CACHE_DIR", str(tmp_path / "ksym-cache"))
    monkeypatch.delenv("KSYM_DEBUG", raising=False)


def _need_module(path: Path) -> Path:
    if not path.is_file():
        msg = f"{path} not found: run tools/fetch-testdata.sh (Debian 6.1 module debug files)"
        missing(msg)
    return path


def _need(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        msg = f"{tool} is not installed"
        missing(msg)
    assert found is not None
    return found


def _ksym(*args: str, block_zstd: bool = False) -> subprocess.CompletedProcess[str]:
    code = (_BLOCK_ZSTD if block_zstd else "import sys; ") + "from ksym.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False,
                          env={**os.environ, "LC_ALL": "C"}, timeout=120)


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _BLOCK_ZSTD + code, *args], capture_output=True, text=True,
                          check=False, timeout=120)


def _debug_sections(path: Path) -> dict[str, tuple[int, bytes]]:
    """name → (sh_flags, first 12 raw bytes) of every .debug_*/.zdebug_* section."""
    out: dict[str, tuple[int, bytes]] = {}
    with path.open("rb") as f:
        elf = ELFFile(f)
        for sec in elf.iter_sections():
            if sec.name.startswith((".debug_", ".zdebug_")):
                f.seek(sec["sh_offset"])
                out[sec.name] = (sec["sh_flags"], f.read(12))
    return out


def _text_range(path: Path) -> list[int]:
    with path.open("rb") as f:
        text = ELFFile(f).get_section_by_name(".text")
        assert text is not None
        start, size = text["sh_addr"], text["sh_size"]
    return list(range(start - 16, start + size + 16))


def _frames(chain: tuple[ksym.SourceLocation, ...]) -> list[tuple[str, str, int, int]]:
    if not chain:
        return [("??", "??", 0, 0)]
    return [(loc.function, loc.file, loc.line, loc.discriminator) for loc in chain]


# -- the fixtures really are what their names say ------------------------------------------------------


@pytest.mark.parametrize("name", sorted(COMPRESSED))
def test_fixture_is_compressed_as_named(name: str) -> None:
    plain, kind = COMPRESSED[name]
    secs = _debug_sections(fixture(name))
    little = True  # x86 both
    if kind == "zlib-gnu":
        assert ".zdebug_info" in secs and ".debug_info" not in secs
        assert all(not flags & SHF_COMPRESSED for flags, _ in secs.values())
        assert secs[".zdebug_info"][1][:4] == b"ZLIB"
        return
    assert not any(n.startswith(".zdebug_") for n in secs)
    info_flags, head = secs[".debug_info"]
    assert info_flags & SHF_COMPRESSED
    assert struct.unpack_from("<I" if little else ">I", head)[0] == CH_TYPE[kind]
    with fixture(name).open("rb") as f:
        assert ELFFile(f).elfclass == (32 if "i386" in name else 64)
    assert not any(flags & SHF_COMPRESSED for flags, _ in _debug_sections(fixture(plain)).values())


# -- every address of .text: like addr2line on the same file, like ksym on the plain file ---------------


@needs_addr2line
@pytest.mark.parametrize("name", sorted(COMPRESSED))
def test_every_byte_of_text_matches_addr2line_and_the_plain_file(name: str, tmp_path: Path) -> None:
    if COMPRESSED[name][1] == "zstd" and not zstd_available():
        pytest.fail("no Zstandard decompressor: the [test] extra installs zstandard")
    elf, plain = fixture(name), fixture(COMPRESSED[name][0])
    prefix = dir_prefix(plain)
    assert prefix == "debian/build/build_amd64_none_cloud-amd64/"
    addrs = _text_range(elf)
    assert addrs == _text_range(plain)
    expected = addr2line_batch(plain, addrs)
    if name not in BFD_CANNOT_READ:
        assert addr2line_batch(elf, addrs) == expected  # objcopy changed nothing but the compression
    mismatches = []
    depths: set[int] = set()
    with Symbolizer(elf, cache_dir=tmp_path / "index") as s, Symbolizer(plain, use_index=False) as p:
        for addr, want_raw in zip(addrs, expected):
            want = [(fn, strip_prefix(file, prefix), line, disc) for fn, file, line, disc in want_raw]
            got = s.symbolize(addr)
            depths.add(len(want))
            if _frames(got.chain) != want:
                mismatches.append(f"{addr:#x}: ksym {_frames(got.chain)} != addr2line {want}")
            elif str(got) != str(p.symbolize(addr)):
                mismatches.append(f"{addr:#x}: {got!s} != plain file's {p.symbolize(addr)!s}")
        assert not mismatches, f"{len(mismatches)} mismatches:\n" + "\n".join(mismatches[:20])
        assert {1, 2, 3, 4} <= depths
        # again from the on-disk index written by the first Symbolizer (the DWARF is decompressed anew)
        with Symbolizer(elf, cache_dir=tmp_path / "index") as again:
            assert [str(again.symbolize(a)) for a in addrs[::7]] == [str(s.symbolize(a)) for a in addrs[::7]]


@needs_addr2line
def test_binutils_cannot_read_dwarf5_zdebug() -> None:
    """Why kshapes-dwarf5-zlib-gnu.elf is not checked against addr2line on itself (see BFD_CANNOT_READ).

    If this starts failing, binutils was fixed: drop the file from BFD_CANNOT_READ."""
    assert ADDR2LINE is not None
    elf = fixture("kshapes-dwarf5-zlib-gnu.elf")
    assert ".zdebug_rnglists" in _debug_sections(elf)
    start = [a for a in _text_range(elf) if a == 0x401090]
    proc = subprocess.run([ADDR2LINE, "-f", "-e", str(elf), hex(start[0])], capture_output=True, text=True,
                          check=False, env={**os.environ, "LC_ALL": "C"})
    assert "can't find .debug_rnglists section" in proc.stderr
    with Symbolizer(elf, use_index=False) as s:
        assert s.symbolize(0x401090).chain[0].function == "start_kernel"


@pytest.mark.parametrize("name", sorted(COMPRESSED))
def test_cli_matches_faddr2line(name: str) -> None:
    """faddr2line runs on the file itself, except the .zdebug ones, which it refuses ("CONFIG_DEBUG_INFO
    not enabled": it greps readelf for ``\\.debug_info``): there it runs on the plain file."""
    if FADDR2LINE is None:
        missing("the kernel's scripts/faddr2line was not found (tools/fetch-testdata.sh)")
    specs = ["ip_local_out_like+0x1d", "ip_local_out_like+0x40/0x90", "__ip_local_out+0xa", "raw_ioctl+0x5",
             "netif_receive_like.cold+0x10/0x5d", "netif_receive_like.cold+0x54", "dev_report_error+0xa",
             "skb_len_sum.isra.0+0x3/0x10", "no_such_function+0x10", "csum_like+0x4"]
    elf = fixture(name)
    ref = faddr2line(fixture(COMPRESSED[name][0]) if COMPRESSED[name][1] == "zlib-gnu" else elf, specs, FADDR2LINE)
    assert ref.stdout.count("(inlined by)") >= 3 and "debian/build" not in ref.stdout
    got = _ksym("resolve", "--vmlinux", str(elf), *specs)
    assert "Traceback" not in got.stderr
    assert got.stdout == ref.stdout
    assert got.returncode == ksym.EXIT_UNRESOLVED


# -- caching: decompressed once per image ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["kshapes-dwarf5-zstd.elf", "kshapes-dwarf5-zlib-gnu.elf",
                                  "kshapes-dwarf4-zlib-gnu.elf", "kshapes-i386-dwarf5-zlib.elf"])
def test_sections_are_decompressed_once_per_image(name: str) -> None:
    img = KernelImage(fixture(name))
    plain = KernelImage(fixture(COMPRESSED[name][0]))
    try:
        first = img.section_bytes(".debug_info")
        assert first is not None and bytes(first) == bytes(plain.section_bytes(".debug_info") or b"")
        assert img.section_bytes(".debug_info") is first  # kept, not decompressed again
        for sec in (".debug_abbrev", ".debug_line", ".debug_str", ".debug_rnglists", ".debug_ranges",
                    ".debug_aranges"):
            assert bytes(img.section_bytes(sec) or b"") == bytes(plain.section_bytes(sec) or b""), sec
        assert img.has_dwarf
    finally:
        img.close()
        plain.close()


# -- the compression formats themselves (ksym.compress), both byte orders and ELF classes ---------------


@pytest.mark.parametrize("elfclass", [32, 64])
@pytest.mark.parametrize("little", [True, False])
@pytest.mark.parametrize("kind", ["zlib", "zstd"])
def test_decompress_section_headers(elfclass: int, little: bool, kind: str) -> None:
    payload = bytes(fixture("kshapes-dwarf5.elf").read_bytes()[:5000])
    if kind == "zlib":
        body = zlib.compress(payload)
    else:
        zstandard = pytest.importorskip("zstandard")
        body = zstandard.ZstdCompressor().compress(payload)
    e = "<" if little else ">"
    ch_type = CH_TYPE[kind]
    hdr = (struct.pack(e + "IIQQ", ch_type, 0, len(payload), 1) if elfclass == 64
           else struct.pack(e + "III", ch_type, len(payload), 1))
    assert decompress_section(hdr + body, little, elfclass, "x") == payload
    with pytest.raises(BadFileError, match="the header says"):
        bad = (struct.pack(e + "IIQQ", ch_type, 0, len(payload) + 1, 1) if elfclass == 64
               else struct.pack(e + "III", ch_type, len(payload) + 1, 1))
        decompress_section(bad + body, little, elfclass, "x")
    with pytest.raises(BadFileError, match="corrupt"):
        decompress_section(hdr + body[: len(body) // 2], little, elfclass, "x")


def test_decompress_errors_and_gnu_format() -> None:
    payload = b"DWARF " * 300
    assert decompress_gnu_zdebug(b"ZLIB" + struct.pack(">Q", len(payload)) + zlib.compress(payload), "x") == payload
    assert bytes(decompress_gnu_zdebug(b"plain section", "x")) == b"plain section"  # no magic: as is
    with pytest.raises(BadFileError, match="the header says 5"):
        decompress_gnu_zdebug(b"ZLIB" + struct.pack(">Q", 5) + zlib.compress(payload), "x")
    with pytest.raises(BadFileError, match="unknown compression type 7"):
        decompress_section(struct.pack("<IIQQ", 7, 0, 4, 1) + b"abcd", True, 64, "x")
    with pytest.raises(BadFileError, match="shorter than its 24-byte"):
        decompress_section(b"\x01\0\0\0", True, 64, "x")
    if zstd_available():
        zstandard = pytest.importorskip("zstandard")
        two = zstandard.ZstdCompressor().compress(b"ab") + zstandard.ZstdCompressor().compress(b"cd")
        assert zstd_decompress(two, "x") == b"abcd"  # concatenated frames, as the zstd CLI writes them
        unsized = zstandard.ZstdCompressor(write_content_size=False).compress(payload)
        assert zstd_decompress(unsized, "x") == payload
        with pytest.raises(BadFileError, match="truncated"):
            zstd_decompress(unsized[:-4], "x")


# -- corrupt compressed data: one line, exit code 4 -----------------------------------------------------


def _corrupt_copy(src: Path, dst: Path, section: str, how: str) -> Path:
    data = bytearray(src.read_bytes())
    with src.open("rb") as f:
        sec = ELFFile(f).get_section_by_name(section)
        assert sec is not None
        off, size = sec["sh_offset"], sec["sh_size"]
    if how == "payload":  # garbage in the middle of the stream (zlib's Adler-32 catches it)
        for i in range(off + size // 2, off + size // 2 + 16):
            data[i] ^= 0x5A
    elif how == "frame":  # the zstd frame's magic, right after the Elf64_Chdr (objcopy's frames have no
        for i in range(off + 24, off + 28):  # checksum, so a flipped literal would go unnoticed)
            data[i] ^= 0x5A
    elif how == "ch_type":
        data[off : off + 4] = (9).to_bytes(4, "little")
    elif how == "ch_size":
        data[off + 8 : off + 16] = (size * 1000).to_bytes(8, "little")
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize(("name", "section", "how", "message"), [
    ("kshapes-dwarf5-zstd.elf", ".debug_info", "frame", "corrupt zstd data"),
    ("kshapes-dwarf5-zlib.elf", ".debug_info", "payload", "corrupt zlib data"),
    ("kshapes-dwarf5-zlib-gnu.elf", ".zdebug_info", "payload", "corrupt zlib data"),
    ("kshapes-dwarf5-zstd.elf", ".debug_abbrev", "ch_type", "unknown compression type 9"),
    ("kshapes-dwarf5-zstd.elf", ".debug_info", "ch_size", "the header says"),
])
def test_corrupt_compressed_data_one_line(name: str, section: str, how: str, message: str,
                                          tmp_path: Path) -> None:
    bad = _corrupt_copy(fixture(name), tmp_path / name, section, how)
    got = _ksym("resolve", "--vmlinux", str(bad), "ip_local_out_like+0x40")
    assert "Traceback" not in got.stderr
    assert got.returncode == ksym.EXIT_BAD_FILE, got.stderr
    assert got.stdout == ""
    assert got.stderr.count("\n") == 1, got.stderr
    assert got.stderr.startswith(f"ksym: error: {bad}: cannot decompress {section}: ")
    assert message in got.stderr
    with pytest.raises(BadFileError, match=message):
        Symbolizer(bad, use_index=False).resolve("ip_local_out_like+0x40")


# -- no Zstandard decompressor ---------------------------------------------------------------------------


def test_without_zstd_a_zstd_fixture_fails_in_one_line() -> None:
    elf = fixture("kshapes-dwarf5-zstd.elf")
    got = _ksym("resolve", "--vmlinux", str(elf), "raw_ioctl+0x5", block_zstd=True)
    assert "Traceback" not in got.stderr
    assert got.returncode == ksym.EXIT_BAD_FILE
    assert got.stderr.count("\n") == 1, got.stderr
    assert got.stderr.startswith(f"ksym: error: {elf}: cannot decompress .debug_")
    assert "no Zstandard decompressor is installed" in got.stderr
    assert "pip install 'ksym[zstd]'" in got.stderr
    # the blocker blocks only Zstandard: the zlib and legacy .zdebug fixtures still resolve
    for ok in ("kshapes-dwarf5-zlib.elf", "kshapes-dwarf5-zlib-gnu.elf", "kshapes-dwarf5.elf"):
        plain = _ksym("resolve", "--vmlinux", str(fixture(ok)), "raw_ioctl+0x5", block_zstd=True)
        assert plain.returncode == ksym.EXIT_OK, plain.stderr
        assert "raw_ioctl at net/ipv4/raw.c:7" in plain.stdout


def test_without_zstd_a_ko_zst_fails_in_one_line(tmp_path: Path) -> None:
    plain = _need_module(NFT_CT)
    zst = tmp_path / "nft_ct.ko.zst"
    subprocess.run([_need("zstd"), "-q", "-3", str(plain), "-o", str(zst)], check=True)
    code = ("from ksym.errors import KsymError\nfrom ksym.modules import ModuleSymbolizer\n"
            "try:\n    ModuleSymbolizer(sys.argv[1])\nexcept KsymError as e:\n"
            "    print(type(e).__name__, e.exit_code, e, sep='|')\n")
    got = _python(code, str(zst))
    assert got.returncode == 0 and got.stderr == ""
    kind, exit_code, message = got.stdout.rstrip("\n").split("|")
    assert (kind, int(exit_code)) == ("BadFileError", ksym.EXIT_BAD_FILE)
    assert message.startswith(f"{zst}: zstd-compressed, but no Zstandard decompressor is installed")
    assert "pip install 'ksym[zstd]'" in message and "unzstd the file first" in message
    assert "\n" not in message
    # the CLI, with the module file as --vmlinux (faddr2line's module mode)
    cli = _ksym("resolve", "--vmlinux", str(zst), "nft_ct_get_eval+0x10", block_zstd=True)
    assert cli.returncode == ksym.EXIT_BAD_FILE and cli.stderr.count("\n") == 1 and "Traceback" not in cli.stderr


# -- a real module: .ko.zst and compressed debug sections ------------------------------------------------


def _module_variants(tmp_path: Path) -> dict[str, Path]:
    plain = _need_module(NFT_CT)
    out: dict[str, Path] = {}
    zst = tmp_path / "cli" / "nft_ct.ko.zst"
    zst.parent.mkdir()
    subprocess.run([_need("zstd"), "-q", "-19", str(plain), "-o", str(zst)], check=True)
    out["ko.zst (zstd CLI)"] = zst
    zstandard = pytest.importorskip("zstandard")
    pkg = tmp_path / "pkg" / "nft_ct.ko.zst"
    pkg.parent.mkdir()
    # several frames, without the content size in their headers (decompressobj must loop)
    raw = plain.read_bytes()
    cctx = zstandard.ZstdCompressor(level=3, write_content_size=False)
    pkg.write_bytes(b"".join(cctx.compress(raw[i : i + 100_000]) for i in range(0, len(raw), 100_000)))
    out["ko.zst (zstandard, 7 frames)"] = pkg
    objcopy = _need("objcopy")
    for kind in ("zstd", "zlib", "zlib-gnu"):
        d = tmp_path / kind
        d.mkdir()
        subprocess.run([objcopy, f"--compress-debug-sections={kind}", str(plain), str(d / "nft_ct.ko")],
                       check=True)
        out[f"sections {kind}"] = d / "nft_ct.ko"
    both = tmp_path / "both" / "nft_ct.ko.zst"
    both.parent.mkdir()
    both.write_bytes(zstandard.ZstdCompressor().compress((tmp_path / "zstd" / "nft_ct.ko").read_bytes()))
    out["ko.zst of zstd sections"] = both
    return out


def test_module_variants_resolve_like_the_plain_module(tmp_path: Path) -> None:
    plain = ModuleSymbolizer(_need_module(NFT_CT))
    variants = _module_variants(tmp_path)
    st = plain.raw_symbols
    funcs = sorted({st.names[i] for i in range(len(st)) if st.infos[i] & 0xF == 2 and st.sizes[i] > 8})
    assert len(funcs) > 20
    specs = [f"{f}+{off:#x}" for f in funcs for off in (0x1, 0x8)]
    want = {}
    for spec in specs:
        try:
            want[spec] = [str(r) for r in plain.resolve(spec)]
        except ksym.KsymError as exc:
            want[spec] = [type(exc).__name__]
    assert sum("(inlined by)" in "".join(v) for v in want.values()) > 5
    text = plain.image.section(".text")
    assert text is not None
    offsets = range(text.size + 1)
    plain_chains = [plain.section_chain(".text", o) for o in offsets]
    for label, path in variants.items():
        m = ModuleSymbolizer(path)
        assert (m.build_id, m.module_name) == (plain.build_id, "nft_ct"), label
        if label.startswith(("sections", "ko.zst of")):
            secs = {s.name: s for s in m.image.sections}
            if "zlib-gnu" in label:
                assert ".zdebug_info" in secs and ".rela.zdebug_info" in secs
            else:
                assert secs[".debug_info"].flags & SHF_COMPRESSED, label
                assert not secs[".rela.debug_info"].flags & SHF_COMPRESSED  # relocations stay plain
        got = {}
        for spec in specs:
            try:
                got[spec] = [str(r) for r in m.resolve(spec)]
            except ksym.KsymError as exc:
                got[spec] = [type(exc).__name__]
        assert got == want, label
        bad = [o for o, c in zip(offsets, plain_chains) if m.section_chain(".text", o) != c]
        assert bad == [], f"{label}: {len(bad)} .text offsets differ, e.g. {bad[:5]}"


@pytest.mark.parametrize("kind", ["zstd", "zlib"])
def test_module_compressed_sections_match_addr2line(kind: str, tmp_path: Path) -> None:
    """addr2line -j on the recompressed module itself (binutils relocates the decompressed sections).

    Not zlib-gnu: the module is DWARF 5, which bfd cannot read from .zdebug_* (BFD_CANNOT_READ above);
    test_module_variants_resolve_like_the_plain_module covers that one."""
    plain = _need_module(NFT_CT)
    tool = _need("addr2line")
    ko = tmp_path / "nft_ct.ko"
    subprocess.run([_need("objcopy"), f"--compress-debug-sections={kind}", str(plain), str(ko)], check=True)
    m = ModuleSymbolizer(ko)
    checked = 0
    for sec in m.image.sections:
        if not sec.flags & 0x4 or sec.size == 0:
            continue
        offsets = sorted(set(range(0, sec.size, 5)) | {sec.size - 1, sec.size})
        proc = subprocess.run([tool, "-a", "-f", "-i", "-j", sec.name, "-e", str(ko)],
                              input="".join(f"{o:#x}\n" for o in offsets), capture_output=True, text=True,
                              check=True, env={**os.environ, "LC_ALL": "C"})
        ref = parse_addr2line_output(proc.stdout)
        assert len(ref) == len(offsets)
        got = [[(x.function, x.file, x.line, x.discriminator) for x in m.section_chain(sec.name, o)]
               or [("??", "??", 0, 0)] for o in offsets]
        bad = [(hex(o), g, r) for o, g, r in zip(offsets, got, ref) if g != r]
        assert bad == [], f"{sec.name}: {len(bad)} of {len(offsets)} differ, e.g. {bad[:3]}"
        checked += len(offsets)
    assert checked > 500


def test_ko_zst_cli_matches_faddr2line(tmp_path: Path) -> None:
    """faddr2line cannot read a .ko.zst; it runs on the plain module and ksym on the .ko.zst."""
    if FADDR2LINE is None:
        missing("the kernel's scripts/faddr2line was not found (tools/fetch-testdata.sh)")
    plain = _need_module(NFT_CT)
    zst = tmp_path / "nft_ct.ko.zst"
    subprocess.run([_need("zstd"), "-q", str(plain), "-o", str(zst)], check=True)
    specs = ["nft_ct_get_eval+0x10", "nft_ct_set_eval+0x40", "nft_ct_get_init+0x20/0x1000"]
    ref = faddr2line(plain, specs, FADDR2LINE)
    assert "nft_ct_get_eval+0x10/" in ref.stdout
    got = _ksym("resolve", "--vmlinux", str(zst), *specs)
    assert "Traceback" not in got.stderr
    assert got.stdout == ref.stdout


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_ko_zst_one_line(damage: str, tmp_path: Path) -> None:
    plain = _need_module(NFT_CT)
    good = tmp_path / "good.ko.zst"
    subprocess.run([_need("zstd"), "-q", str(plain), "-o", str(good)], check=True)
    data = good.read_bytes()
    bad = tmp_path / "nft_ct.ko.zst"
    if damage == "truncated":
        bad.write_bytes(data[: len(data) * 2 // 3])
    else:
        bad.write_bytes(data[:6] + bytes(b ^ 0x5A for b in data[6:200]) + data[200:])
    got = _ksym("resolve", "--vmlinux", str(bad), "nft_ct_get_eval+0x10")
    assert "Traceback" not in got.stderr
    assert got.returncode == ksym.EXIT_BAD_FILE, got.stderr
    assert got.stderr.count("\n") == 1
    assert got.stderr.startswith(f"ksym: error: {bad}: corrupt zstd data: "), got.stderr
    with pytest.raises(BadFileError, match="corrupt zstd data"):
        ModuleSymbolizer(bad)
