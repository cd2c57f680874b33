"""Every option of the ``ksym`` command, each defined once, and the typed records the commands read.

:func:`build_parser` builds the parser of all commands from one ``_add_*`` function per option (or per
small set of options that always go together); a command's parsed :class:`argparse.Namespace` becomes its
record (:meth:`ResolveOptions.from_args`, :meth:`AnnotateOptions.from_args`,
:meth:`DebuginfoCommandOptions.from_args`), which is all a command body reads. Library modules take those
records' parts (:class:`ksym.searchopts.DebuginfoOptions`, :class:`ksym.searchopts.SourceOptions`, keyword
arguments), never a Namespace.

Where the options are used:

==========================  =======  ==========  =========  =========
option                      resolve  faddr2line  annotate   debuginfo
==========================  =======  ==========  =========  =========
``--vmlinux``, ``-e``       yes      (VMLINUX)   yes        yes
``--build-id``              yes                  yes        yes
``--running``               yes                  yes        yes
``--debug-dir``             yes      yes         yes        yes
``--debuginfod-url``        yes      yes         yes        yes
``--progress``              yes      yes         yes        yes
``--offline``               yes      yes         yes        yes
``--cache-dir``             yes      yes         yes        yes
``--index-dir``             yes                  yes
``--index-url``             yes                  yes
``--no-index``              yes      yes         yes
``--path-map``              yes      yes         yes
``--kernel-tag``            yes      yes         yes
``--elixir-url``            yes      yes         yes
``--source-dir``            yes      yes         yes
``--source-url``            yes      yes         yes
``--json``                  yes      yes         yes        yes
``--links``                 yes      yes         yes
``--list``                  yes      yes
``--release``                                    yes        yes
``--kallsyms``                                   yes
``--kaslr-offset``                               yes
``--exact``                                      yes
``--force``                                      yes
``--modules``                                    yes
``--format``, ``-f``                             yes
``--output``, ``-o``                             yes
``--title``                                      yes
``--index``                 yes                  yes
==========================  =======  ==========  =========  =========

``ksym index build VMLINUX -o FILE [--jobs N] [--progress]`` has options of its own (:func:`_add_index_build`).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from ..errors import EXIT_USAGE
from ..records import NamedTuple
from ..searchopts import DebuginfoOptions, IndexFileOptions, SourceOptions

__all__ = [
    "EPILOG",
    "AnnotateOptions",
    "DebuginfoCommandOptions",
    "ImageOptions",
    "IndexBuildOptions",
    "ResolveOptions",
    "SourceOptions",
    "build_parser",
    "debuginfo_options",
    "index_file_options",
    "source_options",
]

EPILOG = """\
examples:
  ksym resolve --vmlinux /usr/lib/debug/boot/vmlinux-6.1.0-53-cloud-amd64 __ip_local_out+222
  ksym resolve ip_local_out+0x1d/0x70 0xffffffff8184586e        (default vmlinux: the running kernel's)
  ksym resolve --json __ip_local_out+219 | jq .chain
  ksym faddr2line vmlinux __ip_local_out+219                     (faddr2line's argument order)
  dmesg | ksym annotate                                          (file:line under every frame)
  ksym annotate --kallsyms kallsyms.txt --json dump.txt
  ksym annotate --format html -o oops.html --modules /usr/lib/debug/lib/modules/$(uname -r) oops.txt
  ksym resolve --build-id 5f3c... --debuginfod-url https://debuginfod.debian.net __ip_local_out+219
  ksym debuginfo --running                                       (which debug file, and why)
  ksym index build vmlinux -o vmlinux.ksymidx                    (a portable file: no vmlinux needed)
  ksym resolve --index vmlinux.ksymidx __ip_local_out+219

exit codes: 0 all resolved, 1 some frame did not resolve, 2 usage or malformed frame,
            3 file missing or unreadable (or no debug file found), 4 not a usable ELF/DWARF file,
            5 a debuginfod or index file server failed and no debug file was found, 70 internal error
"""

#: The output forms of ``ksym annotate --format``.
ANNOTATE_FORMATS = ("text", "json", "html", "markdown")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog.split()[0]} --help)\n")
        raise SystemExit(EXIT_USAGE)


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns`` (``$COLUMNS``, then the terminal, then 80) without
    importing shutil (and the compression modules it imports) on every command's start."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's raw-description formatter, told the width argparse would ask shutil for."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _terminal_columns() - 2 if width is None else width)


#: A parser or an argument group (mutually exclusive ones too): what an option is added to.
_Adder = argparse._ActionsContainer


def build_parser(annotate_arguments: bool = True, command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every ``ksym`` command. ``annotate_arguments=False`` leaves ``ksym annotate``'s own
    options out (a run of another command does not need them); ``command`` (the first word of the
    command line), when it names a command, leaves every other command out (its parser and its
    options: only ``ksym --help`` and an unknown command show them); that command parses (and explains in
    ``--help``) exactly as with all of them."""
    commands = ("resolve", "faddr2line", "debuginfo", "annotate", "index")
    listed = commands if command not in commands else (command,)
    wanted = set(listed)
    if not annotate_arguments:
        wanted.discard("annotate")
    p = _Parser(
        prog="ksym",
        description="Turn Linux kernel stack frames (func+off, raw addresses) into file:line with the "
        "whole inline chain, as scripts/faddr2line prints them.",
        formatter_class=_Formatter,
        epilog=EPILOG,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    if "resolve" in listed:
        r = sub.add_parser("resolve", help="resolve func+off[/size] frames or addresses (faddr2line output)",
                           formatter_class=_Formatter, epilog=EPILOG)
        if "resolve" in wanted:
            r.add_argument("frames", nargs="+", metavar="FRAME", help="func+off, func+off/size, or 0xADDRESS")
            _add_frame_options(r, with_vmlinux=True)
    if "faddr2line" in listed:
        f = sub.add_parser("faddr2line", help="drop-in for scripts/faddr2line: VMLINUX FRAME...",
                           formatter_class=_Formatter, epilog=EPILOG)
        if "faddr2line" in wanted:
            f.add_argument("vmlinux_pos", metavar="VMLINUX")
            f.add_argument("frames", nargs="+", metavar="FRAME")
            _add_frame_options(f, with_vmlinux=False)
    if "debuginfo" in listed:
        d = sub.add_parser("debuginfo", help="show which debug file ksym would use and why (build ids, paths, "
                           "debuginfod)", formatter_class=_Formatter, epilog=EPILOG)
        if "debuginfo" in wanted:
            which = d.add_mutually_exclusive_group()
            _add_build_id(which, "the debug file of this build id")
            _add_vmlinux(which, "this vmlinux (itself if it has DWARF, else the debug file of its build id)")
            _add_running(which, "the running kernel's (the default)")
            _add_release(d, "uname -r for distribution paths and the package to install (default: the "
                         "running kernel's)")
            _add_json(d, "one JSON object")
            _add_offline(d)
            _add_cache_dir(d)
            _add_debuginfo_search(d)
    if "annotate" in listed:
        a = sub.add_parser("annotate", help="put file:line under every stack frame of pasted text (a filter)",
                           formatter_class=_Formatter, epilog=EPILOG)
        if "annotate" in wanted:
            _add_annotate_options(a)
    if "index" in listed:
        i = sub.add_parser("index", help="build a portable index file: resolve and annotate without the vmlinux "
                           "(docs/index-format.md)", formatter_class=_Formatter, epilog=EPILOG)
        if "index" in wanted:
            actions = i.add_subparsers(dest="index_command", metavar="ACTION", parser_class=_Parser,
                                       required=True)
            b = actions.add_parser("build", help="write the index file of a debug vmlinux",
                                   formatter_class=_Formatter)
            _add_index_build(b)
    return p


# --------------------------------------------------------------------------------------------------
# The options, each once


def _add_vmlinux(p: _Adder, help: str = "debug vmlinux (default: $KSYM_VMLINUX, then the running kernel's)"
                 ) -> None:
    p.add_argument("--vmlinux", "-e", metavar="PATH", help=help)


def _add_build_id(p: _Adder, help: str) -> None:
    p.add_argument("--build-id", metavar="HEX", help=help)


def _add_running(p: _Adder, help: str) -> None:
    p.add_argument("--running", action="store_true", help=help)


def _add_release(p: _Adder, help: str) -> None:
    p.add_argument("--release", metavar="RELEASE", help=help)


def _add_json(p: _Adder, help: str) -> None:
    p.add_argument("--json", action="store_true", help=help)


def _add_links(p: _Adder, help: str) -> None:
    p.add_argument("--links", action="store_true", help=help)


def _add_progress(p: _Adder, help: str) -> None:
    p.add_argument("--progress", action="store_true", help=help)


def _add_modules(p: _Adder, help: str, many: bool) -> None:
    """``--modules``: module debug files; ``many``: repeatable (a list), else one directory."""
    kind: dict[str, object] = {"action": "append", "default": []} if many else {"default": None}
    p.add_argument("--modules", metavar="DIR", help=help, **kind)  # type: ignore[arg-type]


def _add_output(p: _Adder, help: str, required: bool = False) -> None:
    p.add_argument("--output", "-o", metavar="FILE", required=required, help=help)


def _add_offline(p: _Adder) -> None:
    p.add_argument("--offline", action="store_true", help="no network: never fetch source, never ask "
                   "debuginfod (the debuginfod cache is still read)")


def _add_cache_dir(p: _Adder) -> None:
    p.add_argument("--cache-dir", metavar="DIR", help="ksym's cache: the index and debuginfod downloads "
                   "(default: $KSYM_CACHE_DIR or ~/.cache/ksym)")


def _add_no_index(p: _Adder) -> None:
    p.add_argument("--no-index", action="store_true", help="neither read nor write the on-disk index")


def _add_debuginfo_search(p: argparse.ArgumentParser, build_id: _BuildIdHelp | None = None) -> None:
    """``--debug-dir``, ``--debuginfod-url``, ``--progress`` (and, with ``build_id``, ``--build-id`` and
    ``--running``): how a debug file is found by its build id."""
    g = p.add_argument_group("debug files by build id (see docs/debuginfo.md)")
    if build_id is not None:
        _add_build_id(g, build_id.build_id)
        _add_running(g, build_id.running)
    g.add_argument("--debug-dir", metavar="DIR", action="append", default=[],
                   help="a root with a .build-id tree, searched before $KSYM_DEBUG_DIRS and /usr/lib/debug "
                   "(repeatable)")
    g.add_argument("--debuginfod-url", metavar="URL", action="append", default=[],
                   help="debuginfod server (repeatable; default: $DEBUGINFOD_URLS)")
    _add_progress(g, "show a download progress bar even when stderr is not a terminal")


def _add_index_search(p: argparse.ArgumentParser) -> None:
    """``--index-dir``, ``--index-url``: where a portable index file is looked for by build id when no
    debug vmlinux is found."""
    g = p.add_argument_group("ksym index files by build id, when no debug vmlinux is found (see docs/index-files.md)")
    g.add_argument("--index-dir", metavar="DIR", action="append", default=[],
                   help="a directory holding buildid/<BUILD-ID>/ksym-index files, searched before $KSYM_INDEX_PATH "
                   "(repeatable)")
    g.add_argument("--index-url", metavar="URL", action="append", default=[],
                   help="a server with <URL>/buildid/<BUILD-ID>/ksym-index (repeatable; default: $KSYM_INDEX_URLS)")


class _BuildIdHelp(NamedTuple):
    build_id: str
    running: str


#: ``--build-id`` and ``--running`` of the commands that read frames (resolve, annotate).
_FRAMES_BUILD_ID = _BuildIdHelp(
    build_id="use the debug vmlinux of this build id (found in .build-id trees, distribution paths or "
    "debuginfod); with --vmlinux, warn if it differs",
    running="the frames come from the running kernel: warn if the vmlinux's build id differs",
)


def _path_map_rule(text: str) -> tuple[str, str]:
    from ..pathmap import PathMapError, parse_path_map_rule

    try:
        return parse_path_map_rule(text)
    except PathMapError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_source(p: argparse.ArgumentParser) -> None:
    """The kernel version and source options: ``--kernel-tag``, ``--elixir-url``, ``--source-dir``,
    ``--source-url``, ``--offline``, ``--path-map``."""
    src = p.add_argument_group("kernel version and source (see docs/source.md)")
    src.add_argument("--kernel-tag", metavar="TAG", help="upstream tag for links and source, e.g. v6.1.187 "
                     "(default: from the image's linux_banner)")
    src.add_argument("--elixir-url", metavar="URL", help="base URL of a (self-hosted) Elixir instance")
    src.add_argument("--source-dir", metavar="DIR", help="kernel source tree for --list and the reports' source "
                     "context (default: an installed linux-source tree of the same version, else fetched)")
    src.add_argument("--source-url", metavar="TEMPLATE", help="raw-source URL template with {tag} and {path}")
    _add_offline(src)
    src.add_argument("--path-map", metavar="OLD=NEW", action="append", type=_path_map_rule, default=[],
                     help="show (and read, for --list) source paths starting with OLD under NEW instead; "
                     "repeatable, the first matching rule wins (see docs/usage.md)")


def _add_index_file(p: _Adder) -> None:
    p.add_argument("--index", metavar="FILE", dest="index_file",
                   help="answer from this portable index file (ksym index build) instead of a vmlinux")


def _add_index_build(p: argparse.ArgumentParser) -> None:
    """``ksym index build VMLINUX -o FILE``."""
    p.add_argument("vmlinux_pos", metavar="VMLINUX", help="the debug vmlinux")
    _add_output(p, "the index file to write", required=True)
    p.add_argument("--jobs", "-j", metavar="N", type=int, default=None,
                   help="worker processes (default: every CPU this process may use)")
    _add_modules(p, "also the module debug files under DIR (searched recursively), for ksym annotate --index",
                 many=False)
    _add_progress(p, "show the progress bar even when stderr is not a terminal")


def _add_image(p: argparse.ArgumentParser, with_vmlinux: bool) -> None:
    """The image and how it is read: ``--vmlinux`` (unless positional) or ``--index``, the build-id
    search, ``--no-index``, ``--cache-dir``."""
    if with_vmlinux:
        _add_vmlinux(p)
        _add_index_file(p)
    _add_debuginfo_search(p, _FRAMES_BUILD_ID if with_vmlinux else None)
    if with_vmlinux:
        _add_index_search(p)
    _add_no_index(p)
    _add_cache_dir(p)


def _add_frame_options(p: argparse.ArgumentParser, with_vmlinux: bool) -> None:
    """``ksym resolve`` and ``ksym faddr2line``."""
    _add_json(p, "one JSON object per input line (always with links)")
    _add_links(p, "append the elixir.bootlin.com link to each location")
    p.add_argument("--list", action="store_true", help="show the source around each location, as faddr2line "
                   "--list")
    _add_source(p)
    _add_image(p, with_vmlinux)


def _hex(text: str) -> int:
    t = text.strip().lower()
    neg = t.startswith("-")
    t = t.lstrip("+-")
    try:
        value = int(t.removeprefix("0x"), 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a hexadecimal number: {text!r}") from None
    return -value if neg else value


def _add_annotate_options(p: argparse.ArgumentParser) -> None:
    """``ksym annotate [FILE|-]`` and its options."""
    from ..report import DEFAULT_TITLE

    p.add_argument("file", nargs="?", default="-", metavar="FILE",
                   help="text with stack frames (default, or '-': standard input)")
    slide = p.add_mutually_exclusive_group()
    slide.add_argument("--kallsyms", metavar="FILE",
                       help="saved /proc/kallsyms of the boot the text comes from (gives the KASLR slide)")
    slide.add_argument("--kaslr-offset", metavar="HEX", type=_hex,
                       help="KASLR slide, runtime - link-time address (e.g. 0xf000000)")
    p.add_argument("--exact", action="store_true",
                   help="look every frame up at its address (faddr2line), not return addresses at the call site")
    p.add_argument("--force", action="store_true",
                   help="annotate even when the dump names a build id the vmlinux does not have; every frame "
                   "is then marked unverified")
    _add_modules(p, "directory (searched recursively) or file with module debug files (.ko, .ko.xz, "
                 ".ko.debug); /usr/lib/debug/lib/modules/RELEASE is always searched", many=True)
    _add_release(p, "uname -r of the kernel the text comes from (default: from the vmlinux banner)")
    out = p.add_argument_group("output")
    out.add_argument("--format", "-f", choices=ANNOTATE_FORMATS, default=None,
                     help="output form: the annotated text (default), JSON lines (as --json), or a report with "
                     "links and source context (html: one self-contained page; markdown)")
    _add_json(out, "one JSON object per frame instead of the text (as --format json)")
    _add_links(out, "end each location line with its elixir.bootlin.com link (JSON and reports always have "
               "them)")
    _add_output(out, "write the output to FILE instead of standard output")
    out.add_argument("--title", metavar="TEXT", help=f"report title (default: {DEFAULT_TITLE!r})")
    _add_source(p)
    _add_image(p, with_vmlinux=True)


# --------------------------------------------------------------------------------------------------
# What the commands read


def debuginfo_options(args: argparse.Namespace) -> DebuginfoOptions:
    """Where to look for debug files, from ``--debug-dir``, ``--debuginfod-url``, ``--offline``,
    ``--cache-dir`` and ``--progress``."""
    urls = list(args.debuginfod_url)
    return DebuginfoOptions(
        debug_dirs=tuple(args.debug_dir),
        servers=tuple(urls) if urls else None,
        offline=bool(args.offline),
        cache_dir=args.cache_dir,
        progress=True if args.progress else None,
    )


def index_file_options(args: argparse.Namespace) -> IndexFileOptions:
    """Where portable index files are looked for, from ``--index-dir``, ``--index-url``, ``--offline``,
    ``--cache-dir``, ``--progress`` and the ``KSYM_INDEX_*`` environment variables (read by
    :meth:`ksym.searchopts.IndexFileOptions.from_environment`, the one place that reads them)."""
    return IndexFileOptions.from_environment(os.environ, dirs=tuple(args.index_dir), urls=tuple(args.index_url),
                                             offline=bool(args.offline), cache_dir=args.cache_dir,
                                             progress=True if args.progress else None)


def source_options(args: argparse.Namespace) -> SourceOptions:
    """The kernel version and source options (:class:`ksym.searchopts.SourceOptions`), from
    ``--kernel-tag``, ``--elixir-url``, ``--source-dir``, ``--source-url`` and ``--offline``."""
    return SourceOptions(args.kernel_tag, args.elixir_url, args.source_dir, args.source_url, bool(args.offline))


class ImageOptions(NamedTuple):
    """The image frames are resolved against and how it is read.

    :param vmlinux: the file given (``--vmlinux``, or faddr2line's VMLINUX); None: found.
    :param build_id: ``--build-id`` as given (normalized by the command, which reports a malformed one).
    :param running: ``--running``: the frames come from the running kernel.
    :param debuginfo: where debug files are looked for.
    :param path_map: the ``--path-map`` rules, in order.
    :param use_index: read and write the on-disk index (not ``--no-index``).
    :param cache_dir: ``--cache-dir``.
    :param index_files: where a portable index file is looked for by build id when no debug vmlinux is
        found (the commands with ``--build-id``).
    """

    vmlinux: str | None = None
    build_id: str | None = None
    running: bool = False
    debuginfo: DebuginfoOptions = DebuginfoOptions()
    path_map: tuple[tuple[str, str], ...] = ()
    use_index: bool = True
    cache_dir: str | None = None
    index_files: IndexFileOptions = IndexFileOptions()
    #: ``--index``: a portable index file to answer from instead of a vmlinux
    index_file: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, vmlinux: str | None, by_build_id: bool = True) -> ImageOptions:
        """The image options of ``args``, with ``vmlinux`` as the command takes it; ``by_build_id``: the
        command has ``--build-id`` and ``--running``."""
        return cls(
            vmlinux=vmlinux,
            build_id=args.build_id if by_build_id else None,
            running=bool(args.running) if by_build_id else False,
            debuginfo=debuginfo_options(args),
            path_map=tuple(args.path_map),
            use_index=not args.no_index,
            cache_dir=args.cache_dir,
            index_files=index_file_options(args) if by_build_id else IndexFileOptions(cache_dir=args.cache_dir),
            index_file=getattr(args, "index_file", None),
        )


class ResolveOptions(NamedTuple):
    """``ksym resolve`` and ``ksym faddr2line``: the frames, the image, and how answers are shown."""

    frames: tuple[str, ...]
    image: ImageOptions = ImageOptions()
    source: SourceOptions = SourceOptions()
    json: bool = False
    links: bool = False
    #: ``--list``: the source around each location
    list_source: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ResolveOptions:
        if args.command == "faddr2line":
            image = ImageOptions.from_args(args, args.vmlinux_pos, by_build_id=False)
        else:
            image = ImageOptions.from_args(args, args.vmlinux)
        return cls(tuple(args.frames), image, source_options(args), bool(args.json), bool(args.links),
                   bool(args.list))


class AnnotateOptions(NamedTuple):
    """``ksym annotate``: the input, the image, the KASLR slide, and the output.

    :param file: the input file, ``-`` for standard input.
    :param format: ``--format`` (None: not given).
    :param json: ``--json`` (the same as ``--format json``).
    """

    file: str = "-"
    image: ImageOptions = ImageOptions()
    source: SourceOptions = SourceOptions()
    kallsyms: str | None = None
    kaslr_offset: int | None = None
    format: str | None = None
    json: bool = False
    links: bool = False
    exact: bool = False
    force: bool = False
    modules: tuple[str, ...] = ()
    release: str | None = None
    output: str | None = None
    title: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AnnotateOptions:
        return cls(
            file=args.file or "-",
            image=ImageOptions.from_args(args, args.vmlinux),
            source=source_options(args),
            kallsyms=args.kallsyms,
            kaslr_offset=args.kaslr_offset,
            format=args.format,
            json=bool(args.json),
            links=bool(args.links),
            exact=bool(args.exact),
            force=bool(args.force),
            modules=tuple(args.modules),
            release=args.release,
            output=args.output,
            title=args.title,
        )

    @property
    def output_format(self) -> str:
        """``text``, ``json``, ``html`` or ``markdown``: ``--format``, else ``json`` with ``--json``."""
        return self.format or ("json" if self.json else "text")


class DebuginfoCommandOptions(NamedTuple):
    """``ksym debuginfo``: whose debug file (``build_id``, ``vmlinux``, else the running kernel's), for
    which ``release``, and how it is shown."""

    build_id: str | None = None
    vmlinux: str | None = None
    release: str | None = None
    json: bool = False
    debuginfo: DebuginfoOptions = DebuginfoOptions()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DebuginfoCommandOptions:
        return cls(args.build_id, args.vmlinux, args.release, bool(args.json), debuginfo_options(args))


class IndexBuildOptions(NamedTuple):
    """``ksym index build``: the vmlinux, the file to write, how many workers, whether to show progress."""

    vmlinux: str
    output: str
    jobs: int | None = None
    progress: bool = False
    modules: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> IndexBuildOptions:
        return cls(args.vmlinux_pos, args.output, args.jobs, bool(args.progress), args.modules)
