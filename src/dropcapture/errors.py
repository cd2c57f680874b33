"""Errors dropcapture raises on purpose, each with the exit code the command line maps it to.

The CLI prints each as one line (``dropcapture: error: ...``) with the fix, never a traceback.
Exit codes (also in docs/dropcapture.md):

====  =====================================================================================
0     success (including a stop by Ctrl-C/SIGTERM, --count or --duration)
1     capture failed at run time (attaching, reading buffers)
2     bad command line
3     bcc (python3-bpfcc) is not installed or not importable
4     not enough privileges (needs root, or CAP_BPF + CAP_PERFMON + CAP_SYS_ADMIN)
5     the kernel lacks something needed: tracefs, the skb:kfree_skb tracepoint, BPF or BTF
6     bcc could not compile the BPF program: kernel headers missing or unusable
70    a bug in dropcapture (DROPCAPTURE_DEBUG=1 shows the traceback)
130   interrupted (Ctrl-C) before the capture started
====  =====================================================================================
"""

from __future__ import annotations

__all__ = [
    "EXIT_HEADERS",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_NO_BCC",
    "EXIT_OK",
    "EXIT_PRIVILEGE",
    "EXIT_RUNTIME",
    "EXIT_UNSUPPORTED",
    "EXIT_USAGE",
    "BccMissingError",
    "BtfError",
    "CaptureError",
    "HeadersError",
    "PrivilegeError",
    "TracefsError",
    "UnsupportedKernelError",
]

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_NO_BCC = 3
EXIT_PRIVILEGE = 4
EXIT_UNSUPPORTED = 5
EXIT_HEADERS = 6
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


class CaptureError(Exception):
    """Base of every dropcapture error; ``str()`` is one line naming the problem and its fix."""

    exit_code: int = EXIT_RUNTIME


class BccMissingError(CaptureError, ImportError):
    """The ``bcc`` Python module cannot be imported."""

    exit_code = EXIT_NO_BCC


class PrivilegeError(CaptureError, PermissionError):
    """The process may not load BPF programs or attach tracepoints."""

    exit_code = EXIT_PRIVILEGE


class UnsupportedKernelError(CaptureError):
    """The running kernel lacks tracefs, the tracepoint, BPF or BTF."""

    exit_code = EXIT_UNSUPPORTED


class BtfError(UnsupportedKernelError):
    """BTF is missing, unreadable, malformed, or lacks a type dropcapture needs."""


class TracefsError(UnsupportedKernelError):
    """tracefs is not mounted or the skb:kfree_skb tracepoint format cannot be read/understood."""


class HeadersError(CaptureError):
    """bcc cannot compile the BPF program, usually because kernel headers are missing."""

    exit_code = EXIT_HEADERS
