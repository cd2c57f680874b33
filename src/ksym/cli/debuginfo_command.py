"""``ksym debuginfo``: which debug file ksym would use, every place it looked, and why."""

from __future__ import annotations

import json
from collections.abc import Callable

from ..errors import EXIT_NETWORK, EXIT_NO_FILE, EXIT_OK, EXIT_USAGE
from .options import DebuginfoCommandOptions

__all__ = ["run_debuginfo"]


def run_debuginfo(opts: DebuginfoCommandOptions, out: Callable[[str], None], err: Callable[[str], None]) -> int:
    """0 when a debug file is found, 3 when not, 5 when debuginfod failed too."""
    from ..buildid import normalize_build_id
    from ..locate import explain_debuginfo

    bid = None
    if opts.build_id:
        try:
            bid = normalize_build_id(opts.build_id)
        except ValueError as exc:
            err(f"ksym: error: {exc}")
            return EXIT_USAGE
    look = explain_debuginfo(build_id=bid, vmlinux=opts.vmlinux, release=opts.release, options=opts.debuginfo,
                             warn=err)
    for w in look.warnings:
        err(w)
    status = EXIT_OK if look.path else (EXIT_NETWORK if look.failures else EXIT_NO_FILE)
    if opts.json:
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
        + (" [offline: not asked]" if opts.debuginfo.offline and look.servers else ""))
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
