"""Locate the debug vmlinux to use when none is named: ``$KSYM_VMLINUX``, then where distributions
install the running kernel's, checked against the running kernel's build id (/sys/kernel/notes)."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import FileNotFoundKsymError, KsymError, MissingDebugInfoError
from .image import DEBUG_PACKAGE_HINT, read_build_id_from_notes

__all__ = ["Located", "candidate_paths", "find_vmlinux", "running_build_id"]


def candidate_paths(release: str | None = None) -> list[Path]:
    """Where distributions put the debug vmlinux of kernel ``release`` (default: the running one)."""
    rel = release or os.uname().release
    pats = [
        f"/usr/lib/debug/boot/vmlinux-{rel}",
        f"/usr/lib/debug/lib/modules/{rel}/vmlinux",
        f"/usr/lib/debug/vmlinux-{rel}",
        f"/boot/vmlinux-{rel}",
        f"/lib/modules/{rel}/build/vmlinux",
        f"/lib/modules/{rel}/vmlinux",
        f"/usr/lib/modules/{rel}/vmlinux",
        f"/usr/lib/debug/usr/lib/modules/{rel}/vmlinux",
    ]
    out = [Path(p) for p in pats]
    out += [Path(p) for p in sorted(glob.glob("/boot/vmlinux-*")) if Path(p) not in out]
    return out


def running_build_id(notes_path: str = "/sys/kernel/notes") -> str | None:
    try:
        data = Path(notes_path).read_bytes()
    except OSError:
        return None
    return read_build_id_from_notes(data)


@dataclass
class Located:
    path: Path
    reason: str
    warnings: list[str] = field(default_factory=list)


def find_vmlinux(
    explicit: str | os.PathLike[str] | None = None,
    *,
    candidates: list[Path] | None = None,
    notes_path: str = "/sys/kernel/notes",
) -> Located:
    """The vmlinux to use: ``explicit``, ``$KSYM_VMLINUX``, or the running kernel's debug vmlinux
    (the first of ``candidates``, default :func:`candidate_paths`, that exists), checked against the
    build id in ``notes_path``."""
    if explicit:
        return Located(Path(explicit), "given on the command line")
    env = os.environ.get("KSYM_VMLINUX")
    if env:
        return Located(Path(env), "from $KSYM_VMLINUX")
    tried = candidate_paths() if candidates is None else candidates
    want = running_build_id(notes_path)
    with_dwarf: list[tuple[Path, str | None]] = []
    stripped: list[Path] = []
    for p in tried:
        if not p.is_file():
            continue
        from .image import KernelImage

        try:
            img = KernelImage(p)
        except KsymError:
            continue
        try:
            have, dwarf = img.build_id, img.has_dwarf
        finally:
            img.close()
        if not dwarf:
            # e.g. the vmlinux of a linux-headers package (kept for BTF): no DWARF, keep looking
            stripped.append(p)
            continue
        if want is None or have is None or have == want:
            return Located(p, "debug vmlinux of the running kernel")
        with_dwarf.append((p, have))
    if with_dwarf:
        p, have = with_dwarf[0]
        return Located(p, "debug vmlinux for the running kernel's release", [
            f"warning: {p} has build id {have} but the running kernel's is {want}: results may be wrong"])
    if stripped:
        raise MissingDebugInfoError(
            f"{stripped[0]} has no DWARF debug info (a stripped vmlinux) and no debug vmlinux was found for "
            f"kernel {os.uname().release}: " + DEBUG_PACKAGE_HINT
        )
    shown = ", ".join(str(p) for p in tried[:4])
    raise FileNotFoundKsymError(
        f"no debug vmlinux found for kernel {os.uname().release} (looked in {shown}, ...): "
        + DEBUG_PACKAGE_HINT
    )
