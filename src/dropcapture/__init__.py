"""dropcapture: capture packet drops with bcc and turn them into file:line evidence.

The Python API is :class:`Capture` (an iterator of typed :class:`DropEvent` records) with
:class:`Filters`; the command line is :mod:`dropcapture.cli`. bcc is imported only when a capture
opens. See docs/dropcapture.md.
"""

from __future__ import annotations

from .capture import Capture, CaptureStats, KernelInfo, kernel_info
from .errors import (
    BccMissingError,
    BtfError,
    CaptureError,
    HeadersError,
    PrivilegeError,
    TracefsError,
    UnsupportedKernelError,
)
from .events import DropEvent, StackFrame
from .filters import Filters
from .reasons import ReasonTable

__all__ = [
    "BccMissingError",
    "BtfError",
    "Capture",
    "CaptureError",
    "CaptureStats",
    "DropEvent",
    "Filters",
    "HeadersError",
    "KernelInfo",
    "PrivilegeError",
    "ReasonTable",
    "StackFrame",
    "TracefsError",
    "UnsupportedKernelError",
    "kernel_info",
]
