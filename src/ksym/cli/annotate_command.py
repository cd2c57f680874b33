"""``ksym annotate``: read a dump, check its build id against the vmlinux's, annotate every frame and write
the annotated text or JSON lines as each piece of the input is annotated (:func:`ksym.annotate.annotate_stream`:
``dmesg -w | ksym annotate`` shows each frame when its line arrives), or a report of the whole dump
(:func:`ksym.annotate.annotate`)."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO

from ..errors import (
    EXIT_NO_FILE,
    EXIT_OK,
    EXIT_UNRESOLVED,
    EXIT_USAGE,
    KsymError,
)
from .common import (
    BuildIdFrom,
    ExpectedBuildId,
    expected_build_id,
    image_links,
    open_symbolizer,
    report_stats,
    said_by_locate,
)
from .options import AnnotateOptions

if TYPE_CHECKING:
    from ..annotate import DumpInput
    from ..kallsyms import Kallsyms
    from ..links import ElixirLinks
    from ..modules import ModuleSet
    from ..symbolizer import Symbolizer

__all__ = ["FORCED_UNVERIFIED", "run_annotate"]

#: What every frame of a dump annotated with ``--force`` past a build id mismatch carries.
FORCED_UNVERIFIED = "the dump's build id is not this vmlinux's (--force)"


def run_annotate(opts: AnnotateOptions, err: Callable[[str], None]) -> int:
    """Run ``ksym annotate``; returns the exit code (0: every frame resolved, 1: some did not, 2: usage,
    3/4: vmlinux or kallsyms missing / unusable). The output goes to standard output or ``opts.output``,
    every message to ``err``. The Symbolizer and the module files are closed before it returns (the index
    is written then), on every path."""
    with contextlib.ExitStack() as closing:
        return _run(opts, err, closing)


def _read_input(name: str) -> str:
    if name == "-":
        data = sys.stdin.buffer.read()
    else:
        with open(name, "rb") as fh:
            data = fh.read()
    return data.decode("utf-8", "surrogateescape")


def _dump_build_check(text: str, dumped: str | None, sym: Symbolizer, force: bool) -> tuple[str | None, str | None]:
    """The dump's own build id (``dumped`` when already found, else looked for in ``text``) against the
    vmlinux's: ``(None, None)`` when they match or either is unknown; on a mismatch the line to print and,
    with ``force``, the reason every frame is marked unverified (without it, ``None``: refuse, since
    another build's source lines would look right)."""
    from ..buildid import kernel_build_id_in_text, same_build_id

    if dumped is None:
        dumped = kernel_build_id_in_text(text)
    if not dumped or not sym.build_id or same_build_id(dumped, sym.build_id):
        return None, None
    if not force:
        return None, (f"ksym annotate: error: build id mismatch: the dump names build id {dumped} but {sym.path} "
                      f"has {sym.build_id}: give the dump's vmlinux (--vmlinux, or found by its build id through "
                      "DEBUGINFOD_URLS), or --force to annotate anyway")
    return FORCED_UNVERIFIED, (f"ksym annotate: warning: build id mismatch: the dump names build id {dumped} but "
                               f"{sym.path} has {sym.build_id}: every frame is marked unverified (--force)")


def _run(opts: AnnotateOptions, err: Callable[[str], None], closing: contextlib.ExitStack) -> int:
    from ..annotate import DumpInput, annotate
    from ..debuginfo import mismatch_warning
    from ..kallsyms import load_kallsyms
    from ..modules import ModuleSet

    name = opts.file
    fmt = opts.output_format
    if opts.json and fmt != "json":
        err(f"ksym annotate: error: --json and --format {fmt} do not go together")
        return EXIT_USAGE
    dump: DumpInput | None = None  # text and JSON stream: written as each piece is annotated
    try:
        if fmt in ("text", "json"):
            fh = sys.stdin.buffer if name == "-" else closing.enter_context(open(name, "rb"))  # noqa: SIM115
            dump = DumpInput(fh, votes=opts.kaslr_offset is None and not opts.kallsyms)
            text, evidence = "", dump.evidence()
        else:
            text, evidence = _read_input(name), None
    except OSError as exc:
        err(f"ksym annotate: error: {name}: {exc.strerror or exc}")
        return EXIT_USAGE
    image = opts.image
    if image.index_file is not None and image.vmlinux is not None:
        err("ksym annotate: error: --index and --vmlinux do not go together: the index file stands for the vmlinux")
        return EXIT_USAGE
    try:
        expected, where = expected_build_id(image.build_id, image.running, text if evidence is None else None)
        if evidence is not None and where is BuildIdFrom.NOWHERE:
            expected, where = evidence.build_id, BuildIdFrom.DUMP
    except ValueError as exc:
        err(f"ksym annotate: error: {exc}")
        return EXIT_USAGE
    try:
        ks = load_kallsyms(opts.kallsyms) if opts.kallsyms else None
        sym = closing.enter_context(open_symbolizer(
            image, ExpectedBuildId(expected, where), err, vmlinux=image.vmlinux, index_file=image.index_file,
            build_id=expected if where is not BuildIdFrom.RUNNING else None))
        closing.callback(report_stats, sym, err)
        elixir = None
        if fmt != "text" or opts.links:  # plain text without --links shows no links: skip building them
            try:
                elixir = image_links(sym, opts.source)
            except ValueError as exc:  # --kernel-tag, --elixir-url
                err(f"ksym annotate: error: {exc}")
                return EXIT_USAGE
        warning = mismatch_warning(expected, where.value, sym.path, sym.build_id)
        # the dump's own build id: what its evidence found (a stream's text is not at hand), else in the text
        dumped = evidence.build_id if evidence is not None else expected if where is BuildIdFrom.DUMP else None
        unverified, said = _dump_build_check(text, dumped, sym, opts.force)
        if said is not None:
            err(said)
            if unverified is None:
                return EXIT_NO_FILE
        elif warning and not said_by_locate(sym.located, expected):
            err(warning)
        release = opts.release
        if release is None and sym.banner:
            m = re.match(r"Linux version (\S+)", sym.banner)
            release = m.group(1) if m else None
        # a portable index file made with --modules answers module frames before any debug file
        modules = ModuleSet(release, list(opts.modules), debuginfo=image.debuginfo, path_map=sym.path_map,
                            index=sym.portable)
        closing.callback(modules.close)
        if dump is not None:
            return _stream(opts, dump, sym, ks, modules, unverified, elixir, err)
        result = annotate(text, sym, kaslr_offset=opts.kaslr_offset, kallsyms=ks, exact=opts.exact,
                          modules=modules, unverified=unverified, elixir=elixir)
        sym.flush()  # the index learns this dump's frames (the report below may read more)
    except KsymError as exc:
        err(f"ksym annotate: error: {exc}")
        return exc.exit_code
    if fmt == "json":
        payload = "".join(line + "\n" for line in result.json_lines())
    elif fmt in ("html", "markdown"):
        from ..report import report_for_command

        try:
            payload = report_for_command(result, sym, fmt, opts.source, title=opts.title,
                                         input_name=None if name == "-" else name, warn=err)
        except ValueError as exc:  # a --source-url without {path}
            err(f"ksym annotate: error: {exc}")
            return EXIT_USAGE
    else:
        payload = result.render_text(links=opts.links)
    if opts.output:
        from ..format import write_output

        try:
            write_output(opts.output, payload)
        except OSError as exc:
            err(f"ksym annotate: error: {opts.output}: {exc.strerror or exc}")
            return EXIT_NO_FILE
    else:
        sys.stdout.buffer.write(payload.encode("utf-8", "surrogateescape"))
        sys.stdout.buffer.flush()
    for note in result.notes:
        err(f"ksym annotate: {note}")
    bad = len(result.unresolved)
    if bad:
        err(f"ksym annotate: {bad} of {len(result.frames)} frames unresolved")
        return EXIT_UNRESOLVED
    return EXIT_OK


def _stream(opts: AnnotateOptions, dump: DumpInput, sym: Symbolizer, ks: Kallsyms | None, modules: ModuleSet,
            unverified: str | None, elixir: ElixirLinks | None, err: Callable[[str], None]) -> int:
    """The text and JSON forms: written piece by piece as they are annotated, to standard output or to
    ``--output`` (:func:`ksym.format.output_file`: renamed over it at the end)."""
    from ..annotate import annotate_stream
    from ..errors import BuildIdMismatchError
    from ..format import output_file

    def later_build_id(dumped: str) -> str | None:
        # a build id a pipe names after its first pause: checked as the first piece's was
        now, said = _dump_build_check("", dumped, sym, opts.force)
        if said is not None:
            if now is None:
                raise BuildIdMismatchError(said.removeprefix("ksym annotate: error: "))
            err(said)
        return now

    try:
        with contextlib.ExitStack() as closing:
            # an error leaves ``--output`` as it was: the temporary is renamed over it only at the end
            out: BinaryIO = closing.enter_context(output_file(opts.output)) if opts.output else sys.stdout.buffer

            def write(piece: str) -> None:
                out.write(piece.encode("utf-8", "surrogateescape"))
                out.flush()

            summary = annotate_stream(dump, sym, write, kaslr_offset=opts.kaslr_offset, kallsyms=ks,
                                      exact=opts.exact, modules=modules, unverified=unverified,
                                      json=opts.output_format == "json", links=opts.links, elixir=elixir,
                                      check_build_id=later_build_id)
            sym.flush()  # the index learns this dump's frames
    except KsymError as exc:
        err(f"ksym annotate: error: {exc}")
        return exc.exit_code
    except OSError as exc:
        if not opts.output:
            raise  # standard output: a closed pipe ends the command as for every other command
        err(f"ksym annotate: error: {opts.output}: {exc.strerror or exc}")
        return EXIT_NO_FILE
    for note in summary.notes:
        err(f"ksym annotate: {note}")
    if summary.unresolved:
        err(f"ksym annotate: {summary.unresolved} of {summary.frames} frames unresolved")
        return EXIT_UNRESOLVED
    return EXIT_OK
