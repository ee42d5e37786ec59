#!/usr/bin/env bash
# scripts/bench-network.sh
#
# Measures project networks in real guests (issue 13): builds qemu-compose (release) and the
# test guest (scripts/build-guest.sh, cached), boots two VMs `a` and `b` on one network, and
# prints, in one run, the TCP throughput
#   - from a to b through the project switch (a's eth1 -> switch -> b's eth1), and
#   - from a to the host through the user-mode NIC (a's eth0 -> QEMU's slirp -> 10.0.2.2),
# each the median of BENCH_REPS transfers of BENCH_MB MiB (a python3 sender and receiver: the
# guest has python3 for cloud-init), and their ratio.
#
# Environment: BENCH_REPS (default 3), BENCH_MB (default 256),
# QEMU_COMPOSE_E2E_GUEST_DIR (default /var/tmp/qemu-compose-guest), BENCH_KEEP=1 keeps the
# project folder.
set -euo pipefail

prog=bench-network
say() { printf '%s: %s\n' "$prog" "$*" >&2; }

cd "$(dirname "$0")/.."
repo=$PWD
reps=${BENCH_REPS:-3}
mb=${BENCH_MB:-256}
guest_dir=${QEMU_COMPOSE_E2E_GUEST_DIR:-/var/tmp/qemu-compose-guest}

cargo build --release --quiet
qc=$repo/target/release/qemu-compose
bash scripts/build-guest.sh "$guest_dir" >&2
append=$(sed -n 's/^KERNEL_APPEND="\(.*\)"$/\1/p' "$guest_dir/guest.env")

project=$(mktemp -d /tmp/qc-bench-net-XXXXXX)
cleanup() {
  (cd "$project" && "$qc" destroy --force >/dev/null 2>&1) || true
  [[ ${BENCH_KEEP:-} == 1 ]] && say "kept $project" || rm -rf "$project"
}
trap cleanup EXIT
cat >"$project/qemu-compose.yaml" <<EOF
name: benchnet
x-guest: &guest
  image: "$guest_dir/rootfs.img"
  kernel: "$guest_dir/vmlinuz"
  initrd: "$guest_dir/initrd.img"
  cmdline: "$append"
  memory: 1024
  cpu: 2
  user: tester
networks:
  backend: {}
vms:
  a: {<<: *guest, networks: [backend]}
  b: {<<: *guest, networks: [backend]}
EOF
cd "$project"
say "booting a and b"
"$qc" up --wait >&2

# Receives on PORT until EOF, prints nothing (the sender times the transfer, including the
# receiver's last byte: it waits for the receiver to close).
receiver='import socket,sys
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)
s.bind(("0.0.0.0",int(sys.argv[1]))); s.listen()
while True:
    c,_=s.accept()
    while c.recv(1<<20): pass
    c.close()'
# Sends MB MiB to HOST:PORT and prints MiB/s.
sender='import socket,sys,time
host,port,mb=sys.argv[1],int(sys.argv[2]),int(sys.argv[3])
buf=b"x"*(1<<20); s=socket.create_connection((host,port)); t=time.time()
for _ in range(mb): s.sendall(buf)
s.shutdown(socket.SHUT_WR); s.recv(1); s.close()
print("%.1f" % (mb/(time.time()-t)))'

"$qc" ssh b -- "nohup setsid python3 -c '$receiver' 7000 >/dev/null 2>&1 </dev/null & sleep 1"
python3 -c "$receiver" 7001 &
host_receiver=$!
trap 'kill $host_receiver 2>/dev/null; cleanup' EXIT
sleep 1

median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
switch=()
user=()
for ((i = 1; i <= reps; i++)); do
  switch+=("$("$qc" ssh a -- "python3 -c '$sender' b 7000 $mb")")
  user+=("$("$qc" ssh a -- "python3 -c '$sender' 10.0.2.2 7001 $mb")")
  say "round $i: a->b ${switch[-1]} MiB/s, a->host ${user[-1]} MiB/s"
done
s=$(printf '%s\n' "${switch[@]}" | median)
u=$(printf '%s\n' "${user[@]}" | median)
printf 'a -> b through the project switch:   %s MiB/s (median of %s x %s MiB)\n' "$s" "$reps" "$mb"
printf 'a -> host through the user-mode NIC: %s MiB/s\n' "$u"
awk -v s="$s" -v u="$u" 'BEGIN {printf "ratio switch/user-mode: %.2f\n", s/u}'
