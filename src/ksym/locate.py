"""Locate the debug vmlinux to use when none is named: ``$KSYM_VMLINUX``, then where distributions
install the running kernel's, checked against the running kernel's build id (/sys/kernel/notes)."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import FileNotFoundKsymError
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


def find_vmlinux(explicit: str | os.PathLike[str] | None = None) -> Located:
    """The vmlinux to use: ``explicit``, ``$KSYM_VMLINUX``, or the running kernel's debug vmlinux."""
    if explicit:
        return Located(Path(explicit), "given on the command line")
    env = os.environ.get("KSYM_VMLINUX")
    if env:
        return Located(Path(env), "from $KSYM_VMLINUX")
    tried = candidate_paths()
    for p in tried:
        if p.is_file():
            loc = Located(p, "debug vmlinux of the running kernel")
            want = running_build_id()
            if want:
                from .image import KernelImage

                try:
                    img = KernelImage(p)
                    have = img.build_id
                    img.close()
                except Exception:  # noqa: BLE001 - reported when the file is really opened
                    have = None
                if have and have != want:
                    loc.warnings.append(
                        f"warning: {p} has build id {have} but the running kernel's is {want}: "
                        "results may be wrong"
                    )
            return loc
    shown = ", ".join(str(p) for p in tried[:4])
    raise FileNotFoundKsymError(
        f"no debug vmlinux found for kernel {os.uname().release} (looked in {shown}, ...): "
        + DEBUG_PACKAGE_HINT
    )
