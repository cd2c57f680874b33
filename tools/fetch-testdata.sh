#!/usr/bin/env bash
# Fetch the real-kernel test data: the Debian 6.1 debug vmlinux and the same version's linux-source
# (its scripts/faddr2line is the anchor the tests run). Idempotent; run as root (apt-get download).
#   KSYM_TESTDATA  where to put it (default /var/tmp/ksym-testdata)
# The pinned pair is 6.1.0-53 / 6.1.187-1; when the archive no longer has it, the newest matching
# pair is taken, with a message.
set -euo pipefail
DEST=${KSYM_TESTDATA:-/var/tmp/ksym-testdata}
ABI=6.1.0-53
SRCVER=6.1.187-1
mkdir -p "$DEST"
cd "$DEST"
if [ -s "$DEST/vmlinux-$ABI-cloud-amd64" ] && [ -x "$DEST/linux-source-6.1/scripts/faddr2line" ] &&
   [ -d "$DEST/modules/kernel/net/netfilter" ]; then
  echo "test data present in $DEST"
  exit 0
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
