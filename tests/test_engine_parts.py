"""The engine's parts and their lifecycle, on real files (no mocks):

- ``ImageResolver`` (ksym.model) is what both the vmlinux Symbolizer and the ModuleSymbolizer are: each
  answers through it, and each has a DwarfImage (ksym.dwarf_image) doing its DWARF.
- A closed Symbolizer (``with`` or ``close()``) wrote its index session (units, answers, each kind of
  stored answer as its record) and released its file; the records read back as written.
- A parallel prefetch leaves no child process behind, and the parent ran no worker code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from anchors import fixture, require_test_vmlinux

from ksym import Symbolizer
from ksym.dwarf_image import ArangeTable, DwarfImage, UnitRange
from ksym.index import ImageIndex, IndexStore
from ksym.model import ImageResolver, SourceLocation
from ksym.modules import ModuleSymbolizer
from ksym.session import AnswerRecords, ImageRecord, StoredChain, StoredInstruction

_DATA = Path(os.environ.get("KSYM_TESTDATA", "/var/tmp/ksym-testdata"))
NFT_CT = _DATA / "modules" / "kernel" / "net" / "netfilter" / "nft_ct.ko"
KSHAPES = "kshapes-dwarf5.elf"


def _through_protocol(r: ImageResolver, frame: str) -> tuple[str, str, int]:
    """Use an image only through the Protocol: prefetch, resolve, chain and symbolize agree."""
    assert r.has_dwarf and r.path.is_file()
    # the frame's one address, read once ahead of resolve however often the frame is asked
    assert r.prefetch_frames([frame, frame, "not a frame"]) == 1
    dwarf = getattr(r, "dwarf_image", None)
    assert dwarf is not None
    read = set(dwarf.units_read)
    res = r.resolve(frame)[0]
    assert dwarf.units_read == read and len(read) == 1, "the prefetch read the unit the frame needs"
    assert res.chain, frame
    return str(res), str(r.symbolize(res.address)), len(res.chain)


def test_symbolizer_and_module_symbolizer_are_image_resolvers() -> None:
    with Symbolizer(fixture(KSHAPES), use_index=False) as sym:
        assert isinstance(sym, ImageResolver)
        assert isinstance(sym.dwarf_image, DwarfImage)
        text, _by_address, depth = _through_protocol(sym, "__ip_local_out+45")
        assert text.startswith("__ip_local_out+45/") and depth >= 1
    if not NFT_CT.is_file():
        pytest.skip(f"{NFT_CT} not found: run tools/fetch-testdata.sh")
    with ModuleSymbolizer(NFT_CT) as mod:
        assert isinstance(mod, ImageResolver)
        assert isinstance(mod.dwarf_image, DwarfImage)
        frame = next(f"{name}+0x10" for name in ("nft_ct_get_eval", "nft_ct_set_eval")
                     if mod.raw_symbols.address_of(name) is not None)
        text, _by_address, _depth = _through_protocol(mod, frame)
        assert text.startswith(frame + "/")
        assert mod.dwarf_image.units_in_memory >= 1
    assert mod.dwarf_image.units_in_memory == 0 and not mod.dwarf_image.opened, "close() released the DWARF"


def test_a_closed_symbolizer_wrote_its_index_and_released_its_file(tmp_path: Path) -> None:
    elf = fixture(KSHAPES)
    cache = tmp_path / "cache"
    sym = Symbolizer(elf, cache_dir=cache)
    want = [str(r) for r in sym.resolve("__ip_local_out+45")]
    sym.remember(("test", 1), ("kept", 2))
    assert sym.dwarf_image is not None and sym.dwarf_image.opened
    key, view = sym.key, sym._view()
    assert not list(cache.glob("index/*/answers.v*")), "nothing but the image record before close()"
    sym.close()
    assert not sym.dwarf_image.opened and sym.dwarf_image.units_in_memory == 0
    store = IndexStore(cache)
    answers = store.load_answers(key, view)
    # with the caller's record, the symbols the frame matched (the first frames of a run on a new file are
    # looked up without the whole symbol table, and found again without it)
    assert answers.callers.keys() == {("test", 1), ("faddr2line", "__ip_local_out")}
    assert answers.callers[("test", 1)] == ("kept", 2)
    chains = {a: StoredChain.from_record(r) for a, r in answers.chains.items()}
    assert chains and all(isinstance(loc, SourceLocation) for c in chains.values() for loc in c.chain)
    assert store.load_unit_map(key), "the units read were stored and mapped"
    rec = store.load_image(key)
    assert isinstance(rec, ImageRecord) and rec.has_dwarf and rec.path == str(elf)
    assert ImageRecord.from_record(rec.to_record()) == rec
    with Symbolizer(elf, cache_dir=cache) as again:
        assert [str(r) for r in again.resolve("__ip_local_out+45")] == want
        assert again.remembered(("test", 1)) == ("kept", 2)
        assert again.dwarf_image is not None and not again.dwarf_image.opened, "answered from the index alone"


def test_records_read_back_as_written(tmp_path: Path) -> None:
    chain = StoredChain((SourceLocation("f", "a.c", 3, 1, 0, "/b/a.c", True), SourceLocation("g", "b.c", 9)), 0x10)
    assert StoredChain.from_record(chain.to_record()) == chain
    insn = StoredInstruction(True, (0x10, 5, "call", "0x20", 0x20, "g", False, b"\xe8\0\0\0\0", True))
    assert StoredInstruction.from_record(insn.to_record()) == insn
    with pytest.raises(TypeError):
        StoredInstruction.from_record(("yes", None))
    table = ArangeTable.of([(0x30, 0x40, 7), (0x10, 0x20, 3)])
    assert (table.unit_of(0x15), table.unit_of(0x3F), table.unit_of(0x20)) == (3, 7, None)
    back = ArangeTable.from_record(table.to_record())
    assert back == table and list(back.starts) == [0x10, 0x30] and back.maxlen == table.maxlen == 0x10
    assert UnitRange.from_record(UnitRange(1, 2, 3).to_record()) == UnitRange(1, 2, 3)
    # a session writes what it was given at flush, and only then
    store = IndexStore(tmp_path)
    with ImageIndex(store, "k") as index:
        answers = index.answers_for("v")
        answers.add_chain(0x10, chain)
        answers.add_instruction(0x15, None, insn)
        answers.add_caller(("frame", "f"), (1, "x"))
        index.save_unit_ranges([UnitRange(1, 2, 3)])
        assert len(store.load_answers("k", "v")) == 0
    got = store.load_answers("k", "v")
    assert isinstance(got, AnswerRecords) and len(got) == 3
    assert StoredChain.from_record(got.chains[0x10]) == chain
    assert StoredInstruction.from_record(got.instructions[(0x15, None)]) == insn
    assert got.callers == {("frame", "f"): (1, "x")}
    assert store.load_unit_ranges("k") == [UnitRange(1, 2, 3)]
    assert len(store.load_answers("k", "another view")) == 0


#: Run in a fresh interpreter: a prefetch forks only a single-threaded process (a forked copy of a thread
#: holding a lock can hang), and earlier tests in this process may have left threads running (a download's
#: worker ends at its own timeout), which would make the prefetch read in-process instead.
_PREFETCH_CHILD = r"""
import json, multiprocessing, os, random, sys
from pathlib import Path
from ksym import Symbolizer
from ksym.prefetch import Prefetcher

vmlinux, cache = sys.argv[1], Path(sys.argv[2])
Symbolizer(vmlinux, cache_dir=cache).close()  # the image record only
with Symbolizer(vmlinux, cache_dir=cache) as sym:
    st = sym.symbols
    funcs = [i for i in range(len(st.values)) if st.infos[i] & 0xF == 2 and st.sizes[i] >= 16]
    addrs = [int(st.values[i]) + 4 for i in random.Random(14).sample(funcs, 200)]
    got = sym.prefetch(addrs, processes=2)
    try:
        os.waitpid(-1, os.WNOHANG)
        no_child = False
    except ChildProcessError:
        no_child = True  # no child at all, reaped or not
    # a Prefetcher closed with nothing run is a no-op, and nothing is left to answer
    with Prefetcher(sym.dwarf_image, sym._index, sym._answers, sym._answer, sym._answer_call) as again:
        again_ran = again.run(addrs)
    print(json.dumps({"asked": len(set(addrs)), "got": got, "opened": sym.dwarf_image.opened,
                      "children": len(multiprocessing.active_children()), "no_child": no_child,
                      "looked_up": sym.stats.answers_looked_up, "again": again_ran}))
"""


@pytest.mark.vmlinux
def test_a_parallel_prefetch_leaves_no_child_process(tmp_path: Path) -> None:
    vmlinux = require_test_vmlinux()
    run = subprocess.run([sys.executable, "-c", _PREFETCH_CHILD, str(vmlinux), str(tmp_path)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert got["got"] == got["asked"] == got["looked_up"]
    assert not got["opened"], "the workers read the DWARF, not the parent"
    assert got["children"] == 0 and got["no_child"]
    assert got["again"] == 0
