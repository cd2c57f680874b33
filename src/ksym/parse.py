"""Recognise kernel stack frames in pasted text (the parsing layer of ``ksym annotate``).

Kernel engineers paste stacks from many tools: bpftrace ``kstack``, bcc tools, ``perf script``,
oops / WARN / lockdep reports (raw, from ``dmesg``, ``dmesg -T``, syslog or journalctl),
``/proc/PID/stack``, ftrace ``stacktrace``, dropwatch, plain ``func+off`` lists and bare addresses.
:func:`parse_text` keeps every input line (so a filter can write non-frame lines back byte for byte)
and attaches a :class:`StackFrame` to each line that is a frame; :func:`parse_line` does one line.

The rules are conservative: a line is a frame only when its *whole shape* matches one of the known
formats (position, indentation, surrounding tokens); a ``func+off`` inside prose is a frame only
when it has the kernel's own ``%pS`` shape (``func+0x1a/0x30``) or sits at the edge of a short line.
docs/formats.md lists every format and rule.

Offsets: ``0x`` is hex everywhere; bpftrace prints decimal; dropwatch prints hex without ``0x``;
a plain ``func+off`` follows bash arithmetic like faddr2line (``0x`` hex, leading ``0`` octal, else
decimal). ``offset_text`` keeps the spelling, since the faddr2line header echoes it.

Stacks: every frame carries ``stack_index``; a new stack starts at the first frame after any
non-frame line (``kstack:``, a blank line, ``Call Trace:``, ``<IRQ>``/``</IRQ>``/``<TASK>``, a
``comm(pid): probe`` header, ...), so the first frame of each index is the top of that stack.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum

from .model import frozen_record
from .records import NamedTuple

__all__ = [
    "FrameKind",
    "ParsedLine",
    "StackFrame",
    "find_kaslr_offset",
    "iter_lines",
    "line_context",
    "parse_line",
    "parse_offset",
    "parse_text",
    "split_stacks",
    "strip_log_prefix",
]


class FrameKind(str, Enum):
    """The format a frame line was recognised as (compares equal to its string value)."""

    BPFTRACE = "bpftrace"
    PERF = "perf"
    OOPS = "oops"
    PROC_STACK = "proc_stack"
    FTRACE = "ftrace"
    DROPWATCH = "dropwatch"
    BCC = "bcc"
    PLAIN = "plain"
    RAW = "raw"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class StackFrame:
    """One recognised stack frame."""

    #: 1-based line number in the parsed text (1 for :func:`parse_line` unless given).
    lineno: int
    #: The line exactly as given, including its line ending if it had one.
    text: str
    #: ``(start, end)`` of the frame token in ``text``: ``func+off[/size]``, or the address when the
    #: frame has no symbol.
    span: tuple[int, int]
    #: Format the line was recognised as.
    kind: FrameKind
    symbol: str | None = None
    offset: int | None = None
    size: int | None = None
    #: Offset / size exactly as spelled (``219``, ``0xdb``, ``1d`` for dropwatch).
    offset_text: str | None = None
    size_text: str | None = None
    #: Raw (runtime) address printed on the line, if any (``[<0>]`` hidden addresses give ``None``).
    address: int | None = None
    #: Kernel module the frame is in (``None`` for vmlinux / ``[kernel.kallsyms]`` / unknown).
    module: str | None = None
    #: Module build id printed after the module name (``[nf_tables 5f3c...]``), lower-case hex.
    module_build_id: str | None = None
    #: False for the oops unwinder's ``? `` (unreliable, probably stale) frames.
    reliable: bool = True
    #: 0-based index of the stack this frame belongs to (set by :func:`parse_text`).
    stack_index: int = 0
    #: ``(start, end)`` of the whole frame description (address, token, module, build id ...);
    #: an annotation placed at ``extent[1]`` follows everything the tool printed for the frame.
    extent: tuple[int, int] = (0, 0)

    @property
    def token(self) -> str:
        """The frame token, ``text[span[0]:span[1]]``."""
        return self.text[self.span[0] : self.span[1]]

    @property
    def spec(self) -> str:
        """A query for :func:`ksym.spec.parse_spec` / faddr2line that reads back to this frame.

        ``func+off[/size]`` keeps the spelling when bash arithmetic reads it the same way, else
        uses hex (bpftrace ``+010`` is ten, dropwatch ``+a1`` is 0xa1); a frame without an offset
        gives its ``0xaddress`` (a *runtime* address: apply the KASLR slide) or, with no address
        either, the bare symbol name (which faddr2line cannot resolve to a line).
        """
        if self.symbol is None or self.offset is None:
            if self.address is not None:
                return f"{self.address:#x}"
            return self.symbol or ""
        off = self.offset_text
        if off is None or parse_offset(off, "bash") != self.offset:
            off = f"{self.offset:#x}"
        spec = f"{self.symbol}+{off}"
        if self.size is not None:
            size = self.size_text
            if size is None or parse_offset(size, "bash") != self.size:
                size = f"{self.size:#x}"
            spec += f"/{size}"
        return spec


@dataclass(frozen=True)
class ParsedLine:
    """One input line, kept verbatim, with the frame it holds (if any)."""

    #: 1-based line number.
    lineno: int
    #: The line exactly as in the input, line ending included (the last line may have none).
    text: str
    frame: StackFrame | None = None
    #: For non-frame lines, what the line is when it matters to stack structure: ``"blank"``,
    #: ``"kstack"``, ``"call_trace"``, ``"marker"`` (``<IRQ>``, ``</TASK>``...), ``"header"``
    #: (``comm(pid): probe``, perf sample header, ftrace ``<stack trace>``), ``"kaslr"``
    #: (``Kernel Offset:``), ``"end_trace"``; ``None`` for other text.
    context: str | None = None

    @property
    def content(self) -> str:
        """The line without its line ending (``\\n``, ``\\r\\n``)."""
        if self.text.endswith("\r\n"):
            return self.text[:-2]
        return self.text.removesuffix("\n")

    @property
    def ending(self) -> str:
        """The line ending (``""`` for a last line without one)."""
        return self.text[len(self.content) :]

    @property
    def stack_index(self) -> int | None:
        return self.frame.stack_index if self.frame is not None else None


# --------------------------------------------------------------------------------------------------
# Building blocks

_SYM = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*"
_HEX = r"[0-9a-fA-F]+"
_ADDR = r"[0-9a-fA-F]{8,16}"
# ``[nf_tables]``, ``[nf_tables 5f3c...]`` (CONFIG_STACKTRACE_BUILD_ID), ``[kernel]`` (bcc)
_MOD = r"\[(?P<mod>[A-Za-z0-9_.\-]+)(?:[ \t]+(?P<bid>[0-9a-fA-F]{8,64}))?\]"
# the kernel's %pS / %pB shape: func+0x1a/0x30
_KTOK = rf"(?P<tok>(?P<sym>{_SYM})\+(?P<off>0x{_HEX})/(?P<size>0x{_HEX}))"

class _Lazy:
    """A pattern compiled on first use: a dump in one format needs few of the format patterns, and
    compiling them all costs as much as parsing a thousand lines."""

    __slots__ = ("_rx", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._rx: re.Pattern[str] | None = None

    @property
    def rx(self) -> re.Pattern[str]:
        if self._rx is None:
            self._rx = re.compile(self.pattern)
        return self._rx

    def match(self, text: str, pos: int = 0, endpos: int = sys.maxsize) -> re.Match[str] | None:
        return self.rx.match(text, pos, endpos)

    def fullmatch(self, text: str, pos: int = 0, endpos: int = sys.maxsize) -> re.Match[str] | None:
        return self.rx.fullmatch(text, pos, endpos)

    def finditer(self, text: str, pos: int = 0, endpos: int = sys.maxsize) -> Iterator[re.Match[str]]:
        return self.rx.finditer(text, pos, endpos)


# 3.x kernels print the stack switch on the frame's line: " <IRQ>  [<ffffffff81595f6e>] dump_stack+0x19/0x1b"
_INLINE_MARKER = r"(?:</?(?:IRQ|EOI|NMI|SOFTIRQ|EOE|#[A-Z]{2})>\s+)"
_INLINE_MARKER_RX = re.compile(r"\s*" + _INLINE_MARKER)

#: Module names that mean "the kernel image itself".
_VMLINUX_NAMES = frozenset({"kernel", "kernel.kallsyms", "vmlinux", "unknown", "k"})

_LOG_PREFIXES = (
    r"<\d{1,3}>",  # /dev/kmsg, dmesg -r
    (
        r"(?:kern|user|mail|daemon|auth|syslog|lpr|news|uucp|cron|authpriv|ftp|local[0-7])\s*:"
        r"(?:emerg|alert|crit|err|warn|notice|info|debug)\s*: "
    ),  # dmesg -x
    r"\[\s*\d+\.\d+\]\s?",  # dmesg
    r"\[\s*[TC]\d+\]\s?",  # CONFIG_PRINTK_CALLER
    r"\[(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}\]\s?",  # dmesg -T
    (
        r"(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d(?:\.\d+)?"  # syslog, journalctl (-o short-precise)
        r"|\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?"  # -o short-iso, rsyslog
        r"|[A-Z][a-z]{2} \d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? [A-Z]{1,5})"  # -o short-full
        r" \S+ kernel: "
    ),
    r"[A-Za-z0-9_.\-]+ kernel: ",  # journalctl -o short-monotonic after its [timestamp]
    r"kernel: ",
)

#: Up to six prefixes in a row (``<4>[  12.3] ...``), the alternatives tried in list order (none
#: matches empty text). Nothing follows the repetition, so the regex engine never backtracks into it:
#: each round takes the first alternative that matches there, as a loop of single matches would.
_LOG_PREFIX_RUN = re.compile("(?:" + "|".join(f"(?:{p})" for p in _LOG_PREFIXES) + "){0,6}")


def strip_log_prefix(line: str, pos: int = 0, end: int | None = None) -> int:
    """Index in ``line`` where the kernel message starts, after dmesg / syslog / journal prefixes
    (of ``line[pos:end]`` when given, as an index into ``line``)."""
    return _LOG_PREFIX_RUN.match(line, pos, len(line) if end is None else end).end()  # type: ignore[union-attr]


def parse_offset(text: str, base: str = "bash") -> int | None:
    """Value of an offset/size spelled ``text``; ``None`` if it is not valid in that base.

    ``base``: ``"bash"`` (faddr2line: ``0x`` hex, leading ``0`` octal, else decimal),
    ``"dec"`` (bpftrace: decimal unless ``0x``), ``"hex"`` (hex with or without ``0x``).
    """
    t = text.strip()
    digits = t[2:] if t[:2] in ("0x", "0X") else t
    if not digits or not all(c in _HEXDIGITS for c in digits):
        return None
    if digits is not t or base == "hex":
        return int(digits, 16)
    if not t.isdigit():
        return None
    if base == "bash" and len(t) > 1 and t[0] == "0":
        return int(t, 8) if all(c in "01234567" for c in t) else None
    return int(t, 10)


_HEXDIGITS = frozenset("0123456789abcdefABCDEF")


# --------------------------------------------------------------------------------------------------
# Line formats. Each is matched with ``fullmatch`` on the message part of the line (after any log
# prefix, before trailing white space). Groups: ext (whole frame), tok (func+off), sym, off, size,
# addr (printed address), raw (address that *is* the frame), mod, bid, q (``? ``), lead.

_Kind = Callable[["re.Match[str]", bool], FrameKind]


def _fixed(kind: FrameKind) -> _Kind:
    return lambda m, prefixed: kind


def _oops_or_plain(m: re.Match[str], prefixed: bool) -> FrameKind:
    lead = m.groupdict().get("lead") or ""
    if prefixed or lead or m.groupdict().get("q") or m.groupdict().get("mod"):
        return FrameKind.OOPS
    return FrameKind.PLAIN


def _proc_or_oops(m: re.Match[str], prefixed: bool) -> FrameKind:
    if prefixed or m.group("q") or m.group("lead"):
        return FrameKind.OOPS
    return FrameKind.PROC_STACK


def _raw_kind(m: re.Match[str], prefixed: bool) -> FrameKind:
    if prefixed or m.group("q"):
        return FrameKind.OOPS
    if m.group("lead") and m.group("raw")[:2] in ("0x", "0X"):
        return FrameKind.BPFTRACE
    return FrameKind.RAW


def _prefixed_oops(m: re.Match[str], prefixed: bool) -> FrameKind:
    return FrameKind.OOPS if prefixed else FrameKind.PLAIN


class _Format:
    __slots__ = ("base", "check", "kind", "name", "rx")

    def __init__(
        self,
        name: str,
        pattern: str,
        kind: _Kind,
        base: str,
        check: Callable[[re.Match[str]], bool] | None = None,
    ) -> None:
        self.name = name
        self.rx = _Lazy(pattern)
        self.kind = kind
        self.base = base
        self.check = check


def _kernel_half(a: str) -> bool:
    """``a`` (hex digits) is a kernel-half address: 16 digits from 0x8000000000000000 (x86-64,
    arm64, ppc64, riscv64), or 8 digits from 0x80000000 (32-bit); never 0 or all ones."""
    v = int(a, 16)
    if len(a) == 16:
        return v >= 0x8000000000000000 and v != (1 << 64) - 1
    return len(a) == 8 and v >= 0x80000000 and v != 0xFFFFFFFF


def _kernel_address(m: re.Match[str]) -> bool:
    return _kernel_half(m.group("addr"))


def _perf_check(m: re.Match[str]) -> bool:
    if m.group("sym") is not None:
        return True
    # "[unknown]" symbol: only a kernel address (perf prints user frames the same way)
    return int(m.group("addr"), 16) >= 0xFFFF000000000000 or _kernel_half(m.group("addr"))


def _raw_check(m: re.Match[str]) -> bool:
    raw = m.group("raw")
    if raw[:2] in ("0x", "0X"):
        return int(raw, 16) != 0
    v = int(raw, 16)
    # without 0x: only things that look like kernel addresses (not dates, words like "deadbeef")
    if len(raw) == 16:
        return v >= 0xFFFF000000000000
    return len(raw) == 8 and v >= 0xC0000000 and _kernel_half(raw) and any(c.isdigit() for c in raw)


def _bcc_addr_check(m: re.Match[str]) -> bool:
    if not _kernel_address(m):
        return False
    if m.group("off") is not None:
        return True
    # address + bare symbol: only with an unmistakable address
    return bool(m.group("ox")) or len(m.group("addr")) == 16


_FORMATS: list[_Format] = [
    # /proc/PID/stack: "[<0>] func+0x1ab/0x270"; old kernels and old oopses print the address
    _Format(
        "proc_stack",
        rf"(?P<lead>\s*{_INLINE_MARKER}?)(?P<ext>\[<(?P<addr>{_HEX})>\]\s+(?P<q>\?\s+)?{_KTOK}(?:\s+{_MOD})?)",
        _proc_or_oops,
        "hex",
    ),
    # old ARM: "[<c0013b6c>] (unwind_backtrace+0x0/0xf8) from [<c0011c58>] (show_stack+0x10/0x14)"
    _Format(
        "arm_old",
        rf"\s*(?P<ext>\[<(?P<addr>{_HEX})>\]\s+\({_KTOK}\))(?:\s+from\s+\[<{_HEX}>\]\s+\(.*\))?",
        _fixed(FrameKind.OOPS),
        "hex",
    ),
    # powerpc Call Trace: "[c00000000ab3b9f0] [c000000000a1b3e0] ip_local_out+0x30/0x90 (unreliable)"
    _Format(
        "powerpc",
        rf"\s*\[{_HEX}\]\s+(?P<ext>\[(?P<addr>{_HEX})\]\s+{_KTOK}(?:\s+{_MOD})?)(?:\s+(?P<q>\(unreliable\)))?",
        _fixed(FrameKind.OOPS),
        "hex",
    ),
    # register lines: "RIP: 0010:func+0x1a/0x30 [mod]", "pc : func+..", "NIP [c0..] func+..",
    # old "RIP: 0010:[<ffffffff8106d3a5>]  [<ffffffff8106d3a5>] func+0x85/0xc0", "PC is at func+.."
    _Format(
        "register",
        r"\s*(?:RIP|EIP|IP|NIP|LR|PC is at|LR is at|pc|lr|epc|ra|PC)(?:\s*:\s*|\s+)(?:[0-9a-fA-F]{4}:)?"
        rf"(?:\[<{_HEX}>\]\s+(?=\[))?(?P<ext>(?:\[<?(?P<addr>{_HEX})>?\]\s+)?{_KTOK}(?:\s+{_MOD})?)(?:\s+.*)?",
        _fixed(FrameKind.OOPS),
        "hex",
    ),
    # oops / WARN / lockdep Call Trace: " func+0x1a/0x30 [nf_tables]", " ? func+0x1a/0x30"
    _Format(
        "oops",
        rf"(?P<lead>\s*)(?P<q>\?\s+)?(?P<ext>{_KTOK}(?:\s+{_MOD})?)"
        r"(?:\s+[\w./+-]+\.[chS]:\d+(?::\d+)?(?:\s+\[inline\])?)?",  # decode_stacktrace.sh / syzbot
        _oops_or_plain,
        "hex",
    ),
    # ftrace stacktrace: " => func+0x1a/0x30", " => func", " => func (ffffffff81845796)",
    # " => func+0x1a/0x30 <ffffffff81845796>", " => 0xffffffffc0a12345"
    _Format(
        "ftrace",
        rf"\s*=>\s+(?P<ext>(?:(?P<tok>(?P<sym>{_SYM})(?:\+(?P<off>0x{_HEX}|\d+)(?:/(?P<size>0x{_HEX}))?)?)"
        rf"(?:\s+{_MOD})?|(?P<raw>0x{_HEX}))(?:\s+[<(](?:0x)?(?P<addr>{_HEX})[>)])?)",
        _fixed(FrameKind.FTRACE),
        "bash",
    ),
    # perf script: "\tffffffff81845796 __ip_local_out+0xd6 ([kernel.kallsyms])"; the dso may be the
    # vmlinux or a .ko path ("(/lib/modules/6.1.0/build/vmlinux)"); user-space dsos are not frames
    _Format(
        "perf",
        rf"\s*(?P<ext>(?P<addr>{_ADDR})\s+(?:(?P<tok>(?P<sym>{_SYM})(?:\+(?P<off>0x{_HEX}))?)|\[unknown\])"
        rf"\s+\((?:{_MOD}|(?P<dso>/?(?:[^()\s]*/)?(?:vmlinux[^()\s/]*|[^()\s/]+\.ko(?:\.[a-z]+)?))|\[unknown\])\))",
        _fixed(FrameKind.PERF),
        "hex",
        _perf_check,
    ),
    # bpftrace kstack(perf): "\tffffffff81845796 __ip_local_out+214"
    _Format(
        "bpftrace_perf",
        rf"\s*(?P<ext>(?P<addr>{_ADDR})\s(?P<tok>(?P<sym>{_SYM})\+(?P<off>\d+))(?:\s+{_MOD})?)",
        _fixed(FrameKind.BPFTRACE),
        "dec",
        _kernel_address,
    ),
    # bcc with addresses: "ffffffff81845796 __ip_local_out+0x1a", "0xffffffff81845796 tcp_sendmsg"
    _Format(
        "bcc_addr",
        rf"\s*(?P<ext>(?P<ox>0x)?(?P<addr>{_ADDR})\s+(?P<tok>(?P<sym>{_SYM})(?:\+(?P<off>0x{_HEX}))?)"
        rf"(?:\s+{_MOD})?)",
        _fixed(FrameKind.BCC),
        "hex",
        _bcc_addr_check,
    ),
    # bcc under python3 (old bug): "  b'__ip_local_out+0x1a'", "  b'tcp_sendmsg'"
    _Format(
        "bcc_bytes",
        rf"\s*(?P<ext>b(?P<quote>['\"])(?P<tok>(?P<sym>{_SYM})(?:\+(?P<off>0x{_HEX}))?)(?:\s+{_MOD})?(?P=quote))",
        _fixed(FrameKind.BCC),
        "hex",
    ),
    # bcc tcpdrop / trace -K / stackcount -v: "\ttcp_drop+0x1", "        kfree_skb+0x0 [kernel]"
    _Format(
        "bcc",
        rf"(?P<lead>\s+)(?P<ext>(?P<tok>(?P<sym>{_SYM})\+(?P<off>0x{_HEX}))(?:\s+{_MOD})?)",
        _fixed(FrameKind.BCC),
        "hex",
    ),
    # bpftrace kstack: "        kfree_skb+1"
    _Format(
        "bpftrace",
        rf"(?P<lead>\s+)(?P<ext>(?P<tok>(?P<sym>{_SYM})\+(?P<off>\d+))(?:\s+{_MOD})?)",
        _fixed(FrameKind.BPFTRACE),
        "dec",
    ),
    # dropwatch: "1 drops at tcp_v4_rcv+a1 (0xffffffff9bdb8181) [software]"
    _Format(
        "dropwatch",
        rf"\s*\d+\s+drops\s+at\s+(?P<ext>(?P<tok>(?P<sym>{_SYM})\+(?P<off>(?:0x)?{_HEX}))"
        rf"\s+\((?:0x)?(?P<addr>{_HEX})\))(?:\s+\[[a-z]+\])*",
        _fixed(FrameKind.DROPWATCH),
        "hex",
    ),
    # dropwatch, unknown symbol: "1 drops at location 0xffffffffc0a12345"
    _Format(
        "dropwatch_location",
        rf"\s*\d+\s+drops\s+at\s+location\s+(?P<ext>(?P<raw>(?:0x)?{_HEX}))(?:\s+\[[a-z]+\])*",
        _fixed(FrameKind.DROPWATCH),
        "hex",
    ),
    # dropwatch-like without the count: "func+0x1a (0xffffffff81845796)"
    _Format(
        "dropwatch_bare",
        rf"\s*(?P<ext>(?P<tok>(?P<sym>{_SYM})\+(?P<off>(?:0x)?{_HEX}))\s+\(0x(?P<addr>{_HEX})\))",
        _fixed(FrameKind.DROPWATCH),
        "hex",
    ),
    # plain list item: "__ip_local_out+219", "- __ip_local_out+0xdb/0x150", "__ip_local_out+219/0x150:"
    _Format(
        "plain",
        r"\s*(?:[-*>]\s+|\#?\d{1,3}[.:)]?\s+)?"
        rf"(?P<ext>(?P<tok>(?P<sym>{_SYM})\+(?P<off>0[xX]{_HEX}|\d+)(?:/(?P<size>0[xX]{_HEX}|\d+))?)"
        rf"(?:\s+{_MOD})?):?",
        _prefixed_oops,
        "bash",
        lambda m: len(m.group("sym")) >= 3,  # "x+1" alone on a line is arithmetic, not a frame
    ),
    # an address alone: "0xffffffff9091b941", "ffffffff9091b941", oops " ? 0xffffffffc0a12345"
    _Format(
        "raw",
        r"(?P<lead>\s*)(?P<q>\?\s+)?(?P<ext>(?P<raw>0[xX][0-9a-fA-F]{8,16}|[0-9a-fA-F]{16}|[0-9a-fA-F]{8}))",
        _raw_kind,
        "hex",
        _raw_check,
    ),
]

# A frame inside a sentence ("WARNING: CPU: 0 PID: 1 at net/core/dev.c:1 func+0x1a/0x30 [mod]",
# "hardirqs last enabled at (12): [<ffffffff81234567>] _raw_spin_unlock_irq+0x1f/0x40").
_IN_TEXT = _Lazy(
    r"(?<![^\s('\"`<\[])"
    rf"(?P<ext>(?:\[<(?P<addr>{_HEX})>\]\s+)?"
    rf"(?P<tok>(?P<sym>{_SYM})\+(?P<off>0x{_HEX}|\d+)(?:/(?P<size>0x{_HEX}))?)(?:\s+{_MOD})?)"
    r"(?=$|[\s)\]'\"`,:]|\.(?:\s|$))"
)
# Where a frame's address can be (every ``addr`` and ``raw`` group above, keep them in step): ``[<hex>]``,
# ``[hex]``, ``<hex>``/``(hex)``/``(0xhex)``, 8 or more hex digits (perf, bcc, bpftrace, raw addresses),
# ftrace's ``=> 0x...`` and dropwatch's ``drops at location ...``.
_BRACKETED_ADDRESS = _Lazy(r"\[<?[0-9a-fA-F]+>?\]|[<(](?:0x)?[0-9a-fA-F]+[>)]")
_FTRACE_ADDRESS = _Lazy(r"=>\s+0x")
_DROPWATCH_LOCATION = _Lazy(r"drops\s+at\s+location\s")
# every byte to " ", hex digits to "x": a run of 8 hex digits is then found by bytes.find
_HEX_MARKS = bytes(ord("x") if chr(i) in _HEXDIGITS else ord(" ") for i in range(256))


def _may_hold_address(text: str) -> bool:
    """False only when no line of ``text`` can be a frame that prints an address (a quick look at a long
    text, before parsing it only for such frames)."""
    return (_BRACKETED_ADDRESS.rx.search(text) is not None
            or b"xxxxxxxx" in text.encode("utf-8", "surrogateescape").translate(_HEX_MARKS)
            or ("=>" in text and _FTRACE_ADDRESS.rx.search(text) is not None)
            or ("drops" in text and _DROPWATCH_LOCATION.rx.search(text) is not None))


# Lines that look like frames but are not kernel frames: perf script user-space / unknown dsos.
_NOT_KERNEL = _Lazy(
    rf"\s*{_HEX}\s+(?:{_SYM}(?:\+0x{_HEX})?|\[unknown\])\s+\((?!\[)[^()]*\)|.*\(\[unknown\]\)"
)
# "<address> func+off" with an address outside the kernel half: a user-space frame (or not an address)
_ADDR_LEAD = _Lazy(rf"\s*(?:0x)?(?P<addr>[0-9a-fA-F]{{6,16}})\s+{_SYM}\+")
_PROMPT = _Lazy(r"\s*(?:[$%#]|\S+@\S+[$#%])\s")


def _in_text_ok(m: re.Match[str], body: str, start: int, end: int) -> bool:
    sym = m.group("sym")
    off = m.group("off")
    if off.startswith("0x"):
        if m.group("size") is not None:
            return True
        return "_" in sym or "." in sym
    if m.group("size") is not None:
        return "_" in sym
    if "_" not in sym or len(sym) < 4:
        return False
    # decimal offset in a sentence: only as the first or last word of the line
    before = body[start : m.start("ext")].strip(" \t-*#>:(['\"`")
    after = body[m.end("ext") : end].strip(" \t)]'\"`.,:")
    return not before or not after


# --------------------------------------------------------------------------------------------------


def _build(m: re.Match[str], line: str, lineno: int, kind: FrameKind, base: str) -> StackFrame | None:
    g = m.groupdict()
    sym = g.get("sym")
    if sym is not None and len(sym) >= 8 and all(c in _HEXDIGITS for c in sym):
        return None  # "ffff88003fc03ab8 ffffffff81580f47": stack words, not address + symbol
    address: int | None = None
    if g.get("addr"):
        address = int(g["addr"], 16) or None
    offset: int | None = None
    offset_text = g.get("off")
    if offset_text is not None:
        offset = parse_offset(offset_text, base)
        if offset is None:
            return None
    size: int | None = None
    size_text = g.get("size")
    if size_text is not None:
        size = parse_offset(size_text, "bash" if base == "bash" else "hex")
        if size is None:
            return None
    if sym is None:
        raw = g.get("raw")
        if raw:
            address = int(raw, 16)
            span = m.span("raw")
        elif address is not None:
            span = m.span("addr")
        else:
            return None
    else:
        span = m.span("tok")
    module = g.get("mod")
    if module is not None and module in _VMLINUX_NAMES:
        module = None
    dso = g.get("dso")
    if dso and ".ko" in dso:
        module = dso.rsplit("/", 1)[-1].split(".ko", 1)[0].replace("-", "_")
    bid = g.get("bid")
    return StackFrame(
        lineno=lineno,
        text=line,
        span=span,
        kind=kind,
        symbol=sym,
        offset=offset,
        size=size,
        offset_text=offset_text,
        size_text=size_text,
        address=address,
        module=module,
        module_build_id=bid.lower() if (bid and module is not None) else None,
        reliable=not g.get("q"),
        extent=m.span("ext"),
    )


_QUOTE = re.compile(r"(?:>[ \t]?)+")  # e-mail quoting: "> [  12.3]  func+0x1/0x2"


def _body_bounds(line: str) -> tuple[int, int, bool]:
    end = len(line.rstrip(" \t\r\n\f\v"))
    qend = 0
    if line.startswith(">"):
        quote = _QUOTE.match(line, 0, end)
        qend = quote.end() if quote else 0
    start = _LOG_PREFIX_RUN.match(line, qend, end).end()  # type: ignore[union-attr]
    return start, end, start > qend


def parse_line(line: str, lineno: int = 1) -> StackFrame | None:
    """The frame on ``line`` (one line, with or without its line ending), or ``None``."""
    if "\n" in line.rstrip("\r\n"):
        raise ValueError("parse_line() takes a single line; use parse_text() for text")
    return _parse_body(line, lineno, *_body_bounds(line))


def _parse_body(line: str, lineno: int, start: int, end: int, prefixed: bool) -> StackFrame | None:
    if start >= end:
        return None
    for fmt in _FORMATS:
        m = fmt.rx.fullmatch(line, start, end)
        if m is None or (fmt.check is not None and not fmt.check(m)):
            continue
        frame = _build(m, line, lineno, fmt.kind(m, prefixed), fmt.base)
        if frame is not None:
            return frame
    if "+" not in line[start:end] or _PROMPT.match(line, start) or _NOT_KERNEL.fullmatch(line, start, end):
        return None
    lead = _ADDR_LEAD.match(line, start, end)
    if lead is not None and not _kernel_address(lead):
        return None
    found: StackFrame | None = None
    for m in _IN_TEXT.finditer(line, start, end):
        if not _in_text_ok(m, line, start, end):
            continue
        if found is not None:
            return None  # several candidates: a sentence about frames, not a frame line
        found = _build(m, line, lineno, _prefixed_oops(m, prefixed), "bash")
    return found


# --------------------------------------------------------------------------------------------------
# Context lines

_KASLR = re.compile(r"Kernel Offset:\s+(?:(?P<off>0x[0-9a-fA-F]+)\s+from\s+0x[0-9a-fA-F]+|(?P<dis>disabled))")
_MARKER = re.compile(r"\s*</?(?:[A-Z]{2,8}|#[A-Z]{2})>\s*")  # <IRQ> </IRQ> <TASK> <NMI> <SOFTIRQ> <EOI> <#DF>
_KSTACK = re.compile(r"(?:.*\W)?[ku]stack(?:\([^)]*\))?:")
_CALL_TRACE = frozenset({"call trace", "backtrace", "stack backtrace"})
_HEADERS = [
    _Lazy(r"\s*\S.*\(\d+\):\s+\S+:\S*.*"),  # bpftrace "sshd(219966): tracepoint:net:net_dev_queue"
    _Lazy(r"\s*\S.*\s\d+(?:/\d+)?\s+(?:\[\d+\]\s+)?\d+\.\d+:\s.*"),  # perf script sample header
    _Lazy(r".*<stack trace>\s*"),  # ftrace
    _Lazy(r"\s*@\S*\[.*"),  # bpftrace map key "@[", "@stacks["
]


def line_context(line: str) -> str | None:
    """Classify a non-frame line by its role in stack structure (see :attr:`ParsedLine.context`)."""
    start, end, _ = _body_bounds(line)
    if start >= end:
        return "blank"
    body = line[start:end]
    if _KASLR.search(body):
        return "kaslr"
    if _MARKER.fullmatch(body):
        return "marker"
    if _KSTACK.fullmatch(body):
        return "kstack"
    if body.lstrip().startswith("---[ end"):
        return "end_trace"
    if body.strip().rstrip(":").lower() in _CALL_TRACE or body.lstrip().startswith("Exception stack("):
        return "call_trace"
    for rx in _HEADERS:
        if rx.fullmatch(body):
            return "header"
    return None


def iter_lines(text: str) -> Iterator[str]:
    """Split ``text`` into lines on ``\\n`` only, keeping each ending; ``"".join`` gives ``text``."""
    return iter(_split_lines(text))


def _split_lines(text: str) -> list[str]:
    """:func:`iter_lines` as a list (split in C)."""
    parts = text.split("\n")
    last = parts.pop()
    out = [p + "\n" for p in parts]
    if last:
        out.append(last)
    return out


def parse_text(text: str) -> list[ParsedLine]:
    """Every line of ``text`` (verbatim), each with its frame or ``None``, frames numbered by stack."""
    return _parse(text).lines()


class _Shape(NamedTuple):
    """A message shape (see :class:`_Parsed`), parsed once for every line that has it."""

    #: The frame of the line the shape was first seen on (``None``: not a frame).
    frame: StackFrame | None
    #: That frame's span and extent, relative to the message start.
    span_start: int
    span_end: int
    extent_start: int
    extent_end: int
    #: The message starts with a stack-switch marker (``" <EOI>  [<...>] f+0x1"``): a new stack.
    marker: bool
    #: A non-frame line's :func:`line_context`.
    context: str | None


class _Parsed:
    """:func:`parse_text`'s findings before its per-line records are made (``ksym annotate`` renders a
    long dump from these alone).

    Dumps repeat frame lines under different timestamps: a line's frame depends only on its message
    (the text between the log prefix and the trailing blanks), whether a prefix was cut, the one
    character before the message (the in-text pattern's lookbehind) and the trailing blanks. Lines
    alike in those share a shape, parsed once; their frames differ only in the line (number, text),
    the message's place on it and the stack.
    """

    __slots__ = ("first_lineno", "rows", "shapes", "texts")

    def __init__(self, texts: list[str], rows: list[tuple[int, int, int]], shapes: list[_Shape],
                 first_lineno: int = 1) -> None:
        #: Every line, line ending included.
        self.texts = texts
        #: Per line: its shape, where its message starts, its stack (-1: the line holds no frame).
        self.rows = rows
        self.shapes = shapes
        #: Number of the first line (a later piece of a text parsed piece by piece starts past 1).
        self.first_lineno = first_lineno

    def frame(self, i: int) -> StackFrame | None:
        """The frame of line ``i`` (0-based in this piece), made now."""
        shape, start, stack = self.rows[i]
        first, s0, s1, e0, e1, _, _ = self.shapes[shape]
        if first is None:
            return None
        fields = first.__dict__.copy()
        fields.update(lineno=i + self.first_lineno, text=self.texts[i], span=(s0 + start, s1 + start),
                      extent=(e0 + start, e1 + start), stack_index=stack)
        return frozen_record(StackFrame, fields)

    def lines(self) -> list[ParsedLine]:
        """The records :func:`parse_text` returns."""
        shapes = self.shapes
        base = self.first_lineno
        return [frozen_record(ParsedLine, {"lineno": i + base, "text": text, "frame": self.frame(i),
                                           "context": shapes[row[0]].context})
                for i, (text, row) in enumerate(zip(self.texts, self.rows))]

    def first_line(self, context: str) -> int | None:
        """Number of the first line whose :attr:`ParsedLine.context` is ``context``."""
        ids = {n for n, shape in enumerate(self.shapes) if shape.context == context}
        return next((i + self.first_lineno for i, row in enumerate(self.rows) if row[0] in ids),
                    None) if ids else None


@dataclass(slots=True)
class _ParseState:
    """Where a text parsed piece by piece (:func:`_parse` with ``state``) stands after the pieces so far:
    the stack structure runs on across piece boundaries, so pieces cut at any line boundary number
    lines and stacks as the whole text would."""

    #: Number of the next line.
    lineno: int = 1
    #: Index of the last stack started (-1: none yet).
    stack: int = -1
    #: The last line was a frame (the next frame continues its stack).
    in_stack: bool = False


def _parse(text: str, state: _ParseState | None = None) -> _Parsed:
    """:func:`parse_text` up to the records (see :class:`_Parsed`); with ``state``, ``text`` is the next
    piece of a longer text (cut at a line boundary) and ``state`` is advanced past it."""
    texts = _split_lines(text)
    rows: list[tuple[int, int, int]] = []
    shapes: list[_Shape] = []
    seen: dict[tuple[str, bool, str, str], int] = {}
    first_lineno = state.lineno if state is not None else 1
    stack = state.stack if state is not None else -1
    in_stack = state.in_stack if state is not None else False
    for i, line in enumerate(texts, first_lineno):
        start, end, prefixed = _body_bounds(line)
        key = (line[start:end], prefixed, line[start - 1 : start], line[end:])
        n = seen.get(key)
        if n is None:
            n = seen[key] = len(shapes)
            frame = _parse_body(line, i, start, end, prefixed)
            if frame is None:
                shapes.append(_Shape(None, 0, 0, 0, 0, False, line_context(line)))
            else:
                (s0, s1), (e0, e1) = frame.span, frame.extent
                marker = _INLINE_MARKER_RX.match(line, start) is not None
                shapes.append(_Shape(frame, s0 - start, s1 - start, e0 - start, e1 - start, marker, None))
        shape = shapes[n]
        if shape.frame is None:
            in_stack = False
            rows.append((n, start, -1))
            continue
        if (
            not in_stack
            or shape.frame.kind is FrameKind.DROPWATCH  # every dropwatch line is a separate drop event
            or shape.marker
        ):
            stack += 1
            in_stack = True
        rows.append((n, start, stack))
    if state is not None:
        state.lineno = first_lineno + len(texts)
        state.stack = stack
        state.in_stack = in_stack
    return _Parsed(texts, rows, shapes, first_lineno)


def split_stacks(lines: Iterable[ParsedLine]) -> list[tuple[StackFrame, ...]]:
    """The frames of :func:`parse_text` output grouped by ``stack_index``, top frame first."""
    out: dict[int, list[StackFrame]] = {}
    for line in lines:
        if line.frame is not None:
            out.setdefault(line.frame.stack_index, []).append(line.frame)
    return [tuple(v) for _, v in sorted(out.items())]


def find_kaslr_offset(text: str) -> int | None:
    """The KASLR slide from a panic's ``Kernel Offset: 0x... from 0xffffffff81000000`` line.

    ``Kernel Offset: disabled`` gives 0; no such line gives ``None``. With several lines (several
    panics pasted together) the first wins.
    """
    m = _KASLR.search(text)
    if m is None:
        return None
    return 0 if m.group("dis") else int(m.group("off"), 16)
