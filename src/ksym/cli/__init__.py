"""The ``ksym`` command: the only place ksym parses a command line.

Every failure ends in one line on stderr and a documented exit code (docs/usage.md): never a
traceback, unless KSYM_DEBUG=1 asks for one.

- :mod:`ksym.cli.options` — every option, defined once (:func:`build_parser`), and the typed record of
  each command's options (``ResolveOptions``, ``AnnotateOptions``, ``DebuginfoCommandOptions``) that
  the command bodies read; library modules get the records' parts, never an ``argparse.Namespace``.
- :mod:`ksym.cli.resolve_command` — ``ksym resolve`` and ``ksym faddr2line``.
- :mod:`ksym.cli.annotate_command` — ``ksym annotate`` (over :func:`ksym.annotate.annotate`).
- :mod:`ksym.cli.debuginfo_command` — ``ksym debuginfo``.
- :mod:`ksym.cli.index_command` — ``ksym index build`` (over :mod:`ksym.portable_build`).
- :mod:`ksym.cli.common` — the build id a debug file should have, ``KSYM_STATS``.

A command module is imported only when its command runs; none of them imports this package.
"""

from __future__ import annotations

import gc
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from .options import build_parser

__all__ = ["build_parser", "main", "run"]


def __getattr__(name: str) -> object:
    """:func:`ksym.cli.options.build_parser`, imported on first use (PEP 562): the command imports its
    modules only once the collector is set for a one-shot run (:func:`main`)."""
    if name == "build_parser":
        from .options import build_parser

        return build_parser
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ksym`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    # a one-shot command allocates ~10^5 acyclic objects (index records, one record per frame line), and
    # its imports many more: the default collector would rescan them all every few hundred allocations
    # (mypy does the same). Set before anything is imported.
    gc.set_threshold(200_000, 30, 30)
    from ..errors import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, KsymError
    from ..format import terminal_text
    from .options import build_parser

    # names and paths come from debug files: no control character reaches the terminal raw (tab, the
    # form feed of source text and the newlines between lines stay; names are escaped whole before)
    def out(line: str) -> None:
        sys.stdout.write(terminal_text(line, "\t\f\n") + "\n")

    def err(line: str) -> None:
        sys.stderr.write(terminal_text(line, "\t") + "\n")
        sys.stderr.flush()

    words = list(sys.argv[1:] if argv is None else argv)
    # only the command being run gets its options (argparse's add_argument is most of a parser's cost)
    parser = build_parser(command=words[0] if words else None)
    args = parser.parse_args(words)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "annotate":
            from .annotate_command import run_annotate
            from .options import AnnotateOptions

            return run_annotate(AnnotateOptions.from_args(args), err)
        if args.command == "index":
            from .index_command import run_index_build
            from .options import IndexBuildOptions

            return run_index_build(IndexBuildOptions.from_args(args), out, err)
        if args.command == "debuginfo":
            from .debuginfo_command import run_debuginfo
            from .options import DebuginfoCommandOptions

            return run_debuginfo(DebuginfoCommandOptions.from_args(args), out, err)
        from .options import ResolveOptions
        from .resolve_command import run_resolve

        return run_resolve(ResolveOptions.from_args(args), out, err)
    except KsymError as exc:
        err(f"ksym: error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        err("ksym: interrupted")
        return 130
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - replaces a dead stdout
        except OSError:
            pass
        return EXIT_OK
    except Exception as exc:
        if os.environ.get("KSYM_DEBUG"):
            raise
        err(f"ksym: internal error: {type(exc).__name__}: {exc} (set KSYM_DEBUG=1 for a traceback)")
        return EXIT_INTERNAL


def run() -> None:
    """The ``ksym`` command: :func:`main`, then exit without tearing the interpreter down.

    A run over a large dump leaves ~10^5 objects that the interpreter would free one by one at exit:
    output is flushed and exit handlers run first, then the process ends. The commands have closed their Symbolizer (and written the index) before :func:`main` returns."""
    import atexit

    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        pass  # a reader that went away (main() has handled a broken pipe on the way)
    atexit._run_exitfuncs()
    os._exit(code)
