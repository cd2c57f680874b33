"""The on-disk index (ksym.index) can neither be poisoned nor serve a file it was not built from, every
command leaves what it read in it, and it cleans up after itself.

- A damaged copy of a debug file that carries the genuine build id (a fixture, and the real vmlinux with one
  byte changed deep in .debug_info) gets its own index: run first, its
  answers and units are never served for the genuine file, and the genuine file's are never served for
  it (the index is keyed by build id and a fingerprint of the file's contents).
- An index in an older layout (keyed by the build id alone) is ignored, not read.
- ``ksym resolve`` run twice on the same 60 frames of the real vmlinux: the second run reads no DWARF.
- ``with Symbolizer(...)`` / ``close()`` writes the index; nothing is written at exit or by the garbage
  collector for a Symbolizer left open.
- A unit whose read failed is never stored.
- Stale ``.tmp-*`` files of interrupted writes are removed by a later run; fresh ones are kept.
- A relative ``$XDG_CACHE_HOME`` is ignored (the XDG spec).

The small ELF files are fixtures/bin/kshapes-dwarf5.elf with a GNU build id note added by objcopy (the
fixture has none), damaged byte by byte; answers are compared with the same file read without an index.
"""

from __future__ import annotations

import marshal
import os
import random
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from anchors import REPO_ROOT, fixture, missing, require_test_vmlinux
from elftools.elf.elffile import ELFFile

from ksym import KsymError, Symbolizer
from ksym.index import FORMAT_VERSION, IndexStore, default_cache_dir

SPECS = ["__ip_local_out+45", "ip_local_out_like+0x1d", "ip_local_out_like+0x74", "raw_ioctl+0x5",
         "netif_receive_like+0xc", "netif_receive_like.cold+0x10", "dev_report_error+0x7", "start_kernel+0",
         "dev_hash.constprop.0.isra.0+4", "csum_like+0x4"]  # the last one never resolves (faddr2line: no size)
BUILD_ID = "0123456789abcdef0123456789abcdef01234567"


def _with_build_id(dest: Path) -> Path:
    """fixtures' kshapes-dwarf5.elf with a .note.gnu.build-id (BUILD_ID) added by objcopy."""
    objcopy = shutil.which("objcopy")
    if objcopy is None:
        missing("objcopy (binutils) is not installed")
    note = dest.with_suffix(".note")
    note.write_bytes(struct.pack("<III", 4, 20, 3) + b"GNU\0" + bytes.fromhex(BUILD_ID))
    subprocess.run([objcopy, "--add-section", f".note.gnu.build-id={note}", str(fixture("kshapes-dwarf5.elf")),
                    str(dest)], check=True, capture_output=True)
    return dest


def _sections(path: Path) -> dict[str, tuple[int, int, str]]:
    with open(path, "rb") as f:
        return {s.name: (s["sh_offset"], s["sh_size"], s["sh_type"]) for s in ELFFile(f).iter_sections()}


def _damaged(src: Path, dest: Path, offset: int, value: int | None = None) -> Path:
    data = bytearray(src.read_bytes())
    data[offset] = value if value is not None else data[offset] ^ 0x01
    dest.write_bytes(bytes(data))
    return dest


def _answers(path: Path, cache: Path | None) -> list[str]:
    """Every SPEC resolved (or the kind of its error) by a Symbolizer on ``path``, closed. Errors of any
    type are outcomes here: which errors damaged DWARF raises is tested elsewhere; this compares what
    a file gets with and without an index."""
    out = []
    try:
        sym = Symbolizer(path, cache_dir=cache, use_index=cache is not None)
    except Exception as exc:  # noqa: BLE001 - every outcome is compared
        return [f"open: {type(exc).__name__}"]
    with sym:
        for spec in SPECS:
            try:
                out.append("\n".join(str(r) for r in sym.resolve(spec)))
            except Exception as exc:  # noqa: BLE001 - every outcome is compared
                out.append(f"{spec}: {type(exc).__name__}")
    return out


def _ksym(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "ksym", *args], check=False, capture_output=True, text=True,
                          timeout=600, env=full, cwd=cwd)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- item 2: a damaged copy with the genuine build id neither serves nor poisons ---------------------------


def test_damaged_copy_run_first_neither_poisons_nor_is_served(tmp_path: Path) -> None:
    genuine = _with_build_id(tmp_path / "vmlinux")
    # a silent damage: one byte of the name "nf_hook" in .debug_str (an inlined function of
    # __ip_local_out+45), so the damaged copy answers differently without failing
    off, size, _t = _sections(genuine)[".debug_str"]
    at = genuine.read_bytes().index(b"\0nf_hook\0", off, off + size) + 7
    damaged = _damaged(genuine, tmp_path / "vmlinux.damaged", at, ord("X"))
    want_genuine = _answers(genuine, None)
    want_damaged = _answers(damaged, None)
    assert "nf_hook at" in want_genuine[0] and "nf_hoox at" not in want_genuine[0]
    assert want_damaged[0] == want_genuine[0].replace("nf_hook at", "nf_hooX at")
    cache = tmp_path / "cache"
    # the damaged copy first: it writes the image record, units and answers
    assert _answers(damaged, cache) == want_damaged
    got = _ksym("resolve", "--vmlinux", str(genuine), "--cache-dir", str(cache), SPECS[0])
    assert got.stdout.rstrip("\n") == want_genuine[0], "the damaged copy's answers were served for the genuine file"
    assert _answers(genuine, cache) == want_genuine
    # the other way round: the genuine file's stored answers are not served for the damaged copy
    assert _answers(damaged, cache) == want_damaged
    assert _answers(genuine, cache) == want_genuine
    keys = sorted(p.name for p in (cache / "index").iterdir())
    assert len(keys) == 2 and all(k.startswith(BUILD_ID + "-") for k in keys), keys


@pytest.mark.vmlinux
def test_damaged_vmlinux_copy_run_first_neither_poisons_nor_is_served(tmp_path: Path) -> None:
    """The same on the real vmlinux, damaged where a sampled hash would not look: one byte in the middle
    of its 163 MB .debug_info (the DW_AT_call_line of the nf_hook call inlined into __ip_local_out, found
    with pyelftools), so the copy silently answers another line."""
    vmlinux = require_test_vmlinux()
    frame = "__ip_local_out+222"
    want = _ksym("resolve", "--no-index", "--vmlinux", str(vmlinux), frame)
    assert "(inlined by) __ip_local_out at net/ipv4/ip_output.c:115" in want.stdout
    with open(vmlinux, "rb") as f:
        elf = ELFFile(f)
        dwarf = elf.get_dwarf_info(relocate_dwarf_sections=False)
        info_off = elf.get_section_by_name(".debug_info")["sh_offset"]
        with Symbolizer(vmlinux, use_index=False) as sym:
            address = sym.resolve(frame)[0].address
        cu = dwarf.get_CU_at(dwarf.get_aranges().cu_offset_at_addr(address))
        lines = [a for a in (d.attributes.get("DW_AT_call_line") for d in cu.iter_DIEs()
                             if d.tag == "DW_TAG_inlined_subroutine") if a is not None and a.value == 115]
    assert [a.form for a in lines] == ["DW_FORM_data1"]
    assert info_off + lines[0].offset > info_off + 0x1000000  # deep inside the section
    damaged = tmp_path / "vmlinux.damaged"
    try:
        shutil.copyfile(vmlinux, damaged)
        with open(damaged, "r+b") as f:
            f.seek(info_off + lines[0].offset)
            f.write(bytes([116]))
        want_damaged = _ksym("resolve", "--no-index", "--vmlinux", str(damaged), frame)
        assert want_damaged.stdout == want.stdout.replace("ip_output.c:115", "ip_output.c:116")
        cache = tmp_path / "cache"
        with Symbolizer(damaged, cache_dir=cache) as first:  # closing writes its index
            assert "".join(f"{r}\n" for r in first.resolve(frame)) == want_damaged.stdout
        assert list(cache.glob("index/*/answers.v*")), "the damaged copy's answers were stored"
        got = _ksym("resolve", "--vmlinux", str(vmlinux), "--cache-dir", str(cache), frame)
        assert got.stdout == want.stdout, "the damaged copy's answers were served for the genuine file"
        again = _ksym("resolve", "--vmlinux", str(damaged), "--cache-dir", str(cache), frame)
        assert again.stdout == want_damaged.stdout, "the genuine file's answers were served for the copy"
        assert len(list((cache / "index").iterdir())) == 2
    finally:
        damaged.unlink(missing_ok=True)


def test_damage_anywhere_in_the_file_gets_its_own_index(tmp_path: Path) -> None:
    """One byte changed in the middle of each section ksym reads (every .debug_* section, the symbol
    and string tables, the code): the damaged copy, read with the genuine file's index present, neither
    changes a byte of that index nor gets the genuine answers unless its own bytes give them."""
    genuine = _with_build_id(tmp_path / "vmlinux")
    cache = tmp_path / "cache"
    want = _answers(genuine, cache)
    assert want == _answers(genuine, None)
    (key_dir,) = (cache / "index").iterdir()
    before = _snapshot(key_dir)
    secs = _sections(genuine)
    names = [n for n, (_o, size, t) in secs.items() if size and t != "SHT_NOBITS" and n]
    assert {".debug_info", ".debug_abbrev", ".debug_line", ".debug_str", ".debug_line_str", ".debug_aranges",
            ".debug_rnglists", ".symtab", ".strtab", ".text"} <= set(names)
    for n in names:
        off, size, _t = secs[n]
        for pos in {off + size // 2, off, off + size - 1}:
            damaged = _damaged(genuine, tmp_path / "vmlinux.damaged", pos)
            assert _answers(damaged, cache) == _answers(damaged, None), f"{n} at {pos:#x}: served from another index"
            assert _snapshot(key_dir) == before, f"{n} at {pos:#x}: the genuine file's index changed"
    assert _answers(genuine, cache) == want


def test_a_file_changed_seconds_ago_is_fingerprinted_on_every_run(tmp_path: Path) -> None:
    """File timestamps are coarser than two writes can be apart: a file changed within the last seconds
    is not remembered by identity, so rewriting it in place with the same size and mtime cannot make a
    run use the index of its previous contents."""
    elf = _with_build_id(tmp_path / "vmlinux")
    cache = tmp_path / "cache"
    with Symbolizer(elf, cache_dir=cache) as sym:
        want = [str(r) for r in sym.resolve(SPECS[0])]
        assert sym.stats.fingerprinted
    assert not list((cache / "paths").glob("*")), "a file changed just now was remembered by identity"
    st = elf.stat()
    off, size, _t = _sections(elf)[".debug_str"]
    data = bytearray(elf.read_bytes())
    data[data.index(b"\0nf_hook\0", off, off + size) + 7] = ord("X")
    with open(elf, "r+b") as f:  # in place: same inode, same size, the mtime set back
        f.write(bytes(data))
    os.utime(elf, ns=(st.st_atime_ns, st.st_mtime_ns))
    with Symbolizer(elf, cache_dir=cache) as sym:
        got = [str(r) for r in sym.resolve(SPECS[0])]
        assert sym.stats.fingerprinted
    assert got == [w.replace("nf_hook at", "nf_hooX at") for w in want]


def test_an_older_index_keyed_by_build_id_alone_is_ignored(tmp_path: Path) -> None:
    """Layouts before this format keyed the index by the build id alone (index/<build id>/*.v<N>) and
    the path memo held (path, size, mtime_ns, inode, key): such files, here holding wrong answers, are
    never read."""
    genuine = _with_build_id(tmp_path / "vmlinux")
    want = _answers(genuine, None)
    cache = tmp_path / "cache"
    with Symbolizer(genuine, use_index=False) as ref:
        view = ref._view()
        addrs = [m.address for s in SPECS[:3] for m in ref.resolve(s)]
    poison = ((("evil", "evil.c", 1, 0, 0, "evil.c", False),), -1)
    old = cache / "index" / BUILD_ID
    old.mkdir(parents=True)
    for v in range(1, FORMAT_VERSION + 1):
        (old / f"answers.v{v}").write_bytes(marshal.dumps({"view": view, "answers": dict.fromkeys(addrs, poison)}))
    st = genuine.stat()
    import zlib

    b = str(genuine.resolve()).encode()
    memo = cache / "paths" / f"{zlib.crc32(b):08x}{zlib.adler32(b):08x}"
    memo.parent.mkdir(parents=True)
    memo.write_bytes(marshal.dumps((str(genuine.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, BUILD_ID)))
    assert _answers(genuine, cache) == want
    assert _answers(genuine, cache) == want
    assert "evil" not in _ksym("resolve", "--vmlinux", str(genuine), "--cache-dir", str(cache), SPECS[0]).stdout


_POISON = ((("evil", "evil.c", 1, 0, 0, "evil.c", False),), -1)


def _older_answers_file(tmp_path: Path, shape: Callable[[dict[str, Any], list[int]], dict[str, Any]],
                        version: int) -> tuple[Path, Path, str, dict[str, Any], dict[str, Any]]:
    """The genuine fixture file, and a cache holding an answers file of an older format under its own key
    (``shape(view, addresses)``: wrong answers for the first specs' addresses) twice: with that format's
    name (``.v<version>``) and with this format's. Returns the file, the cache, the key, the view and
    the older file's object."""
    genuine = _with_build_id(tmp_path / "vmlinux")
    with Symbolizer(genuine, cache_dir=tmp_path / "probe") as probe:
        key, view = probe.key, probe._view()
        addrs = [m.address for s in SPECS[:3] for m in probe.resolve(s)]
    old = shape(view, addrs)
    cache = tmp_path / "cache"
    d = cache / "index" / key
    d.mkdir(parents=True)
    for name in (f"answers.v{version}", f"answers.v{FORMAT_VERSION}"):
        (d / name).write_bytes(marshal.dumps(old))
    return genuine, cache, key, view, old


def test_an_index_of_format_8_is_ignored_not_misread(tmp_path: Path) -> None:
    """Format 8 kept every stored answer in one dict (``{"view", "answers"}``) whose keys were addresses
    or tuples, and the same file names with ``.v8``: such files, here holding wrong answers under the
    genuine file's own key, are never read, and one of that shape under this format's name is not
    misread as this format's answers (it is replaced by the answers of this run)."""
    assert FORMAT_VERSION > 8
    genuine, cache, key, view, old = _older_answers_file(
        tmp_path, lambda view, addrs: {"view": view, "answers": {**dict.fromkeys(addrs, _POISON),
                                                                 ("insn", addrs[0], None): (True, None)}}, 8)
    want = _answers(genuine, None)
    assert _answers(genuine, cache) == want
    assert _answers(genuine, cache) == want
    stored = IndexStore(cache).load_answers(key, view)
    assert stored.chains and all(isinstance(a, int) for a in stored.chains), "this run's answers replaced the old file"
    assert all("evil" not in repr(rec) for rec in stored.chains.values())
    d = cache / "index" / key
    assert marshal.loads((d / "answers.v8").read_bytes()) == old, "the older file is left as it was"


def test_an_index_of_format_10_is_ignored(tmp_path: Path) -> None:
    """Format 10 wrote plain marshal files, without the CRC-32 header of this format (``.v10``): such files,
    here holding wrong answers under the genuine file's own key (stored chains and faddr2line matches), are
    never read, and one of that shape under this format's name fails its check and is replaced."""
    assert FORMAT_VERSION == 11
    genuine, cache, key, view, old = _older_answers_file(
        tmp_path, lambda view, addrs: {"view": view, "chains": dict.fromkeys(addrs, _POISON), "instructions": {},
                                       "callers": {}}, 10)
    want = _answers(genuine, None)
    assert _answers(genuine, cache) == want
    assert _answers(genuine, cache) == want
    stored = IndexStore(cache).load_answers(key, view)
    assert stored.chains and all("evil" not in repr(rec) for rec in stored.chains.values())
    d = cache / "index" / key
    assert marshal.loads((d / "answers.v10").read_bytes()) == old, "the older file is left as it was"


def test_a_damaged_symbols_file_is_ignored_and_rebuilt_not_misread(tmp_path: Path) -> None:
    """The symbol table is its own file (``symbols.v<N>``, mapped): cut short, emptied, with a damaged
    header, with columns that do not agree, of another size than the image record names, or with one
    byte changed, it is never read; the answers are those of the file read without an index (frames seen
    before need no table: their matches are stored), and the file is rebuilt by the first lookup that
    needs the whole table (a raw address)."""
    genuine = _with_build_id(tmp_path / "vmlinux")
    want = _answers(genuine, None)
    with Symbolizer(genuine, use_index=False) as ref:
        address = ref.resolve(SPECS[1])[0].address
        want_address = str(ref.symbolize(address))
    cache = tmp_path / "cache"
    assert _answers(genuine, cache) == want
    (symbols,) = cache.glob(f"index/*/symbols.v{FORMAT_VERSION}")
    good = symbols.read_bytes()
    # the column table starts after the 8-byte magic and the byte-order byte: (offset, size) pairs
    values_size = struct.unpack_from("<Q", good, 9 + 16 * 2 + 8)[0]
    shrunk = bytearray(good)
    struct.pack_into("<Q", shrunk, 9 + 16 * 2 + 8, values_size - 8)  # one symbol fewer values than names
    damages = {
        "cut short": good[: len(good) // 2],
        "empty": b"",
        "magic": b"X" + good[1:],
        "byte order": good[:8] + (b"b" if good[8:9] == b"l" else b"l") + good[9:],
        "columns disagree": bytes(shrunk),
        "longer": good + bytes(8),
        "a byte changed": good[:-1] + bytes([good[-1] ^ 1]),  # in the last name: only its CRC-32 tells
    }
    for what, data in damages.items():
        symbols.write_bytes(data)
        assert _answers(genuine, cache) == want, what
        with Symbolizer(genuine, cache_dir=cache) as sym:
            assert str(sym.symbolize(address)) == want_address, what
        assert symbols.read_bytes() == good, f"{what}: rebuilt"


def test_a_first_frame_is_answered_without_the_whole_symbol_table(tmp_path: Path) -> None:
    """The first frames of a run on a new file are looked up by name in its ``.symtab``: no symbols file
    is written, the matches go with the stored answers, so the same frame again builds no table either;
    the first lookup that needs the whole table (a raw address) builds it and writes the symbols file.
    Every answer is the one the whole table gives."""
    genuine = _with_build_id(tmp_path / "vmlinux")
    cache = tmp_path / "cache"
    frames = ["ip_local_out_like+0x1d", "netif_receive_like+0xc", "csum_like+0x4"]
    want = {}
    with Symbolizer(genuine, use_index=False) as ref:
        assert len(ref.symbols) > 0  # the whole table, built before any lookup
        for frame in frames:
            try:
                want[frame] = [str(r) for r in ref.resolve(frame)]
            except KsymError as exc:
                want[frame] = [str(exc), *(r.text for r in getattr(exc, "reasons", ()))]
        address = ref.resolve(frames[0])[0].address
        want_address = str(ref.symbolize(address))
    for _ in range(2):
        with Symbolizer(genuine, cache_dir=cache) as sym:
            for frame in frames:
                try:
                    got = [str(r) for r in sym.resolve(frame)]
                except KsymError as exc:
                    got = [str(exc), *(r.text for r in getattr(exc, "reasons", ()))]
                assert got == want[frame], frame
        assert list(cache.glob("index/*/image.v*")), "the image record is written"
        assert not list(cache.glob("index/*/symbols.v*")), "no whole table was built"
    with Symbolizer(genuine, cache_dir=cache) as sym:
        assert str(sym.symbolize(address)) == want_address
    assert len(list(cache.glob(f"index/*/symbols.v{FORMAT_VERSION}"))) == 1
    with Symbolizer(genuine, cache_dir=cache) as sym:
        assert [str(r) for r in sym.resolve(frames[0])] == want[frames[0]]


def test_first_use_hashes_in_a_thread_that_ends_with_the_open(tmp_path: Path) -> None:
    """A file's first use computes its fingerprint in a thread while it reads the symbol table: the key
    is the one :func:`ksym.index.fingerprint` gives, and no thread is left when the Symbolizer is open."""
    import mmap
    import threading

    from ksym.index import Fingerprinting, fingerprint
    from ksym.session import image_key

    genuine = _with_build_id(tmp_path / "vmlinux")
    before = threading.active_count()
    with Symbolizer(genuine, cache_dir=tmp_path / "cache") as sym:
        assert threading.active_count() == before
        assert sym.stats.fingerprinted
        skip = [(s.offset, s.size) for s in sym.sections if s.type in (4, 9)]
        with open(genuine, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            assert sym.key == image_key(BUILD_ID, fingerprint(mm, skip))
            assert Fingerprinting(mm, skip).result() == fingerprint(mm, skip)


def test_a_unit_that_failed_to_read_is_never_stored(tmp_path: Path) -> None:
    """A unit read far enough for one address, then damaged further on (an inlined subroutine's DIE
    with an abbreviation code the unit does not define): the address past the damage fails, and the
    unit is not in the index afterwards."""
    genuine = _with_build_id(tmp_path / "vmlinux")
    with open(genuine, "rb") as f:
        elf = ELFFile(f)
        dwarf = elf.get_dwarf_info(relocate_dwarf_sections=False)
        info_off = elf.get_section_by_name(".debug_info")["sh_offset"]
        target = None
        for cu in dwarf.iter_CUs():
            for die in cu.iter_DIEs():
                if die.tag == "DW_TAG_subprogram" and "DW_AT_low_pc" in die.attributes:
                    inl = [c for c in die.iter_children() if c.tag == "DW_TAG_inlined_subroutine"]
                    if inl and target is None:
                        target = (cu.cu_offset, die.attributes["DW_AT_low_pc"].value, inl[0].offset)
    assert target is not None
    cu_offset, low_pc, die_offset = target
    damaged = _damaged(genuine, tmp_path / "vmlinux.damaged", info_off + die_offset, 0x7F)
    cache = tmp_path / "cache"
    with Symbolizer(damaged, cache_dir=cache) as sym, pytest.raises(KsymError):
        sym.symbolize(low_pc)

    store = IndexStore(cache)
    with Symbolizer(damaged, cache_dir=cache) as again:
        units = store.load_unit_map(again.key)
        assert cu_offset not in units, "the unit whose read failed was stored"
        with pytest.raises(KsymError):
            again.symbolize(low_pc)


# -- item 3: every command leaves what it read in the index ------------------------------------------------


def _frames(vmlinux: Path, n: int) -> list[str]:
    """``n`` real ``func+0xoff`` frames: FUNC symbols of one name sampled with a fixed seed."""
    with Symbolizer(vmlinux, use_index=False) as sym:
        st = sym.symbols
        funcs = [i for i in range(len(st.values)) if st.infos[i] & 0xF == 2 and st.sizes[i] >= 16
                 and len(st.indices_named(st.names[i])) == 1]
        rng = random.Random(6060)
        return [f"{st.names[i]}+{int(st.sizes[i]) // 2:#x}" for i in rng.sample(funcs, n)]


def _stats(stderr: str) -> dict[str, int]:
    line = next(ln for ln in stderr.splitlines() if ln.startswith("ksym: stats: "))
    return {k: int(v) for k, v in (w.split("=", 1) for w in line.split()[2:]) if v.isdigit()}


@pytest.mark.vmlinux
def test_second_resolve_of_60_frames_reads_no_dwarf(tmp_path: Path) -> None:
    vmlinux = require_test_vmlinux()
    frames = _frames(vmlinux, 60)
    env = {"KSYM_CACHE_DIR": str(tmp_path / "cache"), "KSYM_STATS": "1"}
    first = _ksym("resolve", "--vmlinux", str(vmlinux), *frames, env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count(":\n") == 60
    assert list((tmp_path / "cache").glob("index/*/answers.v*")), "resolve stored no answers"
    assert _stats(first.stderr)["units_read"] > 0
    assert _stats(first.stderr)["fingerprinted"] == 1
    second = _ksym("resolve", "--vmlinux", str(vmlinux), *frames, env=env)
    assert (second.returncode, second.stdout) == (0, first.stdout)
    stats = _stats(second.stderr)
    assert stats["units_read"] == 0 and stats["answers_looked_up"] == 0, second.stderr
    assert stats["fingerprinted"] == 0, "the path memo did not spare hashing the unchanged file"
    assert stats["answers_stored"] >= 60


def test_with_block_writes_the_index_and_an_open_symbolizer_writes_nothing_at_exit(tmp_path: Path) -> None:
    elf = _with_build_id(tmp_path / "vmlinux")
    cache = tmp_path / "cache"
    with Symbolizer(elf, cache_dir=cache) as sym:
        want = [str(r) for s in SPECS[:-1] for r in sym.resolve(s)]
        assert sym.stats.answers_looked_up > 0
    with Symbolizer(elf, cache_dir=cache) as again:
        assert [str(r) for s in SPECS[:-1] for r in again.resolve(s)] == want
        assert (again.stats.units_read, again.stats.answers_looked_up) == (0, 0)
        assert again.stats.answers_stored > 0
    # a Symbolizer never closed: what it learnt is not written, neither by the garbage collector nor
    # at interpreter exit (only close()/flush()/with write: nothing depends on when objects die)
    other = tmp_path / "cache2"
    code = ("import gc, sys; from ksym import Symbolizer\n"
            "s = Symbolizer(sys.argv[1], cache_dir=sys.argv[2])\n"
            "s.resolve('__ip_local_out+45'); kept = s; del s; gc.collect()\n")
    subprocess.run([sys.executable, "-c", code, str(elf), str(other)], check=True, timeout=120,
                   env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")})
    assert list(other.glob("index/*/image.v*")), "the image record is written when it is built"
    assert not list(other.glob("index/*/answers.v*")), "an unclosed Symbolizer wrote its answers at exit"


# -- item 8: stale temporaries ------------------------------------------------------------------------------


def test_stale_temporaries_are_removed_by_a_later_run(tmp_path: Path) -> None:
    elf = _with_build_id(tmp_path / "vmlinux")
    cache = tmp_path / "cache"
    with Symbolizer(elf, cache_dir=cache) as sym:
        sym.resolve(SPECS[0])
    (key_dir,) = (cache / "index").iterdir()
    old = time.time() - 2 * 3600
    planted = {}
    (cache / "paths").mkdir(exist_ok=True)
    for d in (key_dir, cache / "paths"):
        for name, aged in ((".tmp-0123456789abcdef", True), (".tmp-abcdefgh", True), (".tmp-fedcba9876543210", False),
                           (".tmp-not-ours.txt", True), ("notes.txt", True)):
            p = d / name
            p.write_bytes(b"partial")
            if aged:
                os.utime(p, (old, old))
            planted[p] = name in (".tmp-0123456789abcdef", ".tmp-abcdefgh")
    # a later run that writes (a frame not answered before) removes the aged temporaries of its own
    # names only
    with Symbolizer(elf, cache_dir=cache) as sym:
        sym.resolve(SPECS[1])
    for p, removed in planted.items():
        assert p.exists() != removed, p


# -- item 9: relative XDG_CACHE_HOME ------------------------------------------------------------------------


def test_relative_xdg_cache_home_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elf = _with_build_id(tmp_path / "vmlinux")
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    env = {"HOME": str(home), "XDG_CACHE_HOME": "rel-cache", "KSYM_CACHE_DIR": ""}
    run = _ksym("resolve", "--vmlinux", str(elf), SPECS[0], env=env, cwd=work)
    assert run.returncode == 0, run.stderr
    assert not (work / "rel-cache").exists()
    assert list((home / ".cache" / "ksym" / "index").iterdir())
    monkeypatch.delenv("KSYM_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", "rel-cache")
    assert default_cache_dir() == home / ".cache" / "ksym"
    from ksym import source

    assert source.default_cache_dir() == home / ".cache" / "ksym" / "source"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "abs"))
    assert default_cache_dir() == tmp_path / "abs" / "ksym"
    assert source.default_cache_dir() == tmp_path / "abs" / "ksym" / "source"


def test_a_file_that_cannot_be_used_is_not_left_open(tmp_path: Path) -> None:
    """The Symbolizer releases the file when it refuses it, not when the collector gets to it: the
    exception (whose traceback holds the half-made object) is still alive here."""
    from ksym import BadFileError

    # DWARF but no .symtab: opened and mapped, then refused (a file with symbols and no DWARF is used:
    # raw addresses are answered from its symbols, as addr2line does)
    elf = fixture("kshapes-nosymtab-dwarf.elf").resolve()
    with pytest.raises(BadFileError) as refused:
        Symbolizer(elf, cache_dir=tmp_path)
    assert refused.traceback
    fds = {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
           if os.path.exists(f"/proc/self/fd/{fd}")}
    assert str(elf) not in fds
    assert str(elf) not in Path("/proc/self/maps").read_text()
