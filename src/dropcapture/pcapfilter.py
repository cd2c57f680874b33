"""``--pcap-filter``: tcpdump expressions compiled by libpcap, translated into the BPF program's C.

libpcap (``libpcap.so.0.8``, Debian package ``libpcap0.8``, loaded with ctypes) compiles the
expression to classic BPF once per link type dropcapture captures (Ethernet and raw IP:
``pcap_open_dead`` + ``pcap_compile``). :func:`cbpf_to_c` turns that program into a C function of the
probe, the approach of pwru's cbpfc: classic BPF jumps only forward, so every instruction becomes a
labelled C statement and every jump a forward ``goto``; the accumulator, the index register and the
16 scratch words are locals; loads read the packet bytes the probe captured (``ev->data``,
``ev->caplen`` of them) with the bounds checks of libpcap's own interpreter, so a load past the
captured bytes rejects the packet, as ``pcap_offline_filter`` does.

:class:`PcapProgram` also runs libpcap's interpreter (``pcap_offline_filter``) on bytes in user
space: the tests use it as the reference the kernel's verdicts must equal.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Sequence
from typing import Any, NamedTuple

from .errors import EXIT_NO_BCC, CaptureError
from .events import LINKTYPE_ETHERNET, LINKTYPE_RAW

__all__ = [
    "DLT_FOR_LINKTYPE",
    "CbpfError",
    "CbpfInsn",
    "PcapFilterError",
    "PcapMissingError",
    "PcapProgram",
    "cbpf_to_c",
    "compile_filter",
    "compile_filters",
]

#: libpcap's DLT_* value for each pcap LINKTYPE_* the probe captures (LINKTYPE_RAW 101 is DLT_RAW 12).
DLT_FOR_LINKTYPE = {LINKTYPE_ETHERNET: 1, LINKTYPE_RAW: 12}

_PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF
_LIBS = ("libpcap.so.0.8", "libpcap.so.1", "libpcap.so")
_HINT = "install libpcap (Debian/Ubuntu: apt-get install libpcap0.8; tools/dropcapture-setup.sh does it)"


class PcapFilterError(ValueError):
    """The expression does not compile (libpcap's message): a usage error."""


class PcapMissingError(CaptureError):
    """libpcap cannot be loaded (exit code 3, as for a missing bcc: a library to install)."""

    exit_code = EXIT_NO_BCC


class CbpfInsn(NamedTuple):
    """One classic BPF instruction (``struct bpf_insn``)."""

    code: int
    jt: int
    jf: int
    k: int


class _BpfInsn(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn))]


class _PcapPkthdr(ctypes.Structure):
    _fields_ = [
        ("tv_sec", ctypes.c_long),
        ("tv_usec", ctypes.c_long),
        ("caplen", ctypes.c_uint32),
        ("len", ctypes.c_uint32),
    ]


def _libpcap() -> Any:
    """The libpcap shared library with the prototypes dropcapture calls.

    :raises PcapMissingError: not installed.
    """
    errors = []
    names = list(_LIBS)
    found = ctypes.util.find_library("pcap")
    if found:
        names.append(found)
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            errors.append(str(exc))
            continue
        lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.pcap_open_dead.restype = ctypes.c_void_p
        lib.pcap_compile.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(_BpfProgram),
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_uint32,
        ]
        lib.pcap_compile.restype = ctypes.c_int
        lib.pcap_geterr.argtypes = [ctypes.c_void_p]
        lib.pcap_geterr.restype = ctypes.c_char_p
        lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
        lib.pcap_freecode.restype = None
        lib.pcap_close.argtypes = [ctypes.c_void_p]
        lib.pcap_close.restype = None
        lib.pcap_offline_filter.argtypes = [
            ctypes.POINTER(_BpfProgram),
            ctypes.POINTER(_PcapPkthdr),
            ctypes.c_char_p,
        ]
        lib.pcap_offline_filter.restype = ctypes.c_int
        return lib
    raise PcapMissingError(f"--pcap-filter needs libpcap, which cannot be loaded ({errors[0]}): {_HINT}")


class PcapProgram:
    """A compiled filter (libpcap's ``struct bpf_program``), freed by :meth:`close`."""

    def __init__(self, expr: str, linktype: int, snaplen: int) -> None:
        dlt = DLT_FOR_LINKTYPE.get(linktype)
        if dlt is None:
            raise ValueError(f"no pcap filter for link type {linktype}")
        self._lib = _libpcap()
        self._prog = _BpfProgram()
        self._compiled = False
        self.linktype = linktype
        # libpcap's snapshot length only bounds the accept value it returns; 65535 keeps it nonzero
        handle = self._lib.pcap_open_dead(dlt, max(snaplen, 65535))
        if not handle:
            raise PcapMissingError("libpcap's pcap_open_dead failed (out of memory)")
        try:
            if (
                self._lib.pcap_compile(
                    handle, ctypes.byref(self._prog), expr.encode(), 1, _PCAP_NETMASK_UNKNOWN
                )
                < 0
            ):
                msg = (self._lib.pcap_geterr(handle) or b"").decode("utf-8", "replace").strip()
                raise PcapFilterError(f"--pcap-filter {expr!r}: {msg or 'does not compile'}")
            self._compiled = True
        finally:
            self._lib.pcap_close(handle)

    @property
    def insns(self) -> tuple[CbpfInsn, ...]:
        """The classic BPF instructions."""
        p = self._prog
        return tuple(
            CbpfInsn(p.bf_insns[i].code, p.bf_insns[i].jt, p.bf_insns[i].jf, p.bf_insns[i].k)
            for i in range(p.bf_len)
        )

    def matches(self, packet: bytes, wire_len: int) -> bool:
        """libpcap's own interpreter (``pcap_offline_filter``) on ``packet`` (the captured bytes)."""
        if not self._compiled:
            raise ValueError("the pcap program is closed")
        hdr = _PcapPkthdr(0, 0, len(packet), wire_len)
        return bool(self._lib.pcap_offline_filter(ctypes.byref(self._prog), ctypes.byref(hdr), packet))

    def close(self) -> None:
        if self._compiled:
            self._compiled = False
            self._lib.pcap_freecode(ctypes.byref(self._prog))

    def __enter__(self) -> PcapProgram:  # noqa: PYI034 - typing.Self needs 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def compile_filter(expr: str, linktype: int, snaplen: int) -> tuple[CbpfInsn, ...]:
    """Classic BPF for ``expr`` on packets of ``linktype`` (1 Ethernet, 101 raw IP).

    :raises PcapFilterError: the expression does not compile (libpcap's message).
    :raises PcapMissingError: libpcap is not installed.
    """
    with PcapProgram(expr, linktype, snaplen) as prog:
        return prog.insns


def compile_filters(expr: str, snaplen: int) -> dict[int, tuple[CbpfInsn, ...]]:
    """``expr`` compiled for every link type the probe captures: {linktype: instructions}.

    An expression that compiles for neither, or to a program the probe cannot run (a loop), is a
    :class:`PcapFilterError` (for the former, libpcap's Ethernet message); one
    that only makes sense on one link type (``ether host ...`` has no meaning on raw IP) is kept for
    that one, and packets of the other type are rejected.
    """
    out: dict[int, tuple[CbpfInsn, ...]] = {}
    first: PcapFilterError | None = None
    for linktype in (LINKTYPE_ETHERNET, LINKTYPE_RAW):
        try:
            insns = compile_filter(expr, linktype, snaplen)
        except PcapFilterError as exc:
            first = first or exc
            continue
        try:
            cbpf_to_c("dc_check", insns, data_size=1)  # what the probe cannot run is told now
        except CbpfError as exc:
            raise PcapFilterError(f"--pcap-filter {expr!r}: {exc}") from None
        out[linktype] = insns
    if not out:
        assert first is not None
        raise first
    return out


# -- classic BPF -> C -------------------------------------------------------------------------------

# classes, sizes, modes, ALU/JMP operations and sources (include/pcap/bpf.h)
_LD, _LDX, _ST, _STX, _ALU, _JMP, _RET, _MISC = range(8)
_W, _H, _B = 0x00, 0x08, 0x10
_IMM, _ABS, _IND, _MEM, _LEN, _MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
_ADD, _SUB, _MUL, _DIV, _OR, _AND, _LSH, _RSH, _NEG, _MOD, _XOR = (
    0x00,
    0x10,
    0x20,
    0x30,
    0x40,
    0x50,
    0x60,
    0x70,
    0x80,
    0x90,
    0xA0,
)
_JA, _JEQ, _JGT, _JGE, _JSET = 0x00, 0x10, 0x20, 0x30, 0x40
_K, _X = 0x00, 0x08
_RVAL_A = 0x10
_TAX, _TXA = 0x00, 0x80
_MEMWORDS = 16
_SIZES = {_W: 4, _H: 2, _B: 1}
_ALU_C = {_ADD: "+", _SUB: "-", _MUL: "*", _OR: "|", _AND: "&", _XOR: "^"}
_JMP_C = {_JEQ: "==", _JGT: ">", _JGE: ">="}


class CbpfError(ValueError):
    """A classic BPF program dropcapture cannot translate (an opcode libpcap does not emit)."""


def _load(size: int, index: str) -> str:
    # big-endian load of ``size`` bytes at ev->data[index]; each byte's index is masked so the
    # verifier sees it inside the array (the bounds check before it is the real one)
    parts = []
    for i in range(size):
        idx = (
            f"(({index}) + {i}) & DC_DATA_MASK"
            if index.isidentifier()
            else f"({int(index) + i}) & DC_DATA_MASK"
        )
        shift = 8 * (size - 1 - i)
        parts.append(f"((u32)ev->data[{idx}] << {shift})" if shift else f"(u32)ev->data[{idx}]")
    return " | ".join(parts)


def cbpf_to_c(name: str, insns: Sequence[CbpfInsn], *, data_size: int) -> str:
    """A C function ``static __always_inline u32 name(struct dc_event *ev)`` returning nonzero when
    the classic BPF program accepts the captured packet (``ev->data``, ``ev->caplen`` bytes of
    ``ev->wire_len``), with the semantics of libpcap's ``bpf_filter``.

    ``data_size`` is the size of ``ev->data`` (a power of two; ``DC_DATA_MASK`` is ``data_size - 1``).

    :raises CbpfError: an instruction that is not classic BPF, a jump out of the program, or a loop.
    """
    n = len(insns)
    if n == 0:
        raise CbpfError("empty classic BPF program")
    if data_size <= 0 or data_size & (data_size - 1):
        raise ValueError("data_size must be a power of two")
    targets: set[int] = set()
    for pc, ins in enumerate(insns):
        cls = ins.code & 0x07
        if cls == _JMP:
            op = ins.code & 0xF0
            if op == _JA and ins.k >= 0x80000000:
                raise CbpfError(
                    f"libpcap compiled it to a loop (a backward jump at instruction {pc}), which a BPF probe "
                    "cannot run (e.g. 'protochain')"
                )
            dests = [pc + 1 + ins.k] if op == _JA else [pc + 1 + ins.jt, pc + 1 + ins.jf]
            for d in dests:
                if d >= n:
                    raise CbpfError(f"instruction {pc} jumps past the end of the program")
            targets.update(dests)
    body: list[str] = []
    uses_mem = False
    for pc, ins in enumerate(insns):
        code, k = ins.code, ins.k & 0xFFFFFFFF
        cls = code & 0x07
        label = f"I{pc}: " if pc in targets else ""
        stmt = _translate(pc, code, ins.jt, ins.jf, k, data_size)
        if cls in (_ST, _STX) or (cls in (_LD, _LDX) and code & 0xE0 == _MEM):
            uses_mem = True
            if k >= _MEMWORDS:
                raise CbpfError(f"instruction {pc} uses scratch word {k} (0..15)")
        body.append(f"    {label}{stmt}")
    decl = "    u32 A = 0, X = 0, T = 0;\n    u32 L = ev->caplen;\n    u32 W = ev->wire_len;\n"
    if uses_mem:
        decl += f"    u32 M[{_MEMWORDS}] = {{}};\n"
    return (
        f"static __always_inline u32 {name}(struct dc_event *ev)\n{{\n{decl}"
        "    if (L > DC_SNAPLEN)\n        L = DC_SNAPLEN;\n" + "\n".join(body) + "\n    return 0;\n}"
    )


def _translate(pc: int, code: int, jt: int, jf: int, k: int, data_size: int) -> str:
    cls = code & 0x07
    if cls in (_LD, _LDX):
        mode, size = code & 0xE0, code & 0x18
        reg = "A" if cls == _LD else "X"
        if mode == _IMM:
            return f"{reg} = {k}U;"
        if mode == _LEN and size == _W:
            return f"{reg} = W;"
        if mode == _MEM:
            return f"{reg} = M[{k}];"
        if cls == _LDX and mode == _MSH and size == _B:
            if k >= data_size:
                return "return 0;"
            return f"if ({k}U >= L) return 0; X = ({_load(1, str(k))} & 0xf) << 2;"
        if cls == _LD and size in _SIZES and mode == _ABS:
            n = _SIZES[size]
            if k + n > data_size:
                return "return 0;"  # beyond any snap length the probe has: rejected as out of bounds
            return f"if ({k}U > L || {n}U > L - {k}U) return 0; A = {_load(n, str(k))};"
        if cls == _LD and size in _SIZES and mode == _IND:
            n = _SIZES[size]
            return (
                f"T = X + {k}U; if ({k}U > L || X > L - {k}U || {n}U > L - T) return 0; A = {_load(n, 'T')};"
            )
    elif cls == _ST:
        return f"M[{k}] = A;"
    elif cls == _STX:
        return f"M[{k}] = X;"
    elif cls == _ALU:
        op, src = code & 0xF0, code & 0x08
        operand = "X" if src == _X else f"{k}U"
        if op in _ALU_C:
            return f"A {_ALU_C[op]}= {operand};"
        if op in (_DIV, _MOD):
            sym = "/" if op == _DIV else "%"
            if src == _X:
                return f"if (X == 0) return 0; A {sym}= X;"
            return "return 0;" if k == 0 else f"A {sym}= {k}U;"
        if op in (_LSH, _RSH):
            sym = "<<" if op == _LSH else ">>"
            if src == _X:
                return f"A = X < 32 ? A {sym} X : 0;"
            return f"A {sym}= {k}U;" if k < 32 else "A = 0;"
        if op == _NEG:
            return "A = -A;"
    elif cls == _JMP:
        op, src = code & 0xF0, code & 0x08
        if op == _JA:
            return f"goto I{pc + 1 + k};"
        operand = "X" if src == _X else f"{k}U"
        if op in _JMP_C:
            cond = f"A {_JMP_C[op]} {operand}"
        elif op == _JSET:
            cond = f"(A & {operand}) != 0"
        else:
            raise CbpfError(f"instruction {pc}: unknown jump {code:#x}")
        return f"if ({cond}) goto I{pc + 1 + jt}; else goto I{pc + 1 + jf};"
    elif cls == _RET:
        rval = code & 0x18
        if rval == _RVAL_A:
            return "return A;"
        if rval == _K:
            return f"return {k}U;"
    elif cls == _MISC:
        if code & 0xF8 == _TAX:
            return "X = A;"
        if code & 0xF8 == _TXA:
            return "A = X;"
    raise CbpfError(f"instruction {pc}: opcode {code:#06x} is not classic BPF that dropcapture translates")
