"""Kernel version of a vmlinux, and the upstream git tag its source corresponds to.

The kernel names itself in ``linux_banner`` (``/proc/version`` prints the same text)::

    Linux version 6.1.0-53-cloud-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14+deb12u1)
    12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.187-1 (2026-09-07)

:func:`read_banner` reads that string out of a vmlinux, :meth:`KernelVersion.parse` splits it up, and
:func:`kernel_tag` turns it into the tag of the upstream tree (``v6.1.187``) that elixir.bootlin.com and
the kernel.org git trees know, saying how the tag was derived and adding a note when it is only a
``vMAJOR.MINOR`` fallback. See docs/source.md ("Kernel tags") for the rules.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "KernelVersion",
    "TagGuess",
    "choose_tag",
    "kernel_tag",
    "normalize_tag",
    "read_banner",
]

_BANNER_MARK = "Linux version "
#: ``X.Y[.Z[.W]]`` at the start of a release string, then an optional ``-rcN``.
_RELEASE_RE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:-rc(\d+))?")
#: ``-NNNNN-gHASH`` appended by CONFIG_LOCALVERSION_AUTO for a build past a tag.
_GIT_DESCRIBE_RE = re.compile(r"-(\d+)-g([0-9a-f]{7,40})")
#: The Debian package version in UTS_VERSION: ``Debian 6.1.187-1``, ``Debian 6.12.9-1~bpo12+1``.
_DEBIAN_RE = re.compile(r"\bDebian (\d+\.\d+(?:\.\d+){0,2})(?=[-~+ ]|$)")
#: Ubuntu's version signature (also /proc/version_signature): ``Ubuntu 5.13.0-22.22-generic 5.13.19``.
_UBUNTU_SIG_RE = re.compile(r"\bUbuntu (\d+\.\d+\.\d+-\d+\.\S+) (\d+\.\d+(?:\.\d+){0,2})\b")


@dataclass(frozen=True)
class KernelVersion:
    """A kernel's version as its banner (or its bare release string) tells it."""

    #: ``UTS_RELEASE``, what ``uname -r`` prints: ``6.1.0-53-cloud-amd64``.
    release: str
    major: int
    minor: int
    #: Third number (``SUBLEVEL``), 0 when absent.
    patch: int = 0
    #: Fourth number, only used by 2.6.x.y stable releases.
    stable: int | None = None
    #: ``N`` of ``-rcN``.
    rc: int | None = None
    #: Everything after the numbers and ``-rcN``: ``-53-cloud-amd64``, ``.fc39.x86_64``, ``""``.
    local: str = ""
    #: ``user@host`` that built it, when the banner has it.
    compiled_by: str = ""
    #: The compiler part of the banner.
    compiler: str = ""
    #: ``UTS_VERSION`` and what follows: ``#1 SMP PREEMPT_DYNAMIC Debian 6.1.187-1 (2026-09-07)``.
    build: str = ""
    #: Distribution recognised from the banner: debian, ubuntu, fedora, rhel, suse, arch, amazon, or "".
    distro: str = ""
    #: The upstream version the distribution says it packaged (Debian's package version, Ubuntu's
    #: signature), when the banner carries one: ``(6, 1, 187)``.
    upstream: tuple[int, ...] | None = None
    #: The whole banner as given (stripped), or the release string when only that was given.
    banner: str = ""

    @classmethod
    def parse(cls, text: str) -> KernelVersion:
        """Parse a ``Linux version ...`` banner, a dmesg/journal line containing one, Ubuntu's
        ``/proc/version_signature`` text, or a bare release string such as ``6.18.0-rc3``.

        Raises ``ValueError`` when no kernel release can be found in ``text``.
        """
        text = text.strip()
        compiled_by = compiler = build = ""
        start = text.find(_BANNER_MARK)
        sig = _UBUNTU_SIG_RE.search(text)
        if start >= 0:
            banner = text[start:].split("\n", 1)[0].strip()
            rest = banner[len(_BANNER_MARK):]
            release, _, rest = rest.partition(" ")
            groups: list[str] = []
            rest = rest.lstrip()
            while rest.startswith("(") and len(groups) < 2:
                group, rest = _paren_group(rest)
                groups.append(group)
                rest = rest.lstrip()
            if groups:
                compiled_by = groups[0]
            if len(groups) > 1:
                compiler = groups[1]
            build = rest
        elif sig is not None and text.startswith("Ubuntu "):
            banner = text.split("\n", 1)[0]
            release = _ubuntu_release(sig.group(1))
        else:
            banner = text.split("\n", 1)[0].strip()
            release = banner.split()[0] if banner.split() else ""
        m = _RELEASE_RE.match(release)
        if m is None:
            raise ValueError(f"no kernel release found in {text[:80]!r}")
        major, minor = int(m.group(1)), int(m.group(2))
        patch = int(m.group(3)) if m.group(3) else 0
        stable = int(m.group(4)) if m.group(4) else None
        rc = int(m.group(5)) if m.group(5) else None
        local = release[m.end():]

        distro = ""
        upstream: tuple[int, ...] | None = None
        deb = _DEBIAN_RE.search(build)
        if sig is not None:
            distro = "ubuntu"
            upstream = tuple(int(x) for x in sig.group(2).split("."))
        elif deb is not None:
            distro = "debian"
            upstream = tuple(int(x) for x in deb.group(1).split("."))
        elif re.search(r"-Ubuntu\b", build):
            distro = "ubuntu"
        elif "debian-kernel@" in compiled_by or re.search(r"\+deb\d+", release):
            distro = "debian"
        elif re.search(r"\.fc\d+", release):
            distro = "fedora"
        elif re.search(r"\.el\d+", release):
            distro = "rhel"
        elif re.search(r"\.amzn\d+", release):
            distro = "amazon"
        elif re.search(r"-arch\d+", release) or "@archlinux" in compiled_by:
            distro = "arch"
        elif compiled_by.startswith("geeko@") or "(SUSE Linux)" in compiler:
            distro = "suse"
        return cls(
            release=release,
            major=major,
            minor=minor,
            patch=patch,
            stable=stable,
            rc=rc,
            local=local,
            compiled_by=compiled_by,
            compiler=compiler,
            build=build,
            distro=distro,
            upstream=upstream,
            banner=banner,
        )

    @property
    def base_tag(self) -> str:
        """The tag of the release this kernel's series started from: ``v6.1``, ``v2.6.32``."""
        if (self.major, self.minor) == (2, 6):
            return f"v2.6.{self.patch}"
        return f"v{self.major}.{self.minor}"


def _paren_group(text: str) -> tuple[str, str]:
    """Split ``(a (b) c) rest`` into ``("a (b) c", " rest")``; unbalanced: the whole text."""
    depth = 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return text[1:i], text[i + 1:]
    return text[1:], ""


def _ubuntu_release(sig_release: str) -> str:
    """``5.13.0-22.22-generic`` (signature form, with the upload number) -> ``5.13.0-22-generic``."""
    m = re.match(r"(\d+\.\d+\.\d+-\d+)\.[^-]+(-.*)?$", sig_release)
    if m is None:
        return sig_release
    return m.group(1) + (m.group(2) or "")


def _version_tag(numbers: tuple[int, ...]) -> str:
    """``(6, 1, 187)`` -> ``v6.1.187``; ``(6, 1, 0)`` -> ``v6.1``; ``(2, 6, 32, 0)`` -> ``v2.6.32``."""
    parts = list(numbers)
    keep = 4 if parts[:2] == [2, 6] else 3
    parts = parts[:keep]
    while len(parts) > 2 and parts[-1] == 0 and not (parts[:2] == [2, 6] and len(parts) == 3):
        parts.pop()
    return "v" + ".".join(str(p) for p in parts)


@dataclass(frozen=True)
class TagGuess:
    """The upstream tag chosen for a kernel, and why."""

    #: The git tag, as elixir.bootlin.com and git.kernel.org name it: ``v6.1.187``, ``v6.18-rc3``.
    tag: str
    #: How it was derived: ``override``, ``debian-package``, ``ubuntu-signature``, ``release``,
    #: ``release-rc``, ``fallback`` or ``unknown``.
    derived_from: str
    #: True when the tag is believed to be the upstream release the kernel was built from (distribution
    #: patches aside); False for a ``vMAJOR.MINOR`` fallback or a build past the tag.
    exact: bool
    #: A one-line caveat for the user, or ``None``.
    note: str | None = None
    #: The parsed version, when there was a banner.
    version: KernelVersion | None = None

    def __str__(self) -> str:
        text = f"{self.tag} (from {self.derived_from})"
        return f"{text}: {self.note}" if self.note else text


def kernel_tag(banner: str | KernelVersion) -> TagGuess:
    """The upstream tag for a kernel banner (or release string, or parsed :class:`KernelVersion`).

    - a Debian banner's package version (``Debian 6.1.187-1``) gives ``v6.1.187``;
    - Ubuntu's signature (``(Ubuntu 5.13.0-22.22-generic 5.13.19)``) gives ``v5.13.19``;
    - ``X.Y.0-rcN`` gives ``vX.Y-rcN``; ``X.Y.Z`` with Z > 0 gives ``vX.Y.Z``; a plain ``X.Y.0`` gives
      ``vX.Y``;
    - anything else (``6.1.0-53-cloud-amd64`` without the package version, RHEL's ``4.18.0-477...el8``)
      falls back to ``vMAJOR.MINOR`` with a note.

    Raises ``ValueError`` when no release can be found.
    """
    v = banner if isinstance(banner, KernelVersion) else KernelVersion.parse(banner)
    base = v.base_tag
    series = base[1:]
    if v.distro == "rhel":
        return TagGuess(
            base, "fallback", False,
            f"{v.release} is a RHEL-family kernel: {series} with many backports, so {base} only "
            "approximates its source; use --kernel-tag or --source-dir for exact lines",
            v,
        )
    if v.upstream is not None:
        derived = "ubuntu-signature" if v.distro == "ubuntu" else "debian-package"
        up = v.upstream
        if len(up) < 2 or up[:2] != (v.major, v.minor):
            note = (f"{v.distro} says upstream {'.'.join(map(str, up))}, which is not the {series} series "
                    f"of {v.release}; using it anyway")
            return TagGuess(_version_tag(up), derived, False, note, v)
        return TagGuess(_version_tag(up), derived, True, None, v)
    git = _GIT_DESCRIBE_RE.match(v.local)
    fedora_rc = re.match(r"-0\.rc(\d+)(\.\d{8}git([0-9a-f]+))?", v.local) if v.distro == "fedora" else None
    if fedora_rc is not None and v.rc is None:
        tag = f"{base}-rc{fedora_rc.group(1)}"
        if fedora_rc.group(2):
            note = f"Fedora snapshot of git commit {fedora_rc.group(3)} after {tag}; links point to {tag}"
            return TagGuess(tag, "release-rc", False, note, v)
        return TagGuess(tag, "release-rc", True, None, v)
    if v.rc is not None:
        tag = f"{base}-rc{v.rc}"
        if git is not None:
            return TagGuess(tag, "release-rc", False, _past_tag_note(tag, git), v)
        if v.local.startswith("+"):
            return TagGuess(tag, "release-rc", False, f"built from a tree with changes after {tag}", v)
        if v.local:
            return TagGuess(tag, "release-rc", True, f"local version {v.local!r} ignored", v)
        return TagGuess(tag, "release-rc", True, None, v)
    numbers: tuple[int, ...] = (v.major, v.minor, v.patch)
    if v.stable is not None:
        numbers += (v.stable,)
    is_26 = (v.major, v.minor) == (2, 6)
    has_sublevel = (v.stable or 0) > 0 if is_26 else v.patch > 0
    if has_sublevel or not v.local or v.distro in ("arch", "fedora") or git is not None \
            or v.local.startswith("+"):
        tag = _version_tag(numbers)
        if git is not None:
            return TagGuess(tag, "release", False, _past_tag_note(tag, git), v)
        if v.local.startswith("+"):
            return TagGuess(tag, "release", False, f"built from a tree with changes after {tag}", v)
        if v.local and not v.distro:
            return TagGuess(tag, "release", True, f"local version {v.local!r} assumed to be a build of {tag}",
                            v)
        return TagGuess(tag, "release", True, None, v)
    who = {"debian": "Debian", "ubuntu": "Ubuntu", "suse": "SUSE", "amazon": "Amazon"}.get(v.distro, "")
    hint = ""
    if v.distro == "ubuntu":
        hint = " (the boot log's banner or /proc/version_signature has it)"
    elif v.distro == "debian":
        hint = " (the full banner has 'Debian X.Y.Z-N')"
    what = f"the {who} release {v.release}" if who else f"the release {v.release}"
    return TagGuess(
        base, "fallback", False,
        f"{what} does not say which upstream {series}.z it was built from{hint}; links point to {base} "
        "and lines may differ: use --kernel-tag to set the exact tag",
        v,
    )


def _past_tag_note(tag: str, git: re.Match[str]) -> str:
    return f"built from {int(git.group(1))} commits after {tag} (commit {git.group(2)}); links point to {tag}"


_TAG_RE = re.compile(r"\d+\.\d+(?:\.\d+){0,2}(?:-rc\d+)?")


def normalize_tag(tag: str) -> str:
    """A user-given ``--kernel-tag``: ``6.1.187`` -> ``v6.1.187``; others (``v6.1``, custom) unchanged.

    Raises ``ValueError`` for an empty tag or one with whitespace or control characters.
    """
    tag = tag.strip()
    if not tag or any(ch.isspace() or ord(ch) < 32 for ch in tag):
        raise ValueError(f"bad kernel tag {tag!r}")
    if _TAG_RE.fullmatch(tag):
        return "v" + tag
    return tag


def choose_tag(banner: str | None = None, override: str | None = None) -> TagGuess:
    """The tag to use: ``override`` (``--kernel-tag``) if given, else :func:`kernel_tag` of ``banner``,
    else ``latest`` (Elixir's alias for the newest release) with a note."""
    if override:
        version: KernelVersion | None = None
        if banner:
            try:
                version = KernelVersion.parse(banner)
            except ValueError:
                version = None
        return TagGuess(normalize_tag(override), "override", True, None, version)
    if banner:
        try:
            return kernel_tag(banner)
        except ValueError:
            pass
    return TagGuess("latest", "unknown", False,
                    "kernel version unknown (no linux_banner); links point to the latest release", None)


# --- reading the banner out of a vmlinux -----------------------------------------------------------


def read_banner(elf_path: str | Path) -> str | None:
    """The ``linux_banner`` string of a vmlinux (without the trailing newline), or ``None`` when the file
    has no such symbol or its section holds no data (a stripped debug-only file).

    Finds the symbol through ``.symtab``/``.strtab`` (a direct scan of the raw tables, without building
    pyelftools' name index of every symbol), then reads the bytes at
    the symbol's address through the section that contains it. Raises ``OSError`` when the file cannot
    be read and ``elftools.common.exceptions.ELFError`` when it is not ELF.
    """
    from elftools.elf.elffile import ELFFile

    with open(elf_path, "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        if symtab is None:
            return None
        addr_size = _find_symbol(elf, f, "linux_banner")
        if addr_size is None:
            return None
        addr, size = addr_size
        for sec in elf.iter_sections():
            start = sec["sh_addr"]
            if sec["sh_type"] == "SHT_NOBITS" or not start or not (start <= addr < start + sec["sh_size"]):
                continue
            f.seek(sec["sh_offset"] + addr - start)
            data = f.read(size if size else min(1024, start + sec["sh_size"] - addr))
            data = data.split(b"\0", 1)[0]
            text = data.decode("utf-8", errors="replace").rstrip("\n")
            return text or None
    return None


def _find_symbol(elf: object, f: BinaryIO, name: str) -> tuple[int, int] | None:
    """(st_value, st_size) of the first defined symbol called ``name``, scanning .symtab directly."""
    from elftools.elf.elffile import ELFFile

    assert isinstance(elf, ELFFile)
    symtab = elf.get_section_by_name(".symtab")
    if symtab is None:
        return None
    strtab = elf.get_section(symtab["sh_link"])
    f.seek(strtab["sh_offset"])
    strings = f.read(strtab["sh_size"])
    needle = name.encode() + b"\0"
    offsets: set[int] = set()
    pos = strings.find(needle)
    while pos >= 0:
        offsets.add(pos)
        pos = strings.find(needle, pos + 1)
    if not offsets:
        return None
    endian = "<" if elf.little_endian else ">"
    if elf.elfclass == 64:
        fmt, entsize = endian + "IBBHQQ", 24
    else:
        fmt, entsize = endian + "IIIBBH", 16
    f.seek(symtab["sh_offset"])
    table = f.read(symtab["sh_size"])
    for entry in struct.iter_unpack(fmt, table[: len(table) - len(table) % entsize]):
        if elf.elfclass == 64:
            st_name, _info, _other, shndx, value, size = entry
        else:
            st_name, value, size, _info, _other, shndx = entry
        if st_name in offsets and shndx != 0:
            return int(value), int(size)
    return None
