"""Locate the debug vmlinux to use when none is named: ``$KSYM_VMLINUX``, then by build id (the one
given, found in a dump, or the running kernel's from /sys/kernel/notes): ``.build-id`` trees, where
distributions install it, then debuginfod (:mod:`ksym.debuginfo`, docs/debuginfo.md)."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from pathlib import Path

from .buildid import KERNEL_NOTES_PATH, normalize_build_id, running_build_id
from .debuginfo import (
    Attempt,
    DebuginfodClient,
    DebuginfoOptions,
    DebugLookup,
    check_file,
    debuginfod_servers,
    elf_facts,
    file_build_id,
    locate_debuginfo,
    mismatch_warning,
    package_hint,
)
from .errors import DebuginfodError, FileNotFoundKsymError, MissingDebugInfoError
from .searchopts import Located

__all__ = ["Located", "candidate_paths", "explain_debuginfo", "find_vmlinux", "release_paths", "search_vmlinux"]

#: Where distributions put the debug vmlinux of a kernel release (``{rel}``), most specific first, relative
#: to the root of the file system.
_RELEASE_PATHS = (
    "usr/lib/debug/boot/vmlinux-{rel}",
    "usr/lib/debug/lib/modules/{rel}/vmlinux",
    "usr/lib/debug/vmlinux-{rel}",
    "boot/vmlinux-{rel}",
    "lib/modules/{rel}/build/vmlinux",
    "lib/modules/{rel}/vmlinux",
    "usr/lib/modules/{rel}/vmlinux",
    "usr/lib/debug/usr/lib/modules/{rel}/vmlinux",
)


def release_paths(release: str | None = None, *, root: str | os.PathLike[str] = "/") -> list[Path]:
    """Where distributions put the debug vmlinux of kernel ``release`` (default: the running one) under
    ``root``: that release's paths only, in the order they are tried (whether they exist is not looked at)."""
    rel = release or os.uname().release
    base = Path(root)
    return [base / p.format(rel=rel) for p in _RELEASE_PATHS]


def candidate_paths(release: str | None = None, *, root: str | os.PathLike[str] = "/") -> list[Path]:
    """Where :func:`find_vmlinux` looks for the debug vmlinux of kernel ``release`` (default: the running
    one) under ``root``: :func:`release_paths`, then every other ``boot/vmlinux-*`` there (a file of
    another release is used only when its build id is the one wanted, or none is known)."""
    out = release_paths(release, root=root)
    pattern = os.path.join(glob.escape(os.fspath(root)), "boot", "vmlinux-*")
    out += [Path(p) for p in sorted(glob.glob(pattern)) if Path(p) not in out]
    return out


def search_vmlinux(
    build_id: str | None = None,
    *,
    source: str = "the running kernel's build id",
    release: str | None = None,
    candidates: list[Path] | None = None,
    options: DebuginfoOptions | None = None,
    warn: Callable[[str], None] | None = None,
) -> DebugLookup:
    """Every place a debug vmlinux of ``build_id`` (None: any with DWARF) is looked for, in order:
    ``.build-id`` trees, the distribution paths of ``release``, the debuginfod cache and servers. Stops at
    the first match; a file without a build id (so uncheckable) but with DWARF also counts, as a file of
    another build does not. Never raises for a miss."""
    opts = options or DebuginfoOptions()
    tried = candidate_paths(release) if candidates is None else candidates
    want = normalize_build_id(build_id) if build_id else None
    if want:
        look = locate_debuginfo(want, opts, source=source, network=False)
        if look.path is not None:
            return look
    else:
        look = DebugLookup(None, source, servers=debuginfod_servers(opts))
    for p in tried:
        a = check_file(p, want, "distribution path", True)
        look.attempts.append(a)
        if a.outcome == "match" or (a.outcome == "no build id" and a.has_dwarf):
            look.path, look.found_by = p, "distribution path"
            if a.outcome == "no build id":
                look.warnings.append(f"ksym: warning: {p} has no build id: cannot check it is the kernel "
                                     f"with build id {want}")
            return look
    if want:
        got = DebuginfodClient(opts, warn=warn).find(want, look.attempts, look.failures)
        if got is not None:
            look.path = got
            look.found_by = "debuginfod cache" if look.attempts[-1].kind == "debuginfod cache" else "debuginfod"
    return look


def find_vmlinux(
    explicit: str | os.PathLike[str] | None = None,
    *,
    candidates: list[Path] | None = None,
    notes_path: str = KERNEL_NOTES_PATH,
    build_id: str | None = None,
    build_id_source: str = "the dump's build id",
    options: DebuginfoOptions | None = None,
    release: str | None = None,
    warn: Callable[[str], None] | None = None,
) -> Located:
    """The vmlinux to use: ``explicit``, ``$KSYM_VMLINUX``, else the debug vmlinux of ``build_id`` (default:
    the running kernel's, read from ``notes_path``), searched as :func:`search_vmlinux` does among
    ``candidates`` (default :func:`candidate_paths`) and debuginfod.

    :raises FileNotFoundKsymError: nothing found (the message names the package to install);
        :raises MissingDebugInfoError: only stripped images found; :raises DebuginfodError: nothing found
        and a debuginfod server failed.
    """
    if explicit:
        return Located(Path(explicit), "given on the command line")
    env = os.environ.get("KSYM_VMLINUX")
    if env:
        return Located(Path(env), "from $KSYM_VMLINUX")
    if build_id:
        want: str | None = build_id
        source = build_id_source
    else:
        want, source = running_build_id(notes_path), "the running kernel's build id"
    look = search_vmlinux(want, source=source, release=release, candidates=candidates, options=options,
                          warn=warn)
    if look.path is not None:
        why = {"build-id dir": f"build id {look.build_id} in a .build-id directory",
               "distribution path": "debug vmlinux of the running kernel" if not build_id
               else f"debug vmlinux with build id {look.build_id}",
               "debuginfod cache": f"build id {look.build_id} from the debuginfod cache",
               "debuginfod": f"build id {look.build_id} downloaded from debuginfod"}
        return Located(look.path, why.get(look.found_by or "", "found"), list(look.warnings), look)
    rel = release or os.uname().release
    other = [a for a in look.attempts if a.outcome == "mismatch" and a.has_dwarf]
    if other and not build_id:
        a = other[0]
        return Located(Path(a.where), "debug vmlinux for the running kernel's release", [
            (f"warning: {a.where} has build id {a.build_id} but the running kernel's is {want}: "
             "results may be wrong")], look)
    if look.failures:
        raise DebuginfodError(f"no debug vmlinux with build id {want}: " + "; ".join(look.failures),
                              tuple(look.failures))
    stripped = [a for a in look.attempts if a.has_dwarf is False]
    if stripped and not build_id:
        raise MissingDebugInfoError(
            f"{stripped[0].where} has no DWARF debug info (a stripped vmlinux) and no debug vmlinux was found "
            f"for kernel {rel}: install the kernel's debug symbols ({package_hint(rel)}) or pass --vmlinux"
        )
    shown = ", ".join(_where(a) for a in look.attempts if a.kind != "debuginfod" or a.outcome != "skipped")
    if build_id:
        raise FileNotFoundKsymError(f"no debug vmlinux with build id {want} found (looked in {shown}): "
                                    + _how_to_give(options))
    raise FileNotFoundKsymError(
        f"no debug vmlinux found for kernel {rel} (looked in {_cut(shown)}): install the kernel's debug "
        f"symbols ({package_hint(rel)}) or pass --vmlinux"
    )


def _how_to_give(options: DebuginfoOptions | None) -> str:
    """How to give ksym the debug file it did not find."""
    if options is not None and options.offline:
        return ("pass it with --vmlinux PATH, or run without --offline with DEBUGINFOD_URLS (or --debuginfod-url) "
                "naming a debuginfod server that has it")
    return ("pass it with --vmlinux PATH, or set DEBUGINFOD_URLS (or --debuginfod-url) to a debuginfod server "
            "that has it")


def _where(a: Attempt) -> str:
    return a.where


def _cut(text: str, n: int = 4) -> str:
    parts = text.split(", ")
    return ", ".join(parts[:n]) + (", ..." if len(parts) > n else "")


def explain_debuginfo(
    *,
    build_id: str | None = None,
    vmlinux: str | os.PathLike[str] | None = None,
    release: str | None = None,
    options: DebuginfoOptions | None = None,
    notes_path: str = KERNEL_NOTES_PATH,
    os_release: dict[str, str] | None = None,
    warn: Callable[[str], None] | None = None,
) -> DebugLookup:
    """What ``ksym debuginfo`` shows: the debug file ksym would use for ``build_id``, for ``vmlinux`` (itself
    when it has DWARF, else the debug file of its build id) or, with neither, for the running kernel;
    every place searched, the build ids compared, and the package to install when nothing is found.

    :raises FileNotFoundKsymError, BadFileError: ``vmlinux`` cannot be read.
    """
    rel = release or os.uname().release
    running = running_build_id(notes_path)
    notes: list[str] = []
    if build_id:
        want: str | None = normalize_build_id(build_id)
        source = "from --build-id"
    elif vmlinux is not None:
        path = Path(vmlinux)
        want, dwarf = elf_facts(path)
        source = f"from {path}'s own note"
        notes.append(f"{path}: build id {want or 'none'}, " + ("has DWARF" if dwarf else "no DWARF (stripped)"))
        if running:
            w = mismatch_warning(running, "the running kernel's", path, want)
            notes.append(w.removeprefix("ksym: warning: ") if w else "matches the running kernel's build id")
        if dwarf:
            look = DebugLookup(want, source, path, "given", [Attempt("given", str(path), "match", want,
                                                                      "has DWARF", True)],
                               servers=debuginfod_servers(options or DebuginfoOptions()), notes=notes)
            return look
        if want is None:
            look = DebugLookup(None, source, notes=notes, servers=debuginfod_servers(options or DebuginfoOptions()))
            look.install = package_hint(rel, os_release)
            return look
    else:
        want, source = running, "from /sys/kernel/notes: the running kernel"
        if running is None:
            notes.append(f"{notes_path} cannot be read: the running kernel's build id is unknown")
    look = search_vmlinux(want, source=source, release=rel, options=options, warn=warn)
    look.notes[:0] = notes
    if look.path is not None and want is not None:
        have = file_build_id(look.path)
        w = mismatch_warning(want, f"the build id {source}", look.path, have)
        if w:
            look.warnings.append(w)
    if look.path is None:
        look.install = package_hint(rel, os_release)
    return look
