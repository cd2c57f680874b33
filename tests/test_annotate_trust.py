"""``ksym annotate`` against the trust issue's items 10 and 11, on the Debian 6.1 vmlinux.

Item 10: untyped (NOTYPE) code labels that kallsyms prints, such as ``entry_SYSCALL_64_after_hwframe``
(the last frame of every syscall stack), resolve as scripts/decode_stacktrace.sh resolves them (``nm``,
types t/T), in oops, perf script (by the raw address it carries) and /proc/PID/stack dumps; ``ksym
resolve`` keeps scripts/faddr2line's FUNC-only answer; "another kernel build" is said only on evidence.
Item 11: a dump naming another build id is refused (exit 3) unless ``--force``, which marks every frame
unverified; with no debug file found the message says how to give one.

The anchors are run, never copied: readelf (the labels' types), nm (their kallsyms sizes), objdump
(the calls inside them), binutils addr2line -fi, scripts/decode_stacktrace.sh and scripts/faddr2line.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from anchors import (
    REPO_ROOT,
    addr2line_batch,
    faddr2line,
    find_faddr2line,
    missing,
    strip_prefix,
)

from ksym import EXIT_NO_FILE, EXIT_OK, SourceLocation, Symbolizer, SymbolNotFoundError, SymbolView
from ksym.annotate import (
    LOOKUP_CALL_SITE,
    LOOKUP_EXACT,
    MISFIT_ADDRESS,
    MISFIT_SIZE,
    AnnotatedText,
    annotate,
)

SLIDE = 0x1A600000  # a 2 MiB aligned KASLR slide for the synthetic dumps
#: assembly entry points of x86 that are untyped labels in the 6.1 vmlinux and appear in stack traces
LABELS = ("entry_SYSCALL_64_after_hwframe", "ret_from_fork", "asm_exc_page_fault", "asm_common_interrupt")
#: the frame of the issue, as every syscall stack of that Debian 6.1 kernel printed it
ISSUE_FRAME = "entry_SYSCALL_64_after_hwframe+0x64/0xd8"
SAMPLE_618 = Path("/work/shared/samples/bpftrace-tracepoint-netfilter-drop-6.18.txt")
PERF_618 = REPO_ROOT / "tests" / "data" / "stacks" / "perf-script-kfree_skb-6.18.txt"
OTHER_BUILD_ID = "0123456789abcdef0123456789abcdef01234567"



@pytest.fixture(scope="module")
def vsym(vmlinux: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Symbolizer]:
    with Symbolizer(vmlinux, cache_dir=tmp_path_factory.mktemp("ksym-index")) as sym:
        yield sym


@dataclass(frozen=True)
class LabelSite:
    """A return address inside an untyped label: the frame the kernel prints for it."""

    label: str
    ret: int
    offset: int
    size: int

    @property
    def frame(self) -> str:
        return f"{self.label}+{self.offset:#x}/{self.size:#x}"


def _run(*cmd: str, cwd: Path | None = None, stdin: str | None = None) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=cwd, input=stdin, timeout=600,
                          env={**os.environ, "LC_ALL": "C"}).stdout


@pytest.fixture(scope="module")
def readelf(vmlinux: Path) -> list[list[str]]:
    """``readelf -sW`` rows: num, value, size, type, bind, vis, ndx, name."""
    return [f for line in _run("readelf", "-sW", str(vmlinux)).splitlines() if len(f := line.split()) == 8]


@pytest.fixture(scope="module")
def text(vmlinux: Path) -> list[tuple[int, str]]:
    """The code symbols kallsyms prints, by address, as ``nm -n`` lists them (types t/T/w/W)."""
    out = []
    for line in _run("nm", "-n", str(vmlinux)).splitlines():
        f = line.split()
        if len(f) == 3 and f[1] in "tTwW" and not f[2].startswith((".L", "$")):
            out.append((int(f[0], 16), f[2]))
    return out


@pytest.fixture(scope="module")
def sites(vmlinux: Path, readelf: list[list[str]], text: list[tuple[int, str]]) -> list[LabelSite]:
    """Each label: NOTYPE in readelf, its kallsyms size from nm (the next higher t/T/w/W address), and
    the return addresses of the calls objdump finds in it."""
    types = {f[7]: f[3] for f in readelf if f[7] in LABELS}
    assert types == dict.fromkeys(LABELS, "NOTYPE"), types
    out = []
    for label in LABELS:
        start = next(a for a, n in text if n == label)
        size = next(a for a, _ in text if a > start) - start
        dis = _run("objdump", "-d", "--no-show-raw-insn", f"--start-address={start:#x}",
                   f"--stop-address={start + size:#x}", str(vmlinux))
        found = re.finditer(r"^\s*([0-9a-f]+):\s+(\S.*)$", dis, re.MULTILINE)
        insns = [(int(m.group(1), 16), m.group(2)) for m in found]
        rets = [insns[i + 1][0] for i, (_, t) in enumerate(insns[:-1]) if t.startswith("call")]
        assert rets, label
        out += [LabelSite(label, r, r - start, size) for r in rets]
    assert any(s.frame == "entry_SYSCALL_64_after_hwframe+0x6e/0xd8" for s in out)  # after call do_syscall_64
    return out


def _chain(chain: tuple[SourceLocation, ...]) -> list[tuple[str, str, int, int]]:
    return [(loc.function, loc.file, loc.line, loc.discriminator) for loc in chain]


def _ref(vmlinux: Path, vsym: Symbolizer, addresses: list[int]) -> list[list[tuple[str, str, int, int]]]:
    return [[(f, strip_prefix(p, vsym.dir_prefix), ln, d) for f, p, ln, d in chain]
            for chain in addr2line_batch(vmlinux, addresses)]


def _issue_address(vsym: Symbolizer) -> int:
    start = vsym.address_of("entry_SYSCALL_64_after_hwframe")
    assert start is not None
    return start + 0x64


# --------------------------------------------------------------------------------------------------
# Item 10: untyped labels


def test_oops_labels_as_decode_stacktrace_and_addr2line(vmlinux: Path, vsym: Symbolizer,
                                                          sites: list[LabelSite]) -> None:
    """An oops Call Trace of label frames: ``--exact`` gives scripts/decode_stacktrace.sh's file:line on
    every frame; the default gives addr2line -fi at the call site, the call named."""
    script = find_faddr2line()
    if script is None:
        missing("the kernel's scripts are missing: run tools/fetch-testdata.sh")
    frames = [ISSUE_FRAME, *(s.frame for s in sites)]
    text = "[  100.000001] Call Trace:\n" + "".join(f"[  100.{i:06d}]  {f}\n" for i, f in enumerate(frames, 2))
    exact = annotate(text, vsym, exact=True)
    assert exact.all_resolved, [af.reason for af in exact.unresolved]
    decoded = _run("bash", str(script.parent / "decode_stacktrace.sh"), str(vmlinux), cwd=script.parent.parent,
                   stdin=text).splitlines()[1:]
    assert len(decoded) == len(frames)
    for line, af in zip(decoded, exact.frames):
        m = re.search(r"\] (\S+) \((.*)\)\s*$", line)
        assert m is not None, line
        want = re.findall(r"(\S+):(\d+)", m.group(2))
        got = [(loc.file, str(loc.line)) for loc in af.chain]
        assert [ln for _, ln in want] == [ln for _, ln in got], line
        assert all(w.endswith(g) for (w, _), (g, _) in zip(want, got)), line
    assert exact.frames[0].chain[0].line == 118 and exact.frames[0].chain[0].file.endswith("arch/x86/entry/entry_64.S")
    result = annotate(text, vsym)
    assert result.all_resolved and not result.notes
    issue, *rest = result.frames
    # +0x64 is not after a call in this build (a patched alternative): looked up exactly, no misfit
    assert issue.lookup == LOOKUP_EXACT and issue.misfit is None and issue.matches[0].misfit is None
    assert _chain(issue.chain) == _ref(vmlinux, vsym, [_issue_address(vsym)])[0]
    ref = _ref(vmlinux, vsym, [s.ret - 1 for s in sites])
    for af, site, want in zip(rest, sites, ref):
        assert af.lookup == LOOKUP_CALL_SITE and af.lookup_address == site.ret - 1, site
        assert af.call is not None and af.call.address + af.call.size == site.ret
        assert _chain(af.chain) == want, site


def test_proc_stack_labels(vmlinux: Path, vsym: Symbolizer, sites: list[LabelSite]) -> None:
    text = "".join(f"[<0>] {s.frame}\n" for s in sites)
    result = annotate(text, vsym)
    assert result.all_resolved and not result.notes
    ref = _ref(vmlinux, vsym, [s.ret - 1 for s in sites])
    assert [_chain(af.chain) for af in result.frames] == ref
    assert all(af.lookup == LOOKUP_CALL_SITE for af in result.frames)


def test_perf_script_uses_the_raw_address(vmlinux: Path, vsym: Symbolizer, sites: list[LabelSite]) -> None:
    """perf script prints the runtime address with the name: label frames resolve; a name this vmlinux
    lacks resolves by the address (no claim of another build); a name the address contradicts is
    resolved by the address and counted as evidence of another build."""
    top = vsym.address_of("__ip_local_out")
    assert top is not None
    top += 0xDE
    lines = [f"\t{top + SLIDE:016x} __ip_local_out+0xde ([kernel.kallsyms])"]
    lines += [f"\t{s.ret + SLIDE:016x} {s.label}+{s.offset:#x} ([kernel.kallsyms])" for s in sites]
    unknown, odd = sites[0], sites[-1]
    lines.append(f"\t{unknown.ret + SLIDE:016x} not_a_symbol_of_this_build+0x10 ([kernel.kallsyms])")
    lines.append(f"\t{odd.ret + SLIDE:016x} {sites[1].label}+{sites[1].offset:#x} ([kernel.kallsyms])")
    text = "swapper     0 [000]   583.443298: skb:kfree_skb: x\n" + "\n".join(lines) + "\n"
    result = annotate(text, vsym)
    assert result.kaslr_offset == SLIDE and result.kaslr_source == "frames"
    first, *labels, by_address, contradicted = result.frames
    assert first.lookup == LOOKUP_EXACT and _chain(first.chain) == _ref(vmlinux, vsym, [top])[0]
    ref = _ref(vmlinux, vsym, [s.ret - 1 for s in [*sites, unknown, odd]])
    for af, site, want in zip([*labels, by_address, contradicted], [*sites, unknown, odd], ref):
        assert af.resolved and af.link_address == site.ret and af.lookup == LOOKUP_CALL_SITE, (site, af.reason)
        assert _chain(af.chain) == want, site
    assert all(af.misfit is None for af in [first, *labels, by_address])
    assert any("resolved by the runtime address" in n for n in by_address.notes)
    assert sites[1].ret != odd.ret and contradicted.misfit == MISFIT_ADDRESS
    assert any("resolved by the address" in n for n in contradicted.notes)
    assert len([n for n in result.notes if "another kernel build" in n]) == 1
    assert result.notes[-1].startswith("1 frame(s) do not fit")


def test_another_build_only_on_evidence(vsym: Symbolizer, sites: list[LabelSite]) -> None:
    """An unknown name is not evidence of another build; an offset beyond the symbol is."""
    frames = [s.frame for s in sites]
    plain = annotate("Call Trace:\n" + "".join(f" {f}\n" for f in [*frames, "no_such_function_x+0x10/0x20"]), vsym)
    assert len(plain.unresolved) == 1 and "unknown symbol no_such_function_x" in (plain.unresolved[0].reason or "")
    assert all(af.misfit is None for af in plain.frames)
    assert not any("another kernel build" in n for n in plain.notes)
    assert not any("another kernel build" in (af.reason or "") for af in plain.frames)
    site = sites[0]
    beyond = f"{site.label}+{site.size + 0x10:#x}/{site.size:#x}"
    wrong_size = f"{site.label}+{site.offset:#x}/{site.size + 0x20:#x}"
    misfit = annotate("Call Trace:\n" + "".join(f" {f}\n" for f in [*frames, beyond, wrong_size]), vsym)
    assert [af.misfit for af in misfit.unresolved] == [MISFIT_SIZE, MISFIT_SIZE]
    assert next(n for n in misfit.notes if "another kernel build" in n).startswith("2 frame(s) do not fit")
    rows = [json.loads(line) for line in misfit.json_lines()]
    assert [r["misfit"] for r in rows[-3:]] == [None, MISFIT_SIZE, MISFIT_SIZE]


def test_addresses_beside_names_that_elect_no_slide(vsym: Symbolizer, sites: list[LabelSite]) -> None:
    """perf script frames of one boot share one KASLR slide: frames of this build do (here nokaslr, slide
    0: no claim), the 6.18 capture's frames elect none with the 6.1 vmlinux (evidence, said once)."""
    lines = [f"\t{s.ret:016x} {s.label}+{s.offset:#x} ([kernel.kallsyms])" for s in sites]
    same = annotate("swapper     0 [000]   583.443298: skb:kfree_skb: x\n" + "\n".join(lines) + "\n", vsym)
    assert same.kaslr_offset == 0 and same.all_resolved
    assert not any("another kernel build" in n for n in same.notes)
    if not PERF_618.is_file():
        missing(f"{PERF_618} is missing")
    other = annotate(PERF_618.read_text(), vsym)
    assert other.kaslr_offset is None
    said = [n for n in other.notes if "agree on no KASLR slide" in n]
    assert len(said) == 1 and "another kernel build" in said[0]


def test_functions_holding_a_label_take_the_kernels_size(vmlinux: Path, vsym: Symbolizer, readelf: list[list[str]],
                                                          text: list[tuple[int, str]]) -> None:
    """A function that holds another symbol kallsyms prints (``__put_user_1`` and
    ``__put_user_nocheck_1``) is printed by the kernel with the size up to that symbol; faddr2line sizes
    it past its ELF size. annotate takes the kernel's size, resolve keeps faddr2line's."""
    starts = [a for a, _ in text]
    counts: dict[str, int] = {}
    for _, n in text:
        counts[n] = counts.get(n, 0) + 1
    held = []
    for f in readelf:
        if f[3] != "FUNC" or not f[2].isdigit() or counts.get(f[7]) != 1:
            continue
        start, size = int(f[1], 16), int(f[2])
        k = bisect.bisect_right(starts, start)
        if k < len(starts) and starts[k] < start + size:
            held.append((f[7], start, starts[k] - start))
    assert len(held) >= 5 and any(n == "__put_user_1" for n, _, _ in held), held
    frames = [f"{n}+0x1/{size:#x}" for n, _, size in held]
    result = annotate("".join(f"{f}\n" for f in frames), vsym, exact=True)
    assert result.all_resolved, [af.reason for af in result.unresolved]
    ref = _ref(vmlinux, vsym, [a + 1 for _, a, _ in held])
    assert [_chain(af.chain) for af in result.frames] == ref
    assert [af.matches[0].size for af in result.frames] == [size for _, _, size in held]
    for f in frames:
        with pytest.raises(SymbolNotFoundError):
            vsym.resolve(f)


def test_raw_addresses_take_the_kernels_size(vmlinux: Path, vsym: Symbolizer, readelf: list[list[str]],
                                             text: list[tuple[int, str]]) -> None:
    """A raw address is named ``sym+off/size`` with the size the kernel prints (kallsyms: up to the next
    symbol it prints, nm's next t/T/w/W address), not a larger ELF size: ``entry_SYSCALL_64`` (ELF size
    0x1ab in the Debian 6.1 vmlinux) is printed ``entry_SYSCALL_64+0x10/0x29`` by that kernel."""
    starts = [a for a, _ in text]
    at: dict[int, int] = {}
    for a in starts:
        at[a] = at.get(a, 0) + 1
    names = {n for _, n in text}
    wider = []
    for f in readelf:
        if f[3] not in ("FUNC", "NOTYPE") or not f[2].isdigit() or f[7] not in names:
            continue
        start, size = int(f[1], 16), int(f[2])
        k = bisect.bisect_right(starts, start)
        if at.get(start) == 1 and k < len(starts) and start + 1 < starts[k] < start + size:
            wider.append((f[7], start, starts[k] - start))
    assert any(n == "entry_SYSCALL_64" for n, _, _ in wider) and len(wider) >= 5, wider
    got = [vsym.resolve(f"{a + 1:#x}")[0] for _, a, _ in wider]
    assert [(r.symbol, r.offset, r.size) for r in got] == [(n, 1, size) for n, _, size in wider]
    result = annotate("".join(f"{a + 1:#x}\n" for _, a, _ in wider), vsym, exact=True)
    assert [f"in {n}+0x1/{size:#x}" for n, _, size in wider if f"in {n}+0x1/{size:#x}\n" not in result.text] == []
    name, start, size = next(w for w in wider if w[0] == "entry_SYSCALL_64")
    cli = subprocess.run([sys.executable, "-m", "ksym", "resolve", "--vmlinux", str(vmlinux), f"{start + 0x10:#x}"],
                         capture_output=True, text=True, check=False, timeout=600)
    assert cli.stdout.splitlines()[0] == f"{start + 0x10:#x} ({name}+0x10/{size:#x}):", cli


def test_resolve_keeps_faddr2line_rule(vmlinux: Path, vsym: Symbolizer) -> None:
    """``ksym resolve`` / ``ksym faddr2line`` answer a label as scripts/faddr2line does (FUNC symbols
    only: no match), byte for byte."""
    with pytest.raises(SymbolNotFoundError):
        vsym.resolve(ISSUE_FRAME)
    script = find_faddr2line()
    if script is None:
        missing("the kernel's scripts/faddr2line is missing: run tools/fetch-testdata.sh")
    specs = [ISSUE_FRAME, "ip_local_out+0x17/0x70"]
    ref = faddr2line(vmlinux, specs, script)
    got = subprocess.run([sys.executable, "-m", "ksym", "faddr2line", str(vmlinux), *specs], capture_output=True,
                         text=True, check=False, timeout=600)
    assert got.stdout == ref.stdout and "no match for entry_SYSCALL_64_after_hwframe" in ref.stderr
    assert [ln for ln in got.stderr.splitlines() if ln.startswith("no match")] == \
        [ln for ln in ref.stderr.splitlines() if ln.startswith("no match")]


def test_resolve_in_the_kallsyms_view(vmlinux: Path, vsym: Symbolizer, sites: list[LabelSite]) -> None:
    """``resolve(frame, view=SymbolView.KALLSYMS)`` (the public API dropcapture uses for BPF stacks): a
    label resolves at its address, as addr2line -fi gives it there, with nm's size; the default is unchanged."""
    for s in [s for s in sites if s.label == "entry_SYSCALL_64_after_hwframe"][:2]:
        got = vsym.resolve(s.frame, view=SymbolView.KALLSYMS)
        assert [(r.symbol, r.offset, r.size, r.address) for r in got] == [(s.label, s.offset, s.size, s.ret)]
        assert [_chain(r.chain) for r in got] == _ref(vmlinux, vsym, [s.ret])
    got = vsym.resolve(ISSUE_FRAME, view=SymbolView.KALLSYMS)
    assert [_chain(r.chain) for r in got] == _ref(vmlinux, vsym, [_issue_address(vsym)])
    with pytest.raises(SymbolNotFoundError):
        vsym.resolve(ISSUE_FRAME, view=SymbolView.FADDR2LINE)


# --------------------------------------------------------------------------------------------------
# Item 11: build ids


def _cli(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ksym", "annotate", *args], input=stdin, capture_output=True,
                          text=True, check=False, timeout=600, env=env)


def test_dump_of_another_build_is_refused_unless_forced(vmlinux: Path, vsym: Symbolizer, sites: list[LabelSite],
                                                        tmp_path: Path) -> None:
    assert vsym.build_id and vsym.build_id != OTHER_BUILD_ID
    cache = ["--cache-dir", str(tmp_path / "cache")]
    frames = "Call Trace:\n" + "".join(f" {s.frame}\n" for s in sites[:3])
    dump = f"CPU: 0 PID: 1 Comm: x\nBuild ID: {OTHER_BUILD_ID}\n" + frames
    r = _cli("--vmlinux", str(vmlinux), *cache, stdin=dump)
    assert r.returncode == EXIT_NO_FILE and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and OTHER_BUILD_ID in r.stderr and vsym.build_id in r.stderr
    assert "--force" in r.stderr
    forced = _cli("--vmlinux", str(vmlinux), "--force", *cache, stdin=dump)
    assert forced.returncode == EXIT_OK, forced.stderr
    blocks = re.split(r"\n (?=\S)", forced.stdout)[1:]
    assert len(blocks) == 3 and all("unverified: the dump's build id is not this vmlinux's" in b for b in blocks)
    rows = [json.loads(ln) for ln in _cli("--vmlinux", str(vmlinux), "--force", "--json", *cache,
                                           stdin=dump).stdout.splitlines()]
    assert len(rows) == 3 and all(r["verified"] is False and r["unverified"] for r in rows)
    md = _cli("--vmlinux", str(vmlinux), "--force", "--format", "markdown", "--offline", *cache, stdin=dump)
    assert md.returncode == EXIT_OK and len(re.findall(r"^### #\d.*unverified: ", md.stdout, re.MULTILINE)) == 3
    page = _cli("--vmlinux", str(vmlinux), "--force", "--format", "html", "--offline", *cache, stdin=dump)
    assert page.returncode == EXIT_OK and page.stdout.count(">unverified</span>") == 3
    # the vmlinux's own build id: annotated, verified
    own = _cli("--vmlinux", str(vmlinux), "--json", *cache, stdin=f"Build ID: {vsym.build_id}\n" + frames)
    assert own.returncode == EXIT_OK, own.stderr
    assert all(json.loads(ln)["verified"] for ln in own.stdout.splitlines())
    # the 6.18 captures, saved with their build id: refused; forced, every frame is marked
    for sample in (SAMPLE_618, PERF_618):
        if not sample.is_file():
            continue
        text = f"# build-id: {OTHER_BUILD_ID}\n" + sample.read_text()
        r = _cli("--vmlinux", str(vmlinux), *cache, stdin=text)
        assert r.returncode == EXIT_NO_FILE and r.stdout == "" and OTHER_BUILD_ID in r.stderr
        rows = [json.loads(ln) for ln in _cli("--vmlinux", str(vmlinux), "--force", "--json", *cache,
                                               stdin=text).stdout.splitlines()]
        assert rows and all(r["verified"] is False for r in rows)
        assert any(r["status"] == "resolved" for r in rows)  # 6.1 lines for 6.18 frames: only ever unverified


def test_no_debug_file_says_how_to_give_one(tmp_path: Path) -> None:
    """No --vmlinux and a dump naming a build id no debug file has, in an environment of its own
    (no KSYM_VMLINUX, no DEBUGINFOD_URLS, an empty home and cache), offline and not."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"),
           "KSYM_CACHE_DIR": str(home / "ksym"), "PYTHONPATH": os.environ.get("PYTHONPATH", ""), "LC_ALL": "C"}
    dump = f"Build ID: {OTHER_BUILD_ID}\n ip_local_out+0x17/0x70\n"
    for extra in (["--offline"], []):
        r = _cli(*extra, stdin=dump, env=env)
        assert r.returncode == EXIT_NO_FILE, r.stderr
        assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
        assert OTHER_BUILD_ID in r.stderr and "--vmlinux" in r.stderr and "DEBUGINFOD_URLS" in r.stderr


def test_forced_records_are_unverified_in_the_api(vsym: Symbolizer, sites: list[LabelSite]) -> None:
    text = "Call Trace:\n" + "".join(f" {s.frame}\n" for s in sites[:2])
    result = annotate(text, vsym, unverified="forced")
    assert all(af.unverified == "forced" for af in result.frames)
    assert result.text.count("unverified: forced") == 2
    assert isinstance(result, AnnotatedText) and annotate(text, vsym).frames[0].unverified is None
