"""ksym against the real Debian 6.1 debug vmlinux, compared with the anchors run in the test itself:
the same kernel version's scripts/faddr2line (text, byte for byte) and binutils addr2line -fi.

The vmlinux and linux-source come from tools/fetch-testdata.sh (CI runs it). Elsewhere the tests skip
with the reason printed; under CI=true missing data is a failure, never a skip.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from anchors import (
    TUTORIAL_SPECS,
    addr2line_batch,
    assert_same_as_faddr2line,
    call_return_addresses,
    dir_prefix,
    faddr2line,
    faddr2line_parallel,
    find_faddr2line,
    find_test_vmlinux,
    missing,
    sample_specs,
    strip_prefix,
)

from ksym import Symbolizer

pytestmark = pytest.mark.vmlinux

VMLINUX = find_test_vmlinux()
FADDR2LINE = find_faddr2line()


def _need(what: object, name: str) -> None:
    if what is None:
        msg = f"{name} not found: run tools/fetch-testdata.sh (Debian 6.1 debug vmlinux + linux-source)"
        missing(msg)


@pytest.fixture(scope="module")
def vmlinux() -> Path:
    _need(VMLINUX, "the Debian 6.1 debug vmlinux")
    assert VMLINUX is not None
    return VMLINUX


@pytest.fixture(scope="module")
def script() -> Path:
    _need(FADDR2LINE, "scripts/faddr2line of linux-source-6.1")
    assert FADDR2LINE is not None
    return FADDR2LINE


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ksym-index")


@pytest.fixture(scope="module")
def sym(vmlinux: Path, cache_dir: Path) -> Iterator[Symbolizer]:
    with Symbolizer(vmlinux, cache_dir=cache_dir) as s:
        yield s


def _ksym_cli(vmlinux: Path, cache_dir: Path, specs: list[str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ksym", "resolve", "--vmlinux", str(vmlinux), "--cache-dir", str(cache_dir),
         *extra, *specs],
        check=False, capture_output=True, text=True, timeout=600,
    )


TUTORIAL = list(TUTORIAL_SPECS)


def test_tutorial_frames_match_faddr2line(vmlinux: Path, script: Path, cache_dir: Path) -> None:
    ref = faddr2line(vmlinux, TUTORIAL, script)
    got = _ksym_cli(vmlinux, cache_dir, TUTORIAL)
    assert got.stdout == ref.stdout
    # faddr2line's "no match for X" lines, in order
    assert [ln for ln in got.stderr.splitlines() if ln.startswith("no match")] == [
        ln for ln in ref.stderr.splitlines() if ln.startswith("no match")
    ]
    assert "Traceback" not in got.stderr
    assert got.returncode == 1  # kfree_skb+1 and the out-of-range frames do not resolve
    assert "nf_hook at include/linux/netfilter.h:257\n(inlined by) __ip_local_out at net/ipv4/ip_output.c:115" in got.stdout


def test_each_frame_first_on_a_new_index_matches_faddr2line(vmlinux: Path, script: Path, tmp_path: Path) -> None:
    """Each tutorial frame as the first-ever run of a new index (its symbols looked up by name, without the
    whole symbol table), then again warm (from the stored answers): the script's output, byte for byte."""
    ref = faddr2line(vmlinux, TUTORIAL, script)
    for run in ("first", "warm"):
        out, no_match = [], []
        for k, frame in enumerate(TUTORIAL):
            got = _ksym_cli(vmlinux, tmp_path / f"cache-{k}", [frame])
            assert "Traceback" not in got.stderr
            out.append(got.stdout)
            no_match += [ln for ln in got.stderr.splitlines() if ln.startswith("no match")]
        # each run prints its frame alone, without the blank line between frames
        assert [ln for ln in "".join(out).splitlines() if ln] == [ln for ln in ref.stdout.splitlines() if ln], run
        assert no_match == [ln for ln in ref.stderr.splitlines() if ln.startswith("no match")], run
    assert not list(tmp_path.glob("cache-*/index/*/symbols.v*")), "no whole symbol table was built"


def test_sampled_frames_match_faddr2line(vmlinux: Path, script: Path, sym: Symbolizer, cache_dir: Path) -> None:
    specs = sample_specs(sym, int(os.environ.get("KSYM_FADDR2LINE_SAMPLES", "200")), seed=61187)
    ref_out, ref_err = faddr2line_parallel(vmlinux, script, specs)
    got = _ksym_cli(vmlinux, cache_dir, specs)
    assert_same_as_faddr2line(ref_out, ref_err, got.stdout, got.stderr, len(specs), no_match_in_order=False)


def _return_addresses(sym: Symbolizer, vmlinux: Path, rng: random.Random, nfuncs: int) -> list[int]:
    """Addresses right after call instructions (what a stack holds), found with capstone."""
    import capstone

    return call_return_addresses(sym, vmlinux, rng, nfuncs, capstone.CS_ARCH_X86, capstone.CS_MODE_64, "call")


def test_addresses_match_addr2line(vmlinux: Path, sym: Symbolizer, cache_dir: Path) -> None:
    rng = random.Random(2026)
    st = sym.symbols
    funcs = [i for i in range(len(st)) if st.infos[i] & 0xF == 2 and st.sizes[i] > 0]
    addrs = [int(st.values[i]) + rng.randrange(int(st.sizes[i])) for i in rng.sample(funcs, 600)]
    addrs += _return_addresses(sym, vmlinux, rng, 60)
    ref = addr2line_batch(vmlinux, addrs)
    bad = []
    for a, want in zip(addrs, ref):
        chain = sym.symbolize(a).chain
        got = [(c.function, c.raw_file, c.line, c.discriminator) for c in chain]
        if not got:
            got = [("??", "??", 0, 0)]
        if got != want:
            bad.append((hex(a), got, want))
    assert not bad, f"{len(bad)} of {len(addrs)} differ, e.g. {bad[:3]}"
    assert len(addrs) > 700
    # a second process-like start reads every unit back from the on-disk index: same answers
    again = Symbolizer(vmlinux, cache_dir=cache_dir)
    assert again.dwarf_image is not None and again.dwarf_image.units_in_memory == 0
    stored = [[(c.function, c.raw_file, c.line, c.discriminator) for c in again.symbolize(a).chain] or
              [("??", "??", 0, 0)] for a in addrs]
    again.close()
    assert stored == ref


def test_paths_are_source_relative(vmlinux: Path, sym: Symbolizer) -> None:
    prefix = dir_prefix(vmlinux)
    assert prefix == "debian/build/build_amd64_none_cloud-amd64/"
    assert sym.dir_prefix == prefix
    r = sym.resolve("__ip_local_out+222")[0]
    assert [c.file for c in r.chain] == [strip_prefix(c.raw_file, prefix) for c in r.chain]
    assert r.chain[0].raw_file.startswith(prefix)
    assert r.chain[0].file == "include/linux/netfilter.h"


def test_json_matches_text(vmlinux: Path, cache_dir: Path) -> None:
    specs = ["ip_local_out+29", "kfree_skb+1", "0xffffffff8184586e"]
    got = _ksym_cli(vmlinux, cache_dir, specs, "--json")
    objs = [json.loads(line) for line in got.stdout.splitlines()]
    assert [o["query"] for o in objs] == specs
    first = objs[0]
    assert first["resolved"] and first["symbol"] == "ip_local_out" and first["offset"] == 29
    assert first["size"] == 0x70
    text = _ksym_cli(vmlinux, cache_dir, specs[:1]).stdout.splitlines()
    from_json = [f"{c['function']} at {c['file']}:{c['line']}" for c in first["chain"]]
    assert text[1:] == [from_json[0]] + [f"(inlined by) {x}" for x in from_json[1:]]
    assert [c["inlined"] for c in first["chain"]] == [True, True, False]
    assert objs[1]["resolved"] is False and "no match" in objs[1]["error"]
    assert objs[2]["symbol"] == "__ip_local_out" and objs[2]["offset"] == 0xDE


def test_index_warm_equals_cold_and_survives_corruption(vmlinux: Path, tmp_path: Path) -> None:
    specs = ["__ip_local_out+222", "ip_local_out+29", "tcp_v4_rcv+145", "__udp4_lib_rcv+0x4bc"]
    cold = Symbolizer(vmlinux, cache_dir=tmp_path)
    want = [str(r) for s in specs for r in cold.resolve(s)]
    cold.flush()
    images = list(tmp_path.glob("index/*/image.v*"))
    cus = list(tmp_path.glob("index/*/units*"))
    assert len(images) == 1 and cus, "the index and the CUs read were stored"
    assert cold.build_id and images[0].parent.name.startswith(cold.build_id + "-")  # + the fingerprint
    warm = Symbolizer(vmlinux, cache_dir=tmp_path)
    assert [str(r) for s in specs for r in warm.resolve(s)] == want
    answers = list(tmp_path.glob("index/*/answers.v*"))
    assert len(answers) == 1, "the answers given were stored"
    for f in [images[0], *cus, *answers]:
        f.write_bytes(b"\x00garbage" * 3)
    again = Symbolizer(vmlinux, cache_dir=tmp_path)
    assert [str(r) for s in specs for r in again.resolve(s)] == want
    nocache = Symbolizer(vmlinux, use_index=False)
    assert [str(r) for s in specs for r in nocache.resolve(s)] == want
    for s in (cold, warm, again, nocache):
        s.close()
