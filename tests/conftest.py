"""Fixtures shared by the test modules (pytest finds them here)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from anchors import INDEX_FILE_MODULES, missing, require_test_vmlinux

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ksym import Symbolizer


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A module's own ksym index, out of $HOME, for the API and the CLI subprocesses alike (a module
    takes it with ``pytestmark = pytest.mark.usefixtures("private_cache")``)."""
    with pytest.MonkeyPatch.context() as mp:
        cache = tmp_path_factory.mktemp("ksym-cache")
        mp.setenv("KSYM_CACHE_DIR", str(cache))
        mp.delenv("KSYM_DEBUG", raising=False)
        yield cache


@pytest.fixture(scope="session")
def vmlinux() -> Path:
    """The Debian 6.1 x86-64 debug vmlinux (a module that needs another one, such as test_arm64, defines its
    own ``vmlinux``)."""
    return require_test_vmlinux()




@pytest.fixture(scope="module")
def plain_sym() -> Iterator[Symbolizer]:
    """A Symbolizer of the Debian 6.1 x86-64 debug vmlinux without the on-disk index (everything read
    from the DWARF), for one test module."""
    from ksym import Symbolizer  # not at import: some tests check what a fresh import of ksym loads

    with Symbolizer(require_test_vmlinux(), use_index=False) as s:
        yield s


@pytest.fixture(scope="session")
def portable_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The portable index file of the Debian 6.1 vmlinux, built once per test session by ``ksym index
    build`` (two worker processes) into a temporary directory (tests/test_index_file.py)."""
    import subprocess
    import sys

    vmlinux = require_test_vmlinux()
    out = tmp_path_factory.mktemp("ksym-index-file") / "vmlinux-6.1.0-53-cloud-amd64.ksymidx"
    # with three modules of the same build (--modules): links to their debug files beside the file
    modules = out.parent / "modules"
    modules.mkdir()
    netfilter = Path(os.environ.get("KSYM_TESTDATA", "/var/tmp/ksym-testdata")) / "modules/kernel/net/netfilter"
    for name in INDEX_FILE_MODULES:
        if not (netfilter / name).is_file():
            missing(f"{netfilter / name} not found: run tools/fetch-testdata.sh")
        (modules / name).symlink_to(netfilter / name)
    done = subprocess.run([sys.executable, "-m", "ksym", "index", "build", str(vmlinux), "-o", str(out), "-j", "2",
                           "--modules", str(modules)], check=False, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{out}: ") and done.stderr == ""
    return out
