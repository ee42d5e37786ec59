#!/usr/bin/env bash
# scripts/build-guest.sh OUTDIR
#
# Builds the small Debian guest that scripts/demo.sh and the real-guest test (tests/e2e.rs)
# boot. Nothing but Debian packages, fetched by debootstrap from the Debian mirror that apt on
# this machine already uses. What OUTDIR holds afterwards:
#
#   vmlinuz      the guest's kernel (Debian's linux-image-amd64)
#   initrd.img   a small initramfs: just enough to find an ext4 root on virtio-blk
#   rootfs.img   the root file system: raw ext4 labelled "rootfs", written by `mkfs.ext4 -d`
#                from a directory tree (no loop device, no mount)
#   disk.img     the same root file system as a whole disk, shaped like Debian's genericcloud
#                image: GPT, a BIOS boot partition (14) holding GRUB's core image, the root
#                partition (1) last, GRUB on the serial console; boots with `image:` alone, and
#                cloud-init's growpart (cloud-guest-utils) grows the root to the disk's size
#   guest.env    the kernel command line (KERNEL_APPEND), the build key and a few facts
#   build.log    everything debootstrap, apt and the chroot tools printed
#   cache/       the downloaded .debs, kept for the next debootstrap
#   work/base    the tree as debootstrap left it, kept so that a change of this script
#                re-customises in seconds instead of bootstrapping again
#
# The guest: bookworm minbase with systemd, udev, the real cloud-init (NoCloud seed disk only),
# openssh-server (for `qemu-compose ssh`), sudo (the product's user gets passwordless sudo) and
# acpid (so that QMP system_powerdown shuts it down: minbase has no dbus, hence no logind, and
# without acpid nothing in the guest reacts to the ACPI power button).
#
# Cached: the outputs carry a key made of this file, the suite, the mirror and the package list;
# a run that finds the key unchanged does nothing and ends at once. Outputs are written beside
# their final name and renamed into place; guest.env, holding the key, comes last.
#
# Needs root (debootstrap and chroot) whenever there is something to build. Installs debootstrap
# and e2fsprogs with apt-get when they are missing.
#
# Environment:
#   QEMU_COMPOSE_GUEST_MIRROR   Debian mirror URL (default: the first Debian archive apt lists)
#   QEMU_COMPOSE_GUEST_SUITE    Debian suite (default: bookworm)
set -euo pipefail

prog=build-guest
say() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() {
  say "$1"
  exit "${2:-1}"
}

[[ $# -eq 1 && -n $1 ]] || die "usage: scripts/build-guest.sh OUTDIR" 2

suite=${QEMU_COMPOSE_GUEST_SUITE:-bookworm}
append="root=LABEL=rootfs rw console=ttyS0 panic=-1 net.ifnames=0"
# GRUB's command line in disk.img: as in Debian's cloud images, consoles on tty0 and ttyS0.
disk_append="root=LABEL=rootfs rw console=tty0 console=ttyS0,115200 panic=-1 net.ifnames=0"

# Debian packages of the guest, besides minbase. python3-cffi-backend is named because
# debootstrap does not resolve the virtual package python3-cryptography depends on;
# iputils-ping is what the network test pings with.
packages=(
  systemd-sysv udev kmod linux-image-amd64
  cloud-init python3-cffi-backend
  e2fsprogs util-linux mount ifupdown iputils-ping
  openssh-server sudo
  acpid acpi-support-base
  grub-pc-bin cloud-guest-utils
)

# Modules the guest must be able to load; the build fails if trimming broke one of them.
needed_modules=(virtio_pci virtio_blk virtio_net virtio_scsi ext4 9p 9pnet_virtio vfat isofs evdev)

# The first Debian archive (not the security one) in apt's sources, one-line or deb822 style.
apt_mirror() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -r $f ]] || continue
    # deb [options] URI suite components...
    sed -nE 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([a-z+]+:[^[:space:]]+).*/\2/p' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -r $f ]] || continue
    sed -nE 's/^URIs:[[:space:]]*//p' "$f" | tr ' ' '\n'
  done
}
mirror=${QEMU_COMPOSE_GUEST_MIRROR:-}
if [[ -z $mirror ]]; then
  mirror=$(apt_mirror | grep -E '^https?://' | grep -v security | grep -E '/debian/?$' | head -n1 || true)
fi
[[ -n $mirror ]] || die "no Debian mirror found in apt's sources; set QEMU_COMPOSE_GUEST_MIRROR to one (e.g. a URL ending in /debian)" 2

mkdir -p "$1"
out=$(cd "$1" && pwd)
self=${BASH_SOURCE[0]}

pkg_list=$(
  IFS=,
  echo "${packages[*]}"
)
hash16() { sha256sum | cut -c1-16; }
# The base tree depends only on what debootstrap is asked for; the outputs also on this script.
base_key=$(printf '%s\n' "$suite" "$mirror" "$pkg_list" | hash16)
build_key=$({
  cat "$self"
  printf '%s\n' "$suite" "$mirror" "$pkg_list"
} | hash16)

up_to_date() {
  [[ -s $out/vmlinuz && -s $out/initrd.img && -s $out/rootfs.img && -s $out/disk.img ]] &&
    grep -qx "BUILD_KEY=$build_key" "$out/guest.env" 2>/dev/null
}
if up_to_date; then
  say "up to date: $out (key $build_key)"
  exit 0
fi

[[ $(id -u) -eq 0 ]] || die "building the guest needs root (debootstrap and chroot); run it as root" 2

# One build at a time per OUTDIR; a second caller waits, then finds the work done.
exec 9>"$out/.lock"
flock 9
if up_to_date; then
  say "up to date: $out (key $build_key)"
  exit 0
fi

log=$out/build.log
work=$out/work
base=$work/base
stage=$work/stage
started=$SECONDS
: >"$log"

# Tells where the details are, then stops.
fail() {
  say "$1"
  say "last lines of $log:"
  tail -n 25 "$log" >&2 || true
  exit 1
}

# debootstrap and chroot tools may leave proc/sys (even /dev) mounted below the work folder.
release_mounts() {
  local m
  awk -v top="$work/" 'index($2, top) == 1 { print $2 }' /proc/mounts | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null || true; done
}
remove_tree() {
  release_mounts
  rm -rf --one-file-system "$1"
}
trap release_mounts EXIT
trap 'exit 130' INT TERM

install_host_tools() {
  local need=()
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
  command -v sfdisk >/dev/null || need+=(fdisk)
  ((${#need[@]})) || return 0
  say "installing ${need[*]} on the host"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -o DPkg::Lock::Timeout=600 -y --no-install-recommends "${need[@]}"; } \
    >>"$log" 2>&1 || fail "apt-get install ${need[*]} failed"
}

bootstrap() {
  if [[ -x $base/usr/bin/cloud-init && $(cat "$work/base.key" 2>/dev/null) == "$base_key" ]]; then
    return 0
  fi
  say "debootstrap $suite from $mirror (log: $log)"
  mkdir -p "$work" "$out/cache"
  rm -f "$work/base.key"
  remove_tree "$base"
  local t=$SECONDS
  if ! debootstrap --variant=minbase --cache-dir="$out/cache" --include="$pkg_list" \
    "$suite" "$base" "$mirror" >>"$log" 2>&1; then
    release_mounts
    if [[ -f $base/debootstrap/debootstrap.log ]]; then
      cat "$base/debootstrap/debootstrap.log" >>"$log"
    fi
    fail "debootstrap failed"
  fi
  release_mounts
  rm -f "$base"/var/cache/apt/archives/*.deb # the same files are in cache/
  echo "$base_key" >"$work/base.key"
  say "debootstrap took $((SECONDS - t)) s"
}

# put_le FILE OFFSET BYTES VALUE: writes VALUE little-endian into FILE at OFFSET.
put_le() {
  local hex="" i
  for ((i = 0; i < $3; i++)); do hex+=$(printf '\\x%02x' $((($4 >> (8 * i)) & 255))); done
  printf '%b' "$hex" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# disk.img from rootfs.img.tmp: GPT with the BIOS boot partition 14 at 1 MiB and the root
# partition 1 from 4 MiB to the end. GRUB's boot sector and core image are patched the way
# grub-bios-setup does it, so no loop device is needed: the boot sector learns where the core
# image starts (at 0x5c), the core image's first sector where the rest of it lies (at 0x1f4).
make_disk() {
  local disk=$out/disk.img.tmp root_mb=$1 core_sectors
  rm -f "$disk"
  truncate -s "$((root_mb + 5))M" "$disk"
  sfdisk -q "$disk" >>"$log" 2>&1 <<PARTS || fail "sfdisk failed"
label: gpt
${disk}14 : start=2048, size=6144, type=21686148-6449-6E6F-744E-656564454649, name=bios
${disk}1 : start=8192, size=$((root_mb * 2048)), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=rootfs
PARTS
  dd if="$out/rootfs.img.tmp" of="$disk" bs=1M seek=4 conv=notrunc,sparse status=none
  core_sectors=$((($(stat -c %s "$work/core.img") + 511) / 512))
  ((core_sectors <= 6144)) || fail "GRUB's core image does not fit the BIOS boot partition"
  put_le "$work/boot.img" $((0x5c)) 8 2048
  put_le "$work/core.img" $((0x1f4)) 8 2049
  put_le "$work/core.img" $((0x1fc)) 2 $((core_sectors - 1))
  dd if="$work/core.img" of="$disk" bs=512 seek=2048 conv=notrunc status=none
  dd if="$work/boot.img" of="$disk" bs=440 count=1 conv=notrunc status=none
}

# Only what a virtio guest uses stays: file systems, crypto and library code, virtio, block and
# SCSI drivers, 9p, the virtio NIC, ACPI and evdev. Paths are relative to .../kernel/.
keep_module() {
  case $1 in
  fs/* | crypto/* | lib/* | arch/* | block/* | mm/* | net/9p/* | net/core/failover.ko*) return 0 ;;
  drivers/virtio/* | drivers/block/* | drivers/char/* | drivers/scsi/* | drivers/ata/*) return 0 ;;
  drivers/cdrom/* | drivers/acpi/* | drivers/md/* | drivers/nvdimm/* | drivers/firmware/*) return 0 ;;
  drivers/net/virtio_net.ko* | drivers/net/net_failover.ko* | drivers/input/evdev.ko*) return 0 ;;
  esac
  return 1
}

customise() {
  local r=$stage kver
  say "customising a copy of the tree"
  remove_tree "$stage"
  cp -a "$base" "$stage"
  kver=$(find "$r/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n1)
  [[ -n $kver && -f $r/boot/vmlinuz-$kver ]] || fail "no kernel found in $r"

  # Identity: every instance gets its own machine-id, SSH host keys and hostname at first boot.
  : >"$r/etc/machine-id"
  rm -f "$r/var/lib/dbus/machine-id" "$r"/etc/ssh/ssh_host_*
  echo debian >"$r/etc/hostname"
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$r/etc/hosts"
  : >"$r/etc/resolv.conf" # debootstrap copied the host's; DHCP writes the guest's own
  echo 'LABEL=rootfs / ext4 rw,errors=remount-ro 0 1' >"$r/etc/fstab"
  # C.UTF-8 needs no generated locale; with any other, cloud-init's locale module fails in minbase.
  echo 'LANG=C.UTF-8' >"$r/etc/default/locale"

  cat >"$r/etc/cloud/cloud.cfg.d/90-qemu-compose-guest.cfg" <<'EOF'
# qemu-compose guest (scripts/build-guest.sh): the seed disk is the only source of
# instance data; no network probing for cloud metadata services.
datasource_list: [NoCloud, None]
locale: C.UTF-8
# RSA host keys take seconds to make under TCG; ed25519 is enough.
ssh_genkeytypes: [ed25519]
EOF

  # Trim what a booted guest never reads: apt's caches and lists, documentation, translations,
  # install logs, and kernel modules for hardware QEMU does not emulate here.
  rm -rf "$r"/var/cache/apt/* "$r"/var/lib/apt/lists/* "$r"/var/log/apt/*
  rm -rf "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/locale/*
  rm -f "$r"/var/log/dpkg.log "$r"/var/log/alternatives.log "$r"/var/log/bootstrap.log
  local mods=$r/lib/modules/$kver/kernel f rel
  while IFS= read -r -d '' f; do
    rel=${f#"$mods"/}
    keep_module "$rel" || rm -f "$f"
  done < <(find "$mods" -name '*.ko*' -print0)
  find "$mods" -type d -empty -delete
  chroot "$r" depmod -a "$kver" >>"$log" 2>&1 || fail "depmod failed"
  local m
  for m in "${needed_modules[@]}"; do
    chroot "$r" modprobe -S "$kver" --show-depends "$m" >>"$log" 2>&1 ||
      fail "kernel module $m is missing after trimming"
  done

  # A small initramfs: only the modules that find the root file system.
  sed -i 's/^MODULES=.*/MODULES=list/' "$r/etc/initramfs-tools/initramfs.conf"
  printf '%s\n' virtio_pci virtio_blk ext4 >"$r/etc/initramfs-tools/modules"
  chroot "$r" update-initramfs -u -k "$kver" >>"$log" 2>&1 || fail "update-initramfs failed"

  # GRUB for disk.img: its modules and configuration in /boot/grub of the root file system, its
  # core image (which looks for that folder on the first GPT partition) kept for make_disk.
  mkdir -p "$r/boot/grub/i386-pc"
  cp "$r"/usr/lib/grub/i386-pc/*.mod "$r"/usr/lib/grub/i386-pc/*.lst "$r/boot/grub/i386-pc/"
  cat >"$r/boot/grub/grub.cfg" <<GRUB
# Written by qemu-compose's scripts/build-guest.sh.
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=1
menuentry 'Debian GNU/Linux ($kver)' {
  linux /boot/vmlinuz-$kver $disk_append
  initrd /boot/initrd.img-$kver
}
GRUB
  chroot "$r" grub-mkimage -O i386-pc -o /tmp/core.img -p '(hd0,gpt1)/boot/grub' \
    biosdisk part_gpt ext2 >>"$log" 2>&1 || fail "grub-mkimage failed"
  mv "$r/tmp/core.img" "$work/core.img"
  cp "$r/usr/lib/grub/i386-pc/boot.img" "$work/boot.img"
  kernel_version=$kver
}

make_outputs() {
  local r=$stage tree_mb image_mb f cloud_init_version
  tree_mb=$(du -sm "$r" | cut -f1)
  # Room for the guest to write: a third more than the tree, and at least 256 MiB.
  image_mb=$((tree_mb + (tree_mb / 3 > 256 ? tree_mb / 3 : 256)))
  rm -f "$out/rootfs.img.tmp"
  mkfs.ext4 -q -F -L rootfs -d "$r" "$out/rootfs.img.tmp" "${image_mb}M" >>"$log" 2>&1 ||
    fail "mkfs.ext4 -d failed"
  make_disk "$image_mb"
  cp "$r/boot/vmlinuz-$kernel_version" "$out/vmlinuz.tmp"
  cp "$r/boot/initrd.img-$kernel_version" "$out/initrd.img.tmp"
  for f in rootfs.img disk.img vmlinuz initrd.img; do mv -f "$out/$f.tmp" "$out/$f"; done
  # shellcheck disable=SC2016 # ${Version} is dpkg-query's field, not a shell variable
  cloud_init_version=$(chroot "$r" dpkg-query -W -f='${Version}' cloud-init)
  cat >"$out/guest.env.tmp" <<EOF
BUILD_KEY=$build_key
SUITE=$suite
MIRROR=$mirror
PACKAGES=$pkg_list
KERNEL_VERSION=$kernel_version
CLOUD_INIT_VERSION=$cloud_init_version
ROOTFS_TREE_MB=$tree_mb
ROOTFS_IMAGE_MB=$image_mb
KERNEL_APPEND="$append"
DISK_KERNEL_APPEND="$disk_append"
EOF
  mv -f "$out/guest.env.tmp" "$out/guest.env"
  remove_tree "$stage"
  say "done in $((SECONDS - started)) s: $out (kernel $kernel_version, rootfs ${image_mb} MiB, key $build_key)"
}

# The old outputs no longer match: without guest.env nobody takes a half-replaced set for current.
rm -f "$out/guest.env"
install_host_tools
bootstrap
customise
make_outputs
