#!/bin/sh
# An emulated arm64 board: a Debian 12 (bookworm, Python 3.11: what Raspberry Pi OS is built on) arm64
# userland run under QEMU user-mode emulation, for checking bundles on the Pi/Jetson CPU architecture
# before you have a board. Needs root (debootstrap, chroot, mounts) and a Debian/Ubuntu host.
#
#   tools/board_arm64.sh rootfs               build (or reuse) the cached rootfs; prints its path
#   tools/board_arm64.sh install WHEELHOUSE   (re)install the device side into the board's venv from a
#                                             folder made by `make board-wheels`, offline: pip --no-index
#                                             with the network cut (unshare -n)
#   tools/board_arm64.sh refresh [WHEELHOUSE] rebuild the edgecxr wheel from this tree and swap it in (offline)
#   tools/board_arm64.sh run CMD [ARG...]     run a command inside the board (the venv's bin first in PATH);
#                                             the repo, /tmp and $EDGECXR_BOARD_BINDS are visible at the same paths,
#                                             and the command starts in the caller's folder when it is one of them
#   tools/board_arm64.sh path                 print the rootfs path (built or not)
#
# Cache: ${EDGECXR_CACHE:-~/.cache/edgecxr}/board-arm64-<hash of the rootfs pins>; rebuilt only when the
# pins below change. The venv lives in the rootfs at /opt/edgecxr/venv and is reinstalled only when the
# dependency wheels change (a new edgecxr wheel alone is swapped in).
# CPU model: QEMU_CPU (default cortex-a76, a Pi 5 / Jetson Orin class core; cortex-a72 is a Pi 4). QEMU's
# own default, `max`, emulates SME and computes wrong XNNPACK int8 results, so never use it.
set -eu

SUITE=bookworm
MIRROR=${EDGECXR_DEBIAN_MIRROR:-http://deb.debian.org/debian}
INCLUDE=python3,python3-venv,libgomp1,ca-certificates
RECIPE=1    # bump when the way the rootfs is made changes
PINS="suite=$SUITE include=$INCLUDE recipe=$RECIPE"
HASH=$(printf '%s' "$PINS" | sha256sum | cut -c1-12)
CACHE=${EDGECXR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgecxr}
ROOT=$CACHE/board-arm64-$HASH
VENV=/opt/edgecxr/venv
REPO=$(cd "$(dirname "$0")/.." && pwd)
export QEMU_CPU=${QEMU_CPU:-cortex-a76}

die() { echo "board-arm64: error: $*" >&2; exit 1; }
log() { echo "board-arm64: $*" >&2; }

host_setup() {
    [ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot and mounts)"
    need=
    command -v debootstrap >/dev/null || need="$need debootstrap"
    [ -x /usr/bin/qemu-aarch64-static ] || need="$need qemu-user-static"
    command -v update-binfmts >/dev/null || need="$need binfmt-support"
    if [ -n "$need" ]; then
        log "installing host packages:$need"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q $need >/dev/null
    fi
    mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --import qemu-aarch64 2>/dev/null || true
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
    grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null || die "cannot enable qemu-aarch64 in binfmt_misc"
}

# the interpreter binfmt_misc names (flags without F: it is looked up inside the chroot)
interp() { sed -n 's/^interpreter //p' /proc/sys/fs/binfmt_misc/qemu-aarch64; }

put_qemu() {  # $1: rootfs
    i=$(interp)
    mkdir -p "$1$(dirname "$i")"
    cp -L /usr/bin/qemu-aarch64-static "$1$i"
    cp -L /usr/bin/qemu-aarch64-static "$1/usr/bin/qemu-aarch64-static"
}

build_rootfs() {
    host_setup
    if [ -f "$ROOT/.complete" ]; then put_qemu "$ROOT"; echo "$ROOT"; return; fi
    mkdir -p "$CACHE"
    tmp=$CACHE/.board-arm64-$HASH.tmp
    rm -rf "$tmp"
    t0=$(date +%s)
    log "debootstrap --arch=arm64 --foreign $SUITE -> $ROOT (first stage)"
    debootstrap --arch=arm64 --foreign --variant=minbase --include="$INCLUDE" "$SUITE" "$tmp" "$MIRROR" >&2
    put_qemu "$tmp"
    t1=$(date +%s)
    log "second stage (runs arm64 dpkg under emulation: slow)"
    chroot "$tmp" /debootstrap/debootstrap --second-stage >&2
    t2=$(date +%s)
    rm -rf "$tmp/var/cache/apt/archives/"*.deb
    printf '%s\nfirst_stage_s=%s second_stage_s=%s\n' "$PINS" $((t1 - t0)) $((t2 - t1)) > "$tmp/.complete"
    mv "$tmp" "$ROOT"
    log "rootfs ready in $((t2 - t0)) s: first stage $((t1 - t0)) s, second stage $((t2 - t1)) s"
    echo "$ROOT"
}

# An ARM /proc/cpuinfo: onnxruntime's cpuinfo crashes on import when it reads the host's x86 one.
cpuinfo() {
    # the features the real cores report (a Pi 4's A72 has no dot product, a Pi 5's A76 has)
    a76="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
    case "$QEMU_CPU" in
        cortex-a72) part=0xd08 var=0x0 rev=3 feat="fp asimd evtstrm crc32 cpuid" model="Raspberry Pi 4 Model B" ;;
        cortex-a76) part=0xd0b var=0x4 rev=1 feat=$a76 model="Raspberry Pi 5 Model B" ;;
        *) part=0xd0b var=0x4 rev=1 feat=$a76 model="arm64 board" ;;
    esac
    for n in 0 1 2 3; do
        printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' "$n" "$feat" "$var" "$part" "$rev"
    done
    printf 'Model\t\t: %s (emulated: qemu-user %s)\n' "$model" "$QEMU_CPU"
}

# run "$@" inside the board, in a private mount namespace (the mounts vanish with it)
in_board() {
    [ -f "$ROOT/.complete" ] || die "no board at $ROOT: run 'tools/board_arm64.sh rootfs' (or make board-arm64) first"
    host_setup
    put_qemu "$ROOT"
    ci=$(mktemp); cpuinfo > "$ci"; rc=0
    binds="$REPO /tmp ${EDGECXR_BOARD_BINDS:-}"
    # shellcheck disable=SC2016
    unshare -m --propagation private sh -ec '
        root=$1; ci=$2; binds=$3; shift 3; cwd=$PWD
        mount -t proc proc "$root/proc"
        mount --bind "$ci" "$root/proc/cpuinfo"
        mount --rbind /dev "$root/dev"
        mount --rbind /sys "$root/sys"
        for b in $binds; do
            [ -e "$b" ] || continue
            mkdir -p "$root$b"; mount --rbind "$b" "$root$b"
        done
        cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
        if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
            mkdir -p "$root/etc/ssl/certs"; cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
        fi
        exec chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" QEMU_CPU="$QEMU_CPU" \
            EDGECXR_EMULATED="qemu-user $QEMU_CPU" \
            PATH='"$VENV"'/bin:/usr/local/bin:/usr/bin:/bin PYTHONDONTWRITEBYTECODE=1 \
            ${EDGECXR_BOARD_ENV:-} /bin/sh -c '\''cd "$0" 2>/dev/null || cd /; exec "$@"'\'' "$cwd" "$@"
    ' board "$ROOT" "$ci" "$binds" "$@" || rc=$?
    rm -f "$ci"
    return $rc
}

install_venv() {  # $1: wheelhouse (host path), $2: extras (default: the folder's EXTRAS file)
    wh=$(cd "$1" && pwd)
    extras=${2:-$(cat "$wh/EXTRAS" 2>/dev/null || echo rpi)}
    whl=$(ls "$wh"/edgecxr-*.whl 2>/dev/null | head -n1)
    [ -n "$whl" ] || die "$wh: no edgecxr wheel (make board-wheels)"
    # the dependencies' wheels decide a full reinstall; a new edgecxr wheel alone is swapped in (seconds)
    deps=$( (cd "$wh" && ls ./*.whl | grep -v '^./edgecxr-' | xargs sha256sum; echo "$extras") | sha256sum | cut -c1-12)
    own=$(sha256sum "$whl" | cut -c1-12)
    t0=$(date +%s)
    if [ "$(cat "$ROOT$VENV/.deps" 2>/dev/null)" != "$deps" ]; then
        rm -rf "$ROOT$VENV"
        EDGECXR_BOARD_BINDS="${EDGECXR_BOARD_BINDS:-} $wh" in_board sh -ec "
            python3 -m venv $VENV
            # network cut for the install: a fresh network namespace holds only a loopback that is down
            unshare -n $VENV/bin/python -m pip install -q --no-index --find-links '$wh' '$whl[$extras]'
            $VENV/bin/python -m pip check
        "
        echo "$deps" > "$ROOT$VENV/.deps"
        log "installed $(basename "$whl")[$extras] and its dependencies offline in $(( $(date +%s) - t0 )) s"
    elif [ "$(cat "$ROOT$VENV/.edgecxr" 2>/dev/null)" != "$own" ]; then
        EDGECXR_BOARD_BINDS="${EDGECXR_BOARD_BINDS:-} $wh" in_board \
            unshare -n $VENV/bin/python -m pip install -q --no-index --no-deps --force-reinstall "$whl"
        log "swapped in $(basename "$whl") offline in $(( $(date +%s) - t0 )) s"
    else
        log "venv up to date"
    fi
    echo "$own" > "$ROOT$VENV/.edgecxr"
}

# build the edgecxr wheel of this working tree (host pip) and swap it into the board's venv
refresh() {
    tmp=$(mktemp -d /tmp/edgecxr-wheel.XXXXXX)
    wh=${1:-$REPO/dist/board-wheels/all}
    [ -d "$wh" ] || die "$wh: no wheel folder (make board-wheels TARGET=all)"
    "${PYTHON:-$REPO/.venv/bin/python}" -m pip wheel -q --no-deps --no-build-isolation -w "$tmp" "$REPO" >/dev/null 2>&1 \
        || die "cannot build the edgecxr wheel"
    rm -rf "$REPO/build"
    cp "$tmp"/edgecxr-*.whl "$wh"/ && rm -rf "$tmp"
    install_venv "$wh"
}

cmd=${1:-}; [ $# -gt 0 ] && shift
case "$cmd" in
    rootfs) build_rootfs ;;
    path) echo "$ROOT" ;;
    install) [ $# -ge 1 ] || die "usage: $0 install WHEELHOUSE [EXTRAS]"; install_venv "$@" ;;
    refresh) refresh "$@" ;;
    run) [ $# -ge 1 ] || die "usage: $0 run CMD [ARG...]"; in_board "$@" ;;
    *) die "usage: $0 rootfs|path|install WHEELHOUSE [EXTRAS]|run CMD [ARG...]" ;;
esac
