#!/usr/bin/env bash
# One command for a fresh Debian/Ubuntu machine (run as root, or with sudo available):
#   bash tools/setup.sh demo   install ksym into .venv, resolve frames of the shipped fixture, annotate a dump of
#                              it (fixtures/demo-dump.txt) and print the next step
#   bash tools/setup.sh test   install everything the suite runs (binutils, gcc, clang and lld, llvm-symbolizer,
#                              bcc, kernel headers for bcc, chromium, the real Debian 6.1 debug vmlinux +
#                              linux-source, the arm64 debug vmlinux and aarch64 binutils), then ruff, mypy
#                              and the whole pytest suite
# .ci/run calls "test". Environment: KSYM_TESTDATA (default /var/tmp/ksym-testdata).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-demo}
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive

apt_install() {
  if command -v apt-get >/dev/null; then
    echo "setup: apt-get install $*"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  else
    echo "setup: no apt-get here: install $* yourself" >&2
  fi
}

make_venv() {
  # /usr/bin/python3: Debian's python3-bpfcc (bcc) lives in its dist-packages, which the venv sees
  local py=/usr/bin/python3
  [ -x "$py" ] || py=$(command -v python3)
  if [ ! -x .venv/bin/python ]; then
    "$py" -m venv --system-site-packages .venv
  fi
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".$1"
}

demo_run() {
  echo "\$ ksym $*"
  .venv/bin/ksym "$@"
  echo
}

case "$mode" in
  demo)
    if ! /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null; then
      apt_install python3 python3-venv python3-pip
    fi
    make_venv ""
    # the shipped fixture, a small ELF built like a kernel (fixtures/README.md); tests/test_first_use.py runs
    # these same demo_run lines
    fx=fixtures/bin/kshapes-dwarf5.elf
    demo_run resolve --vmlinux "$fx" __ip_local_out+0x10 raw_ioctl+0x5
    demo_run annotate --vmlinux "$fx" fixtures/demo-dump.txt
    cat <<'EOF'
Next, this machine's kernel: ksym needs its debug vmlinux (it finds it by build id); this says which package
to install, or which file it found:
  .venv/bin/ksym debuginfo --running
then resolve frames, or put file:line under every frame of a dump (dmesg, an oops, perf, bpftrace, ftrace):
  .venv/bin/ksym resolve __ip_local_out+219
  dmesg | .venv/bin/ksym annotate
More: README.md ("Use it on a real kernel"), docs/usage.md.
EOF
    ;;
  test)
    # Every command the suite runs (tests/, fixtures/build.sh):
    #   binutils (addr2line, readelf, objcopy, objdump), binutils-aarch64-linux-gnu (the arm64 anchors),
    #   gawk (scripts/faddr2line --list), llvm (llvm-symbolizer), gcc, clang and lld (fixtures/build.sh,
    #   rebuilt byte for byte by tests/test_anchors.py), xz-utils and zstd (.ko.xz/.ko.zst files),
    #   util-linux (setpriv), iproute2, nftables, curl and bpftool (dropcapture's kernel tests),
    #   libpcap0.8 (dropcapture --pcap-filter compiles with it; its tests use it as the reference),
    #   chromium (the HTML report in a real browser); elfutils (eu-addr2line) and time for bench/;
    #   tshark reads back dropcapture's --pcapng files (answer its debconf question first: no setuid dumpcap)
    if command -v debconf-set-selections >/dev/null; then
      echo "wireshark-common wireshark-common/install-setuid boolean false" | $SUDO debconf-set-selections
    fi
    apt_install python3 python3-venv python3-pip binutils binutils-aarch64-linux-gnu elfutils gawk xz-utils \
      zstd ca-certificates gcc clang lld llvm time util-linux iproute2 nftables curl bpftool libpcap0.8 chromium \
      tshark
    if [ "$(id -u)" = 0 ] && [ -d /sys/kernel/btf ]; then
      sh tools/dropcapture-setup.sh
    else
      echo "setup: not root or no BTF: dropcapture's kernel tests will skip"
    fi
    bash tools/fetch-testdata.sh
    make_venv "[test]"
    .venv/bin/ruff check src tests bench tools
    .venv/bin/mypy src
    set +e
    .venv/bin/python -m pytest -rs "${@:2}"
    rc=$?
    set -e
    if [ "$rc" = 5 ]; then
      echo "setup: pytest collected no tests"
      exit 0
    fi
    exit "$rc"
    ;;
  *)
    echo "usage: bash tools/setup.sh demo|test [pytest args]" >&2
    exit 2
    ;;
esac
