"""Kernel version -> upstream tag mapping on real banners (ksym.version)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from anchors import missing

from ksym.version import KernelVersion, TagGuess, choose_tag, kernel_tag, normalize_tag, read_banner

DATA = Path(__file__).parent / "data" / "banners" / "banners.json"
BANNERS: list[dict[str, Any]] = json.loads(DATA.read_text())["banners"]

DEBIAN_BANNER = (
    "Linux version 6.1.0-53-cloud-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14+deb12u1)"
    " 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.187-1 (2026-09-07)"
)


def _vmlinux() -> Path:
    candidates = [
        os.environ.get("KSYM_TEST_VMLINUX", ""),
        os.path.join(os.environ.get("KSYM_TESTDATA") or "/var/tmp/ksym-testdata", "vmlinux-6.1.0-53-cloud-amd64"),
        "/work/cache/dbg/usr/lib/debug/boot/vmlinux-6.1.0-53-cloud-amd64",
    ]
    for cand in candidates:
        if cand and os.path.isfile(cand):
            return Path(cand)
    missing("Debian 6.1 debug vmlinux not found (set KSYM_TEST_VMLINUX; tried "
            + ", ".join(c for c in candidates if c) + ")")


@pytest.mark.parametrize("entry", BANNERS, ids=[b["name"] for b in BANNERS])
def test_banner_data(entry: dict[str, Any]) -> None:
    guess = kernel_tag(entry["text"])
    assert guess.tag == entry["tag"]
    assert guess.derived_from == entry["derived_from"]
    assert guess.exact is entry["exact"]
    assert guess.version is not None
    assert guess.version.release == entry["release"]
    assert guess.version.distro == entry["distro"]
    if guess.derived_from == "fallback" or not guess.exact:
        assert guess.note, "a fallback or inexact tag must carry a note"
        assert "\n" not in guess.note


def test_debian_banner_parts() -> None:
    v = KernelVersion.parse(DEBIAN_BANNER)
    assert (v.major, v.minor, v.patch, v.rc) == (6, 1, 0, None)
    assert v.local == "-53-cloud-amd64"
    assert v.compiled_by == "debian-kernel@lists.debian.org"
    assert v.compiler.startswith("gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0")
    assert v.build == "#1 SMP PREEMPT_DYNAMIC Debian 6.1.187-1 (2026-09-07)"
    assert v.upstream == (6, 1, 187)
    assert v.base_tag == "v6.1"
    # The compiler's "Debian 12.2.0-14" must not be taken for the kernel's package version.
    truncated = DEBIAN_BANNER.split(" #1 ")[0]
    assert kernel_tag(truncated).tag == "v6.1"


def test_rhel_fallback_note() -> None:
    guess = kernel_tag("4.18.0-477.10.1.el8_8.x86_64")
    assert (guess.tag, guess.exact, guess.derived_from) == ("v4.18", False, "fallback")
    assert guess.note is not None and "--kernel-tag" in guess.note


def test_unknown_suffix_keeps_sublevel_with_note() -> None:
    guess = kernel_tag("6.18.44-fc-v782")
    assert guess.tag == "v6.18.44"
    assert guess.note is not None and "-fc-v782" in guess.note


def test_past_tag_note() -> None:
    guess = kernel_tag("6.18.0-rc3-00012-g1a2b3c4d5e6f")
    assert guess.tag == "v6.18-rc3"
    assert guess.note is not None
    assert "12 commits after v6.18-rc3" in guess.note and "1a2b3c4d5e6f" in guess.note


def test_bad_text() -> None:
    with pytest.raises(ValueError):
        KernelVersion.parse("no version here")
    with pytest.raises(ValueError):
        kernel_tag("")


def test_normalize_and_choose() -> None:
    assert normalize_tag("6.1.187") == "v6.1.187"
    assert normalize_tag("v6.18-rc3") == "v6.18-rc3"
    assert normalize_tag("6.18-rc3") == "v6.18-rc3"
    assert normalize_tag("my-custom-tag") == "my-custom-tag"
    with pytest.raises(ValueError):
        normalize_tag("v6.1 extra")
    over = choose_tag(DEBIAN_BANNER, "6.1.186")
    assert (over.tag, over.derived_from, over.exact) == ("v6.1.186", "override", True)
    assert over.version is not None and over.version.release == "6.1.0-53-cloud-amd64"
    assert choose_tag(DEBIAN_BANNER).tag == "v6.1.187"
    unknown = choose_tag(None)
    assert (unknown.tag, unknown.exact) == ("latest", False) and unknown.note
    assert isinstance(str(unknown), str)


def test_str() -> None:
    assert str(kernel_tag(DEBIAN_BANNER)) == "v6.1.187 (from debian-package)"
    assert str(TagGuess("v6.1", "fallback", False, "why")) == "v6.1 (from fallback): why"


@pytest.mark.vmlinux
def test_read_banner_debian_vmlinux() -> None:
    banner = read_banner(_vmlinux())
    assert banner == DEBIAN_BANNER
    guess = kernel_tag(banner)
    assert (guess.tag, guess.derived_from, guess.exact) == ("v6.1.187", "debian-package", True)
    assert guess.note is None


def test_read_banner_not_a_kernel(tmp_path: Path) -> None:
    # An ELF file without linux_banner: the Python interpreter itself.
    import sys

    assert read_banner(Path(sys.executable).resolve()) is None


def test_running_kernel_proc_version() -> None:
    try:
        text = Path("/proc/version").read_text()
    except OSError as exc:
        pytest.skip(f"/proc/version not readable: {exc}")
    release = os.uname().release
    guess = kernel_tag(text)
    assert guess.version is not None
    assert guess.version.release == release
    m = re.match(r"(\d+)\.(\d+)", release)
    assert m is not None
    assert guess.tag.startswith(f"v{m.group(1)}.{m.group(2)}")
    assert re.fullmatch(r"v\d+\.\d+(\.\d+)*(-rc\d+)?", guess.tag)
    print(f"running kernel {release}: {guess}")
