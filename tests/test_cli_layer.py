"""The CLI layer (:mod:`ksym.cli`): the only code that parses a command line, each option defined once,
and the typed records the command bodies read."""

from __future__ import annotations

import ast
import json
from collections import Counter
from pathlib import Path

import pytest
from anchors import REPO_ROOT, fixture

from ksym.cli import build_parser
from ksym.cli.annotate_command import run_annotate
from ksym.cli.common import BuildIdFrom, ExpectedBuildId, expected_build_id, said_by_locate
from ksym.cli.options import (
    AnnotateOptions,
    DebuginfoCommandOptions,
    ImageOptions,
    ResolveOptions,
    SourceOptions,
)
from ksym.debuginfo import DebuginfoOptions
from ksym.locate import find_vmlinux
from ksym.searchopts import INDEX_ENVIRONMENT, IndexFileOptions

SRC = REPO_ROOT / "src"
FIXTURE = fixture("kshapes-dwarf5.elf")
DUMP = REPO_ROOT / "tests" / "data" / "annotate" / "fixture-dump.txt"
BID = "5f3c0123456789abcdef0123456789abcdef0123"


def _modules(package: str) -> list[Path]:
    return sorted((SRC / package).rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_every_option_is_defined_once_in_the_cli_layer() -> None:
    """Each ``--option`` string is passed to ``add_argument`` exactly once in all of src/ksym, and only
    in ksym/cli/."""
    seen: Counter[str] = Counter()
    where: dict[str, Path] = {}
    for path in _modules("ksym"):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "add_argument":
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("-"):
                        seen[arg.value] += 1
                        where[arg.value] = path
    assert {"--vmlinux", "--kernel-tag", "--source-dir", "--offline", "--json", "--format"} <= set(seen)
    assert [o for o, n in seen.items() if n > 1] == []
    assert {str(p.relative_to(SRC / "ksym").parent) for p in where.values()} == {"cli"}


def test_no_module_outside_the_cli_layer_imports_argparse() -> None:
    users = []
    for path in _modules("ksym"):
        for node in ast.walk(_tree(path)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if "argparse" in names:
                users.append(path.relative_to(SRC).as_posix())
    assert users and all(u.startswith("ksym/cli/") for u in users), users


def test_resolve_and_faddr2line_records(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in INDEX_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KSYM_INDEX_PATH", "e1:e2")
    p = build_parser(annotate_arguments=False)
    r = ResolveOptions.from_args(p.parse_args(
        ["resolve", "-e", "vm", "--build-id", BID, "--json", "--list", "--kernel-tag", "v6.1.1", "--offline",
         "--debug-dir", "a", "--debug-dir", "b", "--debuginfod-url", "http://x", "--path-map", "/b=/s",
         "--no-index", "--cache-dir", "c", "--index-dir", "d", "--index-url", "http://i", "f+1", "0x10"]))
    assert r == ResolveOptions(
        frames=("f+1", "0x10"),
        image=ImageOptions(vmlinux="vm", build_id=BID, running=False,
                           debuginfo=DebuginfoOptions(debug_dirs=("a", "b"), servers=("http://x",), offline=True,
                                                      cache_dir="c"),
                           path_map=(("/b", "/s"),), use_index=False, cache_dir="c",
                           index_files=IndexFileOptions(dirs=("d", "e1", "e2"), urls=("http://i",), offline=True,
                                                        cache_dir="c")),
        source=SourceOptions(kernel_tag="v6.1.1", offline=True),
        json=True, links=False, list_source=True)
    f = ResolveOptions.from_args(p.parse_args(["faddr2line", "vm", "f+1", "--links"]))
    assert (f.frames, f.image.vmlinux, f.image.build_id, f.image.running, f.links) == (("f+1",), "vm", None,
                                                                                       False, True)
    assert f.image.debuginfo == DebuginfoOptions() and f.image.use_index and f.source == SourceOptions()
    with pytest.raises(SystemExit):  # faddr2line takes no --build-id
        p.parse_args(["faddr2line", "vm", "f+1", "--build-id", BID])


def test_annotate_record() -> None:
    a = AnnotateOptions.from_args(build_parser().parse_args(
        ["annotate", "f.txt", "--kaslr-offset", "1a600000", "--exact", "--json", "--modules", "m",
         "--release", "6.1.0-53-cloud-amd64", "--running", "--progress", "-o", "out.json"]))
    assert (a.file, a.kaslr_offset, a.exact, a.json, a.kallsyms, a.output_format) == ("f.txt", 0x1A600000, True,
                                                                                      True, None, "json")
    assert (a.modules, a.release, a.output, a.image.running) == (("m",), "6.1.0-53-cloud-amd64", "out.json", True)
    assert a.image.debuginfo == DebuginfoOptions(progress=True)
    plain = AnnotateOptions.from_args(build_parser().parse_args(["annotate", "--kaslr-offset=-0x10"]))
    assert (plain.file, plain.kaslr_offset, plain.output_format) == ("-", -0x10, "text")
    assert AnnotateOptions(format="html").output_format == "html"


def test_debuginfo_record() -> None:
    d = DebuginfoCommandOptions.from_args(build_parser(annotate_arguments=False).parse_args(
        ["debuginfo", "--build-id", BID, "--release", "6.1.0", "--offline", "--json"]))
    assert d == DebuginfoCommandOptions(build_id=BID, release="6.1.0", json=True,
                                        debuginfo=DebuginfoOptions(offline=True))


def test_expected_build_id_says_where_it_comes_from() -> None:
    assert expected_build_id(BID.upper(), False) == ExpectedBuildId(BID, BuildIdFrom.OPTION)
    assert expected_build_id(None, False, f"Build ID: {BID}\n") == ExpectedBuildId(BID, BuildIdFrom.DUMP)
    assert expected_build_id(None, False, "no id here") == ExpectedBuildId(None, BuildIdFrom.DUMP)
    assert expected_build_id(None, False) == ExpectedBuildId(None, BuildIdFrom.NOWHERE)
    assert expected_build_id(None, True).source is BuildIdFrom.RUNNING
    with pytest.raises(ValueError):
        expected_build_id("xyz", False)


def test_a_warning_the_search_gave_is_not_repeated(monkeypatch: pytest.MonkeyPatch) -> None:
    """The search for a build id took a file without one and warned (``has no build id: cannot check``):
    the command's own mismatch warning for that build id would say it again, for another it would not.
    Told from the search's record, not from the warning's text."""
    monkeypatch.delenv("KSYM_VMLINUX", raising=False)
    offline = DebuginfoOptions(offline=True, use_env=False, system_root=False)
    found = find_vmlinux(candidates=[FIXTURE], build_id=BID, options=offline)  # the fixtures have no build id
    assert found.path == FIXTURE and len(found.warnings) == 1
    assert said_by_locate(found, BID) and said_by_locate(found, BID[:16])
    assert not said_by_locate(found, "11" * 20) and not said_by_locate(found, None)
    given = find_vmlinux(FIXTURE)
    assert not said_by_locate(given, BID)


def test_the_annotate_command_runs_from_its_record(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The command body takes the typed record: no parser, no Namespace."""
    errors: list[str] = []
    out = tmp_path / "dump.json"
    opts = AnnotateOptions(file=str(DUMP), image=ImageOptions(vmlinux=str(FIXTURE), use_index=False), json=True,
                           output=str(out))
    assert run_annotate(opts, errors.append) == 1  # two frames of the dump do not resolve
    assert errors[-1] == "ksym annotate: 2 of 8 frames unresolved"
    frames = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(frames) == 8 and sum(f["status"] == "resolved" for f in frames) == 6
    assert capfd.readouterr().out == ""
    errors.clear()
    assert run_annotate(AnnotateOptions(file=str(DUMP), json=True, format="html"), errors.append) == 2
    assert errors == ["ksym annotate: error: --json and --format html do not go together"]
