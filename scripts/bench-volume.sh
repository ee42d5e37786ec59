#!/usr/bin/env bash
# Creates formatted qcow2 volumes of 1G, 10G and 1T with `qemu-compose volume create` (the whole
# command) and with the rootless peer pipeline (qemu-img create + mkfs.ext4 + qemu-img convert +
# fsync) in one criterion run, then prints the medians, the speed-up and the file sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo bench --bench volume -- --noplot 2>&1 | tee "$log" >&2

median_ns() { # criterion's estimate of the median, in ns
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["median"]["point_estimate"])' \
    "target/criterion/$1/new/estimates.json"
}
printf '\n%-6s %14s %14s %9s %16s %16s %9s\n' size ours_ms peer_ms speedup ours_bytes peer_bytes size_x
for size in 1G 10G 1T; do
  ours=$(median_ns "volume_${size}/qemu-compose")
  peer=$(median_ns "volume_${size}/peer")
  read -r ob pb < <(sed -n "s|^volume/$size: qemu-compose file \([0-9]*\) bytes allocated, peer file \([0-9]*\) bytes allocated|\1 \2|p" "$log" | tail -n1)
  python3 - "$size" "$ours" "$peer" "$ob" "$pb" <<'PY'
import sys
size, ours, peer, ob, pb = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
print(f"{size:<6} {ours/1e6:14.2f} {peer/1e6:14.2f} {peer/ours:8.1f}x {ob:16d} {pb:16d} {pb/ob:8.1f}x")
PY
done
