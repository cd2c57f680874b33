"""ksym.buildid: the one build-id code, checked against binutils on real files.

The build ids expected here are never written down: each comes from ``readelf -n`` (and file(1)) on the
same file, from the Debian 6.1 debug vmlinux (x86-64 and arm64), a Debian 6.1 module and this machine's
/sys/kernel/notes. dropcapture takes the running kernel's build id from this module too.
"""

from __future__ import annotations

import ast
import io
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from anchors import TESTDATA, find_test_vmlinux, missing
from elftools.elf.elffile import ELFFile
from hypothesis import given, settings
from hypothesis import strategies as st

import dropcapture.capture
import dropcapture.cli
import ksym.buildid
from dropcapture.output import SaveWriter
from ksym.buildid import (
    KERNEL_NOTES_PATH,
    NT_GNU_BUILD_ID,
    elf_notes,
    kernel_build_id_in_text,
    normalize_build_id,
    read_build_id_from_notes,
    running_build_id,
    same_build_id,
)
from ksym.debuginfo import file_build_id
from ksym.image import KernelImage
from ksym.modules import ModuleImage

ROOT = Path(__file__).resolve().parent.parent
ARM64_VMLINUX = TESTDATA / "arm64" / "vmlinux-6.1.0-53-arm64"
NF_TABLES = TESTDATA / "modules" / "kernel" / "net" / "netfilter" / "nf_tables.ko"

_READELF_NOTE = re.compile(r"^\s+(?P<owner>\S+)\s+0x(?P<size>[0-9a-f]+)\s", re.MULTILINE)


def _readelf_notes(path: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """binutils' view of a file's notes: (owner, descriptor size) of each, and the build ids it prints."""
    if shutil.which("readelf") is None:
        missing("binutils readelf")
    out = subprocess.run(["readelf", "-nW", str(path)], capture_output=True, text=True, check=True,
                         env={**os.environ, "LC_ALL": "C"}).stdout
    notes = [(m["owner"], int(m["size"], 16)) for m in _READELF_NOTE.finditer(out)]
    return notes, re.findall(r"Build ID: ([0-9a-f]+)", out)


def _file_build_id(path: Path) -> str:
    """file(1)'s ``BuildID[sha1]=<hex>``."""
    if shutil.which("file") is None:
        missing("file(1)")
    out = subprocess.run(["file", "-b", str(path)], capture_output=True, text=True, check=True).stdout
    m = re.search(r"BuildID\[\w+\]=([0-9a-f]+)", out)
    assert m, out
    return m.group(1)


def _note_sections(path: Path) -> list[bytes]:
    """The contents of every SHT_NOTE section, read by pyelftools (not by ksym)."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        return [s.data() for s in elf.iter_sections() if s["sh_type"] == "SHT_NOTE"]


@pytest.mark.vmlinux
@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_vmlinux_build_id_is_binutils(arch: str) -> None:
    """The build id of a real debug vmlinux, from its .notes block (where Xen notes of type 3 come first),
    is the one readelf -n and file(1) print; KernelImage and file_build_id give it from the same code."""
    path = {"x86_64": find_test_vmlinux(), "arm64": ARM64_VMLINUX}[arch]
    if path is None or not path.is_file():
        missing(f"the Debian 6.1 {arch} debug vmlinux is missing: run tools/fetch-testdata.sh")
    readelf, ids = _readelf_notes(path)
    assert len(ids) == 1
    want = ids[0]
    assert _file_build_id(path) == want
    sections = _note_sections(path)
    assert [(n.owner.decode(), len(n.desc)) for s in sections for n in elf_notes(s)] == readelf
    assert [read_build_id_from_notes(s) for s in sections if read_build_id_from_notes(s)] == [want]
    if arch == "x86_64":  # the Xen notes in front of it share the build id's type number
        assert any(n.owner == b"Xen" and n.type == NT_GNU_BUILD_ID for s in sections for n in elf_notes(s))
    img = KernelImage(path)
    try:
        assert img.build_id == want
    finally:
        img.close()
    assert file_build_id(path) == want


@pytest.mark.vmlinux
def test_module_build_id_is_binutils() -> None:
    """A real module (.note.gnu.build-id, then .note.Linux): the ModuleImage, file_build_id and the note
    parser agree with readelf -n."""
    if not NF_TABLES.is_file():
        missing("the Debian 6.1 modules are missing: run tools/fetch-testdata.sh")
    readelf, ids = _readelf_notes(NF_TABLES)
    assert len(ids) == 1
    want = ids[0]
    sections = _note_sections(NF_TABLES)
    assert [(n.owner.decode(), len(n.desc)) for s in sections for n in elf_notes(s)] == readelf
    assert ModuleImage(NF_TABLES).build_id == want
    assert file_build_id(NF_TABLES) == want
    assert _file_build_id(NF_TABLES) == want


def _running_notes() -> bytes:
    try:
        return Path(KERNEL_NOTES_PATH).read_bytes()
    except OSError as exc:
        pytest.skip(f"{KERNEL_NOTES_PATH} unreadable here: {exc}")


def _readelf_running_build_id(tmp_path: Path) -> str:
    """readelf -n's build id of /sys/kernel/notes: the raw note block, wrapped by objcopy into an ELF
    file's note section (readelf reads ELF files only)."""
    if shutil.which("objcopy") is None:
        missing("binutils objcopy")
    raw = tmp_path / "notes.bin"
    raw.write_bytes(_running_notes())
    wrapped = tmp_path / "notes.o"
    subprocess.run(["objcopy", "-I", "binary", "-O", "elf64-little",
                    "--rename-section", ".data=.note.kernel,alloc,load,readonly,data,contents",
                    str(raw), str(wrapped)], check=True, cwd=tmp_path)
    notes, ids = _readelf_notes(wrapped)
    assert notes and len(ids) == 1, notes
    assert [(n.owner.decode(), len(n.desc)) for n in elf_notes(raw.read_bytes())] == notes
    return ids[0]


def test_running_build_id_is_binutils(tmp_path: Path) -> None:
    want = _readelf_running_build_id(tmp_path)
    assert running_build_id() == want
    assert running_build_id(str(tmp_path / "missing")) is None


def test_dropcapture_takes_the_running_build_id_from_ksym(tmp_path: Path) -> None:
    """dropcapture has no note parser of its own: its capture header and its --vmlinux check read the
    running kernel's build id through ksym.buildid.running_build_id, and what dropcapture writes ksym reads
    back."""
    want = _readelf_running_build_id(tmp_path)
    info = dropcapture.capture.kernel_info()
    assert info.build_id == running_build_id() == want
    assert dropcapture.cli._running_build_id() == want
    out = io.StringIO()
    SaveWriter(out, info, "tracefs")
    assert f"# build-id: {want}" in out.getvalue().splitlines()
    assert kernel_build_id_in_text(out.getvalue()) == want
    # the same code: both take ksym's function; nothing in dropcapture opens the notes or parses a note
    # (a function of dropcapture whose name speaks of build ids must take ksym.buildid's code: the
    # running kernel's id, or --build-id normalised by ksym)
    delegating = {"_running_build_id": "running_build_id", "_build_id_option": "normalize_build_id"}
    users = set()
    for source in (ROOT / "src" / "dropcapture").glob("*.py"):
        tree = ast.parse(source.read_text())
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and n.module == "ksym.buildid":
                users.update(source.stem for a in n.names if a.name == "running_build_id")
            assert not (isinstance(n, ast.Constant) and n.value == KERNEL_NOTES_PATH), source
            if isinstance(n, ast.FunctionDef) and "build_id" in n.name:
                assert n.name in delegating, (source, n.name)
                taken = {a.name for m in ast.walk(n) if isinstance(m, ast.ImportFrom) and m.module == "ksym.buildid"
                         for a in m.names}
                assert delegating[n.name] in taken, (source, n.name)
    assert users == {"capture", "cli"}


def test_note_blocks() -> None:
    """Notes before the build id are stepped over by their padded sizes; an owner other than GNU with type
    3 is not a build id; the byte order is the file's."""
    desc = bytes(range(20))

    def note(owner: bytes, ntype: int, data: bytes, order: str = "<") -> bytes:
        name = owner + b"\0"
        return (struct.pack(order + "III", len(name), len(data), ntype) + name.ljust((len(name) + 3) & ~3, b"\0")
                + data.ljust((len(data) + 3) & ~3, b"\0"))

    other = note(b"Linux", 1, b"abcd") + note(b"Xen", NT_GNU_BUILD_ID, b"\x01\x02\x03")
    assert read_build_id_from_notes(other + note(b"GNU", NT_GNU_BUILD_ID, desc)) == desc.hex()
    assert read_build_id_from_notes(other) is None
    assert [n.owner for n in elf_notes(other)] == [b"Linux", b"Xen"]
    big = note(b"Linux", 1, b"ab", ">") + note(b"GNU", NT_GNU_BUILD_ID, desc, ">")
    assert read_build_id_from_notes(big, little_endian=False) == desc.hex()
    assert read_build_id_from_notes(big[:-4], little_endian=False) == desc[:-4].hex()  # as cut, as before
    assert read_build_id_from_notes(b"\0" * 11) is None


def test_normalize_and_compare() -> None:
    bid = os.urandom(20).hex()
    pairs = [bid[i : i + 2] for i in range(0, len(bid), 2)]
    assert normalize_build_id(bid) == bid
    assert normalize_build_id(" 0x" + bid.upper() + "\n") == bid
    assert normalize_build_id(":".join(pairs)) == bid
    assert normalize_build_id("-".join(pairs).upper()) == bid
    for bad in (bid[:-1], bid[:6], "xyz" + bid[3:], ""):
        with pytest.raises(ValueError, match="not a build id"):
            normalize_build_id(bad)
    assert same_build_id(bid, bid) and same_build_id(bid.upper(), bid)
    assert same_build_id(bid[:16], bid)  # a dump's shortened id names the file
    assert not same_build_id(bid, bid[:16])  # a file with a shorter id is another file
    assert not same_build_id(bid[:-2] + ("00" if bid[-2:] != "00" else "11"), bid)


def test_build_id_in_a_dump() -> None:
    bid = os.urandom(20).hex()
    assert kernel_build_id_in_text(f"foo\nBuild ID: {bid}\n") == bid
    assert kernel_build_id_in_text(f"# build-id: {bid.upper()}\n") == bid
    assert kernel_build_id_in_text(f"vmlinux: ELF 64-bit, BuildID[sha1]={bid}, not stripped") == bid
    assert kernel_build_id_in_text(f'{{"release": "6.1", "build_id": "{bid}"}}') == bid
    assert kernel_build_id_in_text(f" nft_do_chain+0x3e8/0x5f0 [nf_tables {bid}]\n") is None
    assert kernel_build_id_in_text(f'{{"module_build_id": "{bid}"}}') is None


_WORDS = ["Build ID: ", "build-id: ", "# build-id:", "buildid=", "BuildID[sha1]=", "build id ", "BUILD_ID:",
          '"build_id": "', "__build_skb+0x1a/0x30", "rebuild id=", "#", " ", "\n", "\t", "x", ":", "=", '"',
          "0123456789abcdef0123456789abcdef01234567", "0x", "0123456789ABCDEF"]


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(_WORDS), max_size=12))
def test_build_id_words_found_as_one_search_finds_them(words: list[str]) -> None:
    """Matching the pattern just before each "build id" word finds what one search of it finds."""
    text = "".join(words)
    m = (ksym.buildid._TEXT_BUILD_ID.search(text)
         or re.search(r"\"build_id\"\s*:\s*\"(?P<bid>[0-9a-fA-F]{16,128})\"", text))
    assert kernel_build_id_in_text(text) == (m.group("bid").lower() if m else None), text


def _ksym_imports(module: str) -> set[str]:
    """The ksym modules ``module`` imports, at module level or inside functions."""
    tree = ast.parse((ROOT / "src" / "ksym" / f"{module}.py").read_text())
    out: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom):
            if n.level == 1:
                out.update([n.module] if n.module else [a.name for a in n.names])
            elif n.module and n.module.startswith("ksym."):
                out.add(n.module.split(".")[1])
        elif isinstance(n, ast.Import):
            out.update(a.name.split(".")[1] for a in n.names if a.name.startswith("ksym."))
    return {m.split(".")[0] for m in out}


def _reach(module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        for m in _ksym_imports(todo.pop()):
            if m not in seen and (ROOT / "src" / "ksym" / f"{m}.py").is_file():
                seen.add(m)
                todo.append(m)
    return seen


def test_no_import_cycle_between_locate_and_debuginfo() -> None:
    """locate uses debuginfo and buildid; debuginfo reaches neither locate nor anything that does; buildid
    imports no other ksym module but ksym.records, which imports none (everything that opens ELF files may
    use it)."""
    assert {"debuginfo", "buildid"} <= _ksym_imports("locate")
    assert "locate" not in _reach("debuginfo")
    assert "locate" not in _reach("buildid") and _ksym_imports("buildid") == {"records"}
    assert _ksym_imports("records") == set()
