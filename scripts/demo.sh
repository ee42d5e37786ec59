#!/usr/bin/env bash
# The main job, from a fresh machine (as root): build qemu-compose, build a small Debian guest
# with the real cloud-init (scripts/build-guest.sh, Debian packages only), then show what the
# tool is for: two VMs on one project network that talk by name, a named volume filled from a
# folder before anything boots and read back after the guests stop, a bind-mounted folder and
# file, a command in each VM, a clean stop, and everything removed.
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

mkdir -p "$demo/seed" "$demo/site"
printf 'id,name\n1,alice\n2,bob\n' >"$demo/seed/users.csv"
echo "hello from the host" >"$demo/site/index.html"
echo "greeting=hi" >"$demo/app.conf"
cat >"$demo/qemu-compose.yaml" <<YAML
name: demo
x-guest: &guest
  image: $guest/rootfs.img
  kernel: $guest/vmlinuz
  initrd: $guest/initrd.img
  cmdline: "$append"
  cpu: 1
  memory: 768M
  user: demo
networks:
  backend: {}
volumes:
  data: {size: 10G, init_from: ./seed}   # filled from ./seed when it is made, no guest needed
vms:
  db:
    <<: *guest
    networks: {backend: {aliases: [database]}}
    volumes: [data:/srv/data]
  app:
    <<: *guest
    networks: [backend]
    depends_on: [db]
    volumes:
      - ./site:/srv/site:ro
      - ./app.conf:/etc/app.conf:ro
YAML

# say TEXT: one line per step of the demo itself.
say() { printf '\n== %s\n' "$*"; }

say "qemu-compose up --wait (creates the volume from ./seed, the disks and seeds, starts both VMs)"
time qc up --wait
say "qemu-compose ps"
qc ps
say "db serves the volume's files on the project network"
qc ssh db -- 'cat /srv/data/users.csv; nohup setsid python3 -m http.server -d /srv/data 8000 >/dev/null 2>&1 </dev/null & sleep 1'
say "app reaches db by its alias, and reads its shares"
qc ssh app -- 'getent hosts database; python3 -c "import urllib.request; print(urllib.request.urlopen(\"http://database:8000/users.csv\").read().decode(), end=\"\")"; cat /srv/site/index.html /etc/app.conf'
say "db writes into its volume"
qc ssh db -- 'echo "3,carol" | sudo tee -a /srv/data/users.csv >/dev/null'
say "qemu-compose stop (ACPI power-off, both VMs)"
time qc stop
say "qemu-compose volume export data ./out (read back without booting)"
qc volume export data "$demo/out"
cat "$demo/out/users.csv"
say "qemu-compose destroy -v"
qc destroy -v
