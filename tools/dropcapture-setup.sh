#!/bin/sh
# dropcapture-setup.sh - prepare a machine (as root) to run dropcapture and its tests.
#
# Idempotent: safe to run again on a machine that is already set up.
#   - apt-get update; install python3-bpfcc nftables curl iproute2 libpcap0.8 (--pcap-filter)
#   - mount tracefs at /sys/kernel/tracing if it is not mounted
#   - when /lib/modules/$(uname -r)/build is missing (custom kernels, e.g. Firecracker, ship no headers
#     package), fetch the newest Debian linux-headers-<ver>-cloud-amd64 + -common + linux-kbuild-<ver>
#     with `apt-get download`, unpack them with `dpkg -x` under $DROPCAPTURE_HEADERS_DIR
#     (default /opt/dropcapture-headers) and link them as /lib/modules/$(uname -r)/build and source.
#
# bcc only needs the headers to compile its BPF C text; dropcapture takes every struct layout it
# relies on from BTF (/sys/kernel/btf/vmlinux), never from these headers.
#
# Environment: DROPCAPTURE_HEADERS_SERIES (default 6.12), DROPCAPTURE_HEADERS_DIR.
set -eu

SERIES="${DROPCAPTURE_HEADERS_SERIES:-6.12}"
HDIR="${DROPCAPTURE_HEADERS_DIR:-/opt/dropcapture-headers}"
REL="$(uname -r)"
MODDIR="/lib/modules/$REL"

say() { echo "dropcapture-setup: $*"; }
die() { echo "dropcapture-setup: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root"

export DEBIAN_FRONTEND=noninteractive
say "apt-get update"
apt-get update -qq || die "apt-get update failed"
say "installing python3-bpfcc nftables curl iproute2 libpcap0.8"
apt-get install -y -qq python3-bpfcc nftables curl iproute2 libpcap0.8 >/dev/null || die "apt-get install failed"
# optional: bpftool lets the tests check that no program is left attached
apt-get install -y -qq bpftool >/dev/null 2>&1 || say "bpftool not available (optional)"

# tracefs
if [ ! -e /sys/kernel/tracing/events ]; then
    say "mounting tracefs on /sys/kernel/tracing"
    mount -t tracefs nodev /sys/kernel/tracing || die "cannot mount tracefs"
fi
# debugfs is optional (older bcc versions look at /sys/kernel/debug/tracing)
if [ ! -e /sys/kernel/debug/tracing ] && [ -d /sys/kernel/debug ]; then
    mount -t debugfs nodev /sys/kernel/debug 2>/dev/null || true
fi

# kernel headers for bcc
if [ -e "$MODDIR/source/include/linux/skbuff.h" ] && [ -e "$MODDIR/build/include/generated/autoconf.h" ]; then
    say "kernel headers already present at $MODDIR/build"
else
    # newest linux-headers-$SERIES.*-cloud-amd64 the archive lists (6.12.111+deb12-cloud-amd64 style
    # on bookworm-backports/trixie, 6.12.0-31-cloud-amd64 style elsewhere)
    pkg="$(apt-cache search --names-only "^linux-headers-${SERIES}\\..*-cloud-amd64\$" \
        | awk '{print $1}' | grep -v -- '-rt-' | sort -V | tail -n 1)"
    [ -n "$pkg" ] || die "no linux-headers-${SERIES}.*-cloud-amd64 package in apt-cache (check sources.list)"
    abi="${pkg#linux-headers-}"          # e.g. 6.12.111+deb12-cloud-amd64
    abi_common="${abi%-cloud-amd64}"     # e.g. 6.12.111+deb12
    common="linux-headers-${abi_common}-common"
    # kbuild: the one of the same version when listed, else the newest of the series
    if apt-cache show "linux-kbuild-${abi_common}" >/dev/null 2>&1; then
        kbuild="linux-kbuild-${abi_common}"
    else
        kbuild="$(apt-cache search --names-only "^linux-kbuild-${SERIES}" \
            | awk '{print $1}' | sort -V | tail -n 1)"
    fi
    [ -n "$kbuild" ] || die "no linux-kbuild-${SERIES}* package in apt-cache"
    dest="$HDIR/$abi"
    if [ ! -e "$dest/.complete" ]; then
        say "fetching $pkg $common $kbuild into $dest"
        tmp="$(mktemp -d)"
        chown _apt "$tmp" 2>/dev/null || true   # lets apt download without its "unsandboxed" warning
        ( cd "$tmp" && apt-get download "$pkg" "$common" "$kbuild" ) || die "apt-get download failed"
        rm -rf "$dest"
        mkdir -p "$dest"
        for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$dest"; done
        rm -rf "$tmp"
        touch "$dest/.complete"
    fi
    build="$dest/usr/src/linux-headers-$abi"              # arch part: .config, generated headers
    source="$dest/usr/src/linux-headers-$abi_common-common" # common part: include/linux/...
    [ -d "$build" ] || die "unpacked headers lack $build"
    [ -d "$source" ] || die "unpacked headers lack $source"
    # The arch Makefile includes the common one by its installed path: point it into $dest.
    printf 'include %s/Makefile\n' "$source" > "$build/Makefile"
    # The arch package links scripts/tools to /usr/lib/linux-kbuild-*: point them into $dest.
    for l in "$build"/scripts "$build"/tools "$source"/scripts "$source"/tools; do
        if [ -L "$l" ]; then
            tgt="$(readlink "$l")"
            case "$tgt" in
                /*) [ -e "$dest$tgt" ] && ln -sfn "$dest$tgt" "$l" ;;
            esac
        fi
    done
    mkdir -p "$MODDIR"
    ln -sfn "$build" "$MODDIR/build"
    ln -sfn "$source" "$MODDIR/source"
    say "linked $build as $MODDIR/build and $source as $MODDIR/source"
fi

/usr/bin/python3 -c 'import bcc' 2>/dev/null || die "/usr/bin/python3 cannot import bcc after installing python3-bpfcc"
[ -r /sys/kernel/btf/vmlinux ] || say "warning: /sys/kernel/btf/vmlinux missing: dropcapture needs BTF"
say "ready"
