"""``ksym annotate`` (ksym.annotate, ksym.disasm): pass-through of every sample, locations against
binutils addr2line -fi (address - 1 for return addresses, the address itself for exact frames), call
instructions against objdump, KASLR inputs, unresolved reasons, the command's exit codes.

The Debian 6.1 vmlinux tests skip with the reason printed when it is missing (tools/fetch-testdata.sh);
under CI=true they fail instead. The fixture ELF tests always run.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from anchors import (
    REPO_ROOT,
    addr2line_batch,
    find_test_vmlinux,
    fixture,
    func_symbols,
    missing,
    strip_prefix,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ksym import EXIT_NO_FILE, EXIT_OK, EXIT_UNRESOLVED, EXIT_USAGE, SourceLocation, Symbolizer
from ksym.annotate import (
    LOOKUP_CALL_SITE,
    LOOKUP_ENTRY,
    LOOKUP_EXACT,
    RUNTIME_ADDRESS_REASON,
    AnnotatedFrame,
    AnnotatedText,
    _Annotator,
    annotate,
    is_exact_frame,
    render_frame,
)
from ksym.disasm import call_before, instruction_before, supported_machine
from ksym.kallsyms import KaslrError, load_kallsyms
from ksym.links import links_for
from ksym.parse import StackFrame, parse_line

SAMPLES = sorted([*Path("/work/shared/samples").glob("*.txt"), *(REPO_ROOT / "tests/data/stacks").glob("*.txt")])
DATA = REPO_ROOT / "tests" / "data" / "annotate"
FIXTURE = fixture("kshapes-dwarf5.elf")
VMLINUX = find_test_vmlinux()
SLIDE = 0x1A600000  # a 2 MiB aligned KASLR slide for the synthetic dumps


def _need_vmlinux() -> Path:
    if VMLINUX is None:
        msg = "the Debian 6.1 debug vmlinux not found: run tools/fetch-testdata.sh"
        missing(msg)
    return VMLINUX


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ksym-index")


@pytest.fixture(scope="module")
def fsym(cache_dir: Path) -> Iterator[Symbolizer]:
    with Symbolizer(FIXTURE, cache_dir=cache_dir) as sym:
        yield sym


@pytest.fixture(scope="module")
def vmlinux() -> Path:
    return _need_vmlinux()


@pytest.fixture(scope="module")
def vsym(vmlinux: Path, cache_dir: Path) -> Iterator[Symbolizer]:
    with Symbolizer(vmlinux, cache_dir=cache_dir) as sym:
        yield sym


def _chain(chain: tuple[SourceLocation, ...]) -> list[tuple[str, str, int, int]]:
    return [(loc.function, loc.file, loc.line, loc.discriminator) for loc in chain]


def _ref(elf: Path, addresses: list[int], prefix: str | None) -> list[list[tuple[str, str, int, int]]]:
    return [[(f, strip_prefix(p, prefix), ln, d) for f, p, ln, d in chain]
            for chain in addr2line_batch(elf, addresses)]


def _strip_annotations(result: AnnotatedText) -> str:
    """The rendered text with each frame's annotation lines removed: must be the input again. The
    text annotate renders from its answers alone is the text rendered from the per-line records."""
    out = result.text
    linked = result.render_text(links=True)
    records = AnnotatedText(result.lines, result.frames, result.kaslr_offset, result.kaslr_source, result.exact,
                            result.notes)
    assert records.text == out and records.render_text(links=True) == linked
    pos = 0
    kept: list[str] = []
    for line in result.lines:
        assert out.startswith(line.text, pos), f"line {line.lineno} not passed through"
        kept.append(line.text)
        pos += len(line.text)
        af = result.frame_at(line.lineno)
        if af is None:
            continue
        if not line.ending:
            assert out[pos] == "\n"
            pos += 1
        for ann in render_frame(af):
            ending = line.ending or "\n"
            assert out.startswith(ann + ending, pos)
            pos += len(ann) + len(ending)
    assert pos == len(out)
    return "".join(kept)


# --------------------------------------------------------------------------------------------------
# Pass-through of every sample (fixture ELF: nothing of theirs resolves, all must pass and be marked)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_samples_pass_through(path: Path, fsym: Symbolizer) -> None:
    text = path.read_bytes().decode("utf-8", "surrogateescape")
    result = annotate(text, fsym)
    assert _strip_annotations(result) == text
    assert result.frames, f"{path.name}: no frames recognised"
    for af in result.frames:
        lines = render_frame(af)
        assert lines and lines[0].lstrip().startswith("-> ")
        if not af.resolved:
            assert af.reason
            assert lines == [f"{lines[0].split('->')[0]}-> unresolved: {af.reason}"]
        json.loads(json.dumps(af.to_dict()))


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_samples_on_the_debian_vmlinux(path: Path, vsym: Symbolizer) -> None:
    text = path.read_bytes().decode("utf-8", "surrogateescape")
    result = annotate(text, vsym)
    assert _strip_annotations(result) == text
    for af in result.frames:
        assert af.resolved or af.reason
        if af.frame.module is not None:
            assert af.reason == f"module {af.frame.module}: no module debug files given (--modules DIR)"
        for m in af.matches:
            if m.lookup == LOOKUP_CALL_SITE:
                assert m.lookup_address == m.link_address - 1
                assert m.call is not None and m.call.is_call
                assert m.call.address + m.call.size == m.link_address


def test_raw_sample_needs_a_slide(vsym: Symbolizer) -> None:
    text = Path("/work/shared/samples/bpftrace-kstack-raw-addresses.txt").read_text()
    result = annotate(text, vsym)
    assert result.frames and all(af.reason == RUNTIME_ADDRESS_REASON for af in result.frames)
    assert "-> unresolved: runtime address: give --kallsyms or --kaslr-offset" in result.text


# --------------------------------------------------------------------------------------------------
# The fixture ELF: always runs


def test_fixture_call_site_and_exact_top(fsym: Symbolizer) -> None:
    text = "kstack:\n        ip_local_out_like+29\n        ip_local_out_like+121\n        main+5\n"
    result = annotate(text, fsym)
    top, call, other = result.frames
    assert top.top and top.lookup == LOOKUP_EXACT and top.lookup_address == 0x401200 + 29
    assert call.lookup == LOOKUP_CALL_SITE and call.lookup_address == 0x401279 - 1
    assert call.call is not None and call.call.text == "call nf_hook_slow"
    assert (call.call.address, call.call.size, call.call.target) == (0x401274, 5, 0x401290)
    prefix = fsym.dir_prefix
    ref = _ref(FIXTURE, [0x401200 + 29, 0x401279 - 1], prefix)
    assert _chain(top.chain) == ref[0]
    assert _chain(call.chain) == ref[1]
    # main+5 is not after a call: looked up exactly, with the reason
    notes = " ".join(other.matches[0].notes)
    assert other.lookup == LOOKUP_EXACT and ("not a call" in notes or "inside an instruction" in notes)
    exact = annotate(text, fsym, exact=True)
    assert [f.lookup for f in exact.frames] == [LOOKUP_EXACT] * 3
    assert _chain(exact.frames[1].chain) == _ref(FIXTURE, [0x401279], prefix)[0]


def test_fixture_duplicate_static_symbol(fsym: Symbolizer) -> None:
    result = annotate("raw_ioctl+0x5\n", fsym)
    (af,) = result.frames
    assert af.resolved and len(af.matches) == 2
    assert {m.link_address for m in af.matches} == {0x4012C0 + 5, 0x401310 + 5}
    assert "(1/2 at 0x4012c5)" in result.text and "(2/2 at 0x401315)" in result.text
    # the size picks one, as in faddr2line
    (one,) = annotate("raw_ioctl+0x5/0x20\n", fsym).frames
    assert len(one.matches) == 1 and one.link_address == 0x401315


def test_fixture_rendering_golden(fsym: Symbolizer) -> None:
    text = (DATA / "fixture-dump.txt").read_text()
    assert annotate(text, fsym).text == (DATA / "fixture-dump.expected").read_text()


def test_unresolved_reasons_and_the_rest_still_annotates(fsym: Symbolizer) -> None:
    text = (
        "Call Trace:\n"
        " <TASK>\n"
        " no_such_function+0x10/0x20\n"
        " ip_local_out_like+0x79/0x90\n"
        " ip_local_out_like+0x500/0x90\n"
        " nft_do_chain+0x3e8/0x5f0 [nf_tables]\n"
        " ip_local_out_like+0x79/0x90\n"
        " </TASK>\n"
    )
    result = annotate(text, fsym)
    reasons = [af.reason for af in result.frames]
    assert reasons[0] is not None and "unknown symbol no_such_function" in reasons[0]
    assert reasons[1] is None and result.frames[1].lookup == LOOKUP_CALL_SITE  # oops: even the first
    assert reasons[2] is not None and "another kernel build" in reasons[2] and "size mismatch" in reasons[2]
    assert reasons[3] == "module nf_tables: no module debug files given (--modules DIR)"
    assert reasons[4] is None
    assert not result.all_resolved and len(result.unresolved) == 3


def test_exact_frames_by_format() -> None:
    def frame(line: str) -> bool:
        f = parse_line(line)
        assert f is not None, line
        return is_exact_frame(f, top=False)

    assert frame("[  412.345750] RIP: 0010:nft_do_chain+0x3e8/0x5f0 [nf_tables]")
    assert frame("pc : ip_local_out+0x1d/0x70")
    assert frame("WARNING: CPU: 1 PID: 12 at net/ipv4/ip_output.c:12 ip_local_out+0x1d/0x70")
    assert not frame("lr : ip_local_out+0x1d/0x70")
    f = parse_line(" ip_local_out+0x1d/0x70")
    assert f is not None and not is_exact_frame(f, top=True)  # oops call trace: unwinder output
    f = parse_line("[<0>] ip_local_out+0x1d/0x70")
    assert f is not None and not is_exact_frame(f, top=True)
    f = parse_line("        ip_local_out+29")
    assert f is not None and is_exact_frame(f, top=True) and not is_exact_frame(f, top=False)


def test_bare_function_name(fsym: Symbolizer) -> None:
    (af,) = annotate(" => ip_local_out_like\n", fsym).frames
    assert af.resolved and af.lookup == LOOKUP_ENTRY and af.link_address == 0x401200
    assert any("no offset" in n for n in af.notes)


def test_nokaslr_address_resolves_directly_other_addresses_do_not(fsym: Symbolizer) -> None:
    # the fixture is linked at 0x401000: use 8-digit-free 0x addresses in a bpftrace raw stack
    result = annotate("kstack:\n        0x0000000000401279\n        0xffffffff9091b941\n", fsym)
    ok, raw = result.frames
    assert ok.resolved and ok.link_address == 0x401279 and ok.matches[0].symbol == "ip_local_out_like"
    assert raw.reason == RUNTIME_ADDRESS_REASON


# --------------------------------------------------------------------------------------------------
# disasm


def test_disasm_forms() -> None:
    base = 0x1000
    code = {
        base: bytes.fromhex("e8 fb 0f 00 00".replace(" ", "")),  # call 0x2000
        base + 5: bytes.fromhex("ffd0"),  # call *%rax
        base + 7: bytes.fromhex("ff1500100000"),  # call *0x1000(%rip) -> pointer at 0x200d
        base + 13: bytes.fromhex("4889c7"),  # mov %rax,%rdi
        base + 16: bytes.fromhex("c3"),
    }
    image = b"".join(code[k] for k in sorted(code))

    def read(addr: int, n: int) -> bytes:
        off = addr - base
        if off < 0:
            return b"\x90" * min(n, -off) + image[: max(0, n + off)]
        return image[off : off + n]

    def name_of(addr: int) -> str | None:
        return {0x2000: "nf_hook_slow", 0x200D: "pv_ops+0x8"}.get(addr)

    c = call_before(base + 5, read, function_start=base, name_of=name_of)
    assert c is not None and (c.text, c.target, c.indirect) == ("call nf_hook_slow", 0x2000, False)
    c = call_before(base + 7, read, function_start=base, name_of=name_of)
    assert c is not None and c.indirect and c.text == "call *%rax"
    c = call_before(base + 13, read, function_start=base, name_of=name_of)
    assert c is not None and c.text.endswith("# <pv_ops+0x8>") and c.text.startswith("call *")
    assert call_before(base + 16, read, function_start=base) is None  # after a mov
    before = instruction_before(base + 16, read, function_start=base)
    assert before.boundary and before.instruction is not None and not before.instruction.is_call
    assert instruction_before(base + 3, read, function_start=base).boundary is False  # inside the call
    # without the function start: the backward search finds the 5-byte call
    c = call_before(base + 5, read, name_of=name_of)
    assert c is not None and c.target == 0x2000
    assert call_before(base + 5, read, "EM_SPARCV9") is None
    assert supported_machine("EM_X86_64") and not supported_machine(None)


# --------------------------------------------------------------------------------------------------
# The Debian vmlinux: dumps in several formats built from real call sites, against addr2line/objdump


@dataclass(frozen=True)
class CallSite:
    ret: int  # return address (link time)
    call: int  # address of the call instruction
    text: str  # objdump's instruction text
    symbol: str
    offset: int
    size: int


_OBJDUMP_LINE = re.compile(r"^\s*([0-9a-f]+):\s+(.*?)\s*$")


def _objdump(vmlinux: Path, start: int, stop: int) -> list[tuple[int, str]]:
    proc = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", f"--start-address={start:#x}", f"--stop-address={stop:#x}",
         str(vmlinux)], capture_output=True, text=True, check=True, env={**os.environ, "LC_ALL": "C"})
    out = []
    for line in proc.stdout.splitlines():
        m = _OBJDUMP_LINE.match(line)
        if m and m.group(2) and not m.group(2).startswith("<"):
            out.append((int(m.group(1), 16), m.group(2)))
    return out


@pytest.fixture(scope="module")
def call_sites(vmlinux: Path, vsym: Symbolizer) -> list[CallSite]:
    """Call instructions found by objdump in functions sampled across .text (unique names only)."""
    funcs = func_symbols(vmlinux)
    counts: dict[str, int] = {}
    for name, _, _ in funcs:
        counts[name] = counts.get(name, 0) + 1
    text_end = vsym.address_of("_etext") or 0
    cands = sorted({(a, n, s) for n, a, s in funcs if counts[n] == 1 and 0x40 <= s <= 0x2000 and a < text_end})
    rng = random.Random(20261125)
    sites: list[CallSite] = []
    for addr, name, size in rng.sample(cands, 40):
        insns = _objdump(vmlinux, addr, addr + size)
        calls = [(a, t, insns[i + 1][0]) for i, (a, t) in enumerate(insns[:-1]) if t.split()[0] == "call"]
        if not calls:
            continue
        a, t, ret = rng.choice(calls)
        hit = vsym.symbols.containing(ret)
        assert hit is not None
        if counts.get(hit[0].name) != 1:
            continue
        sites.append(CallSite(ret, a, t, hit[0].name, ret - hit[0].address, hit[1]))
    assert len(sites) >= 20
    return sites


TUTORIAL_TOP = ("__ip_local_out", 0xDE)


def _check(result: AnnotatedText, vmlinux: Path, vsym: Symbolizer, sites: list[CallSite],
           top_link: int | None) -> None:
    """Top frame exact at ``top_link`` (if given); every call site at ret - 1 with the objdump call."""
    frames = list(result.frames)
    if top_link is not None:
        top = frames.pop(0)
        assert top.resolved and top.lookup == LOOKUP_EXACT and top.lookup_address == top_link
        assert _chain(top.chain) == _ref(vmlinux, [top_link], vsym.dir_prefix)[0]
    assert len(frames) == len(sites)
    ref = _ref(vmlinux, [s.ret - 1 for s in sites], vsym.dir_prefix)
    for af, site, want in zip(frames, sites, ref):
        assert af.resolved, (site, af.reason)
        assert af.lookup == LOOKUP_CALL_SITE and af.lookup_address == site.ret - 1, site
        assert _chain(af.chain) == want, site
        c = af.call
        assert c is not None and c.address == site.call and c.address + c.size == site.ret
        ref_text = site.text.split("#")[0].split()
        if len(ref_text) > 1 and re.fullmatch(r"[0-9a-f]+", ref_text[1]):  # direct: call ffff... <name>
            assert c.target == int(ref_text[1], 16)
            named = re.search(r"<([^>]+)>", site.text)
            assert named is not None and c.target_name is not None
            # objdump and kallsyms may pick different aliases at one address (__x86_indirect_thunk_array
            # / __x86_indirect_thunk_rax): the same address is enough
            assert c.target_name == named.group(1) or vsym.address_of(c.target_name) == c.target
        else:
            assert c.indirect


def _top_link(vsym: Symbolizer) -> int:
    a = vsym.address_of(TUTORIAL_TOP[0])
    assert a is not None
    return a + TUTORIAL_TOP[1]


def test_sweep_from_line_row_agrees_with_sweep_from_function_start(vsym: Symbolizer,
                                                                   call_sites: list[CallSite]) -> None:
    """The call-site disassembly starts at the line row covering ret - 1 (an instruction start): the
    same call as objdump's and as the sweep from the function start; a hint inside an instruction
    falls back to that sweep."""
    hinted = 0
    for site in call_sites:
        start = site.ret - site.offset
        hint = vsym.line_row_start(site.ret - 1)
        assert hint is not None and start <= hint <= site.call, site
        hinted += hint > start
        plain = instruction_before(site.ret, vsym.code_bytes, vsym.machine, function_start=start)
        fast = instruction_before(site.ret, vsym.code_bytes, vsym.machine, function_start=start,
                                  boundary_hint=hint)
        bad = instruction_before(site.ret, vsym.code_bytes, vsym.machine, function_start=start,
                                 boundary_hint=site.call + 1)
        assert plain == fast == bad, site
        assert fast.instruction is not None and fast.instruction.address == site.call
    assert hinted > len(call_sites) // 2, "most call sites start their sweep past the function start"
    # not a return address: inside an instruction either way
    site = call_sites[0]
    inside = instruction_before(site.ret - 1, vsym.code_bytes, vsym.machine, function_start=site.ret - site.offset,
                                boundary_hint=vsym.line_row_start(site.ret - 2))
    assert inside.boundary is False


def test_bpftrace_decimal(vmlinux: Path, vsym: Symbolizer, call_sites: list[CallSite]) -> None:
    text = "comm(1): kprobe:x\n\tkstack:\n        __ip_local_out+222\n" + "".join(
        f"        {s.symbol}+{s.offset}\n" for s in call_sites) + "\n"
    result = annotate(text, vsym)
    _check(result, vmlinux, vsym, call_sites, _top_link(vsym))
    assert result.kaslr_offset is None


def test_perf_script_with_slide_from_frames(vmlinux: Path, vsym: Symbolizer, call_sites: list[CallSite]) -> None:
    top = _top_link(vsym)
    lines = [f"\t{top + SLIDE:016x} __ip_local_out+0xde ([kernel.kallsyms])\n"]
    lines += [f"\t{s.ret + SLIDE:016x} {s.symbol}+{s.offset:#x} ([kernel.kallsyms])\n" for s in call_sites]
    # one [unknown] frame: resolved through the slide the other frames give
    lines.append(f"\t{call_sites[0].ret + SLIDE:016x} [unknown] ([kernel.kallsyms])\n")
    text = "swapper     0 [000]   583.443298: skb:kfree_skb: x\n" + "".join(lines)
    result = annotate(text, vsym)
    assert result.kaslr_offset == SLIDE and result.kaslr_source == "frames"
    _check(AnnotatedText(result.lines, result.frames[:-1], SLIDE, "frames", False), vmlinux, vsym,
           call_sites, top)
    last = result.frames[-1]
    assert last.resolved and last.link_address == call_sites[0].ret
    assert last.chain == result.frames[1].chain


def test_oops_call_trace(vmlinux: Path, vsym: Symbolizer, call_sites: list[CallSite]) -> None:
    top = _top_link(vsym)
    text = (f"[  1.000000] RIP: 0010:__ip_local_out+0xde/{vsym.symbols.containing(top)[1]:#x}\n"
            "[  1.000001] Call Trace:\n[  1.000002]  <TASK>\n"
            + "".join(f"[  1.000003]  {s.symbol}+{s.offset:#x}/{s.size:#x}\n" for s in call_sites)
            + "[  1.000004]  </TASK>\n")
    result = annotate(text, vsym)
    _check(result, vmlinux, vsym, call_sites, top)
    exact = annotate(text, vsym, exact=True)
    assert all(af.lookup == LOOKUP_EXACT for af in exact.frames)
    ref = _ref(vmlinux, [s.ret for s in call_sites], vsym.dir_prefix)
    assert [_chain(af.chain) for af in exact.frames[1:]] == ref


def test_proc_stack(vmlinux: Path, vsym: Symbolizer, call_sites: list[CallSite]) -> None:
    text = "".join(f"[<0>] {s.symbol}+{s.offset:#x}/{s.size:#x}\n" for s in call_sites)
    _check(annotate(text, vsym), vmlinux, vsym, call_sites, None)


def test_raw_addresses_with_kernel_offset_line(vmlinux: Path, vsym: Symbolizer,
                                                call_sites: list[CallSite]) -> None:
    top = _top_link(vsym)
    body = "kstack:\n" + "".join(f"        0x{a + SLIDE:x}\n" for a in [top, *(s.ret for s in call_sites)])
    no_slide = annotate(body, vsym)
    assert all(af.reason == RUNTIME_ADDRESS_REASON for af in no_slide.frames)
    result = annotate(body + f"Kernel Offset: {SLIDE:#x} from 0xffffffff81000000 (relocation range: x)\n", vsym)
    assert result.kaslr_offset == SLIDE and (result.kaslr_source or "").startswith("Kernel Offset line")
    _check(result, vmlinux, vsym, call_sites, top)
    assert "in __ip_local_out+0xde/" in result.text  # raw frames name their symbol
    # explicit offset
    _check(annotate(body, vsym, kaslr_offset=SLIDE), vmlinux, vsym, call_sites, top)
    # nokaslr: link-time addresses resolve directly
    plain = "kstack:\n" + "".join(f"        0x{a:x}\n" for a in [top, *(s.ret for s in call_sites)])
    _check(annotate(plain, vsym), vmlinux, vsym, call_sites, top)


def _kallsyms_text(vmlinux: Path, slide: int) -> str:
    funcs = func_symbols(vmlinux)
    counts: dict[str, int] = {}
    for name, _, _ in funcs:
        counts[name] = counts.get(name, 0) + 1
    rng = random.Random(7)
    chosen = rng.sample([(a, n) for n, a, _ in funcs if counts[n] == 1], 400)
    lines = [f"{0xFFFFFFFF81000000 + slide:016x} T _text"]
    lines += [f"{a + slide:016x} T {n}" for a, n in sorted(chosen)]
    lines += ["ffffffffc0a1b000 t nft_do_chain\t[nf_tables]", "ffffffffc0a1c000 t nft_other\t[nf_tables]"]
    return "\n".join(lines) + "\n"


def test_stored_frame_answers_equal_worked_out_ones(vmlinux: Path, call_sites: list[CallSite], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A frame whose answer depends on the vmlinux alone is answered from the index the second time:
    the same records and text as worked out (call instructions, notes, misfits, unknown symbols),
    nothing worked out again but frames whose answer depends on the slide."""
    lines = ["Call Trace:", *(f" {s.symbol}+{s.offset:#x}/{s.size:#x}" for s in call_sites),
             # a misfit (offset beyond the size), an unknown symbol, a bare name, an .isra/.cold shape
             f" {call_sites[0].symbol}+{call_sites[0].size + 0x10:#x}/{call_sites[0].size:#x}",
             " no_such_function_here+0x10/0x20", " schedule", "kstack:",
             *(f"        {s.symbol}+{s.offset}" for s in call_sites[:5]),
             # a runtime address beside its symbol: compared with the slide, so never stored
             "", f"\tffffffffc0000000 {call_sites[1].symbol}+{call_sites[1].offset:#x} ([kernel.kallsyms])"]
    text = "\n".join(lines) + "\n"
    first = Symbolizer(vmlinux, cache_dir=tmp_path)
    elixir = links_for(first.banner)
    worked = annotate(text, first, kaslr_offset=SLIDE, elixir=elixir)
    first.close()
    assert sum(1 for af in worked.frames if af.lookup == LOOKUP_CALL_SITE and af.call is not None) >= 20
    calls: list[StackFrame] = []
    real = _Annotator._frame

    def counted(self: _Annotator, f: StackFrame, top: bool, exact: bool) -> AnnotatedFrame:
        calls.append(f)
        return real(self, f, top, exact)

    monkeypatch.setattr(_Annotator, "_frame", counted)
    with Symbolizer(vmlinux, cache_dir=tmp_path) as again:
        stored = annotate(text, again, kaslr_offset=SLIDE, elixir=elixir)
    assert [c.symbol for c in calls] == [call_sites[1].symbol]  # only the frame with a runtime address
    assert stored.frames == worked.frames
    assert stored.text == worked.text and stored.notes == worked.notes
    assert stored.render_text(links=True) == worked.render_text(links=True)
    # the stored answers do not hold the links: an annotation without links gets none
    with Symbolizer(vmlinux, cache_dir=tmp_path) as third:
        plain = annotate(text, third, kaslr_offset=SLIDE)
    assert plain.text == worked.text
    assert all(loc.url is None for af in plain.frames for loc in af.chain)
    assert any(loc.url for af in stored.frames for loc in af.chain)


def test_raw_addresses_with_kallsyms(vmlinux: Path, vsym: Symbolizer, call_sites: list[CallSite],
                                     tmp_path: Path) -> None:
    assert vsym.address_of("_text") == 0xFFFFFFFF81000000
    top = _top_link(vsym)
    ks = load_kallsyms(_kallsyms_text(vmlinux, SLIDE))
    body = "kstack:\n" + "".join(f"        0x{a + SLIDE:x}\n" for a in [top, *(s.ret for s in call_sites)])
    result = annotate(body + "        0xffffffffc0a1b3e8\n", vsym, kallsyms=ks)
    assert result.kaslr_offset == SLIDE and result.kaslr_source == "kallsyms"
    module = result.frames[-1]
    # kallsyms names the module address; without module debug files it stays unresolved, saying so
    assert module.reason == "module nf_tables: no module debug files given (--modules DIR)"
    assert module.notes[0] == "0xffffffffc0a1b3e8 is nft_do_chain+0x3e8 [nf_tables] by the kallsyms given"
    _check(AnnotatedText(result.lines, result.frames[:-1], SLIDE, "kallsyms", False), vmlinux, vsym,
           call_sites, top)
    # kallsyms of another build (every symbol but _text elsewhere): refused, never guessed
    lines = _kallsyms_text(vmlinux, SLIDE).splitlines()
    moved = [f"{int(ln.split()[0], 16) + 0x40:016x} {' '.join(ln.split()[1:])}" if i and "[" not in ln
             else ln for i, ln in enumerate(lines)]
    with pytest.raises(KaslrError):
        annotate(body, vsym, kallsyms=load_kallsyms("\n".join(moved) + "\n"))


# --------------------------------------------------------------------------------------------------
# The command


def _cli(*args: str, stdin: bytes = b"", cache_dir: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    extra = ["--cache-dir", str(cache_dir)] if cache_dir else []
    return subprocess.run([sys.executable, "-m", "ksym", "annotate", *extra, *args], input=stdin,
                          capture_output=True, check=False, timeout=600)


def test_cli_exit_codes_and_stdin(cache_dir: Path, tmp_path: Path) -> None:
    elf = str(FIXTURE)
    good = b"kstack:\n        ip_local_out_like+29\n        ip_local_out_like+121\n"
    r = _cli("--vmlinux", elf, stdin=good, cache_dir=cache_dir)
    assert r.returncode == EXIT_OK, r.stderr
    assert b"call site: call nf_hook_slow" in r.stdout and r.stdout.startswith(good.split(b"\n")[0])
    r2 = _cli("--vmlinux", elf, "-", stdin=good, cache_dir=cache_dir)
    assert r2.stdout == r.stdout and r2.returncode == EXIT_OK
    r = _cli("--vmlinux", elf, stdin=good + b"        nope_nope+1\n", cache_dir=cache_dir)
    assert r.returncode == EXIT_UNRESOLVED and b"1 of 3 frames unresolved" in r.stderr
    for bad_args in (["--kaslr-offset", "zz"], ["--kaslr-offset", "0x1", "--kallsyms", "x"], ["--bogus"]):
        r = _cli("--vmlinux", elf, *bad_args, stdin=good, cache_dir=cache_dir)
        assert r.returncode == EXIT_USAGE, bad_args
    r = _cli("--vmlinux", elf, str(tmp_path / "missing.txt"), cache_dir=cache_dir)
    assert r.returncode == EXIT_USAGE and b"missing.txt" in r.stderr
    r = _cli("--vmlinux", str(tmp_path / "no-vmlinux"), stdin=good, cache_dir=cache_dir)
    assert r.returncode == EXIT_NO_FILE and b"Traceback" not in r.stderr


def test_cli_undecodable_bytes_and_json(cache_dir: Path, tmp_path: Path) -> None:
    raw = b"caf\xe9 \xff\xfe line\r\n  ip_local_out_like+0x79/0x90\r\nend\xff"
    path = tmp_path / "in.txt"
    path.write_bytes(raw)
    r = _cli("--vmlinux", str(FIXTURE), str(path), cache_dir=cache_dir)
    assert r.returncode == EXIT_OK, r.stderr
    out = r.stdout
    assert out.startswith(b"caf\xe9 \xff\xfe line\r\n  ip_local_out_like+0x79/0x90\r\n    -> ")
    assert out.endswith(b"\r\nend\xff")
    r = _cli("--vmlinux", str(FIXTURE), "--json", str(path), cache_dir=cache_dir)
    objs = [json.loads(line) for line in r.stdout.decode().splitlines()]
    assert len(objs) == 1
    o = objs[0]
    assert o["line"] == 2 and o["status"] == "resolved" and o["lookup"] == LOOKUP_CALL_SITE
    assert o["link_address"] == "0x401279" and o["lookup_address"] == "0x401278"
    assert o["call"]["text"] == "call nf_hook_slow" and o["chain"][0]["function"]
    assert set(o) >= {"text", "kind", "stack", "top", "symbol", "offset", "module", "runtime_address",
                      "reason", "matches", "notes"}



def test_disasm_arm64() -> None:
    import struct

    code = struct.pack("<III", 0x94000010, 0xD63F0020, 0xAA0003E0)  # bl #0x1040; blr x1; mov x0, x0

    def read(addr: int, n: int) -> bytes:
        off = addr - 0x1000
        return code[off : off + n] if off >= 0 else b""

    c = call_before(0x1004, read, "EM_AARCH64", name_of=lambda a: "foo" if a == 0x1040 else None)
    assert c is not None and (c.text, c.target, c.indirect) == ("bl foo", 0x1040, False)
    c = call_before(0x1008, read, "EM_AARCH64")
    assert c is not None and c.text == "blr x1" and c.indirect
    assert call_before(0x100C, read, "EM_AARCH64") is None


@pytest.mark.parametrize("name", ["warn-ip_local_out-6.1.0-53", "raw-kernel-offset-6.1.0-53"])
def test_debian_rendering_golden(name: str, vmlinux: Path, vsym: Symbolizer) -> None:
    """The examples of docs/annotate.md, rendered on the Debian vmlinux."""
    result = annotate((DATA / f"{name}.txt").read_text(), vsym)
    assert result.text == (DATA / f"{name}.expected").read_text()
    for af in result.frames:  # each call site is the addr2line answer at ret - 1
        if af.lookup == LOOKUP_CALL_SITE:
            assert af.lookup_address is not None
            assert _chain(af.chain) == _ref(vmlinux, [af.lookup_address], vsym.dir_prefix)[0]


_PIECES = [
    "kstack:", "        ip_local_out_like+29", "        raw_ioctl+5", " ? __ip_local_out+0x2d/0x90",
    "[<0>] ip_local_out_like+0x79/0x90", "\tffffffff81845796 __ip_local_out+0x6 ([kernel.kallsyms])",
    "        0xffffffff9091b941", " nft_do_chain+0x3e8/0x5f0 [nf_tables]", "RIP: 0010:main+0x5/0x20",
    "Kernel Offset: disabled", "Call Trace:", " <TASK>", "", "garbage + more garbage", "x+1",
    "> [  1.0]  ip_local_out_like+0x79/0x90", ">\t[  1.0]\t? raw_ioctl+0x5/0x20",
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.sampled_from(_PIECES), st.text(max_size=40)), max_size=12),
       st.sampled_from(["\n", "\r\n"]), st.booleans())
def test_any_text_passes_through(fsym: Symbolizer, pieces: list[str], nl: str, last_nl: bool) -> None:
    text = nl.join(pieces) + (nl if last_nl and pieces else "")
    for exact in (False, True):
        result = annotate(text, fsym, exact=exact)
        assert _strip_annotations(result) == text
        assert all(af.resolved or af.reason for af in result.frames)


def test_kernel_offset_disabled_and_zero_slide(fsym: Symbolizer) -> None:
    text = "kstack:\n        0x0000000000401279\nKernel Offset: disabled\n"
    result = annotate(text, fsym)
    assert result.kaslr_offset == 0 and result.frames[0].link_address == 0x401279
    assert result.frames[0].notes == ()  # a known slide: no nokaslr guess note
    assert annotate(text, fsym, kaslr_offset=0x200000).frames[0].reason is not None


def test_misfit_note(fsym: Symbolizer) -> None:
    result = annotate(" ip_local_out_like+0x500/0x90\n", fsym)
    assert any("another kernel build" in n for n in result.notes)


def test_module_frames_resolve_with_module_debug_files(vmlinux: Path, tmp_path: Path) -> None:
    """`[nf_tables]` frames resolve through the module's debug file; return addresses at offset - 1."""
    modules = vmlinux.parent / "modules"
    nft = modules / "kernel" / "net" / "netfilter" / "nf_tables.ko"
    if not nft.is_file():
        if os.environ.get("CI"):
            pytest.fail("module debug files missing: tools/fetch-testdata.sh")
        pytest.skip("module debug files missing: run tools/fetch-testdata.sh")
    from ksym.modules import ModuleSymbolizer

    dump = ("[  12.5] Call Trace:\n[  12.5]  <TASK>\n"
            "[  12.5]  nft_do_chain+0x3e8/0x5d0 [nf_tables]\n"
            "[  12.5]  nf_hook_slow+0x43/0xc0\n[  12.5]  </TASK>\n")
    src = tmp_path / "oops.txt"
    src.write_text(dump)
    got = subprocess.run([sys.executable, "-m", "ksym", "annotate", "--json", "--vmlinux", str(vmlinux),
                          "--modules", str(modules), "--cache-dir", str(tmp_path / "c"), str(src)],
                         capture_output=True, text=True, check=False)
    frames = [json.loads(line) for line in got.stdout.splitlines()]
    module = frames[0]
    assert module["module"] == "nf_tables" and module["status"] == "resolved", module
    with ModuleSymbolizer(nft) as mod:
        res = mod.resolve("nft_do_chain+0x3e8/0x5d0")[0]
        want = mod.section_chain(mod.section_of(res), res.address - 1)
    with Symbolizer(vmlinux, cache_dir=tmp_path / "c") as sym:
        prefix = sym.dir_prefix
    assert prefix
    # module paths come out source-relative like the vmlinux's, with links
    assert [(c["function"], c["file"], c["line"]) for c in module["chain"]] == [
        (c.function, strip_prefix(c.file, prefix), c.line) for c in want]
    assert module["chain"][0]["url"].startswith("https://elixir.bootlin.com/linux/v6.1.187/source/net/netfilter/")
    assert [c["function"] for c in module["chain"]] == ["expr_call_ops_eval", "nft_do_chain"]


def test_raw_module_addresses_resolve_through_kallsyms(vmlinux: Path, tmp_path: Path) -> None:
    """A bare runtime address inside a module: the saved kallsyms names it ``sym+off [mod]`` and the
    module's debug file resolves it to what the symbolic frame gives (call site for return addresses)."""
    modules = vmlinux.parent / "modules"
    nft = modules / "kernel" / "net" / "netfilter" / "nf_tables.ko"
    if not nft.is_file():
        if os.environ.get("CI"):
            pytest.fail("module debug files missing: tools/fetch-testdata.sh")
        pytest.skip("module debug files missing: run tools/fetch-testdata.sh")
    base = 0xFFFFFFFFC0A1B000
    ks = tmp_path / "kallsyms"
    ks.write_text(f"{0xFFFFFFFF81000000 + SLIDE:016x} T _text\n{base:016x} t nft_do_chain\t[nf_tables]\n"
                  f"{base + 0x5d0:016x} t nft_other\t[nf_tables]\n")
    raw = tmp_path / "raw.txt"
    raw.write_text(f"kstack:\n        0x{base + 0x10:x}\n        0x{base + 0x3e8:x}\n")
    named = tmp_path / "named.txt"
    named.write_text("kstack:\n        nft_do_chain+16 [nf_tables]\n        nft_do_chain+1000 [nf_tables]\n")

    def run(path: Path) -> list[dict[str, Any]]:
        got = subprocess.run([sys.executable, "-m", "ksym", "annotate", "--json", "--vmlinux", str(vmlinux),
                              "--modules", str(modules), "--kallsyms", str(ks), "--cache-dir",
                              str(tmp_path / "c"), str(path)], capture_output=True, text=True, check=False)
        assert got.returncode == 0, got.stderr
        return [json.loads(line) for line in got.stdout.splitlines()]

    from_raw, from_named = run(raw), run(named)
    assert [f["status"] for f in from_raw] == ["resolved", "resolved"]
    for a, b in zip(from_raw, from_named):
        assert (a["chain"], a["lookup"], a["resolved_offset"]) == (b["chain"], b["lookup"], b["resolved_offset"])
    # the second frame is a return address: its call site, as for the symbolic frame
    assert [c["function"] for c in from_raw[1]["chain"]] == ["expr_call_ops_eval", "nft_do_chain"]
    assert from_raw[0]["chain"] != from_raw[1]["chain"]


def test_links_flag_appends_elixir_links(tmp_path: Path) -> None:
    dump = tmp_path / "d.txt"
    dump.write_text("        __ip_local_out+0x10\n")
    got = subprocess.run([sys.executable, "-m", "ksym", "annotate", "--links", "--kernel-tag", "v6.1.187",
                          "--vmlinux", str(fixture("kshapes-dwarf5.elf")), "--cache-dir", str(tmp_path / "c"),
                          str(dump)], capture_output=True, text=True, check=False)
    assert got.returncode == 0, got.stderr
    lines = got.stdout.splitlines()
    assert lines[1].endswith("skb_network_header at include/linux/skbuff.h:22  "
                             "https://elixir.bootlin.com/linux/v6.1.187/source/include/linux/skbuff.h#L22")
    assert lines[-1].endswith("__ip_local_out at net/ipv4/ip_output.c:25  "
                              "https://elixir.bootlin.com/linux/v6.1.187/source/net/ipv4/ip_output.c#L25")
