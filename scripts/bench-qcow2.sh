#!/bin/sh
# Runs the qcow2 creation benchmarks (ours vs `qemu-img create`, same run) and prints the
# medians and how many times faster or slower ours is.
set -eu
cd "$(dirname "$0")/.."
command -v qemu-img >/dev/null || { echo "qemu-img is required (install qemu-utils)" >&2; exit 1; }
command -v jq >/dev/null || { echo "jq is required" >&2; exit 1; }
cargo bench --bench qcow2 -- create_10g
dir=${CARGO_TARGET_DIR:-target}/criterion/create_10g
median() { jq '.median.point_estimate' "$dir/$1/new/estimates.json"; }
qemu=$(median qemu_img_create)
printf '%-20s %12s %10s\n' benchmark median/ms "qemu-img/x"
for b in ours_empty ours_1000_blocks qemu_img_create; do
    m=$(median "$b")
    awk -v n="$b" -v m="$m" -v q="$qemu" 'BEGIN { printf "%-20s %12.3f %10.2f\n", n, m / 1e6, q / m }'
done
