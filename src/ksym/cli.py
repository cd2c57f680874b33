"""The ``ksym`` command: a thin layer over :class:`ksym.Symbolizer`.

Every failure ends in one line on stderr and a documented exit code (docs/usage.md): never a
traceback, unless KSYM_DEBUG=1 asks for one.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .errors import (
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_UNRESOLVED,
    EXIT_USAGE,
    KsymError,
    SpecError,
    SymbolNotFoundError,
)

__all__ = ["add_path_map_argument", "build_parser", "main", "report_stats"]

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

exit codes: 0 all resolved, 1 some frame did not resolve, 2 usage or malformed frame,
            3 file missing or unreadable (or no debug file found), 4 not a usable ELF/DWARF file,
            5 debuginfod failed and no debug file was found, 70 internal error
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog.split()[0]} --help)\n")
        raise SystemExit(EXIT_USAGE)


def build_parser(annotate_arguments: bool = True) -> argparse.ArgumentParser:
    p = _Parser(
        prog="ksym",
        description="Turn Linux kernel stack frames (func+off, raw addresses) into file:line with the "
        "whole inline chain, as scripts/faddr2line prints them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    r = sub.add_parser("resolve", help="resolve func+off[/size] frames or addresses (faddr2line output)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    r.add_argument("frames", nargs="+", metavar="FRAME", help="func+off, func+off/size, or 0xADDRESS")
    _common(r)
    f = sub.add_parser("faddr2line", help="drop-in for scripts/faddr2line: VMLINUX FRAME...",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    f.add_argument("vmlinux_pos", metavar="VMLINUX")
    f.add_argument("frames", nargs="+", metavar="FRAME")
    _common(f, with_vmlinux=False)
    d = sub.add_parser("debuginfo", help="show which debug file ksym would use and why (build ids, paths, "
                       "debuginfod)", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    which = d.add_mutually_exclusive_group()
    which.add_argument("--build-id", metavar="HEX", help="the debug file of this build id")
    which.add_argument("--vmlinux", "-e", metavar="PATH", help="this vmlinux (itself if it has DWARF, else the "
                       "debug file of its build id)")
    which.add_argument("--running", action="store_true", help="the running kernel's (the default)")
    d.add_argument("--release", metavar="RELEASE", help="uname -r for distribution paths and the package to "
                   "install (default: the running kernel's)")
    d.add_argument("--json", action="store_true", help="one JSON object")
    d.add_argument("--offline", action="store_true", help="no network: the debuginfod cache only")
    d.add_argument("--cache-dir", metavar="DIR", help="ksym cache (default: $KSYM_CACHE_DIR or ~/.cache/ksym)")
    from .debuginfo import add_debuginfo_arguments

    add_debuginfo_arguments(d, build_id=False)
    a = sub.add_parser("annotate", help="put file:line under every stack frame of pasted text (a filter)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    if annotate_arguments:
        # annotate pulls in capstone and the text parser: only when that command is used
        from .annotate import add_annotate_arguments

        add_annotate_arguments(a)
    return p


def _common(p: argparse.ArgumentParser, with_vmlinux: bool = True) -> None:
    if with_vmlinux:
        p.add_argument("--vmlinux", "-e", metavar="PATH",
                       help="debug vmlinux (default: $KSYM_VMLINUX, then the running kernel's)")
    p.add_argument("--json", action="store_true", help="one JSON object per input line (always with links)")
    p.add_argument("--links", action="store_true", help="append the elixir.bootlin.com link to each location")
    p.add_argument("--list", action="store_true",
                   help="show the source around each location, as faddr2line --list")
    src = p.add_argument_group("kernel version and source (see docs/source.md)")
    src.add_argument("--kernel-tag", metavar="TAG", help="upstream tag for links and source, e.g. v6.1.187 "
                     "(default: from the image's linux_banner)")
    src.add_argument("--elixir-url", metavar="URL", help="base URL of a (self-hosted) Elixir instance")
    src.add_argument("--source-dir", metavar="DIR", help="kernel source tree for --list (default: an installed "
                     "linux-source tree of the same version, else fetched)")
    src.add_argument("--source-url", metavar="TEMPLATE", help="raw-source URL template with {tag} and {path}")
    src.add_argument("--offline", action="store_true", help="no network: never fetch source, never ask "
                     "debuginfod")
    from .debuginfo import add_debuginfo_arguments

    add_debuginfo_arguments(p, build_id=with_vmlinux)
    add_path_map_argument(src)
    p.add_argument("--no-index", action="store_true", help="neither read nor write the on-disk index")
    p.add_argument("--cache-dir", metavar="DIR", help="index directory (default: $KSYM_CACHE_DIR or "
                   "~/.cache/ksym)")


def _path_map_rule(text: str) -> tuple[str, str]:
    from .pathmap import PathMapError, parse_path_map_rule

    try:
        return parse_path_map_rule(text)
    except PathMapError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_path_map_argument(p: Any) -> None:
    """``--path-map OLD=NEW`` (repeatable), shared by resolve, faddr2line and annotate."""
    p.add_argument("--path-map", metavar="OLD=NEW", action="append", type=_path_map_rule, default=[],
                   help="show (and read, for --list) source paths starting with OLD under NEW instead; "
                   "repeatable, the first matching rule wins (see docs/usage.md)")


def _resolve_command(args: argparse.Namespace, out: Callable[[str], None],
                     err: Callable[[str], None]) -> int:
    from .debuginfo import expected_build_id, mismatch_warning, options_from_args
    from .locate import find_vmlinux
    from .modules import ModuleSymbolizer, is_module_file
    from .symbolizer import Symbolizer

    vmlinux = getattr(args, "vmlinux_pos", None) or getattr(args, "vmlinux", None)
    if vmlinux is None and args.frames:
        mistake = _file_as_first_frame(args.frames[0])
        if mistake is not None:
            err(f"ksym: error: {mistake}")
            return EXIT_USAGE
    options = options_from_args(args)
    try:
        expected, where = expected_build_id(args)
    except ValueError as exc:
        err(f"ksym: error: {exc}")
        return EXIT_USAGE
    if where == "--build-id" and vmlinux is None and not os.environ.get("KSYM_VMLINUX"):
        # the debug file of that build id: a vmlinux, or a module's (ET_REL) when that is what it names
        vmlinux = str(find_vmlinux(build_id=expected, build_id_source="--build-id", options=options,
                                   warn=err).path)
    if vmlinux is not None and is_module_file(vmlinux):
        # a module debug file (ET_REL): faddr2line's --section semantics (docs/modules.md)
        if args.list:
            err("--list is not supported for module debug files yet")
            return EXIT_USAGE
        with ModuleSymbolizer(vmlinux, path_map=args.path_map) as msym:
            warning = mismatch_warning(expected, where, vmlinux, msym.build_id)
            if warning:
                err(warning)
            return _print_resolutions(msym, args, out, err, None)
    # closed at the end of the block, also on an error: what was read goes to the index then
    with Symbolizer(vmlinux, use_index=not args.no_index, cache_dir=args.cache_dir, warn=err,
                    kernel_tag=args.kernel_tag, elixir_url=args.elixir_url,
                    links=args.json or args.links,  # plain text shows no links: skip building them
                    debuginfo=options, path_map=args.path_map) as sym:
        warning = mismatch_warning(expected, where, sym.path, sym.build_id)
        if warning and not any(expected and expected in w for w in sym.warnings):
            err(warning)
        lister = _Lister(sym, args, err) if args.list else None
        status = _print_resolutions(sym, args, out, err, lister)
    report_stats(sym, err)
    return status


def report_stats(sym: Any, err: Callable[[str], None]) -> None:
    """With ``KSYM_STATS=1``: one line on stderr of what the run read (``Symbolizer.stats``: units from
    the DWARF and from the index, answers stored and looked up, the index directory)."""
    if os.environ.get("KSYM_STATS", "") not in ("", "0"):
        err(f"ksym: stats: {sym.stats}")


def _file_as_first_frame(first: str) -> str | None:
    """``ksym resolve VMLINUX FRAME`` (a forgotten ``--vmlinux``, or faddr2line's argument order): what to
    say when the first frame names an existing file, None when it does not."""
    import shlex

    if not os.path.isfile(first):
        return None
    try:
        with open(first, "rb") as f:
            magic = f.read(4)
    except OSError:
        magic = b""
    if magic == b"\x7fELF":
        return f"{first} is a file: did you mean --vmlinux {shlex.quote(first)}?"
    return f"{first} is a file, not a frame: did you mean ksym annotate {shlex.quote(first)}?"


def _print_resolutions(sym: Any, args: argparse.Namespace, out: Callable[[str], None],
                       err: Callable[[str], None], lister: _Lister | None) -> int:
    from .format import faddr2line_lines, frame_json, terminal_text

    status = EXIT_OK
    first = True
    if len(args.frames) > 1 and hasattr(sym, "prefetch_frames"):
        sym.prefetch_frames(args.frames)  # a long list: the units it needs are read at once
    for frame in args.frames:
        try:
            matches = sym.resolve(frame)
        except SpecError as exc:
            err(str(exc))
            status = max(status, EXIT_USAGE)
            if args.json:
                out(frame_json(frame, [], str(exc)))
            continue
        except SymbolNotFoundError as exc:
            status = max(status, EXIT_UNRESOLVED)
            if args.json:
                out(frame_json(frame, [], str(exc)))
                continue
            for reason in exc.reasons:
                if reason.startswith("skipping"):
                    out(reason)
                else:
                    err(reason)
            if not any(r.startswith("bad ") for r in exc.reasons):
                err(f"no match for {frame}")
            continue
        if args.json:
            out(frame_json(frame, matches))
            continue
        for m in matches:
            if not first:
                out("")
            first = False
            if lister is not None:
                out(terminal_text(m.header))
                out(lister.block(m, links=args.links).rstrip("\n"))
            else:
                out("\n".join(faddr2line_lines(m, links=args.links)))
    if not first and not getattr(sym, "has_dwarf", True):
        err(f"ksym: warning: {terminal_text(str(sym.path))}: no DWARF debug info (.debug_info): functions named "
            "from the symbol table, without file:line, as addr2line does")
    if lister is not None:
        lister.report()
    return status


def _debuginfo_command(args: argparse.Namespace, out: Callable[[str], None],
                       err: Callable[[str], None]) -> int:
    """``ksym debuginfo``: 0 when a debug file is found, 3 when not, 5 when debuginfod failed too."""
    import json

    from .debuginfo import normalize_build_id, options_from_args
    from .errors import EXIT_NETWORK, EXIT_NO_FILE
    from .locate import explain_debuginfo

    bid = None
    if args.build_id:
        try:
            bid = normalize_build_id(args.build_id)
        except ValueError as exc:
            err(f"ksym: error: {exc}")
            return EXIT_USAGE
    look = explain_debuginfo(build_id=bid, vmlinux=args.vmlinux, release=args.release,
                             options=options_from_args(args), warn=err)
    for w in look.warnings:
        err(w)
    status = EXIT_OK if look.path else (EXIT_NETWORK if look.failures else EXIT_NO_FILE)
    if args.json:
        out(json.dumps({**look.to_dict(), "exit_code": status}))
        return status
    out(f"build id: {look.build_id or 'unknown'} ({look.source})")
    for n in look.notes:
        out(f"  {n}")
    out("searched:")
    width = max((len(a.kind) for a in look.attempts), default=0)
    for a in look.attempts:
        line = f"  {a.kind:<{width}}  {a.where}: {a.outcome}"
        if a.build_id and a.outcome != "match":
            line += f" (has {a.build_id}, want {look.build_id})"
        if a.detail:
            line += f": {a.detail}"
        out(line)
    out("debuginfod servers: " + (" ".join(look.servers) if look.servers
                                  else "none (set $DEBUGINFOD_URLS or pass --debuginfod-url)")
        + (" [offline: not asked]" if args.offline and look.servers else ""))
    if look.path:
        out(f"found: {look.path} ({look.found_by})")
    else:
        what = f"with build id {look.build_id}" if look.build_id else "for this kernel"
        out(f"not found: no debug file {what}")
        for f in look.failures:
            out(f"  failed: {f}")
        if look.install:
            out(f"install: {look.install}")
    return status


class _Lister:
    """faddr2line --list: the source around each location, from a local tree, the cache or the web."""

    def __init__(self, sym: Any, args: argparse.Namespace, err: Callable[[str], None]) -> None:
        from .source import SourceFetchError, SourceProvider, choose_source_dir

        self.tag = sym.tag_guess
        # a local tree first (--source-dir, the current directory, $KSYM_SOURCE_DIR, beside the vmlinux,
        # installed): only without one does --list ask the network
        choice = choose_source_dir(self.tag.version, source_dir=args.source_dir, vmlinux=str(sym.path))
        if choice.note:
            err(f"ksym: note: {choice.note}")
        kw: dict[str, Any] = {"source_dir": choice.path, "offline": args.offline,
                              "roots": sym.path_map.roots()}
        if args.source_url:
            kw["url_template"] = args.source_url
        self.provider = SourceProvider(**kw)
        self.errors: list[SourceFetchError] = []
        self.err = err
        if self.tag.note:
            err(f"ksym: note: kernel tag {self.tag.tag}: {self.tag.note}")

    def block(self, res: Any, links: bool = False) -> str:
        from .format import location_text, terminal_text
        from .source import format_list

        lines = [("(inlined by) " if i else "") + location_text(loc) for i, loc in enumerate(res.chain)]
        urls = [terminal_text(loc.url) if links and loc.url else None for loc in res.chain]
        return str(format_list(lines, self.provider, self.tag.tag, errors=self.errors, urls=urls))

    def report(self) -> None:
        seen = set()
        for e in self.errors:
            if str(e) not in seen:
                seen.add(str(e))
                self.err(f"ksym: warning: {e}")


def main(argv: Sequence[str] | None = None) -> int:
    from .format import terminal_text

    # names and paths come from debug files: no control character reaches the terminal raw (tab, the
    # form feed of source text and the newlines between lines stay; names are escaped whole before)
    def out(line: str) -> None:
        sys.stdout.write(terminal_text(line, "\t\f\n") + "\n")

    def err(line: str) -> None:
        sys.stderr.write(terminal_text(line, "\t") + "\n")

    words = list(sys.argv[1:] if argv is None else argv)
    # a one-shot command allocates ~10^5 acyclic objects (index records, one record per frame line):
    # the default collector would rescan them all every few hundred allocations (mypy does the same)
    gc.set_threshold(200_000, 30, 30)
    parser = build_parser(annotate_arguments=words[:1] == ["annotate"])
    args = parser.parse_args(words)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "annotate":
            from .annotate import annotate_command

            return int(annotate_command(args))
        if args.command == "debuginfo":
            return _debuginfo_command(args, out, err)
        return _resolve_command(args, out, err)
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

    A run over a large dump leaves ~10^5 objects that the interpreter would free one by one at exit
    (~20 ms, 5% of a warm annotate): output is flushed and exit handlers run first, then the process
    ends. The commands have closed their Symbolizer (and written the index) before :func:`main` returns."""
    import atexit

    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        pass  # a reader that went away (main() has handled a broken pipe on the way)
    atexit._run_exitfuncs()
    os._exit(code)
