"""Where the reading of a compilation unit stopped part way (``ksym.dwarf.compile_unit(until=...)``):
the line program decoder's registers (:class:`LineDecoderState`, with the program header's constants,
:class:`LineProgramHeader`) and the top-level walk's position (:class:`WalkState`). The on-disk index
stores them with a unit read part way (:mod:`ksym.units`: ``LineTable.pending``, ``CompiledUnit.walk``)
and :mod:`ksym.dwarf` reads on from them. A unit read whole (the portable index file's) has neither, so
answering from one never loads this module."""

from __future__ import annotations

from .records import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

__all__ = ["LineDecoderState", "LineProgramHeader", "WalkState"]


class LineProgramHeader(NamedTuple):
    """The constants of a line program's header that decoding it needs."""

    #: .debug_line offset one past the program
    end: int
    min_inst_length: int
    line_base: int
    line_range: int
    opcode_base: int
    #: size of a DW_LNE_set_address operand
    address_size: int
    #: the file register at the start of every sequence (binutils: 0 for DWARF 5, else 1)
    first_file: int
    big_endian: bool
    standard_opcode_lengths: tuple[int, ...]


class LineDecoderState(NamedTuple):
    """Where the decoding of a line program stopped (``ksym.dwarf.read_line_table(until=...)``): the
    state machine's registers and the program's header, enough to decode on
    (:func:`ksym.dwarf.extend_lines`).
    Stored in the index with its unit (:meth:`to_record`, :meth:`from_record`)."""

    #: .debug_line offset of the next opcode
    position: int
    address: int
    file: int
    line: int
    column: int
    discriminator: int
    #: address of the last row of the sequence being decoded (-1: it has none yet); a row at the same
    #: address replaces that row, as in bfd
    last_address: int
    #: index in :attr:`LineTable.rows` of the first row of the sequence being decoded (rows from there
    #: on are not in :attr:`LineTable.seqs` yet)
    sequence_start: int
    header: LineProgramHeader

    def to_record(self) -> list[Any]:
        """The state as plain data for the index (a flat list: see :meth:`from_record`)."""
        h = self.header
        return [self.position, h.end, self.address, self.file, self.line, self.column, self.discriminator,
                self.last_address, self.sequence_start, h.min_inst_length, h.line_base, h.line_range,
                h.opcode_base, h.address_size, h.first_file, int(h.big_endian), tuple(h.standard_opcode_lengths)]

    @classmethod
    def from_record(cls, rec: Sequence[Any]) -> LineDecoderState:
        """The state :meth:`to_record` wrote.

        :raises ValueError: ``rec`` is not such a record."""
        if len(rec) != 17:
            raise ValueError(f"a line decoder state record of {len(rec)} fields, not 17")
        (position, end, address, file, line, column, disc, last_address, sequence_start, min_inst, line_base,
         line_range, opcode_base, address_size, first_file, big, std_lengths) = rec
        header = LineProgramHeader(int(end), int(min_inst), int(line_base), int(line_range), int(opcode_base),
                                   int(address_size), int(first_file), bool(big),
                                   tuple(int(n) for n in std_lengths))
        return cls(int(position), int(address), int(file), int(line), int(column), int(disc), int(last_address),
                   int(sequence_start), header)


class WalkState(NamedTuple):
    """Where the walk of a unit's top-level DIEs stopped (:attr:`CompiledUnit.walk`)."""

    #: .debug_info offset of the next DIE
    position: int
    #: the enclosing function node of each open DIE level (-1: none), innermost last
    stack: list[int]

    def to_record(self) -> tuple[int, list[int]]:
        return (self.position, list(self.stack))

    @classmethod
    def from_record(cls, rec: Sequence[Any]) -> WalkState:
        position, stack = rec
        return cls(int(position), [int(x) for x in stack])
