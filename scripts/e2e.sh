#!/usr/bin/env bash
# Runs the end-to-end guest test (tests/e2e.rs) the way CI does: builds or reuses the Debian
# guest (scripts/build-guest.sh), boots it with qemu-compose three times, and prints the
# measured times. About 4-6 minutes on 2 cores once the guest is built (building it: about
# 2 minutes more, as root, with the Debian mirror apt uses).
#   QEMU_COMPOSE_E2E_GUEST_DIR   where the guest is kept (default /var/tmp/qemu-compose-guest)
set -euo pipefail
cd "$(dirname "$0")/.."
QEMU_COMPOSE_E2E=1 exec cargo test --test e2e -- --nocapture
