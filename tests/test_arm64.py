"""ksym on an arm64 debug vmlinux (Debian linux-image-6.1.0-53-arm64-dbg, 6.1.187-1), read on this x86
machine and compared with the cross tools run in the test itself: the kernel's scripts/faddr2line with
``CROSS_COMPILE=aarch64-linux-gnu-`` (text, byte for byte) and ``aarch64-linux-gnu-addr2line -fi``
(binutils-aarch64-linux-gnu). Call sites are checked against ``aarch64-linux-gnu-objdump``.

The vmlinux comes from tools/fetch-testdata.sh (CI runs it). Elsewhere the tests skip with the reason
printed; under CI=true missing data is a failure, never a skip.

The kernel script takes ~5 CPU-seconds per ``sym+off``, so it gets a sample of
``$KSYM_ARM64_FADDR2LINE_SAMPLES`` specs (default 20, plus 11 fixed ones; docs/design.md has a
200-spec run).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from anchors import (
    TESTDATA,
    Frame,
    addr2line_batch,
    assert_same_as_faddr2line,
    call_return_addresses,
    dir_prefix,
    faddr2line_parallel,
    find_faddr2line,
    missing,
    sample_specs,
)

from ksym import Symbolizer
from ksym.annotate import LOOKUP_CALL_SITE, LOOKUP_EXACT, annotate
from ksym.disasm import call_before, supported_machine
from ksym.version import choose_tag

pytestmark = pytest.mark.vmlinux

CROSS = "aarch64-linux-gnu-"
_CANDIDATES = (TESTDATA / "arm64" / "vmlinux-6.1.0-53-arm64",)


def _find_vmlinux() -> Path | None:
    value = os.environ.get("KSYM_TEST_VMLINUX_ARM64")
    if value:
        return Path(value) if Path(value).is_file() else None
    return next((p for p in _CANDIDATES if p.is_file()), None)


VMLINUX = _find_vmlinux()
FADDR2LINE = find_faddr2line()


def _need(ok: bool, what: str) -> None:
    if not ok:
        msg = f"{what} not found: run tools/fetch-testdata.sh and tools/setup.sh test (binutils-aarch64-linux-gnu)"
        missing(msg)


@pytest.fixture(scope="module")
def vmlinux() -> Path:
    _need(VMLINUX is not None, "the Debian 6.1 arm64 debug vmlinux")
    _need(shutil.which(f"{CROSS}addr2line") is not None, f"{CROSS}addr2line")
    assert VMLINUX is not None
    return VMLINUX


@pytest.fixture(scope="module")
def script(vmlinux: Path) -> Path:
    _need(FADDR2LINE is not None, "scripts/faddr2line of linux-source-6.1")
    _need(shutil.which(f"{CROSS}readelf") is not None, f"{CROSS}readelf")
    assert FADDR2LINE is not None
    return FADDR2LINE


@pytest.fixture(scope="module")
def sym(vmlinux: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Symbolizer]:
    with Symbolizer(vmlinux, cache_dir=tmp_path_factory.mktemp("ksym-index-arm64")) as s:
        yield s


def _chain(sym: Symbolizer, address: int) -> list[Frame]:
    got = [(c.function, c.raw_file, c.line, c.discriminator) for c in sym.symbolize(address).chain]
    return got or [("??", "??", 0, 0)]


def _reference(vmlinux: Path, addrs: list[int], got: list[list[Frame]]) -> tuple[list[list[Frame]], int]:
    """addr2line's answers, as faddr2line gets them: one fresh process per address. bfd remembers state
    within one process (a unit's line table, once read, widens that unit's range: arm64 functions start
    with ftrace NOPs that only the line table covers; the last function symbol found is reused), so the
    batch answers are taken where they agree with ksym and the others are asked again one by one.
    Returns the reference and how many were asked again."""
    ref = addr2line_batch(vmlinux, addrs, CROSS)
    again = [i for i, (a, b) in enumerate(zip(got, ref)) if a != b]
    for i in again:
        ref[i] = addr2line_batch(vmlinux, [addrs[i]], CROSS)[0]
    return ref, len(again)


def _bl_return_addresses(sym: Symbolizer, vmlinux: Path, rng: random.Random, nfuncs: int) -> list[int]:
    """Addresses right after ``bl`` instructions (what an arm64 stack holds), found with capstone."""
    import capstone

    return call_return_addresses(sym, vmlinux, rng, nfuncs, capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM, "bl")


def test_image_facts(sym: Symbolizer, vmlinux: Path) -> None:
    assert sym.machine == "EM_AARCH64"
    assert sym.elf_type == "ET_DYN"  # arm64 links vmlinux as a PIE (-shared): faddr2line treats DYN as vmlinux
    assert supported_machine(sym.machine)
    assert choose_tag(sym.banner).tag == "v6.1.187"
    text = sym.address_of("_text")
    assert text is not None and text >> 48 == 0xFFFF and text != 0xFFFFFFFF81000000
    # faddr2line's path prefix: addr2line has no line for start_kernel here, so nothing is stripped
    assert sym.dir_prefix == dir_prefix(vmlinux, CROSS)


def test_mapping_symbols_are_not_frames(sym: Symbolizer) -> None:
    st = sym.symbols
    maps = [i for i in range(len(st)) if re.fullmatch(r"\$[xd](\..*)?", st.names[i])]
    assert len(maps) > 1000  # $x / $d mark code and data in arm64 objects
    for i in maps[:: max(1, len(maps) // 200)]:
        hit = st.containing(int(st.values[i]))
        assert hit is None or not hit[0].name.startswith("$")
        found = st.bfd_function(int(st.values[i]))
        assert found is None or not re.fullmatch(r"\$[xd](\..*)?", found[0])


FIXED = ["el0_svc+0x2c/0x90", "__ip_local_out+0x40", "ip_local_out+0x20/0x64", "do_el0_svc+4", "schedule+0",
         "tcp_v4_rcv+0x100", "invoke_syscall+0x48/0x114", "el0t_64_sync_handler+0xc0", "kfree_skb+1",
         "gic_handle_irq+0x50", "__arm64_sys_ioctl+0x9c"]


def test_sampled_frames_match_faddr2line(vmlinux: Path, script: Path, sym: Symbolizer, tmp_path: Path) -> None:
    n = int(os.environ.get("KSYM_ARM64_FADDR2LINE_SAMPLES", "20"))
    specs = FIXED + sample_specs(sym, n, seed=61187)
    ref_out, ref_err = faddr2line_parallel(vmlinux, script, specs, cross_compile=CROSS)
    got = subprocess.run(
        [sys.executable, "-m", "ksym", "resolve", "--vmlinux", str(vmlinux), "--cache-dir", str(tmp_path), *specs],
        check=False, capture_output=True, text=True, timeout=600,
    )
    blocks = assert_same_as_faddr2line(ref_out, ref_err, got.stdout, got.stderr, len(specs))
    print(f"{len(specs)} specs, {blocks} blocks: identical")


def test_addresses_match_addr2line(vmlinux: Path, sym: Symbolizer) -> None:
    rng = random.Random(2026)
    st = sym.symbols
    funcs = [i for i in range(len(st)) if st.infos[i] & 0xF == 2 and st.sizes[i] > 0]
    addrs = [int(st.values[i]) + rng.randrange(int(st.sizes[i])) for i in rng.sample(funcs, 200)]
    # assembly (no DWARF function: the name is bfd's symbol choice) and every executable section
    execs = [s for s in sym.sections if s.flags & 0x4 and s.size]
    for s in execs:
        addrs += [s.addr + rng.randrange(s.size) // 4 * 4 for _ in range(20)]
    # untyped (assembly) symbols, at their start and a few words in: several symbols often share a start
    # (__efistub_$x and __efistub_efi_enter_kernel, linker-script markers and the code they mark)
    untyped = [i for i in range(len(st)) if st.infos[i] & 0xF == 0 and any(
        s.index == st.shndx[i] for s in execs) and not st.names[i].startswith("$")]
    for i in rng.sample(untyped, min(100, len(untyped))):
        addrs.append(int(st.values[i]) + 4 * rng.randrange(4) * rng.randrange(2))
    rets = _bl_return_addresses(sym, vmlinux, rng, 35)
    addrs += rets[:200]
    got = [_chain(sym, a) for a in addrs]
    ref, asked_again = _reference(vmlinux, addrs, got)
    bad = [(hex(a), g, w) for a, g, w in zip(addrs, got, ref) if g != w]
    assert not bad, f"{len(bad)} of {len(addrs)} differ, e.g. {bad[:3]}"
    assert len(addrs) >= 480 and len(rets) >= 80
    assert asked_again <= len(addrs) // 20
    print(f"{len(addrs)} addresses ({min(len(rets), 200)} after bl): identical; {asked_again} asked again alone")


def _objdump_bl(vmlinux: Path, address: int) -> str:
    """``bl\tffff800008123456 <nf_hook_slow>`` as objdump prints the instruction at ``address``."""
    out = subprocess.run(
        [f"{CROSS}objdump", "-d", "--no-show-raw-insn", f"--start-address={address:#x}",
         f"--stop-address={address + 4:#x}", str(vmlinux)],
        check=True, capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"},
    ).stdout
    line = next(ln for ln in out.splitlines() if re.match(rf"\s*{address:x}:", ln))
    return line.split(":", 1)[1].strip()


def test_call_site_is_bl(vmlinux: Path, sym: Symbolizer) -> None:
    _need(shutil.which(f"{CROSS}objdump") is not None, f"{CROSS}objdump")
    rng = random.Random(4)
    rets = _bl_return_addresses(sym, vmlinux, rng, 8)
    assert rets
    for ret in rng.sample(rets, min(6, len(rets))):
        hit = sym.symbols.containing(ret - 1)
        call = call_before(ret, sym.code_bytes, sym.machine, function_start=hit[0].address if hit else None,
                           name_of=lambda a: (h[0].name if (h := sym.symbols.containing(a)) and h[0].address == a
                                              else None))
        st = sym.symbols
        assert call is not None and call.mnemonic == "bl" and not call.indirect
        assert call.address == ret - 4 and call.size == 4
        m = re.fullmatch(r"bl\s+([0-9a-f]+) <([^>]+)>", _objdump_bl(vmlinux, ret - 4))
        assert m, _objdump_bl(vmlinux, ret - 4)
        assert call.target == int(m[1], 16)
        # objdump may name another alias at the target (memset / __memset): both are symbols there
        if "+" not in m[2]:
            assert call.target_name is not None and call.text == f"bl {call.target_name}"
            for name in (m[2], call.target_name):
                assert call.target in {int(st.values[i]) for i in st.indices_named(name)}


def test_annotate_arm64_oops(vmlinux: Path, sym: Symbolizer) -> None:
    """An arm64 oops (``pc :``/``lr :`` and a ``Call trace:`` of ``sym+0xoff/0xsize`` frames) annotated:
    the top frame at its address, the others at their call site (return address - 1, inside the
    ``bl``), each the addr2line answer there."""
    rng = random.Random(7)
    rets = rng.sample(_bl_return_addresses(sym, vmlinux, rng, 30), 24)
    frames = []
    for ret in rets:
        s, _size = sym.symbols.containing(ret - 1) or (None, 0)
        assert s is not None
        m = sym.symbols.faddr2line_matches(s.name)[0]
        frames.append(f"{s.name}+{ret - s.address:#x}/{m.size:#x}")
    top = frames[0]
    lines = ["Unable to handle kernel NULL pointer dereference at virtual address 0000000000000008",
             "Internal error: Oops: 0000000096000004 [#1] SMP",
             "CPU: 1 PID: 4242 Comm: curl Not tainted 6.1.0-53-arm64 #1  Debian 6.1.187-1",
             f"pc : {top}", f"lr : {frames[1]}", "sp : ffff80000a3b3a40", "Call trace:",
             *[f" {f}" for f in frames], "Code: f9400a61 b4000061 f9400421 b4000041 (f9400820)"]
    text = "".join(f"[  100.{i:06d}] {ln}\n" for i, ln in enumerate(lines))
    result = annotate(text, sym)
    assert result.all_resolved, [af.reason for af in result.unresolved]
    call_trace = [af for af in result.frames if af.lineno > lines.index("Call trace:") + 1]
    assert [af.frame.spec for af in call_trace] == frames
    assert call_trace[0].lookup == LOOKUP_EXACT and call_trace[0].lookup_address == rets[0]
    for af, ret in zip(call_trace[1:], rets[1:]):
        assert af.lookup == LOOKUP_CALL_SITE and af.lookup_address == ret - 1
        assert af.call is not None and af.call.mnemonic == "bl"
    looks = [af.lookup_address for af in call_trace]
    assert all(a is not None for a in looks)
    got = [[(c.function, c.raw_file, c.line, c.discriminator) for c in af.chain] or [("??", "??", 0, 0)]
           for af in call_trace]
    ref, _ = _reference(vmlinux, [a for a in looks if a is not None], got)
    assert got == ref


# -- the portable index file (ksym index build) of the arm64 vmlinux --------------------------------------


@pytest.fixture(scope="module")
def arm64_index(vmlinux: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ksym-index-file-arm64") / "vmlinux-6.1.0-53-arm64.ksymidx"
    done = subprocess.run([sys.executable, "-m", "ksym", "index", "build", str(vmlinux), "-o", str(out), "-j", "2"],
                          check=False, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    print(done.stdout.strip(), f"({out.stat().st_size / vmlinux.stat().st_size:.3f} of the vmlinux)")
    return out


def test_index_file_answers_as_faddr2line_and_addr2line(vmlinux: Path, script: Path, sym: Symbolizer,
                                                        arm64_index: Path) -> None:
    """The arm64 file, without the vmlinux: specs byte-identical to scripts/faddr2line (CROSS_COMPILE), chains
    equal to aarch64 addr2line -fi, and the same answers as the vmlinux-backed Symbolizer."""
    specs = FIXED + sample_specs(sym, int(os.environ.get("KSYM_ARM64_INDEX_SAMPLES", "5")), seed=15)
    ref_out, ref_err = faddr2line_parallel(vmlinux, script, specs, cross_compile=CROSS)
    got = subprocess.run([sys.executable, "-m", "ksym", "resolve", "--index", str(arm64_index), *specs],
                         check=False, capture_output=True, text=True, timeout=600)
    assert_same_as_faddr2line(ref_out, ref_err, got.stdout, got.stderr, len(specs))
    rng = random.Random(1564)
    with Symbolizer.from_index(arm64_index) as psym:
        assert (psym.build_id, psym.banner, psym.dir_prefix) == (sym.build_id, sym.banner, sym.dir_prefix)
        st = psym.symbols
        funcs = [i for i in range(len(st)) if st.infos[i] & 0xF == 2 and st.sizes[i] > 0]
        addrs = [int(st.values[i]) + 4 * rng.randrange(int(st.sizes[i]) // 4 or 1) for i in rng.sample(funcs, 150)]
        addrs += _bl_return_addresses(psym, vmlinux, rng, 30)
        mine = [_chain(psym, a) for a in addrs]
        assert mine == [_chain(sym, a) for a in addrs]
        assert psym.dwarf_image is not None and not psym.dwarf_image.opened
    ref, _again = _reference(vmlinux, addrs, mine)
    assert mine == ref
