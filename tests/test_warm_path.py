"""What a warm ``ksym resolve`` of one frame imports: only what that lookup needs.

A warm run answers from the index (docs/design.md), so its cost is mostly the interpreter's start and the
modules it imports; issue 14 wants it well under llvm-symbolizer's time for one address. Each module
named below was once imported by that run for nothing it did (the DWARF and ELF readers, the network,
the other commands, ``dataclasses`` and ``pathlib`` with what they import): the test runs the command
in a child on the Debian 6.1 vmlinux with a private cache made warm by a first run, and lists what the
command itself imported (what the interpreter had loaded before it does not count).

A ``ksym resolve --index FILE`` of one frame (the portable index file) is held to the same list: it loads
its unit into the records of :mod:`ksym.units` and answers from them, without the DWARF parser
(``ksym.dwarf``, which it once imported for those records and which took a few milliseconds of the run;
before that the records were dataclasses and brought ``dataclasses`` with ``inspect``): issue 15 wants it
no slower than a warm run. ``ksym annotate --index FILE`` of a short call trace brings more (the report,
the module reader) but not the DWARF parser either.
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


#: Never imported by ``ksym resolve --index FILE FRAME`` (plain text, one frame): the same, the DWARF parser
#: included (the unit read from the file is loaded into the records of ksym.units), the ELF reader, the
#: file's writer; nor ISA-L's CRC-32 (``isal``), which checks the 8.4 MB symbol table: the frame's name is
#: read from a name piece of a few KB; nor the on-disk index (``ksym.index``): the file is complete, its
#: session (:class:`ksym.session.MemorySession`) stores nothing; nor the records of a unit read part way
#: (``ksym.unit_state``) or the builder's cutting of units (``ksym.unit_parts``): a part is whole.
NOT_ON_THE_INDEX_FILE_PATH = (*NOT_ON_THE_WARM_PATH, "ksym.image", "ksym.portable_write", "isal", "ksym.index",
                              "ksym.unit_state", "ksym.unit_parts")


def _resolve(vmlinux: Path, cache: Path, frame: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    return _run(["resolve", "--vmlinux", str(vmlinux), frame], cache)


def _run(argv: list[str], cache: Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    # without the site module (-S): what .pth files import at start (an editable install's finder loads
    # pathlib) is not there to hide what the command imports; the ksym under test (installed or not) and
    # the dependencies come from the path given
    src = str(Path(ksym.__file__).resolve().parent.parent)
    path = [src, *sys.path[1:]]
    env = {**os.environ, "KSYM_CACHE_DIR": str(cache), "KSYM_STATS": "1", "PYTHONPATH": os.pathsep.join(path)}
    env.pop("KSYM_DEBUG", None)
    got = subprocess.run([sys.executable, "-S", "-c", _CHILD, *argv], capture_output=True, text=True, check=False,
                         env=env, timeout=600)
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
    assert _among(modules, NOT_ON_THE_WARM_PATH) == [], "a warm one-frame resolve imported those"


def test_a_resolve_of_one_frame_from_an_index_file_imports_only_the_lookup(portable_index: Path,
                                                                           tmp_path: Path) -> None:
    got, modules = _run(["resolve", "--index", str(portable_index), "__ip_local_out+0xde"], tmp_path / "cache")
    assert got.returncode == 0, got.stderr
    assert got.stdout == ("__ip_local_out+0xde/0x160:\nnf_hook at include/linux/netfilter.h:257\n"
                          "(inlined by) __ip_local_out at net/ipv4/ip_output.c:115\n")
    # no debug file was read, and the DWARF parser was not imported
    assert _among(modules, NOT_ON_THE_INDEX_FILE_PATH) == [], "a one-frame resolve --index imported those"
    # the answer came from the file's unit, loaded into the unit records
    assert {"ksym.portable", "ksym.units", "ksym.symbolizer"} <= modules


def test_an_annotate_from_an_index_file_does_not_import_the_dwarf_parser(portable_index: Path,
                                                                          tmp_path: Path) -> None:
    # annotate brings its own modules (the report, the module debug files' reader, pathlib and more), but
    # a call trace answered from the file's whole units reads no DWARF, so the parser stays out
    trace = tmp_path / "trace.txt"
    trace.write_text("[  123.456789] Call Trace:\n[  123.456791]  __ip_local_out+0xde/0x160\n"
                     "[  123.456792]  program_hpx_type0+0x6e/0x120\n")
    got, modules = _run(["annotate", "--index", str(portable_index), str(trace)], tmp_path / "cache")
    assert got.returncode == 0, got.stderr
    assert "(inlined by) __ip_local_out at net/ipv4/ip_output.c:115" in got.stdout, got.stdout
    assert "program_hpx_type0 at drivers/pci/pci-acpi.c:154" in got.stdout, got.stdout
    assert {"ksym.annotate", "ksym.portable", "ksym.units"} <= modules
    assert "ksym.dwarf" not in modules


def _among(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """The modules that are one of ``names`` or in one of those packages."""
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))
