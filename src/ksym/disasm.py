"""Find the call instruction that ends at a return address (the call site of a stack frame).

A frame below the top of a stack is a return address: the instruction *before* it is the ``call`` that
made the frame. :func:`call_before` finds that instruction with capstone, given a way to read image
bytes at link-time addresses (:meth:`ksym.Symbolizer.code_bytes`) and, optionally, the start of the
function the address falls in.

x86-64 has variable-length instructions, so the instruction ending at an address is found by
disassembling linearly from the start of the function (kernel text has no data between instructions),
and, when that is not possible or does not land on the address, by trying every length from the
address backwards and keeping the decodings that are a single ``call`` ending exactly there (a
5-byte ``call rel32`` first). Each architecture is one :class:`_Arch` entry in :data:`_ARCHES`: arm64
has fixed 4-byte instructions, so the ``bl``/``blr`` is simply the word before the address.

Call targets are named with a caller-supplied ``name_of(address)`` (``nf_hook_slow``,
``__x86_indirect_thunk_rax``, ``pv_ops+0x1a8``): direct calls by their target, indirect calls through a
RIP-relative memory operand by the pointer's address, in objdump's ``# <pv_ops+0x1a8>`` style.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["CallInstruction", "Instruction", "PrecedingInstruction", "call_before", "instruction_before",
           "supported_machine"]

#: Longest x86 instruction.
_X86_MAX_INSN = 15
#: Linear sweep from the function start only for functions up to this size.
_MAX_SWEEP = 0x10000

ReadBytes = Callable[[int, int], bytes]
NameOf = Callable[[int], "str | None"]


@dataclass(frozen=True)
class Instruction:
    """One decoded instruction; :func:`call_before` returns only calls (``is_call``)."""

    #: Link-time address of the instruction (``return_address - size``).
    address: int
    size: int
    #: Mnemonic as objdump spells it (``call``, ``bl``, ``blr``).
    mnemonic: str
    #: Operands in AT&T syntax (x86) / capstone's syntax (arm64), target address as printed.
    op_str: str
    #: Direct call target (link-time), or ``None`` for an indirect call.
    target: int | None = None
    #: Name of ``target`` (``nf_hook_slow``, ``foo+0x10``), or for an indirect call through memory the
    #: name of the memory operand's address; ``None`` when unknown.
    target_name: str | None = None
    #: True for ``call *%rax`` / ``call *0x10(%rip)`` / ``blr x1``.
    indirect: bool = False
    #: Raw bytes of the instruction.
    raw: bytes = b""
    #: The instruction is a call (``call``, ``bl``, ``blr``).
    is_call: bool = True

    @property
    def text(self) -> str:
        """``call nf_hook_slow``, ``call *%rax``, ``call *0x1a2b(%rip)  # <pv_ops+0x1a8>``."""
        if not self.is_call:
            return f"{self.mnemonic} {self.op_str}".rstrip()
        if self.target is not None and self.target_name:
            return f"{self.mnemonic} {self.target_name}"
        if self.target is not None:
            return f"{self.mnemonic} {self.target:#x}"
        if self.target_name:
            return f"{self.mnemonic} {self.op_str}  # <{self.target_name}>"
        return f"{self.mnemonic} {self.op_str}".rstrip()

    def fields(self) -> tuple[int, int, str, str, int | None, str | None, bool, bytes, bool]:
        """The fields in order: ``Instruction(*i.fields())`` is ``i`` (how the index stores it)."""
        return (self.address, self.size, self.mnemonic, self.op_str, self.target, self.target_name, self.indirect,
                self.raw, self.is_call)

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": f"{self.address:#x}",
            "size": self.size,
            "text": self.text,
            "mnemonic": self.mnemonic,
            "op_str": self.op_str,
            "target": f"{self.target:#x}" if self.target is not None else None,
            "target_name": self.target_name,
            "indirect": self.indirect,
            "bytes": self.raw.hex(" "),
            "is_call": self.is_call,
        }


#: The name the annotations use: the instruction before a return address is a call.
CallInstruction = Instruction


@dataclass(frozen=True)
class PrecedingInstruction:
    """What ends at an address: the instruction (``None`` when unknown) and whether the address is an
    instruction boundary (``True``), inside an instruction (``False``), or unknown (``None``)."""

    instruction: Instruction | None
    boundary: bool | None


@dataclass(frozen=True)
class _Arch:
    name: str
    #: capstone's constants, by name: capstone is imported on the first disassembly, not with this
    #: module (an annotation answered from the index disassembles nothing)
    cs_arch_name: str
    cs_mode_name: str
    max_insn: int
    #: Instruction sizes are fixed (arm64: 4): only ``return_address - max_insn`` is tried.
    fixed: bool

    @property
    def cs_arch(self) -> int:
        return int(getattr(_capstone(), self.cs_arch_name))

    @property
    def cs_mode(self) -> int:
        return int(getattr(_capstone(), self.cs_mode_name))


_ARCHES: dict[str, _Arch] = {
    "EM_X86_64": _Arch("x86-64", "CS_ARCH_X86", "CS_MODE_64", _X86_MAX_INSN, False),
    "EM_AARCH64": _Arch("arm64", "CS_ARCH_ARM64", "CS_MODE_ARM", 4, True),
}


def _capstone() -> Any:
    import capstone

    return capstone

_DISASSEMBLERS: dict[str, Any] = {}
_SWEEPERS: dict[str, Any] = {}


def supported_machine(machine: str | None) -> bool:
    """Whether :func:`call_before` can disassemble for this ELF ``e_machine`` (``EM_X86_64``)."""
    return machine in _ARCHES


def _cs(machine: str) -> Any:
    md = _DISASSEMBLERS.get(machine)
    if md is None:
        arch = _ARCHES[machine]
        capstone = _capstone()
        md = capstone.Cs(arch.cs_arch, arch.cs_mode)
        if arch.cs_arch == capstone.CS_ARCH_X86:
            md.syntax = capstone.CS_OPT_SYNTAX_ATT
        md.detail = True
        _DISASSEMBLERS[machine] = md
    return md


def _sweeper(machine: str) -> Any:
    """A capstone instance without operand details, for the linear sweep (which needs no operands)."""
    md = _SWEEPERS.get(machine)
    if md is None:
        arch = _ARCHES[machine]
        md = _capstone().Cs(arch.cs_arch, arch.cs_mode)
        _SWEEPERS[machine] = md
    return md


def _is_call(insn: Any) -> bool:
    return _capstone().CS_GRP_CALL in insn.groups


def _make(insn: Any, name_of: NameOf | None, arch: _Arch) -> Instruction:
    from capstone import x86

    mnemonic = str(insn.mnemonic)
    if mnemonic == "callq":  # capstone's AT&T spelling; objdump (binutils >= 2.36) prints "call"
        mnemonic = "call"
    if not _is_call(insn):
        return Instruction(int(insn.address), int(insn.size), mnemonic, str(insn.op_str),
                           raw=bytes(insn.bytes), indirect=False, is_call=False)
    target: int | None = None
    mem_address: int | None = None
    indirect = True
    ops = list(insn.operands)
    capstone = _capstone()
    if arch.cs_arch == capstone.CS_ARCH_ARM64:  # bl #target / blr xN
        if len(ops) == 1 and ops[0].type == capstone.arm64.ARM64_OP_IMM:
            target = ops[0].imm & ((1 << 64) - 1)
            indirect = False
    elif len(ops) == 1:
        op = ops[0]
        if op.type == x86.X86_OP_IMM:
            target = op.imm & ((1 << 64) - 1)
            indirect = False
        elif op.type == x86.X86_OP_MEM and op.mem.base == x86.X86_REG_RIP and op.mem.index == 0:
            mem_address = (insn.address + insn.size + op.mem.disp) & ((1 << 64) - 1)
    name: str | None = None
    if name_of is not None:
        if target is not None:
            name = name_of(target)
        elif mem_address is not None:
            name = name_of(mem_address)
    return Instruction(
        address=int(insn.address),
        size=int(insn.size),
        mnemonic=mnemonic,
        op_str=str(insn.op_str),
        target=target,
        target_name=name,
        indirect=indirect,
        raw=bytes(insn.bytes),
    )


def _sweep(machine: str, code: bytes, start: int, end: int) -> tuple[Any | None, bool]:
    """Linear sweep of ``code`` (at ``start``): (the instruction ending exactly at ``end``, decoded
    with details, or None; whether the sweep reached ``end`` at all: capstone stops at bytes it
    cannot decode)."""
    last = -1
    pos = start
    for address, size, _mn, _op in _sweeper(machine).disasm_lite(code, start):
        last = address
        pos = address + size
        if pos >= end:
            break
    if last >= 0 and pos == end:
        one = list(_cs(machine).disasm(code[last - start : end - start], last, 1))
        if one and one[0].size == end - last:
            return one[0], True
    return None, pos >= end


def call_before(
    return_address: int,
    read: ReadBytes,
    machine: str | None = "EM_X86_64",
    *,
    function_start: int | None = None,
    name_of: NameOf | None = None,
) -> Instruction | None:
    """The call instruction that ends exactly at ``return_address``, or ``None``.

    :param read: ``read(address, n)`` gives up to ``n`` image bytes at a link-time address.
    :param machine: ELF machine name (``EM_X86_64``); ``None`` for an unsupported one.
    :param function_start: start of the function ``return_address - 1`` is in: enables the linear
        sweep, which is exact; without it only the backward search runs.
    :param name_of: names a call target (``nf_hook_slow``, ``foo+0x10``), ``None`` when unknown.
    """
    insn = instruction_before(return_address, read, machine, function_start=function_start,
                              name_of=name_of).instruction
    return insn if insn is not None and insn.is_call else None


def instruction_before(
    return_address: int,
    read: ReadBytes,
    machine: str | None = "EM_X86_64",
    *,
    function_start: int | None = None,
    name_of: NameOf | None = None,
    boundary_hint: int | None = None,
) -> PrecedingInstruction:
    """The instruction that ends exactly at ``return_address`` (see :func:`call_before`).

    With ``function_start`` the linear sweep tells any instruction ending there, or that the address
    is inside an instruction (``boundary=False``); the backward search, used without it or when the
    sweep stops at undecodable bytes, only finds calls (``boundary=None`` when it finds none).

    :param boundary_hint: a known instruction start between ``function_start`` and the address (the
        line-table row covering ``return_address - 1``: compilers start rows at instructions). The
        sweep starts there, so it covers a few instructions instead of the whole function; when it
        does not end in a call at the address, the sweep from ``function_start`` decides.
    """
    if machine not in _ARCHES:
        return PrecedingInstruction(None, None)
    arch = _ARCHES[machine]
    md = _cs(machine)
    if arch.fixed:
        code = read(return_address - arch.max_insn, arch.max_insn)
        for insn in md.disasm(code, return_address - arch.max_insn):
            if insn.address + insn.size == return_address:
                return PrecedingInstruction(_make(insn, name_of, arch), True)
        return PrecedingInstruction(None, None)
    assert machine is not None
    if (boundary_hint is not None and 0 < return_address - boundary_hint <= _MAX_SWEEP
            and (function_start is None or boundary_hint >= function_start)):
        code = read(boundary_hint, return_address - boundary_hint + arch.max_insn)
        if len(code) >= return_address - boundary_hint:
            insn, _reached = _sweep(machine, code, boundary_hint, return_address)
            # a call is what a return address follows; anything else is settled by the full sweep
            if insn is not None and _is_call(insn):
                return PrecedingInstruction(_make(insn, name_of, arch), True)
    if function_start is not None and 0 < return_address - function_start <= _MAX_SWEEP:
        # a few bytes more: the instruction that straddles the address must decode whole
        code = read(function_start, return_address - function_start + arch.max_insn)
        if len(code) >= return_address - function_start:
            insn, reached = _sweep(machine, code, function_start, return_address)
            if insn is not None:
                return PrecedingInstruction(_make(insn, name_of, arch), True)
            if reached:
                return PrecedingInstruction(None, False)  # inside an instruction: not a return address
    # backward search: every length that decodes as one call ending at the address
    window = read(return_address - arch.max_insn, arch.max_insn)
    if len(window) != arch.max_insn:
        return PrecedingInstruction(None, None)
    found: list[Any] = []
    for size in range(1, arch.max_insn + 1):
        chunk = window[arch.max_insn - size :]
        insns = list(md.disasm(chunk, return_address - size, 1))
        if insns and insns[0].size == size and _is_call(insns[0]):
            found.append(insns[0])
    if not found:
        return PrecedingInstruction(None, None)
    # the common "call rel32" first, then the shortest decoding
    found.sort(key=lambda i: (bytes(i.bytes)[:1] != b"\xe8" or i.size != 5, i.size))
    return PrecedingInstruction(_make(found[0], name_of, arch), True)
