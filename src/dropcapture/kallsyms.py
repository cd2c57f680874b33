"""Kernel addresses to ``func+0xoff/0xsize`` with /proc/kallsyms.

A symbol's size is the distance to the next kallsyms address, the way the kernel's own stack dumps
and ``scripts/faddr2line`` count it. Module symbols carry their module name.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

__all__ = ["KALLSYMS_PATH", "Kallsyms", "Symbol"]

KALLSYMS_PATH = "/proc/kallsyms"


@dataclass(frozen=True)
class Symbol:
    """Where an address falls: ``name+offset/size`` (in module ``module`` when set)."""

    name: str
    offset: int
    size: int
    module: str = ""

    def __str__(self) -> str:
        text = f"{self.name}+{self.offset:#x}/{self.size:#x}"
        return f"{text} [{self.module}]" if self.module else text

    @property
    def short(self) -> str:
        """``name+0xoff`` without the size, as bcc and perf print frames."""
        return f"{self.name}+{self.offset:#x}"


class Kallsyms:
    """A sorted index of the running kernel's symbols."""

    def __init__(self, text: str) -> None:
        rows: list[tuple[int, str, str]] = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            if parts[1] in ("a", "A", "U", "u"):
                # absolute and undefined symbols do not locate code
                continue
            try:
                addr = int(parts[0], 16)
            except ValueError:
                continue
            if addr == 0:
                continue
            module = parts[3].strip("[]") if len(parts) > 3 else ""
            rows.append((addr, parts[2], module))
        rows.sort(key=lambda r: r[0])
        self._addrs = [r[0] for r in rows]
        self._names = [r[1] for r in rows]
        self._mods = [r[2] for r in rows]
        self.by_name: dict[str, int] = {}
        for addr, name, mod in rows:
            if not mod:
                self.by_name.setdefault(name, addr)

    @classmethod
    def load(cls, path: str = KALLSYMS_PATH) -> Kallsyms:
        """Read /proc/kallsyms (as root, or addresses read as zero and nothing resolves)."""
        return cls(Path(path).read_text())

    def __len__(self) -> int:
        return len(self._addrs)

    @property
    def usable(self) -> bool:
        """False when the addresses are hidden (kptr_restrict) and every address read as zero."""
        return bool(self._addrs)

    def lookup(self, addr: int) -> Symbol | None:
        """The symbol containing ``addr``, or None outside every symbol."""
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0:
            return None
        start = self._addrs[i]
        # several names may share an address: take the first of the run, the size to the next address
        j = bisect.bisect_right(self._addrs, start)
        size = self._addrs[j] - start if j < len(self._addrs) else 0
        if size and addr - start >= size:
            return None
        k = bisect.bisect_left(self._addrs, start)
        return Symbol(self._names[k], addr - start, size, self._mods[k])

    def address(self, name: str) -> int | None:
        """Address of a core kernel symbol, or None."""
        return self.by_name.get(name)
