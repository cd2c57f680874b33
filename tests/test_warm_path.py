"""What a warm ``ksym resolve`` of one frame imports: only what that lookup needs.

A warm run answers from the index (docs/design.md), so its cost is mostly the interpreter's start and the
modules it imports; issue 14 wants it well under llvm-symbolizer's time for one address. Each module
named below was once imported by that run for nothing it did (the DWARF and ELF readers, the network,
the other commands, ``dataclasses`` and ``pathlib`` with what they import): the test runs the command
in a child on the Debian 6.1 vmlinux with a private cache made warm by a first run, and lists what the
command itself imported (what the interpreter had loaded before it does not count).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import ksym

pytestmark = pytest.mark.vmlinux

#: Never imported by a warm ``ksym resolve --vmlinux V FRAME`` (plain text, one frame).
NOT_ON_THE_WARM_PATH = (
    # ksym's other parts: reading ELF and DWARF, finding debug files, sources and links, the other commands
    "ksym.annotate", "ksym.buildid", "ksym.cli.annotate_command", "ksym.cli.debuginfo_command",
    "ksym.debuginfo", "ksym.disasm", "ksym.dwarf", "ksym.kallsyms", "ksym.links", "ksym.locate",
    "ksym.modules", "ksym.parse", "ksym.report", "ksym.source", "ksym.transfer", "ksym.version",
    # the dependencies
    "elftools", "capstone", "requests", "urllib3", "cachetools", "zstandard",
    # the standard library's heavier modules (dataclasses brings inspect, ast, dis and tokenize; pathlib
    # brings urllib.parse, ipaddress and fnmatch), the first-use fingerprint's, and the network's
    "dataclasses", "inspect", "ast", "dis", "tokenize", "pathlib", "urllib", "ipaddress", "fnmatch",
    "hashlib", "threading", "json", "shutil", "tempfile", "subprocess", "socket", "ssl", "http",
)

# the child: runs the command in-process and reports what it imported on a last line of stderr
_CHILD = """\
import sys
before = set(sys.modules)
from ksym.cli import main
code = main(sys.argv[1:])
sys.stdout.flush()
sys.stderr.write("\\nimported: " + " ".join(sorted(set(sys.modules) - before)) + "\\n")
sys.exit(code)
"""


def _resolve(vmlinux: Path, cache: Path, frame: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    # without the site module (-S): what .pth files import at start (an editable install's finder loads
    # pathlib) is not there to hide what the command imports; the ksym under test (installed or not) and
    # the dependencies come from the path given
    src = str(Path(ksym.__file__).resolve().parent.parent)
    path = [src, *sys.path[1:]]
    env = {**os.environ, "KSYM_CACHE_DIR": str(cache), "KSYM_STATS": "1", "PYTHONPATH": os.pathsep.join(path)}
    env.pop("KSYM_DEBUG", None)
    got = subprocess.run([sys.executable, "-S", "-c", _CHILD, "resolve", "--vmlinux", str(vmlinux), frame],
                         capture_output=True, text=True, check=False, env=env, timeout=600)
    head, _, last = got.stderr.rstrip("\n").rpartition("\nimported: ")
    assert head or last, got.stderr
    return got, set(last.split())


def test_a_warm_resolve_of_one_frame_imports_only_the_lookup(vmlinux: Path, tmp_path: Path) -> None:
    frame = "__ip_local_out+0xde"
    cold, cold_modules = _resolve(vmlinux, tmp_path / "cache", frame)
    assert cold.returncode == 0, cold.stderr
    # the first run read the file (its DWARF's aranges), and this test sees what that imported
    assert "ksym.dwarf" in cold_modules
    warm, modules = _resolve(vmlinux, tmp_path / "cache", frame)
    assert warm.returncode == 0, warm.stderr
    # the same answer, from the index: nothing read from the DWARF, no fingerprint
    assert warm.stdout == cold.stdout and "nf_hook at include/linux/netfilter.h:257" in warm.stdout
    assert "units_read=0 units_loaded=0 " in warm.stderr and "fingerprinted=0" in warm.stderr, warm.stderr
    assert "ksym.symbolizer" in modules and "ksym.index" in modules
    imported = sorted(m for m in modules if m.split(".")[0] in NOT_ON_THE_WARM_PATH
                      or any(m == n or m.startswith(n + ".") for n in NOT_ON_THE_WARM_PATH))
    assert imported == [], f"a warm one-frame resolve imported {imported}"
