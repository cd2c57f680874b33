"""file:line with the inline chain for stack frames, through ksym and a debug vmlinux or a portable index
file of the running kernel (``ksym index build``; found by build id when no debug vmlinux is, see ksym's
docs/index-files.md).

The glue to ksym's Symbolizer lives in :func:`ksym_annotator` alone; ksym is imported when it is
called. Without ksym's dependencies or a debug file frames stay ``func+0xoff``.
:func:`default_vmlinux` is kept for API users; the CLI lets ksym's own locator search.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ksym.kallsyms import KallsymsSymbol
    from ksym.searchopts import IndexFileOptions

__all__ = ["default_vmlinux", "format_chain", "ksym_annotator"]


def default_vmlinux(release: str | None = None, *, root: str = "/") -> str | None:
    """The vmlinux of kernel ``release`` (default: the running one) when one is installed where
    distributions put it (:func:`ksym.locate.release_paths` under ``root``: that release's paths only,
    never another release's ``/boot/vmlinux-*``), the first that is a file; else None."""
    from ksym.locate import release_paths

    for path in release_paths(release, root=root):
        if path.is_file():
            return str(path)
    return None


def format_chain(chain: Any) -> str:
    """``net/ipv4/ip_output.c:115 (inlined nf_hook include/linux/netfilter.h:257)  <elixir link>``.

    ``chain`` is innermost first (ksym's order): the last entry is the real function, earlier entries
    were inlined into it; they are shown outermost to innermost after its location.
    """
    items = list(chain)
    if not items:
        return ""
    outer = items[-1]
    text = f"{outer.file}:{outer.line or '?'}"
    for loc in reversed(items[:-1]):
        text += f" (inlined {loc.function} {loc.file}:{loc.line or '?'})"
    url = getattr(items[0], "url", None)
    if url:
        # the elixir.bootlin.com link of the innermost line: the code that ran
        text += f"  {url}"
    return text


def ksym_annotator(
    vmlinux: str | None = None, running_build_id: str | None = None, *, closing: contextlib.ExitStack,
    index_file: str | None = None, index_search: IndexFileOptions | None = None, build_id: str | None = None,
) -> tuple[Callable[[KallsymsSymbol], tuple[str, ...]] | None, str]:
    """A ``KallsymsSymbol -> ("file:line (inlined ...)", ...)`` function backed by ksym, and a status text.

    ``vmlinux`` None lets ksym find the running kernel's debug vmlinux (``$KSYM_VMLINUX``, then where
    distributions install it). Returns ``(None, why)`` when ksym cannot be imported or no usable debug
    vmlinux is available; a lookup error of one frame (:class:`ksym.KsymError`) leaves only that frame unannotated.
    With ``running_build_id`` (:func:`ksym.buildid.running_build_id`), a vmlinux whose GNU build id
    differs is refused: some functions of another build have the same size, so ``func+off/size`` would
    resolve to wrong lines.
    ``closing`` closes ksym's Symbolizer when it closes (that writes what it learnt to ksym's index),
    also one that is not used (a file without DWARF, or of another build): the caller's ``with`` block
    owns the file ksym opened, whatever the outcome.
    ``index_file``: a portable index file (``ksym index build``) instead of a vmlinux, checked against
    ``running_build_id`` the same way. ``index_search``: when no debug vmlinux is found, the index file of
    ``running_build_id`` is looked for there (ksym's cache, ``$KSYM_INDEX_PATH``, ``$KSYM_INDEX_URLS``).
    ``build_id``: look the debug vmlinux up by this build id instead of the running kernel's (an override).
    """
    try:
        # imported here: the DWARF engine is needed only when frames get file:line
        from ksym.buildid import same_build_id
        from ksym.errors import KsymError
        from ksym.links import links_for
        from ksym.symbolizer import Symbolizer
        from ksym.symbols import SymbolView
    except ImportError as exc:
        return None, f"ksym is not importable ({exc}): frames shown as func+0xoff"
    try:
        if index_file:
            sym = Symbolizer.from_index(index_file)
        elif vmlinux:
            sym = Symbolizer(vmlinux)
        else:
            try:
                sym = Symbolizer(build_id=build_id) if build_id else Symbolizer()
            except KsymError as miss:
                if index_search is None or not running_build_id:
                    raise
                sym = _index_symbolizer(miss, running_build_id, index_search)
    except KsymError as exc:
        return None, f"no file:line ({exc}); frames shown as func+0xoff"
    except ImportError as exc:  # ksym imports its ELF reader (pyelftools) only when it opens a file
        return None, f"ksym is not importable ({exc}): frames shown as func+0xoff"
    closing.callback(sym.close)
    path = sym.path
    if not sym.has_dwarf:
        return None, f"no file:line ({path} has no DWARF debug info); frames shown as func+0xoff"
    have = sym.build_id
    if running_build_id and have and not same_build_id(running_build_id, have):
        return None, (
            f"{path} has build id {have} but the running kernel's is {running_build_id}: not used for "
            "file:line (it would give wrong lines); frames shown as func+0xoff"
        )
    warnings = "; ".join(str(w) for w in sym.warnings)
    elixir = links_for(sym.banner)  # the elixir.bootlin.com link after each location

    def annotate(s: KallsymsSymbol) -> tuple[str, ...]:
        if s.module:
            return ()  # module frames need the module's debug file
        try:
            # BPF stacks name what kallsyms prints: untyped assembly labels (entry_SYSCALL_64_after_hwframe)
            # too, sized as kallsyms sizes them
            results = sym.resolve(f"{s.name}+{s.offset:#x}/{s.size:#x}", view=SymbolView.KALLSYMS)
        except KsymError:
            return ()
        out = []
        for res in results:
            text = format_chain(elixir.chain(res.chain))
            if text:
                out.append(text)
        return tuple(out)

    status = f"file:line from {path} through ksym"
    return annotate, status + (f" ({warnings})" if warnings else "")


def _index_symbolizer(miss: Exception, running_build_id: str, search: IndexFileOptions) -> Any:
    """The Symbolizer of the running kernel's portable index file, looked for after the debug vmlinux
    search missed with ``miss`` (:func:`ksym.index_files.index_after_miss`: raises one error naming both)."""
    from ksym.errors import DebuginfodError, FileNotFoundKsymError, MissingDebugInfoError
    from ksym.index_files import index_after_miss, portable_check
    from ksym.symbolizer import Symbolizer

    if not isinstance(miss, (FileNotFoundKsymError, DebuginfodError, MissingDebugInfoError)):
        raise miss  # a file found and unusable: not a miss (only stripped images found is one)
    check = portable_check()
    path = index_after_miss(miss, running_build_id, search, verify=check.verify, magic=check.magic,
                            source="the running kernel's")
    return Symbolizer.from_index(path)
