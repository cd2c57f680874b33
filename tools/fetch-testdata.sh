#!/usr/bin/env bash
# Fetch the real-kernel test data: the Debian 6.1 debug vmlinux and the same version's linux-source
# (its scripts/faddr2line is the anchor the tests run), and the arm64 debug vmlinux of the same version
# (tests/test_arm64.py; only the vmlinux is kept, in $KSYM_TESTDATA/arm64). Idempotent; run as root
# (apt-get download; the arm64 one needs "dpkg --add-architecture arm64" and an apt-get update, done here).
#   KSYM_TESTDATA  where to put it (default /var/tmp/ksym-testdata)
#   KSYM_NO_ARM64  set to skip the arm64 vmlinux (801 MB download, ~1 min)
# The pinned pair is 6.1.0-53 / 6.1.187-1; when the archive no longer has it, the newest matching
# pair is taken, with a message.
set -euo pipefail
DEST=${KSYM_TESTDATA:-/var/tmp/ksym-testdata}
ABI=6.1.0-53
SRCVER=6.1.187-1
mkdir -p "$DEST"

fetch_amd64() {
cd "$DEST"
if [ -s "$DEST/vmlinux-$ABI-cloud-amd64" ] && [ -x "$DEST/linux-source-6.1/scripts/faddr2line" ] &&
   [ -d "$DEST/modules/kernel/net/netfilter" ]; then
  echo "test data present in $DEST"
  return 0
fi
command -v apt-get >/dev/null || { echo "fetch-testdata: needs apt-get (Debian/Ubuntu)" >&2; exit 1; }
if ! apt-get download "linux-image-$ABI-cloud-amd64-dbg" "linux-source-6.1=$SRCVER" >/dev/null 2>&1; then
  apt-get update -qq
  if ! apt-get download "linux-image-$ABI-cloud-amd64-dbg" "linux-source-6.1=$SRCVER" >/dev/null 2>&1; then
    pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-cloud-amd64-dbg$' | awk '{print $1}' | sort -V | tail -1)
    [ -n "$pkg" ] || { echo "fetch-testdata: no linux-image-6.1.0-*-cloud-amd64-dbg in the archive" >&2; exit 1; }
    ABI=$(echo "$pkg" | sed 's/^linux-image-\(6\.1\.0-[0-9]*\)-cloud-amd64-dbg$/\1/')
    SRCVER=$(apt-cache show "$pkg" | awk '/^Version:/{print $2; exit}')
    echo "fetch-testdata: pinned 6.1.0-53/6.1.187-1 is gone; using $pkg $SRCVER" >&2
    apt-get download "$pkg" "linux-source-6.1=$SRCVER" >/dev/null
    # keep the name the tests look for
    ln -sf "vmlinux-$ABI-cloud-amd64" "$DEST/vmlinux-6.1.0-53-cloud-amd64"
  fi
fi
tmp=$(mktemp -d "$DEST/.x.XXXXXX")
dpkg -x linux-image-"$ABI"-cloud-amd64-dbg_*.deb "$tmp/dbg"
mv -f "$tmp/dbg/usr/lib/debug/boot/vmlinux-$ABI-cloud-amd64" "$DEST/"
# module debug files (ET_REL) of the netfilter and IPv4/IPv6 stacks, for module frames
rm -rf "$DEST/modules"
mkdir -p "$DEST/modules/kernel/net"
for d in netfilter ipv4 ipv6; do
  if [ -d "$tmp/dbg/usr/lib/debug/lib/modules/$ABI-cloud-amd64/kernel/net/$d" ]; then
    mv "$tmp/dbg/usr/lib/debug/lib/modules/$ABI-cloud-amd64/kernel/net/$d" "$DEST/modules/kernel/net/"
  fi
done
dpkg -x linux-source-6.1_*.deb "$tmp/src"
rm -rf "$DEST/linux-source-6.1"
tar -C "$DEST" -xJf "$tmp"/src/usr/src/linux-source-6.1.tar.xz
rm -rf "$tmp" ./*.deb
echo "test data ready in $DEST"
}

fetch_arm64() {
  local dir="$DEST/arm64" abi=6.1.0-53 pkg tmp
  local want="$dir/vmlinux-$abi-arm64"
  if [ -s "$want" ]; then
    echo "arm64 test data present in $dir"
    return 0
  fi
  command -v apt-get >/dev/null || { echo "fetch-testdata: needs apt-get (Debian/Ubuntu)" >&2; exit 1; }
  mkdir -p "$dir"
  cd "$dir"
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
    apt-get update -qq
  fi
  if ! apt-get download "linux-image-$abi-arm64-dbg:arm64" >/dev/null 2>&1; then
    apt-get update -qq
    if ! apt-get download "linux-image-$abi-arm64-dbg:arm64" >/dev/null 2>&1; then
      pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-arm64-dbg$' | awk '{print $1}' | sort -V | tail -1)
      [ -n "$pkg" ] || { echo "fetch-testdata: no linux-image-6.1.0-*-arm64-dbg in the archive" >&2; exit 1; }
      abi=$(echo "$pkg" | sed 's/^linux-image-\(6\.1\.0-[0-9]*\)-arm64-dbg$/\1/')
      echo "fetch-testdata: pinned linux-image-6.1.0-53-arm64-dbg is gone; using $pkg" >&2
      apt-get download "$pkg:arm64" >/dev/null
    fi
  fi
  tmp=$(mktemp -d "$dir/.x.XXXXXX")
  # only the vmlinux (313 MB of the package's 5 GB): tar stops at the first match, so dpkg-deb may
  # die of SIGPIPE; the file's presence is what counts
  { dpkg-deb --fsys-tarfile linux-image-"$abi"-arm64-dbg_*_arm64.deb 2>/dev/null || true; } |
    tar -x -C "$tmp" --occurrence=1 "./usr/lib/debug/boot/vmlinux-$abi-arm64"
  [ -s "$tmp/usr/lib/debug/boot/vmlinux-$abi-arm64" ] ||
    { echo "fetch-testdata: vmlinux-$abi-arm64 not in the package" >&2; exit 1; }
  mv -f "$tmp/usr/lib/debug/boot/vmlinux-$abi-arm64" "$dir/"
  # keep the name the tests look for
  [ "$abi" = 6.1.0-53 ] || ln -sf "vmlinux-$abi-arm64" "$want"
  rm -rf "$tmp" linux-image-*-arm64-dbg_*.deb
  echo "arm64 test data ready in $dir"
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
