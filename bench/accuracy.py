"""Accuracy of ksym against the anchors it must agree with, on a real kernel.

* addresses sampled across kernel text (function entries, instruction boundaries inside functions,
  return addresses = the instruction after each ``call``), each compared level by level with binutils
  ``addr2line -a -f -i`` (function, raw file, line, discriminator, depth);
* ``sym+off`` specs of every shape faddr2line accepts, compared as TEXT with the kernel's own
  ``scripts/faddr2line`` (ksym's CLI run once over all specs; the script in two parallel batches).

Used by bench/run.py (full run) and tests/test_bench_accuracy.py (reduced run in CI).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

from anchors import Frame, addr2line_batch, faddr2line

from ksym import Symbolizer

SHF_EXECINSTR = 0x4
STT_FUNC = 2

#: The spec shapes sampled, with their share of the spec budget (they add up to 1).
SPEC_SHAPES: dict[str, float] = {
    "duplicate-name": 0.16,
    ".cold": 0.07,
    ".isra": 0.07,
    ".constprop": 0.07,
    ".part": 0.07,
    "decimal-offset": 0.10,
    "hex-offset": 0.10,
    "size-right": 0.12,
    "size-wrong": 0.06,
    "offset==size": 0.09,
    "offset>size": 0.09,
}


# ---------------------------------------------------------------------------------------------- addresses


@dataclass(frozen=True)
class AddressSample:
    address: int
    kind: str  # "entry" | "insn" | "return"


@dataclass
class AddressReport:
    total: int = 0
    agree: int = 0
    by_kind: dict[str, list[int]] = field(default_factory=dict)  # kind -> [agree, total]
    mismatches: list[tuple[AddressSample, list[Frame], list[Frame]]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def percent(self) -> float:
        return 100.0 * self.agree / self.total if self.total else 0.0


def text_functions(sym: Symbolizer) -> list[int]:
    """Indices of the FUNC symbols with a size that lie in executable sections."""
    exe = {s.index for s in sym.sections if s.flags & SHF_EXECINSTR}
    st = sym.symbols
    return [i for i in range(len(st))
            if st.infos[i] & 0xF == STT_FUNC and st.sizes[i] > 0 and st.shndx[i] in exe]


def _code(sym: Symbolizer, f: BinaryIO, index: int) -> tuple[int, bytes]:
    st = sym.symbols
    sec = next(s for s in sym.sections if s.index == st.shndx[index])
    start, size = int(st.values[index]), int(st.sizes[index])
    if sec.type == 8:  # SHT_NOBITS: no bytes in the file
        return start, b""
    f.seek(sec.offset + start - sec.addr)
    return start, f.read(size)


def sample_addresses(sym: Symbolizer, vmlinux: Path, n_entry: int, n_insn: int, n_return: int,
                     seed: int = 61187) -> list[AddressSample]:
    """Deterministic sample of kernel-text addresses of the three kinds (no address twice)."""
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.skipdata = True
    rng = random.Random(seed)
    funcs = text_functions(sym)
    st = sym.symbols
    seen: set[int] = set()
    out: list[AddressSample] = []

    def add(a: int, kind: str) -> bool:
        if a in seen:
            return False
        seen.add(a)
        out.append(AddressSample(a, kind))
        return True

    order = funcs[:]
    rng.shuffle(order)
    it = iter(order)
    n = 0
    while n < n_entry:
        if add(int(st.values[next(it)]), "entry"):
            n += 1
    with open(vmlinux, "rb") as f:
        n = 0
        pool = funcs[:]
        rng.shuffle(pool)
        for i in pool:
            if n >= n_insn:
                break
            start, code = _code(sym, f, i)
            insns = [ins.address for ins in md.disasm(code, start)][1:]
            if insns and add(rng.choice(insns), "insn"):
                n += 1
        n = 0
        rng.shuffle(pool)
        for i in pool:
            if n >= n_return:
                break
            start, code = _code(sym, f, i)
            rets = [ins.address + ins.size for ins in md.disasm(code, start) if ins.mnemonic == "call"]
            if rets and add(rng.choice(rets), "return"):
                n += 1
    return out


def ksym_chain(sym: Symbolizer, address: int) -> list[Frame]:
    """ksym's chain for ``address`` in addr2line's terms (``??`` record when there is no line info)."""
    chain = sym.symbolize(address).chain
    got = [(c.function, c.raw_file or "??", c.line, c.discriminator) for c in chain]
    return got or [("??", "??", 0, 0)]


def compare_addresses(sym: Symbolizer, vmlinux: Path, samples: list[AddressSample]) -> AddressReport:
    t = time.monotonic()
    ref = addr2line_batch(vmlinux, [s.address for s in samples])
    rep = AddressReport(total=len(samples))
    for s, want in zip(samples, ref):
        got = ksym_chain(sym, s.address)
        k = rep.by_kind.setdefault(s.kind, [0, 0])
        k[1] += 1
        if got == want:
            rep.agree += 1
            k[0] += 1
        else:
            rep.mismatches.append((s, got, want))
    rep.seconds = time.monotonic() - t
    return rep


# ---------------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class SpecSample:
    spec: str
    shape: str

    @property
    def name(self) -> str:
        return self.spec.split("+", 1)[0]


def sample_specs(sym: Symbolizer, n: int, seed: int = 2026) -> list[SpecSample]:
    """About ``n`` specs covering every shape of :data:`SPEC_SHAPES`, no two neighbours with one name."""
    rng = random.Random(seed)
    st = sym.symbols
    funcs = text_functions(sym)
    counts: dict[str, int] = {}
    for i in funcs:
        counts[st.names[i]] = counts.get(st.names[i], 0) + 1
    names = sorted(counts)
    plain = [nm for nm in names if "." not in nm]

    def size_of(name: str) -> int:
        matches = sym.symbols.faddr2line_matches(name)
        return min((m.size or m.symbol.elf_size or 1) for m in matches) if matches else 1

    def pick(pool: list[str], k: int) -> list[str]:
        return rng.sample(pool, min(k, len(pool)))

    out: list[SpecSample] = []
    budget = {shape: max(1, round(n * share)) for shape, share in SPEC_SHAPES.items()}
    dups = [nm for nm in names if counts[nm] > 1]
    for j, nm in enumerate(pick(dups, budget["duplicate-name"])):
        off = rng.randrange(size_of(nm))
        out.append(SpecSample(f"{nm}+{off:#x}" if j % 2 else f"{nm}+{off}", "duplicate-name"))
    for suffix in (".cold", ".isra", ".constprop", ".part"):
        pool = [nm for nm in names if suffix in nm]
        for j, nm in enumerate(pick(pool, budget[suffix])):
            size = size_of(nm)
            off = rng.randrange(size)
            spec = (f"{nm}+{off}", f"{nm}+{off:#x}", f"{nm}+{off:#x}/{size:#x}")[j % 3]
            out.append(SpecSample(spec, suffix))
    for nm in pick(plain, budget["decimal-offset"]):
        out.append(SpecSample(f"{nm}+{rng.randrange(size_of(nm))}", "decimal-offset"))
    for nm in pick(plain, budget["hex-offset"]):
        out.append(SpecSample(f"{nm}+{rng.randrange(size_of(nm)):#x}", "hex-offset"))
    for j, nm in enumerate(pick(plain, budget["size-right"])):
        size = size_of(nm)
        off = rng.randrange(size)
        out.append(SpecSample(f"{nm}+{off:#x}/{size:#x}" if j % 2 else f"{nm}+{off}/{size}", "size-right"))
    for nm in pick(plain, budget["size-wrong"]):
        size = size_of(nm)
        wrong = size + rng.choice((-1, 1)) * rng.randrange(1, 64)
        out.append(SpecSample(f"{nm}+{rng.randrange(max(1, min(size, wrong))):#x}/{max(wrong, 1):#x}",
                              "size-wrong"))
    for j, nm in enumerate(pick(plain, budget["offset==size"])):
        size = size_of(nm)
        out.append(SpecSample(f"{nm}+{size:#x}" if j % 2 else f"{nm}+{size}/{size:#x}", "offset==size"))
    for nm in pick(plain, budget["offset>size"]):
        out.append(SpecSample(f"{nm}+{size_of(nm) + rng.randrange(1, 256):#x}", "offset>size"))
    rng.shuffle(out)
    # faddr2line's output is split per spec by symbol name: keep equal names apart
    for i in range(1, len(out)):
        if out[i].name == out[i - 1].name:
            swap = next((j for j in range(len(out)) if out[j].name not in
                         {out[i - 1].name, out[min(i + 1, len(out) - 1)].name}
                         and (j == 0 or out[j - 1].name != out[i].name)
                         and (j + 1 >= len(out) or out[j + 1].name != out[i].name)), None)
            if swap is not None:
                out[i], out[swap] = out[swap], out[i]
    return out


_HEADER = re.compile(r"^(?P<name>\S+)\+\S+/\S+:$")
_SKIP = re.compile(r"^skipping (?P<name>\S+) address at ")


def output_units(stdout: str) -> list[list[str]]:
    """Split faddr2line-style stdout into units: one per resolved block, one per ``skipping`` line."""
    units: list[list[str]] = []
    new = True
    for line in stdout.splitlines():
        if not line:
            new = True
        elif line.startswith("skipping "):
            units.append([line])
            new = True
        elif new or not units:
            units.append([line])
            new = False
        else:
            units[-1].append(line)
    return units


def _unit_name(unit: list[str]) -> str | None:
    m = _SKIP.match(unit[0]) or _HEADER.match(unit[0])
    return m["name"] if m else None


def units_per_spec(stdout: str, specs: list[SpecSample]) -> list[list[str]]:
    """The text each spec produced, attributed by symbol name (neighbouring specs have distinct names)."""
    units = output_units(stdout)
    out: list[list[str]] = []
    k = 0
    for s in specs:
        mine: list[str] = []
        while k < len(units) and _unit_name(units[k]) == s.name:
            mine.append("\n".join(units[k]))
            k += 1
        out.append(mine)
    if k != len(units):  # leftovers: attach them to the last spec so they show up as a mismatch
        out[-1] = out[-1] + ["\n".join(u) for u in units[k:]]
    return out


@dataclass
class SpecReport:
    total: int = 0
    agree: int = 0
    text_identical: bool = False
    no_match_identical: bool = False
    by_shape: dict[str, list[int]] = field(default_factory=dict)
    mismatches: list[tuple[SpecSample, str, str]] = field(default_factory=list)
    no_match_diff: list[str] = field(default_factory=list)
    ksym_seconds: float = 0.0
    faddr2line_seconds: float = 0.0
    faddr2line_cached: str | None = None  # date of the reused anchor run, None when run now
    blocks: int = 0

    @property
    def percent(self) -> float:
        return 100.0 * self.agree / self.total if self.total else 0.0


def run_ksym_cli(vmlinux: Path, cache_dir: Path, specs: list[str],
                 index_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``ksym resolve`` over ``specs``: with the vmlinux, or with ``index_file`` (``--index``) instead."""
    image = ["--index", str(index_file)] if index_file is not None else ["--vmlinux", str(vmlinux)]
    return subprocess.run(
        [sys.executable, "-m", "ksym", "resolve", *image, "--cache-dir", str(cache_dir), *specs],
        check=False, capture_output=True, text=True, timeout=1800, env={**os.environ, "LC_ALL": "C"},
    )


def faddr2line_parallel(vmlinux: Path, script: Path, specs: list[str], parts: int = 2) -> tuple[str, str]:
    """scripts/faddr2line over ``specs`` in ``parts`` parallel runs, joined into what one run prints."""
    size = (len(specs) + parts - 1) // parts
    chunks = [specs[i: i + size] for i in range(0, len(specs), size)]
    with ThreadPoolExecutor(len(chunks)) as pool:
        results = list(pool.map(lambda c: faddr2line(vmlinux, c, script), chunks))
    out = ""
    for r in results:
        lines = r.stdout.splitlines(keepends=True)
        if any(ln.strip() and not ln.startswith("skipping") for ln in out.splitlines()):
            # one run puts a blank line before every block but the first: restore it before this
            # chunk's first block (it may follow some "skipping" lines)
            k = next((i for i, ln in enumerate(lines) if ln.strip() and not ln.startswith("skipping")), None)
            if k is not None:
                lines.insert(k, "\n")
        out += "".join(lines)
    return out, "".join(r.stderr for r in results)


def _anchor_key(vmlinux: Path, script: Path, specs: list[str]) -> str:
    h = hashlib.sha256()
    st = vmlinux.stat()
    h.update(f"{vmlinux.resolve()}:{st.st_size}:{int(st.st_mtime)}\n".encode())
    h.update(script.read_bytes())
    h.update("\n".join(specs).encode())
    return h.hexdigest()[:20]


def faddr2line_cached(vmlinux: Path, script: Path, specs: list[str], cache: Path | None,
                      ) -> tuple[str, str, float, str | None]:
    """Run (or reuse a stored run of) scripts/faddr2line: stdout, stderr, seconds, date reused or None.

    The anchor takes seconds per spec; its output for the same vmlinux, script and spec list is kept
    under ``cache`` (bench/.cache) so a re-run of the benchmark need not wait for it again.
    """
    path = cache / f"faddr2line-{_anchor_key(vmlinux, script, specs)}.json" if cache else None
    running = path.with_suffix(".running") if path is not None else None
    while running is not None and path is not None and running.is_file() and not path.is_file():
        # another invocation is producing this very anchor output: wait for it rather than run it twice
        try:
            os.kill(int(running.read_text().split()[0]), 0)
        except (OSError, ValueError, IndexError):
            break
        time.sleep(5)
    if path is not None and path.is_file():
        rec = json.loads(path.read_text())
        return rec["stdout"], rec["stderr"], float(rec["seconds"]), str(rec["date"])
    if running is not None:
        running.parent.mkdir(parents=True, exist_ok=True)
        running.write_text(f"{os.getpid()}\n")
    t = time.monotonic()
    try:
        out, err = faddr2line_parallel(vmlinux, script, specs)
    finally:
        if running is not None:
            running.unlink(missing_ok=True)
    secs = time.monotonic() - t
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"stdout": out, "stderr": err, "seconds": secs, "specs": specs,
                                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}))
    return out, err, secs, None


def _no_match(stderr: str) -> list[str]:
    return sorted(ln for ln in stderr.splitlines() if ln.startswith("no match"))


def compare_specs(vmlinux: Path, script: Path, cache_dir: Path, samples: list[SpecSample],
                  anchor_cache: Path | None = None, index_file: Path | None = None) -> SpecReport:
    """ksym's text for ``samples`` (from the vmlinux, or from ``index_file``) against scripts/faddr2line
    run on the vmlinux."""
    specs = [s.spec for s in samples]
    t = time.monotonic()
    got = run_ksym_cli(vmlinux, cache_dir, specs, index_file)
    rep = SpecReport(total=len(samples), ksym_seconds=time.monotonic() - t)
    ref_out, ref_err, rep.faddr2line_seconds, rep.faddr2line_cached = faddr2line_cached(
        vmlinux, script, specs, anchor_cache)
    rep.text_identical = got.stdout == ref_out
    rep.no_match_identical = _no_match(got.stderr) == _no_match(ref_err)
    if not rep.no_match_identical:
        a, b = set(_no_match(got.stderr)), set(_no_match(ref_err))
        rep.no_match_diff = [f"ksym only: {x}" for x in sorted(a - b)] + [f"faddr2line only: {x}"
                                                                          for x in sorted(b - a)]
    no_match_ref = set(_no_match(ref_err))
    no_match_got = set(_no_match(got.stderr))
    rep.blocks = sum(1 for u in output_units(ref_out) if not u[0].startswith("skipping"))
    for s, mine, theirs in zip(samples, units_per_spec(got.stdout, samples), units_per_spec(ref_out, samples)):
        k = rep.by_shape.setdefault(s.shape, [0, 0])
        k[1] += 1
        nm = f"no match for {s.spec}"
        if mine == theirs and (nm in no_match_got) == (nm in no_match_ref):
            rep.agree += 1
            k[0] += 1
        else:
            ours = "\n\n".join(mine) + (f"\n[stderr] {nm}" if nm in no_match_got else "")
            ref = "\n\n".join(theirs) + (f"\n[stderr] {nm}" if nm in no_match_ref else "")
            rep.mismatches.append((s, ours, ref))
    return rep
