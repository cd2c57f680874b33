"""What one image's session holds in memory, and how a session is used.

* :class:`ImageRecord`: what is known of an image file without opening it (sections, aranges, banner,
  faddr2line's path prefix, the symbol table's size and CRC-32);
* the answers a session gives, as named records: :class:`StoredChain` (an address's inline chain),
  :class:`StoredInstruction` (the instruction before a return address) and callers' own answers
  (:data:`CallerKey`), kept together as :class:`AnswerRecords` and used through :class:`StoredAnswers`;
* :class:`Session`, what a :class:`ksym.symbolizer.Symbolizer` and a :class:`ksym.prefetch.Prefetcher`
  ask of an image's session, which two kinds give: :class:`ksym.index.ImageIndex` (the on-disk index of a
  debug file: units and answers read from and written to ksym's cache) and :class:`MemorySession` (a
  portable index file: complete, so nothing is stored; its answers live as long as the Symbolizer).

The on-disk store (:mod:`ksym.index`) is imported only by a session that uses it: a ``resolve --index
FILE`` run does without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .dwarf_image import ArangeTable, UnitRange, UnitStore
from .model import SourceLocation
from .records import NamedTuple
from .symbols import Section

if TYPE_CHECKING:
    from .symbols import SymbolTable
    from .units import CompiledUnit

__all__ = [
    "AnswerRecords",
    "AnswerStore",
    "CallerKey",
    "ImageRecord",
    "MemorySession",
    "Session",
    "StoredAnswers",
    "StoredChain",
    "StoredInstruction",
    "image_key",
]


class ImageRecord(NamedTuple):
    """What the index keeps of an image file: everything a warm run needs without opening it."""

    path: str
    build_id: str | None
    elf_type: str
    little_endian: bool
    elfclass: int
    machine: str | None
    sections: tuple[Section, ...]
    #: the length of the symbols file (``symbols.v<N>``, :meth:`ksym.symbols.SymbolTable.to_buffer`)
    symbols_size: int
    aranges: ArangeTable
    #: ``linux_banner`` (None: no such symbol)
    banner: str | None
    has_dwarf: bool
    #: how many symbols came from .dynsym
    dynamic_symbols: int
    #: faddr2line's path prefix (addr2line's file for start_kernel, cut before init/main.c)
    dir_prefix: str | None
    #: the CRC-32 of the symbols file, checked when it is mapped (0 with no symbols file, or none of the
    #: index: a portable index file's symbols are checked with their block)
    symbols_crc: int = 0

    def to_record(self) -> dict[str, Any]:
        return {
            "path": self.path, "build_id": self.build_id, "elf_type": self.elf_type,
            "little_endian": self.little_endian, "elfclass": self.elfclass, "machine": self.machine,
            "sections": [(s.index, s.name, s.type, s.flags, s.addr, s.offset, s.size) for s in self.sections],
            "symbols_size": self.symbols_size, "symbols_crc": self.symbols_crc, "aranges": self.aranges.to_record(), "banner": self.banner,
            "has_dwarf": self.has_dwarf, "dynamic_symbols": self.dynamic_symbols, "dir_prefix": self.dir_prefix,
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> ImageRecord:
        """:raises KeyError, TypeError, ValueError, IndexError: not a record of this shape."""
        build_id, machine, banner, prefix = rec["build_id"], rec["machine"], rec["banner"], rec["dir_prefix"]
        for v in (build_id, machine, banner, prefix):
            if v is not None and not isinstance(v, str):
                raise TypeError("not a string")
        if type(rec["symbols_size"]) is not int or type(rec["symbols_crc"]) is not int:
            raise TypeError("symbols file size or CRC")
        return cls(
            path=str(rec["path"]), build_id=build_id, elf_type=str(rec["elf_type"]),
            little_endian=bool(rec["little_endian"]), elfclass=int(rec["elfclass"]), machine=machine,
            sections=tuple(Section(*s) for s in rec["sections"]), symbols_size=rec["symbols_size"],
            symbols_crc=rec["symbols_crc"],
            aranges=ArangeTable.from_record(rec["aranges"]), banner=banner, has_dwarf=bool(rec["has_dwarf"]),
            dynamic_symbols=int(rec["dynamic_symbols"]), dir_prefix=prefix,
        )


class StoredChain(NamedTuple):
    """The answer for one address: its inline chain (without links) and the start of its line row."""

    chain: tuple[SourceLocation, ...]
    #: start of the line-table row covering the address, -1: none
    row_start: int

    def to_record(self) -> tuple[Any, ...]:
        return (tuple((c.function, c.file, c.line, c.column, c.discriminator, c.raw_file, c.inlined)
                      for c in self.chain), self.row_start)

    @classmethod
    def from_record(cls, rec: Sequence[Any]) -> StoredChain:
        """:raises TypeError, ValueError, IndexError: not a record of this shape."""
        return cls(tuple(SourceLocation(*loc) for loc in rec[0]), int(rec[1]))


class StoredInstruction(NamedTuple):
    """The instruction before a return address (:func:`ksym.disasm.instruction_before`)."""

    #: whether the return address is an instruction boundary (None: unknown)
    boundary: bool | None
    #: :meth:`ksym.disasm.Instruction.fields` (None: no instruction found)
    fields: tuple[Any, ...] | None

    def to_record(self) -> tuple[Any, ...]:
        return (self.boundary, self.fields)

    @classmethod
    def from_record(cls, rec: Sequence[Any]) -> StoredInstruction:
        """:raises TypeError, ValueError, IndexError: not a record of this shape."""
        boundary, fields = rec[0], rec[1]
        if boundary is not None and not isinstance(boundary, bool):
            raise TypeError("boundary")
        if fields is not None and not isinstance(fields, tuple):
            raise TypeError("fields")
        return cls(boundary, fields)


#: The key of a caller's stored answer: a tuple starting with the caller's tag (``"frame"``: annotate).
CallerKey = tuple[Any, ...]


class AnswerRecords:
    """Stored answers as records (plain tuples, as marshal writes them), by kind.

    :param chains: address → :meth:`StoredChain.to_record`
    :param instructions: (return address, function start) → :meth:`StoredInstruction.to_record`
    :param callers: a caller's key → its value (tuples, str, int, bytes, None:
        :meth:`ksym.Symbolizer.remember`)
    """

    __slots__ = ("callers", "chains", "instructions")

    def __init__(self, chains: dict[int, tuple[Any, ...]],
                 instructions: dict[tuple[int, int | None], tuple[Any, ...]], callers: dict[CallerKey, Any]) -> None:
        self.chains = chains
        self.instructions = instructions
        self.callers = callers

    def __repr__(self) -> str:
        return (f"AnswerRecords(chains={self.chains!r}, instructions={self.instructions!r}, "
                f"callers={self.callers!r})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AnswerRecords):
            return NotImplemented
        return (self.chains, self.instructions, self.callers) == (other.chains, other.instructions, other.callers)

    __hash__ = None  # type: ignore[assignment]  # mutable, as a dataclass with eq=True

    @classmethod
    def empty(cls) -> AnswerRecords:
        return cls({}, {}, {})

    def __len__(self) -> int:
        return len(self.chains) + len(self.instructions) + len(self.callers)

    def update(self, other: AnswerRecords) -> None:
        self.chains.update(other.chains)
        self.instructions.update(other.instructions)
        self.callers.update(other.callers)

    def to_record(self) -> dict[str, Any]:
        return {"chains": self.chains, "instructions": self.instructions, "callers": self.callers}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> AnswerRecords:
        """Each kind that is not a dict is taken as empty (its entries are checked when used)."""
        chains, insns, callers = rec.get("chains"), rec.get("instructions"), rec.get("callers")
        return cls(chains if isinstance(chains, dict) else {}, insns if isinstance(insns, dict) else {},
                   callers if isinstance(callers, dict) else {})


class StoredAnswers:
    """One image's stored answers, as shown with one ``view`` (how paths are displayed): read from the
    ``store`` on first use; what this session adds is written by :meth:`flush` (``store`` None: kept in
    memory only). A damaged entry reads as missing (answered again)."""

    def __init__(self, store: AnswerStore | None, key: str, view: str) -> None:
        self._store = store
        self._key = key
        self.view = view
        self._all: AnswerRecords | None = None
        self._new = AnswerRecords.empty()
        #: chains answered from what an earlier session stored
        self.stored_hits = 0

    def _records(self) -> AnswerRecords:
        if self._all is None:
            store = self._store
            self._all = store.load_answers(self._key, self.view) if store is not None else AnswerRecords.empty()
        return self._all

    # -- chains --

    def has_chain(self, address: int) -> bool:
        return address in self._records().chains

    def chain(self, address: int) -> StoredChain | None:
        rec = self._records().chains.get(address)
        if rec is None:
            return None
        try:
            got = StoredChain.from_record(rec)
        except (TypeError, ValueError, IndexError):
            return None
        if address not in self._new.chains:
            self.stored_hits += 1
        return got

    def add_chain(self, address: int, answer: StoredChain) -> None:
        self._records().chains[address] = self._new.chains[address] = answer.to_record()

    # -- instructions --

    def has_instruction(self, return_address: int, function_start: int | None) -> bool:
        return (return_address, function_start) in self._records().instructions

    def instruction(self, return_address: int, function_start: int | None) -> StoredInstruction | None:
        rec = self._records().instructions.get((return_address, function_start))
        if rec is None:
            return None
        try:
            return StoredInstruction.from_record(rec)
        except (TypeError, ValueError, IndexError):
            return None

    def add_instruction(self, return_address: int, function_start: int | None, answer: StoredInstruction) -> None:
        key = (return_address, function_start)
        self._records().instructions[key] = self._new.instructions[key] = answer.to_record()

    # -- callers' answers --

    def caller(self, key: CallerKey) -> Any:
        return self._records().callers.get(key)

    def add_caller(self, key: CallerKey, value: Any) -> None:
        self._records().callers[key] = self._new.callers[key] = value

    # -- pending --

    def take_new(self) -> AnswerRecords:
        """What this session added since the last call (a prefetch worker sends it to its parent)."""
        new, self._new = self._new, AnswerRecords.empty()
        return new

    def merge(self, new: AnswerRecords) -> None:
        """Add answers worked out elsewhere (a prefetch worker's), to be written by :meth:`flush`."""
        self._records().update(new)
        self._new.update(new)

    def flush(self) -> None:
        if len(self._new) and self._store is not None:
            self._store.save_answers(self._key, self.view, self._new)
            self._new = AnswerRecords.empty()


def image_key(build_id: str | None, content: str) -> str:
    """The key of an image's session: its build id (if any) and ``content`` (for the on-disk index the
    :func:`ksym.index.fingerprint` of the file's contents)."""
    return f"{build_id or 'nobuildid'}-{content}"



class AnswerStore(Protocol):
    """Where :class:`StoredAnswers` read and write an image's answers (:class:`ksym.index.IndexStore`)."""

    def load_answers(self, key: str, view: str) -> AnswerRecords: ...

    def save_answers(self, key: str, view: str, new: AnswerRecords) -> None: ...


class Session(UnitStore, Protocol):
    """One image's session as a Symbolizer and its prefetch use it: the units it stores (the
    :class:`ksym.dwarf_image.UnitStore` of the image's DWARF, and the packs they are in), the stored
    answers, the stored symbol table, and its lifecycle."""

    @property
    def directory(self) -> str | None:
        """Where the session stores what it learns (None: nowhere)."""
        ...

    def answers_for(self, view: str) -> StoredAnswers:
        """The image's answers as shown with ``view`` (how paths are displayed)."""
        ...

    def load_symbols(self, size: int, crc: int, sections: list[Section]) -> SymbolTable | None:
        """The stored symbol table of ``size`` bytes and CRC-32 ``crc`` (None: none)."""
        ...

    def release_symbols(self) -> None: ...

    def pack_of(self, offset: int) -> str | None:
        """The pack holding the stored unit at ``offset`` (None: not stored)."""
        ...

    def add_units(self, units: dict[int, str]) -> None:
        """Units now stored in packs (by a prefetch worker for this session)."""
        ...

    def take_new_units(self) -> dict[int, str]:
        """The units stored since the last call (a prefetch worker sends them to its parent)."""
        ...

    def write_units(self) -> None:
        """Store the units read or grown since the last call."""
        ...

    def flush(self) -> None:
        """Store what this session learnt."""
        ...

    def close(self) -> None:
        """:meth:`flush`, then release what is held."""
        ...


class MemorySession:
    """The :class:`Session` of a portable index file: the file is complete, so nothing is stored and
    nothing is learnt but the answers given, which are kept in memory for the session's life (a frame
    asked twice is answered once)."""

    directory = None

    def __init__(self) -> None:
        self._answers: StoredAnswers | None = None

    def answers_for(self, view: str) -> StoredAnswers:
        if self._answers is None or self._answers.view != view:
            self._answers = StoredAnswers(None, "", view)
        return self._answers

    def part_of(self, offset: int, address: int | None) -> int:
        return 0

    def load_unit(self, offset: int, part: int = 0) -> CompiledUnit | None:
        return None

    def unit_changed(self, unit: CompiledUnit) -> None:
        pass

    def forget_unit(self, offset: int) -> None:
        pass

    def load_unit_ranges(self) -> list[UnitRange] | None:
        return None

    def save_unit_ranges(self, ranges: list[UnitRange]) -> None:
        pass

    def load_symbols(self, size: int, crc: int, sections: list[Section]) -> SymbolTable | None:
        return None

    def release_symbols(self) -> None:
        pass

    def pack_of(self, offset: int) -> str | None:
        return None

    def add_units(self, units: dict[int, str]) -> None:
        pass

    def take_new_units(self) -> dict[int, str]:
        return {}

    def write_units(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._answers = None
