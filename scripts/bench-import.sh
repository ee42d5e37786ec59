#!/usr/bin/env bash
# Fills a new volume with 10,000 small files and with 1 GiB in four files, with
# `qemu-compose volume import` (the whole command) and with the rootless peer pipeline
# (mkfs.ext4 -d on a raw file + qemu-img convert -O qcow2 + fsync), in one criterion run, then
# prints the medians, the speed-up and the image file sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo bench --bench import -- --noplot 2>&1 | tee "$log" >&2

median_ns() { # criterion's estimate of the median, in ns
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["median"]["point_estimate"])' \
    "target/criterion/$1/new/estimates.json"
}
printf '\n%-11s %12s %12s %9s %14s %14s\n' tree ours_ms peer_ms speedup ours_bytes peer_bytes
for tree in 10k-small 1GiB-large; do
  ours=$(median_ns "import_${tree}/qemu-compose")
  peer=$(median_ns "import_${tree}/peer")
  read -r ob pb < <(sed -n "s|^import/$tree: qemu-compose file \([0-9]*\) bytes allocated, peer file \([0-9]*\) bytes allocated|\1 \2|p" "$log" | tail -n1)
  python3 - "$tree" "$ours" "$peer" "$ob" "$pb" <<'PY'
import sys
tree, ours, peer, ob, pb = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
print(f"{tree:<11} {ours/1e6:12.1f} {peer/1e6:12.1f} {peer/ours:8.2f}x {ob:14d} {pb:14d}")
PY
done
existing=$(median_ns "import_10k-small-into-1GiB-volume/qemu-compose")
python3 -c 'import sys; print(f"\n10k-small into an existing 10G volume holding 1 GiB (in place): {float(sys.argv[1])/1e6:.1f} ms")' "$existing"
