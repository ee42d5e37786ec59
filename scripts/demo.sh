#!/usr/bin/env bash
# The main job, from a fresh machine: build qemu-compose, build a small Debian guest with the
# real cloud-init (../shared/e2e/build-guest.sh, Debian packages only), then bring it up with a
# named volume, a bind-mounted folder and a bind-mounted file, look around in it over SSH, stop
# it through ACPI, and remove everything.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

bash .ci/install-deps
cargo build --release
bin=$repo/target/release/qemu-compose

shared=${QEMU_COMPOSE_SHARED:-$repo/../shared}
guest=${QEMU_COMPOSE_GUEST:-/var/tmp/e2e-guest-sudo}
E2E_EXTRA_PKGS=openssh-server,sudo "$shared/e2e/build-guest.sh" "$guest" >&2

demo=$(mktemp -d /var/tmp/qemu-compose-demo.XXXXXX)
qc() { "$bin" -f "$demo/qemu-compose.yaml" "$@"; }
trap 'qc destroy --force -v >/dev/null 2>&1 || true; rm -rf "$demo"' EXIT

mkdir "$demo/site"
echo "hello from the host" >"$demo/site/index.html"
echo "greeting=hi" >"$demo/app.conf"
cat >"$demo/qemu-compose.yaml" <<YAML
name: demo
volumes:
  data: {size: 10G}
vms:
  demo:
    image: $guest/rootfs.img
    kernel: $guest/vmlinuz
    initrd: $guest/initrd.img
    cmdline: "root=LABEL=rootfs rw console=ttyS0 net.ifnames=0"
    cpu: 2
    memory: 1G
    user: demo
    volumes:
      - data:/srv/data
      - ./site:/srv/site:ro
      - ./app.conf:/etc/app.conf:ro
YAML

time qc up --wait
qc ps
qc ssh demo -- 'set -x; uname -r; findmnt -t ext4,9p; cat /srv/site/index.html /etc/app.conf; echo written-in-guest | sudo tee /srv/data/note; df -h /srv/data'
qc volume ls
time qc stop
qc destroy -v
