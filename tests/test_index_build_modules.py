"""``ksym index build --modules``: the module debug files are read by the build's worker processes, one
module a job, and the file does not depend on how many there were.

The modules are the Debian 6.1 netfilter modules of the session's index file (``INDEX_FILE_MODULES``);
the image beside them is the kshapes fixture ELF (the module part of the file does not depend on it, and a
small image keeps each build to a few seconds: tests/test_index_file.py builds the Debian vmlinux with
the same modules, with one worker and with two, and compares the files). Module frames answered from the
file built by two workers are compared with the module debug files, as test_index_file.py does.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from anchors import INDEX_FILE_MODULES, TESTDATA, fixture, missing
from test_index_file import _addr2line_j, _module_answers, _module_frames

from ksym.errors import EXIT_BAD_FILE, EXIT_NO_FILE
from ksym.modules import ModuleImage, ModuleSymbolizer
from ksym.portable import PortableFile
from ksym.portable_build import BuildResult, WorkerShare, build_index

pytestmark = pytest.mark.vmlinux  # the Debian modules come with it (tools/fetch-testdata.sh)

IMAGE = fixture("kshapes-dwarf5.elf")
NETFILTER = TESTDATA / "modules" / "kernel" / "net" / "netfilter"


class Built:
    """One build: what :func:`build_index` returned, the file, and every progress call."""

    def __init__(self, result: BuildResult, calls: list[tuple[int, int]]) -> None:
        self.result = result
        self.path = result.path
        self.calls = calls


def _require_inputs() -> None:
    if not IMAGE.is_file():
        missing(f"{IMAGE} missing: run fixtures/build.sh")
    for name in INDEX_FILE_MODULES:
        if not (NETFILTER / name).is_file():
            missing(f"{NETFILTER / name} not found: run tools/fetch-testdata.sh")


def _modules_dir(tmp: Path) -> Path:
    d = tmp / "modules"
    d.mkdir()
    for name in INDEX_FILE_MODULES:
        (d / name).symlink_to(NETFILTER / name)
    return d


def _build(out: Path, modules: Path, processes: int) -> Built:
    calls: list[tuple[int, int]] = []
    got = build_index(IMAGE, out, processes=processes, modules=modules, progress=lambda d, t: calls.append((d, t)))
    return Built(got, calls)


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Built]:
    """The file built with one worker (in this process) and with two."""
    _require_inputs()
    tmp = tmp_path_factory.mktemp("index-build-modules")
    modules = _modules_dir(tmp)
    return {n: _build(tmp / f"j{n}.ksymidx", modules, n) for n in (1, 2)}


def test_any_number_of_workers_gives_the_same_file(builds: dict[int, Built]) -> None:
    one, two = builds[1], builds[2]
    assert one.path.read_bytes() == two.path.read_bytes()
    assert one.result.modules == two.result.modules == len(INDEX_FILE_MODULES)
    with PortableFile(two.path) as pf:
        assert pf.module_names() == sorted(n.removesuffix(".ko") for n in INDEX_FILE_MODULES)
    # the progress counts every piece, the modules too, one at a time up to the whole
    total = two.result.units + two.result.code_chunks + len(INDEX_FILE_MODULES)
    for b in (one, two):
        assert b.calls == [(i, total) for i in range(1, total + 1)]


def test_the_pieces_are_built_by_the_worker_processes(builds: dict[int, Built]) -> None:
    total = builds[2].result.units + builds[2].result.code_chunks + len(INDEX_FILE_MODULES)
    # one worker: this process built every piece
    assert builds[1].result.processes == 1
    assert builds[1].result.workers == (WorkerShare(os.getpid(), total, len(INDEX_FILE_MODULES)),)
    # two: two other processes (forked, now reaped) built them between them, the modules included
    two = builds[2].result
    assert two.processes == 2
    pids = [w.pid for w in two.workers]
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert all(w.pieces > 0 for w in two.workers)
    assert sum(w.pieces for w in two.workers) == total
    assert sum(w.modules for w in two.workers) == len(INDEX_FILE_MODULES)


@pytest.mark.parametrize("name", INDEX_FILE_MODULES)
def test_module_frames_from_the_workers_answer_as_the_module_debug_file(builds: dict[int, Built], name: str) -> None:
    """Every function of the module at a random offset, and raw offsets, as ModuleSymbolizer on the .ko
    answers them; section offsets as ``addr2line -fi -j`` on the .ko prints them."""
    ko = NETFILTER / name
    module = name.removesuffix(".ko")
    rng = random.Random(f"modpar {name}")
    with ModuleSymbolizer(ko) as by_ko, PortableFile(builds[2].path) as pf:
        assert pf.module_build_ids(module) == [by_ko.build_id]
        with ModuleSymbolizer(module, image=pf.module(module, by_ko.build_id)) as by_index:
            frames, text = _module_frames(by_ko, rng, 30)
            assert _module_answers(by_index, frames) == _module_answers(by_ko, frames)
            offsets = sorted(rng.sample(range(text.size), 40))
            got = [
                [(c.function, c.file, c.line, c.discriminator) for c in by_index.section_chain(".text", o)]
                or [("??", "??", 0, 0)]
                for o in offsets
            ]
            assert got == _addr2line_j(ko, ".text", offsets)


def _damaged(tmp: Path, how: str) -> Path:
    """A module directory: nf_conntrack, and nf_tables damaged (cut short, or its .debug_abbrev overwritten)."""
    d = tmp / how
    d.mkdir()
    (d / "nf_conntrack.ko").symlink_to(NETFILTER / "nf_conntrack.ko")
    data = bytearray((NETFILTER / "nf_tables.ko").read_bytes())
    if how == "cut":
        del data[len(data) // 4 :]
    else:
        abbrev = next(s for s in ModuleImage(NETFILTER / "nf_tables.ko").sections if s.name == ".debug_abbrev")
        data[abbrev.offset : abbrev.offset + abbrev.size] = b"\xff" * abbrev.size
    (d / "nf_tables.ko").write_bytes(data)
    return d


@pytest.mark.parametrize("how", ["cut", "abbrev"])
def test_a_damaged_module_ends_the_build_with_one_line(tmp_path: Path, how: str) -> None:
    """In a worker or not: one line naming the module debug file, exit 4, no file, no temporary."""
    _require_inputs()
    bad = _damaged(tmp_path, how)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    lines = []
    for jobs in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-m", "ksym", "index", "build", str(IMAGE), "--modules", str(bad), "-o",
             str(out_dir / "x.ksymidx"), "-j", jobs],
            capture_output=True, text=True, timeout=300, check=False,
        )
        assert done.returncode == EXIT_BAD_FILE, done.stderr
        assert done.stdout == "" and len(done.stderr.splitlines()) == 1
        assert done.stderr.startswith(f"ksym: error: {bad / 'nf_tables.ko'}: ")
        assert list(out_dir.iterdir()) == []
        lines.append(done.stderr)
    assert lines[0] == lines[1]


def _limit_file_size() -> None:
    import resource

    # writing past 256 KiB fails with EFBIG (Python ignores SIGXFSZ), as a full disk fails with ENOSPC
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_output_that_cannot_be_written_is_one_line_and_exit_3(tmp_path: Path, jobs: str) -> None:
    """The file, or the temporary the pieces wait in, cannot grow: one line, exit 3, nothing left."""
    _require_inputs()
    modules = _modules_dir(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "ksym", "index", "build", str(IMAGE), "--modules", str(modules), "-o",
         str(out_dir / "x.ksymidx"), "-j", jobs],
        capture_output=True, text=True, timeout=300, check=False, preexec_fn=_limit_file_size,
    )
    assert done.returncode == EXIT_NO_FILE, done.stderr
    assert done.stdout == "" and len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith(f"ksym: error: {out_dir}") and "cannot write" in done.stderr
    assert list(out_dir.iterdir()) == []
