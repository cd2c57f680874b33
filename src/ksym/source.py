"""Kernel source text for ``--list``: local trees, HTTP fetching with caching, and faddr2line's format.

:class:`SourceProvider` returns the lines of ``<path>`` at kernel tag ``<tag>`` from, in order:

1. ``source_dir`` (``--source-dir``, or a local tree :func:`choose_source_dir` finds: the current
   directory, ``$KSYM_SOURCE_DIR``, beside the vmlinux, installed), and the other source roots
   (``--path-map`` targets): only regular files under a root, never /proc, /sys or /dev, at most
   ``max_file_bytes`` (:func:`read_source_file`);
2. an in-memory cache (cachetools LRU, bounded by characters);
3. the on-disk cache (``$XDG_CACHE_HOME/ksym/source``, one file per (tag, path), atomic writes, least
   recently used files evicted beyond ``max_cache_bytes``);
4. HTTP with requests from ``url_template`` (``--source-url``; default: the stable tree's plain view on
   git.kernel.org), with retries and backoff for transient errors, an overall ``deadline`` and the same
   size cap, unless ``offline`` (``--offline``).

Every failure is one :class:`SourceFetchError` with a one-line message; :func:`format_list` collects them
and carries on, so the rest of the output still prints. Fetched text is only ever displayed.

:func:`format_list` prints exactly what the kernel's ``scripts/faddr2line --list`` prints after each
``func+off/size:`` header. See docs/source.md.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from cachetools import LRUCache

from ksym.errors import EXIT_NO_FILE, KsymError
from ksym.links import kernel_relative_path
from ksym.version import KernelVersion

from .records import NamedTuple
from .searchopts import path_parts

if TYPE_CHECKING:  # requests is heavy to import: only the HTTP path imports it
    import requests

    from ksym.transfer import Transfer

__all__ = [
    "DEFAULT_MAX_CACHE_BYTES",
    "DEFAULT_URL_TEMPLATE",
    "MAX_FILE_BYTES",
    "SOURCE_DIR_ENV",
    "LocalRead",
    "SourceDirChoice",
    "SourceFetchError",
    "SourceProvider",
    "choose_source_dir",
    "default_cache_dir",
    "find_source_dir",
    "format_list",
    "parse_location",
    "read_source_file",
    "render_context",
    "shell_words",
    "split_lines",
    "tree_version",
]

#: ``{tag}`` and ``{path}`` are replaced (URL-quoted); the kernel.org stable tree has every ``vX.Y[.Z]``
#: and ``vX.Y-rcN`` tag.
DEFAULT_URL_TEMPLATE = "https://git.kernel.org/pub/scm/linux/kernel/git/stable/linux.git/plain/{path}?h={tag}"
DEFAULT_MAX_CACHE_BYTES = 256 * 1024 * 1024
#: A single source file larger than this is refused, fetched or local (the largest kernel sources are a few
#: MiB).
MAX_FILE_BYTES = 64 * 1024 * 1024
#: Seconds one file's fetch may take in all, retries and waits included.
DEFAULT_DEADLINE = 30.0
#: Pseudo file systems no source is ever read from, whatever the source roots are.
NEVER_READ = ("/proc", "/sys", "/dev")
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_USER_AGENT = "ksym (kernel stack frame resolver; source context fetcher)"


class SourceFetchError(KsymError, LookupError):
    """A source file could not be read or fetched. ``str()`` is a one-line message for the user.

    ``kind`` is one of ``offline``, ``not-found``, ``local``, ``timeout``, ``connection``, ``http``,
    ``rate-limited``, ``too-large``, ``bad-path``.
    """

    exit_code = EXIT_NO_FILE

    def __init__(self, message: str, *, tag: str = "", path: str = "", kind: str = "") -> None:
        super().__init__(message)
        self.tag = tag
        self.path = path
        self.kind = kind


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ksym/source``, ``~/.cache/ksym/source`` when XDG_CACHE_HOME is unset or relative."""
    from .index import xdg_cache_home

    return xdg_cache_home() / "ksym" / "source"


def _clean_path(path: str) -> str | None:
    """A relative path without ``.``/``..``/empty components, or None."""
    parts = path_parts(path)
    if not parts or ".." in parts or any("\0" in p for p in parts):
        return None
    return "/".join(parts)


class SourceProvider:
    """Source lines for (tag, path) from a local tree, the caches, or HTTP. Thread-safe."""

    def __init__(
        self,
        *,
        source_dir: str | Path | None = None,
        url_template: str | None = DEFAULT_URL_TEMPLATE,
        cache_dir: str | Path | None = None,
        max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        offline: bool = False,
        memory_cache_chars: int = 32 * 1024 * 1024,
        session: requests.Session | None = None,
        roots: Iterable[str | Path] = (),
        max_file_bytes: int = MAX_FILE_BYTES,
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        """``url_template=None`` disables fetching (like ``offline``); ``cache_dir`` defaults to
        :func:`default_cache_dir`; ``max_cache_bytes=0`` disables the disk cache; ``retries`` is the
        number of extra attempts after a transient failure (timeouts, connection errors, HTTP 408, 429,
        5xx), waiting ``backoff * 2**n`` seconds (or the server's ``Retry-After``, up to
        ``max_backoff``). ``deadline`` bounds one file's whole fetch, every attempt and wait included
        (``timeout`` bounds each connect and read); bodies over ``max_file_bytes`` are refused.

        Local files are read only from the *source roots*: ``source_dir`` and ``roots`` (``--path-map``
        targets). A file is read when, symlinks resolved, it lies under a root and not under /proc, /sys
        or /dev, is a regular file, and is at most ``max_file_bytes`` long (the cap fetched files have
        too). Without a root no local file is read."""
        if url_template is not None and "{path}" not in url_template:
            raise ValueError(f"source URL template has no {{path}}: {url_template!r}")
        self.source_dir = Path(source_dir) if source_dir is not None else None
        self.url_template = url_template
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.max_cache_bytes = max_cache_bytes
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.offline = offline
        self.max_file_bytes = max_file_bytes
        self.deadline = deadline
        root_list = ([self.source_dir] if self.source_dir is not None else []) + [Path(r) for r in roots]
        #: The source roots, symlinks resolved (see :func:`read_source_file`).
        self.roots: tuple[str, ...] = tuple(dict.fromkeys(os.path.realpath(r) for r in root_list))
        self._memory: LRUCache[tuple[str, str], str] = LRUCache(maxsize=memory_cache_chars, getsizeof=len)
        self._missing: dict[tuple[str, str], SourceFetchError] = {}
        self._host_down: dict[str, SourceFetchError] = {}
        self._lock = threading.RLock()
        self._session = session
        #: Where the last :meth:`get_text` found its answer: ``local``, ``memory``, ``disk`` or ``http``.
        self.last_origin = ""

    # --- public ------------------------------------------------------------------------------------

    def get_lines(self, tag: str, path: str) -> list[str]:
        """The file's lines split the way awk splits records (on ``\\n`` only; a final newline does not
        start an empty line). Raises :class:`SourceFetchError`."""
        return split_lines(self.get_text(tag, path))

    def get_text(self, tag: str, path: str) -> str:
        """The whole file, decoded as UTF-8 (invalid bytes replaced). Raises :class:`SourceFetchError`.

        An absolute path (a ``--path-map`` target, or a build directory prefix that was not stripped) is
        read as it is when it lies in a source root (see :func:`read_source_file`); otherwise its
        kernel-relative tail is looked up. A relative path is read from ``source_dir``, then the caches
        and HTTP.
        """
        if path.startswith("/"):
            local = self._read_local(path, tag, path)
            if local is not None:
                return local
            tail = kernel_relative_path(path)
            if tail is None:
                raise SourceFetchError(f"{path}: not in a source tree, and not a path inside a kernel tree",
                                       tag=tag, path=path, kind="bad-path")
            path = tail
        rel = _clean_path(path)
        if rel is None:
            raise SourceFetchError(f"{path}: not a source-relative path", tag=tag, path=path, kind="bad-path")
        if self.source_dir is not None:
            local = self._read_local(str(self.source_dir / rel), tag, rel)
            if local is not None:
                return local
        key = (tag, rel)
        with self._lock:
            text = self._memory.get(key)
            if text is not None:
                self.last_origin = "memory"
                return text
            missing = self._missing.get(key)
        if missing is not None:
            raise missing
        data = self._disk_get(tag, rel)
        if data is not None:
            self.last_origin = "disk"
        else:
            if self.offline or self.url_template is None:
                why = "--offline is set" if self.offline else "no source URL is configured"
                where = f" and not in {self.source_dir}" if self.source_dir is not None else ""
                raise SourceFetchError(
                    f"{rel} ({tag}) is not in the source cache{where}, and {why}",
                    tag=tag, path=rel, kind="offline",
                )
            try:
                data = self._fetch(tag, rel)
            except SourceFetchError as exc:
                if exc.kind == "not-found":
                    with self._lock:
                        self._missing[key] = exc
                raise
            self.last_origin = "http"
            if tag != "latest":  # a moving target: not cached on disk
                self._disk_put(tag, rel, data)
        text = data.decode("utf-8", errors="replace")
        with self._lock:
            if len(text) <= self._memory.maxsize:
                self._memory[key] = text
        return text

    def url_for(self, tag: str, path: str) -> str:
        """The URL :meth:`get_text` fetches (``{tag}`` and ``{path}`` quoted)."""
        if self.url_template is None:
            raise ValueError("no source URL template")
        url = self.url_template.replace("{tag}", quote(tag, safe=""))
        return url.replace("{path}", quote(path, safe="/"))

    def cache_path(self, tag: str, path: str) -> Path:
        """The disk cache file for (tag, path): ``<cache_dir>/<2 hex>/<sha256 of tag NUL path>``."""
        digest = hashlib.sha256(f"{tag}\0{path}".encode()).hexdigest()
        return self.cache_dir / digest[:2] / digest

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    # --- local files ----------------------------------------------------------------------------------

    def _read_local(self, file: str, tag: str, path: str) -> str | None:
        """The text of ``file`` when it is in a source root, None when it is not there."""
        got = read_source_file(file, self.roots, self.max_file_bytes)
        if got.data is None:
            if got.kind in ("outside", "missing"):
                return None
            raise SourceFetchError(f"{path}: {got.reason}", tag=tag, path=path,
                                   kind="too-large" if got.kind == "too-large" else "local")
        self.last_origin = "local"
        return got.data.decode("utf-8", errors="replace")

    # --- disk cache -----------------------------------------------------------------------------------

    def _disk_get(self, tag: str, path: str) -> bytes | None:
        if self.max_cache_bytes <= 0:
            return None
        file = self.cache_path(tag, path)
        data = _read_regular(str(file), self.max_file_bytes).data  # damaged or planted: a miss
        if data is None:
            return None
        try:
            os.utime(file)  # recently used: evicted last
        except OSError:
            pass
        return data

    def _disk_put(self, tag: str, path: str, data: bytes) -> None:
        if self.max_cache_bytes <= 0 or len(data) > self.max_cache_bytes:
            return
        file = self.cache_path(tag, path)
        tmp_name = ""
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=file.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp_name, file)
            tmp_name = ""
            self._evict()
        except OSError:
            pass  # a cache that cannot be written only costs a refetch
        finally:
            if tmp_name:
                try:
                    os.unlink(tmp_name)
                except OSError:
                    pass

    def _evict(self) -> None:
        """Delete least recently used cache files until the cache fits in ``max_cache_bytes``."""
        entries: list[tuple[float, int, Path]] = []
        total = 0
        for sub in self.cache_dir.iterdir():
            if not sub.is_dir() or len(sub.name) != 2:
                continue
            for file in sub.iterdir():
                if file.name.startswith(".tmp-"):
                    continue
                try:
                    st = file.stat()
                except OSError:
                    continue
                entries.append((st.st_mtime, st.st_size, file))
                total += st.st_size
        if total <= self.max_cache_bytes:
            return
        entries.sort(key=lambda e: e[0])
        for _mtime, size, file in entries:
            if total <= self.max_cache_bytes:
                break
            try:
                file.unlink()
                total -= size
            except OSError:
                pass

    # --- HTTP -----------------------------------------------------------------------------------------

    def _fetch(self, tag: str, path: str) -> bytes:
        from .transfer import Limits, Transfer, TransferError, new_session

        url = self.url_for(tag, path)
        host = urlsplit(url).netloc or url
        what = f"{path} ({tag}) from {host}"
        with self._lock:
            down = self._host_down.get(host)
            if down is not None:
                raise SourceFetchError(f"cannot fetch {what}: skipped, {host} failed before ({down})",
                                       tag=tag, path=path, kind=down.kind)
            if self._session is None:
                self._session = new_session(_USER_AGENT)
            session = self._session
        # every attempt, backoff wait and body read ends at the deadline (ksym.transfer)
        transfer: Transfer[bytes] = Transfer(Limits(self.deadline, self.max_file_bytes, self.timeout),
                                             session=session)
        try:
            with transfer:
                return transfer.run(lambda t: self._attempts(t, url, host, what, tag, path),
                                    name="ksym-source-fetch")
        except TransferError as exc:
            if exc.kind == "size":
                raise SourceFetchError(f"cannot fetch {what}: larger than {_size_text(self.max_file_bytes)}",
                                       tag=tag, path=path, kind="too-large") from None
            if exc.kind == "deadline":
                if not transfer.answered:  # no answer in all that time: the other files skip the host
                    with self._lock:
                        self._host_down[host] = SourceFetchError(
                            f"gave up after {self.deadline:g} s (no complete answer)", kind="timeout")
                detail = f"not complete after {_size_text(transfer.got)}" if transfer.answered \
                    else "no complete answer"
                raise SourceFetchError(f"cannot fetch {what}: gave up after {self.deadline:g} s ({detail})",
                                       tag=tag, path=path, kind="timeout") from None
            raise SourceFetchError(f"cannot fetch {what}: {_short_reason(exc.cause or exc)} while reading",
                                   tag=tag, path=path,
                                   kind="timeout" if exc.kind == "timeout" else "connection") from None

    def _attempts(self, transfer: Transfer[bytes], url: str, host: str, what: str, tag: str,
                  path: str) -> bytes:
        """The fetch with its retries, run by ``transfer``'s worker thread."""
        from .transfer import TransferError

        attempt = 0
        while True:
            wait = min(self.backoff * (2 ** attempt), self.max_backoff)
            final = False  # a failure no retry can mend (no such host, no route)
            try:
                resp = transfer.get(url)
            except TransferError as exc:
                if exc.kind == "timeout":
                    error = SourceFetchError(f"cannot fetch {what}: {exc}", tag=tag, path=path, kind="timeout")
                elif exc.kind == "network":
                    reason = _short_reason(exc.cause or exc)
                    final = reason in ("host name not found", "network is unreachable")
                    error = SourceFetchError(f"cannot fetch {what}: {reason}", tag=tag, path=path,
                                             kind="connection")
                else:
                    raise
            else:
                with resp:
                    status = resp.status_code
                    ctype = resp.headers.get("Content-Type", "")
                    if status == 200 and ctype.lower().startswith(("text/html", "application/xhtml")):
                        raise SourceFetchError(
                            f"cannot fetch {what}: the server sent an HTML page, not plain text "
                            "(check --source-url)", tag=tag, path=path, kind="http")
                    if status == 200:
                        return transfer.read(resp)
                    reason = f"HTTP {status}{' ' + resp.reason if resp.reason else ''}"
                    if status == 404 or status == 410:
                        raise SourceFetchError(f"cannot fetch {what}: {reason} (no such file at this tag?)",
                                               tag=tag, path=path, kind="not-found")
                    if status not in _TRANSIENT_STATUS:
                        raise SourceFetchError(f"cannot fetch {what}: {reason}",
                                               tag=tag, path=path, kind="http")
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
                    kind = "rate-limited" if status == 429 else "http"
                    if retry_after is not None:
                        if retry_after > self.max_backoff:
                            raise SourceFetchError(
                                f"cannot fetch {what}: {reason}, "
                                f"server asks to retry after {retry_after:.0f} s",
                                tag=tag, path=path, kind=kind)
                        wait = retry_after
                    error = SourceFetchError(f"cannot fetch {what}: {reason}", tag=tag, path=path, kind=kind)
            # no time for another attempt after the wait: this failure is the answer
            final = final or wait >= transfer.left()
            if attempt >= self.retries or final:
                if attempt:
                    error = SourceFetchError(f"{error} (after {attempt + 1} attempts)",
                                             tag=tag, path=path, kind=error.kind)
                if error.kind in ("timeout", "connection"):
                    # Fail fast for the other files of this run instead of waiting again per file.
                    reason = str(error).split(": ", 1)[-1]
                    with self._lock:
                        self._host_down[host] = SourceFetchError(reason, kind=error.kind)
                raise error
            attempt += 1
            transfer.wait(wait)


class LocalRead(NamedTuple):
    """What :func:`read_source_file` found: the bytes, or why not (``kind`` and a one-line ``reason``).

    ``kind``: ``ok``, ``outside`` (not under a source root), ``missing``, ``refused`` (under /proc,
    /sys or /dev, or not a regular file), ``too-large``, ``error`` (the file system said no).
    """

    data: bytes | None
    kind: str
    reason: str = ""


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root if root.endswith("/") else root + "/")


def read_source_file(path: str | os.PathLike[str], roots: Iterable[str], max_bytes: int = MAX_FILE_BYTES,
                     ) -> LocalRead:
    """The bytes of a source file, read only when it is safe to: ``path`` with its symlinks resolved
    lies under one of ``roots`` (themselves resolved), not under /proc, /sys or /dev, and is a regular
    file of at most ``max_bytes`` (checked on the opened file, and at most ``max_bytes + 1`` bytes read).

    Debug files name their source paths and come from debuginfod servers and other people: a path is a
    wish, never a permission. The file is opened with ``O_NOFOLLOW`` and, where /proc is mounted, the
    opened file's own path is checked again, so a path swapped for a symlink meanwhile is refused.
    """
    real = os.path.realpath(path)
    real_roots = [os.path.realpath(r) for r in roots]
    if not any(_under(real, r) for r in real_roots):
        return LocalRead(None, "outside", "outside the source trees, not read")
    for pseudo in NEVER_READ:
        if _under(real, pseudo):
            return LocalRead(None, "refused", f"under {pseudo}, not read")
    return _read_regular(real, max_bytes, real_roots)


def _read_regular(path: str, max_bytes: int, roots: Sequence[str] | None = None) -> LocalRead:
    """At most ``max_bytes`` of the regular file ``path`` (no symlink, FIFO, device); with ``roots``, the
    opened file must still be under one of them."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NOCTTY", 0) \
        | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError):
        return LocalRead(None, "missing", "no such file")
    except OSError as exc:
        return LocalRead(None, "error", f"cannot read it: {exc.strerror or exc}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return LocalRead(None, "refused", "not a regular file, not read")
        if roots is not None:
            try:
                opened = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                opened = path  # no /proc: O_NOFOLLOW on the resolved path is the check
            if not any(_under(opened, r) for r in roots) or any(_under(opened, d) for d in NEVER_READ):
                return LocalRead(None, "refused", "moved outside the source trees, not read")
        if st.st_size > max_bytes:
            return LocalRead(None, "too-large", f"larger than {_size_text(max_bytes)}, not read")
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:
            return LocalRead(None, "too-large", f"larger than {_size_text(max_bytes)}, not read")
        return LocalRead(b"".join(chunks), "ok")
    except OSError as exc:
        return LocalRead(None, "error", f"cannot read it: {exc.strerror or exc}")
    finally:
        os.close(fd)


def _size_text(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n} bytes"


def _short_reason(exc: BaseException) -> str:
    """A short reason for a requests exception, without urllib3's nested reprs."""
    text = str(exc)
    for pattern, reason in (
        (r"Connection refused", "connection refused"),
        ((r"Name or service not known|nodename nor servname|Temporary failure in name resolution|"
         r"getaddrinfo failed"), "host name not found"),
        (r"Network is unreachable", "network is unreachable"),
        (r"timed out", "timed out"),
        (r"CERTIFICATE_VERIFY_FAILED|SSLError|certificate", "TLS certificate error"),
        (r"Connection reset", "connection reset"),
        (r"RemoteDisconnected|closed connection", "server closed the connection"),
    ):
        if re.search(pattern, text):
            return reason
    return type(exc).__name__


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# --- installed trees -------------------------------------------------------------------------------------


def tree_version(tree: str | Path) -> tuple[int, int, int] | None:
    """(VERSION, PATCHLEVEL, SUBLEVEL) from the top Makefile of a kernel tree, or None."""
    try:
        with open(Path(tree) / "Makefile", encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
    except OSError:
        return None
    values: dict[str, int] = {}
    for name in ("VERSION", "PATCHLEVEL", "SUBLEVEL"):
        m = re.search(rf"^{name}\s*=\s*(\d+)\s*$", head, re.MULTILINE)
        if m is None:
            return None
        values[name] = int(m.group(1))
    return values["VERSION"], values["PATCHLEVEL"], values["SUBLEVEL"]


def _is_source_tree(path: Path) -> bool:
    """A full kernel tree (not a headers-only build dir): has a Makefile and C sources."""
    return ((path / "Makefile").is_file() and (path / "init" / "main.c").is_file()
            and (path / "kernel").is_dir())


def find_source_dir(
    version: KernelVersion,
    *,
    src_roots: Sequence[str | Path] = ("/usr/src",),
    modules_dir: str | Path | None = "/lib/modules",
    trees: Sequence[str | Path] = (),
) -> Path | None:
    """An installed kernel source tree for ``version``, or None.

    Looks at ``trees`` (candidate trees themselves), ``/lib/modules/<release>/source``,
    ``/usr/src/linux-source-X.Y`` (the extracted Debian/Ubuntu ``linux-source-X.Y`` package; the package
    itself only installs a tarball), ``/usr/src/linux-<release>`` and other ``/usr/src/linux-*`` trees
    (for every directory of ``src_roots``). Only full trees count (headers-only ``build`` directories do
    not), and only trees whose Makefile says the same ``X.Y``; among them one whose ``X.Y.Z`` equals the
    upstream version the banner names is preferred.
    """
    want: tuple[int, ...] = version.upstream[:3] if version.upstream else (version.major, version.minor,
                                                                           version.patch)
    series = (version.major, version.minor)
    candidates: list[Path] = [Path(t) for t in trees]
    if modules_dir is not None:
        candidates.append(Path(modules_dir) / version.release / "source")
    for root in map(Path, src_roots):
        candidates += [
            root / f"linux-source-{version.major}.{version.minor}",
            root / f"linux-{version.release}",
            root / f"linux-{'.'.join(map(str, want))}",
            root / "linux",
        ]
        try:
            candidates += sorted(p for p in root.glob("linux-*") if p.is_dir())
        except OSError:
            pass
    seen: set[str] = set()
    fallback: Path | None = None
    for cand in candidates:
        try:
            real = cand.resolve()
        except OSError:
            continue
        if str(real) in seen:
            continue
        seen.add(str(real))
        try:
            if not _is_source_tree(real):
                continue
        except OSError:
            continue
        tv = tree_version(real)
        if tv is None or tv[:2] != series:
            continue
        if tv == tuple(want) or (len(want) == 3 and want[2] == 0 and version.upstream is None):
            return cand
        if fallback is None:
            fallback = cand
    return fallback


#: Names the kernel trees (or directories holding ``linux-*`` trees) to use, ``:``-separated.
SOURCE_DIR_ENV = "KSYM_SOURCE_DIR"


class SourceDirChoice(NamedTuple):
    """The local tree ``--list`` and the reports read: ``path`` (None: none), where it was found
    (``origin``), and a one-line ``note`` for the user (a tarball to extract, a KSYM_SOURCE_DIR that has
    no tree of this version)."""

    path: Path | None
    origin: str
    note: str | None = None


def choose_source_dir(
    version: KernelVersion | None,
    *,
    source_dir: str | os.PathLike[str] | None = None,
    vmlinux: str | os.PathLike[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    environ: dict[str, str] | os._Environ[str] | None = None,
    src_roots: Sequence[str | Path] = ("/usr/src",),
    modules_dir: str | Path | None = "/lib/modules",
) -> SourceDirChoice:
    """The local kernel tree to read source from, looked for before any network request, first found wins:

    1. ``source_dir`` (``--source-dir``), as it is;
    2. the current directory when it is a kernel tree (has ``include/linux``), as faddr2line reads it;
    3. ``$KSYM_SOURCE_DIR``: ``:``-separated kernel trees or directories holding ``linux-*`` trees; the
       tree of the vmlinux's version (any tree, when the version is unknown);
    4. beside the vmlinux: ``linux-source-X.Y``, ``linux-X.Y.Z``, ``linux`` ... in its directory;
    5. installed trees (:func:`find_source_dir`: ``/lib/modules/<release>/source``, ``/usr/src``).

    Trees of 3-5 must be full trees whose Makefile says the vmlinux's ``X.Y``.
    """
    if source_dir is not None:
        return SourceDirChoice(Path(source_dir), "--source-dir")
    here = Path(cwd) if cwd is not None else Path.cwd()
    if (here / "include" / "linux").is_dir():
        return SourceDirChoice(here, "the current directory")
    env = (os.environ if environ is None else environ).get(SOURCE_DIR_ENV, "")
    entries = [e for e in env.split(os.pathsep) if e]
    note: str | None = None
    if entries:
        if version is None:
            for entry in entries:
                if _is_source_tree(Path(entry)):
                    return SourceDirChoice(Path(entry), SOURCE_DIR_ENV)
        else:
            found = find_source_dir(version, src_roots=entries, modules_dir=None, trees=entries)
            if found is not None:
                return SourceDirChoice(found, SOURCE_DIR_ENV)
        want = f"{version.major}.{version.minor}" if version is not None else "kernel"
        note = f"{SOURCE_DIR_ENV} names no {want} source tree ({env})"
    if version is None:
        return SourceDirChoice(None, "none", note)
    if vmlinux is not None:
        beside = os.path.dirname(os.path.abspath(vmlinux))
        found = find_source_dir(version, src_roots=[beside], modules_dir=None)
        if found is not None:
            return SourceDirChoice(found, "beside the vmlinux", note)
    found = find_source_dir(version, src_roots=src_roots, modules_dir=modules_dir)
    if found is not None:
        return SourceDirChoice(found, "installed", note)
    if note is None:
        for root in map(Path, src_roots):
            try:
                tarballs = sorted(root.glob(f"linux-source-{version.major}.{version.minor}.tar*"))
            except OSError:
                tarballs = []
            if tarballs:
                note = (f"{tarballs[0]} is not extracted: run tar -C {root} -xf {tarballs[0]}, or name a "
                        f"tree with --source-dir or {SOURCE_DIR_ENV}, to list source without the network")
                break
    return SourceDirChoice(None, "none", note)


# --- faddr2line --list ---------------------------------------------------------------------------------


def split_lines(text: str) -> list[str]:
    """Split like awk's default RS: on ``\\n`` only (not ``\\r``, form feed or Unicode separators); a
    trailing newline does not make an empty last line."""
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def shell_words(line: str) -> list[str]:
    """Bash word splitting with the default IFS (space, tab, newline), as ``echo $line`` does."""
    return [w for w in re.split(r"[ \t\n]+", line) if w]


_LINE_NO_RE = re.compile(r".*:([0-9]+).*")
_FILE_RE = re.compile(r".*at (.+):.*")


def parse_location(line: str) -> tuple[str, int] | None:
    """(path, line number) of a faddr2line location line, extracted the way the script's two sed
    expressions do: the number after the last ``:`` followed by digits, the path between the last
    ``at `` and the last ``:``. ``None`` when either is missing (the script then prints no source)."""
    line = " ".join(shell_words(line))
    m_no = _LINE_NO_RE.fullmatch(line)
    m_file = _FILE_RE.fullmatch(line)
    if m_no is None or m_file is None:
        return None
    return m_file.group(1), int(m_no.group(1))


_CONTROL_RE = re.compile(r"[\x00-\x08\x0a\x0b\x0d-\x1f\x7f-\x9f]")


def _sanitize(text: str) -> str:
    """Control characters other than tab and form feed (escape sequences, carriage returns) shown as
    U+FFFD, so fetched text cannot drive the terminal."""
    return _CONTROL_RE.sub("\ufffd", text)


def render_context(
    lines: Sequence[str], lineno: int, radius: int = 5, *, sanitize: bool = False
) -> list[str]:
    """The source lines faddr2line --list prints around ``lineno`` (1-based): lines ``lineno - radius``
    to ``lineno + radius`` that exist, each ``" N \\t<text>"``, the line itself ``">N<\\t<text>"``.

    This is the script's ``awk 'NR>=n-5 && NR<=n+5 { if (NR==n) printf(">%d<", NR); else printf(" %d ",
    NR); printf("\\t%s\\n", $0)}'`` without the newlines. With ``sanitize`` control characters other
    than tab become U+FFFD.
    """
    out: list[str] = []
    first = max(1, lineno - radius)
    last = min(len(lines), lineno + radius)
    for nr in range(first, last + 1):
        text = lines[nr - 1]
        if sanitize:
            text = _sanitize(text)
        mark = f">{nr}<" if nr == lineno else f" {nr} "
        out.append(f"{mark}\t{text}")
    return out


def format_list(
    chain_lines: Iterable[str],
    provider: SourceProvider,
    tag: str,
    *,
    radius: int = 5,
    errors: list[SourceFetchError] | None = None,
    sanitize: bool = True,
    urls: Sequence[str | None] | None = None,
) -> str:
    """The ``--list`` block faddr2line prints after one ``func+off/size:`` header.

    ``chain_lines`` are the location lines as faddr2line prints them without ``--list`` (e.g.
    ``nf_hook at include/linux/netfilter.h:257``, ``(inlined by) __ip_local_out at
    net/ipv4/ip_output.c:115``). For each: an empty line, the location line word-split and re-joined
    with single spaces (the script's unquoted ``echo $line``), then :func:`render_context` of the file.
    The result ends with a newline, so ``header + "\\n" + block`` is the script's output for one frame.

    A file that cannot be read gets no context lines (as with the script, whose awk then only complains
    on stderr); its :class:`SourceFetchError` is appended to ``errors`` when given. Each (tag, path)
    failure is reported once per call. ``sanitize`` (default on) replaces control characters other than
    tab in the source text with U+FFFD; the script prints them raw. ``urls`` (``--list --links``) gives
    a link per location line, printed after it (two spaces apart).
    """
    out: list[str] = []
    failed: set[str] = set()
    for i, raw in enumerate(chain_lines):
        line = " ".join(shell_words(raw))
        url = urls[i] if urls is not None and i < len(urls) else None
        out.append("")
        out.append(f"{line}  {url}" if url else line)
        loc = parse_location(line)
        if loc is None:
            continue
        path, lineno = loc
        if path in failed:
            continue
        try:
            lines = provider.get_lines(tag, path)
        except SourceFetchError as exc:
            failed.add(path)
            if errors is not None:
                errors.append(exc)
            continue
        out.extend(render_context(lines, lineno, radius, sanitize=sanitize))
    return "\n".join(out) + "\n" if out else ""
