"""Finding the vmlinux when none is named, and the DWARF paths taken when .debug_aranges is missing."""

from __future__ import annotations

import struct
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from anchors import addr2line_batch, fixture, func_symbols

from ksym import FileNotFoundKsymError, MissingDebugInfoError, Symbolizer
from ksym.image import KernelImage
from ksym.locate import candidate_paths, find_vmlinux, release_paths


def _notes(build_id: bytes) -> bytes:
    name = b"GNU\0"
    return struct.pack("<III", len(name), len(build_id), 3) + name + build_id


def test_env_variable_names_the_vmlinux(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    elf = fixture("kshapes-dwarf5.elf")
    monkeypatch.setenv("KSYM_VMLINUX", str(elf))
    loc = find_vmlinux()
    assert loc.path == elf and "KSYM_VMLINUX" in loc.reason
    got = subprocess.run([sys.executable, "-m", "ksym", "resolve", "--cache-dir", str(tmp_path), "raw_ioctl+0x5"],
                         capture_output=True, text=True, check=False)
    assert got.returncode == 0, got.stderr
    assert "raw_ioctl at drivers/char/raw.c:7 (discriminator 2)" in got.stdout


def test_default_paths_follow_the_release() -> None:
    paths = [str(p) for p in candidate_paths("6.1.0-53-cloud-amd64")]
    assert paths[0] == "/usr/lib/debug/boot/vmlinux-6.1.0-53-cloud-amd64"
    assert "/usr/lib/debug/lib/modules/6.1.0-53-cloud-amd64/vmlinux" in paths
    assert "/lib/modules/6.1.0-53-cloud-amd64/build/vmlinux" in paths


def test_found_vmlinux_is_checked_against_the_running_build_id(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KSYM_VMLINUX", raising=False)
    elf = tmp_path / "vmlinux-test"
    note = tmp_path / "bid.bin"
    note.write_bytes(_notes(bytes(range(20))))
    # the fixtures carry no build id: give a copy one, as kernels have
    subprocess.run(["objcopy", f"--add-section=.note.gnu.build-id={note}", str(fixture("kshapes-dwarf5.elf")),
                    str(elf)], check=True)
    img = KernelImage(elf)
    own = img.build_id
    img.close()
    assert own == bytes(range(20)).hex()
    same = tmp_path / "notes-same"
    same.write_bytes(_notes(bytes.fromhex(own)))
    other = tmp_path / "notes-other"
    other.write_bytes(_notes(b"\x11" * 20))
    ok = find_vmlinux(candidates=[tmp_path / "missing", elf], notes_path=str(same))
    assert ok.path == elf and ok.warnings == []
    bad = find_vmlinux(candidates=[elf], notes_path=str(other))
    assert len(bad.warnings) == 1 and own in bad.warnings[0] and "11" * 20 in bad.warnings[0]
    with pytest.raises(FileNotFoundKsymError, match="no debug vmlinux found"):
        find_vmlinux(candidates=[tmp_path / "missing"])


def test_stripped_candidates_are_passed_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A vmlinux without DWARF (the one linux-headers ships for BTF) is not the debug vmlinux."""
    monkeypatch.delenv("KSYM_VMLINUX", raising=False)
    nodebug, debug = fixture("kshapes-nodebug.elf"), fixture("kshapes-dwarf5.elf")
    assert find_vmlinux(candidates=[nodebug, debug]).path == debug
    with pytest.raises(MissingDebugInfoError, match="no DWARF") as exc:
        find_vmlinux(candidates=[nodebug])
    assert "linux-image-" in str(exc.value)


def test_nothing_found_is_one_line_with_the_package_to_install(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "KSYM_CACHE_DIR": str(tmp_path), "HOME": str(tmp_path)}
    got = subprocess.run([sys.executable, "-m", "ksym", "resolve", "x+1"], capture_output=True, text=True,
                         check=False, env=env)
    found = [p for p in candidate_paths() if p.is_file()]
    if not found:
        assert got.returncode == 3 and "no debug vmlinux found" in got.stderr
    else:
        # this machine may hold a stripped vmlinux (linux-headers' for BTF) where distributions look
        assert got.returncode in (1, 4), got.stderr
    assert got.stderr.count("\n") == 1 and "Traceback" not in got.stderr
    if got.returncode != 1:
        assert "linux-image-" in got.stderr  # tells which package to install


@pytest.mark.parametrize("name", ["kshapes-dwarf5.elf", "kshapes-dwarf4.elf"])
def test_units_missing_from_aranges_still_resolve(name: str, tmp_path: Path) -> None:
    """Without .debug_aranges ksym finds the unit from the CU DIEs' ranges, like addr2line does."""
    src = fixture(name)
    stripped = tmp_path / name
    subprocess.run(["objcopy", "--remove-section=.debug_aranges", str(src), str(stripped)], check=True)
    img = KernelImage(stripped)
    assert img.section(".debug_aranges") is None
    img.close()
    addrs = [addr + off for _n, addr, size in func_symbols(stripped) if size for off in range(0, size, 3)]
    want = addr2line_batch(stripped, addrs)
    with Symbolizer(stripped, cache_dir=tmp_path / "cache") as sym:
        got = [[(c.function, c.raw_file, c.line, c.discriminator) for c in sym.symbolize(a).chain] or
               [("??", "??", 0, 0)] for a in addrs]
        assert got == want
        # and once more from the stored index (the unit ranges are kept there)
        with Symbolizer(stripped, cache_dir=tmp_path / "cache") as again:
            assert [str(again.symbolize(a)) for a in addrs[:20]] == [str(sym.symbolize(a)) for a in addrs[:20]]


def test_zlib_compressed_debug_sections_resolve_the_same(tmp_path: Path) -> None:
    src = fixture("kshapes-dwarf5.elf")
    packed = tmp_path / "z.elf"
    subprocess.run(["objcopy", "--compress-debug-sections=zlib", str(src), str(packed)], check=True)
    with closing(KernelImage(packed)) as img:
        assert img.section(".debug_info").flags & 0x800  # type: ignore[union-attr]
    with Symbolizer(src, use_index=False) as plain, Symbolizer(packed, cache_dir=tmp_path / "c") as z:
        for spec in ("__ip_local_out+0x10", "ip_local_out_like+0x40", "raw_ioctl+0x5", "netif_receive_like.cold+0x10"):
            assert [str(r) for r in z.resolve(spec)] == [str(r) for r in plain.resolve(spec)]


def test_zstd_compressed_debug_sections_resolve_the_same(tmp_path: Path) -> None:
    """ELFCOMPRESS_ZSTD, which pyelftools cannot decompress: ksym does (tests/test_compressed.py has more)."""
    src = fixture("kshapes-dwarf5.elf")
    packed = tmp_path / "zs.elf"
    subprocess.run(["objcopy", "--compress-debug-sections=zstd", str(src), str(packed)], check=True)
    with closing(KernelImage(packed)) as img:
        assert img.section(".debug_info").flags & 0x800  # type: ignore[union-attr]
    with Symbolizer(src, use_index=False) as plain, Symbolizer(packed, cache_dir=tmp_path / "c") as z:
        for spec in ("__ip_local_out+0x10", "ip_local_out_like+0x40", "raw_ioctl+0x5", "netif_receive_like.cold+0x10"):
            assert [str(r) for r in z.resolve(spec)] == [str(r) for r in plain.resolve(spec)]


def test_release_paths_name_one_release_and_candidates_add_the_others(tmp_path: Path) -> None:
    """Under a root holding vmlinux files of two releases, ``release_paths`` lists the given release's places
    only; ``candidate_paths`` adds the other release's /boot/vmlinux-* after them (find_vmlinux checks its
    build id); the running kernel's release is the default."""
    elf = fixture("kshapes-dwarf5.elf").read_bytes()
    mine, other = "6.1.0-53-cloud-amd64", "6.18.0-rc3"
    for rel_path in (f"lib/modules/{mine}/vmlinux", f"boot/vmlinux-{other}", f"usr/lib/debug/boot/vmlinux-{other}"):
        (tmp_path / rel_path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel_path).write_bytes(elf)
    paths = release_paths(mine, root=tmp_path)
    assert paths == [p for p in candidate_paths(mine, root=tmp_path) if other not in str(p)]
    assert all(mine in str(p) and p.is_relative_to(tmp_path) for p in paths)
    assert [p for p in paths if p.is_file()] == [tmp_path / f"lib/modules/{mine}/vmlinux"]
    assert candidate_paths(mine, root=tmp_path)[len(paths):] == [tmp_path / f"boot/vmlinux-{other}"]
    assert [p for p in release_paths(other, root=tmp_path) if p.is_file()] == [
        tmp_path / f"usr/lib/debug/boot/vmlinux-{other}", tmp_path / f"boot/vmlinux-{other}"]
    import os

    assert release_paths(root=tmp_path) == release_paths(os.uname().release, root=tmp_path)
    assert release_paths(mine)[0] == Path(f"/usr/lib/debug/boot/vmlinux-{mine}")
