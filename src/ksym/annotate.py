"""``ksym annotate``: put file:line and the inline chain under every stack frame of pasted text.

:func:`annotate` parses text with :func:`ksym.parse.parse_text`, resolves each frame against one debug
vmlinux (:class:`ksym.Symbolizer`) and returns an :class:`AnnotatedText`: the per-frame records and the
rendered text, in which every input line is written back byte for byte and each frame line is
followed by its annotation lines (docs/annotate.md shows the form)::

    [  412.345965]  ip_local_out+0x1d/0x70
                      -> ip_local_out at net/ipv4/ip_output.c:131
                         call site: call __ip_local_out

Return addresses. A frame below the top of a stack is a return address: the code that is running
there is the ``call`` just before it. By default such a frame is looked up at ``address - 1`` (as
debuggers do) and :mod:`ksym.disasm` names the call instruction ending at the address; a frame whose
address no call instruction ends at (the interrupted code under an interrupt or exception entry, a
stale ``?`` entry) is looked up at the address itself. Exact addresses: the top frame of a sampling
or probing stack (perf, bpftrace, bcc, plain lists, raw addresses), register lines (``RIP:``,
``pc :``, ``NIP``) and the ``WARNING: ... at`` line. Formats the kernel itself prints from an unwinder
(oops ``Call Trace:``, ``/proc/PID/stack``, ftrace ``stacktrace``, dropwatch's drop location) are
return addresses from their first frame on. ``exact=True`` (``--exact``) looks every frame up at its
address, which is what ``scripts/faddr2line`` does.

Names. A frame's name is looked up among every code name kallsyms prints (functions and untyped
assembly labels such as ``entry_SYSCALL_64_after_hwframe``, sized as the kernel sizes them:
:attr:`ksym.symbols.SymbolView.KALLSYMS`), as scripts/decode_stacktrace.sh does with ``nm``; ``ksym
resolve`` keeps scripts/faddr2line's FUNC symbols. A frame that also prints its runtime address is
resolved by that address once the slide is known.

Another build. Only evidence says a dump may come from another kernel build: a frame's ``misfit``
(``MISFIT_SIZE``, ``MISFIT_INSIDE_INSTRUCTION``, ``MISFIT_ADDRESS``), frames whose addresses elect no
slide, and in the ``ksym annotate`` command (:mod:`ksym.cli.annotate_command`) a build id the dump names
that the vmlinux does not have (refused unless ``--force``, which marks every frame ``unverified``). A
name the vmlinux lacks is not evidence.

KASLR. Frames that only give a runtime address need the slide: ``kaslr_offset``, else a saved
``/proc/kallsyms`` (``kallsyms``), else a ``Kernel Offset:`` line in the text, else the frames that
print both an address and ``func+off`` (:func:`ksym.kallsyms.kaslr_offset_from_frames`). Without any,
an address inside the vmlinux's link-time text is taken as is (a ``nokaslr`` boot) and any other is
marked unresolved, never guessed.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import re
import select
import stat
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, BinaryIO

from .disasm import CallInstruction, supported_machine
from .errors import (
    KsymError,
    SpecError,
    SymbolNotFoundError,
)
from .kallsyms import (
    Kallsyms,
    KaslrError,
    kaslr_offset_from_frames,
    kaslr_offset_from_kallsyms,
)
from .links import ElixirLinks
from .lru import LRUCache
from .model import Resolution, SourceLocation, frozen_record
from .modules import ModuleSet
from .parse import (
    FrameKind,
    ParsedLine,
    StackFrame,
    _body_bounds,
    _may_hold_address,
    _parse,
    _Parsed,
    _ParseState,
    find_kaslr_offset,
    line_context,
    parse_line,
    strip_log_prefix,
)
from .records import NamedTuple
from .spec import FuncSpec, parse_spec
from .symbolizer import Symbolizer
from .symbols import FaddrMatch, SymbolView, faddr2line_select

__all__ = [
    "LOOKUP_CALL_SITE",
    "LOOKUP_ENTRY",
    "LOOKUP_EXACT",
    "MISFIT_ADDRESS",
    "MISFIT_INSIDE_INSTRUCTION",
    "MISFIT_SIZE",
    "STATUS_RESOLVED",
    "STATUS_UNRESOLVED",
    "AnnotatedFrame",
    "AnnotatedText",
    "DumpEvidence",
    "DumpInput",
    "FrameMatch",
    "SlideVote",
    "StreamSummary",
    "annotate",
    "annotate_stream",
    "is_exact_frame",
]

#: Looked up at the frame's address (top frames, register lines, ``--exact``).
LOOKUP_EXACT = "exact"
#: A return address looked up at ``address - 1``: the call instruction before it.
LOOKUP_CALL_SITE = "call_site"
#: The frame names a function without an offset: its entry is shown.
LOOKUP_ENTRY = "function_entry"

STATUS_RESOLVED = "resolved"
STATUS_UNRESOLVED = "unresolved"

# Evidence that a frame does not fit the vmlinux (``misfit`` of FrameMatch and AnnotatedFrame), the only
# grounds on which ksym says a dump may come from another kernel build (a name it does not know is not):
#: The offset is beyond every symbol of that name, or the printed ``/size`` is not the symbol's size.
MISFIT_SIZE = "size"
#: A return address that falls inside an instruction of this vmlinux.
MISFIT_INSIDE_INSTRUCTION = "inside_instruction"
#: The frame's runtime address minus the KASLR slide is not where its ``func+off`` is in this vmlinux.
MISFIT_ADDRESS = "address"

#: The symbols a frame's name may name: every code name kallsyms prints, untyped assembly labels
#: (``entry_SYSCALL_64_after_hwframe``) included, as scripts/decode_stacktrace.sh finds them with ``nm``.
_VIEW = SymbolView.KALLSYMS

RUNTIME_ADDRESS_REASON = "runtime address: give --kallsyms or --kaslr-offset"

#: How many distinct frames' answers (and call-site function starts) an annotation keeps for the frames
#: that follow: a stream repeats its frames, but its memory must not grow with its length.
_KEEP_ANSWERS = 65536

# what precedes an exact-address frame on its line: register dumps and the WARN location line
_EXACT_CONTEXT = re.compile(
    r"(?:\b(?:RIP|EIP|IP|NIP|epc|pc|PC)\s*:?\s*(?:[0-9a-fA-F]{4}:)?(?:\[<[0-9a-fA-F]+>\]\s*)?"
    r"|\bPC is at\s+|\bWARNING:.*\bat\s+\S+\s+)$"
)
# formats printed by an unwinder: every entry, the first included, is a return address
_UNWINDER_KINDS = frozenset({FrameKind.OOPS, FrameKind.PROC_STACK, FrameKind.FTRACE, FrameKind.DROPWATCH})


@dataclass(frozen=True)
class FrameMatch:
    """One symbol a frame resolved to (a frame naming a duplicated static function has several)."""

    #: Link-time address of the frame (``symbol + offset``, or the runtime address minus the slide).
    link_address: int
    #: The address looked up: ``link_address - 1`` for a call site, else ``link_address``.
    lookup_address: int
    #: ``exact``, ``call_site`` or ``function_entry``.
    lookup: str
    #: Symbol ``link_address`` is in, its offset there and kallsyms size (as the kernel prints them).
    symbol: str | None
    offset: int | None
    size: int | None
    #: Inline chain at ``lookup_address``, innermost first (faddr2line's order).
    chain: tuple[SourceLocation, ...]
    #: The call instruction ending at ``link_address`` (call sites only).
    call: CallInstruction | None = None
    #: Remarks about this match (why a return address was looked up exactly ...).
    notes: tuple[str, ...] = ()
    #: Why this match does not fit the vmlinux (``MISFIT_*``), or None.
    misfit: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "link_address": f"{self.link_address:#x}",
            "lookup_address": f"{self.lookup_address:#x}",
            "lookup": self.lookup,
            "symbol": self.symbol,
            "offset": self.offset,
            "size": self.size,
            "chain": [loc.to_dict() for loc in self.chain],
            "call": self.call.to_dict() if self.call is not None else None,
            "notes": list(self.notes),
            "misfit": self.misfit,
        }


@dataclass(frozen=True)
class AnnotatedFrame:
    """One frame line of the input and what it resolved to."""

    #: 1-based input line number.
    lineno: int
    #: The input line exactly as given (line ending included).
    text: str
    frame: StackFrame
    #: True for the first frame of its stack (see :func:`ksym.parse.split_stacks`).
    top: bool
    #: ``resolved`` or ``unresolved``.
    status: str
    #: Why the frame is unresolved (``None`` when resolved).
    reason: str | None = None
    #: Every symbol the frame resolved to (usually one).
    matches: tuple[FrameMatch, ...] = ()
    #: Remarks that are not failures (slide cross-check, bare function names).
    notes: tuple[str, ...] = ()
    #: Evidence that the frame does not fit the vmlinux (``MISFIT_*``), or None.
    misfit: str | None = None
    #: Why the annotation is not verified to come from the dump's own build (``--force`` past a build
    #: id mismatch), or None.
    unverified: str | None = None

    @property
    def resolved(self) -> bool:
        return self.status == STATUS_RESOLVED

    @property
    def runtime_address(self) -> int | None:
        return self.frame.address

    @property
    def link_address(self) -> int | None:
        return self.matches[0].link_address if self.matches else None

    @property
    def lookup_address(self) -> int | None:
        return self.matches[0].lookup_address if self.matches else None

    @property
    def lookup(self) -> str | None:
        return self.matches[0].lookup if self.matches else None

    @property
    def chain(self) -> tuple[SourceLocation, ...]:
        return self.matches[0].chain if self.matches else ()

    @property
    def call(self) -> CallInstruction | None:
        return self.matches[0].call if self.matches else None

    def to_dict(self) -> dict[str, Any]:
        f = self.frame
        first = self.matches[0] if self.matches else None
        return {
            "line": self.lineno,
            "text": _printable(self.text.rstrip("\r\n")),
            "kind": str(f.kind),
            "stack": f.stack_index,
            "top": self.top,
            "reliable": f.reliable,
            "symbol": f.symbol,
            "offset": f.offset,
            "size": f.size,
            "module": f.module,
            "runtime_address": f"{f.address:#x}" if f.address is not None else None,
            "link_address": f"{first.link_address:#x}" if first else None,
            "lookup_address": f"{first.lookup_address:#x}" if first else None,
            "lookup": first.lookup if first else None,
            "resolved_symbol": first.symbol if first else None,
            "resolved_offset": first.offset if first else None,
            "resolved_size": first.size if first else None,
            "status": self.status,
            "reason": self.reason,
            "chain": [loc.to_dict() for loc in first.chain] if first else [],
            "call": first.call.to_dict() if first and first.call else None,
            "notes": [*self.notes, *(first.notes if first else ())],
            "misfit": self.misfit if self.misfit is not None or not self.matches
            else next((m.misfit for m in self.matches if m.misfit is not None), None),
            "verified": self.unverified is None,
            "unverified": self.unverified,
            "matches": [m.to_dict() for m in self.matches],
        }


class AnnotatedText:
    """The result of :func:`annotate`: every input line, the frames, and how addresses were read.

    :func:`annotate` makes the per-line records (:attr:`lines`, :attr:`frames`) on first use: the text
    of a long dump renders from one answer per distinct frame without them.
    """

    def __init__(self, lines: Sequence[ParsedLine], frames: Sequence[AnnotatedFrame], kaslr_offset: int | None,
                 kaslr_source: str | None, exact: bool, notes: Sequence[str] = ()) -> None:
        self._lines: tuple[ParsedLine, ...] | None = tuple(lines)
        self._frames: tuple[AnnotatedFrame, ...] | None = tuple(frames)
        #: The KASLR slide used for runtime addresses (``None``: none known).
        self.kaslr_offset = kaslr_offset
        #: Where the slide came from: ``kaslr_offset``, ``kallsyms``, ``Kernel Offset line N``, ``frames``.
        self.kaslr_source = kaslr_source
        #: ``exact=True`` was asked: every frame looked up at its address.
        self.exact = exact
        #: Remarks for the user (slide source, failed slide evidence).
        self.notes = tuple(notes)
        self._by_line: dict[int, AnnotatedFrame] | None = None
        self._lazy: _Answered | None = None

    @classmethod
    def _answered(cls, answered: _Answered, kaslr_offset: int | None, kaslr_source: str | None, exact: bool,
                  notes: Sequence[str]) -> AnnotatedText:
        new = cls((), (), kaslr_offset, kaslr_source, exact, notes)
        new._lines = new._frames = None
        new._lazy = answered
        return new

    @property
    def lines(self) -> tuple[ParsedLine, ...]:
        """Every input line, verbatim, with its frame (see :func:`ksym.parse.parse_text`)."""
        if self._lines is None:
            assert self._lazy is not None
            self._lines = tuple(self._lazy.parsed.lines())
        return self._lines

    @property
    def frames(self) -> tuple[AnnotatedFrame, ...]:
        """One record per frame line, in line order."""
        if self._frames is None:
            assert self._lazy is not None
            found = [line.frame for line in self.lines if line.frame is not None]
            out = []
            for f, (first, key) in zip(found, self._lazy.plan):
                fields = self._lazy.answers[key].__dict__.copy()
                fields.update(lineno=f.lineno, text=f.text, frame=f, top=first)
                out.append(frozen_record(AnnotatedFrame, fields))
            self._frames = tuple(out)
        return self._frames

    def __repr__(self) -> str:
        return (f"AnnotatedText({len(self.lines)} lines, {len(self.frames)} frames, "
                f"kaslr_offset={self.kaslr_offset!r}, kaslr_source={self.kaslr_source!r}, exact={self.exact!r}, "
                f"notes={self.notes!r})")

    @property
    def all_resolved(self) -> bool:
        return not self.unresolved

    @property
    def unresolved(self) -> tuple[AnnotatedFrame, ...]:
        if self._frames is None and self._lazy is not None and all(
                af.status == STATUS_RESOLVED for af in self._lazy.answers.values()):
            return ()
        return tuple(f for f in self.frames if f.status != STATUS_RESOLVED)

    def frame_at(self, lineno: int) -> AnnotatedFrame | None:
        if self._by_line is None:
            self._by_line = {f.lineno: f for f in self.frames}
        return self._by_line.get(lineno)

    @property
    def text(self) -> str:
        """The input with annotation lines after every frame line (see :func:`render_frame`)."""
        return self.render_text()

    def render_text(self, links: bool = False) -> str:
        """:attr:`text`; with ``links`` each location line ends with its elixir.bootlin.com link."""
        if self._frames is None and self._lazy is not None:
            return self._lazy.render(links)
        out: list[str] = []
        # frames repeat: the same answer under the same indentation renders to the same lines
        done: dict[tuple[object, ...], str] = {}
        for line in self.lines:
            out.append(line.text)
            af = self.frame_at(line.lineno)
            if af is None:
                continue
            ending = _ending(line.text, out)
            ind = _indent(af)
            key = (id(af.matches), af.status, af.reason, af.notes, af.unverified, af.frame.symbol is None, ind,
                   ending)
            block = done.get(key)
            if block is None:
                block = done[key] = "".join(a + ending for a in _shown(render_frame(af, links, ind)))
            out.append(block)
        return "".join(out)

    def json_lines(self) -> list[str]:
        """One JSON object per frame (see docs/annotate.md for the fields)."""
        import json

        return [json.dumps(f.to_dict()) for f in self.frames]


class _Answered:
    """A parsed text with one answer per distinct frame: what :class:`AnnotatedText` is made from."""

    def __init__(self, parsed: _Parsed, plan: list[tuple[bool, tuple[object, ...]]],
                 answers: dict[tuple[object, ...], AnnotatedFrame]) -> None:
        self.parsed = parsed
        #: Per frame line in order: whether it is the top of its stack, the key of its answer.
        self.plan = plan
        #: The answer of every key in :attr:`plan`.
        self.answers = answers

    def render(self, links: bool) -> str:
        """:meth:`AnnotatedText.render_text` from the rows and answers (no per-line records)."""
        out: list[str] = []
        done: dict[tuple[object, ...], str] = {}
        plan = iter(self.plan)
        shapes = self.parsed.shapes
        for text, (shape, start, stack) in zip(self.parsed.texts, self.parsed.rows):
            out.append(text)
            if stack < 0:
                continue
            key = next(plan)[1]
            ending = _ending(text, out)
            # the message starts where parse found it (an e-mail quote aside: see _indent)
            extent = shapes[shape].extent_start + start
            ind = _indent_text(text, extent, None if text.startswith(">") else start)
            block_key = (key, ind, ending)
            block = done.get(block_key)
            if block is None:
                block = done[block_key] = "".join(a + ending
                                                  for a in _shown(render_frame(self.answers[key], links, ind)))
            out.append(block)
        return "".join(out)


def _shown(lines: list[str]) -> list[str]:
    """Annotation lines for a terminal: names, paths and reasons come from debug files and the input, so
    their control characters show as visible escapes (:func:`ksym.format.terminal_text`; tabs stay)."""
    from .format import terminal_text

    return [terminal_text(line, "\t") for line in lines]


def _ending(text: str, out: list[str]) -> str:
    """The line ending annotation lines take after ``text``; a last line without one gets ``\\n``,
    appended to ``out`` first."""
    if text.endswith("\n"):
        return "\r\n" if text.endswith("\r\n") else "\n"
    out.append("\n")
    return "\n"


def _printable(text: str) -> str:
    """``text`` with undecodable input bytes (surrogate escapes) shown as U+FFFD, for JSON."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _indent(af: AnnotatedFrame) -> str:
    """Blanks up to the frame (tabs kept), at most up to the message's own indentation after a log
    prefix: a frame inside a sentence (``WARNING: ... at``) is annotated under the message start."""
    return _indent_text(af.text, af.frame.extent[0])


def _indent_text(text: str, end: int, start: int | None = None) -> str:
    """:func:`_indent` of a frame starting at ``end`` on line ``text`` whose log prefix ends at
    ``start`` (found again when not given)."""
    if start is None:
        start = strip_log_prefix(text, 0, end)
    while start < end and text[start] in " \t":
        start += 1
    lead = text[:start]
    if "\t" not in lead:
        return " " * (start + 2)
    return "".join(c if c == "\t" else " " for c in lead) + "  "


def render_frame(af: AnnotatedFrame, links: bool = False, indent: str | None = None) -> list[str]:
    """The annotation lines (no line endings) written after a frame line.

    ``-> innermost location``, then ``(inlined by) ...`` lines in faddr2line's order, then for a frame
    without a symbol ``in symbol+off/size``, then for a return address ``call site: <instruction>``;
    an unresolved frame gets ``-> unresolved: <reason>``.
    """
    ind = _indent(af) if indent is None else indent
    cont = ind + "   "
    if not af.resolved:
        out = [f"{ind}-> unresolved: {af.reason}"]
        if af.unverified is not None:
            out.append(f"{cont}unverified: {af.unverified}")
        return out
    out = []
    n = len(af.matches)
    for i, m in enumerate(af.matches):
        head = f"({i + 1}/{n} at {m.link_address:#x}) " if n > 1 else ""
        if not m.chain:
            out.append(f"{ind}-> {head}?? ??:0 (no line information)")
        for j, loc in enumerate(m.chain):
            text = f"{loc}  {loc.url}" if links and loc.url else str(loc)
            out.append(f"{ind}-> {head}{text}" if j == 0 else f"{cont}(inlined by) {text}")
        if af.frame.symbol is None and m.symbol is not None:
            out.append(f"{cont}in {m.symbol}+{(m.offset or 0):#x}/{(m.size or 0):#x}")
        if m.lookup == LOOKUP_CALL_SITE:
            what = m.call.text if m.call is not None else f"at {m.lookup_address:#x} (return address - 1)"
            out.append(f"{cont}call site: {what}")
        out.extend(f"{cont}note: {note}" for note in m.notes)
    out.extend(f"{cont}note: {note}" for note in af.notes)
    if af.unverified is not None:
        out.append(f"{cont}unverified: {af.unverified}")
    return out


def is_exact_frame(frame: StackFrame, top: bool) -> bool:
    """Whether a frame's address is where the code was (not a return address), by format and place."""
    return _exact_by_place(frame, top, _in_exact_context(frame))


def _in_exact_context(frame: StackFrame) -> bool:
    """The frame follows a register name or the WARN location words in its message (a log prefix,
    a timestamp or ``host kernel:``, never ends in them)."""
    return _EXACT_CONTEXT.search(frame.text, _body_bounds(frame.text)[0], frame.extent[0]) is not None


def _misfit(af: AnnotatedFrame) -> bool:
    """The frame does not fit the vmlinux (a frame with several same-named symbols fits when one does)."""
    return af.misfit is not None or (bool(af.matches) and all(m.misfit is not None for m in af.matches))


def _beyond_every(spec: FuncSpec, candidates: Sequence[FaddrMatch]) -> bool:
    """Every symbol of the name has a size, and ``spec`` does not fit any: a ``/size`` that is not the
    symbol's, or an offset beyond it (what faddr2line skips as a size mismatch)."""
    return bool(candidates) and all(
        m.size is not None and ((spec.size is not None and spec.size != m.size) or spec.offset > m.size)
        for m in candidates)


def _exact_by_place(frame: StackFrame, top: bool, in_context: bool) -> bool:
    """:func:`is_exact_frame` with :func:`_in_exact_context` already known."""
    if in_context:
        return True
    if frame.kind in _UNWINDER_KINDS:
        return False
    return top


class _Annotator:
    def __init__(self, sym: Symbolizer, slide: int | None, kallsyms: Kallsyms | None, exact: bool,
                 modules: ModuleSet | None = None, elixir: ElixirLinks | None = None) -> None:
        self.sym = sym
        #: the links every location gets (None: none)
        self.elixir = elixir
        # link-time address -> its chain with links (frames repeat)
        self._linked: LRUCache[int, tuple[SourceLocation, ...]] = LRUCache(maxsize=16384)
        self.modules = modules
        self.slide = slide
        self.kallsyms = kallsyms
        self.exact = exact
        self.can_disasm = supported_machine(sym.machine)
        # a dump repeats its frames (10,000 lines may hold 1,000 distinct ones): the answer for a frame
        # depends only on what the frame says and whether it is looked up exactly, not on its line
        # (the key: symbol, offset, size, address, module, build id, offset spelling, exact); a long
        # stream keeps the most recently used ones (:data:`_KEEP_ANSWERS`), each piece's own in its plan
        self._done_frames: OrderedDict[tuple[object, ...], AnnotatedFrame] = OrderedDict()
        self._callers: dict[int, int | None] = {}
        # the stack structure of the frames answered so far (a text answered piece by piece runs on)
        self._step = _ExactSteps()
        self._last_stack = -1

    def _chain(self, address: int) -> tuple[SourceLocation, ...]:
        """The symbolizer's chain at a link-time address, with links when the annotation has them."""
        if self.elixir is None:
            return self.sym.chain(address)
        got = self._linked.get(address)
        if got is None:
            got = self._linked[address] = self.elixir.chain(self.sym.chain(address))
        return got

    def learn_slide(self, slide: int) -> None:
        """Use ``slide`` for the frames from now on (a stream that gave it late): the answers kept so far
        were worked out without it."""
        self.slide = slide
        self._done_frames.clear()

    def prefetch(self, asks: Sequence[tuple[StackFrame, bool]]) -> None:
        """Have the symbolizer answer every address the frames will ask about at once, so the units
        they need are read in parallel: per ``(frame, exact)``, the frame's address when it is looked
        up exactly (or names a function without an offset), else the call site before it and the
        call instruction there (a return address whose call check fails is looked up later)."""
        want: set[int] = set()
        calls: set[tuple[int, int | None]] = set()
        done: set[tuple[str | None, int | None, int | None, bool]] = set()
        for f, exact in asks:
            key = (f.symbol, f.offset, f.address, exact)
            if f.module is not None or key in done:
                continue
            done.add(key)
            links: list[int] = []
            if f.symbol is not None and f.offset is not None:
                links = [m.symbol.address + f.offset for m in self.sym.symbols.matches(f.symbol, _VIEW)
                         if m.size is None or f.offset < m.size]
            elif f.address is not None and f.symbol is None:
                link, _why = self._link_of_runtime(f.address)
                links = [] if link is None else [link]
            elif f.symbol is not None and f.address is None:
                want.update(m.symbol.address for m in self.sym.symbols.matches(f.symbol, _VIEW))
                continue
            for link in links:
                if exact:
                    want.add(link)
                else:
                    want.add(link - 1)
                    if self.can_disasm:
                        calls.add((link, self._caller_start(link)))
        self.sym.prefetch(want, call_sites=calls)

    def _caller_start(self, link: int) -> int | None:
        """Start of the function holding the call before return address ``link`` (where the call-site
        sweep may begin; with ``link`` the key of the stored instruction)."""
        start = self._callers.get(link, -1)
        if start == -1:
            caller = self.sym.symbols.containing(link - 1)
            if len(self._callers) >= _KEEP_ANSWERS:
                self._callers.clear()
            start = self._callers[link] = caller[0].address if caller else None
        return start

    def answer(self, parsed: _Parsed) -> tuple[_Answered, int]:
        """One answer per distinct frame of a parsed text, and how many frame lines do not fit the vmlinux.

        Lines of one shape (:class:`ksym.parse._Parsed`) say the same thing, so whether the words
        before the frame make it exact (:func:`_in_exact_context`) is worked out once per shape with
        the frame the shape was first seen with, and frames saying the same thing looked up the same
        way share one answer: kept with the index's answers when it depends on the vmlinux alone
        (:meth:`_stored_key`), else worked out, the missing addresses first read together
        (:meth:`prefetch`). The answers carry the line of the frame they were worked out with.
        """
        # which frames are looked up exactly, and the distinct questions (answer key -> a frame asking it)
        shapes = parsed.shapes
        context: dict[int, bool] = {}
        plan: list[tuple[bool, tuple[object, ...]]] = []
        keys: dict[tuple[int, bool], tuple[object, ...]] = {}
        asks: dict[tuple[object, ...], tuple[StackFrame, bool, bool]] = {}
        counts: dict[tuple[object, ...], int] = {}
        step = self._step
        last_stack = self._last_stack
        for shape, _, stack in parsed.rows:
            if stack < 0:
                continue
            f = shapes[shape].frame
            assert f is not None
            # parse numbers stacks in line order: a frame starts one when its number changes
            first = stack != last_stack
            last_stack = stack
            in_context = context.get(shape)
            if in_context is None:
                in_context = context[shape] = _in_exact_context(f)
            exact = self.exact or step(f, first, in_context)
            key = keys.get((shape, exact))
            if key is None:
                key = keys[shape, exact] = (f.symbol, f.offset, f.size, f.address, f.module, f.module_build_id,
                                            f.offset_text, exact)
                if key not in asks:
                    asks[key] = (f, first, exact)
            plan.append((first, key))
            counts[key] = counts.get(key, 0) + 1
        self._last_stack = last_stack
        kept = self._done_frames
        done: dict[tuple[object, ...], AnnotatedFrame] = {}
        todo: list[tuple[tuple[object, ...], StackFrame, bool, bool]] = []
        for key, (f, first, exact) in asks.items():
            af = kept.get(key)
            if af is not None:
                kept.move_to_end(key)
                done[key] = af
                continue
            stored = self._stored(f, first, exact)
            if stored is not None:
                done[key] = stored
            else:
                todo.append((key, f, first, exact))
        self.prefetch([(f, exact) for _, f, _, exact in todo])
        for key, f, first, exact in todo:
            af = done[key] = self._frame(f, first, exact)
            self._store(af, exact)
        for key, af in done.items():
            kept[key] = af
        while len(kept) > _KEEP_ANSWERS:
            kept.popitem(last=False)
        misfits = sum(n for key, n in counts.items() if _misfit(done[key]))
        return _Answered(parsed, plan, {key: done[key] for key in counts}), misfits

    def _stored_key(self, f: StackFrame, exact: bool) -> tuple[object, ...] | None:
        """The key of ``f``'s answer among the index's stored answers, when the answer depends on the
        vmlinux alone (and how paths are shown, which the stored answers are kept per): a vmlinux
        ``func+off`` frame whose runtime address, if any, is not compared with a KASLR slide, or a
        bare function name."""
        if f.module is not None or f.symbol is None:
            return None
        if f.address is not None and (self.slide is not None or f.offset is None):
            return None
        return ("frame", f.symbol, f.offset, f.offset_text, f.size, f.size_text, exact, self.can_disasm)

    def _stored(self, f: StackFrame, top: bool, exact: bool) -> AnnotatedFrame | None:
        """``f``'s answer from the stored answers (see :meth:`_store`), or None."""
        key = self._stored_key(f, exact)
        rec = self.sym.remembered(key) if key is not None else None
        if rec is None:
            return None
        try:
            status, reason, notes, misfit, stored = rec
            matches = tuple(
                FrameMatch(link, look, lookup, symbol, offset, size, self._chain(look),
                           CallInstruction(*call) if call is not None else None, tuple(mnotes), mmisfit)
                for link, look, lookup, symbol, offset, size, call, mnotes, mmisfit in stored)
            return AnnotatedFrame(f.lineno, f.text, f, top, status, reason, matches, tuple(notes), misfit)
        except (TypeError, ValueError):
            return None  # damaged: work it out again

    def _store(self, af: AnnotatedFrame, exact: bool) -> None:
        """Keep ``af``'s answer with the index's answers when :meth:`_stored_key` allows, each match's
        chain by its lookup address (the chain is stored under that address already)."""
        key = self._stored_key(af.frame, exact)
        if key is None or any(m.chain != self._chain(m.lookup_address) for m in af.matches):
            return
        stored = tuple((m.link_address, m.lookup_address, m.lookup, m.symbol, m.offset, m.size,
                        m.call.fields() if m.call is not None else None, m.notes, m.misfit) for m in af.matches)
        self.sym.remember(key, (af.status, af.reason, af.notes, af.misfit, stored))

    def _frame(self, f: StackFrame, top: bool, exact: bool) -> AnnotatedFrame:
        def bad(reason: str, notes: tuple[str, ...] = (), misfit: str | None = None) -> AnnotatedFrame:
            return AnnotatedFrame(f.lineno, f.text, f, top, STATUS_UNRESOLVED, reason, (), notes, misfit)

        if f.module is not None:
            return self._module_frame(f, top, exact)
        notes: list[str] = []
        links: list[tuple[int, Resolution | None]] = []
        misfit: str | None = None
        if f.symbol is not None and f.offset is not None:
            try:
                spec = parse_spec(f.spec)
            except SpecError as exc:
                return bad(f"malformed frame: {exc}")
            if not isinstance(spec, FuncSpec):
                return bad(f"malformed frame: {f.spec!r} is not func+off")
            # the chains are looked up by _match: at the call site of a return address
            found, why, misfit = self._by_name(spec)
            if f.address is not None and self.slide is not None:
                # the frame printed where the code was too (perf script, bpftrace kstack(perf), ftrace
                # sym-addr): that address is what the CPU ran, its name a lookup made at capture time
                want = (f.address - self.slide) & ((1 << 64) - 1)
                same = [r for r in found if r.address == want]
                in_text = self._in_text(want)
                if same:
                    found = same
                elif found:
                    misfit = MISFIT_ADDRESS
                    at = ", ".join(f"{r.address:#x}" for r in found)
                    said = (f"runtime address {f.address:#x} - slide {self.slide:#x} = {want:#x}, but "
                            f"{f.symbol}+{f.offset:#x} is at {at} in this vmlinux (another kernel build, or "
                            "a wrong slide?)")
                    if in_text:
                        notes.append(f"{said}: resolved by the address")
                        found = []
                    else:
                        notes.append(f"{said}: resolved by the symbol")
                elif in_text:
                    notes.append(f"{why}: resolved by the runtime address {f.address:#x} (link-time {want:#x})")
                if not found and in_text:
                    links = [(want, None)]
            if not links:
                if not found:
                    return bad(why or f"no match for {f.spec}", misfit=misfit)
                links = [(r.address, r) for r in found]
        elif f.address is not None:
            link, why = self._link_of_runtime(f.address)
            if link is None:
                named = self._module_symbol(f.address)
                if named is not None:
                    return self._named_module_frame(f, top, exact, named)
                return bad(why or RUNTIME_ADDRESS_REASON)
            if why:
                notes.append(why)
            links = [(link, None)]
        elif f.symbol is not None:
            try:
                entry = parse_spec(f"{f.symbol}+0")
            except SpecError as exc:
                return bad(f"malformed frame: {exc}")
            if not isinstance(entry, FuncSpec):
                return bad(f"malformed frame: {f.symbol!r} is not a function name")
            found, why, _ = self._by_name(entry)
            if not found:
                return bad(why or f"unknown symbol {f.symbol}")
            matches = tuple(
                FrameMatch(r.address, r.address, LOOKUP_ENTRY, r.symbol, 0, r.size, self._chain(r.address))
                for r in found
            )
            notes.append("the frame gives no offset: the function's entry is shown")
            return self._done(f, top, matches, notes)
        else:
            return bad("no symbol and no address on the line")
        matches = tuple(self._match(link, res, exact) for link, res in links)
        return self._done(f, top, matches, notes, misfit)

    def _by_name(self, spec: FuncSpec) -> tuple[list[Resolution], str | None, str | None]:
        """Where ``spec`` is among the code names kallsyms prints (:data:`_VIEW`), by faddr2line's checks:
        the resolutions (no chains), else why none, and whether that is evidence of another build
        (``MISFIT_SIZE``: the name is known, but the offset is beyond it or its size is another)."""
        candidates = self.sym.symbols.matches(spec.name, _VIEW)
        try:
            return faddr2line_select(spec, candidates, lambda _m, _a: ()), None, None
        except SymbolNotFoundError as exc:
            if not candidates:
                return [], (f"unknown symbol {spec.name} (no code symbol of that name in this vmlinux: a "
                            "module frame without its [module] tag, or a name this build does not have)"), None
            if _beyond_every(spec, candidates):
                return [], (f"{spec.text} does not fit {spec.name} of this vmlinux (another kernel build?): "
                            + "; ".join(r.text for r in exc.reasons)), MISFIT_SIZE
            return [], f"{spec.text}: " + "; ".join(r.text for r in exc.reasons), None

    def _module_frame(self, f: StackFrame, top: bool, exact: bool) -> AnnotatedFrame:
        """A frame in a module: its debug file's answer (docs/modules.md); return addresses at ``- 1``."""

        def bad(reason: str) -> AnnotatedFrame:
            return AnnotatedFrame(f.lineno, f.text, f, top, STATUS_UNRESOLVED, reason, (), ())

        if self.modules is None:
            return bad(f"module {f.module}: no module debug files given (--modules DIR)")
        if f.symbol is None:
            named = self._module_symbol(f.address) if f.address is not None else None
            if named is not None:
                return self._named_module_frame(f, top, exact, named)
            return bad(f"module {f.module}: a bare runtime address needs the module's load address "
                       "(give the saved /proc/kallsyms of that boot with --kallsyms)")
        spec = f.spec if f.offset is not None else f"{f.symbol}+0"
        assert f.module is not None
        try:
            mod = self.modules.get(f.module, f.module_build_id)
            # faddr2line's "bad address" for a function at section offset 0 is the script's, not addr2line's
            found = mod.resolve(spec, refuse_zero=False)
        except KsymError as exc:
            return bad(f"module {f.module}: {exc}")
        matches = []
        for r in found:
            sec = mod.section_of(r)
            if f.offset is None:
                matches.append(FrameMatch(r.address, r.address, LOOKUP_ENTRY, r.symbol, 0, r.size,
                                          self._module_chain(r.chain)))
            elif exact or sec is None or not r.offset:
                matches.append(FrameMatch(r.address, r.address, LOOKUP_EXACT, r.symbol, r.offset, r.size,
                                          self._module_chain(r.chain)))
            else:
                matches.append(FrameMatch(r.address, r.address - 1, LOOKUP_CALL_SITE, r.symbol, r.offset, r.size,
                                          self._module_chain(mod.section_chain(sec, r.address - 1))))
        notes = [] if f.offset is not None else ["the frame gives no offset: the function's entry is shown"]
        return self._done(f, top, tuple(matches), notes)

    def _module_symbol(self, address: int) -> tuple[str, str, int] | None:
        """(module, symbol, offset) of a runtime address inside a module, by the saved kallsyms."""
        if self.kallsyms is None:
            return None
        hit = self.kallsyms.symbolize(address)
        if hit is None or hit[0].module is None or not hit[0].is_text:
            return None
        return hit[0].module, hit[0].name, hit[1]

    def _named_module_frame(self, f: StackFrame, top: bool, exact: bool,
                            named: tuple[str, str, int]) -> AnnotatedFrame:
        """A bare runtime address in a module: kallsyms names it ``sym+off [mod]``, and the module's
        debug file resolves that."""
        module, symbol, offset = named
        as_named = replace(f, symbol=symbol, offset=offset, offset_text=f"{offset:#x}", size=None,
                           size_text=None, module=module, module_build_id=None)
        done = self._module_frame(as_named, top, exact)
        note = f"{f.address:#x} is {symbol}+{offset:#x} [{module}] by the kallsyms given"
        return AnnotatedFrame(f.lineno, f.text, f, top, done.status, done.reason, done.matches,
                              (note, *done.notes))

    def _module_chain(self, chain: tuple[SourceLocation, ...]) -> tuple[SourceLocation, ...]:
        """An in-tree module is built in the vmlinux's build directory: print its paths source-relative
        like the vmlinux's (faddr2line on the .ko alone cannot know that prefix), with links."""
        prefix = getattr(self.sym, "dir_prefix", None)
        links = self.elixir
        out = []
        for loc in chain:
            file = loc.file
            if prefix and file.startswith(prefix):
                file = file[len(prefix):]
            loc = loc._replace(file=file)
            out.append(links.location(loc) if links is not None else loc)
        return tuple(out)

    def _done(self, f: StackFrame, top: bool, matches: tuple[FrameMatch, ...], notes: list[str],
              misfit: str | None = None) -> AnnotatedFrame:
        if all(not m.chain for m in matches):
            return AnnotatedFrame(f.lineno, f.text, f, top, STATUS_UNRESOLVED,
                                  "no line information for this address", matches, tuple(notes), misfit)
        return AnnotatedFrame(f.lineno, f.text, f, top, STATUS_RESOLVED, None, matches, tuple(notes), misfit)

    def _link_of_runtime(self, address: int) -> tuple[int | None, str | None]:
        """Link-time address of a runtime address, or (None, reason); the second item may be a note."""
        if self.slide is not None:
            link = (address - self.slide) & ((1 << 64) - 1)
            if self._in_text(link):
                return link, None
            return None, self._outside(address, link)
        if self._in_text(address):
            return address, "no KASLR slide known: the address is taken as link-time (a nokaslr boot)"
        return None, RUNTIME_ADDRESS_REASON

    def _in_text(self, address: int) -> bool:
        """``address`` is in an executable section of the vmlinux and inside a symbol."""
        sec = self.sym.symbols.section_containing(address)
        return sec is not None and bool(sec.flags & 0x4) and self.sym.symbols.containing(address) is not None

    def _outside(self, address: int, link: int) -> str:
        if self.kallsyms is not None:
            hit = self.kallsyms.symbolize(address)
            if hit is not None and hit[0].module is not None:
                e, off = hit
                return f"module {e.module} ({e.name}+{off:#x}): module debug info not supported yet"
        return (f"address {address:#x} (link-time {link:#x} with slide {self.slide or 0:#x}) is not in the "
                "vmlinux text: a module, BPF program or another kernel?")

    def _match(self, link: int, res: Resolution | None, exact: bool) -> FrameMatch:
        if res is not None:
            symbol, offset, size = res.symbol, res.offset, res.size
        else:
            here = self.sym.symbols.containing(link)
            symbol, offset, size = (here[0].name, link - here[0].address, here[1]) if here else (None, None, None)
        if exact:
            chain = self._chain(link)
            return FrameMatch(link, link, LOOKUP_EXACT, symbol, offset, size, chain)
        look = link - 1
        call: CallInstruction | None = None
        if self.can_disasm and self.sym.code_bytes(look, 1):
            before = self.sym.instruction_before(link, self._caller_start(link), self.sym.name_of)
            insn = before.instruction
            why: str | None = None
            if before.boundary is False:
                why = (f"{link:#x} is inside an instruction of this vmlinux, so not a return address "
                       "(a dump from another build?): looked up exactly")
            elif insn is not None and not insn.is_call:
                why = (f"the instruction before {link:#x} is '{insn.text}', not a call (interrupted code "
                       "or a stale stack entry): looked up exactly")
            elif insn is None:
                why = f"no call instruction ends at {link:#x}: looked up exactly"
            if why is not None:
                chain = self._chain(link)
                return FrameMatch(link, link, LOOKUP_EXACT, symbol, offset, size, chain, None, (why,),
                                  MISFIT_INSIDE_INSTRUCTION if before.boundary is False else None)
            call = insn
        chain = self._chain(look)
        return FrameMatch(link, look, LOOKUP_CALL_SITE, symbol, offset, size, chain, call)


class _ExactSteps:
    """Whether each frame of a text, given in line order, is looked up exactly: its address is where
    the code was (:func:`is_exact_frame`), or it is the first unwinder frame of a stack that repeats
    the register line before it (arm64's ``Call trace:`` starts with the ``pc :`` function)."""

    def __init__(self) -> None:
        self.last_pc: tuple[str | None, int | None, str | None] | None = None

    def __call__(self, f: StackFrame, first: bool, in_context: bool) -> bool:
        exact = _exact_by_place(f, first, in_context)
        if in_context:
            self.last_pc = (f.symbol, f.offset, f.module)
        elif first and f.kind in _UNWINDER_KINDS:
            exact = f.offset is not None and self.last_pc == (f.symbol, f.offset, f.module)
            self.last_pc = None
        return exact


class SlideVote(NamedTuple):
    """Frames of a dump that print a runtime address beside a vmlinux ``func+off``: one per distinct
    ``(address, symbol, offset)``, with how many frame lines say it (the KASLR slide's votes)."""

    address: int
    symbol: str
    offset: int
    #: How many frame lines say it.
    lines: int


class DumpEvidence(NamedTuple):
    """What a dump says about the build and the boot it comes from, besides its frames: found in the
    whole text of a file before any frame is annotated (:meth:`DumpInput.evidence`), or in what a pipe
    gave so far. Its size does not grow with the text's length (the votes grow with its distinct frames)."""

    #: The kernel build id the text names (:func:`ksym.debuginfo.kernel_build_id_in_text`), or None.
    build_id: str | None
    #: The slide of the first ``Kernel Offset:`` line (:func:`ksym.parse.find_kaslr_offset`), or None.
    kernel_offset: int | None
    #: Number of the first line that is a ``Kernel Offset:`` line (``None``: none).
    kernel_offset_line: int | None
    #: The slide's votes, in the order the text first gives them.
    votes: tuple[SlideVote, ...]
    #: A vmlinux frame prints a runtime address beside ``func+off`` (the frames may give the slide).
    addressed_names: bool
    #: A vmlinux frame prints a runtime address and no name (it needs the slide).
    bare_addresses: bool
    #: The whole input has been read (a file, or a pipe that ended before its first pause).
    complete: bool


class StreamSummary(NamedTuple):
    """What :func:`annotate_stream` returns once the input has ended: the counts and notes of
    :class:`AnnotatedText` for the whole text."""

    frames: int
    unresolved: int
    #: Remarks for the user (slide source, frames that do not fit): :attr:`AnnotatedText.notes`.
    notes: tuple[str, ...]
    kaslr_offset: int | None
    kaslr_source: str | None


class _EvidenceScan:
    """Builds a :class:`DumpEvidence` from the pieces of a text, in order, each cut at a line boundary.

    The build id and the ``Kernel Offset:`` patterns may span lines (their blanks match newlines), so
    each piece is searched after the last lines of the one before it (:data:`_CARRY_LINES`)."""

    def __init__(self) -> None:
        self.build_id: str | None = None
        self._json_id: str | None = None
        self.kernel_offset: int | None = None
        self.kernel_offset_line: int | None = None
        self.votes: dict[tuple[int, str, int], int] = {}
        self.addressed_names = False
        self.bare_addresses = False
        self._carry = ""
        self._id_carry = ""

    def feed(self, text: str, parsed: _Parsed | None, first_lineno: int, build_id: bool = True) -> None:
        """Look at the next piece, ``text``, whose first line is number ``first_lineno``: its frames too
        when ``parsed`` is given (the slide's votes; without, it gives none), its build id with
        ``build_id``."""
        window = self._carry + text
        if build_id and self.build_id is None:
            stated = _stated_build_id(window, json=self._json_id is None)
            self.build_id = stated.line
            if self._json_id is None:
                self._json_id = stated.json
        if self.kernel_offset is None:
            self.kernel_offset = find_kaslr_offset(window)
        if self.kernel_offset_line is None:
            if parsed is not None:
                self.kernel_offset_line = parsed.first_line("kaslr")
            else:
                self.kernel_offset_line = _kernel_offset_line(text, first_lineno)
        if parsed is not None:
            self._vote(parsed)
        self._carry = self._id_carry = _carry_of(window)

    def named_build_id(self, text: str) -> str | None:
        """The kernel build id the next piece, ``text``, names (searched after the last lines of the
        piece before, as :meth:`feed` searches), or None: what a pipe's later pieces are checked by."""
        window = self._id_carry + text
        self._id_carry = _carry_of(window)
        stated = _stated_build_id(window, json=True)
        return stated.line or stated.json

    def _vote(self, parsed: _Parsed) -> None:
        shapes = parsed.shapes
        counts: dict[int, int] = {}
        for shape, _, stack in parsed.rows:
            if stack >= 0:
                counts[shape] = counts.get(shape, 0) + 1
        votes = self.votes
        for shape in sorted(counts):  # shapes are numbered in the order the text first shows them
            f = shapes[shape].frame
            assert f is not None
            if f.address is None or f.module is not None:
                continue
            if f.offset is not None and f.symbol is not None:
                self.addressed_names = True
                key = (f.address, f.symbol, f.offset)
                votes[key] = votes.get(key, 0) + counts[shape]
            elif f.symbol is None:
                self.bare_addresses = True

    def evidence(self, complete: bool) -> DumpEvidence:
        return DumpEvidence(self.build_id or self._json_id, self.kernel_offset, self.kernel_offset_line,
                            tuple(SlideVote(a, s, o, n) for (a, s, o), n in self.votes.items()),
                            self.addressed_names, self.bare_addresses, complete)


class _StatedBuildId(NamedTuple):
    """The kernel build id a piece of text names (:func:`ksym.buildid.kernel_build_id_in_text`)."""

    #: Named other than by a JSON ``"build_id"`` key (a ``Build ID: <hex>`` line): it wins over such a
    #: key anywhere before it.
    line: str | None
    #: Named by a JSON ``"build_id"`` key; looked for only where ``line`` is None and it is asked for.
    json: str | None


def _stated_build_id(window: str, json: bool) -> _StatedBuildId:
    """The build id ``window`` names: a ``Build ID:`` line first (the JSON key's quote keeps it from
    being one once renamed), then, with ``json``, one of either kind."""
    from .buildid import kernel_build_id_in_text

    if '"build_id"' not in window:
        return _StatedBuildId(kernel_build_id_in_text(window), None)
    line = kernel_build_id_in_text(window.replace('"build_id"', '"build~id"'))
    return _StatedBuildId(line, kernel_build_id_in_text(window) if json and line is None else None)


def _carry_of(window: str) -> str:
    """The last lines of ``window`` (:data:`_CARRY_LINES`, at most :data:`_CARRY_CHARS` characters), which
    the search of the next piece starts with: a pattern may span lines."""
    parts = window.rsplit("\n", _CARRY_LINES + 1)  # the last lines, and the head before them
    carry = window if len(parts) < _CARRY_LINES + 2 else window[len(parts[0]) + 1:]
    return carry if len(carry) <= _CARRY_CHARS else ""


def _kernel_offset_line(text: str, first_lineno: int) -> int | None:
    """Number of the first line of ``text`` that is a ``Kernel Offset:`` line (not a frame), as
    :meth:`ksym.parse._Parsed.first_line` finds it, without parsing the other lines."""
    pos = text.find("Kernel Offset:")
    while pos >= 0:
        start = text.rfind("\n", 0, pos) + 1
        end = text.find("\n", pos)
        line = text[start:] if end < 0 else text[start:end + 1]
        if parse_line(line) is None and line_context(line) == "kaslr":
            return first_lineno + text.count("\n", 0, start)
        pos = text.find("Kernel Offset:", len(line) + start)
    return None


#: Lines of a piece searched again with the next piece, for a build id or ``Kernel Offset:`` line
#: broken across lines (at most :data:`_CARRY_CHARS` characters of them).
_CARRY_LINES = 4
_CARRY_CHARS = 16384


class _Slide(NamedTuple):
    """The KASLR slide a text gives (see :func:`_slide_of`) and the notes about it."""

    slide: int | None
    source: str | None
    #: Why the frames elected no slide (a note for the user), or None.
    failed: str | None
    #: Frames printing an address beside a name of the vmlinux that elect no slide, and why.
    unslid: int
    unslid_why: str


def _slide_of(evidence: DumpEvidence, symbolizer: Symbolizer, kaslr_offset: int | None,
              kallsyms: Kallsyms | None) -> _Slide:
    """The slide: ``kaslr_offset``, else ``kallsyms``'s, else a ``Kernel Offset:`` line's, else the
    frames' vote (:func:`ksym.kallsyms.kaslr_offset_from_frames`)."""
    if kaslr_offset is not None:
        return _Slide(kaslr_offset, "kaslr_offset", None, 0, "")
    if kallsyms is not None:
        return _Slide(kaslr_offset_from_kallsyms(kallsyms, symbolizer.address_of), "kallsyms", None, 0, "")
    if evidence.kernel_offset is not None:
        where = evidence.kernel_offset_line
        return _Slide(evidence.kernel_offset, f"Kernel Offset line {where}" if where else "Kernel Offset line",
                      None, 0, "")
    if not evidence.addressed_names:
        return _Slide(None, None, None, 0, "")
    frames = [StackFrame(0, "", (0, 0), FrameKind.RAW, symbol=v.symbol, offset=v.offset, address=v.address)
              for v in evidence.votes]
    counts = [v.lines for v in evidence.votes]
    try:
        voters = itertools.chain.from_iterable(itertools.repeat(f, n) for f, n in zip(frames, counts))
        return _Slide(kaslr_offset_from_frames(voters, symbolizer.address_of), "frames", None, 0, "")
    except KaslrError as exc:
        # one boot has one slide: frames that vote (see kaslr_offset_from_frames) and elect none (no
        # majority, or a slide off the KASLR grid) do not fit this vmlinux
        unslid = sum(n for f, n in zip(frames, counts) if symbolizer.address_of(f.symbol or "") is not None)
        failed = f"no KASLR slide from the frames: {exc}" if evidence.bare_addresses else None
        return _Slide(None, None, failed, unslid, str(exc))


def _end_notes(slide: _Slide, misfits: int, symbolizer: Symbolizer) -> list[str]:
    """:attr:`AnnotatedText.notes`: where the slide came from, and the evidence of another build."""
    notes: list[str] = []
    if slide.failed is not None:
        notes.append(slide.failed)
    if slide.slide is not None:
        notes.append(f"KASLR slide {slide.slide:#x} (from {slide.source})")
    if misfits:
        notes.append(f"{misfits} frame(s) do not fit this vmlinux (offsets beyond their symbols, addresses "
                     "inside instructions or away from their names): is the dump from another kernel build? "
                     f"(vmlinux: {(symbolizer.banner or str(symbolizer.path)).strip()})")
    if slide.unslid:
        notes.append(f"the {slide.unslid} frame(s) printing an address beside a name of this vmlinux agree on no "
                     f"KASLR slide ({slide.unslid_why}): is the dump from another kernel build, or from several "
                     "boots?")
    return notes


def _answer_piece(worker: _Annotator, parsed: _Parsed, unverified: str | None) -> tuple[_Answered, int]:
    answered, misfits = worker.answer(parsed)
    if unverified is not None:
        answered.answers = {k: replace(af, unverified=unverified) for k, af in answered.answers.items()}
    return answered, misfits


def annotate(
    text: str,
    symbolizer: Symbolizer,
    *,
    kaslr_offset: int | None = None,
    kallsyms: Kallsyms | None = None,
    exact: bool = False,
    modules: ModuleSet | None = None,
    unverified: str | None = None,
    elixir: ElixirLinks | None = None,
) -> AnnotatedText:
    """Resolve every frame of ``text`` against ``symbolizer``'s vmlinux (see the module docstring).

    :param kaslr_offset: the KASLR slide (runtime - link-time); wins over every other source.
    :param kallsyms: a saved ``/proc/kallsyms`` of the boot the text comes from: gives the slide and
        names module addresses.
    :param exact: look every frame up at its address (faddr2line), never at the call site.
    :param unverified: why the vmlinux is not known to be the dump's build (``--force`` past a build id
        mismatch): every frame carries it (:attr:`AnnotatedFrame.unverified`).
    :param elixir: the links every location gets (:func:`ksym.links.links_for` the symbolizer's
        ``banner``); None: locations carry none.
    :raises KaslrError: ``kallsyms`` does not match the vmlinux.
    """
    parsed = _parse(text)
    scan = _EvidenceScan()
    scan.feed(text, parsed, 1)
    slide = _slide_of(scan.evidence(True), symbolizer, kaslr_offset, kallsyms)
    worker = _Annotator(symbolizer, slide.slide, kallsyms, exact, modules, elixir)
    answered, misfits = _answer_piece(worker, parsed, unverified)
    return AnnotatedText._answered(answered, slide.slide, slide.source, exact,
                                   _end_notes(slide, misfits, symbolizer))


# --------------------------------------------------------------------------------------------------
# Streaming

#: A piece of the input is annotated at once (its addresses prefetched together) up to this many lines
#: or bytes: the memory a long input needs is a piece's.
CHUNK_LINES = 100_000
CHUNK_BYTES = 4 << 20
#: A pipe that gives nothing for this long has said what it has for now (``dmesg -w``, ``journalctl -f``):
#: what came before the pause is annotated and written, and the rest as it arrives.
PIPE_PAUSE_SECONDS = 0.1


class _Piece(NamedTuple):
    """A piece of the input as :func:`annotate_stream` annotates it."""

    parsed: _Parsed
    #: What the text said so far (a file: the whole text)
    evidence: DumpEvidence
    #: The kernel build id a pipe's later piece names (None: none, or a piece of a file or the first)
    build_id: str | None


class DumpInput:
    """The text of ``ksym annotate``, read piece by piece from a binary file object: each piece ends at
    a line boundary (the last may lack a line ending), holds at most ``chunk_lines`` lines and about
    ``chunk_bytes`` bytes (a longer line is one piece), and decodes as UTF-8 with undecodable bytes kept
    (``surrogateescape``).

    A regular file is read twice: :meth:`evidence` reads it whole for what the dump says about its
    build and boot (:class:`DumpEvidence`), then :func:`annotate_stream` reads it again from the start
    (a file of one piece is read once), so the output is the one :func:`annotate` gives for the whole
    text. A pipe or terminal is read once: its evidence is what it gives up to its first pause
    (:data:`PIPE_PAUSE_SECONDS`) or its first piece, and each later piece is the lines that have arrived
    when the one before has been written. The file object stays the caller's to close.
    """

    def __init__(self, fh: BinaryIO, *, chunk_lines: int = CHUNK_LINES, chunk_bytes: int = CHUNK_BYTES,
                 pause: float = PIPE_PAUSE_SECONDS, votes: bool = True) -> None:
        if chunk_lines < 1 or chunk_bytes < 1:
            raise ValueError("a piece holds at least one line")
        self._fh = fh
        #: Whether the frames' votes for the KASLR slide are wanted (no slide given): without, a file's
        #: first read does not parse it.
        self.votes = votes
        self.chunk_lines = chunk_lines
        self.chunk_bytes = chunk_bytes
        self.pause = pause
        self._fd: int | None = None
        with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
            self._fd = fh.fileno()
        if self._fd is not None:
            try:
                #: A regular file (read twice); else a pipe, a terminal or a device (read once, as it comes).
                self.seekable = stat.S_ISREG(os.fstat(self._fd).st_mode)
            except OSError:
                self.seekable = False
        else:
            self.seekable = fh.seekable()
        self._start = fh.tell() if self.seekable else 0
        self._buf = bytearray()
        self._lines = 0  # line endings in _buf
        self._eof = False
        self._scan = _EvidenceScan()
        self._state = _ParseState()
        self._evidence: DumpEvidence | None = None
        # the piece read for the evidence and not annotated yet (a pipe's first, a file of one piece)
        self._held: tuple[str, _Parsed] | None = None
        self._reread = False
        #: A pipe's later pieces are looked at for the slide (a ``Kernel Offset:`` line, the frames' votes)
        #: until :func:`annotate_stream` knows it.
        self.follow = True

    def evidence(self) -> DumpEvidence:
        """What the dump says about its build and boot: in the whole text of a file, in what a pipe gives
        before its first pause (:attr:`DumpEvidence.complete` says whether that was all of it)."""
        if self._evidence is None:
            scan = self._scan
            for piece in self._read_pieces(prelude=not self.seekable):
                whole = not self._reread and self._eof and not self._buf
                first = self._state.lineno
                parsed = None
                if not self.seekable or whole or (self.votes and scan.kernel_offset is None
                                                  and find_kaslr_offset(piece) is None
                                                  and _may_hold_address(piece)):
                    parsed = _parse(piece, self._state)
                else:  # a file's first read: its frames are only the slide's votes, and none is wanted here
                    self._state.lineno += piece.count("\n") + (not piece.endswith("\n"))
                scan.feed(piece, parsed, first)
                if self.seekable and not whole:
                    self._reread = True  # more than one piece: annotated from a second read
                else:
                    assert parsed is not None
                    self._held = (piece, parsed)
                if not self.seekable:
                    break
            self._evidence = scan.evidence(self._eof and not self._buf)
        return self._evidence

    def _pieces(self, build_ids: bool = False) -> Iterator[_Piece]:
        """Every piece of the text in order, parsed, with the evidence known when it is annotated (and,
        with ``build_ids``, for a pipe's pieces after its first, the kernel build id the piece names)."""
        evidence = self.evidence()
        if self._reread:
            self._fh.seek(self._start)
            self._buf, self._lines, self._eof, self._state = bytearray(), 0, False, _ParseState()
            for piece in self._read_pieces(prelude=False):
                yield _Piece(_parse(piece, self._state), evidence, None)
            return
        if self._held is not None:
            yield _Piece(self._held[1], evidence, None)
            self._held = None
        if self.seekable:
            return
        for piece in self._read_pieces(prelude=False):
            first = self._state.lineno
            parsed = _parse(piece, self._state)
            named = self._scan.named_build_id(piece) if build_ids else None
            if self.follow:
                self._scan.feed(piece, parsed, first, build_id=False)
                evidence = self._scan.evidence(False)
            yield _Piece(parsed, evidence, named)

    def _read_pieces(self, prelude: bool) -> Iterator[str]:
        """The pieces of the rest of the input. A file's are full pieces; a pipe's are the complete lines
        that have arrived (``prelude``: up to its first pause, then no more)."""
        while True:
            paused = False
            while not self._eof and not self._full():
                if not self.seekable:
                    wait = self.pause if prelude else 0.0 if self._lines else None
                    if wait is not None and not self._ready(wait):
                        paused = True
                        break
                data = self._read()
                if not data:
                    self._eof = True
                    break
                self._buf += data
                self._lines += data.count(b"\n")
            cut = self._cut()
            if cut:
                piece = self._buf[:cut].decode("utf-8", "surrogateescape")
                del self._buf[:cut]
                self._lines = self._buf.count(b"\n")
                yield piece
            elif self._eof or paused:
                return
            if paused and prelude:
                return

    def _full(self) -> bool:
        return self._lines >= self.chunk_lines or (self._lines > 0 and len(self._buf) >= self.chunk_bytes)

    def _cut(self) -> int:
        """Where the next piece of :attr:`_buf` ends (0: no complete line yet)."""
        buf = self._buf
        if self._eof and self._lines + (not buf.endswith(b"\n")) <= self.chunk_lines \
                and len(buf) <= self.chunk_bytes:
            return len(buf)
        end = buf.rfind(b"\n", 0, self.chunk_bytes)
        if end < 0:
            end = buf.find(b"\n")
            if end < 0:
                return len(buf) if self._eof else 0
        if buf.count(b"\n", 0, end + 1) > self.chunk_lines:
            end = -1
            for _ in range(self.chunk_lines):
                end = buf.find(b"\n", end + 1)
        return end + 1

    def _read(self) -> bytes:
        if self.seekable:
            return self._fh.read(1 << 20)
        if self._fd is not None:
            return os.read(self._fd, 1 << 20)  # what has arrived, without waiting for more
        read1 = getattr(self._fh, "read1", None)
        return read1(1 << 16) if read1 is not None else self._fh.read(1 << 16)

    def _ready(self, timeout: float) -> bool:
        """Whether reading the pipe would not wait (data, or its end) within ``timeout`` seconds."""
        if self._fd is None:
            return True
        try:
            return bool(select.select([self._fd], [], [], timeout)[0])
        except (OSError, ValueError):
            return True


def annotate_stream(
    source: DumpInput | BinaryIO,
    symbolizer: Symbolizer,
    write: Callable[[str], None],
    *,
    kaslr_offset: int | None = None,
    kallsyms: Kallsyms | None = None,
    exact: bool = False,
    modules: ModuleSet | None = None,
    unverified: str | None = None,
    json: bool = False,
    links: bool = False,
    elixir: ElixirLinks | None = None,
    check_build_id: Callable[[str], str | None] | None = None,
) -> StreamSummary:
    """:func:`annotate` of a text read piece by piece (:class:`DumpInput`), each piece's output given to
    ``write`` as soon as it is annotated: the annotated text (``links``: with the links of ``elixir``
    after each location), or with ``json`` one JSON object per frame and line (with ``elixir``'s links). Memory does not grow with the text's length.

    From a regular file the output is :func:`annotate`'s for the whole text, byte for byte. From a pipe
    each piece is annotated with what the lines read so far say: a KASLR slide from a ``Kernel Offset:``
    line or the frames is used from the piece that gives it on (and kept), and the notes come at the end.

    ``check_build_id`` is called with each kernel build id a pipe names after its first piece (one other
    than the build id named before it, :attr:`DumpEvidence.build_id` at first) before that piece is
    annotated: it returns the reason the frames from that piece on carry (``unverified``; None: they are
    verified), or raises (:class:`ksym.errors.BuildIdMismatchError`) to stop before writing the piece.
    """
    dump = source if isinstance(source, DumpInput) else DumpInput(source)
    evidence = dump.evidence()
    fixed = kaslr_offset is not None or kallsyms is not None or evidence.complete
    slide = _slide_of(evidence, symbolizer, kaslr_offset, kallsyms)
    worker = _Annotator(symbolizer, slide.slide, kallsyms, exact, modules, elixir)
    frames = unresolved = misfits = 0
    dump.follow = not fixed
    named = evidence.build_id
    for parsed, known, build_id in dump._pieces(build_ids=check_build_id is not None):
        if build_id is not None and check_build_id is not None:
            from .buildid import same_build_id

            if named is None or not same_build_id(build_id, named):
                unverified = check_build_id(build_id)
                named = build_id
        if dump.follow:
            slide = _slide_of(known, symbolizer, None, None)
            if slide.slide is not None:
                worker.learn_slide(slide.slide)
                dump.follow = False
        answered, misfit = _answer_piece(worker, parsed, unverified)
        misfits += misfit
        frames += len(answered.plan)
        bad = {key for key, af in answered.answers.items() if af.status != STATUS_RESOLVED}
        if bad:
            unresolved += sum(1 for _, key in answered.plan if key in bad)
        result = AnnotatedText._answered(answered, slide.slide, slide.source, exact, ())
        if json:
            write("".join(line + "\n" for line in result.json_lines()))
        else:
            write(result.render_text(links))
    return StreamSummary(frames, unresolved, tuple(_end_notes(slide, misfits, symbolizer)), slide.slide,
                         slide.source)
