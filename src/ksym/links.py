"""Links into elixir.bootlin.com (or a self-hosted Elixir) for the locations ksym prints.

Each location gets ``<base>/linux/<tag>/source/<path>#L<line>`` and each function
``<base>/linux/<tag>/A/ident/<function>``, where ``<tag>`` is the upstream tag chosen by
:func:`ksym.version.kernel_tag` (or ``--kernel-tag``) and ``<base>`` is ``--elixir-url``.

Links are the presenting side's: the resolvers (:class:`ksym.Symbolizer`, the module symbolizer) give
chains without them, and whoever shows a chain adds them (:func:`links_for` an image's banner,
:meth:`ElixirLinks.chain`, :meth:`ElixirLinks.resolution`).
"""

from __future__ import annotations

import re
from urllib.parse import quote

from .searchopts import path_parts

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .model import Resolution, SourceLocation

__all__ = ["DEFAULT_ELIXIR_URL", "ElixirLinks", "ident_name", "kernel_relative_path", "links_for"]

DEFAULT_ELIXIR_URL = "https://elixir.bootlin.com"

#: Top-level directories of a kernel tree, used to cut a build-directory prefix off an absolute path.
_TOP_DIRS = frozenset({
    "arch", "block", "certs", "crypto", "drivers", "fs", "include", "init", "io_uring", "ipc", "kernel",
    "lib", "mm", "net", "rust", "samples", "scripts", "security", "sound", "tools", "usr", "virt",
})
_SUFFIX_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\.(?:constprop|isra|part|cold|lto_priv|llvm|clone|"
                        r"localalias|specialized)\b")


def kernel_relative_path(path: str) -> str | None:
    """The source-relative form of a path as ksym prints it, or ``None`` when it has none.

    ``net/ipv4/ip_output.c`` and ``./net/ipv4/ip_output.c`` give ``net/ipv4/ip_output.c``; an absolute
    path whose build-directory prefix was not stripped (``/build/linux-xyz/net/ipv4/ip_output.c``) is cut
    at its first top-level kernel directory below the root (a heuristic); ``??``, empty paths and
    paths with ``..`` give ``None``.
    """
    path = path.strip()
    if not path or path == "??":
        return None
    parts = path_parts(path)
    if not parts or ".." in parts:
        return None
    if path.startswith("/"):
        for i, part in enumerate(parts[:-1]):
            if i > 0 and part in _TOP_DIRS:  # i > 0: /usr/src/... is not the kernel's usr/
                return "/".join(parts[i:])
        return None
    return "/".join(parts)


def ident_name(function: str) -> str | None:
    """The C identifier Elixir indexes for a function name as the debug info or a stack trace spells it:
    compiler clone suffixes are dropped (``tcp_v4_rcv.cold`` -> ``tcp_v4_rcv``,
    ``foo.constprop.0`` -> ``foo``); ``??`` and names that are not identifiers give ``None``."""
    function = function.strip()
    m = _SUFFIX_RE.match(function)
    if m is not None:
        function = m.group(1)
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", function):
        return function
    return None


class ElixirLinks:
    """Builds Elixir URLs for one kernel tag."""

    def __init__(self, tag: str, base_url: str = DEFAULT_ELIXIR_URL, project: str = "linux") -> None:
        if not tag or any(ch.isspace() for ch in tag):
            raise ValueError(f"bad kernel tag {tag!r}")
        base_url = base_url.strip().rstrip("/")
        if not re.match(r"https?://[^/\s]+", base_url):
            raise ValueError(f"Elixir URL must start with http:// or https://: {base_url!r}")
        self.tag = tag
        self.base_url = base_url
        self.project = project
        self._prefix = f"{base_url}/{quote(project, safe='')}/{quote(tag, safe='')}"

    def __repr__(self) -> str:
        return f"ElixirLinks({self.tag!r}, base_url={self.base_url!r})"

    def source_url(self, path: str, line: int = 0) -> str | None:
        """``<base>/linux/<tag>/source/<path>#L<line>`` (no ``#L`` part when ``line`` is 0 or less);
        ``None`` when ``path`` has no source-relative form (see :func:`kernel_relative_path`)."""
        rel = kernel_relative_path(path)
        if rel is None:
            return None
        url = f"{self._prefix}/source/{quote(rel, safe='/')}"
        if line > 0:
            url += f"#L{int(line)}"
        return url

    def ident_url(self, function: str) -> str | None:
        """``<base>/linux/<tag>/A/ident/<function>``; ``None`` for ``??`` or a non-identifier."""
        name = ident_name(function)
        if name is None:
            return None
        return f"{self._prefix}/A/ident/{quote(name, safe='')}"

    def location(self, loc: SourceLocation) -> SourceLocation:
        """``loc`` with its links (:meth:`source_url` of its file and line, :meth:`ident_url` of its
        function)."""
        return loc._replace(url=self.source_url(loc.file, loc.line), ident_url=self.ident_url(loc.function))

    def chain(self, chain: tuple[SourceLocation, ...]) -> tuple[SourceLocation, ...]:
        """Every location of an inline chain with its links."""
        return tuple(self.location(loc) for loc in chain)

    def resolution(self, res: Resolution) -> Resolution:
        """``res`` with links on every location of its chain."""
        return res._replace(chain=self.chain(res.chain)) if res.chain else res


def links_for(banner: str | None, *, kernel_tag: str | None = None, elixir_url: str | None = None) -> ElixirLinks:
    """The links of an image whose ``linux_banner`` is ``banner`` (``Symbolizer.banner``): for the tag
    :func:`ksym.version.choose_tag` picks (``kernel_tag`` wins), on ``elixir_url`` (default
    :data:`DEFAULT_ELIXIR_URL`).

    :raises ValueError: a malformed ``kernel_tag`` or ``elixir_url``.
    """
    from .version import choose_tag

    return ElixirLinks(choose_tag(banner, kernel_tag).tag, elixir_url or DEFAULT_ELIXIR_URL)
