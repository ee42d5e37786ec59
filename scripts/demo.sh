#!/usr/bin/env bash
# The main job, from a fresh machine (as root): build qemu-compose, build a small Debian guest
# with the real cloud-init (scripts/build-guest.sh, Debian packages only), then bring it up with a
# named volume, a bind-mounted folder and a bind-mounted file, look around in it over SSH, stop it
# through ACPI, and remove everything.
#
# One line per preparation step; what those steps print goes to a log that is named (and its end
# shown) when one fails.
#   QEMU_COMPOSE_GUEST   where the guest is built and kept (default /var/tmp/qemu-compose-guest)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
guest=${QEMU_COMPOSE_GUEST:-/var/tmp/qemu-compose-guest}
log=/var/tmp/qemu-compose-demo.log
: >"$log"

# step TEXT COMMAND...: runs COMMAND with its output in the log.
step() {
  local text=$1 t=$SECONDS
  shift
  printf '== %s ... ' "$text"
  if "$@" >>"$log" 2>&1; then
    echo "ok ($((SECONDS - t)) s)"
  else
    echo "FAILED; the end of $log:"
    tail -n 20 "$log"
    exit 1
  fi
}

step "installing host tools" bash .ci/install-deps
step "building qemu-compose" cargo build --release
step "building the Debian guest in $guest" bash scripts/build-guest.sh "$guest"
bin=$repo/target/release/qemu-compose
append=$(sed -n 's/^KERNEL_APPEND="\(.*\)"$/\1/p' "$guest/guest.env")

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
    cmdline: "$append"
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
