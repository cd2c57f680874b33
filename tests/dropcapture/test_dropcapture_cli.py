"""Command line: usage errors and the distinct exit codes, each with a one-line message."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from dc_helpers import cli_env, dropcapture_cmd

from dropcapture.cli import main
from dropcapture.errors import EXIT_HEADERS, EXIT_NO_BCC, EXIT_OK, EXIT_PRIVILEGE, EXIT_USAGE


def _run(args: list[str], env: dict[str, str] | None = None, prefix: list[str] | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run((prefix or []) + args, check=False, capture_output=True, text=True, env=env or cli_env(),
                          timeout=timeout, cwd="/")


def _one_line_error(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("dropcapture: error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_help() -> None:
    r = _run(dropcapture_cmd("--help"))
    assert r.returncode == EXIT_OK
    assert "--comm" in r.stdout and "exit codes" in r.stdout and "--ebpf" not in r.stdout


@pytest.mark.parametrize("args", [["--proto", "bogus"], ["--host", "not-an-ip"], ["--port", "0"],
                                  ["--count", "0"], ["--duration", "-1"], ["--proto", "999"], ["--proto", "tcp,256"],
                                  ["--pid", "-5"], ["--pid", str(1 << 23)], ["--comm", ""], ["--buffer-pages", "3"],
                                  ["--no-stack", "--vmlinux", "/proc/self/exe"],
                                  ["--save", "/nonexistent-dropcapture-dir/drops.txt"], ["--save", "/"],
                                  ["--host", "10.1.2.3/16"], ["--host", "fd00::/129"], ["--snaplen", "5000"],
                                  ["--snaplen", "-1"], ["--netns", "/nonexistent-dropcapture-ns"],
                                  ["--netns", "/etc/hostname"], ["--netns", "0"]])
def test_usage_errors(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == EXIT_USAGE
    _one_line_error(capsys.readouterr().err)


def test_usage_error_comes_before_bpf() -> None:
    # --save into a missing directory: exit 2 at once, bcc never imported, so no program compiled or loaded
    code = (
        "import sys, time\nfrom dropcapture.cli import main\nt = time.monotonic()\n"
        "rc = main(['--save', '/nonexistent-dropcapture-dir/drops.txt', '--proto', 'udp'])\n"
        "print(rc, 'bcc' in sys.modules, round(time.monotonic() - t, 3))\n"
    )
    r = _run([sys.executable, "-c", code])
    rc, bcc_loaded, took = r.stdout.split()
    assert (int(rc), bcc_loaded) == (EXIT_USAGE, "False"), r.stderr
    assert float(took) < 1.0
    assert "nonexistent-dropcapture-dir" in _one_line_error(r.stderr)


def test_unknown_reason(need_tracefs: None) -> None:
    r = _run(dropcapture_cmd("--reason", "NO_SUCH_REASON", "--count", "1"))
    assert r.returncode == EXIT_USAGE
    assert "NO_SUCH_REASON" in _one_line_error(r.stderr)


def test_ebpf_prints_program(need_tracefs: None, need_btf: None) -> None:
    r = _run(dropcapture_cmd("--ebpf", "--comm", "curl", "--proto", "tcp"))
    assert r.returncode == EXIT_OK, r.stderr
    assert "int dc_kfree_skb(void *ctx)" in r.stdout and "#define SKB_OFF_HEAD" in r.stdout


def test_bcc_missing() -> None:
    # -S: no site-packages, so no bcc - the real import failure, not a mock
    r = _run([sys.executable, "-S", "-m", "dropcapture", "--count", "1"])
    assert r.returncode == EXIT_NO_BCC, r.stderr
    line = _one_line_error(r.stderr)
    assert "python3-bpfcc" in line


def test_not_root(need_kernel: None) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) missing")
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = _run([sys.executable, "-c", "import dropcapture.cli"], prefix=nobody)
    if probe.returncode != 0:
        pytest.skip(f"user nobody cannot read the checkout or the venv here: {probe.stderr.strip()[-200:]}")
    r = _run(dropcapture_cmd("--count", "1", "--duration", "1"), prefix=nobody)
    assert r.returncode == EXIT_PRIVILEGE, r.stderr
    assert "root" in _one_line_error(r.stderr)


def test_headers_unusable(need_kernel: None, tmp_path: object) -> None:
    env = cli_env()
    env["BCC_KERNEL_SOURCE"] = str(tmp_path)  # an empty directory: bcc finds no headers there
    r = _run(dropcapture_cmd("--count", "1", "--duration", "1"), env=env)
    assert r.returncode == EXIT_HEADERS, r.stderr
    assert "dropcapture-setup.sh" in _one_line_error(r.stderr)


def test_headers_missing_message(need_kernel: None) -> None:
    from dropcapture.capture import check_headers
    from dropcapture.errors import HeadersError

    saved = os.environ.pop("BCC_KERNEL_SOURCE", None)
    try:
        check_headers()  # present on a prepared machine
    finally:
        if saved is not None:
            os.environ["BCC_KERNEL_SOURCE"] = saved
    assert HeadersError("x").exit_code == EXIT_HEADERS


def test_bcc_is_imported_lazily() -> None:
    code = "import sys, dropcapture, dropcapture.cli; assert 'bcc' not in sys.modules; print('ok')"
    r = _run([sys.executable, "-c", code])
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_tracefs_missing_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from dropcapture import tpformat
    from dropcapture.errors import EXIT_UNSUPPORTED, TracefsError

    monkeypatch.setattr(tpformat, "TRACEFS_DIRS", ("/nonexistent/tracing",))
    with pytest.raises(TracefsError) as info:
        tpformat.read_format()
    assert "mount -t tracefs nodev /sys/kernel/tracing" in str(info.value)
    assert info.value.exit_code == EXIT_UNSUPPORTED


def test_ctrl_c_while_starting_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # Ctrl-C before the capture's handler exists (here: while ksym's annotator loads) is exit 130, one line
    from dropcapture import symbolize
    from dropcapture.errors import EXIT_INTERRUPTED

    def interrupted(*_args: object, **_kw: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(symbolize, "ksym_annotator", interrupted)
    assert main(["--count", "1"]) == EXIT_INTERRUPTED
    assert "interrupted" in _one_line_error(capsys.readouterr().err)
