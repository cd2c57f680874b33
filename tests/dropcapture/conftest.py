"""Fixtures for the dropcapture tests.

Unit tests read this machine's real tracefs format file and BTF (skipped, with the reason printed,
where they are missing). Tests marked ``kernel`` load real BPF programs: they need root, bcc, tracefs,
BTF and kernel headers (tools/dropcapture-setup.sh prepares all of it) and skip otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# the helpers module sits next to this file; make it importable under any pytest import mode
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from dc_helpers import btf_missing, kernel_missing, tracefs_missing


def pytest_report_header(config: pytest.Config) -> str:
    why = kernel_missing()
    return "dropcapture kernel tests: " + ("run" if why is None else f"SKIPPED - {why}")


@pytest.fixture
def need_kernel() -> None:
    why = kernel_missing()
    if why is not None:
        print(f"skipping: {why}")
        pytest.skip(why)


@pytest.fixture
def need_tracefs() -> None:
    why = tracefs_missing()
    if why is not None:
        print(f"skipping: {why}")
        pytest.skip(why)


@pytest.fixture
def need_btf() -> None:
    why = btf_missing()
    if why is not None:
        print(f"skipping: {why}")
        pytest.skip(why)


@pytest.fixture
def need_tools() -> None:
    missing = [t for t in ("ip", "nft", "curl") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)} (apt-get install iproute2 nftables curl)")


@pytest.fixture
def netns(need_kernel: None, need_tools: None):  # type: ignore[no-untyped-def]
    """A fresh network namespace with only its own loopback up; removed afterwards."""
    name = f"dctest{os.getpid()}"
    subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
