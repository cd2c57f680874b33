"""Helpers shared by the dropcapture tests (a uniquely named module, so it never collides with
another directory's conftest)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))


def _bcc_importable() -> bool:
    try:
        import bcc  # noqa: F401
    except Exception:  # noqa: BLE001 - bcc raises OSError/ImportError/others when libbcc is broken
        return False
    return True


def kernel_missing() -> str | None:
    """Why real-BPF tests cannot run here, or None when they can."""
    if sys.platform != "linux":
        return "not Linux"
    if os.geteuid() != 0:
        return "needs root (CI runs these as root)"
    if not os.path.isdir("/sys/kernel/tracing/events") and not os.path.isdir("/sys/kernel/debug/tracing/events"):
        return "tracefs not mounted (tools/dropcapture-setup.sh mounts it)"
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return "no /sys/kernel/btf/vmlinux (kernel without CONFIG_DEBUG_INFO_BTF)"
    if not _bcc_importable():
        return f"bcc not importable from {sys.executable} (apt-get install python3-bpfcc; tools/dropcapture-setup.sh)"
    rel = os.uname().release
    if not os.path.exists(f"/lib/modules/{rel}/build/Makefile") and not os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return f"no kernel headers at /lib/modules/{rel}/build (tools/dropcapture-setup.sh links them)"
    return None


def tracefs_missing() -> str | None:
    if not os.path.exists("/sys/kernel/tracing/events/skb/kfree_skb/format") and not os.path.exists(
        "/sys/kernel/debug/tracing/events/skb/kfree_skb/format"
    ):
        return "no readable skb:kfree_skb format file (tracefs not mounted or not root)"
    try:
        Path("/sys/kernel/tracing/events/skb/kfree_skb/format").read_text()
    except OSError as exc:
        return f"cannot read the kfree_skb format file: {exc}"
    return None


def btf_missing() -> str | None:
    if not os.access("/sys/kernel/btf/vmlinux", os.R_OK):
        return "no readable /sys/kernel/btf/vmlinux"
    return None


def dropcapture_cmd(*args: str) -> list[str]:
    """The CLI as a subprocess of this interpreter, running the checkout's sources."""
    return [sys.executable, "-m", "dropcapture", *args]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env
