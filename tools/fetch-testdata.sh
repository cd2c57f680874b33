#!/usr/bin/env bash
# Fetch the real-kernel test data: the Debian 6.1 debug vmlinux and the same version's linux-source
# (its scripts/faddr2line is the anchor the tests run), and the arm64 debug vmlinux of the same version
# (tests/test_arm64.py; only the vmlinux is kept, in $KSYM_TESTDATA/arm64). Idempotent; run as root
# (apt-get download; the arm64 one needs "dpkg --add-architecture arm64" and an apt-get update, done here).
#   KSYM_TESTDATA  where to put it (default /var/tmp/ksym-testdata)
#   KSYM_NO_ARM64  set to skip the arm64 vmlinux (801 MB download)
# Downloads 1.2 GB (282 MB + 139 MB + 801 MB packages) and keeps 2.5 GB: the amd64 vmlinux (562 MB), the
# netfilter/IPv4/IPv6 module debug files (176 MB), the unpacked linux-source tree (1.5 GB) and the arm64
# vmlinux (299 MB); 3.3 GB at the peak, while it unpacks. Each step prints one line; downloads show
# apt's progress bar on a terminal, and a line every 20 s otherwise.
# The pinned pair is 6.1.0-53 / 6.1.187-1; when the archive no longer has it, the newest matching
# pair is taken, with a message.
set -euo pipefail
DEST=${KSYM_TESTDATA:-/var/tmp/ksym-testdata}
ABI=6.1.0-53
SRCVER=6.1.187-1
mkdir -p "$DEST"
TMPS=()
cleanup() { [ "${#TMPS[@]}" = 0 ] || rm -rf "${TMPS[@]}"; }
trap cleanup EXIT

say() { echo "fetch-testdata: $*"; }
die() { echo "fetch-testdata: $*" >&2; exit 1; }

# SCRATCH: a fresh directory under $1 that apt's unprivileged _apt user may download into, removed at exit
scratch() {
  SCRATCH=$(mktemp -d "$1/.x.XXXXXX")
  chown _apt "$SCRATCH" 2>/dev/null || true
  TMPS+=("$SCRATCH")
}

# the package lists, once per run: a pinned package the lists name may be gone from the archive already
UPDATED=
update_lists() {
  [ -n "$UPDATED" ] || { say "apt-get update"; apt-get update -qq; UPDATED=1; }
}

size_mb() { # the download size of package $1 (name[=version][:arch]) in MB
  # awk reads to the end: an early exit would kill apt-cache with SIGPIPE, a failure under pipefail
  apt-cache show "$1" 2>/dev/null | awk '/^Size:/ && !done { printf "%d", $2 / 1000000 + 0.5; done = 1 }'
}

available() { # every package named is in the apt lists
  local p
  for p in "$@"; do apt-cache show "$p" >/dev/null 2>&1 || return 1; done
}

download() { # $1: directory, then the packages; one line with the sizes, then apt's progress
  local dir=$1 total=0 mb p pid
  shift
  for p in "$@"; do
    mb=$(size_mb "$p")
    total=$((total + ${mb:-0}))
  done
  say "downloading $* ($total MB) into $dir"
  if [ -t 1 ]; then
    (cd "$dir" && apt-get download "$@")
    return
  fi
  # not a terminal (CI): apt prints no progress there; a line every 20 s instead of one per KB
  (cd "$dir" && apt-get download "$@") &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      sleep 2
      kill -0 "$pid" 2>/dev/null || break
    done
    kill -0 "$pid" 2>/dev/null && say "  $(du -sm "$dir" | cut -f1) of $total MB"
  done
  wait "$pid" || die "apt-get download $* failed"
}

fetch_amd64() {
  if [ -s "$DEST/vmlinux-$ABI-cloud-amd64" ] && [ -x "$DEST/linux-source-6.1/scripts/faddr2line" ] &&
     [ -d "$DEST/modules/kernel/net/netfilter" ]; then
    say "test data present in $DEST"
    return 0
  fi
  command -v apt-get >/dev/null || die "needs apt-get (Debian/Ubuntu)"
  local pkg dbg src tmp
  update_lists
  if ! available "linux-image-$ABI-cloud-amd64-dbg" "linux-source-6.1=$SRCVER"; then
    pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-cloud-amd64-dbg$' | awk '{print $1}' | sort -V | tail -1)
    [ -n "$pkg" ] || die "no linux-image-6.1.0-*-cloud-amd64-dbg in the archive"
    ABI=$(echo "$pkg" | sed 's/^linux-image-\(6\.1\.0-[0-9]*\)-cloud-amd64-dbg$/\1/')
    SRCVER=$(apt-cache show "$pkg" | awk '/^Version:/ && !done {print $2; done = 1}')
    echo "fetch-testdata: pinned 6.1.0-53/6.1.187-1 is gone; using $pkg $SRCVER" >&2
  fi
  dbg="linux-image-$ABI-cloud-amd64-dbg"
  src="linux-source-6.1=$SRCVER"
  scratch "$DEST"
  tmp=$SCRATCH
  download "$tmp" "$dbg" "$src"
  say "unpacking vmlinux-$ABI-cloud-amd64 and the netfilter/IPv4/IPv6 module debug files"
  dpkg -x "$tmp"/linux-image-"$ABI"-cloud-amd64-dbg_*.deb "$tmp/dbg"
  mv -f "$tmp/dbg/usr/lib/debug/boot/vmlinux-$ABI-cloud-amd64" "$DEST/"
  # keep the name the tests look for
  [ "$ABI" = 6.1.0-53 ] || ln -sf "vmlinux-$ABI-cloud-amd64" "$DEST/vmlinux-6.1.0-53-cloud-amd64"
  # module debug files (ET_REL) of the netfilter and IPv4/IPv6 stacks, for module frames
  rm -rf "$DEST/modules"
  mkdir -p "$DEST/modules/kernel/net"
  local d
  for d in netfilter ipv4 ipv6; do
    if [ -d "$tmp/dbg/usr/lib/debug/lib/modules/$ABI-cloud-amd64/kernel/net/$d" ]; then
      mv "$tmp/dbg/usr/lib/debug/lib/modules/$ABI-cloud-amd64/kernel/net/$d" "$DEST/modules/kernel/net/"
    fi
  done
  rm -rf "$tmp/dbg" "$tmp"/linux-image-*.deb  # the rest of the package (1 GB unpacked) before the source
  say "unpacking linux-source-6.1 $SRCVER (1.5 GB)"
  dpkg -x "$tmp"/linux-source-6.1_*.deb "$tmp/src"
  rm -rf "$DEST/linux-source-6.1"
  tar -C "$DEST" -xJf "$tmp"/src/usr/src/linux-source-6.1.tar.xz
  rm -rf "$tmp"
  say "test data ready in $DEST"
}

fetch_arm64() {
  local dir="$DEST/arm64" abi=6.1.0-53 pkg tmp
  local want="$dir/vmlinux-$abi-arm64"
  if [ -s "$want" ]; then
    say "arm64 test data present in $dir"
    return 0
  fi
  command -v apt-get >/dev/null || die "needs apt-get (Debian/Ubuntu)"
  mkdir -p "$dir"
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
    UPDATED=
  fi
  update_lists
  pkg="linux-image-$abi-arm64-dbg"
  if ! available "$pkg:arm64"; then
    pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-arm64-dbg$' | awk '{print $1}' | sort -V | tail -1)
    [ -n "$pkg" ] || die "no linux-image-6.1.0-*-arm64-dbg in the archive"
    abi=$(echo "$pkg" | sed 's/^linux-image-\(6\.1\.0-[0-9]*\)-arm64-dbg$/\1/')
    echo "fetch-testdata: pinned linux-image-6.1.0-53-arm64-dbg is gone; using $pkg" >&2
  fi
  scratch "$dir"
  tmp=$SCRATCH
  download "$tmp" "$pkg:arm64"
  say "extracting vmlinux-$abi-arm64 (299 MB of the package's 5 GB)"
  # only the vmlinux: tar stops at the first match, so dpkg-deb may die of SIGPIPE; the file's presence is
  # what counts
  { dpkg-deb --fsys-tarfile "$tmp"/linux-image-"$abi"-arm64-dbg_*_arm64.deb 2>/dev/null || true; } |
    tar -x -C "$tmp" --occurrence=1 "./usr/lib/debug/boot/vmlinux-$abi-arm64"
  [ -s "$tmp/usr/lib/debug/boot/vmlinux-$abi-arm64" ] || die "vmlinux-$abi-arm64 not in the package"
  mv -f "$tmp/usr/lib/debug/boot/vmlinux-$abi-arm64" "$dir/"
  # keep the name the tests look for
  [ "$abi" = 6.1.0-53 ] || ln -sf "vmlinux-$abi-arm64" "$want"
  rm -rf "$tmp"
  say "arm64 test data ready in $dir"
}

fetch_amd64
[ -n "${KSYM_NO_ARM64:-}" ] || fetch_arm64

# pyelftools' sdist: the ELF files its test suite ships (tests/test_elf_shapes.py compares ksym with
# binutils addr2line on them); fetched from PyPI with pip, never committed.
fetch_pyelftools() {
  local dir="$DEST/pyelftools" ver=0.33 py
  if [ -s "$dir/pyelftools-$ver.tar.gz" ]; then
    echo "pyelftools $ver sdist present in $dir"
    return 0
  fi
  mkdir -p "$dir"
  py=$(command -v python3 || true)
  [ -n "$py" ] || { echo "fetch-testdata: needs python3 with pip for the pyelftools sdist" >&2; exit 1; }
  "$py" -m pip download -q --no-deps --no-binary :all: "pyelftools==$ver" -d "$dir"
  [ -s "$dir/pyelftools-$ver.tar.gz" ] ||
    { echo "fetch-testdata: pip did not download pyelftools-$ver.tar.gz" >&2; exit 1; }
  echo "pyelftools $ver sdist ready in $dir"
}
fetch_pyelftools
