"""Read a saved ``/proc/kallsyms`` and work out the KASLR slide of the kernel it came from.

``/proc/kallsyms`` lines are ``ffffffff81000000 T _text`` for vmlinux symbols and
``ffffffffc0a1b000 t nft_do_chain\\t[nf_tables]`` for module symbols. Read without privilege
(``kernel.kptr_restrict``, not root) every address is zero; :func:`load_kallsyms` refuses such a file
with an error saying how to save a usable one.

The KASLR slide is ``runtime address - link-time address`` of vmlinux symbols:

* :func:`kaslr_offset_from_kallsyms` anchors on ``_text`` (or ``_stext``) and checks that a spread
  of other unique vmlinux symbols agree, which also catches a vmlinux from a different build;
* :func:`kaslr_offset_from_frames` uses frames that print both an address and ``func+off`` (perf
  script, bpftrace ``kstack(perf)``, ftrace ``sym-addr``, old oopses, dropwatch): each gives
  ``address - (link_address(func) + off)``; a strict majority must agree, and the result must be
  aligned (2 MiB: the x86-64 KASLR granularity).

``link_address_of`` is any callable giving a vmlinux symbol's link-time address (``None`` when
unknown), e.g. a lookup in the debug vmlinux's ``.symtab``.

The other way round, :meth:`Kallsyms.locate` turns a runtime address into ``name+offset/size [module]``
the way the kernel's own stack dumps print it (dropcapture symbolizes BPF stack traces with it, reading
the running kernel's table with ``load_kallsyms(KALLSYMS_PATH)``).
"""

from __future__ import annotations

import os
import re
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from .errors import EXIT_UNRESOLVED, BadFileError, FileNotFoundKsymError, KsymError
from .parse import StackFrame
from .records import NamedTuple

__all__ = [
    "KALLSYMS_PATH",
    "KASLR_ALIGN_X86_64",
    "Kallsyms",
    "KallsymsEntry",
    "KallsymsError",
    "KallsymsHiddenError",
    "KallsymsSymbol",
    "KaslrError",
    "kaslr_offset_from_frames",
    "kaslr_offset_from_kallsyms",
    "load_kallsyms",
    "parse_kallsyms",
]

#: The running kernel's symbol table.
KALLSYMS_PATH = "/proc/kallsyms"

#: x86-64 KASLR moves the kernel in CONFIG_PHYSICAL_ALIGN steps: 2 MiB.
KASLR_ALIGN_X86_64 = 0x200000

#: Symbols the kallsyms check tries besides a sample of unique global text symbols.
_CHECK_SYMBOLS = ("_stext", "_etext", "_sinittext", "start_kernel", "do_syscall_64", "schedule", "_printk")


class KallsymsError(BadFileError):
    """The kallsyms text is unusable: empty, malformed, or addresses hidden by kptr_restrict."""


class KallsymsHiddenError(KallsymsError):
    """Every address is zero: the table was read without privilege (``kernel.kptr_restrict``)."""


class KaslrError(KsymError, ValueError):
    """The KASLR slide cannot be determined, or the evidence disagrees."""

    exit_code = EXIT_UNRESOLVED


@dataclass(frozen=True)
class KallsymsEntry:
    """One ``/proc/kallsyms`` line."""

    address: int
    #: nm-style type letter: ``T``/``t`` text, ``D``/``d`` data, ``B``/``b`` bss, ``R``/``r``, ``W``...
    type: str
    name: str
    #: Module name for ``[module]`` symbols, ``None`` for vmlinux.
    module: str | None = None

    @property
    def is_text(self) -> bool:
        return self.type in "TtWw"


@dataclass(frozen=True)
class KallsymsSymbol:
    """Where a runtime address falls, as the kernel prints it: ``name+offset/size`` (`` [module]`` for a
    module's symbol). ``size`` runs to the next kallsyms address (0 for the last symbol)."""

    name: str
    offset: int
    size: int
    #: Module name for ``[module]`` symbols, ``None`` for vmlinux.
    module: str | None = None

    def __str__(self) -> str:
        text = f"{self.name}+{self.offset:#x}/{self.size:#x}"
        return f"{text} [{self.module}]" if self.module else text

    @property
    def short(self) -> str:
        """``name+0xoff`` without the size, as bcc and perf print frames."""
        return f"{self.name}+{self.offset:#x}"


class _AddressTable(NamedTuple):
    """The located symbols of a table by address (file order among equal addresses)."""

    starts: tuple[int, ...]
    entries: tuple[KallsymsEntry, ...]


@dataclass(frozen=True)
class Kallsyms:
    """A parsed kallsyms table: name to address(es), and address to symbol."""

    entries: tuple[KallsymsEntry, ...]
    _by_name: dict[str, tuple[KallsymsEntry, ...]] = field(init=False, repr=False, compare=False)
    _sorted: tuple[KallsymsEntry, ...] = field(init=False, repr=False, compare=False)
    _starts: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[str, list[KallsymsEntry]] = {}
        for e in self.entries:
            by_name.setdefault(e.name, []).append(e)
        ordered = tuple(sorted((e for e in self.entries if e.is_text), key=lambda e: e.address))
        object.__setattr__(self, "_by_name", {k: tuple(v) for k, v in by_name.items()})
        object.__setattr__(self, "_sorted", ordered)
        object.__setattr__(self, "_starts", tuple(e.address for e in ordered))

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    @property
    def modules(self) -> frozenset[str]:
        return frozenset(e.module for e in self.entries if e.module is not None)

    def lookup(self, name: str, module: str | None = None) -> tuple[KallsymsEntry, ...]:
        """Every entry called ``name`` (in ``module``; ``None``: vmlinux), in file order."""
        return tuple(e for e in self._by_name.get(name, ()) if e.module == module)

    def address_of(self, name: str, module: str | None = None) -> int | None:
        """Runtime address of a *unique* symbol ``name`` (``None`` if absent or ambiguous)."""
        found = self.lookup(name, module)
        addresses = {e.address for e in found}
        return found[0].address if len(addresses) == 1 else None

    def symbolize(self, address: int) -> tuple[KallsymsEntry, int] | None:
        """The text symbol ``address`` falls in, and the offset into it (``None`` below every symbol)."""
        i = bisect_right(self._starts, address) - 1
        if i < 0:
            return None
        # several names can share an address (aliases): prefer the first global one there
        start = self._starts[i]
        j = i
        while j > 0 and self._starts[j - 1] == start:
            j -= 1
        same = self._sorted[j : i + 1]
        best = next((e for e in same if e.type in "TW"), same[0])
        return best, address - start

    def locate(self, address: int) -> KallsymsSymbol | None:
        """The symbol a runtime ``address`` falls in, sized and named as the kernel's stack dumps do.

        Unlike :meth:`symbolize` every symbol counts, data too, but absolute (``a``/``A``) and undefined
        (``U``) ones and those at address zero: a symbol's size is the distance to the next higher address
        of the table, and among symbols sharing an address the first in the file names it. None below
        every symbol and past a symbol's end.
        """
        starts, entries = self._address_table
        i = bisect_right(starts, address) - 1
        if i < 0:
            return None
        start = starts[i]
        j = bisect_right(starts, start)
        size = starts[j] - start if j < len(starts) else 0
        if size and address - start >= size:
            return None
        e = entries[bisect_left(starts, start)]
        return KallsymsSymbol(e.name, address - start, size, e.module)

    @cached_property
    def _address_table(self) -> _AddressTable:
        # built on the first locate(): the KASLR users of this table never need it
        located = sorted((e for e in self.entries if e.address and e.type not in "aAuU"), key=lambda e: e.address)
        return _AddressTable(tuple(e.address for e in located), tuple(located))

    @property
    def text_address(self) -> int | None:
        """Runtime address of ``_text`` (``_stext`` when ``_text`` is missing)."""
        return self.address_of("_text") or self.address_of("_stext")


_LINE = re.compile(r"([0-9a-fA-F]+)\s+([A-Za-z?])\s+(\S+)(?:\s+\[([^\]\s]+)\])?\s*")


def parse_kallsyms(text: str, source: str = "kallsyms") -> Kallsyms:
    """Parse kallsyms ``text``; ``source`` names it in error messages."""
    entries: list[KallsymsEntry] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        try:
            if len(parts) not in (3, 4) or len(parts[1]) != 1:
                raise ValueError(line)
            module = None
            if len(parts) == 4:
                if not (parts[3].startswith("[") and parts[3].endswith("]") and len(parts[3]) > 2):
                    raise ValueError(line)
                module = parts[3][1:-1]
            entries.append(KallsymsEntry(int(parts[0], 16), parts[1], parts[2], module))
        except ValueError:
            raise KallsymsError(f"{source}:{lineno}: not a kallsyms line: {line[:80]!r}") from None
    if not entries:
        raise KallsymsError(f"{source}: no symbols (empty or not a kallsyms file)")
    if all(e.address == 0 for e in entries):
        raise KallsymsHiddenError(
            f"{source}: every address is zero: /proc/kallsyms was read without privilege "
            "(kernel.kptr_restrict hides addresses from non-root readers); save it as root, "
            "e.g. `sudo cat /proc/kallsyms > kallsyms.txt`"
        )
    return Kallsyms(tuple(entries))


def load_kallsyms(path_or_text: str | os.PathLike[str]) -> Kallsyms:
    """Load a saved ``/proc/kallsyms``: a path, or the text itself (a ``str`` holding a newline).

    Raises :class:`~ksym.errors.FileNotFoundKsymError` for a missing file and
    :class:`KallsymsError` for an unusable one (malformed, empty, addresses zeroed).
    """
    if isinstance(path_or_text, str) and ("\n" in path_or_text or _LINE.fullmatch(path_or_text)):
        return parse_kallsyms(path_or_text, "kallsyms text")
    path = Path(path_or_text)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise FileNotFoundKsymError(f"{path}: no such kallsyms file") from exc
    except OSError as exc:
        raise FileNotFoundKsymError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return parse_kallsyms(data.decode("utf-8", "replace"), str(path))


def _check_names(kallsyms: Kallsyms, limit: int = 24) -> list[str]:
    names = [n for n in _CHECK_SYMBOLS if kallsyms.address_of(n) is not None]
    globals_ = [e.name for e in kallsyms._sorted if e.module is None and e.type == "T"]
    if globals_:
        step = max(1, len(globals_) // limit)
        names.extend(n for n in globals_[::step] if kallsyms.address_of(n) is not None and n not in names)
    return names


def kaslr_offset_from_kallsyms(
    kallsyms: Kallsyms,
    link_address_of: Callable[[str], int | None],
    *,
    page_size: int = 0x1000,
) -> int:
    """KASLR slide = runtime ``_text`` (from kallsyms) - link-time ``_text`` (from the vmlinux).

    Falls back to ``_stext``. A spread of other unique vmlinux symbols must agree (at most 10%
    may differ, e.g. same-named statics); otherwise the kallsyms and the vmlinux come from
    different builds and :class:`KaslrError` is raised. The slide must be page aligned.
    """
    anchor = None
    for name in ("_text", "_stext"):
        runtime = kallsyms.address_of(name)
        link = link_address_of(name)
        if runtime is not None and link is not None:
            anchor = (name, runtime - link)
            break
    if anchor is None:
        raise KaslrError("neither _text nor _stext is known on both sides (kallsyms and vmlinux)")
    name, offset = anchor
    if page_size and offset % page_size:
        raise KaslrError(f"slide {offset:#x} from {name} is not page aligned: kallsyms and vmlinux differ")
    agree = 0
    disagree: list[str] = []
    for n in _check_names(kallsyms):
        runtime = kallsyms.address_of(n)
        link = link_address_of(n)
        if runtime is None or link is None:
            continue
        if runtime - link == offset:
            agree += 1
        else:
            disagree.append(f"{n} ({runtime - link:#x})")
    if disagree and len(disagree) > max(1, (agree + len(disagree)) // 10):
        raise KaslrError(
            f"kallsyms and vmlinux disagree (different builds?): {name} gives {offset:#x}, but "
            + ", ".join(disagree[:5])
        )
    return offset


def kaslr_offset_from_frames(
    frames: Iterable[StackFrame],
    link_address_of: Callable[[str], int | None],
    *,
    alignment: int = KASLR_ALIGN_X86_64,
) -> int:
    """KASLR slide from frames that show both a runtime address and ``func+off`` (one boot).

    Each vmlinux frame (``module is None``) with ``address``, ``symbol`` and ``offset`` whose
    symbol ``link_address_of`` knows votes ``address - (link + offset)``; the most common value
    must win a strict majority of the votes and be a multiple of ``alignment`` (0: no check).
    Raises :class:`KaslrError` when there are no votes, no majority, or a misaligned winner.
    """
    votes: Counter[int] = Counter()
    for f in frames:
        if f.address is None or f.symbol is None or f.offset is None or f.module is not None:
            continue
        link = link_address_of(f.symbol)
        if link is None:
            continue
        votes[f.address - (link + f.offset)] += 1
    if not votes:
        raise KaslrError("no frame has both an address and a symbol+offset known to the vmlinux")
    (offset, count), total = votes.most_common(1)[0], sum(votes.values())
    if count * 2 <= total:
        raise KaslrError(
            f"frames disagree about the KASLR slide: {offset:#x} has only {count} of {total} votes "
            "(several boots or a different vmlinux?)"
        )
    if alignment and offset % alignment:
        raise KaslrError(f"KASLR slide {offset:#x} is not a multiple of {alignment:#x}: wrong vmlinux?")
    return offset
