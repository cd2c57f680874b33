#!/usr/bin/env python3
"""Annotate a directory of kernel dumps from many kernel builds at once, from portable index files fetched by
build id (docs/index-files.md, "Fleet use").

Every dump names the build id of the kernel that wrote it (an oops's ``Build ID:`` line, dropcapture's
``# build-id:``): the dumps are grouped by it, the index file of each build is fetched once (ksym's cache,
``--index-dir``/``$KSYM_INDEX_PATH``, then ``--index-url``/``$KSYM_INDEX_URLS``), and the dumps are annotated
in parallel worker processes, each opening a build's file once for all the dumps it gets of that build.

    KSYM_INDEX_URLS=https://kernels.example.org/ksym tools/fleet_annotate.py dumps/ -o annotated/ -j 8

For each input file ``dumps/NAME`` it writes ``annotated/NAME`` (what ``ksym annotate --index FILE`` prints
for it) and one line on stdout: ``NAME: build BUILD-ID: F frames, U unresolved``, or why it was skipped.
Exit code: 0 when every dump was annotated with every frame resolved, 1 when some frame did not resolve,
3 when a dump names no build id or its index file was not found, 5 when an index server failed, 4 for a
damaged index file.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from ksym.buildid import kernel_build_id_in_text
from ksym.errors import EXIT_NO_FILE, EXIT_OK, EXIT_UNRESOLVED, KsymError
from ksym.index_files import fetch_index_file, portable_check
from ksym.searchopts import IndexFileOptions


class Dump(NamedTuple):
    """One input file and the build id it names (None: it names none)."""

    path: Path
    build_id: str | None


class Outcome(NamedTuple):
    """What became of one dump: its line on stdout and its exit code."""

    name: str
    line: str
    code: int


class Task(NamedTuple):
    """Dumps of one build annotated by one worker from that build's index file."""

    index_file: Path
    build_id: str
    dumps: tuple[Path, ...]
    out_dir: Path


def read_dumps(directory: Path) -> list[Dump]:
    """Every regular file of ``directory`` (not its subdirectories), with the kernel build id it names."""
    dumps = []
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        text = path.read_bytes().decode("utf-8", "surrogateescape")
        dumps.append(Dump(path, kernel_build_id_in_text(text)))
    return dumps


def annotate_task(task: Task) -> list[Outcome]:
    """Annotate ``task.dumps`` from ``task.index_file`` (in a worker process)."""
    from ksym.annotate import annotate
    from ksym.symbolizer import Symbolizer

    outcomes = []
    try:
        sym = Symbolizer.from_index(task.index_file)
    except KsymError as exc:
        return [Outcome(p.name, f"{p.name}: error: {exc}", exc.exit_code) for p in task.dumps]
    with sym:
        for path in task.dumps:
            text = path.read_bytes().decode("utf-8", "surrogateescape")
            try:
                result = annotate(text, sym)
            except KsymError as exc:
                outcomes.append(Outcome(path.name, f"{path.name}: error: {exc}", exc.exit_code))
                continue
            (task.out_dir / path.name).write_bytes(result.render_text().encode("utf-8", "surrogateescape"))
            bad = len(result.unresolved)
            line = f"{path.name}: build {task.build_id}: {len(result.frames)} frames, {bad} unresolved"
            outcomes.append(Outcome(path.name, line, EXIT_UNRESOLVED if bad else EXIT_OK))
    return outcomes


def _chunks(items: Sequence[Path], size: int) -> Iterator[tuple[Path, ...]]:
    for i in range(0, len(items), size):
        yield tuple(items[i : i + size])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("dumps", type=Path, help="directory of dumps (every regular file in it)")
    p.add_argument("-o", "--output", type=Path, required=True, help="directory for the annotated dumps")
    p.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    p.add_argument(
        "--index-dir", action="append", default=[], help="a directory with buildid/<ID>/ksym-index"
    )
    p.add_argument("--index-url", action="append", default=[], help="a server (default: $KSYM_INDEX_URLS)")
    p.add_argument("--offline", action="store_true", help="never download")
    args = p.parse_args(argv)

    search = IndexFileOptions.from_environment(
        os.environ, dirs=tuple(args.index_dir), urls=tuple(args.index_url), offline=args.offline
    )
    args.output.mkdir(parents=True, exist_ok=True)
    dumps = read_dumps(args.dumps)
    by_build: dict[str, list[Path]] = {}
    outcomes: list[Outcome] = []
    for d in dumps:
        if d.build_id is None:
            outcomes.append(
                Outcome(d.path.name, f"{d.path.name}: skipped: it names no kernel build id", EXIT_NO_FILE)
            )
        else:
            by_build.setdefault(d.build_id, []).append(d.path)

    # each build's file once (downloads are I/O: threads), then the dumps in processes
    check = portable_check()

    def fetch(build_id: str) -> Path | KsymError:
        try:
            return fetch_index_file(build_id, search, verify=check.verify, magic=check.magic)
        except KsymError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=min(8, max(1, len(by_build)))) as threads:
        files = dict(zip(by_build, threads.map(fetch, by_build)))
    tasks = []
    for build_id, paths in by_build.items():
        found = files[build_id]
        if isinstance(found, KsymError):
            outcomes += [Outcome(q.name, f"{q.name}: error: {found}", found.exit_code) for q in paths]
            continue
        share = max(1, -(-len(paths) // max(1, args.jobs)))  # a build's dumps spread over the workers
        tasks += [Task(found, build_id, chunk, args.output) for chunk in _chunks(paths, share)]
    if tasks:
        with ProcessPoolExecutor(max_workers=max(1, min(args.jobs, len(tasks)))) as pool:
            for done in pool.map(annotate_task, tasks):
                outcomes += done
    for o in sorted(outcomes):
        print(o.line)
    codes = {o.code for o in outcomes} - {EXIT_OK, EXIT_UNRESOLVED}
    return max(codes) if codes else max((o.code for o in outcomes), default=EXIT_OK)


if __name__ == "__main__":
    sys.exit(main())
