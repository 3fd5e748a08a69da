#!/usr/bin/env bash
# Builds a bootable Debian arm64 disk image with a flotilla node installed:
# dist/flotilla-VERSION-arm64.img. Write it to a card or disk, fill in
# flotilla.conf on its FAT partition (labelled FLOTILLA: the one a laptop
# shows) with the master's address and a join token, boot: the node joins.
#
#   cross/image.sh [--binary PATH] [--out DIR] [--suite SUITE] [--mirror URL] [--fresh]
#
#   --binary PATH  the aarch64 flotilla to install [dist/aarch64-unknown-
#                  linux-gnu/flotilla-node, built by cross/build.sh if missing]
#   --out DIR      where the image goes [dist]
#   --suite SUITE  the Debian release [bookworm]
#   --mirror URL   the Debian archive [the one this machine's apt uses]
#   --fresh        install the Debian system again rather than take the
#                  one kept from an earlier build (kept for a week)
#
# The image boots by UEFI (GRUB on the FAT partition). Beside it go its
# kernel and initrd (.vmlinuz, .initrd.img), for a direct kernel boot in
# qemu-system-aarch64 without firmware (docs/edge.md). Runs as
# root (a chroot, run through qemu-user-static and binfmt_misc) and installs
# the Debian packages it needs. Downloaded packages and the installed
# system are kept in target/image-cache for the next build.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
binary=""
out=dist
suite=bookworm
mirror=""
fresh=0
while [ $# -gt 0 ]; do
    case $1 in
        --fresh) fresh=1; shift ;;
        --binary) [ $# -ge 2 ] || usage; binary=$2; shift 2 ;;
        --out) [ $# -ge 2 ] || usage; out=$2; shift 2 ;;
        --suite) [ $# -ge 2 ] || usage; suite=$2; shift 2 ;;
        --mirror) [ $# -ge 2 ] || usage; mirror=$2; shift 2 ;;
        -h|--help) usage ;;
        *) echo "cross/image.sh: unknown option $1" >&2; usage ;;
    esac
done
die() { echo "cross/image.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run it as root: it builds the system in a chroot"

if [ -n "$binary" ]; then
    [ -f "$binary" ] || die "--binary $binary: no such file"
else
    binary=dist/aarch64-unknown-linux-gnu/flotilla-node
    [ -x "$binary" ] || cross/build.sh aarch64-unknown-linux-gnu --node-only
fi
# e_machine, bytes 18-19 of an ELF header: 0xb7 is aarch64.
[ "$(od -An -tx1 -j18 -N2 "$binary" | tr -d ' \n')" = b700 ] ||
    die "$binary is not an aarch64 program: build one with cross/build.sh aarch64-unknown-linux-gnu --node-only"

pkgs=""
need() { command -v "$1" >/dev/null || pkgs="$pkgs $2"; }
need debootstrap debootstrap
need qemu-aarch64-static qemu-user-static
need mcopy mtools
need mkfs.vfat dosfstools
need sfdisk fdisk
need mkfs.ext4 e2fsprogs
if [ -n "$pkgs" ]; then
    echo "cross/image.sh: installing Debian packages:$pkgs"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs
fi
if [ -z "$mirror" ]; then
    # The first archive apt reads that is not the security one.
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
        sed -n -e 's/^URIs:[[:space:]]*//p' -e 's/^deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]*\)\{0,1\}//p' |
        awk '{print $1}' | grep -v -- -security | head -n 1 || true)
    mirror=${mirror:-http://deb.debian.org/debian}
fi

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
mkdir -p "$out" target/image-cache
out=$(cd "$out" && pwd)
cache=$(cd target/image-cache && pwd)
name=flotilla-$version-arm64
work=$(mktemp -d "$PWD/target/image.XXXXXX")
root=$work/root
binfmt=/proc/sys/fs/binfmt_misc
registered=""
cleanup() {
    for m in dev/pts dev proc sys; do
        mountpoint -q "$root/$m" 2>/dev/null && umount -l "$root/$m"
    done
    [ -n "$registered" ] && echo -1 > "$binfmt/$registered"
    rm -rf "$work"
}
trap cleanup EXIT
started=$(date +%s)

# aarch64 programs in the chroot run through qemu-aarch64-static; the F flag
# lets the kernel find it from inside the chroot.
if [ ! -e "$binfmt/register" ]; then
    mount -t binfmt_misc binfmt_misc "$binfmt" || die "binfmt_misc cannot be mounted here: the chroot needs it"
fi
if ! grep -qs '^flags: .*F' "$binfmt/qemu-aarch64" || ! grep -qs '^enabled' "$binfmt/qemu-aarch64"; then
    registered=flotilla-aarch64
    [ -e "$binfmt/$registered" ] && echo -1 > "$binfmt/$registered"
    printf '%s' ":$registered:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64-static:F" > "$binfmt/register"
fi

# The system: systemd, networkd and timesyncd (a Pi has no clock, and TLS
# needs the time), the kernel with an initramfs.
include=systemd,systemd-sysv,systemd-resolved,systemd-timesyncd,udev,dbus,kmod
include=$include,initramfs-tools,linux-image-arm64,e2fsprogs,dosfstools,iproute2,iputils-ping
# sfdisk, to grow the root partition to the end of the card at boot.
include=$include,fdisk
# GRUB's arm64 EFI modules, for the boot loader made below.
include=$include,grub-efi-arm64-bin
# The installed system is kept for a week (target/image-cache), keyed by
# what went into it; --fresh installs it again with the archive's latest.
key=$(printf '%s\n' "$suite" "$mirror" "$include" | sha256sum | cut -c1-16)
system=$cache/system-$suite-$key.tar
if [ $fresh = 0 ] && [ -n "$(find "$system" -mtime -7 2>/dev/null)" ]; then
    echo "== the $suite arm64 system installed $(date -r "$system" '+%Y-%m-%d %H:%M') (--fresh installs it again) =="
    mkdir -p "$root"
    tar -C "$root" --numeric-owner --xattrs --xattrs-include='*' -xf "$system"
else
    echo "== debootstrap $suite arm64 from $mirror =="
    debootstrap --arch=arm64 --variant=minbase --foreign --cache-dir="$cache" \
        --include="$include" "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
        { tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap's first stage failed (log above)"; }
    # The kernel's package and its triggers would each make the initramfs,
    # slowly under emulation: update-initramfs waits aside until the end.
    chroot "$root" dpkg-divert --quiet --local --rename --add \
        --divert /usr/sbin/update-initramfs.image /usr/sbin/update-initramfs
    printf '#!/bin/sh\nexit 0\n' > "$root/usr/sbin/update-initramfs"
    chmod 0755 "$root/usr/sbin/update-initramfs"
    echo "== installing the packages (emulated: many minutes) =="
    chroot "$root" /debootstrap/debootstrap --second-stage >"$work/second-stage.log" 2>&1 ||
        { tail -n 30 "$work/second-stage.log" >&2; tail -n 30 "$root/debootstrap/debootstrap.log" >&2 2>/dev/null
          die "debootstrap's second stage failed (log above)"; }
    rm -f "$root/usr/sbin/update-initramfs"
    chroot "$root" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs
    kernel=$(cd "$root/boot" && ls vmlinuz-* | sort -V | tail -n 1)
    chroot "$root" update-initramfs -c -k "${kernel#vmlinuz-}" >"$work/initramfs.log" 2>&1 ||
        { tail -n 20 "$work/initramfs.log" >&2; die "making the initramfs failed (log above)"; }
    rm -f "$cache"/system-*.tar
    tar -C "$root" --numeric-owner --xattrs --xattrs-include='*' -cf "$system.new" .
    mv -f "$system.new" "$system"
fi

echo "== configuring =="
echo "deb $mirror $suite main" > "$root/etc/apt/sources.list"
echo flotilla > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tflotilla\n' > "$root/etc/hosts"
cat > "$root/etc/fstab" <<'FSTAB'
LABEL=flotilla-root  /              ext4  defaults,noatime,commit=60  0 1
LABEL=FLOTILLA       /boot/firmware vfat  defaults,umask=0077         0 2
FSTAB
mkdir -p "$root/boot/firmware"
install -m 0644 cross/image/20-wired.network "$root/etc/systemd/network/"
# Each device makes its own machine id at its first boot.
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"

# flotilla: the bundle's layout in /usr/local/lib/flotilla, whose install.sh
# installs the binary and units now and the node's settings at the first
# boot. Once installed, its bin/flotilla is the installed binary.
lib=$root/usr/local/lib/flotilla
mkdir -p "$lib/bin" "$lib/systemd"
install -m 0755 "$binary" "$lib/bin/flotilla"
install -m 0644 cross/systemd/*.service "$lib/systemd/"
install -m 0755 cross/install.sh cross/uninstall.sh cross/image/firstboot.sh cross/image/growroot.sh "$lib/"
sh "$lib/install.sh" --root "$root"
ln -sf /usr/local/bin/flotilla "$lib/bin/flotilla"
install -m 0644 cross/image/flotilla-firstboot.service cross/image/flotilla-growroot.service "$root/etc/systemd/system/"
mkdir -p "$root/etc/systemd/system/flotilla-node.service.d"
install -m 0644 cross/image/flotilla-node-image.conf "$root/etc/systemd/system/flotilla-node.service.d/image.conf"
chroot "$root" systemctl enable --quiet systemd-networkd systemd-resolved systemd-timesyncd \
    flotilla-growroot.service flotilla-firstboot.service
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root/debootstrap"

kernel=$(cd "$root/boot" && ls vmlinuz-* | sort -V | tail -n 1)
initrd=initrd.img-${kernel#vmlinuz-}
[ -f "$root/boot/$initrd" ] || die "the kernel package made no initramfs ($initrd)"
cp "$root/boot/$kernel" "$out/$name.vmlinuz"
cp "$root/boot/$initrd" "$out/$name.initrd.img"

# UEFI boot: GRUB, made offline with its configuration built in, at the
# path firmware looks for on removable media. It finds the root partition
# by its label and boots the kernel and initrd Debian links at / (the
# links follow kernel upgrades).
cat > "$root/tmp/grub.cfg" <<'GRUB'
set timeout=0
search --no-floppy --label flotilla-root --set=root
linux /vmlinuz root=LABEL=flotilla-root ro console=tty1 console=ttyAMA0
initrd /initrd.img
boot
GRUB
chroot "$root" grub-mkimage -O arm64-efi -o /tmp/BOOTAA64.EFI -p /EFI/BOOT -c /tmp/grub.cfg \
    part_msdos fat ext2 search search_label linux gzio normal configfile echo
mv "$root/tmp/BOOTAA64.EFI" "$work/BOOTAA64.EFI"
rm -f "$root/tmp/grub.cfg"

echo "== the disk: FAT boot partition (flotilla.conf, the boot loader), ext4 root =="
boot_mib=64
used_mib=$(du -sm "$root" | cut -f1)
# Room for the pods' state, modules and compiled code, and for upgrades.
root_mib=$(( (used_mib * 13 / 10 + 512 + 63) / 64 * 64 ))
mkfs.vfat -C -n FLOTILLA "$work/boot.img" $((boot_mib * 1024)) >/dev/null
mcopy -i "$work/boot.img" cross/image/flotilla.conf ::/flotilla.conf
mmd -i "$work/boot.img" ::/EFI ::/EFI/BOOT
mcopy -i "$work/boot.img" "$work/BOOTAA64.EFI" ::/EFI/BOOT/BOOTAA64.EFI
# Without metadata_csum_seed, which the boot loader cannot read yet.
truncate -s "${root_mib}M" "$work/root.img"
mkfs.ext4 -q -L flotilla-root -O ^metadata_csum_seed -d "$root" "$work/root.img"
img=$out/$name.img
rm -f "$img"
truncate -s $((1 + boot_mib + root_mib))M "$img"
sfdisk --quiet "$img" <<PARTS
label: dos
start=1MiB, size=${boot_mib}MiB, type=ef, bootable
start=$((1 + boot_mib))MiB, type=83
PARTS
dd if="$work/boot.img" of="$img" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$work/root.img" of="$img" bs=1M seek=$((1 + boot_mib)) conv=notrunc,sparse status=none
echo "$img: $(( $(stat -c %s "$img") / 1048576 )) MiB (root $root_mib MiB, $used_mib MiB used), built in $(( $(date +%s) - started )) s"
echo "$out/$name.vmlinuz"
echo "$out/$name.initrd.img"
