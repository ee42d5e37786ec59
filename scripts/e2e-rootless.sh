#!/usr/bin/env bash
# Runs the real-guest end-to-end test (tests/e2e.rs) as an ordinary user, as our users run
# qemu-compose: the rootless 9p security model, the guest user's UID, file modes in the state
# folders, the runtime folder. Run as root (CI does, from scripts/test.sh): creates the user
# `qemu-compose-e2e` if missing, builds the test (and the guest, which needs root) as root from
# a world-readable copy of the sources, then runs the test binary as that user.
set -euo pipefail
cd "$(dirname "$0")/.."

prog=e2e-rootless
say() { printf '%s: %s\n' "$prog" "$*" >&2; }
[[ $(id -u) -eq 0 ]] || { say "run it as root: it creates a user and switches to it"; exit 2; }

user=qemu-compose-e2e
id -u "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/sh "$user"
home=$(getent passwd "$user" | cut -d: -f6)

# The clone may sit under /root (mode 0700): the user gets its own readable copy, and the
# test binary is built there, since it names its sources and binary by absolute path.
work=/var/tmp/qemu-compose-rootless
rm -rf "$work/src"
mkdir -p "$work/src"
git ls-files -z | xargs -0 cp --parents -t "$work/src"
guest_dir=${QEMU_COMPOSE_E2E_GUEST_DIR:-/var/tmp/qemu-compose-guest}
bash scripts/build-guest.sh "$guest_dir" >&2
# The binary cargo names: an older build of another dependency set may lie beside it.
bin=$(cd "$work/src" && CARGO_TARGET_DIR="$work/target" cargo test --test e2e --no-run \
  --message-format=json | grep '"kind":\["test"\]' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n1)
chmod -R a+rX "$work"
[[ -n $bin ]] || { say "no e2e test binary under $work/target"; exit 1; }

say "running $bin as $user"
cd "$work/src"
runuser -u "$user" -- env -i HOME="$home" PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  QEMU_COMPOSE_E2E=1 QEMU_COMPOSE_E2E_GUEST_DIR="$guest_dir" "$bin" --nocapture
