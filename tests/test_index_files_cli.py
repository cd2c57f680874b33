"""Index files found by build id where they are used: ``ksym resolve --build-id``, ``ksym annotate`` on a dump
naming its build id, and dropcapture's glue for the running kernel (docs/index-files.md).

The index file is a real one, built by ``ksym.portable_build`` from the fixture ELF given a fresh build id;
every answer from it is compared with the same command run on that ELF itself. Servers are the static
server of test_index_files on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_index_files import FIXTURE, Static, publish, start_server, stop_server, tree, with_build_id

import ksym as ksym_package
from ksym.errors import EXIT_BAD_FILE, EXIT_NETWORK, EXIT_NO_FILE, EXIT_OK
from ksym.index_files import CACHE_SUBDIR, INDEX_FILE_NAME

FRAMES = ("__ip_local_out+0x4/0x90", "ip_local_out_like+0x20", "dev_pick_tx+0x8/0x30")


class Built:
    """The fixture ELF with a fresh build id (``elf``), its portable index file (``index``) and a directory
    serving that file in the URL layout (``root``)."""

    def __init__(self, tmp: Path, source: Path = FIXTURE, build_id: bytes | None = None) -> None:
        from ksym.portable_build import build_index

        self.elf = tmp / "kshapes.elf"
        self.build_id = with_build_id(source, self.elf, build_id)
        self.index = tmp / "kshapes.ksym-index"
        build_index(self.elf, self.index, processes=1)
        self.root = tmp / "published"
        (self.root / "buildid" / self.build_id).mkdir(parents=True)
        (self.root / "buildid" / self.build_id / INDEX_FILE_NAME).write_bytes(self.index.read_bytes())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return Built(tmp_path_factory.mktemp("index-files"))


@pytest.fixture
def server() -> Iterator[Static]:
    state = start_server()
    yield state
    stop_server(state)


def run(
    tmp_path: Path, *args: str, stdin: str | None = None, module: str = "ksym", **env: str
) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "KSYM_CACHE_DIR": str(tmp_path / "cache"),
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": str(Path(ksym_package.__file__).resolve().parents[1]),
    }
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        check=False,
        env={**base, **env},
        input=stdin,
        timeout=120,
    )


def test_resolve_by_build_id_from_a_search_path_directory(tmp_path: Path, built: Built) -> None:
    want = run(tmp_path, "resolve", "--vmlinux", str(built.elf), *FRAMES)
    assert want.returncode == EXIT_OK and want.stdout.count(" at ") >= 3, want.stderr
    got = run(tmp_path, "resolve", "--build-id", built.build_id, *FRAMES, KSYM_INDEX_PATH=str(built.root))
    assert (got.returncode, got.stdout, got.stderr) == (EXIT_OK, want.stdout, "")
    assert not (tmp_path / "cache" / CACHE_SUBDIR).exists()  # read where it is
    by_option = run(
        tmp_path, "resolve", "--build-id", built.build_id, "--index-dir", str(built.root), "--json", *FRAMES
    )
    assert by_option.stdout == run(tmp_path, "resolve", "--vmlinux", str(built.elf), "--json", *FRAMES).stdout


def test_resolve_fetches_then_reads_the_cache_offline(tmp_path: Path, built: Built, server: Static) -> None:
    publish(server, built.index, built.build_id)
    want = run(tmp_path, "resolve", "--vmlinux", str(built.elf), *FRAMES).stdout
    got = run(
        tmp_path,
        "resolve",
        "--build-id",
        built.build_id,
        *FRAMES,
        KSYM_INDEX_URLS=f"http://127.0.0.1:9 {server.url}",
    )
    assert (got.returncode, got.stdout) == (EXIT_OK, want), got.stderr
    cached = tmp_path / "cache" / CACHE_SUBDIR / built.build_id / INDEX_FILE_NAME
    assert cached.read_bytes() == built.index.read_bytes() and len(server.log) == 1
    stop_server(server)
    again = run(
        tmp_path, "resolve", "--offline", "--build-id", built.build_id, *FRAMES, KSYM_INDEX_URLS=server.url
    )
    assert (again.returncode, again.stdout) == (EXIT_OK, want) and len(server.log) == 1


def test_annotate_a_dump_naming_its_build_id(tmp_path: Path, built: Built, server: Static) -> None:
    publish(server, built.index, built.build_id)
    dump = f"Build ID: {built.build_id}\nCall Trace:\n" + "".join(f" {f}\n" for f in FRAMES)
    want = run(tmp_path, "annotate", "--vmlinux", str(built.elf), stdin=dump)
    assert want.returncode == EXIT_OK and want.stdout.count(" at ") >= 3, want.stderr
    got = run(tmp_path, "annotate", "--index-url", server.url, stdin=dump)
    assert (got.returncode, got.stdout) == (EXIT_OK, want.stdout), got.stderr


def test_offline_and_misses_are_one_line(tmp_path: Path, built: Built, server: Static) -> None:
    publish(server, built.index, built.build_id)
    off = run(
        tmp_path, "resolve", "--offline", "--build-id", built.build_id, FRAMES[0], KSYM_INDEX_URLS=server.url
    )
    assert off.returncode == EXIT_NO_FILE and off.stderr.count("\n") == 1 and server.log == []
    assert "no ksym index file with build id" in off.stderr and "offline" in off.stderr
    other = tmp_path / "other.elf"
    other_bid = with_build_id(FIXTURE, other)
    server.files[f"/buildid/{other_bid}/{INDEX_FILE_NAME}"] = built.index.read_bytes()  # another build's file
    wrong = run(tmp_path, "resolve", "--build-id", other_bid, FRAMES[0], KSYM_INDEX_URLS=server.url)
    assert wrong.returncode == EXIT_NETWORK and wrong.stderr.count("\n") == 1, wrong.stderr
    assert f"the index file of build id {built.build_id}, not {other_bid}: discarded" in wrong.stderr
    assert tree(tmp_path / "cache" / CACHE_SUBDIR) == []


def test_the_command_holds_the_deadline_and_a_signal_leaves_nothing(
    tmp_path: Path, built: Built, server: Static
) -> None:
    """A server trickling the file: ``$KSYM_INDEX_MAXTIME`` ends the command (exit 5, one line); SIGTERM
    in the middle of the download ends it too, with its temporary removed."""
    import signal
    import time

    publish(server, built.index, built.build_id)
    server.trickle = 0.05
    t0 = time.monotonic()
    late = run(
        tmp_path,
        "resolve",
        "--build-id",
        built.build_id,
        FRAMES[0],
        KSYM_INDEX_URLS=server.url,
        KSYM_INDEX_MAXTIME="1.5",
    )
    assert late.returncode == EXIT_NETWORK and late.stderr.count("\n") == 1, late.stderr
    assert "no complete file within 1.5 s ($KSYM_INDEX_MAXTIME" in late.stderr and time.monotonic() - t0 < 30
    assert tree(tmp_path / "cache" / CACHE_SUBDIR) == []
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "KSYM_CACHE_DIR": str(tmp_path / "cache"),
        "KSYM_INDEX_URLS": server.url,
        "PYTHONPATH": str(Path(ksym_package.__file__).resolve().parents[1]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "ksym", "resolve", "--build-id", built.build_id, FRAMES[0]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        cache = tmp_path / "cache" / CACHE_SUBDIR
        parts: list[Path] = []
        for _ in range(600):  # the temporary exists and the server is trickling the body into it
            parts = list(cache.glob(".tmp-ksym-index-*")) if cache.is_dir() else []
            if parts and len(server.log) == 2:
                break
            time.sleep(0.05)
        assert parts and len(server.log) == 2, "the download did not start"
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGTERM
    assert tree(tmp_path / "cache" / CACHE_SUBDIR) == []


def test_the_running_kernels_index_file_without_any_build_id_given(tmp_path: Path) -> None:
    """``ksym resolve FRAME`` and ``dmesg | ksym annotate`` (no build id anywhere) look for the running
    kernel's debug vmlinux; none found, its index file: here the fixture's, made with the running kernel's
    build id (read from /sys/kernel/notes) and put on the search path."""
    from ksym.buildid import running_build_id
    from ksym.errors import FileNotFoundKsymError, MissingDebugInfoError
    from ksym.locate import find_vmlinux

    running = running_build_id()
    if running is None:
        pytest.skip("/sys/kernel/notes gives no build id here")
    try:
        found = find_vmlinux()
        pytest.skip(f"a debug vmlinux of the running kernel is installed ({found.path}): it is found first")
    except (FileNotFoundKsymError, MissingDebugInfoError):
        pass  # none, or only stripped ones (as linux-headers ships for BTF)
    (tmp_path / "b").mkdir()
    mine = Built(tmp_path / "b", build_id=bytes.fromhex(running))
    want = run(tmp_path, "resolve", "--vmlinux", str(mine.elf), *FRAMES)
    assert want.returncode == EXIT_OK, want.stderr
    got = run(tmp_path, "resolve", *FRAMES, KSYM_INDEX_PATH=str(mine.root))
    assert (got.returncode, got.stdout, got.stderr) == (EXIT_OK, want.stdout, "")
    dump = "Call Trace:\n" + "".join(f" {f}\n" for f in FRAMES)
    annotated = run(tmp_path, "annotate", "--index-dir", str(mine.root), stdin=dump)
    assert (annotated.returncode, annotated.stdout) == (
        EXIT_OK,
        run(tmp_path, "annotate", "--vmlinux", str(mine.elf), stdin=dump).stdout,
    ), annotated.stderr
    missing = run(tmp_path, "resolve", *FRAMES)
    # 3: no vmlinux; 4: only stripped ones (the message names the package to install, as before)
    assert missing.returncode in (EXIT_NO_FILE, EXIT_BAD_FILE) and missing.stderr.count("\n") == 1
    assert (
        "debug vmlinux" in missing.stderr and f"no ksym index file with build id {running}" in missing.stderr
    )


# --------------------------------------------------------------------------------------------------
# dropcapture


def _kallsyms_frames() -> list[object]:
    from ksym.kallsyms import KallsymsSymbol

    return [KallsymsSymbol("__ip_local_out", 4, 0x90), KallsymsSymbol("dev_pick_tx", 8, 0x30)]


def test_dropcapture_glue_answers_from_the_index_file(
    tmp_path: Path, built: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dropcapture.symbolize import ksym_annotator
    from ksym.searchopts import IndexFileOptions

    monkeypatch.setenv("KSYM_CACHE_DIR", str(tmp_path / "cache"))
    with contextlib.ExitStack() as closing:
        by_elf, status = ksym_annotator(str(built.elf), built.build_id, closing=closing)
        assert by_elf is not None, status
        want = [by_elf(s) for s in _kallsyms_frames()]  # type: ignore[arg-type]
        assert all(want)
        given, status = ksym_annotator(None, built.build_id, closing=closing, index_file=str(built.index))
        assert given is not None and str(built.index) in status
        assert [given(s) for s in _kallsyms_frames()] == want  # type: ignore[arg-type]
        # no debug vmlinux of that build id anywhere: its index file, found by build id
        found, status = ksym_annotator(
            None,
            built.build_id,
            closing=closing,
            build_id=built.build_id,
            index_search=IndexFileOptions(dirs=(str(built.root),), offline=True),
        )
        assert found is not None and str(built.root) in status, status
        assert [found(s) for s in _kallsyms_frames()] == want  # type: ignore[arg-type]
        # the file of another build than the running kernel's is refused
        refused, status = ksym_annotator(None, "00" * 20, closing=closing, index_file=str(built.index))
        assert refused is None and built.build_id in status and "00" * 20 in status


@pytest.mark.parametrize(
    "args",
    [
        ["--index", "/nonexistent/f"],
        ["--index", "/proc/self/exe", "--no-stack"],
        ["--index", "/proc/self/exe", "--vmlinux", "/proc/self/exe"],
        ["--build-id", "not-hex"],
    ],
)
def test_dropcapture_usage(tmp_path: Path, args: list[str]) -> None:
    got = run(tmp_path, *args, "--count", "1", module="dropcapture")
    assert got.returncode == 2 and got.stderr.count("\n") >= 1 and "Traceback" not in got.stderr


# --------------------------------------------------------------------------------------------------
# the fleet example (tools/fleet_annotate.py)


def test_fleet_example_annotates_dumps_of_many_builds(tmp_path: Path, built: Built, server: Static) -> None:
    """Dumps of two builds (one build's file on a server, the other's in a directory) and one naming no
    build: each annotated dump is what ``ksym annotate`` prints with that build's own ELF file, and each
    build's file is fetched once."""
    (tmp_path / "b").mkdir()
    other = Built(tmp_path / "b", FIXTURE.with_name("kshapes-dwarf4.elf"))
    assert other.build_id != built.build_id
    publish(server, built.index, built.build_id)
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    frames = [f" {f}\n" for f in FRAMES]
    texts = {
        "a1.txt": f"Build ID: {built.build_id}\nCall Trace:\n" + "".join(frames[:2]),
        "a2.txt": f"# build-id: {built.build_id}\n" + "".join(frames[1:]),
        "b1.txt": f"Build ID: {other.build_id}\nCall Trace:\n" + "".join(frames),
        "none.txt": "Call Trace:\n" + frames[0],
    }
    for name, text in texts.items():
        (dumps / name).write_text(text)
    out = tmp_path / "out"
    script = Path(__file__).resolve().parent.parent / "tools" / "fleet_annotate.py"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "KSYM_CACHE_DIR": str(tmp_path / "cache"),
        "PYTHONPATH": str(Path(ksym_package.__file__).resolve().parents[1]),
        "KSYM_INDEX_URLS": server.url,
    }
    got = subprocess.run(
        [sys.executable, str(script), str(dumps), "-o", str(out), "-j", "2", "--index-dir", str(other.root)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=300,
    )
    assert got.returncode == EXIT_NO_FILE, got.stderr  # none.txt names no build
    lines = got.stdout.splitlines()
    assert lines == [
        f"a1.txt: build {built.build_id}: 2 frames, 0 unresolved",
        f"a2.txt: build {built.build_id}: 2 frames, 0 unresolved",
        f"b1.txt: build {other.build_id}: 3 frames, 0 unresolved",
        "none.txt: skipped: it names no kernel build id",
    ], got.stdout
    for name, elf in (("a1.txt", built.elf), ("a2.txt", built.elf), ("b1.txt", other.elf)):
        want = run(tmp_path, "annotate", "--vmlinux", str(elf), str(dumps / name))
        assert want.returncode == EXIT_OK and (out / name).read_text() == want.stdout
    assert sorted(p.name for p in out.iterdir()) == ["a1.txt", "a2.txt", "b1.txt"]
    assert [p for p, _, _ in server.log] == [f"/buildid/{built.build_id}/{INDEX_FILE_NAME}"]


@pytest.mark.vmlinux
def test_dropcapture_glue_with_the_debian_61_file(
    portable_index: Path, vmlinux: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 6.1 index file, found by build id (the build id given as dropcapture's --build-id would give
    it: this machine's kernel is another build), answers every frame as the 6.1 debug vmlinux does
    (``portable_index``: the file ``ksym index build`` makes of it, tests/conftest.py)."""
    from dropcapture.symbolize import ksym_annotator
    from ksym.errors import FileNotFoundKsymError
    from ksym.index_files import portable_check
    from ksym.kallsyms import KallsymsSymbol
    from ksym.locate import find_vmlinux
    from ksym.searchopts import IndexFileOptions

    index = portable_index
    bid = portable_check().verify(index)
    assert bid is not None
    with contextlib.suppress(FileNotFoundKsymError):
        pytest.skip(
            f"the 6.1 debug vmlinux is installed where ksym looks ({find_vmlinux(build_id=bid).path})"
        )
    published = tmp_path / "published" / "buildid" / bid / INDEX_FILE_NAME
    published.parent.mkdir(parents=True)
    published.symlink_to(index)
    monkeypatch.setenv("KSYM_CACHE_DIR", str(tmp_path / "cache"))
    frames = [
        KallsymsSymbol("__ip_local_out", 222, 0x160),
        KallsymsSymbol("ip_local_out", 29, 0x70),
        KallsymsSymbol("__ip_local_out", 222, 0x1D0),
        KallsymsSymbol("entry_SYSCALL_64_after_hwframe", 0x63, 0xD8),
    ]
    with contextlib.ExitStack() as closing:
        by_vmlinux, status = ksym_annotator(str(vmlinux), bid, closing=closing)
        assert by_vmlinux is not None, status
        want = [by_vmlinux(s) for s in frames]
        assert want[0] and want[1] and not want[2]  # a size of another build: skipped, as faddr2line does
        found, status = ksym_annotator(
            None,
            bid,
            closing=closing,
            build_id=bid,
            index_search=IndexFileOptions(dirs=(str(tmp_path / "published"),), offline=True),
        )
        assert found is not None and str(published) in status, status
        assert [found(s) for s in frames] == want
