"""Run the reference tools ksym must agree with, and parse their output into comparable records.

The anchors are GNU ``addr2line`` (binutils), ``llvm-symbolizer`` (for the clang fixtures) and the
kernel's ``scripts/faddr2line``, which is a shell
script around ``readelf`` and ``addr2line --functions --pretty-print --inlines``. They are run, never
reimplemented: the test-suite compares ksym's answers with what these programs print.

No tests live here; see tests/test_anchors.py for the tests of this module itself.
"""

from __future__ import annotations

import functools
import os
import random
import re
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

__all__ = [
    "FIXTURES_BIN",
    "REPO_ROOT",
    "TESTDATA",
    "FAddr2lineResult",
    "Frame",
    "addr2line_batch",
    "assert_same_as_faddr2line",
    "dir_prefix",
    "faddr2line",
    "faddr2line_parallel",
    "find_addr2line",
    "find_faddr2line",
    "find_llvm_symbolizer",
    "find_test_vmlinux",
    "fixture",
    "func_symbols",
    "llvm_symbolizer_batch",
    "parse_addr2line_output",
    "sample_specs",
    "strip_prefix",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES_BIN = REPO_ROOT / "fixtures" / "bin"

#: One level of an inline chain as addr2line prints it: (function, file, line, discriminator).
#: Unknown parts are ``"??"`` and line 0 (addr2line prints ``??:0`` or ``file:?``).
Frame = tuple[str, str, int, int]

#: Where tools/fetch-testdata.sh puts the real test data: ``$KSYM_TESTDATA``, default /var/tmp/ksym-testdata.
TESTDATA = Path(os.environ.get("KSYM_TESTDATA") or "/var/tmp/ksym-testdata")

_FADDR2LINE_CANDIDATES = (
    TESTDATA / "linux-source-6.1" / "scripts" / "faddr2line",
    Path("/work/cache/src/linux-source-6.1/scripts/faddr2line"),
)
_VMLINUX_CANDIDATES = (
    TESTDATA / "vmlinux-6.1.0-53-cloud-amd64",
    Path("/work/cache/dbg/usr/lib/debug/boot/vmlinux-6.1.0-53-cloud-amd64"),
)

# "0x0000000000401000" as printed by addr2line -a (always 0x + 16 hex digits on 64-bit targets).
_ADDRESS_LINE = re.compile(r"^0x[0-9a-f]+$")
# "path/file.c:123", "path/file.c:123 (discriminator 4)", "??:0", "file.c:?"
_LOCATION_LINE = re.compile(r"^(?P<file>.*):(?P<line>\d+|\?)(?: \(discriminator (?P<disc>\d+)\))?$")


@dataclass(frozen=True)
class FAddr2lineResult:
    """What one run of scripts/faddr2line produced."""

    stdout: str
    stderr: str
    returncode: int




#: the module debug files the session's portable index file holds (``--modules``): ``portable_index.parent /
#: "modules"`` links to them
INDEX_FILE_MODULES = ("nf_tables.ko", "nf_conntrack.ko", "nft_ct.ko")

#: The tutorial's frames on the Debian 6.1 vmlinux: matches, a wrong size, offsets past the end, an
#: inline wrapper without a symbol (kfree_skb), decimal and hex offsets.
TUTORIAL_SPECS = (
    "__ip_local_out+219",
    "__ip_local_out+222",
    "ip_local_out+29",
    "__ip_queue_xmit+367",
    "kfree_skb+1",
    "ip_local_out+0x1d/0x70",
    "__ip_local_out+0xdb/0x160",
    "__ip_local_out+0x500",
    "__ip_local_out+0x10/0x20",
    "nf_hook_slow+0",
    "tcp_v4_rcv+145",
    "__udp4_lib_rcv+0x4bc",
)

def fixture(name: str) -> Path:
    """Path of a built fixture ELF in fixtures/bin (e.g. ``kshapes-dwarf5.elf``)."""
    return FIXTURES_BIN / name


def find_addr2line(cross_compile: str = "") -> str | None:
    """The ``addr2line`` on PATH (``aarch64-linux-gnu-addr2line`` with that ``cross_compile`` prefix), or None."""
    return shutil.which(f"{cross_compile}addr2line")


def _first_file(env: str, candidates: tuple[Path, ...]) -> Path | None:
    value = os.environ.get(env)
    if value:
        path = Path(value)
        return path if path.is_file() else None
    for path in candidates:
        if path.is_file():
            return path
    return None


def find_faddr2line() -> Path | None:
    """The kernel's scripts/faddr2line: ``$KSYM_FADDR2LINE``, else the usual test-data locations."""
    return _first_file("KSYM_FADDR2LINE", _FADDR2LINE_CANDIDATES)


def find_test_vmlinux() -> Path | None:
    """The Debian 6.1 debug vmlinux: ``$KSYM_TEST_VMLINUX``, else the usual test-data locations."""
    return _first_file("KSYM_TEST_VMLINUX", _VMLINUX_CANDIDATES)


def missing(msg: str) -> NoReturn:
    """A test's real input or tool is missing: skip it with ``msg`` printed, or fail under CI (where
    tools/setup.sh test provides everything)."""
    import pytest

    if os.environ.get("CI"):
        pytest.fail(msg)
    print(msg)
    pytest.skip(msg)


_Test = TypeVar("_Test", bound=Callable[..., Any])


def requires(present: bool, msg: str) -> Callable[[_Test], _Test]:
    """A decorator for a test that needs a tool or input (``present``): when it is absent the test is
    :func:`missing` (skipped with ``msg``, a failure under CI), never silently skipped."""

    def decorate(test: _Test) -> _Test:
        if present:
            return test

        @functools.wraps(test)
        def absent(*args: Any, **kwargs: Any) -> None:
            missing(msg)

        return absent  # type: ignore[return-value]

    return decorate


def require_test_vmlinux() -> Path:
    """:func:`find_test_vmlinux`, or :func:`missing`."""
    path = find_test_vmlinux()
    if path is None:
        missing("the Debian 6.1 debug vmlinux is missing: run tools/fetch-testdata.sh")
    return path


def _parse_location(text: str) -> tuple[str, int, int]:
    m = _LOCATION_LINE.match(text)
    if m is None:
        raise ValueError(f"unexpected addr2line location line: {text!r}")
    line = 0 if m["line"] == "?" else int(m["line"])
    return m["file"], line, int(m["disc"] or 0)


def parse_addr2line_output(text: str) -> list[list[Frame]]:
    """Split ``addr2line -a -f -i`` output into one inline chain per address, innermost first.

    Each address record is the ``-a`` address line followed by (function, location) line pairs,
    one pair per inline level. A function line can never look like ``0x<hex>`` (C identifiers do not
    start with a digit), so the address lines split the records unambiguously.
    """
    lines = text.splitlines()
    records: list[list[Frame]] = []
    i = 0
    while i < len(lines):
        if not _ADDRESS_LINE.match(lines[i]):
            raise ValueError(f"expected an address line from addr2line -a, got {lines[i]!r}")
        i += 1
        chain: list[Frame] = []
        while i < len(lines) and not _ADDRESS_LINE.match(lines[i]):
            if i + 1 >= len(lines):
                raise ValueError(f"addr2line output ends after a function line: {lines[i]!r}")
            function = lines[i]
            file, line, disc = _parse_location(lines[i + 1])
            chain.append((function, file, line, disc))
            i += 2
        records.append(chain)
    return records


def addr2line_batch(elf: Path, addresses: list[int], cross_compile: str = "") -> list[list[Frame]]:
    """Resolve every address with ONE ``addr2line -a -f -i -e ELF`` process fed on stdin.

    Returns one chain per address, in input order, innermost first; an address without line
    information gives ``[("??", "??", 0, 0)]``, exactly as addr2line prints it.
    """
    if not addresses:
        return []
    tool = find_addr2line(cross_compile)
    if tool is None:
        raise FileNotFoundError(f"{cross_compile}addr2line is not installed")
    stdin = "".join(f"{a:#x}\n" for a in addresses)
    proc = subprocess.run(
        [tool, "-a", "-f", "-i", "-e", str(elf)],
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "LC_ALL": "C"},
    )
    records = parse_addr2line_output(proc.stdout)
    if len(records) != len(addresses):
        raise ValueError(f"addr2line answered {len(records)} records for {len(addresses)} addresses")
    return records


def find_llvm_symbolizer() -> str | None:
    """``llvm-symbolizer`` on PATH (or a versioned ``llvm-symbolizer-NN``), or None."""
    found = shutil.which("llvm-symbolizer")
    if found:
        return found
    for v in range(20, 10, -1):
        found = shutil.which(f"llvm-symbolizer-{v}")
        if found:
            return found
    return None


def llvm_symbolizer_batch(elf: Path, addresses: list[int], functions: str = "short") -> list[list[Frame]]:
    """Resolve every address with ONE ``llvm-symbolizer --output-style=GNU -a --inlining
    --functions=FUNCTIONS`` process fed on stdin; records in :func:`addr2line_batch`'s shape.

    GNU style prints what addr2line prints (``file:line (discriminator N)``), except that an unknown
    line is ``:0`` (addr2line: ``:?``; both parse to line 0) and addresses have no leading zeros.
    """
    if not addresses:
        return []
    tool = find_llvm_symbolizer()
    if tool is None:
        raise FileNotFoundError("llvm-symbolizer is not installed")
    proc = subprocess.run(
        [tool, "--output-style=GNU", "-a", "--inlining", f"--functions={functions}", "-e", str(elf)],
        input="".join(f"{a:#x}\n" for a in addresses),
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "LC_ALL": "C"},
    )
    records = parse_addr2line_output(proc.stdout)
    if len(records) != len(addresses):
        raise ValueError(f"llvm-symbolizer answered {len(records)} records for {len(addresses)} addresses")
    return records


def faddr2line(elf: Path, specs: list[str], script: Path, cross_compile: str = "") -> FAddr2lineResult:
    """Run the kernel's scripts/faddr2line once with all ``specs`` (run with bash, never reimplemented);
    ``cross_compile`` is its ``CROSS_COMPILE`` (``aarch64-linux-gnu-``: that target's readelf and addr2line)."""
    env = {**os.environ, "LC_ALL": "C"}
    if cross_compile:
        env["CROSS_COMPILE"] = cross_compile
    else:
        env.pop("CROSS_COMPILE", None)
    proc = subprocess.run(
        ["bash", str(script), str(elf), *specs],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    return FAddr2lineResult(proc.stdout, proc.stderr, proc.returncode)


def func_symbols(elf: Path) -> list[tuple[str, int, int]]:
    """(name, address, st_size) of every FUNC symbol in .symtab, as ``readelf --symbols`` lists them."""
    proc = subprocess.run(
        ["readelf", "--symbols", "--wide", str(elf)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "LC_ALL": "C"},
    )
    out: list[tuple[str, int, int]] = []
    for line in proc.stdout.splitlines():
        fields = re.sub(r"\[.*\]", "", line).split()
        if len(fields) >= 8 and fields[3] == "FUNC":
            out.append((fields[7], int(fields[1], 16), int(fields[2], 0)))
    return out


def dir_prefix(elf: Path, cross_compile: str = "") -> str | None:
    """The build-directory prefix scripts/faddr2line strips, found the way it finds it.

    It resolves ``start_kernel`` with addr2line and keeps what precedes ``init/main.c``; None when
    there is no start_kernel or its file is not init/main.c (faddr2line then strips nothing).
    """
    starts = [addr for name, addr, _ in func_symbols(elf) if name == "start_kernel"]
    if not starts:
        return None
    chain = addr2line_batch(elf, [starts[0]], cross_compile)[0]
    file = chain[0][1]
    idx = file.find("init/main.c")
    if idx <= 0:
        return None
    return file[:idx]


def strip_prefix(path: str, prefix: str | None) -> str:
    """Strip ``prefix`` and any following ``./`` from the start of ``path``, as faddr2line's sed does."""
    if prefix and path.startswith(prefix):
        path = path[len(prefix):]
        while path.startswith("./"):
            path = path[2:]
    return path


def faddr2line_parallel(
    vmlinux: Path, script: Path, specs: list[str], parts: int = 2, cross_compile: str = ""
) -> tuple[str, str]:
    """Run the kernel script on chunks of ``specs`` in parallel (it takes seconds per spec); returns the
    stdout and stderr a single run over all specs would print (the script's blank-line separators
    between chunks are restored)."""
    size = (len(specs) + parts - 1) // parts
    chunks = [specs[i : i + size] for i in range(0, len(specs), size)]
    with ThreadPoolExecutor(len(chunks)) as pool:
        results = list(pool.map(lambda c: faddr2line(vmlinux, c, script, cross_compile), chunks))
    return joined_faddr2line_stdout([r.stdout for r in results]), "".join(r.stderr for r in results)


def joined_faddr2line_stdout(outs: list[str]) -> str:
    """The stdout one faddr2line-style run over all specs prints, from the stdouts of runs over
    consecutive parts of them: a run alone has not printed a block yet when it reaches its first header,
    so it puts no blank line before it; one run over all specs would, once anything printed a block
    before."""
    out = ""
    printed_block = False
    for text in outs:
        lines = text.splitlines(keepends=True)
        first_header = next((i for i, ln in enumerate(lines) if not ln.startswith("skipping")), None)
        if printed_block and first_header is not None:
            lines.insert(first_header, "\n")
        printed_block = printed_block or first_header is not None
        out += "".join(lines)
    return out


def assert_same_as_faddr2line(ref_out: str, ref_err: str, out: str, err: str, nspecs: int,
                              no_match_in_order: bool = True) -> int:
    """ksym's ``resolve`` output (``out``, ``err``) for ``nspecs`` specs is scripts/faddr2line's byte for
    byte (the first differing blocks are shown), with the same ``no match`` lines (in the same order
    unless ``no_match_in_order`` is false: a parallel reference run interleaves its stderr), and most
    specs resolved. Returns the number of blocks."""
    ref_blocks = ref_out.split("\n\n")
    got_blocks = out.split("\n\n")
    mismatches = [(a, b) for a, b in zip(ref_blocks, got_blocks) if a != b]
    assert not mismatches, "first mismatches:\n" + "\n---\n".join(f"faddr2line:\n{a}\nksym:\n{b}"
                                                                     for a, b in mismatches[:5])
    assert out == ref_out
    got_nm = [ln for ln in err.splitlines() if ln.startswith("no match")]
    ref_nm = [ln for ln in ref_err.splitlines() if ln.startswith("no match")]
    if no_match_in_order:
        assert got_nm == ref_nm
    else:
        assert sorted(got_nm) == sorted(ref_nm)
    assert len(ref_blocks) > nspecs // 2  # most samples really resolved
    return len(ref_blocks)


def sample_specs(sym: Any, n: int, seed: int) -> list[str]:
    """``n`` faddr2line inputs over a vmlinux's FUNC symbols (a :class:`ksym.Symbolizer`'s table): duplicate
    names, .cold/.isra/.constprop/.part ones, and every spelling (decimal, hex, with the right or a wrong
    size, past the end)."""
    st = sym.symbols
    rng = random.Random(seed)
    funcs = [i for i in range(len(st)) if st.infos[i] & 0xF == 2 and st.sizes[i] > 0]
    names = [st.names[i] for i in funcs]
    by_count: dict[str, int] = {}
    for nm in names:
        by_count[nm] = by_count.get(nm, 0) + 1
    dups = sorted(nm for nm, c in by_count.items() if c > 1)
    shaped = sorted({nm for nm in names if any(t in nm for t in (".cold", ".isra", ".constprop", ".part"))})
    specs: list[str] = []

    def spec_for(name: str) -> str:
        m = sym.symbols.faddr2line_matches(name)[0]
        size = m.size or m.symbol.elf_size or 1
        kind = rng.randrange(6)
        off = rng.randrange(size + 1)
        if kind == 0:
            return f"{name}+{off}"
        if kind == 1:
            return f"{name}+{off:#x}"
        if kind == 2:
            return f"{name}+{off:#x}/{size:#x}"
        if kind == 3:
            return f"{name}+{off}/{size}"
        if kind == 4:
            return f"{name}+{size:#x}" if rng.randrange(2) else f"{name}+{size + 1 + rng.randrange(64):#x}"
        return f"{name}+{off:#x}/{size + 16:#x}"  # wrong size: skipped

    for nm in rng.sample(dups, min(len(dups), n // 8)):
        specs.append(f"{nm}+{rng.randrange(1, 8)}")
    for nm in rng.sample(shaped, min(len(shaped), n // 8)):
        specs.append(spec_for(nm))
    for nm in rng.sample(names, n - len(specs)):
        specs.append(spec_for(nm))
    return specs


def call_return_addresses(sym: Any, elf: Path, rng: random.Random, nfuncs: int, cs_arch: int, cs_mode: int,
                          mnemonic: str) -> list[int]:
    """Addresses right after the ``mnemonic`` call instructions (``call`` on x86-64, ``bl`` on arm64) of
    ``nfuncs`` FUNC symbols of ``.text`` sampled with ``rng``, found with capstone: what a stack holds."""
    import capstone

    md = capstone.Cs(cs_arch, cs_mode)
    st = sym.symbols
    text = next(s for s in sym.sections if s.name == ".text")
    funcs = [i for i in range(len(st)) if st.infos[i] & 0xF == 2 and st.shndx[i] == text.index
             and 16 < st.sizes[i] < 4096]
    out: list[int] = []
    with open(elf, "rb") as f:
        for i in rng.sample(funcs, nfuncs):
            start, size = int(st.values[i]), int(st.sizes[i])
            f.seek(text.offset + start - text.addr)
            for insn in md.disasm(f.read(size), start):
                if insn.mnemonic == mnemonic:
                    out.append(insn.address + insn.size)
    return out
