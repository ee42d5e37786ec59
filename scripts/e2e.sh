#!/usr/bin/env bash
# Runs the end-to-end guest test (tests/e2e.rs) the way CI does: builds or reuses the Debian
# guest (shared/e2e/build-guest.sh), boots it with qemu-compose three times, and prints the
# measured times. About 4 minutes on 2 cores once the guest is cached.
#   QEMU_COMPOSE_E2E_GUEST_DIR   where the guest is cached (default /var/tmp/e2e-guest-sudo)
#   QEMU_COMPOSE_E2E_BUILD_GUEST path of build-guest.sh (default: ../shared/e2e beside the crate)
set -euo pipefail
cd "$(dirname "$0")/.."
QEMU_COMPOSE_E2E=1 exec cargo test --test e2e -- --nocapture
