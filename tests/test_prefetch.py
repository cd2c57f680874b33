"""Symbolizer.prefetch and the stored answers on the real Debian 6.1 vmlinux: answers read by forked
workers equal the ones read in one process, the workers store the units they read, and a later
Symbolizer answers the same addresses from the index without opening the DWARF.

Needs tools/fetch-testdata.sh; skipped with a printed reason elsewhere, a failure under CI=true."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from ksym import Symbolizer
from ksym.index import IndexStore

pytestmark = pytest.mark.vmlinux



def _addresses(sym: Symbolizer, n: int) -> list[int]:
    """A few addresses inside ``n`` FUNC symbols spread over .text (so over many units)."""
    st = sym.symbols
    funcs = [i for i in range(len(st.values)) if st.infos[i] & 0xF == 2 and st.sizes[i] >= 16]
    rng = random.Random(1125)
    out: list[int] = []
    for i in rng.sample(funcs, n):
        start, size = int(st.values[i]), int(st.sizes[i])
        out += [start, start + size // 2, start + size - 1]
    return out


def test_parallel_prefetch_equals_one_process(vmlinux: Path, tmp_path: Path) -> None:
    # prefetch forks its workers only from a single-threaded process: a thread an earlier test left
    # running would make the parent read the DWARF itself
    assert threading.active_count() == 1, f"threads left running: {[t.name for t in threading.enumerate()]}"
    base = Symbolizer(vmlinux, cache_dir=tmp_path / "base")
    addrs = _addresses(base, 160)
    assert base.dwarf_image is not None
    units = {base.dwarf_image.unit_offset(a) for a in addrs} - {None}
    assert len(units) >= 100, "the sample spans many units"
    want = {a: base.chain(a) for a in addrs}

    Symbolizer(vmlinux, cache_dir=tmp_path / "par").close()  # the image record only
    par = Symbolizer(vmlinux, cache_dir=tmp_path / "par")
    assert par.prefetch(addrs, processes=2) == len(set(addrs))
    assert par.dwarf_image is not None and not par.dwarf_image.opened, "the parent read no DWARF: the workers did"
    packs = list((tmp_path / "par").glob("index/*/units-*"))
    assert 2 <= len(packs) < len(units) / 4, "the workers stored the units they read, in packs"
    assert {a: par.chain(a) for a in addrs} == want
    assert {a: par.line_row_start(a) for a in addrs} == {a: base.line_row_start(a) for a in addrs}
    par.close()
    assert list((tmp_path / "par").glob("index/*/answers.v*"))
    stored = IndexStore(tmp_path / "par").load_unit_map(par.key)
    assert len(units & set(stored)) >= len(units) * 0.9, "the map names the pack of each unit read"
    assert {p.name for p in packs} >= set(stored.values())

    # a new process-like start answers from the stored answers alone
    again = Symbolizer(vmlinux, cache_dir=tmp_path / "par")
    assert {a: again.chain(a) for a in addrs} == want
    assert again.dwarf_image is not None and not again.dwarf_image.opened
    assert again.prefetch(addrs, processes=2) == 0
    # a unit of the index answers an address nobody asked before, identically
    fresh = addrs[0] + 1
    assert again.chain(fresh) == base.chain(fresh)
    for s in (again, base):
        s.close()


def test_prefetch_in_one_process_and_without_index(vmlinux: Path, tmp_path: Path) -> None:
    ref = Symbolizer(vmlinux, use_index=False)
    addrs = _addresses(ref, 12)
    one = Symbolizer(vmlinux, cache_dir=tmp_path)
    assert one.prefetch(addrs) == len(set(addrs))  # few units: no worker processes
    assert [one.chain(a) for a in addrs] == [ref.chain(a) for a in addrs]
    again = Symbolizer(vmlinux, use_index=False)
    assert again.prefetch(addrs, processes=2) == len(set(addrs))
    assert [again.chain(a) for a in addrs] == [ref.chain(a) for a in addrs]
    again.close()
    assert not list(tmp_path.glob("index/*/answers.v*")), "answers are written on flush only"
    one.flush()
    assert list(tmp_path.glob("index/*/answers.v*"))
    for s in (one, ref):
        s.close()
