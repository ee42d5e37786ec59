#!/usr/bin/env bash
# Everything the test suite needs, from a fresh machine (as root): installs the reference tools
# the tests use as oracles (qemu-img, qemu-system-x86_64, qemu-system-aarch64 and its UEFI
# firmware, e2fsprogs, dosfstools, mtools, cloud-init, openssh-client, debootstrap), then
# checks formatting and lints and runs every test, including the real-guest end-to-end test,
# as root and then as an ordinary user (scripts/e2e-rootless.sh; QEMU_COMPOSE_E2E=0 leaves both
# out).
set -euo pipefail
cd "$(dirname "$0")/.."

bash .ci/install-deps
export QEMU_COMPOSE_E2E=${QEMU_COMPOSE_E2E:-1}
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# The fuzz targets are built by cargo-fuzz on nightly; checking them here keeps them compiling.
cargo check --manifest-path fuzz/Cargo.toml
cargo test --all-targets
if [[ $QEMU_COMPOSE_E2E == 1 ]]; then
  bash scripts/e2e-rootless.sh
fi
