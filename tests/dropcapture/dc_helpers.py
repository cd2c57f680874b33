"""Helpers shared by the dropcapture tests (a uniquely named module, so it never collides with
another directory's conftest)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dropcapture.events import DropEvent, StackFrame
    from ksym.kallsyms import KallsymsSymbol

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


# -- BPF programs a child process holds, and whether the kernel still has them -----------------

_NR_BPF = {"x86_64": 321, "aarch64": 280}
_BPF_PROG_GET_FD_BY_ID = 13


def bpf_prog_ids(pid: int) -> set[int]:
    """Ids of the BPF programs process ``pid`` holds open (its ``bpf-prog`` fds, from fdinfo)."""
    ids = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            if os.readlink(fd) != "anon_inode:bpf-prog":
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
        except OSError:  # closed meanwhile
            continue
        for line in info.splitlines():
            if line.startswith("prog_id:"):
                ids.add(int(line.split()[1]))
    return ids


def bpf_prog_exists(prog_id: int) -> bool | None:
    """Whether the kernel still has program ``prog_id`` (the bpf(2) syscall), None if unknown here."""
    import ctypes

    nr = _NR_BPF.get(os.uname().machine)
    if nr is None:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 4)(prog_id, 0, 0, 0)
    fd = libc.syscall(nr, _BPF_PROG_GET_FD_BY_ID, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd >= 0:
        os.close(fd)
        return True
    err = ctypes.get_errno()
    if err == 2:  # ENOENT
        return False
    raise OSError(err, f"bpf(BPF_PROG_GET_FD_BY_ID, {prog_id}): {os.strerror(err)}")


def udp_noports(netns: str) -> int:
    """``Udp: NoPorts`` of network namespace ``netns`` (the kernel's count of datagrams to closed ports)."""
    import subprocess

    text = subprocess.run(["ip", "netns", "exec", netns, "cat", "/proc/net/snmp"], check=True,
                          capture_output=True, text=True, timeout=30).stdout
    head, values = [ln.split() for ln in text.splitlines() if ln.startswith("Udp:")][:2]
    return int(values[head.index("NoPorts")])


def ctypes_decode(buf: bytes, *, reason_name: str, clock_offset: float,
                  location_symbol: KallsymsSymbol | None, stack: tuple[StackFrame, ...]) -> DropEvent:
    """A record decoded field by field through the ctypes mirror (:class:`RawEvent`), keyword by
    keyword: the reference that ``events.decode_events`` (one ``struct`` unpack per record) must equal."""
    from dropcapture.events import HEADER_SIZE, DropEvent, RawEvent, decode_addr

    raw = RawEvent.from_buffer_copy(buf[:HEADER_SIZE])
    family = raw.family if raw.family in (4, 6) else 0
    has_ip = family != 0
    ports = has_ip and bool(raw.has_l4) and raw.l4proto in (6, 17, 132, 136)
    icmp = has_ip and bool(raw.has_l4) and raw.l4proto in (1, 58)
    return DropEvent(
        timestamp=raw.ts_ns / 1e9 + clock_offset,
        ktime_ns=raw.ts_ns,
        pid=raw.pid,
        tid=raw.tid,
        comm=raw.comm.decode("utf-8", "replace"),  # a c_char array reads up to its first NUL
        cpu=raw.cpu,
        family=family,
        saddr=decode_addr(family, bytes(raw.saddr)),
        daddr=decode_addr(family, bytes(raw.daddr)),
        l4proto=raw.l4proto if has_ip else None,
        sport=raw.sport if ports else None,
        dport=raw.dport if ports else None,
        eth_protocol=raw.eth_protocol,
        reason=raw.reason,
        reason_name=reason_name,
        location=raw.location,
        location_symbol=location_symbol,
        skbaddr=raw.skbaddr,
        length=raw.len,
        stack_id=raw.stack_id,
        stack=stack,
        tcp_flags=raw.tcp_flags if (ports and raw.l4proto == 6) else None,
        icmp_type=raw.icmp_type if icmp else None,
        icmp_code=raw.icmp_code if icmp else None,
        netns=raw.netns or None,
        ifindex=raw.ifindex or None,
        ifname=raw.ifname.decode("utf-8", "replace") or None,
        linktype=raw.linktype if raw.caplen or raw.wire_len else 0,
        wire_len=raw.wire_len,
        packet=buf[HEADER_SIZE : HEADER_SIZE + raw.caplen],
    )
