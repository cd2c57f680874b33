"""``--path-map OLD=NEW``: show (and read) DWARF source paths under a different directory.

    >>> pm = PathMap.parse(["/build/linux=/home/me/linux"])
    >>> pm.apply("/build/linux/net/core/sock.c")
    '/home/me/linux/net/core/sock.c'
    >>> pm.apply("/build/linux-6.1/net/core/sock.c") is None
    True

A rule rewrites the *start of the raw DWARF path* of a location: the path as addr2line prints it
(``comp_dir/dir/name`` joined like bfd, see :func:`ksym.dwarf.concat_filename`), before faddr2line's
build-directory prefix is stripped. ``OLD`` matches whole path components only (``/build/linux``
matches ``/build/linux/x.c`` and ``/build/linux`` itself, never ``/build/linux-6.1/x.c``), and the first
rule that matches wins. A rewritten path is shown exactly as rewritten (the prefix strip no longer
applies to it: you chose that path), so ``--list`` reads the source file through it; a path no rule
matches is shown as before. The same rules work for any compiler: clang's absolute ``/build/dir``,
gcc's relative ``comp_dir`` (``debian/build/build_amd64_none_cloud-amd64``), or include directories.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import EXIT_USAGE, KsymError
from .records import NamedTuple

__all__ = ["PathMap", "PathMapError", "parse_path_map_rule"]


class PathMapError(KsymError, ValueError):
    """A path-map rule that is not ``OLD=NEW`` with a non-empty ``OLD``."""

    exit_code = EXIT_USAGE


def parse_path_map_rule(text: str) -> tuple[str, str]:
    """``"OLD=NEW"`` → ``(OLD, NEW)``; the first ``=`` splits (paths with ``=`` go in NEW only).

    A trailing ``/`` on OLD is dropped (``/build/`` and ``/build`` are the same rule); an empty NEW
    makes the rest of the path relative (``/build/linux=`` shows ``net/core/sock.c``).

    :raises PathMapError: no ``=``, or an empty OLD.
    """
    old, sep, new = text.partition("=")
    if not sep:
        raise PathMapError(f"bad --path-map {text!r}: expected OLD=NEW")
    stripped = old.rstrip("/") or old
    if not stripped:
        raise PathMapError(f"bad --path-map {text!r}: OLD is empty")
    return stripped, new


class PathMap(NamedTuple):
    """Ordered ``(OLD, NEW)`` rules; :meth:`apply` gives the rewritten path or None."""

    rules: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, rules: Iterable[str | tuple[str, str]] | PathMap | None) -> PathMap:
        """Rules as ``"OLD=NEW"`` strings or ``(OLD, NEW)`` pairs (a dict's ``.items()`` works too).

        :raises PathMapError: a malformed rule.
        """
        if rules is None:
            return cls()
        if isinstance(rules, PathMap):
            return rules
        out: list[tuple[str, str]] = []
        for r in rules:
            if isinstance(r, str):
                out.append(parse_path_map_rule(r))
            else:
                old, new = r
                out.append(parse_path_map_rule(f"{old}={new}"))
        return cls(tuple(out))

    def __bool__(self) -> bool:
        return bool(self.rules)

    def roots(self) -> tuple[str, ...]:
        """The absolute NEW directories: the source roots ``--list`` and the reports may read files from
        (docs/source.md); a relative NEW is read under ``--source-dir`` like any relative path."""
        return tuple(dict.fromkeys(new for _old, new in self.rules if new.startswith("/")))

    def apply(self, path: str) -> str | None:
        """``path`` with the first matching rule's OLD replaced by NEW, or None when none matches."""
        for old, new in self.rules:
            if path == old:
                return new
            if path.startswith(old) and (old.endswith("/") or path[len(old)] == "/"):
                rest = path[len(old):].lstrip("/")  # the file below OLD
                if not new:
                    return rest  # "OLD=": relative to the current (or --source-dir) directory
                return new + rest if new.endswith("/") else f"{new}/{rest}"
        return None
