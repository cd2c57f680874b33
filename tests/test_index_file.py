"""The portable index file (``ksym index build``, ``--index``, ``Symbolizer.from_index``) against the real
Debian 6.1 vmlinux it is made from, and against the anchors run here: scripts/faddr2line (text, byte for
byte) and binutils ``addr2line -fi``; ``ksym annotate`` over the file prints what it prints over the
vmlinux. The file is built once per session (the ``portable_index`` fixture of conftest.py).

Damage: bytes flipped in every block of a copy, the file cut or grown, another file given: a lookup
either answers exactly as the genuine file does or fails with one line and exit 4, never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
import marshal
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from anchors import (
    INDEX_FILE_MODULES,
    REPO_ROOT,
    TUTORIAL_SPECS,
    Frame,
    addr2line_batch,
    assert_same_as_faddr2line,
    call_return_addresses,
    faddr2line,
    faddr2line_parallel,
    find_faddr2line,
    joined_faddr2line_stdout,
    missing,
    parse_addr2line_output,
    sample_specs,
)

from ksym import Symbolizer
from ksym.cli import main
from ksym.errors import EXIT_BAD_FILE, BadFileError, KsymError
from ksym.modules import ModuleSymbolizer
from ksym.portable import FORMAT_VERSION, BlockKind, PortableFile, PortableMeta, _decompress, file_build_id
from ksym.symbols import Section

pytestmark = pytest.mark.vmlinux

FADDR2LINE = find_faddr2line()

#: the tutorial, then a frame of an assembly entry and a raw address
TUTORIAL = [*TUTORIAL_SPECS, "entry_SYSCALL_64_after_hwframe+0x63", "0xffffffff8184586e"]


@pytest.fixture(scope="module")
def script() -> Path:
    if FADDR2LINE is None:
        missing("scripts/faddr2line of linux-source-6.1 not found: run tools/fetch-testdata.sh")
    assert FADDR2LINE is not None
    return FADDR2LINE


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ksym-cache")


@pytest.fixture(scope="module")
def psym(portable_index: Path) -> Iterator[Symbolizer]:
    with Symbolizer.from_index(portable_index) as s:
        yield s


def _cli(*args: str) -> tuple[int, str, str]:
    """``ksym ARGS`` in this process: exit code, stdout, stderr (annotate writes bytes to their buffers)."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline="")
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline="")
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    out.flush()
    err.flush()
    return code, out.buffer.getvalue().decode(), err.buffer.getvalue().decode()


def _chain(sym: Symbolizer, address: int) -> list[tuple[str, str, int, int]]:
    got = [(c.function, c.raw_file, c.line, c.discriminator) for c in sym.symbolize(address).chain]
    return got or [("??", "??", 0, 0)]


# -- the build ------------------------------------------------------------------------------------------


def test_the_file_is_small_and_names_the_build(portable_index: Path, vmlinux: Path) -> None:
    size = portable_index.stat().st_size
    assert size <= vmlinux.stat().st_size // 10
    readelf = subprocess.run(
        ["readelf", "-n", str(vmlinux)], check=True, capture_output=True, text=True
    ).stdout
    build_id = next(ln.split()[-1] for ln in readelf.splitlines() if "Build ID:" in ln)
    assert file_build_id(portable_index) == build_id
    with PortableFile(portable_index) as pf:
        assert pf.meta.build_id == build_id
        assert pf.meta.kernel_tag == "v6.1.187"
        assert pf.meta.banner is not None and pf.meta.banner.startswith("Linux version 6.1.0-")
        assert pf.meta.source_size == vmlinux.stat().st_size
        # every unit .debug_aranges names is in the file
        assert {int(u) for u in pf.aranges.units} <= set(pf.units.keys)


def test_the_same_vmlinux_gives_the_same_file(portable_index: Path, vmlinux: Path, tmp_path: Path) -> None:
    """The builder writes the pieces in order whatever order its workers finish in (one worker here)."""
    out = tmp_path / "again.ksymidx"
    code, stdout, err = _cli(
        "index",
        "build",
        str(vmlinux),
        "-o",
        str(out),
        "-j",
        "1",
        "--progress",
        "--modules",
        str(portable_index.parent / "modules"),
    )
    assert code == 0
    # the progress bar (asked for: stderr is not a terminal here), redrawn in place, ends full: it counts
    # the vmlinux's units and code chunks and the modules
    units, chunks = (int(x) for x in re.findall(r"(\d+) units, (\d+) code chunks", stdout)[0])
    total = units + chunks + len(INDEX_FILE_MODULES)
    assert err.startswith("\rksym index build [") and err.endswith(f"] 100% {total}/{total}\n")
    assert f", {len(INDEX_FILE_MODULES)} modules, " in stdout
    assert out.read_bytes() == portable_index.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["again.ksymidx"]  # no temporary left


def test_build_refuses_a_file_without_dwarf_and_leaves_nothing(tmp_path: Path) -> None:
    stripped = tmp_path / "stripped"
    shutil.copy(REPO_ROOT / "fixtures" / "bin" / "kshapes-dwarf5.elf", stripped)
    subprocess.run(["strip", "--strip-debug", str(stripped)], check=True)
    code, out, err = _cli("index", "build", str(stripped), "-o", str(tmp_path / "x.ksymidx"))
    assert code == EXIT_BAD_FILE and out == ""
    assert len(err.splitlines()) == 1 and "no DWARF" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stripped"]


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started and has not reaped (its main thread's children)."""
    try:
        return [int(w) for w in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:  # it has ended
        return []


def _started(pid: int) -> str | None:
    """When process ``pid`` started (field 22 of /proc/PID/stat, clock ticks since boot: tells it from a
    later process given the same pid), or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _two_workers(build: subprocess.Popen[Any]) -> list[int]:
    """The two worker processes of a running ``ksym index build --jobs 2``, once both exist."""
    # the workers start once the parent has read the vmlinux's symbols and aranges (seconds)
    while build.poll() is None and len(_children(build.pid)) < 2:
        time.sleep(0.01)
    found = _children(build.pid)
    if build.poll() is not None or len(found) != 2:
        pytest.fail(f"the build ended (exit {build.poll()}) or has {found} for workers before one could be "
                    "killed: this test needs a build that runs for a while")
    return found


def _end_left(workers: dict[int, str | None]) -> list[int]:
    """The workers (pid: start time) still running, each ended here with SIGKILL (the test's own failure
    says they were left)."""
    left = [pid for pid, started in workers.items() if _started(pid) == started]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def test_a_killed_worker_ends_the_build_in_one_line_and_leaves_nothing(vmlinux: Path, tmp_path: Path) -> None:
    """A worker killed (by the out-of-memory killer, or a user) is no bug of ksym: the build stops with
    exit 3 and one line naming the signal, writes no file, leaves no temporary and reaps every worker."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "vmlinux.ksymidx"
    workers: dict[int, str | None] = {}
    # files, not pipes: a worker the build failed to end would hold a pipe open (and the test with it)
    with open(tmp_path / "stdout", "w+") as stdout, open(tmp_path / "stderr", "w+") as stderr:
        build = subprocess.Popen(
            [sys.executable, "-m", "ksym", "index", "build", str(vmlinux), "-o", str(out), "--jobs", "2"],
            stdout=stdout, stderr=stderr,
        )
        try:
            found = _two_workers(build)
            workers = {pid: _started(pid) for pid in found}
            os.kill(found[0], signal.SIGKILL)
            build.wait(timeout=600)
        finally:
            if build.poll() is None:
                build.kill()
            build.wait()
            left = _end_left(workers)  # the build's workers it left (orphans now)
        stdout.seek(0)
        stderr.seek(0)
        printed, said = stdout.read(), stderr.read()
    assert (build.returncode, printed) == (3, ""), said
    assert said == (f"ksym: error: index build: worker process {found[0]} was killed by signal 9 (SIGKILL; out of "
                    "memory? try fewer --jobs): no file written\n")
    assert list(out_dir.iterdir()) == []  # no file, no temporary
    # every worker was reaped by the build (a worker left running would still be there, orphaned)
    assert left == []


def test_the_workers_of_a_killed_build_end(vmlinux: Path, tmp_path: Path) -> None:
    """A build killed with SIGKILL cannot stop its workers: each must end by itself at its next result
    (a pipe nobody reads any more), not block forever on a full pipe holding its memory."""
    build = subprocess.Popen(
        [sys.executable, "-m", "ksym", "index", "build", str(vmlinux), "-o", str(tmp_path / "x.ksymidx"), "-j", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    workers: dict[int, str | None] = {}
    try:
        workers = {pid: _started(pid) for pid in _two_workers(build)}
        os.kill(build.pid, signal.SIGKILL)
        build.wait()
        # not a measure of speed: a worker ends within one job (a second), or never
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(_started(pid) == started for pid, started in workers.items()):
            time.sleep(0.05)
    finally:
        if build.poll() is None:
            build.kill()
            build.wait()
        left = _end_left(workers)
    assert build.returncode == -signal.SIGKILL
    assert left == []


# -- answers: the anchors, and the vmlinux-backed run -----------------------------------------------------


def test_resolve_matches_faddr2line(
    portable_index: Path, vmlinux: Path, script: Path, psym: Symbolizer
) -> None:
    specs = TUTORIAL[:-2] + sample_specs(
        psym, int(os.environ.get("KSYM_INDEX_FADDR2LINE_SAMPLES", "40")), seed=20261202
    )
    ref_out, ref_err = faddr2line_parallel(vmlinux, script, specs)
    code, out, err = _cli("resolve", "--index", str(portable_index), *specs)
    assert code in (0, 1)
    assert_same_as_faddr2line(ref_out, ref_err, out, err, len(specs), no_match_in_order=False)
    # each spec the first frame of a run: its name read from the file's name pieces, not the symbol table
    alone = [_cli("resolve", "--index", str(portable_index), spec)[1] for spec in specs]
    assert joined_faddr2line_stdout(alone) == ref_out
    tutorial = faddr2line(vmlinux, TUTORIAL[:-2], script)
    code, out, err = _cli("resolve", "--index", str(portable_index), *TUTORIAL[:-2])
    assert out == tutorial.stdout
    assert [ln for ln in err.splitlines() if ln.startswith("no match")] == [
        ln for ln in tutorial.stderr.splitlines() if ln.startswith("no match")
    ]


def test_chains_match_addr2line(vmlinux: Path, psym: Symbolizer) -> None:
    import capstone

    rng = random.Random(1215)
    st = psym.symbols
    funcs = [i for i in range(len(st)) if st.infos[i] & 0xF == 2 and st.sizes[i] > 0]
    addrs = [int(st.values[i]) + rng.randrange(int(st.sizes[i])) for i in rng.sample(funcs, 500)]
    # assembly (NOTYPE) symbols and the start of every executable section
    notype = [i for i in range(len(st)) if st.infos[i] & 0xF == 0 and st.shndx[i] == 1]
    addrs += [int(st.values[i]) + rng.randrange(4) for i in rng.sample(notype, 60)]
    addrs += [s.addr + rng.randrange(s.size) for s in psym.sections if s.flags & 0x4 for _ in range(20)]
    addrs += call_return_addresses(psym, vmlinux, rng, 40, capstone.CS_ARCH_X86, capstone.CS_MODE_64, "call")
    ref = addr2line_batch(vmlinux, addrs)
    bad = [(hex(a), got, want) for a, want in zip(addrs, ref) if (got := _chain(psym, a)) != want]
    assert not bad, f"{len(bad)} of {len(addrs)} differ, e.g. {bad[:3]}"
    assert len(addrs) > 650


def test_resolve_prints_what_the_vmlinux_run_prints(
    portable_index: Path, vmlinux: Path, cache_dir: Path, psym: Symbolizer
) -> None:
    specs = TUTORIAL + sample_specs(psym, 60, seed=7)
    for extra in ((), ("--links",), ("--json",)):
        by_file = _cli("resolve", "--index", str(portable_index), *extra, *specs)
        by_vmlinux = _cli("resolve", "--vmlinux", str(vmlinux), "--cache-dir", str(cache_dir), *extra, *specs)
        assert by_file == by_vmlinux
    first = json.loads(by_file[1].splitlines()[0])  # the --json run
    assert first["chain"][0]["url"].startswith("https://elixir.bootlin.com/linux/v6.1.187/")


def test_api_answers_as_the_vmlinux(vmlinux: Path, psym: Symbolizer, cache_dir: Path) -> None:
    with Symbolizer(vmlinux, cache_dir=cache_dir) as vsym:
        assert (psym.build_id, psym.banner, psym.dir_prefix, psym.machine) == (
            vsym.build_id,
            vsym.banner,
            vsym.dir_prefix,
            vsym.machine,
        )
        rng = random.Random(3)
        text = [s for s in vsym.sections if s.flags & 0x4]
        for s in text:
            for _ in range(30):
                a = s.addr + rng.randrange(s.size)
                assert psym.symbolize(a) == vsym.symbolize(a)
                assert psym.code_bytes(a, 64) == vsym.code_bytes(a, 64)
                assert psym.line_row_start(a) == vsym.line_row_start(a)
        rodata = next(s for s in vsym.sections if s.name == ".rodata")
        assert psym.code_bytes(rodata.addr + 100, 70000) == vsym.code_bytes(rodata.addr + 100, 70000)
        # the code chunks are 64 KiB: a read across two of them, and one past the section's end
        end = text[0].addr + text[0].size
        assert psym.code_bytes(end - 70000, 80000) == vsym.code_bytes(end - 70000, 80000)
        assert psym.code_bytes(0x10, 16) == vsym.code_bytes(0x10, 16)
        assert psym.dwarf_image is not None and not psym.dwarf_image.opened


def _dumps() -> list[Path]:
    data = REPO_ROOT / "tests" / "data"
    return sorted((data / "annotate").glob("*.txt")) + sorted((data / "stacks").glob("*.txt"))


def test_annotate_prints_what_the_vmlinux_run_prints(
    portable_index: Path, vmlinux: Path, cache_dir: Path
) -> None:
    dumps = _dumps()
    assert len(dumps) > 15
    for dump in dumps:
        for extra in ((), ("--format", "json")) if "6.1.0-53" in dump.name else ((),):
            by_file = _cli("annotate", "--index", str(portable_index), *extra, str(dump))
            # module frames: from the file's modules, and from their debug files
            by_vmlinux = _cli(
                "annotate",
                "--vmlinux",
                str(vmlinux),
                "--cache-dir",
                str(cache_dir),
                "--modules",
                str(portable_index.parent / "modules"),
                *extra,
                str(dump),
            )
            # a module neither holds is looked for in the file, and in the directory
            modules = f" in {portable_index.parent / 'modules'}, "
            assert by_file == (
                by_vmlinux[0],
                by_vmlinux[1].replace(modules, f" in {portable_index}, "),
                by_vmlinux[2].replace(modules, f" in {portable_index}, "),
            ), dump.name
    # the 6.1 warning: its call sites are disassembled from the file's code chunks
    _code, out, _err = _cli(
        "annotate",
        "--index",
        str(portable_index),
        str(REPO_ROOT / "tests/data/annotate/warn-ip_local_out-6.1.0-53.txt"),
    )
    assert "net/ipv4/ip_output.c" in out and "call site: call " in out


def test_index_and_vmlinux_together_is_a_usage_error(portable_index: Path, vmlinux: Path) -> None:
    for cmd in (("resolve", "ip_local_out+29"), ("annotate", "/dev/null")):
        code, out, err = _cli(cmd[0], "--index", str(portable_index), "--vmlinux", str(vmlinux), *cmd[1:])
        assert (code, out) == (2, "") and len(err.splitlines()) == 1 and "--index" in err


# -- damage ---------------------------------------------------------------------------------------------


def _assert_one_line_exit_4(result: tuple[int, str, str], genuine: str = "") -> None:
    """Exit 4 with one line; what was printed before it (frames answered before the damaged part was read)
    is the start of what the genuine file prints (``genuine``)."""
    code, out, err = result
    assert code == EXIT_BAD_FILE, (code, err)
    assert genuine.startswith(out), (out, genuine)
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "internal error" not in err, err


def test_not_an_index_file_missing_cut_or_grown(portable_index: Path, vmlinux: Path, tmp_path: Path) -> None:
    _assert_one_line_exit_4(_cli("resolve", "--index", str(vmlinux), "ip_local_out+29"))
    code, _out, err = _cli("resolve", "--index", str(tmp_path / "nothing"), "ip_local_out+29")
    assert code == 3 and len(err.splitlines()) == 1
    data = portable_index.read_bytes()
    cut = tmp_path / "cut.ksymidx"
    for size in (0, 10, 63, 64, 4000, len(data) // 2, len(data) - 1):
        cut.write_bytes(data[:size])
        _assert_one_line_exit_4(_cli("resolve", "--index", str(cut), "ip_local_out+29"))
        with pytest.raises(BadFileError):
            file_build_id(cut)
    cut.write_bytes(data + b"\0")
    _assert_one_line_exit_4(_cli("resolve", "--index", str(cut), "ip_local_out+29"))
    for version in (1, FORMAT_VERSION + 1):  # format 1: zstd pieces, JSON metadata
        other = bytearray(data[:64])
        other[8:12] = struct.pack("<I", version)
        cut.write_bytes(bytes(other) + data[64:])
        code, _out, err = _cli("resolve", "--index", str(cut), "ip_local_out+29")
        assert code == EXIT_BAD_FILE and f"format {version};" in err and "build the file again" in err


def _flip_points(pf: PortableFile, rng: random.Random) -> list[tuple[str, int, int | None]]:
    """(what, file offset, an address whose answer reads it) for bytes in every block of the file."""
    hdr = pf.header
    points: list[tuple[str, int, int | None]] = [
        (f"header byte {i}", i, None) for i in (0, 9, 13, 17, 25, 29, 33, 40)
    ]
    points += [("metadata", 64 + rng.randrange(hdr.length - 64 - 6 * 32), None) for _ in range(4)]
    points += [("block table", hdr.length - 6 * 32 + rng.randrange(6 * 32), None) for _ in range(4)]
    for kind in (
        BlockKind.SYMBOLS,
        BlockKind.ARANGES,
        BlockKind.UNIT_RANGES,
        BlockKind.UNITS,
        BlockKind.CODE,
        BlockKind.NAMES,
    ):
        b = hdr.blocks[kind]  # (MODULES below)
        # the code directory is read by the first call site's code (any address of it)
        at = pf.code.keys[0] if kind == BlockKind.CODE else None
        if b.length:
            points += [(f"block {kind}", b.offset + rng.randrange(b.length), at) for _ in range(3)]
    ar = pf.aranges
    for i in rng.sample(range(len(ar.starts)), 8):
        unit = int(ar.units[i])
        e = pf.units.find(unit)
        assert e is not None
        points.append((f"unit {unit:#x}", e.offset + rng.randrange(e.length), int(ar.starts[i])))
    for e in rng.sample(pf.code.entries(), 4):
        points.append((f"code {e.key:#x}", e.offset + rng.randrange(e.length), e.key))
    for e in rng.sample(pf._name_directory().entries(), 4):
        # a name the piece holds: the first frame of a run that names it reads the piece
        name = rng.choice(sorted(marshal.loads(pf._piece(e, "name piece"))))
        points.append((f"name piece {e.key} {name}", e.offset + rng.randrange(e.length), None))
    b = hdr.blocks[BlockKind.MODULES]
    points += [("module directory", b.offset + rng.randrange(b.length), None) for _ in range(3)]
    for m in pf._module_directory():
        points += [(f"module {m.name}", m.offset + rng.randrange(m.length), None) for _ in range(2)]
    return points


def test_flipped_bytes_anywhere_fail_in_one_line_or_answer_the_same(
    portable_index: Path, tmp_path: Path, psym: Symbolizer
) -> None:
    rng = random.Random(4404)
    with PortableFile(portable_index) as pf:
        points = _flip_points(pf, rng)
    damaged = tmp_path / "damaged.ksymidx"
    shutil.copy(portable_index, damaged)
    probes = ["ip_local_out+29", "0xffffffff8184586e"]
    want = _cli("resolve", "--index", str(portable_index), *probes)
    failed = 0
    for what, offset, address in points:
        with open(damaged, "r+b") as f:
            f.seek(offset)
            old = f.read(1)
            f.seek(offset)
            f.write(bytes([old[0] ^ (1 << rng.randrange(8))]))
        try:
            if what.startswith("module"):
                # resolve reads no module: annotate does, when a frame names one
                name = what.split()[1] if what != "module directory" else "nf_tables"
                with pytest.raises(BadFileError, match="checksum"), PortableFile(damaged) as pf:
                    for bid in pf.module_build_ids(name):
                        pf.module(name, bid)
                failed += 1
                continue
            if what.startswith("code") or what == f"block {BlockKind.CODE}":
                # resolve reads no code (nor the code directory): the call-site disassembly does
                assert address is not None
                with pytest.raises(BadFileError, match="checksum"), Symbolizer.from_index(damaged) as s:
                    s.code_bytes(address, 16)
                failed += 1
                continue
            if what.startswith(("header", "metadata", "block table")):
                with pytest.raises(BadFileError):
                    file_build_id(damaged)
            extra = [f"{address:#x}"] if address is not None else []
            if what.startswith("name piece"):
                extra = [f"{what.split()[-1]}+0x1"]
            # the frame that reads the damaged piece first: nothing is printed before the error
            got = _cli("resolve", "--index", str(damaged), *extra, *probes)
            if got[0] == EXIT_BAD_FILE:
                # a damaged symbol table is read by the address probe, after the first frame's answer
                # (from the name pieces, the unit)
                genuine = _cli("resolve", "--index", str(portable_index), *extra, *probes)[1]
                _assert_one_line_exit_4(got, genuine if what == f"block {BlockKind.SYMBOLS}" else "")
                failed += 1
            else:
                # a byte no check covers (alignment between blocks): the genuine file's answers
                assert got == _cli("resolve", "--index", str(portable_index), *extra, *probes), what
            if (address is not None and what.startswith("unit")) or what.startswith("name piece"):
                assert got[0] == EXIT_BAD_FILE, what
        finally:
            with open(damaged, "r+b") as f:
                f.seek(offset)
                f.write(old)
    assert want[0] == 0
    # every byte flipped is one a check covers (only the zero bytes between blocks are not)
    assert failed == len(points)


def test_the_name_pieces_hold_what_the_symbol_table_gives(portable_index: Path) -> None:
    """The first frames of a run read their names from the file's name pieces (a few KB each) rather than
    the 8.4 MB symbol table: for every name of the table, and names it lacks, the same matches."""
    with PortableFile(portable_index) as pf:
        table = pf.symbols()
        names = sorted({table.names[i] for i in range(len(table))})
        rng = random.Random(88)
        names += [n + suffix for n in rng.sample(names, 300) for suffix in ("_x", ".llvm.1", ".cold")]
        names += ["", "nope", "ip_local_out.llvm.123456"]
        differ = [n for n in names if pf.faddr2line_matches(n) != table.faddr2line_matches(n)]
        assert not differ, f"{len(differ)} names differ, e.g. {differ[:5]}"
        found = sum(1 for n in names if pf.faddr2line_matches(n))
        assert 40_000 < found < len(names)
        assert len(pf._name_directory()) > 500  # pieces of a few dozen names


def test_a_frame_is_answered_without_the_symbol_table(portable_index: Path, vmlinux: Path, cache_dir: Path,
                                                      tmp_path: Path) -> None:
    """The first frame of a run reads its name piece and its unit, not the symbol table: a file whose
    symbol table is damaged answers it as the genuine file does, and is refused (exit 4, one line) by a
    lookup that reads the table (a raw address, or a frame no DWARF function covers: bfd names it from
    the whole table)."""
    damaged = tmp_path / "damaged.ksymidx"
    shutil.copy(portable_index, damaged)
    with PortableFile(portable_index) as pf:
        b = pf.header.blocks[BlockKind.SYMBOLS]
    with open(damaged, "r+b") as f:
        f.seek(b.offset + b.length // 2)
        old = f.read(1)
        f.seek(b.offset + b.length // 2)
        f.write(bytes([old[0] ^ 0x10]))
    with Symbolizer.from_index(portable_index) as good, Symbolizer.from_index(damaged) as s:
        assert s.resolve("__ip_local_out+0xde") == good.resolve("__ip_local_out+0xde")
        with pytest.raises(BadFileError, match="symbol table checksum mismatch"):
            s.symbolize(0xFFFFFFFF8184586E)
    code, out, err = _cli("resolve", "--index", str(damaged), "ip_local_out+29", "0xffffffff8184586e")
    assert out == _cli("resolve", "--index", str(portable_index), "ip_local_out+29")[1] != ""
    _assert_one_line_exit_4((code, out, err), out)
    # no DWARF function covers these (a function made an alias of another, a static call trampoline):
    # addr2line names them by bfd's choice of symbol, from the whole table
    for frame in ("disable_nmi_nosync+0x1", "__SCT__tp_func_sched_wakeup+0x1"):
        with Symbolizer(vmlinux, cache_dir=cache_dir) as v, Symbolizer.from_index(portable_index) as good:
            assert good.resolve(frame) == v.resolve(frame)
        with Symbolizer.from_index(damaged) as s, pytest.raises(BadFileError, match="symbol table checksum"):
            s.resolve(frame)


def test_code_damage_in_annotate_is_one_line(portable_index: Path, tmp_path: Path) -> None:
    dump = REPO_ROOT / "tests/data/annotate/warn-ip_local_out-6.1.0-53.txt"
    damaged = tmp_path / "damaged.ksymidx"
    shutil.copy(portable_index, damaged)
    with Symbolizer.from_index(portable_index) as s:
        ret = s.resolve("__ip_local_out+0xde/0x160", chains=False)[0].address
    with PortableFile(portable_index) as pf:
        e = pf.code.at_or_below(ret - 5)
        assert e is not None and ret - 5 < e.key + e.raw_length
    with open(damaged, "r+b") as f:
        f.seek(e.offset + e.length // 2)
        b = f.read(1)
        f.seek(e.offset + e.length // 2)
        f.write(bytes([b[0] ^ 0x10]))
    code, out, err = _cli("annotate", "--index", str(damaged), str(dump))
    assert code == EXIT_BAD_FILE and "Traceback" not in err
    assert len(err.splitlines()) == 1 and "checksum" in err
    assert "ip_output.c" not in out or code == EXIT_BAD_FILE


def test_a_subprocess_run_reads_the_file_without_the_vmlinux(portable_index: Path, tmp_path: Path) -> None:
    """The command line in a process of its own, the file copied where no vmlinux is."""
    alone = tmp_path / "alone.ksymidx"
    shutil.copy(portable_index, alone)
    env = {**os.environ, "KSYM_CACHE_DIR": str(tmp_path / "cache"), "KSYM_VMLINUX": str(tmp_path / "none")}
    done = subprocess.run(
        [sys.executable, "-m", "ksym", "resolve", "--index", str(alone), *TUTORIAL],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    code, out, err = _cli("resolve", "--index", str(portable_index), *TUTORIAL)
    assert (done.returncode, done.stdout, done.stderr) == (code, out, err)
    assert "(inlined by) __ip_local_out at net/ipv4/ip_output.c" in out
    assert not (tmp_path / "cache").exists()  # nothing written to the on-disk index


def test_a_piece_must_decompress_to_exactly_its_length_and_end_there(portable_index: Path) -> None:
    """Format 2's zlib pieces, taken from the file: the directory's length is the only one accepted, and
    nothing may follow the stream's end (a hostile file whose CRCs agree still cannot make it read on)."""
    with PortableFile(portable_index) as pf:
        e = pf.units.entry(len(pf.units) // 2)
        stored = portable_index.read_bytes()[e.offset : e.offset + e.length]
        raw = pf._piece(e, "unit")
    assert zlib.decompress(stored) == raw and len(raw) == e.raw_length
    assert _decompress(stored, e.raw_length) == raw
    for bad_length in (e.raw_length - 1, e.raw_length + 1, 0):
        with pytest.raises(ValueError):
            _decompress(stored, bad_length)
    for bad in (stored[:-1], stored[: len(stored) // 2], stored + b"\0", stored + stored, b"", b"\x78"):
        with pytest.raises(ValueError):
            _decompress(bad, e.raw_length)
    empty = zlib.compress(b"", 9)
    assert _decompress(empty, 0) == b""
    with pytest.raises(ValueError):
        _decompress(empty + b"x", 0)


def test_the_metadata_is_plain_data_checked_field_by_field(portable_index: Path) -> None:
    with PortableFile(portable_index) as pf:
        meta = pf.meta
    data = meta.to_bytes()
    assert PortableMeta.from_bytes(data) == meta
    d = marshal.loads(data)
    hostile: list[Any] = [
        [1, 2],
        (lambda: 0).__code__,
        {**d, "sections": [[1, "x", 1]]},
        {**d, "elfclass": 16},
        {**d, "byteorder": "middle"},
        {**d, "build_id": 5},
        {k: v for k, v in d.items() if k != "banner"},
    ]
    for value in hostile:
        with pytest.raises(ValueError):
            PortableMeta.from_bytes(marshal.dumps(value, 4))
    for cut in (0, 1, len(data) // 2, len(data) - 1):
        with pytest.raises(ValueError):
            PortableMeta.from_bytes(data[:cut])


# -- modules (--modules) --------------------------------------------------------------------------------


def _module_answers(m: ModuleSymbolizer, frames: list[str]) -> list[object]:
    out: list[object] = []
    for f in frames:
        try:
            out.append([(r.symbol, r.offset, r.size, r.address, r.chain) for r in m.resolve(f)])
        except KsymError as exc:
            out.append((type(exc).__name__, exc.exit_code))
    return out


def _module_frames(m: ModuleSymbolizer, rng: random.Random, raw: int) -> tuple[list[str], Section]:
    """Every function of the module at a random offset, then ``raw`` random offsets into its .text; and
    that .text."""
    st = m.raw_symbols
    frames = [
        f"{st.names[i]}+{rng.randrange(st.sizes[i]):#x}" for i in range(len(st)) if st.infos[i] & 0xF == 2 and st.sizes[i]
    ]
    text = m.image.section(".text")
    assert text is not None and len(frames) > 10
    return frames + [f"{rng.randrange(text.size):#x}" for _ in range(raw)], text


@pytest.mark.parametrize("name", INDEX_FILE_MODULES)
def test_module_frames_answer_as_the_module_debug_file(portable_index: Path, name: str) -> None:
    """Every function of the module at a random offset, and raw offsets, as ModuleSymbolizer on the .ko
    answers them; section offsets as ``addr2line -fi -j`` on the .ko prints them."""
    ko = (portable_index.parent / "modules" / name).resolve()
    module = name.removesuffix(".ko")
    rng = random.Random(len(name))
    with ModuleSymbolizer(ko) as by_file_of_ko, PortableFile(portable_index) as pf:
        assert pf.module_build_ids(module) == [by_file_of_ko.build_id]
        with ModuleSymbolizer(module, image=pf.module(module, by_file_of_ko.build_id)) as by_index:
            frames, text = _module_frames(by_file_of_ko, rng, 50)
            frames += ["0x7fffffff", "nope+0x1"]
            assert _module_answers(by_index, frames) == _module_answers(by_file_of_ko, frames)
            offsets = sorted(rng.sample(range(text.size), 60))
            want = _addr2line_j(ko, ".text", offsets)
            got = [
                [(c.function, c.file, c.line, c.discriminator) for c in by_index.section_chain(".text", o)]
                or [("??", "??", 0, 0)]
                for o in offsets
            ]
            assert got == want
            for o in offsets[:10]:
                assert by_index.code_bytes(".text", o, 16) == by_file_of_ko.code_bytes(".text", o, 16)


def _addr2line_j(module: Path, section: str, offsets: list[int]) -> list[list[Frame]]:
    proc = subprocess.run(
        ["addr2line", "-a", "-f", "-i", "-j", section, "-e", str(module)],
        input="".join(f"{o:#x}\n" for o in offsets),
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "LC_ALL": "C"},
    )
    recs = parse_addr2line_output(proc.stdout)
    assert len(recs) == len(offsets)
    return recs


def test_a_file_without_modules_has_none(tmp_path: Path, portable_index: Path) -> None:
    with PortableFile(portable_index) as pf:
        assert pf.module_names() == sorted(n.removesuffix(".ko") for n in INDEX_FILE_MODULES)
        assert pf.module_build_ids("nf-tables") == pf.module_build_ids("nf_tables") != []
        with pytest.raises(KeyError):
            pf.module("nf_tables", "0" * 40)
    code, _out, err = _cli(
        "index", "build", str(portable_index), "-o", str(tmp_path / "x"), "--modules", "/nonexistent"
    )
    assert code == 3 and len(err.splitlines()) == 1 and "--modules" in err
