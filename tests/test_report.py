"""ksym.report: HTML and Markdown reports of an annotated dump.

The reports are parsed back (``html.parser`` for the HTML, fences and lines for the Markdown) and
checked against the :func:`ksym.annotate.annotate` result and the real source files: every frame's
file:line chain and Elixir links, the marked source line equal to the file's line, call sites,
unresolved reasons, hostile input shown as text. The HTML is also opened in a real headless browser
(Debian's chromium, installed by a session fixture when missing and possible): the rendered DOM holds the
frames and links, and a screenshot is a real PNG.

Fixture-ELF tests always run (sources from fixtures/src). The Debian 6.1 vmlinux tests skip with the
reason printed when the vmlinux or linux-source tree is missing; under CI=true they fail instead, as do
the browser tests when chromium cannot be installed.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
from anchors import REPO_ROOT, TESTDATA, fixture, missing

from ksym import Symbolizer
from ksym.annotate import AnnotatedFrame, AnnotatedText, annotate
from ksym.cli import build_parser
from ksym.cli.options import AnnotateOptions, SourceOptions
from ksym.links import ElixirLinks, links_for
from ksym.model import SourceLocation
from ksym.report import (
    DEFAULT_TITLE,
    ReportInfo,
    clean,
    provider_for,
    render_html,
    render_markdown,
    render_report,
    report_for_command,
    report_info,
    write_output,
)
from ksym.source import SourceFetchError, SourceProvider
from ksym.version import choose_tag

FIXTURE = fixture("kshapes-dwarf5.elf")
FIXTURE_SRC = REPO_ROOT / "fixtures" / "src"
ANNOTATE_DATA = REPO_ROOT / "tests" / "data" / "annotate"
DATA = REPO_ROOT / "tests" / "data" / "report"
_SRC_CANDIDATES = (str(TESTDATA / "linux-source-6.1"), "/work/cache/src/linux-source-6.1")
TAG = "v6.1.187"


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8", "surrogateescape")


# --------------------------------------------------------------------------------------------------
# A small DOM from html.parser

_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
                   "track", "wbr"})


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    parent: Node | None = None
    children: list[Node | str] = field(default_factory=list)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def iter(self) -> list[Node]:
        out: list[Node] = []
        for c in self.children:
            if isinstance(c, Node):
                out.append(c)
                out.extend(c.iter())
        return out

    def find_all(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Node]:
        return [n for n in self.iter() if (tag is None or n.tag == tag) and (cls is None or cls in n.classes)
                and all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def find(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> Node:
        got = self.find_all(tag, cls, **attrs)
        assert got, f"no <{tag} class={cls} {attrs}> in <{self.tag} {self.attrs}>"
        return got[0]

    def children_nodes(self, tag: str | None = None) -> list[Node]:
        return [c for c in self.children if isinstance(c, Node) and (tag is None or c.tag == tag)]


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.cur = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.cur)
        self.cur.children.append(node)
        if tag not in _VOID:
            self.cur = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.cur.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.cur))

    def handle_endtag(self, tag: str) -> None:
        n: Node | None = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        assert n is not None and n.parent is not None, f"stray </{tag}>"
        self.cur = n.parent

    def handle_data(self, data: str) -> None:
        self.cur.children.append(data)


def parse_html(text: str) -> Node:
    b = _Builder()
    b.feed(text)
    b.close()
    return b.root


# --------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ksym-index")


@pytest.fixture(scope="module")
def fsym(cache_dir: Path) -> Iterator[Symbolizer]:
    with Symbolizer(FIXTURE, cache_dir=cache_dir) as sym:
        yield sym


@pytest.fixture(scope="module")
def fprovider(tmp_path_factory: pytest.TempPathFactory) -> SourceProvider:
    return SourceProvider(source_dir=FIXTURE_SRC, offline=True, url_template=None,
                          cache_dir=tmp_path_factory.mktemp("src-cache"))


@pytest.fixture(scope="module")
def fixture_result(fsym: Symbolizer) -> AnnotatedText:
    return annotate(_read(ANNOTATE_DATA / "fixture-dump.txt") + _read(DATA / "hostile.txt"), fsym,
                    elixir=links_for(fsym.banner))


@pytest.fixture(scope="module")
def fixture_html(fixture_result: AnnotatedText, fsym: Symbolizer, fprovider: SourceProvider) -> str:
    return render_html(fixture_result, provider=fprovider, tag=choose_tag(fsym.banner).tag,
                       info=report_info(fsym, input_name="fixture-dump.txt + hostile.txt"))


@pytest.fixture(scope="module")
def fixture_md(fixture_result: AnnotatedText, fsym: Symbolizer, fprovider: SourceProvider) -> str:
    return render_markdown(fixture_result, provider=fprovider, tag=choose_tag(fsym.banner).tag,
                           info=report_info(fsym))



@pytest.fixture(scope="module")
def srcdir() -> Path:
    env = os.environ.get("KSYM_TEST_SRCDIR")
    for cand in ([env] if env else list(_SRC_CANDIDATES)):
        if (Path(cand) / "include" / "linux" / "netfilter.h").is_file():
            return Path(cand)
    missing("the linux-source 6.1.187 tree not found: run tools/fetch-testdata.sh")


@pytest.fixture(scope="module")
def vsym(vmlinux: Path, cache_dir: Path) -> Iterator[Symbolizer]:
    with Symbolizer(vmlinux, cache_dir=cache_dir) as sym:
        yield sym


@pytest.fixture(scope="module")
def tutorial(vsym: Symbolizer) -> AnnotatedText:
    return annotate(_read(ANNOTATE_DATA / "warn-ip_local_out-6.1.0-53.txt"), vsym, elixir=links_for(vsym.banner))


@pytest.fixture(scope="module")
def tutorial_html(tutorial: AnnotatedText, vsym: Symbolizer, srcdir: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> str:
    provider = SourceProvider(source_dir=srcdir, offline=True, url_template=None,
                              cache_dir=tmp_path_factory.mktemp("src-cache"))
    return render_html(tutorial, provider=provider, tag=choose_tag(vsym.banner).tag, title="WARN in nf_hook_slow",
                       info=report_info(vsym, input_name="warn-ip_local_out-6.1.0-53.txt"))


# --------------------------------------------------------------------------------------------------
# Checking a parsed report against the annotate result


def _source_line(tree: Path, loc: SourceLocation) -> str:
    lines = (tree / loc.file).read_bytes().decode("utf-8", "replace").split("\n")
    return lines[loc.line - 1]


def check_html_report(root: Node, result: AnnotatedText, tree: Path, with_links: bool = True) -> None:
    """Every frame of ``result`` is in the page, in its stack, with its chain, links, call site, reason,
    notes and source context (the marked line equal to ``tree``'s line)."""
    assert not root.find_all("script"), "a <script> element in the report"
    assert not [n for n in root.iter() if "src" in n.attrs or n.tag in ("link", "iframe", "object", "embed")]
    for n in root.iter():
        assert not any(k.startswith("on") for k in n.attrs), f"event handler attribute on <{n.tag}>"
        if "href" in n.attrs:
            assert n.attrs["href"].startswith("https://elixir.bootlin.com/linux/"), n.attrs["href"]
    csp = root.find("meta", http_equiv="Content-Security-Policy").attrs["content"]
    assert "default-src 'none'" in csp
    stacks = root.find_all("section", cls="stack")
    want_stacks: dict[int, list[AnnotatedFrame]] = {}
    for af in result.frames:
        want_stacks.setdefault(af.frame.stack_index, []).append(af)
    assert [int(s.attrs["data-stack"]) for s in stacks] == list(want_stacks)
    for section, (_index, frames) in zip(stacks, want_stacks.items()):
        items = section.find("ol", cls="frames").children_nodes("li")
        assert [int(li.attrs["data-line"]) for li in items] == [af.lineno for af in frames]
        for li, af in zip(items, frames):
            check_html_frame(li, af, tree, with_links)
    ok, bad = len(result.frames) - len(result.unresolved), len(result.unresolved)
    counts = root.find("dd", data_key="counts").text
    assert counts.startswith(f"{ok} resolved, {bad} unresolved, of {len(result.frames)} frame")
    notes = root.find_all("ul", id="notes")
    assert [li.text for li in notes[0].children_nodes("li")] if notes else [] == list(result.notes)


def check_html_frame(li: Node, af: AnnotatedFrame, tree: Path, with_links: bool) -> None:
    assert li.attrs["data-status"] == af.status
    assert af.status in li.classes
    assert li.find("code", cls="orig").text == clean(af.text)
    reason = li.find_all("p", cls="reason")
    if af.resolved:
        assert not reason
    else:
        assert reason[0].text == f"unresolved: {af.reason}"
    matches = li.children_nodes("div")[1:]
    assert len(matches) == len(af.matches)
    for div, m in zip(matches, af.matches):
        assert div.attrs["data-link-address"] == f"{m.link_address:#x}"
        assert div.attrs["data-lookup"] == m.lookup
        locs = div.find_all("li", cls="loc")
        assert len(locs) == len(m.chain)
        for j, (node, loc) in enumerate(zip(locs, m.chain)):
            assert node.attrs["data-file"] == loc.file and int(node.attrs["data-line"]) == loc.line
            text = re.sub(r"\s+", " ", node.text).strip()
            assert text == ("(inlined by) " if j else "") + str(loc)
            fn, place = node.find(cls="fn"), node.find(cls="place")
            assert fn.text == loc.function
            if with_links:
                assert loc.url and loc.ident_url
                assert place.tag == "a" and place.attrs["href"] == loc.url
                assert fn.tag == "a" and fn.attrs["href"] == loc.ident_url
        calls = div.find_all("span", cls="call")
        if m.call is not None:
            assert calls[0].find("code").text == m.call.text
        else:
            assert not calls
        notes = [n.text for ul in div.find_all("ul", cls="notes") for n in ul.children_nodes("li")]
        assert notes == [f"note: {n}" for n in m.notes]
        blocks = div.find_all("details", cls="source")
        assert [(b.attrs["data-file"], int(b.attrs["data-line"])) for b in blocks] == [
            (loc.file, loc.line) for loc in m.chain]
        assert ["open" in b.attrs for b in blocks] == [j == 0 for j in range(len(blocks))]
        for block, loc in zip(blocks, m.chain):
            marked = block.find_all("span", cls="marked")
            assert len(marked) == 1, f"{loc}: one marked line"
            assert int(marked[0].attrs["data-line"]) == loc.line
            assert marked[0].find("span", cls="code").text == _source_line(tree, loc)
            numbers = [int(s.attrs["data-line"]) for s in block.find_all("span", cls="src-line")]
            assert numbers == list(range(max(1, loc.line - 5), numbers[-1] + 1))
            assert loc.line + 5 >= numbers[-1] >= loc.line
            assert len(numbers) <= 11


# --------------------------------------------------------------------------------------------------
# Fixture ELF: HTML


def test_html_fixture_structure(fixture_html: str, fixture_result: AnnotatedText) -> None:
    root = parse_html(fixture_html)
    assert fixture_html.startswith("<!DOCTYPE html>")
    assert root.find("title").text == DEFAULT_TITLE
    check_html_report(root, fixture_result, FIXTURE_SRC)
    # what the fixture dump holds: 2 stacks from fixture-dump.txt, 2 from hostile.txt
    assert len(root.find_all("section", cls="stack")) == 4
    first = root.find("li", cls="frame", data_line="3")
    assert [n.text for n in first.find_all(cls="place")] == [
        "include/linux/netfilter.h:53", "net/ipv4/ip_output.c:38", "net/ipv4/ip_output.c:46"]
    assert first.find("a", cls="place").attrs["href"] == \
        "https://elixir.bootlin.com/linux/latest/source/include/linux/netfilter.h#L53"
    assert first.find("a", cls="fn").attrs["href"] == "https://elixir.bootlin.com/linux/latest/A/ident/nf_hook"
    assert first.find("span", cls="call").find("code").text == "call nf_hook_slow"
    marked = first.find("details", cls="source").find("span", cls="marked")
    assert marked.find("span", cls="code").text == "\t\tret = nf_hook_slow(skb, &state, 0);"
    # a shared static name: both matches, each with its own source
    shared = root.find("li", cls="frame", data_line="5")
    assert [d.attrs["data-link-address"] for d in shared.children_nodes("div")[1:]] == ["0x4012c5", "0x401315"]
    assert "drivers/char/raw.c:7 (discriminator 2)" in shared.text
    # unresolved frames say why
    module = root.find("li", cls="frame", data_line="6")
    assert "unresolved" in module.classes
    assert module.find("p", cls="reason").text.startswith("unresolved: module nf_tables: ")
    raw = root.find("li", cls="frame", data_line="13")
    assert raw.find("p", cls="reason").text == "unresolved: runtime address: give --kallsyms or --kaslr-offset"
    summary = {dd.attrs["data-key"]: dd.text for dd in root.find("dl", id="summary").find_all("dd")}
    assert summary["vmlinux"] == str(FIXTURE)
    assert summary["tag"].startswith("latest (from unknown)")
    assert summary["kaslr"].startswith("not known")
    assert summary["input"] == "fixture-dump.txt + hostile.txt"


def test_html_escapes_hostile_input(fixture_html: str, fixture_result: AnnotatedText) -> None:
    root = parse_html(fixture_html)
    assert "<script" not in fixture_html and "<img" not in fixture_html and "<b>" not in fixture_html
    assert "javascript:" not in " ".join(n.attrs.get("href", "") for n in root.iter())
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in fixture_html
    base = len(_read(ANNOTATE_DATA / "fixture-dump.txt").splitlines())
    origs = {int(li.attrs["data-line"]): li.find("code", cls="orig").text for li in root.find_all("li", cls="frame")}
    assert origs[base + 3] == " <script>alert(1)</script> ip_local_out_like+0x79/0x90"
    assert origs[base + 4] == "[    1.200000] comm<img src=x onerror=alert(1)>: __ip_local_out+0x2d/0x90"
    assert origs[base + 5] == " raw_ioctl+0x5 ```</details><script>x</script>"
    # control characters and undecodable bytes: U+FFFD, never raw
    assert origs[base + 10] == "        ip_local_out_like+121 \ufffd[31mred\ufffd[0m \ufffd\ufffd bytes"
    assert "\x1b" not in fixture_html
    fixture_html.encode("utf-8")  # no lone surrogates left
    unknown = root.find("li", cls="frame", data_line=str(base + 6))
    assert unknown.find("p", cls="reason").text.startswith("unresolved: unknown symbol no_such_function")
    assert unknown.find("code", cls="orig").text == " no_such_function+0x10/0x20 <b>bold</b> & more"
    # the hostile frames still resolve (the first of a plain list is looked up exactly)
    hostile = fixture_result.frame_at(base + 3)
    assert hostile is not None and hostile.resolved
    assert root.find("li", cls="frame", data_line=str(base + 3)).find("a", cls="place").text == \
        f"{hostile.chain[0].file}:{hostile.chain[0].line}"
    # the whole annotated text at the end, escaped, line for line
    pre = root.find("pre", cls="annotated")
    assert pre.text.splitlines() == [clean(x) for x in fixture_result.text.splitlines()]


def test_html_without_provider_and_unreadable_source(fixture_result: AnnotatedText, tmp_path: Path) -> None:
    page = render_html(fixture_result, provider=None, tag="latest")
    root = parse_html(page)
    assert not root.find_all("details", cls="source")
    assert len(root.find_all("li", cls="frame")) == len(fixture_result.frames)
    empty = tmp_path / "tree"
    empty.mkdir()
    errors: list[SourceFetchError] = []
    provider = SourceProvider(source_dir=empty, offline=True, url_template=None, cache_dir=tmp_path / "cache")
    root = parse_html(render_html(fixture_result, provider=provider, tag="latest", errors=errors))
    failed = root.find_all("p", cls="source-error")
    assert failed and all(p.text.startswith("source not available: ") for p in failed)
    # one error per file, however many locations are in it
    assert sorted(e.path for e in errors) == sorted({loc.file for af in fixture_result.frames
                                                     for m in af.matches for loc in m.chain})


def test_html_links_filled_from_info(fsym: Symbolizer, fprovider: SourceProvider) -> None:
    with Symbolizer(FIXTURE, use_index=False) as nolinks:
        result = annotate(_read(ANNOTATE_DATA / "fixture-dump.txt"), nolinks)  # no elixir=: no links
    assert all(loc.url is None for af in result.frames for loc in af.chain)
    root = parse_html(render_html(result, provider=fprovider, tag="v6.1.187",
                                  info=ReportInfo(links=ElixirLinks("v6.1.187"))))
    hrefs = [a.attrs["href"] for a in root.find_all("a", cls="place")]
    assert "https://elixir.bootlin.com/linux/v6.1.187/source/include/linux/netfilter.h#L53" in hrefs
    bare = parse_html(render_html(result, provider=None, tag="v6.1.187"))
    assert not bare.find_all("a") and bare.find_all("span", cls="place")


# --------------------------------------------------------------------------------------------------
# Fixture ELF: Markdown


def _md_blocks(md: str) -> tuple[list[str], list[list[str]]]:
    """(lines outside fenced code, the fenced blocks' lines), fences matched as CommonMark does."""
    outside: list[str] = []
    blocks: list[list[str]] = []
    fence: str | None = None
    for line in md.split("\n"):
        if fence is None:
            m = re.match(r"(`{3,})(.*)$", line)
            if m and "`" not in m.group(2):
                fence = m.group(1)
                blocks.append([])
            else:
                outside.append(line)
        elif re.fullmatch(re.escape(fence) + "`*[ \t]*", line):
            fence = None
        else:
            blocks[-1].append(line)
    assert fence is None, "unclosed fence"
    return outside, blocks


def test_markdown_fixture(fixture_md: str, fixture_result: AnnotatedText) -> None:
    outside, blocks = _md_blocks(fixture_md)
    assert fixture_md.startswith(f"# {DEFAULT_TITLE}\n")
    stacks = [ln for ln in outside if ln.startswith("## Stack ")]
    assert len(stacks) == 4 and stacks[0].startswith("## Stack 1 (4 frames, lines 3")
    heads = [ln for ln in outside if ln.startswith("### #")]
    assert len(heads) == len(fixture_result.frames)
    assert heads[0] == "### #1 `ip_local_out_like+0x79/0x90` (line 3, oops)"
    # each frame's original line in its own text block, in order
    originals = {clean(af.text) for af in fixture_result.frames}
    assert originals <= {b[0] for b in blocks if len(b) == 1}
    text = "\n".join(outside)
    for af in fixture_result.frames:
        if not af.resolved:
            assert "**unresolved:** " in text
        for m in af.matches:
            for loc in m.chain:
                assert loc.url is not None and loc.ident_url is not None
                assert f"]({loc.url})" in text and f"]({loc.ident_url})" in text
            if m.call is not None:
                assert f"- call site: `{m.call.text}`" in text
    assert ("- **[nf\\_hook](https://elixir.bootlin.com/linux/latest/A/ident/nf_hook)** at "
            "[include/linux/netfilter.h:53](https://elixir.bootlin.com/linux/latest/source/include/linux/"
            "netfilter.h#L53)") in outside
    assert any(ln.startswith("**unresolved:** module nf\\_tables: ") for ln in outside)
    # source blocks: the marked line is the file's line
    source = [b for b in blocks if any(ln.startswith(">") for ln in b)]
    assert source
    for b in source:
        (marked,) = [ln for ln in b if ln.startswith(">")]
        m2 = re.match(r">\s*(\d+)  (.*)$", marked)
        assert m2 is not None
        assert len(b) <= 11
    assert ">   53  \t\tret = nf_hook_slow(skb, &state, 0);" in fixture_md.split("\n")
    opened = [ln for ln in outside if ln.startswith(("<details>", "<details open>"))]
    assert len(opened) == len([ln for ln in outside if ln == "</details>"]) == len(source) + 1


def test_markdown_escapes_hostile_input(fixture_md: str) -> None:
    outside, blocks = _md_blocks(fixture_md)
    # outside code, nothing from the input is markup
    for line in outside:
        if line.startswith(("<details>", "<details open>", "</details>")):
            continue
        assert "<script" not in line and "<img" not in line and "<b>" not in line, line
    # the backtick run in the input does not end its block: the fence is longer
    assert [" raw_ioctl+0x5 ```</details><script>x</script>"] in blocks
    assert "````text" in fixture_md.split("\n")
    assert "\x1b" not in fixture_md
    fixture_md.encode("utf-8")
    assert any("<script>alert(1)</script>" in ln for b in blocks for ln in b)


# --------------------------------------------------------------------------------------------------
# Dispatch and the CLI helpers


def test_source_blocks_collapsed_on_request(fixture_result: AnnotatedText, fprovider: SourceProvider) -> None:
    root = parse_html(render_report(fixture_result, "html", provider=fprovider, tag="latest", open_source=False))
    blocks = root.find_all("details", cls="source")
    assert blocks and not any("open" in b.attrs for b in blocks)
    md = render_report(fixture_result, "markdown", provider=fprovider, tag="latest", open_source=False)
    assert "<details open>" not in md and "<details><summary>source: " in md


def test_render_report_dispatch(fixture_result: AnnotatedText) -> None:
    assert render_report(fixture_result, "html", provider=None, tag="latest").startswith("<!DOCTYPE html>")
    assert render_report(fixture_result, "markdown", provider=None, tag="latest").startswith("# ")
    with pytest.raises(ValueError, match="unknown report format"):
        render_report(fixture_result, "pdf", provider=None, tag="latest")


def test_empty_input() -> None:
    with Symbolizer(FIXTURE, use_index=False) as sym:
        result = annotate("no frames here\n", sym)
    root = parse_html(render_html(result, provider=None, tag="latest"))
    assert root.find("p", id="no-frames")
    assert root.find("dd", data_key="counts").text.startswith("0 resolved, 0 unresolved, of 0 frames")
    assert "No stack frames were found" in render_markdown(result, provider=None, tag="latest")


def test_cli_helpers(fsym: Symbolizer, fixture_result: AnnotatedText, tmp_path: Path) -> None:
    args = AnnotateOptions.from_args(build_parser().parse_args(
        ["annotate", "--format", "html", "-o", str(tmp_path / "r.html"), "--source-dir", str(FIXTURE_SRC),
         "--offline"]))
    assert (args.output_format, args.source.offline, args.source.source_dir) == ("html", True, str(FIXTURE_SRC))
    assert args.output is not None and args.title is None
    provider = provider_for(fsym, source_dir=args.source.source_dir, offline=args.source.offline)
    assert provider.source_dir == FIXTURE_SRC and provider.offline
    warnings: list[str] = []
    page = report_for_command(fixture_result, fsym, args.output_format, args.source, input_name="dump.txt",
                              warn=warnings.append)
    assert warnings == [("ksym annotate: note: kernel tag latest: kernel version unknown (no linux_banner); "
                        "links point to the latest release")]
    write_output(args.output, page)
    assert (tmp_path / "r.html").read_text(encoding="utf-8") == page
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]
    # unreadable sources: one warning per file
    warnings.clear()
    report_for_command(fixture_result, fsym, "markdown", SourceOptions(source_dir=str(tmp_path), offline=True),
                       warn=warnings.append)
    files = {loc.file for af in fixture_result.frames for m in af.matches for loc in m.chain}
    assert len([w for w in warnings if w.startswith("ksym annotate: warning: ")]) == len(files)



def test_report_for_command_takes_the_source_options(fsym: Symbolizer, tmp_path: Path) -> None:
    """``report_for_command`` takes the command's ``SourceOptions``: its kernel tag names the header's tag
    and the links' (also for locations annotated without links), its Elixir URL their base."""
    args = AnnotateOptions.from_args(build_parser().parse_args(
        ["annotate", "--format", "html", "--source-dir", str(FIXTURE_SRC), "--offline", "--kernel-tag", "6.1.1",
         "--elixir-url", "http://127.0.0.1:9/elixir/"]))
    assert args.source == SourceOptions("6.1.1", "http://127.0.0.1:9/elixir/", str(FIXTURE_SRC), None, True)
    plain = annotate(_read(ANNOTATE_DATA / "fixture-dump.txt"), fsym)
    warnings: list[str] = []
    root = parse_html(report_for_command(plain, fsym, "html", args.source, warn=warnings.append))
    assert warnings == []  # a tag given is not a guess: no caveat
    summary = {dd.attrs["data-key"]: dd.text for dd in root.find("dl", id="summary").find_all("dd")}
    assert summary["tag"] == "v6.1.1 (from override)"
    hrefs = [a.attrs["href"] for a in root.find_all("a", cls="place")]
    assert "http://127.0.0.1:9/elixir/linux/v6.1.1/source/include/linux/netfilter.h#L53" in hrefs
    assert all(h.startswith("http://127.0.0.1:9/elixir/linux/v6.1.1/source/") for h in hrefs)
    # the tree was read: the source blocks are there
    assert root.find_all("details", cls="source")


# --------------------------------------------------------------------------------------------------
# The tutorial stack on the Debian 6.1 vmlinux, with its linux-source tree


@pytest.mark.vmlinux
def test_html_tutorial_debian(tutorial_html: str, tutorial: AnnotatedText, srcdir: Path) -> None:
    root = parse_html(tutorial_html)
    check_html_report(root, tutorial, srcdir)
    assert root.find("title").text == "WARN in nf_hook_slow"
    summary = {dd.attrs["data-key"]: dd.text for dd in root.find("dl", id="summary").find_all("dd")}
    assert summary["banner"].startswith("Linux version 6.1.0-53-cloud-amd64 ")
    assert summary["tag"] == f"{TAG} (from debian-package)"
    ip = root.find("li", cls="frame", data_line="4")
    assert ip.find("code", cls="orig").text == "[ 1234.567905]  __ip_local_out+0xde/0x160"
    locs = ip.find_all("li", cls="loc")
    assert [re.sub(r"\s+", " ", n.text) for n in locs] == [
        "nf_hook at include/linux/netfilter.h:257", "(inlined by) __ip_local_out at net/ipv4/ip_output.c:115"]
    assert [a.attrs["href"] for a in ip.find_all("a")] == [
        f"https://elixir.bootlin.com/linux/{TAG}/A/ident/nf_hook",
        f"https://elixir.bootlin.com/linux/{TAG}/source/include/linux/netfilter.h#L257",
        f"https://elixir.bootlin.com/linux/{TAG}/A/ident/__ip_local_out",
        f"https://elixir.bootlin.com/linux/{TAG}/source/net/ipv4/ip_output.c#L115",
    ]
    assert ip.find("span", cls="call").find("code").text == "call nf_hook_slow"
    marks = [d.find("span", cls="marked").find("span", cls="code").text for d in ip.find_all("details")]
    assert marks == ["\t\tret = nf_hook_slow(skb, &state, hook_head, 0);",
                     "\treturn nf_hook(NFPROTO_IPV4, NF_INET_LOCAL_OUT,"]
    warn = root.find("li", cls="frame", data_line="1")
    assert warn.find("div", cls="match").attrs["data-lookup"] == "exact"
    assert "nf_hook_entry_hookfn at include/linux/netfilter.h:142" in re.sub(r"\s+", " ", warn.text)
    module = root.find("li", cls="frame", data_line="8")
    assert module.find("p", cls="reason").text.startswith("unresolved: module nf_tables")


@pytest.mark.vmlinux
def test_markdown_tutorial_debian(tutorial: AnnotatedText, vsym: Symbolizer, srcdir: Path, tmp_path: Path) -> None:
    provider = SourceProvider(source_dir=srcdir, offline=True, url_template=None, cache_dir=tmp_path)
    md = render_markdown(tutorial, provider=provider, tag=choose_tag(vsym.banner).tag, info=report_info(vsym))
    outside, blocks = _md_blocks(md)
    assert f"| kernel tag | {TAG} (from debian\\_package) |" not in outside  # '-' is not escaped
    assert f"| kernel tag | {TAG} (from debian-package) |" in outside
    assert (f"- (inlined by) **[\\_\\_ip\\_local\\_out](https://elixir.bootlin.com/linux/{TAG}/A/ident/"
            f"__ip_local_out)** at [net/ipv4/ip\\_output.c:115](https://elixir.bootlin.com/linux/{TAG}/"
            "source/net/ipv4/ip_output.c#L115)") in outside
    assert ">  257  \t\tret = nf_hook_slow(skb, &state, hook_head, 0);" in [ln for b in blocks for ln in b]


@pytest.mark.vmlinux
def test_html_kaslr_header_debian(vsym: Symbolizer) -> None:
    result = annotate(_read(ANNOTATE_DATA / "raw-kernel-offset-6.1.0-53.txt"), vsym)
    root = parse_html(render_html(result, provider=None, tag=choose_tag(vsym.banner).tag, info=report_info(vsym)))
    assert root.find("dd", data_key="kaslr").text == f"0x1a600000 (from {result.kaslr_source})"
    assert result.kaslr_source is not None and result.kaslr_source.startswith("Kernel Offset line")
    assert [li.text for li in root.find("ul", id="notes").children_nodes("li")] == list(result.notes)


# --------------------------------------------------------------------------------------------------
# A real browser


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium: installed with apt-get when missing and running as root (CI); else a skip
    (a failure under CI)."""
    found = _find_chromium()
    if found is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "chromium"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600, check=False)
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
        found = _find_chromium()
        if found is None:
            missing(f"chromium could not be installed: {done.stderr.strip()[-300:]}")
    if found is None:
        missing("chromium not found (apt-get install chromium as root) and not root to install it")
    assert found is not None
    return found


def _browser(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def _check_dom(dom: str, result: AnnotatedText) -> Node:
    root = parse_html(dom)
    frames = root.find_all("li", cls="frame")
    assert [int(li.attrs["data-line"]) for li in frames] == [af.lineno for af in result.frames]
    for li, af in zip(frames, result.frames):
        assert li.find("code", cls="orig").text == clean(af.text)
        hrefs = {a.attrs["href"] for a in li.find_all("a")}
        for loc in af.chain:
            assert {loc.url, loc.ident_url} <= hrefs
    assert not root.find_all("script")
    return root


def test_browser_dom_and_screenshot_fixture(chromium: str, fixture_html: str, fixture_result: AnnotatedText,
                                            tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(fixture_html, encoding="utf-8")
    dom = _browser(chromium, tmp_path / "profile", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    root = _check_dom(dom.stdout, fixture_result)
    # the hostile text arrived as text: the browser built no element from it
    assert not root.find_all("img") and not root.find_all("b")
    assert any("<script>alert(1)</script>" in c.text for c in root.find_all("code", cls="orig"))
    shot = tmp_path / "shot.png"
    run = _browser(chromium, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,2000",
                   "--hide-scrollbars", page.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR" and struct.unpack(">II", data[16:24]) == (1200, 2000)
    assert len(data) > 50_000  # a rendered page, not a blank one (a blank 1200x2000 page: ~11 KB)


@pytest.mark.vmlinux
def test_browser_dom_tutorial_debian(chromium: str, tutorial_html: str, tutorial: AnnotatedText,
                                     tmp_path: Path) -> None:
    page = tmp_path / "tutorial.html"
    page.write_text(tutorial_html, encoding="utf-8")
    dom = _browser(chromium, tmp_path / "profile", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    root = _check_dom(dom.stdout, tutorial)
    assert root.find("title").text == "WARN in nf_hook_slow"
    assert f"https://elixir.bootlin.com/linux/{TAG}/source/include/linux/netfilter.h#L257" in {
        a.attrs["href"] for a in root.find_all("a")}


# --------------------------------------------------------------------------------------------------
# The command


def test_annotate_command_writes_reports(tmp_path: Path) -> None:
    for fmt, name in (("html", "r.html"), ("markdown", "r.md")):
        out = tmp_path / name
        run = subprocess.run(
            [sys.executable, "-m", "ksym", "annotate", "--vmlinux", str(FIXTURE), "--no-index", "--format", fmt,
             "--output", str(out), "--source-dir", str(FIXTURE_SRC), "--offline", "--title", "fixture <dump>",
             str(ANNOTATE_DATA / "fixture-dump.txt")],
            capture_output=True, text=True, timeout=120, check=False)
        assert run.returncode == 1, run.stderr  # two frames of the dump do not resolve
        assert run.stdout == ""
        assert "2 of 8 frames unresolved" in run.stderr and "Traceback" not in run.stderr
        text = out.read_text(encoding="utf-8")
        if fmt == "html":
            root = parse_html(text)
            assert root.find("title").text == "fixture <dump>"
            assert root.find("dd", data_key="input").text == str(ANNOTATE_DATA / "fixture-dump.txt")
            assert len(root.find_all("li", cls="frame")) == 8
            assert root.find_all("span", cls="marked")
        else:
            assert text.startswith("# fixture &lt;dump&gt;\n")
            assert "### #8 `0xffffffffc0a1b3e8` (line 13, bpftrace, unresolved)" in text
