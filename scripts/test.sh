#!/usr/bin/env bash
# Everything the test suite needs, from a fresh machine: installs the reference tools the tests
# use as oracles (qemu-img, qemu-system-x86_64, e2fsprogs, dosfstools, mtools, cloud-init), then
# checks formatting and lints and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

bash .ci/install-deps
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
