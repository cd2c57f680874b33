"""dropcapture with a portable index file (ksym's docs/index-files.md): real BPF on the running kernel.

This machine's kernel has no debug package, so the index files are made from ksym's fixture ELF: one given
the running kernel's build id (read from /sys/kernel/notes) and put on ``$KSYM_INDEX_PATH``, where dropcapture
finds it by that build id, and one of another build, which ``--index`` names and dropcapture refuses. The
fixture's functions are not the kernel's, so the frames stay ``func+0xoff``: what these tests show is which
file dropcapture takes, and that it checks its build id, in a real capture.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dc_helpers import ROOT
from test_dropcapture_capture import Cli, free_port

from ksym.portable_build import build_index

sys.path.insert(0, str(ROOT / "tests"))
from test_index_files import FIXTURE, with_build_id

pytestmark = pytest.mark.kernel


@pytest.fixture
def start_cli() -> Iterator[Callable[..., Cli]]:
    """``start_cli(*args)`` starts dropcapture --json; every one started is reaped at teardown."""
    started: list[Cli] = []

    def _start(*args: str) -> Cli:
        started.append(Cli(*args))
        return started[-1]

    yield _start
    for cli in started:
        cli.reap()


def _index_file(tmp: Path, build_id: bytes | None) -> tuple[Path, str]:
    tmp.mkdir()
    elf = tmp / "k.elf"
    bid = with_build_id(FIXTURE, elf, build_id)
    out = tmp / "k.ksym-index"
    build_index(elf, out, processes=1)
    return out, bid


def test_the_running_kernels_file_found_by_build_id(
    need_kernel: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_cli: Callable[..., Cli]
) -> None:
    from ksym.buildid import running_build_id
    from ksym.errors import FileNotFoundKsymError, MissingDebugInfoError
    from ksym.locate import find_vmlinux

    running = running_build_id()
    if running is None:
        pytest.skip("/sys/kernel/notes gives no build id here")
    try:
        found = find_vmlinux()
        pytest.skip(f"a debug vmlinux of the running kernel is installed ({found.path}): it is used first")
    except (FileNotFoundKsymError, MissingDebugInfoError):
        pass
    index, bid = _index_file(tmp_path / "mine", bytes.fromhex(running))
    published = tmp_path / "published" / "buildid" / bid / "ksym-index"
    published.parent.mkdir(parents=True)
    published.write_bytes(index.read_bytes())
    for name in ("KSYM_VMLINUX", "KSYM_INDEX_URLS", "KSYM_INDEX_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KSYM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("KSYM_INDEX_PATH", str(tmp_path / "published"))
    port = free_port()
    cli = start_cli("--port", str(port))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    events, _ = cli.stop()
    assert f"dropcapture: file:line from {published} through ksym" in cli.stderr
    assert events and events[0]["reason"] == "NO_SOCKET"


def test_a_file_of_another_build_is_refused(
    need_kernel: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_cli: Callable[..., Cli]
) -> None:
    from ksym.buildid import running_build_id

    running = running_build_id()
    if running is None:
        pytest.skip("/sys/kernel/notes gives no build id here")
    index, bid = _index_file(tmp_path / "other", None)
    monkeypatch.setenv("KSYM_CACHE_DIR", str(tmp_path / "cache"))
    port = free_port()
    cli = start_cli("--port", str(port), "--index", str(index))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    events, _ = cli.stop()
    assert f"{index} has build id {bid} but the running kernel's is {running}" in cli.stderr
    assert events  # the capture runs, its frames without file:line
    # the same file taken as the running kernel's with --build-id (how another build's file is tried)
    cli = start_cli("--port", str(port), "--index", str(index), "--build-id", bid)
    events, _ = cli.stop()
    assert f"dropcapture: file:line from {index} through ksym" in cli.stderr
