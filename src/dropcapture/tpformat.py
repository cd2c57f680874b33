"""Read a tracepoint's record layout from its tracefs ``format`` file.

The ``skb:kfree_skb`` fields differ between kernel versions (``reason`` arrived in 5.17, ``rx_sk`` in
6.11), so dropcapture takes the offsets from the running kernel instead of a struct in a header.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import TracefsError

__all__ = ["TRACEFS_DIRS", "Field", "TracepointFormat", "find_tracefs", "read_format"]

#: Where tracefs is looked for, in order.
TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")

_FIELD_RE = re.compile(
    r"^\s*field:(?P<decl>[^;]+);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);\s*signed:(?P<signed>\d+);"
)


@dataclass(frozen=True)
class Field:
    """One field of a tracepoint record."""

    name: str
    #: The C type as the format file spells it (``void *``, ``enum skb_drop_reason``).
    ctype: str
    offset: int
    size: int
    signed: bool


@dataclass(frozen=True)
class TracepointFormat:
    """The parsed ``format`` file of one tracepoint."""

    name: str
    id: int
    fields: dict[str, Field]
    print_fmt: str

    def field(self, name: str) -> Field | None:
        """The field called ``name``, or None when this kernel's tracepoint lacks it."""
        return self.fields.get(name)

    @classmethod
    def parse(cls, text: str) -> TracepointFormat:
        """Parse the text of a tracefs ``format`` file.

        :raises TracefsError: the text does not look like a format file.
        """
        name = ""
        tp_id = -1
        fields: dict[str, Field] = {}
        print_fmt = ""
        for line in text.splitlines():
            if line.startswith("name:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("ID:"):
                tp_id = int(line.split(":", 1)[1])
            elif line.startswith("print fmt:"):
                print_fmt = line.split(":", 1)[1].strip()
            else:
                m = _FIELD_RE.match(line)
                if m:
                    decl = m.group("decl").strip()
                    # "unsigned char foo[16]" / "void * skbaddr" / "__data_loc char[] name"
                    dm = re.match(r"^(?P<type>.*?)\s*\b(?P<name>\w+)(\[\d*\])?$", decl)
                    if not dm:
                        continue
                    fname = dm.group("name")
                    fields[fname] = Field(
                        fname,
                        dm.group("type").strip(),
                        int(m.group("off")),
                        int(m.group("size")),
                        m.group("signed") == "1",
                    )
        if not fields or tp_id < 0:
            raise TracefsError("not a tracepoint format file (no ID or no fields)")
        return cls(name, tp_id, fields, print_fmt)


def find_tracefs() -> Path:
    """The mounted tracefs directory.

    :raises TracefsError: tracefs is not mounted (with the mount command as the fix).
    """
    for d in TRACEFS_DIRS:
        if os.path.isdir(os.path.join(d, "events")):
            return Path(d)
    raise TracefsError(
        "tracefs is not mounted: run 'mount -t tracefs nodev /sys/kernel/tracing' as root"
    )


def read_format(category: str = "skb", event: str = "kfree_skb", tracefs: Path | None = None) -> TracepointFormat:
    """Parse ``events/<category>/<event>/format`` of the running kernel.

    :raises TracefsError: tracefs or the tracepoint is missing, or the file cannot be read.
    """
    base = tracefs if tracefs is not None else find_tracefs()
    path = base / "events" / category / event / "format"
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise TracefsError(
            f"the kernel has no {category}:{event} tracepoint ({path} missing): "
            "it needs CONFIG_TRACEPOINTS and a kernel >= 4.x"
        ) from exc
    except PermissionError as exc:
        raise TracefsError(f"cannot read {path}: permission denied (run as root)") from exc
    except OSError as exc:
        raise TracefsError(f"cannot read {path}: {exc.strerror}") from exc
    return TracepointFormat.parse(text)
