"""Readable reports of an annotated stack dump: one self-contained HTML page, or Markdown.

:func:`render_html` and :func:`render_markdown` take the :class:`ksym.annotate.AnnotatedText` that
:func:`ksym.annotate.annotate` returns and lay it out for a person: a header (the vmlinux and its
banner, the kernel tag the links point at, the KASLR slide and where it came from, how many frames
resolved, the notes), then every stack (frames grouped by ``stack_index``) as a numbered list of
frames. Each frame shows the input line as it was, the location with its ``(inlined by)`` chain
(innermost first, as faddr2line prints it), an elixir.bootlin.com link for each location and each
function, the call instruction of a return address, the reason of an unresolved frame, and the source
around every location (``render_context``: +-5 lines, the line itself marked) in a collapsible
``<details>`` block. The whole annotated text follows at the end.

The input is untrusted (pasted logs): every piece of it is escaped, undecodable bytes and control
characters become U+FFFD. The HTML page has no script and loads nothing (inline CSS, a
``Content-Security-Policy`` that forbids everything else, ``no-referrer``), so it opens offline and
safely in a browser. The Markdown keeps input text in code spans and fenced blocks whose fences are
longer than any backtick run inside them, and escapes the rest.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .annotate import (
    LOOKUP_CALL_SITE,
    LOOKUP_ENTRY,
    AnnotatedFrame,
    AnnotatedText,
    FrameMatch,
)
from .format import write_output
from .links import ElixirLinks, links_for
from .model import SourceLocation
from .source import SourceFetchError, SourceProvider, choose_source_dir, render_context
from .version import choose_tag

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .searchopts import SourceOptions

__all__ = [
    "DEFAULT_TITLE",
    "FORMATS",
    "ReportInfo",
    "provider_for",
    "render_html",
    "render_markdown",
    "render_report",
    "report_for_command",
    "report_info",
    "write_output",
]

#: Title of a report without one (``ksym annotate --format html|markdown`` without ``--title``).
DEFAULT_TITLE = "ksym stack report"
#: The report formats :func:`render_report` knows.
FORMATS = ("html", "markdown")
#: Lines of source shown on each side of a location.
RADIUS = 5

_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")


@dataclass(frozen=True)
class ReportInfo:
    """What the report header says about the vmlinux (all optional)."""

    #: Path of the debug vmlinux.
    vmlinux: str | None = None
    #: Its ``linux_banner`` (``Linux version 6.1.0-53-cloud-amd64 ...``).
    banner: str | None = None
    #: How the kernel tag was chosen (``debian-package``, ``override`` ...).
    tag_source: str | None = None
    #: The tag's caveat (``TagGuess.note``).
    tag_note: str | None = None
    #: Where the input came from (a file name, ``standard input``).
    input_name: str | None = None
    #: Links for locations that carry none (annotated without ``elixir=``).
    links: ElixirLinks | None = None
    #: Extra ``(label, value)`` rows for the header.
    extra: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def report_info(symbolizer: Any, *, input_name: str | None = None, kernel_tag: str | None = None,
                elixir_url: str | None = None) -> ReportInfo:
    """:class:`ReportInfo` for a :class:`ksym.Symbolizer` (path, banner, the tag guessed from the banner
    or ``kernel_tag``, links to it on ``elixir_url``: :func:`ksym.links.links_for`).

    :raises ValueError: a malformed ``kernel_tag`` or ``elixir_url``.
    """
    banner = getattr(symbolizer, "banner", None)
    guess = choose_tag(banner, kernel_tag)
    return ReportInfo(
        vmlinux=str(symbolizer.path),
        banner=(banner or "").strip() or None,
        tag_source=guess.derived_from,
        tag_note=guess.note,
        input_name=input_name,
        links=links_for(banner, kernel_tag=kernel_tag, elixir_url=elixir_url),
    )


def render_report(
    annotated: AnnotatedText,
    fmt: str,
    *,
    provider: SourceProvider | None,
    tag: str,
    title: str = DEFAULT_TITLE,
    info: ReportInfo | None = None,
    errors: list[SourceFetchError] | None = None,
    open_source: bool = True,
) -> str:
    """:func:`render_html` (``fmt="html"``) or :func:`render_markdown` (``fmt="markdown"``/``"md"``)."""
    kw: dict[str, Any] = {"provider": provider, "tag": tag, "title": title, "info": info, "errors": errors,
                          "open_source": open_source}
    if fmt == "html":
        return render_html(annotated, **kw)
    if fmt in ("markdown", "md"):
        return render_markdown(annotated, **kw)
    raise ValueError(f"unknown report format {fmt!r} (one of {', '.join(FORMATS)})")


# --------------------------------------------------------------------------------------------------
# The model both renderers walk


def clean(text: str) -> str:
    """``text`` safe to display: undecodable input bytes (surrogate escapes) and lone surrogates as
    U+FFFD, control characters other than tab as U+FFFD, the line ending dropped."""
    text = text.rstrip("\r\n")
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        text = _SURROGATE_RE.sub("\ufffd", text)
    return _CONTROL_RE.sub("\ufffd", text)


@dataclass(frozen=True)
class _Context:
    """The source around one location: ``lines`` of ``(number, text, marked)``, or why there is none."""

    location: SourceLocation
    lines: tuple[tuple[int, str, bool], ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class _Stack:
    index: int
    frames: tuple[AnnotatedFrame, ...]


def _stacks(annotated: AnnotatedText) -> list[_Stack]:
    order: dict[int, list[AnnotatedFrame]] = {}
    for af in annotated.frames:
        order.setdefault(af.frame.stack_index, []).append(af)
    return [_Stack(i, tuple(fs)) for i, fs in order.items()]


class _Sources:
    """Source context per location, each file read once per report; failures collected."""

    def __init__(self, provider: SourceProvider | None, tag: str, errors: list[SourceFetchError] | None,
                 open_innermost: bool = True) -> None:
        self.provider = provider
        #: Show the innermost location's block of each match opened (the others stay collapsed).
        self.open_innermost = open_innermost
        self.tag = tag
        self.errors = errors
        self._files: dict[str, list[str] | SourceFetchError] = {}

    def context(self, loc: SourceLocation) -> _Context | None:
        if self.provider is None or loc.file in ("", "??"):
            return None
        if loc.line <= 0:
            return _Context(loc, error="no line number for this location")
        got = self._files.get(loc.file)
        if got is None:
            try:
                got = self.provider.get_lines(self.tag, loc.file)
            except SourceFetchError as exc:
                got = exc
                if self.errors is not None:
                    self.errors.append(exc)
            self._files[loc.file] = got
        if isinstance(got, SourceFetchError):
            return _Context(loc, error=f"source not available: {got}")
        if loc.line > len(got):
            return _Context(loc, error=f"line {loc.line} is past the end of {loc.file} ({len(got)} lines): "
                            "is the source tree from another version?")
        out: list[tuple[int, str, bool]] = []
        for row in render_context(got, loc.line, RADIUS, sanitize=True):
            mark, _, text = row.partition("\t")
            marked = mark.startswith(">")
            out.append((int(mark.strip(" ><")), text, marked))
        return _Context(loc, tuple(out))


def _lines(first: int, last: int) -> str:
    return f"line {first}" if first == last else f"lines {first}\u2013{last}"


def _slide_text(annotated: AnnotatedText) -> str:
    if annotated.kaslr_offset is None:
        if any(af.frame.address is not None and af.frame.symbol is None for af in annotated.frames):
            return "not known (raw addresses are taken as link-time when they fall in the vmlinux text)"
        return "not needed (frames give func+offset)"
    return f"{annotated.kaslr_offset:#x} (from {annotated.kaslr_source or 'unknown'})"


def _counts(annotated: AnnotatedText) -> tuple[int, int, int, int]:
    total = len(annotated.frames)
    bad = len(annotated.unresolved)
    return total - bad, bad, total, len(_stacks(annotated))


def _counts_text(annotated: AnnotatedText) -> str:
    ok, bad, total, stacks = _counts(annotated)
    return (f"{ok} resolved, {bad} unresolved, of {total} frame{'s' if total != 1 else ''} "
            f"in {stacks} stack{'s' if stacks != 1 else ''}")


def _lookup_text(m: FrameMatch) -> str:
    if m.lookup == LOOKUP_CALL_SITE:
        return f"return address {m.link_address:#x}: looked up at the call site {m.lookup_address:#x}"
    if m.lookup == LOOKUP_ENTRY:
        return f"function entry {m.link_address:#x}"
    return f"exact address {m.link_address:#x}"


def _symbol_text(af: AnnotatedFrame, m: FrameMatch) -> str | None:
    if m.symbol is None:
        return None
    return f"{m.symbol}+{(m.offset or 0):#x}/{(m.size or 0):#x}"


def _call_text(m: FrameMatch) -> str | None:
    if m.lookup != LOOKUP_CALL_SITE:
        return None
    if m.call is not None:
        return m.call.text
    return None


def _urls(loc: SourceLocation, links: ElixirLinks | None) -> tuple[str | None, str | None]:
    url, ident = loc.url, loc.ident_url
    if links is not None:
        if url is None:
            url = links.source_url(loc.file, loc.line)
        if ident is None:
            ident = links.ident_url(loc.function)
    return _safe_url(url), _safe_url(ident)


def _safe_url(url: str | None) -> str | None:
    if url is None or not re.match(r"https?://", url) or _CONTROL_RE.search(url) or " " in url:
        return None
    return url


def _loc_place(loc: SourceLocation) -> str:
    text = f"{loc.file}:{loc.line if loc.line else '?'}"
    if loc.discriminator:
        text += f" (discriminator {loc.discriminator})"
    return text


def _generated() -> str:
    when = os.environ.get("SOURCE_DATE_EPOCH")
    stamp = datetime.fromtimestamp(int(when), timezone.utc) if when and when.isdigit() else datetime.now(timezone.utc)
    return stamp.strftime("%Y-%m-%d %H:%M:%S UTC")


def _header_rows(annotated: AnnotatedText, tag: str, info: ReportInfo) -> list[tuple[str, str, str]]:
    """``(key, label, value)`` rows of the summary."""
    rows: list[tuple[str, str, str]] = []
    if info.input_name:
        rows.append(("input", "input", info.input_name))
    if info.vmlinux:
        rows.append(("vmlinux", "vmlinux", info.vmlinux))
    if info.banner:
        rows.append(("banner", "banner", info.banner))
    tag_text = tag + (f" (from {info.tag_source})" if info.tag_source else "")
    if info.tag_note:
        tag_text += f": {info.tag_note}"
    rows.append(("tag", "kernel tag", tag_text))
    rows.append(("kaslr", "KASLR slide", _slide_text(annotated)))
    rows.append(("counts", "frames", _counts_text(annotated)))
    rows.append(("lookup", "lookup", "every frame at its own address (--exact)" if annotated.exact else
                 "return addresses at the call site (address - 1), exact addresses as they are"))
    rows.extend((re.sub(r"\W+", "-", k.lower()), k, v) for k, v in info.extra)
    rows.append(("generated", "generated", f"{_generated()} by ksym"))
    return rows


# --------------------------------------------------------------------------------------------------
# HTML

_CSS = """
:root { color-scheme: light dark; --fg: #1d1f21; --bg: #fff; --mut: #5f6368; --line: #d0d7de;
  --ok: #1a7f37; --bad: #cf222e; --hl: #fff8c5; --code: #f6f8fa; --link: #0550ae; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6edf3; --bg: #0d1117; --mut: #9198a1;
  --line: #30363d; --ok: #3fb950; --bad: #f85149; --hl: #3b2e00; --code: #161b22; --link: #58a6ff; } }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg);
  background: var(--bg); margin: 0 auto; padding: 1.5em; max-width: 1200px; }
a { color: var(--link); }
code, pre, .orig { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 13px; }
h1 { font-size: 1.5em; margin: 0 0 .6em; }
h2 { font-size: 1.2em; margin: 1.6em 0 .5em; border-bottom: 1px solid var(--line); padding-bottom: .2em; }
dl.summary { display: grid; grid-template-columns: max-content 1fr; gap: .2em 1em; margin: 0 0 1em; }
dl.summary dt { font-weight: 600; color: var(--mut); }
dl.summary dd { margin: 0; overflow-wrap: anywhere; }
ul.notes { margin: .3em 0 1em; padding-left: 1.2em; color: var(--mut); }
ol.frames { list-style: none; padding: 0; margin: 0; }
li.frame { border: 1px solid var(--line); border-left: 4px solid var(--ok); border-radius: 6px;
  padding: .5em .8em; margin: .6em 0; }
li.frame.unresolved { border-left-color: var(--bad); }
.head { display: flex; gap: .6em; align-items: baseline; flex-wrap: wrap; }
.num { font-weight: 700; color: var(--mut); }
.orig { white-space: pre-wrap; overflow-wrap: anywhere; background: var(--code); padding: .1em .4em;
  border-radius: 4px; flex: 1; }
.badge { font-size: 12px; border: 1px solid var(--line); border-radius: 10px; padding: 0 .5em; color: var(--mut); }
.reason { color: var(--bad); margin: .4em 0 0; overflow-wrap: anywhere; }
ol.chain { margin: .4em 0 0; padding-left: 1.4em; }
ol.chain li { margin: .1em 0; }
.fn { font-weight: 600; }
.inl { color: var(--mut); }
.meta { color: var(--mut); margin: .2em 0 0; font-size: 13px; }
details.source { margin: .3em 0 0 1.4em; }
details.source summary { cursor: pointer; color: var(--mut); font-size: 13px; }
pre.ctx { background: var(--code); border-radius: 4px; padding: .4em 0; margin: .3em 0; overflow-x: auto; tab-size: 8; }
pre.ctx span.src-line { display: block; padding: 0 .6em; white-space: pre; }
pre.ctx span.marked { background: var(--hl); font-weight: 600; }
pre.ctx span.ln { display: inline-block; min-width: 4.5em; color: var(--mut); user-select: none; vertical-align: top; }
pre.ctx span.code { display: inline-block; white-space: pre; }
pre.annotated { background: var(--code); padding: .6em; overflow-x: auto; white-space: pre; tab-size: 8; }
footer { margin-top: 2em; color: var(--mut); font-size: 13px; }
"""

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; form-action 'none'; base-uri 'none'"


def _e(text: str) -> str:
    return html.escape(clean(text), quote=True)


def _a(url: str | None, text: str, cls: str) -> str:
    if url is None:
        return f'<span class="{cls}">{_e(text)}</span>'
    return f'<a class="{cls}" href="{_e(url)}" rel="noreferrer noopener">{_e(text)}</a>'


def _html_context(ctx: _Context, open_: bool) -> str:
    loc = ctx.location
    summary = f"source: {_loc_place(loc)}"
    out = [(f'<details class="source"{" open" if open_ else ""} data-file="{_e(loc.file)}" '
           f'data-line="{loc.line}"><summary>{_e(summary)}</summary>')]
    if ctx.error is not None:
        out.append(f'<p class="meta source-error">{_e(ctx.error)}</p>')
    else:
        rows = []
        for nr, text, marked in ctx.lines:
            cls = "src-line marked" if marked else "src-line"
            mark = ">" if marked else " "
            rows.append(f'<span class="{cls}" data-line="{nr}"><span class="ln">{mark}{nr}</span>'
                        f'<span class="code">{_e(text)}</span></span>')
        out.append('<pre class="ctx"><code>' + "".join(rows) + "</code></pre>")
    out.append("</details>")
    return "".join(out)


def _html_match(af: AnnotatedFrame, m: FrameMatch, i: int, n: int, sources: _Sources,
                links: ElixirLinks | None) -> str:
    out = [f'<div class="match" data-link-address="{m.link_address:#x}" data-lookup="{_e(m.lookup)}">']
    if n > 1:
        out.append(f'<p class="meta">match {i + 1} of {n}: {_e(m.symbol or "?")} at {m.link_address:#x}</p>')
    if not m.chain:
        out.append('<p class="reason">?? ??:0 (no line information)</p>')
    else:
        out.append('<ol class="chain">')
        for j, loc in enumerate(m.chain):
            url, ident = _urls(loc, links)
            prefix = '<span class="inl">(inlined by)</span> ' if j else ""
            kind = "inlined" if loc.inlined else "function"
            out.append(f'<li class="loc" data-depth="{j}" data-kind="{kind}" data-file="{_e(loc.file)}" '
                       f'data-line="{loc.line}">{prefix}{_a(ident, loc.function, "fn")} at '
                       f'{_a(url, _loc_place(loc), "place")}</li>')
        out.append("</ol>")
    meta: list[str] = []
    sym = _symbol_text(af, m)
    if sym is not None and (af.frame.symbol is None or n > 1):
        meta.append(f'<span class="where">in <code>{_e(sym)}</code></span>')
    call = _call_text(m)
    if call is not None:
        meta.append(f'<span class="call">call site: <code>{_e(call)}</code></span>')
    meta.append(f'<span class="lookup">{_e(_lookup_text(m))}</span>')
    out.append('<p class="meta">' + " · ".join(meta) + "</p>")
    if m.notes:
        out.append('<ul class="notes">' + "".join(f"<li>note: {_e(note)}</li>" for note in m.notes) + "</ul>")
    for j, loc in enumerate(m.chain):
        ctx = sources.context(loc)
        if ctx is not None:
            out.append(_html_context(ctx, sources.open_innermost and j == 0))
    out.append("</div>")
    return "".join(out)


def _html_frame(af: AnnotatedFrame, number: int, sources: _Sources, links: ElixirLinks | None) -> str:
    f = af.frame
    out = [(f'<li class="frame {_e(af.status)}" id="line-{af.lineno}" data-line="{af.lineno}" '
           f'data-status="{_e(af.status)}" data-kind="{_e(str(f.kind))}">')]
    badges = [f'<span class="badge">line {af.lineno}</span>', f'<span class="badge">{_e(str(f.kind))}</span>']
    if not f.reliable:
        badges.append('<span class="badge">unreliable (?)</span>')
    if f.module:
        badges.append(f'<span class="badge">module {_e(f.module)}</span>')
    if af.unverified is not None:
        badges.append(f'<span class="badge" title="{_e(af.unverified)}">unverified</span>')
    out.append(f'<div class="head"><span class="num">#{number}</span><code class="orig">{_e(af.text)}</code>'
               + "".join(badges) + "</div>")
    if not af.resolved:
        out.append(f'<p class="reason">unresolved: {_e(af.reason or "unknown reason")}</p>')
    for i, m in enumerate(af.matches):
        out.append(_html_match(af, m, i, len(af.matches), sources, links))
    if af.notes:
        out.append('<ul class="notes">' + "".join(f"<li>note: {_e(note)}</li>" for note in af.notes) + "</ul>")
    out.append("</li>")
    return "".join(out)


def render_html(
    annotated: AnnotatedText,
    *,
    provider: SourceProvider | None,
    tag: str,
    title: str = DEFAULT_TITLE,
    info: ReportInfo | None = None,
    errors: list[SourceFetchError] | None = None,
    open_source: bool = True,
) -> str:
    """A self-contained HTML page for ``annotated`` (see the module docstring).

    :param provider: where the source context comes from (``None``: no source blocks).
    :param tag: the kernel tag files are read at (and that the header names).
    :param info: what the header says about the vmlinux (:func:`report_info`).
    :param errors: source files that could not be read are appended here (one per file).
    :param open_source: show each frame's innermost source block opened (the outer levels' blocks and,
        with ``False``, every block start collapsed).
    """
    info = info or ReportInfo()
    sources = _Sources(provider, tag, errors, open_source)
    body: list[str] = [f"<header><h1>{_e(title)}</h1>", '<dl class="summary" id="summary">']
    for key, label, value in _header_rows(annotated, tag, info):
        body.append(f'<dt>{_e(label)}</dt><dd data-key="{_e(key)}">{_e(value)}</dd>')
    body.append("</dl>")
    if annotated.notes:
        body.append('<ul class="notes" id="notes">' + "".join(f"<li>{_e(n)}</li>" for n in annotated.notes)
                    + "</ul>")
    body.append("</header><main>")
    number = 0
    stacks = _stacks(annotated)
    if not stacks:
        body.append('<p class="meta" id="no-frames">No stack frames were found in the input.</p>')
    for s in stacks:
        first, last = s.frames[0].lineno, s.frames[-1].lineno
        bad = sum(1 for af in s.frames if not af.resolved)
        body.append(f'<section class="stack" id="stack-{s.index}" data-stack="{s.index}">'
                    f"<h2>Stack {s.index + 1} <span class=\"meta\">({len(s.frames)} frame"
                    f"{'s' if len(s.frames) != 1 else ''}, {_lines(first, last)}"
                    f"{f', {bad} unresolved' if bad else ''})</span></h2>")
        body.append('<ol class="frames">')
        for af in s.frames:
            number += 1
            body.append(_html_frame(af, number, sources, info.links))
        body.append("</ol></section>")
    body.append('<section id="annotated-text"><h2>Annotated text</h2><details><summary>the input with '
                "file:line under every frame, as <code>ksym annotate</code> prints it</summary>"
                f'<pre class="annotated">{_e_block(annotated.text)}</pre></details></section>')
    body.append("</main><footer>Generated by ksym. Links point at elixir.bootlin.com for tag "
                f"{_e(tag)}; the page loads nothing and runs no script.</footer>")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="generator" content="ksym">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _e_block(text: str) -> str:
    """A multi-line block for ``<pre>``: each line cleaned and escaped, newlines kept."""
    return "\n".join(_e(line) for line in text.splitlines())


# --------------------------------------------------------------------------------------------------
# Markdown

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]|~<>&])")


def _m(text: str) -> str:
    """Inline Markdown text: every character Markdown or HTML could read as syntax backslash-escaped
    (``<`` and ``&`` as entities)."""
    text = clean(text)
    return _MD_SPECIAL.sub(lambda mo: {"<": "&lt;", ">": "&gt;", "&": "&amp;"}.get(mo.group(1), "\\" + mo.group(1)),
                           text)


def _code(text: str) -> str:
    """An inline code span that holds ``text`` whatever backticks it contains."""
    text = clean(text)
    if not text:
        return "` `"
    run = max((len(r) for r in re.findall(r"`+", text)), default=0)
    fence = "`" * (run + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or (text.startswith(" ") and text.endswith(" ")) else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _fence(lines: Iterable[str], info: str = "") -> list[str]:
    """A fenced code block around ``lines`` (cleaned), the fence longer than any backtick run inside."""
    body = [clean(x) for x in lines]
    run = max((len(r) for x in body for r in re.findall(r"`{3,}", x)), default=0)
    fence = "`" * max(3, run + 1)
    return [fence + info, *body, fence]


def _url_md(url: str | None) -> str | None:
    url = _safe_url(url)
    if url is None:
        return None
    return url.replace("(", "%28").replace(")", "%29").replace("<", "%3C").replace(">", "%3E")


def _md_link(url: str | None, text: str) -> str:
    u = _url_md(url)
    return f"[{_m(text)}]({u})" if u else _m(text)


def _md_context(ctx: _Context, open_: bool) -> list[str]:
    loc = ctx.location
    out = ["", f"<details{' open' if open_ else ''}><summary>source: {html.escape(clean(_loc_place(loc)))}</summary>", ""]
    if ctx.error is not None:
        out.append(f"> {_m(ctx.error)}")
    else:
        lang = "c" if loc.file.endswith((".c", ".h")) else ("asm" if loc.file.endswith((".S", ".s")) else "")
        out.extend(_fence([f"{'>' if marked else ' '}{nr:>5}  {text}" for nr, text, marked in ctx.lines], lang))
    out.extend(["", "</details>", ""])
    return out


def _md_match(af: AnnotatedFrame, m: FrameMatch, i: int, n: int, sources: _Sources,
              links: ElixirLinks | None) -> list[str]:
    out: list[str] = []
    if n > 1:
        out.append(f"Match {i + 1} of {n}: {_code(m.symbol or '?')} at `{m.link_address:#x}`")
        out.append("")
    if not m.chain:
        out.append("- ?? ??:0 (no line information)")
    for j, loc in enumerate(m.chain):
        url, ident = _urls(loc, links)
        prefix = "(inlined by) " if j else ""
        out.append(f"- {prefix}**{_md_link(ident, loc.function)}** at {_md_link(url, _loc_place(loc))}")
    sym = _symbol_text(af, m)
    if sym is not None and (af.frame.symbol is None or n > 1):
        out.append(f"- in {_code(sym)}")
    call = _call_text(m)
    if call is not None:
        out.append(f"- call site: {_code(call)}")
    out.append(f"- {_m(_lookup_text(m))}")
    out.extend(f"- note: {_m(note)}" for note in m.notes)
    for j, loc in enumerate(m.chain):
        ctx = sources.context(loc)
        if ctx is not None:
            out.extend(_md_context(ctx, sources.open_innermost and j == 0))
    out.append("")
    return out


def render_markdown(
    annotated: AnnotatedText,
    *,
    provider: SourceProvider | None,
    tag: str,
    title: str = DEFAULT_TITLE,
    info: ReportInfo | None = None,
    errors: list[SourceFetchError] | None = None,
    open_source: bool = True,
) -> str:
    """The report as Markdown (GitHub flavour: tables, fenced code, ``<details>``), with the same
    structure and arguments as :func:`render_html`."""
    info = info or ReportInfo()
    sources = _Sources(provider, tag, errors, open_source)
    out: list[str] = [f"# {_m(title)}", "", "| | |", "|---|---|"]
    for _key, label, value in _header_rows(annotated, tag, info):
        out.append(f"| {_m(label)} | {_m(value)} |")
    out.append("")
    if annotated.notes:
        out.append("Notes:")
        out.append("")
        out.extend(f"- {_m(n)}" for n in annotated.notes)
        out.append("")
    stacks = _stacks(annotated)
    if not stacks:
        out.extend(["No stack frames were found in the input.", ""])
    number = 0
    for s in stacks:
        first, last = s.frames[0].lineno, s.frames[-1].lineno
        bad = sum(1 for af in s.frames if not af.resolved)
        count = f"{len(s.frames)} frame{'s' if len(s.frames) != 1 else ''}"
        out.append(f"## Stack {s.index + 1} ({count}, {_lines(first, last)}"
                   f"{f', {bad} unresolved' if bad else ''})")
        out.append("")
        for af in s.frames:
            number += 1
            f = af.frame
            tags = [f"line {af.lineno}", str(f.kind)]
            if not f.reliable:
                tags.append("unreliable (?)")
            if not af.resolved:
                tags.append("unresolved")
            if af.unverified is not None:
                tags.append(f"unverified: {af.unverified}")
            out.append(f"### #{number} {_code(f.token or af.text.strip())} ({_m(', '.join(tags))})")
            out.append("")
            out.extend(_fence([af.text], "text"))
            out.append("")
            if not af.resolved:
                out.append(f"**unresolved:** {_m(af.reason or 'unknown reason')}")
                out.append("")
            for i, m in enumerate(af.matches):
                out.extend(_md_match(af, m, i, len(af.matches), sources, info.links))
            if af.notes:
                out.extend(f"- note: {_m(note)}" for note in af.notes)
                out.append("")
    out.extend(["## Annotated text", "", ("<details><summary>the input with file:line under every frame"
                "</summary>"), ""])
    out.extend(_fence(annotated.text.splitlines(), "text"))
    out.extend(["", "</details>", ""])
    return "\n".join(_collapse_blank(out)) + "\n"


def _collapse_blank(lines: Sequence[str]) -> list[str]:
    """Runs of empty lines made one, outside fenced code blocks (whose content is kept as it is)."""
    out: list[str] = []
    fence: str | None = None
    for line in lines:
        if fence is None:
            m = re.match(r"(`{3,})", line)
            if m:
                fence = m.group(1)
            elif line == "" and out and out[-1] == "":
                continue
        elif line == fence:
            fence = None
        out.append(line)
    while out and out[-1] == "":
        out.pop()
    return out



# --------------------------------------------------------------------------------------------------
# What ``ksym annotate --format html|markdown [--output FILE]`` calls


def provider_for(
    symbolizer: Any,
    *,
    source_dir: str | os.PathLike[str] | None = None,
    offline: bool = False,
    source_url: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    warn: Callable[[str], None] | None = None,
    kernel_tag: str | None = None,
) -> SourceProvider:
    """The :class:`SourceProvider` ``ksym resolve --list`` would use: ``source_dir``, else a local tree
    (:func:`ksym.source.choose_source_dir`: the current directory when it is a kernel tree,
    ``$KSYM_SOURCE_DIR``, beside the vmlinux, installed); fetching unless ``offline``. Files are read
    only under that tree and the absolute ``--path-map`` targets; a local tree is chosen for the
    kernel version of the symbolizer's banner (or of ``kernel_tag``). A note about the choice (a tarball
    to extract) goes to ``warn``."""
    path = getattr(symbolizer, "path", None)
    choice = choose_source_dir(choose_tag(getattr(symbolizer, "banner", None), kernel_tag).version,
                               source_dir=source_dir,
                               vmlinux=str(path) if path is not None else None)
    if choice.note and warn is not None:
        warn(f"ksym annotate: note: {choice.note}")
    tree = choice.path
    path_map = getattr(symbolizer, "path_map", None)
    kw: dict[str, Any] = {"source_dir": tree, "offline": offline,
                          "roots": path_map.roots() if path_map is not None else ()}
    if source_url:
        kw["url_template"] = source_url
    if cache_dir is not None:
        kw["cache_dir"] = cache_dir
    return SourceProvider(**kw)


def report_for_command(
    annotated: AnnotatedText,
    symbolizer: Any,
    fmt: str,
    source: SourceOptions,
    *,
    title: str | None = None,
    input_name: str | None = None,
    warn: Callable[[str], None] | None = None,
    provider: SourceProvider | None = None,
) -> str:
    """The ``--format html|markdown`` output of ``ksym annotate``: the report for ``annotated`` with the
    header taken from ``symbolizer`` (banner, tag, links) and the command's source options (``source``,
    the :class:`ksym.searchopts.SourceOptions` record the CLI builds: ``--kernel-tag``, ``--elixir-url``,
    ``--source-dir``, ``--source-url``, ``--offline``), source from :func:`provider_for`; each file that
    could not be read, and the kernel tag's caveat, go to ``warn`` once.

    :raises ValueError: a malformed ``--kernel-tag``, ``--elixir-url`` or ``--source-url``.
    """
    info = report_info(symbolizer, input_name=input_name, kernel_tag=source.kernel_tag,
                       elixir_url=source.elixir_url)
    tag = info.links.tag if info.links is not None else "latest"
    if warn is not None and info.tag_note:
        warn(f"ksym annotate: note: kernel tag {tag}: {info.tag_note}")
    own = provider is None  # made here: closed here (its HTTP session)
    if provider is None:
        provider = provider_for(symbolizer, source_dir=source.source_dir, offline=source.offline,
                                source_url=source.source_url, warn=warn, kernel_tag=source.kernel_tag)
    errors: list[SourceFetchError] = []
    try:
        text = render_report(annotated, fmt, provider=provider, tag=tag, title=title or DEFAULT_TITLE, info=info,
                             errors=errors)
    finally:
        if own:
            provider.close()
    if warn is not None:
        seen: set[str] = set()
        for e in errors:
            if str(e) not in seen:
                seen.add(str(e))
                warn(f"ksym annotate: warning: {e}")
    return text
