"""``ksym resolve`` and ``ksym faddr2line``: frames given as arguments, printed as scripts/faddr2line
prints them (``--json``: one object per frame; ``--list``: the source around each location)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import (
    EXIT_OK,
    EXIT_UNRESOLVED,
    EXIT_USAGE,
    DebuginfodError,
    FileNotFoundKsymError,
    SpecError,
    SymbolNotFoundError,
)
from .common import (
    BuildIdFrom,
    ExpectedBuildId,
    expected_build_id,
    image_links,
    index_file_after_miss,
    open_symbolizer,
    report_stats,
    said_by_locate,
)
from .options import ResolveOptions, SourceOptions

if TYPE_CHECKING:
    from ..links import ElixirLinks
    from ..model import ImageResolver, Resolution
    from ..symbolizer import Symbolizer

__all__ = ["run_resolve"]


def run_resolve(opts: ResolveOptions, out: Callable[[str], None], err: Callable[[str], None]) -> int:
    """Resolve ``opts.frames``; the exit code: 0 every frame resolved, 1 some did not, 2 a malformed
    frame or option. Errors that end the command are raised (:class:`ksym.errors.KsymError`)."""
    image = opts.image
    vmlinux = image.vmlinux
    if image.index_file is not None and vmlinux is not None:
        err("ksym: error: --index and --vmlinux do not go together: the index file stands for the vmlinux")
        return EXIT_USAGE
    if vmlinux is None and opts.frames:
        mistake = _file_as_first_frame(opts.frames[0])
        if mistake is not None:
            err(f"ksym: error: {mistake}")
            return EXIT_USAGE
    try:
        expected, where = expected_build_id(image.build_id, image.running)
    except ValueError as exc:
        err(f"ksym: error: {exc}")
        return EXIT_USAGE
    index_file = image.index_file
    if (where is BuildIdFrom.OPTION and vmlinux is None and index_file is None
            and not os.environ.get("KSYM_VMLINUX")):
        # the debug file of that build id: a vmlinux, or a module's (ET_REL) when that is what it names;
        # none found: the portable index file of that build id (docs/index-files.md)
        from ..locate import find_vmlinux

        try:
            vmlinux = str(find_vmlinux(build_id=expected, build_id_source="--build-id", options=image.debuginfo,
                                       warn=err).path)
        except (FileNotFoundKsymError, DebuginfodError) as miss:
            index_file = str(index_file_after_miss(miss, ExpectedBuildId(expected, where), image.index_files))
    if vmlinux is not None and _is_module_file(vmlinux):
        # a module debug file (ET_REL): faddr2line's --section semantics (docs/modules.md)
        if opts.list_source:
            err("--list is not supported for module debug files yet")
            return EXIT_USAGE
        from ..debuginfo import mismatch_warning
        from ..modules import ModuleSymbolizer

        with ModuleSymbolizer(vmlinux, path_map=image.path_map) as msym:
            warning = mismatch_warning(expected, where.value, vmlinux, msym.build_id)
            if warning:
                err(warning)
            return _print_resolutions(msym, opts, out, err, None)
    opened = open_symbolizer(image, ExpectedBuildId(expected, where), err, vmlinux=vmlinux, index_file=index_file)
    # closed at the end of the block, also on an error: what was read goes to the index then
    with opened as sym:
        elixir = None
        if opts.json or opts.links:  # plain text shows no links: skip building them
            try:
                elixir = image_links(sym, opts.source)
            except ValueError as exc:  # --kernel-tag, --elixir-url
                err(f"ksym: error: {exc}")
                return EXIT_USAGE
        if expected:
            from ..debuginfo import mismatch_warning

            warning = mismatch_warning(expected, where.value, sym.path, sym.build_id)
            if warning and not said_by_locate(sym.located, expected):
                err(warning)
        lister = _Lister(sym, opts.source, err) if opts.list_source else None
        try:
            status = _print_resolutions(sym, opts, out, err, lister, elixir)
        finally:
            if lister is not None:
                lister.provider.close()  # its HTTP session
    report_stats(sym, err)
    return status


def _is_module_file(path: str) -> bool:
    """:func:`ksym.image.is_module_file` (the ELF reader is imported for a debug file, not for an index
    file)."""
    from ..image import is_module_file

    return is_module_file(path)


def _file_as_first_frame(first: str) -> str | None:
    """``ksym resolve VMLINUX FRAME`` (a forgotten ``--vmlinux``, or faddr2line's argument order): what to
    say when the first frame names an existing file, None when it does not."""
    if not os.path.isfile(first):
        return None
    import shlex  # only for the message: not on a run that resolves its frames
    try:
        with open(first, "rb") as f:
            magic = f.read(4)
    except OSError:
        magic = b""
    if magic == b"\x7fELF":
        return f"{first} is a file: did you mean --vmlinux {shlex.quote(first)}?"
    return f"{first} is a file, not a frame: did you mean ksym annotate {shlex.quote(first)}?"


def _print_resolutions(sym: ImageResolver, opts: ResolveOptions, out: Callable[[str], None],
                       err: Callable[[str], None], lister: _Lister | None,
                       elixir: ElixirLinks | None = None) -> int:
    from ..format import faddr2line_lines, frame_json, terminal_text

    status = EXIT_OK
    first = True
    if len(opts.frames) > 1:
        sym.prefetch_frames(opts.frames)  # a long list: the units it needs are read at once
    for frame in opts.frames:
        try:
            matches = sym.resolve(frame)
        except SpecError as exc:
            err(str(exc))
            status = max(status, EXIT_USAGE)
            if opts.json:
                out(frame_json(frame, [], str(exc)))
            continue
        except SymbolNotFoundError as exc:
            status = max(status, EXIT_UNRESOLVED)
            if opts.json:
                out(frame_json(frame, [], str(exc)))
                continue
            # as scripts/faddr2line: "skipping ..." on stdout, "bad ..." on stderr (and no "no match")
            for reason in exc.reasons:
                (err if reason.stops else out)(reason.text)
            if not any(r.stops for r in exc.reasons):
                err(f"no match for {frame}")
            continue
        if elixir is not None:
            matches = [elixir.resolution(m) for m in matches]
        if opts.json:
            out(frame_json(frame, matches))
            continue
        for m in matches:
            if not first:
                out("")
            first = False
            if lister is not None:
                out(terminal_text(m.header))
                out(lister.block(m, links=opts.links).rstrip("\n"))
            else:
                out("\n".join(faddr2line_lines(m, links=opts.links)))
    if not first and not sym.has_dwarf:
        err(f"ksym: warning: {terminal_text(str(sym.path))}: no DWARF debug info (.debug_info): functions named "
            "from the symbol table, without file:line, as addr2line does")
    if lister is not None:
        lister.report()
    return status


class _Lister:
    """faddr2line --list: the source around each location, from a local tree, the cache or the web."""

    def __init__(self, sym: Symbolizer, source: SourceOptions, err: Callable[[str], None]) -> None:
        from ..source import SourceFetchError, SourceProvider, choose_source_dir
        from ..version import choose_tag

        self.tag = choose_tag(sym.banner, source.kernel_tag)
        # a local tree first (--source-dir, the current directory, $KSYM_SOURCE_DIR, beside the vmlinux,
        # installed): only without one does --list ask the network
        choice = choose_source_dir(self.tag.version, source_dir=source.source_dir, vmlinux=str(sym.path))
        if choice.note:
            err(f"ksym: note: {choice.note}")
        kw: dict[str, Any] = {"source_dir": choice.path, "offline": source.offline,
                              "roots": sym.path_map.roots()}
        if source.source_url:
            kw["url_template"] = source.source_url
        self.provider = SourceProvider(**kw)
        self.errors: list[SourceFetchError] = []
        self.err = err
        if self.tag.note:
            err(f"ksym: note: kernel tag {self.tag.tag}: {self.tag.note}")

    def block(self, res: Resolution, links: bool = False) -> str:
        from ..format import location_text, terminal_text
        from ..source import format_list

        lines = [("(inlined by) " if i else "") + location_text(loc) for i, loc in enumerate(res.chain)]
        urls = [terminal_text(loc.url) if links and loc.url else None for loc in res.chain]
        return str(format_list(lines, self.provider, self.tag.tag, errors=self.errors, urls=urls))

    def report(self) -> None:
        seen = set()
        for e in self.errors:
            if str(e) not in seen:
                seen.add(str(e))
                self.err(f"ksym: warning: {e}")
