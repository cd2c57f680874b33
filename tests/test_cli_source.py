"""`ksym resolve --list/--links/--json` end to end: source from a local tree, from a loopback HTTP server,
links for the image's kernel version; compared with the kernel's own `scripts/faddr2line --list`."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from anchors import REPO_ROOT, find_faddr2line, find_test_vmlinux, fixture, missing, require_test_vmlinux

FIXTURE_SRC = REPO_ROOT / "fixtures" / "src"
SPECS = ["__ip_local_out+0x10", "ip_local_out_like+0x40/0x90", "raw_ioctl+0x5"]


def _ksym(*args: str, cwd: Path | None = None, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KSYM_CACHE_DIR": str(cache), "XDG_CACHE_HOME": str(cache)}
    return subprocess.run([sys.executable, "-m", "ksym", "resolve", *args], capture_output=True, text=True,
                          check=False, cwd=cwd, env=env, timeout=600)


def _faddr2line_list(elf: Path, specs: list[str], tree: Path) -> str:
    script = find_faddr2line()
    if script is None:
        missing("scripts/faddr2line not found: run tools/fetch-testdata.sh")
    got = subprocess.run(["bash", str(script), "--list", str(elf), *specs], capture_output=True, text=True,
                         check=False, cwd=tree, env={**os.environ, "LC_ALL": "C"})
    return got.stdout


@pytest.fixture
def http_tree() -> Iterator[str]:
    """A loopback HTTP server serving fixtures/src under /<tag>/<path>."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, directory=str(FIXTURE_SRC), **kw)  # type: ignore[arg-type]

        def translate_path(self, path: str) -> str:
            # drop the tag component
            parts = path.split("/", 2)
            return super().translate_path("/" + (parts[2] if len(parts) > 2 else ""))

        def log_message(self, *a: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/{{tag}}/{{path}}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_list_from_the_current_kernel_tree_matches_faddr2line(tmp_path: Path) -> None:
    elf = fixture("kshapes-dwarf5.elf")
    want = _faddr2line_list(elf, SPECS, FIXTURE_SRC)
    got = _ksym("--list", "--vmlinux", str(elf), "--offline", *SPECS, cwd=FIXTURE_SRC, cache=tmp_path)
    assert ">22<" in want  # the script really listed source
    assert got.stdout == want


def test_list_over_http_matches_and_is_cached(tmp_path: Path, http_tree: str) -> None:
    elf = fixture("kshapes-dwarf5.elf")
    want = _faddr2line_list(elf, SPECS, FIXTURE_SRC)
    args = ["--list", "--vmlinux", str(elf), "--kernel-tag", "v1.0", "--source-url", http_tree, *SPECS]
    got = _ksym(*args, cwd=tmp_path, cache=tmp_path / "c")
    assert got.stdout == want, got.stderr
    # the files are in the disk cache now: --offline still lists them
    offline = _ksym(*args, "--offline", cwd=tmp_path, cache=tmp_path / "c")
    assert offline.stdout == want


def test_list_without_source_still_prints_locations(tmp_path: Path) -> None:
    elf = fixture("kshapes-dwarf5.elf")
    got = _ksym("--list", "--offline", "--vmlinux", str(elf), "raw_ioctl+0x5", cwd=tmp_path, cache=tmp_path)
    assert got.returncode == 0
    assert "raw_ioctl at net/ipv4/raw.c:7" in got.stdout
    assert "warning" in got.stderr and "Traceback" not in got.stderr


def test_links_and_json_carry_elixir_urls(tmp_path: Path) -> None:
    elf = fixture("kshapes-dwarf5.elf")
    got = _ksym("--links", "--kernel-tag", "6.1.187", "--vmlinux", str(elf), "__ip_local_out+0x10", cache=tmp_path)
    lines = got.stdout.splitlines()
    assert lines[1] == ("skb_network_header at include/linux/skbuff.h:22  "
                        "https://elixir.bootlin.com/linux/v6.1.187/source/include/linux/skbuff.h#L22")
    js = _ksym("--json", "--kernel-tag", "v6.1.187", "--elixir-url", "http://elixir.example.test/",
               "--vmlinux", str(elf), "__ip_local_out+0x10", cache=tmp_path)
    chain = json.loads(js.stdout)["chain"]
    assert chain[-1]["url"] == "http://elixir.example.test/linux/v6.1.187/source/net/ipv4/ip_output.c#L25"
    assert chain[-1]["ident_url"] == "http://elixir.example.test/linux/v6.1.187/A/ident/__ip_local_out"


def test_real_vmlinux_links_use_the_debian_upstream_tag(tmp_path: Path) -> None:
    vmlinux = require_test_vmlinux()
    got = _ksym("--json", "--vmlinux", str(vmlinux), "__ip_local_out+222", cache=tmp_path)
    chain = json.loads(got.stdout)["chain"]
    assert chain[0]["url"] == "https://elixir.bootlin.com/linux/v6.1.187/source/include/linux/netfilter.h#L257"


def test_real_vmlinux_list_matches_faddr2line_in_the_linux_source_tree(tmp_path: Path) -> None:
    vmlinux, script = find_test_vmlinux(), find_faddr2line()
    if vmlinux is None or script is None:
        if os.environ.get("CI"):
            pytest.fail("test data missing: tools/fetch-testdata.sh")
        pytest.skip("test data missing: run tools/fetch-testdata.sh")
    tree = script.parent.parent
    specs = ["__ip_local_out+222", "ip_local_out+29", "__ip_queue_xmit+367"]
    want = _faddr2line_list(vmlinux, specs, tree)
    got = _ksym("--list", "--offline", "--vmlinux", str(vmlinux), *specs, cwd=tree, cache=tmp_path)
    assert got.stdout == want
    assert ">257<\t\t\tret = nf_hook_slow(skb, &state, hook_head, 0);" in got.stdout
    # the same from anywhere with --source-dir
    again = _ksym("--list", "--offline", "--source-dir", str(tree), "--vmlinux", str(vmlinux), *specs,
                  cwd=tmp_path, cache=tmp_path)
    assert again.stdout == want


def test_list_with_links_prints_both(tmp_path: Path) -> None:
    """--list --links (the README's example): the listing of --list, each location line ending with its link."""
    elf = fixture("kshapes-dwarf5.elf")
    listed = _ksym("--list", "--offline", "--vmlinux", str(elf), *SPECS, cwd=FIXTURE_SRC, cache=tmp_path)
    linked = _ksym("--links", "--kernel-tag", "v6.1.187", "--vmlinux", str(elf), *SPECS, cache=tmp_path)
    both = _ksym("--list", "--links", "--offline", "--kernel-tag", "v6.1.187", "--vmlinux", str(elf), *SPECS,
                 cwd=FIXTURE_SRC, cache=tmp_path)
    assert both.returncode == 0, both.stderr
    urls = {line.split("  ")[0].replace("(inlined by) ", ""): line.split("  ")[1]
            for line in linked.stdout.splitlines() if "  https://" in line}
    assert urls and ">22<" in listed.stdout
    # the same lines as --list, with each location line followed by the link --links prints for it
    want = []
    for line in listed.stdout.splitlines():
        key = line.replace("(inlined by) ", "")
        want.append(f"{line}  {urls[key]}" if key in urls else line)
    assert both.stdout.splitlines() == want


def test_real_vmlinux_list_uses_a_local_tree_before_the_network(tmp_path: Path) -> None:
    """$KSYM_SOURCE_DIR names the tree once; a tree beside the vmlinux is found too; neither asks the network
    (the source URL here refuses every connection)."""
    vmlinux, script = find_test_vmlinux(), find_faddr2line()
    if vmlinux is None or script is None:
        if os.environ.get("CI"):
            pytest.fail("test data missing: tools/fetch-testdata.sh")
        pytest.skip("test data missing: run tools/fetch-testdata.sh")
    tree = script.parent.parent
    dead = "http://127.0.0.1:9/{path}?h={tag}"
    want = ">257<\t\t\tret = nf_hook_slow(skb, &state, hook_head, 0);"
    env = {**os.environ, "KSYM_CACHE_DIR": str(tmp_path / "c"), "XDG_CACHE_HOME": str(tmp_path / "c"),
           "KSYM_SOURCE_DIR": str(tree)}
    named = subprocess.run([sys.executable, "-m", "ksym", "resolve", "--list", "--source-url", dead, "--vmlinux",
                            str(vmlinux), "__ip_local_out+222"], capture_output=True, text=True, check=False,
                           cwd=tmp_path, env=env, timeout=600)
    assert want in named.stdout, named.stderr
    assert "warning" not in named.stderr and "127.0.0.1" not in named.stderr
    # the same tree beside the vmlinux (as tools/fetch-testdata.sh lays them out), without the variable
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / vmlinux.name).symlink_to(vmlinux)
    (tmp_path / "data" / "linux-source-6.1").symlink_to(tree)
    del env["KSYM_SOURCE_DIR"]
    beside = subprocess.run([sys.executable, "-m", "ksym", "resolve", "--list", "--source-url", dead, "--vmlinux",
                             str(tmp_path / "data" / vmlinux.name), "__ip_local_out+222"], capture_output=True,
                            text=True, check=False, cwd=tmp_path, env=env, timeout=600)
    assert want in beside.stdout, beside.stderr
    assert "warning" not in beside.stderr


@pytest.mark.parametrize("option", [("--elixir-url", "ftp://elixir.example.test"), ("--kernel-tag", "v6 .1")])
@pytest.mark.parametrize("command", ["resolve", "annotate"])
def test_a_malformed_link_option_is_a_usage_error(tmp_path: Path, command: str, option: tuple[str, str]) -> None:
    """A bad ``--elixir-url`` or ``--kernel-tag`` is one line and exit 2 (it was an internal error, 70)."""
    elf = fixture("kshapes-dwarf5.elf")
    env = {**os.environ, "KSYM_CACHE_DIR": str(tmp_path)}
    args = ["--links", "__ip_local_out+0x10"] if command == "resolve" else ["--json", "-"]
    got = subprocess.run([sys.executable, "-m", "ksym", command, "--vmlinux", str(elf), *option, *args],
                         input=" __ip_local_out+0x10/0x40\n", capture_output=True, text=True, check=False,
                         env=env, timeout=600)
    assert got.returncode == 2, got.stderr
    assert len(got.stderr.splitlines()) == 1 and "internal error" not in got.stderr, got.stderr
    assert option[1].split()[0] in got.stderr and got.stdout == ""
