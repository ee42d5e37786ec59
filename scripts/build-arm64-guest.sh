#!/usr/bin/env bash
# scripts/build-arm64-guest.sh [OUTDIR]
#
# Builds the tiny arm64 guest the aarch64 end-to-end test boots under TCG: Debian's arm64
# kernel and an initramfs made of Debian's arm64 busybox-static plus the kernel modules the
# test needs. No root: the .debs are fetched with apt-get download through a private apt
# configuration (arm64 package lists in a folder of its own; the machine's apt is untouched)
# and unpacked with dpkg-deb -x. What OUTDIR (default /var/tmp/qemu-compose-arm64-guest)
# holds afterwards:
#
#   Image        the kernel, uncompressed (arm64 Image header, "ARM\x64" at offset 56)
#   initrd.img   a newc cpio: busybox, the modules and /init
#   guest.env    KERNEL_APPEND, the kernel version and the build key
#
# /init loads virtio, ext4 and 9p modules in dependency order, mounts the ext4 volume whose
# virtio serial is named by `qc.volume=SERIAL` on the kernel command line (qemu-compose gives
# a named volume its name as serial; the vd* letters need not follow the command line) and
# the 9p share with tag mount0, writes the line
# `arm64-marker <uname -m>` into `arm64-marker` on each, prints `ARM64-GUEST-DONE` on the
# serial console and powers off.
#
# Cached: guest.env carries a key made of this file, the suite and the mirror; a run that
# finds it unchanged does nothing. Outputs are written beside their final name and renamed
# into place, guest.env last.
#
# Environment:
#   QEMU_COMPOSE_GUEST_MIRROR   Debian mirror URL (default: the first Debian archive apt lists)
#   QEMU_COMPOSE_GUEST_SUITE    Debian suite (default: bookworm)
set -euo pipefail

prog=build-arm64-guest
say() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() {
  say "$1"
  exit 1
}

out=${1:-/var/tmp/qemu-compose-arm64-guest}
suite=${QEMU_COMPOSE_GUEST_SUITE:-bookworm}
mirror=${QEMU_COMPOSE_GUEST_MIRROR:-$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list \
  /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list | grep -oE 'https?://[^ ]+' |
  grep -v security | grep -E '/debian/?$' | head -n1 || true)}
[[ -n $mirror ]] || die "no Debian mirror in apt sources; set QEMU_COMPOSE_GUEST_MIRROR"
append="console=ttyAMA0 panic=-1 quiet"
# The modules /init loads, with their dependencies (ext4 asks for crc32c by name, which no
# depends= entry says).
modules=(virtio_pci virtio_blk crc32c_generic ext4 9pnet_virtio 9p)

key=$( {
  cat "$0"
  echo "$suite $mirror"
} | sha256sum | cut -c1-16)
if grep -qsx "BUILD_KEY=$key" "$out/guest.env"; then
  exit 0
fi
for tool in apt-get dpkg-deb cpio xz gzip sha256sum; do
  command -v "$tool" >/dev/null || die "$tool is missing (Debian: apt install apt dpkg cpio xz-utils gzip)"
done
mkdir -p "$out"
work=$(mktemp -d "$out/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

# A private apt: arm64 lists for $suite, nothing shared with the machine's apt.
mkdir -p "$work/apt/lists/partial" "$work/apt/archives/partial" "$work/debs"
echo "deb $mirror $suite main" >"$work/apt/sources.list"
: >"$work/apt/status"
apt=(-o APT::Architecture=arm64 -o APT::Architectures=arm64
  -o Dir::Etc::sourcelist="$work/apt/sources.list" -o Dir::Etc::sourceparts=/nonexistent
  -o Dir::State::lists="$work/apt/lists" -o Dir::State::status="$work/apt/status"
  -o Dir::Cache="$work/apt/cache" -o Dir::Cache::archives="$work/apt/archives"
  -o Debug::NoLocking=1 -o APT::Sandbox::User="$(id -un)")
mkdir -p "$work/apt/cache"
say "arm64 package lists from $mirror $suite"
apt-get "${apt[@]}" update -qq >&2
# linux-image-arm64 is a metapackage: the kernel is the versioned package it depends on.
kpkg=$(apt-cache "${apt[@]}" depends linux-image-arm64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
[[ -n $kpkg ]] || die "cannot tell which kernel linux-image-arm64 depends on"
say "downloading $kpkg and busybox-static"
(cd "$work/debs" && apt-get "${apt[@]}" download "$kpkg" busybox-static >&2)
mkdir -p "$work/kernel" "$work/root"
dpkg-deb -x "$work"/debs/linux-image-*.deb "$work/kernel"
dpkg-deb -x "$work"/debs/busybox-static_*.deb "$work/busybox"
kver=$(ls "$work/kernel/lib/modules")
moddir=$work/kernel/lib/modules/$kver
# The module closure, dependencies first. Each module names its dependencies in the
# `depends=` entry of its .modinfo section (the package leaves modules.dep to depmod at
# install time); a post-order walk gives an order insmod accepts.
declare -A seen=()
order=()
module_file() {
  local pattern=${1//[-_]/[-_]}
  find "$moddir/kernel" \( -name "$pattern.ko" -o -name "$pattern.ko.xz" \) -print -quit
}
visit() {
  local file=$1 deps dep
  [[ -n ${seen[$file]:-} ]] && return
  seen[$file]=1
  case $file in
  *.xz) deps=$(xz -dc "$file" | tr '\0' '\n' | sed -n 's/^depends=//p') ;;
  *) deps=$(tr '\0' '\n' <"$file" | sed -n 's/^depends=//p') ;;
  esac
  for dep in ${deps//,/ }; do
    visit "$(module_file "$dep")"
  done
  order+=("$file")
}
for name in "${modules[@]}"; do
  file=$(module_file "$name")
  if [[ -z $file ]]; then
    # Built into the kernel: nothing to load.
    grep -qE "/${name//_/[-_]}\.ko" "$moddir/modules.builtin" || die "module $name not found in $kver"
    continue
  fi
  visit "$file"
done

root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,mnt/vol,mnt/share,lib/modules}
cp "$work/busybox/bin/busybox" "$root/bin/busybox"
for applet in sh [ mount umount insmod echo cat mkdir sync poweroff uname sleep; do
  ln -s busybox "$root/bin/$applet"
done
: >"$root/modules.order"
for path in "${order[@]}"; do
  file=$(basename "$path")
  case $file in
  *.xz) xz -dc "$path" >"$root/lib/modules/${file%.xz}" ;;
  *) cp "$path" "$root/lib/modules/$file" ;;
  esac
  echo "${file%.xz}" >>"$root/modules.order"
done
cat >"$root/init" <<'EOF'
#!/bin/sh
# The qemu-compose arm64 test guest: mount the volume and the share, mark both, power off.
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
while read -r module; do
  insmod "/lib/modules/$module" || echo "ARM64-GUEST-FAIL insmod $module"
done </modules.order
sleep 1
marker="arm64-marker $(uname -m)"
volume=
for word in $(cat /proc/cmdline); do
  case $word in qc.volume=*) volume=${word#qc.volume=} ;; esac
done
device=/dev/missing
for block in /sys/block/vd*; do
  [ "$(cat "$block/serial" 2>/dev/null)" = "$volume" ] && device=/dev/${block##*/}
done
if mount -t ext4 "$device" /mnt/vol; then
  echo "$marker" >/mnt/vol/arm64-marker
  umount /mnt/vol
else
  echo "ARM64-GUEST-FAIL volume"
fi
if mount -t 9p -o trans=virtio,version=9p2000.L mount0 /mnt/share; then
  echo "$marker" >/mnt/share/arm64-marker
  umount /mnt/share
else
  echo "ARM64-GUEST-FAIL share"
fi
sync
echo "ARM64-GUEST-DONE $marker"
poweroff -f
EOF
chmod +x "$root/init"
(cd "$root" && find . | LC_ALL=C sort | cpio --quiet -o -H newc --owner 0:0) >"$work/initrd.img"

# Debian ships the arm64 kernel gzip-compressed; QEMU loads either, the Image header only
# shows uncompressed.
vmlinuz=$(ls "$work"/kernel/boot/vmlinuz-*)
if gzip -t "$vmlinuz" 2>/dev/null; then
  gzip -dc "$vmlinuz" >"$work/Image"
else
  cp "$vmlinuz" "$work/Image"
fi
[[ $(dd if="$work/Image" bs=1 skip=56 count=4 status=none) == $'ARM\x64' ]] ||
  die "$vmlinuz is not an arm64 Image"

mv "$work/Image" "$out/Image"
mv "$work/initrd.img" "$out/initrd.img"
printf 'KERNEL_APPEND=%q\nKERNEL_VERSION=%s\nBUILD_KEY=%s\n' "$append" "$kver" "$key" >"$work/guest.env"
mv "$work/guest.env" "$out/guest.env"
say "built $out ($kver; modules: ${#order[@]})"
