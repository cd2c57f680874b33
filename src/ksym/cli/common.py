"""What the ``ksym`` commands share: the build id a debug file should have, the portable index file found
by it when no debug vmlinux is, the links locations get, and the ``KSYM_STATS`` line."""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..records import NamedTuple

if TYPE_CHECKING:
    from pathlib import Path

    from ..errors import KsymError
    from ..links import ElixirLinks
    from ..searchopts import IndexFileOptions, Located, SourceOptions
    from ..symbolizer import Symbolizer
    from .options import ImageOptions

__all__ = [
    "BuildIdFrom",
    "ExpectedBuildId",
    "expected_build_id",
    "image_links",
    "index_file_after_miss",
    "open_symbolizer",
    "report_stats",
    "said_by_locate",
]


class BuildIdFrom(enum.Enum):
    """Where the build id a command's debug file should have comes from; the value is how a warning
    names it."""

    NOWHERE = ""
    #: ``--build-id HEX``
    OPTION = "--build-id"
    #: ``--running``: the running kernel's (``/sys/kernel/notes``)
    RUNNING = "the running kernel's"
    #: the dump's own ``Build ID:`` line (``ksym annotate``)
    DUMP = "the dump's"


class ExpectedBuildId(NamedTuple):
    """The build id a command's debug file should have (None: unknown) and where it comes from."""

    build_id: str | None
    source: BuildIdFrom


def expected_build_id(build_id: str | None, running: bool, text: str | None = None) -> ExpectedBuildId:
    """The build id the command's debug file should have: ``--build-id`` (``build_id``), ``--running``
    (the running kernel's), else the dump's own (``text``) when one is given.

    :raises ValueError: a malformed ``--build-id``.
    """
    if build_id:
        from ..buildid import normalize_build_id

        return ExpectedBuildId(normalize_build_id(build_id), BuildIdFrom.OPTION)
    if running:
        from ..buildid import running_build_id

        return ExpectedBuildId(running_build_id(), BuildIdFrom.RUNNING)
    if text is not None:
        from ..buildid import kernel_build_id_in_text

        return ExpectedBuildId(kernel_build_id_in_text(text), BuildIdFrom.DUMP)
    return ExpectedBuildId(None, BuildIdFrom.NOWHERE)


def said_by_locate(located: Located, expected: str | None) -> bool:
    """The search that found the file (``located``) was for the ``expected`` build id and has already
    warned about the file (one without a build id, or one of another build), so the command's own
    mismatch warning would say it twice."""
    from ..buildid import same_build_id

    look = located.lookup
    return (bool(expected) and bool(located.warnings) and look is not None and look.build_id is not None
            and same_build_id(str(expected), look.build_id))


def index_file_after_miss(miss: KsymError, expected: ExpectedBuildId, options: IndexFileOptions) -> Path:
    """The portable index file of the build id the debug vmlinux search was for, looked for (ksym's cache,
    ``--index-dir`` and ``$KSYM_INDEX_PATH``, then ``--index-url`` or ``$KSYM_INDEX_URLS``:
    docs/index-files.md) when that search missed with ``miss``: the ``expected`` build id, or without one
    the running kernel's, which the search was then for. Raises ``miss``
    itself when there is no build id to look for, else one error naming both searches
    (:func:`ksym.index_files.index_after_miss`: exit 3, or 5 when a server failed)."""
    build_id, source = expected.build_id, expected.source.value
    if not build_id:
        from ..buildid import running_build_id

        build_id, source = running_build_id(), BuildIdFrom.RUNNING.value
    if not build_id:
        raise miss
    from ..index_files import index_after_miss, portable_check

    check = portable_check()
    return index_after_miss(miss, build_id, options, verify=check.verify, magic=check.magic, source=source)


def open_symbolizer(image: ImageOptions, expected: ExpectedBuildId, err: Callable[[str], None], *,
                    vmlinux: str | None, index_file: str | None, build_id: str | None = None) -> Symbolizer:
    """The command's Symbolizer, on ``image``'s options (``err`` is given its warnings): of ``vmlinux``
    or the portable ``index_file`` when given, else of the debug vmlinux found for ``build_id`` (default:
    the running kernel's). When that search misses and no file was named (nor ``$KSYM_VMLINUX``), of
    the portable index file of the ``expected`` build id (:func:`index_file_after_miss`,
    docs/index-files.md). The caller closes it."""
    from ..errors import DebuginfodError, FileNotFoundKsymError, MissingDebugInfoError
    from ..symbolizer import Symbolizer

    try:
        return Symbolizer(vmlinux, index_file=index_file, build_id=build_id, debuginfo=image.debuginfo,
                          use_index=image.use_index, cache_dir=image.cache_dir, warn=err, path_map=image.path_map)
    except (FileNotFoundKsymError, DebuginfodError, MissingDebugInfoError) as miss:
        if vmlinux or index_file or os.environ.get("KSYM_VMLINUX"):
            raise
        found = index_file_after_miss(miss, expected, image.index_files)
        return Symbolizer(None, index_file=found, use_index=image.use_index, cache_dir=image.cache_dir, warn=err,
                          path_map=image.path_map)


def image_links(sym: Symbolizer, source: SourceOptions) -> ElixirLinks:
    """The links of the locations a command shows: for ``--kernel-tag``, else the tag of the vmlinux's
    banner, on ``--elixir-url`` (:func:`ksym.links.links_for`).

    :raises ValueError: a malformed ``--kernel-tag`` or ``--elixir-url``.
    """
    from ..links import links_for

    return links_for(sym.banner, kernel_tag=source.kernel_tag, elixir_url=source.elixir_url)


def report_stats(sym: Symbolizer, err: Callable[[str], None]) -> None:
    """With ``KSYM_STATS=1``: one line on stderr of what the run read (``Symbolizer.stats``: units from
    the DWARF and from the index, answers stored and looked up, the index directory)."""
    if os.environ.get("KSYM_STATS", "") not in ("", "0"):
        err(f"ksym: stats: {sym.stats}")
