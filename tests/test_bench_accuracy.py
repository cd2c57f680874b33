"""Reduced run of the accuracy benchmark (bench/accuracy.py): a few hundred kernel-text addresses
against one ``addr2line -a -f -i`` batch, and ~30 ``sym+off`` specs of every shape against the kernel's
scripts/faddr2line, as text. Agreement must be 100%.

Needs the Debian 6.1 debug vmlinux and linux-source (tools/fetch-testdata.sh); without them the test
skips with the reason printed, except under CI=true where missing data is a failure.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from anchors import addr2line_batch, find_faddr2line, find_test_vmlinux

from ksym import Symbolizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.accuracy import compare_addresses, compare_specs, sample_addresses, sample_specs

pytestmark = pytest.mark.vmlinux


def _need(what: Path | None, name: str) -> Path:
    if what is None:
        msg = f"{name} not found: run tools/fetch-testdata.sh (Debian 6.1 debug vmlinux + linux-source)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        print(msg)
        pytest.skip(msg)
    return what


@pytest.fixture(scope="module")
def vmlinux() -> Path:
    return _need(find_test_vmlinux(), "the Debian 6.1 debug vmlinux")


@pytest.fixture(scope="module")
def script() -> Path:
    return _need(find_faddr2line(), "scripts/faddr2line of linux-source-6.1")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ksym-bench-index")


@pytest.fixture(scope="module")
def sym(vmlinux: Path, cache_dir: Path) -> Iterator[Symbolizer]:
    with Symbolizer(vmlinux, cache_dir=cache_dir) as s:
        yield s


def test_sampled_addresses_agree_with_addr2line(vmlinux: Path, sym: Symbolizer) -> None:
    samples = sample_addresses(sym, vmlinux, 100, 100, 100, seed=4242)
    assert {s.kind for s in samples} == {"entry", "insn", "return"} and len(samples) == 300
    rep = compare_addresses(sym, vmlinux, samples)
    # binutils answers a few addresses (e.g. a return address right at a function's end) differently
    # depending on which CUs earlier lookups of the same process loaded; a difference counts only if a
    # fresh one-address addr2line (how scripts/faddr2line runs it) disagrees with ksym too
    real = [(s, got, want) for s, got, want in rep.mismatches if addr2line_batch(vmlinux, [s.address])[0] != got]
    print(f"addresses: {rep.agree}/{rep.total} agree with the addr2line batch; "
          f"{rep.total - len(real)}/{rep.total} with one-address runs")
    assert not real, "\n".join(f"{s.address:#x} ({s.kind}): ksym {got} addr2line {want}" for s, got, want in real)


def test_sampled_specs_agree_with_faddr2line(vmlinux: Path, script: Path, sym: Symbolizer,
                                             cache_dir: Path) -> None:
    samples = sample_specs(sym, 30, seed=9)
    assert len({s.shape for s in samples}) == 11
    rep = compare_specs(vmlinux, script, cache_dir, samples)
    print(f"specs: {rep.agree}/{rep.total} agree with scripts/faddr2line ({rep.faddr2line_seconds:.0f} s)")
    assert not rep.mismatches, "\n\n".join(f"{s.spec} ({s.shape})\n--- ksym:\n{a}\n--- faddr2line:\n{b}"
                                           for s, a, b in rep.mismatches)
    assert rep.text_identical
    assert rep.no_match_identical, rep.no_match_diff
    assert rep.percent == 100.0
