#!/usr/bin/env bash
# scripts/bench-guest.sh
#
# Measures a real guest (issue 16): builds qemu-compose (release) and the test guest
# (scripts/build-guest.sh, cached), boots the guest ONCE with `up --wait`, and prints:
#   - `up --wait` to ready and `stop` to powered off (one sample each: one boot);
#   - 9p bind mounts, read-write and read-only, with today's default options
#     (trans=virtio,version=9p2000.L, i.e. the kernel's cache=none and msize) and with candidate
#     `mount_options`: reading one big file (guest caches dropped first), `find | wc -l` and a
#     `stat` walk of a 10,000-file tree (cold: guest caches dropped; warm: right after), writing
#     a big file (conv=fsync), creating 1,000 small files, and how long a host edit of a file the
#     guest has read takes to be seen in the guest (in place, and by write + rename as editors
#     do), up to 2 s;
#   - a named volume against the instance disk (both virtio-blk on qcow2): sequential direct
#     read and write, and 4 KiB random direct read and write IOPS (fio if the guest has it,
#     else a small python3 loop with O_DIRECT, which the guest has for cloud-init).
# Every measurement is repeated BENCH_REPS times (rounds over all cases, so a busy spell of the
# shared machine hits every case alike) and the median is printed.
#
# Run as root, as CI does (shares then use security_model=passthrough). Needs KVM or not (TCG).
#
# Environment:
#   BENCH_REPS   repetitions (default 3)
#   BENCH_MB     size of the big file read and written on shares (default 200, MiB)
#   BENCH_BLK_MB size of the volume/disk sequential test file (default 256, MiB)
#   BENCH_VARIANTS  space-separated subset of the case names below (default: all)
#   BENCH_BUILD_GUEST=1  run scripts/build-guest.sh even when a built guest is there (see below)
#   BENCH_KEEP=1 keep the project folder (it is printed) instead of removing it
#   QEMU_COMPOSE_E2E_GUEST_DIR  where the guest is built (default /var/tmp/qemu-compose-guest)
set -euo pipefail

prog=bench-guest
say() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() {
  say "$1"
  exit 1
}

cd "$(dirname "$0")/.."
repo=$PWD
reps=${BENCH_REPS:-3}
mb=${BENCH_MB:-200}
blk_mb=${BENCH_BLK_MB:-256}
guest_dir=${QEMU_COMPOSE_E2E_GUEST_DIR:-/var/tmp/qemu-compose-guest}
[[ $(id -u) -eq 0 ]] || say "warning: not root; shares use security_model=none"

# The cases: name, rw|ro, mount_options ("" = today's defaults).
# msize=524288 is what we ask; the guest kernel may cap it (its value is printed from
# /proc/mounts). cache=fscache needs CONFIG_9P_FSCACHE (Debian's kernel has it).
all_cases=(
  "rw-default rw "
  "rw-msize rw msize=524288"
  "rw-mmap rw msize=524288,cache=mmap"
  "rw-loose rw msize=524288,cache=loose"
  "rw-fscache rw msize=524288,cache=fscache"
  "ro-default ro "
  "ro-msize ro msize=524288"
  "ro-mmap ro msize=524288,cache=mmap"
  "ro-loose ro msize=524288,cache=loose"
  "ro-fscache ro msize=524288,cache=fscache"
)
cases=()
for c in "${all_cases[@]}"; do
  read -r name _ <<<"$c"
  if [[ -z ${BENCH_VARIANTS:-} || " $BENCH_VARIANTS " == *" $name "* ]]; then
    cases+=("$c")
  fi
done
((${#cases[@]})) || die "BENCH_VARIANTS selects no case"

say "building qemu-compose (release)"
cargo build --release --quiet
qc_bin=$repo/target/release/qemu-compose
# A guest already there is used as it is, whichever version of build-guest.sh made it: the
# folder is shared with the e2e test and other branches, and a run of another version of the
# script would rebuild it under them (it removes guest.env first). BENCH_BUILD_GUEST=1 runs
# this branch's build-guest.sh anyway (it does nothing when its key matches).
if [[ ${BENCH_BUILD_GUEST:-0} == 1 || ! -s $guest_dir/guest.env || ! -s $guest_dir/vmlinuz ||
  ! -s $guest_dir/initrd.img || ! -s $guest_dir/rootfs.img ]]; then
  say "building the guest in $guest_dir"
  bash scripts/build-guest.sh "$guest_dir" >&2
else
  say "using the guest in $guest_dir ($(grep '^BUILD_KEY=' "$guest_dir/guest.env"))"
fi
cmdline=$(sed -n 's/^KERNEL_APPEND=//p' "$guest_dir/guest.env" | tr -d '"')
[[ -n $cmdline ]] || die "$guest_dir/guest.env has no KERNEL_APPEND"

proj=$(mktemp -d /var/tmp/qc-bench-XXXXXX)
qc() { "$qc_bin" -f "$proj/qemu-compose.yaml" "$@"; }
results=$proj/results.txt
cleanup() {
  local rc=$?
  if [[ -f $proj/qemu-compose.yaml ]]; then
    qc destroy --force -v -t 30 >/dev/null 2>&1 || say "destroy failed; check: pgrep -af $proj"
  fi
  # Nothing of ours may survive: a QEMU whose command line names this project folder.
  local pid
  for pid in $(pgrep -f "qemu-system.*$proj" || true); do
    say "killing leftover QEMU $pid"
    kill "$pid" 2>/dev/null || true
  done
  if [[ ${BENCH_KEEP:-0} == 1 ]]; then
    say "kept $proj"
  else
    rm -rf "$proj"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- host data
say "making the test data in $proj/data"
mkdir -p "$proj/data/tree" "$proj/data/edit" "$proj/data/w" "$proj/tools"
chmod 0777 "$proj/data/w"
head -c "$((mb * 1024 * 1024))" /dev/urandom >"$proj/data/big"
python3 - "$proj/data/tree" <<'PY'
import os, sys
root = sys.argv[1]
for d in range(100):
    p = os.path.join(root, f"d{d:03d}")
    os.mkdir(p)
    for f in range(100):
        with open(os.path.join(p, f"f{f:03d}"), "w") as fh:
            fh.write(f"file {d} {f}\n")
PY
for c in "${cases[@]}"; do
  read -r name _ <<<"$c"
  for how in inplace rename; do
    echo "old" >"$proj/data/edit/$name-$how"
  done
  mkdir -p "$proj/data/w/$name"
  chmod 0777 "$proj/data/w/$name"
done

# The guest side, run as root through `qemu-compose ssh` from a read-only share of its own.
cat >"$proj/tools/g.sh" <<'GUEST'
#!/bin/bash
set -u
now() { date +%s%N; }
# el CMD...: runs CMD, prints its wall time in microseconds (or FAIL).
el() {
  local s e
  s=$(now)
  if "$@" >/dev/null 2>&1; then
    e=$(now)
    echo $(((e - s) / 1000))
  else
    echo FAIL
  fi
}
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
mode=$1
shift
case $mode in
ready)
  cloud-init status --wait >/dev/null 2>&1
  for m in "$@"; do
    for _ in $(seq 10); do mountpoint -q "/mnt/$m" && break; sleep 1; done
    opts=$(awk -v m="/mnt/$m" '$2 == m {print $4}' /proc/mounts)
    echo "mount $m ${opts:-NOT-MOUNTED}"
  done
  echo "fio $(command -v fio || echo none)"
  echo "kernel $(uname -r)"
  ;;
share) # share NAME rw|ro MB
  name=$1 kind=$2 mb=$3 m=/mnt/$1
  mountpoint -q "$m" || { echo "error $m not mounted"; exit 0; }
  drop
  echo "read $(el dd if="$m/big" of=/dev/null bs=1M)"
  drop
  echo "find $(el sh -c "find '$m/tree' -type f | wc -l >/tmp/count")"
  n=$(cat /tmp/count)
  [ "$n" = 10000 ] || echo "error find counted $n files"
  drop
  echo "statcold $(el sh -c "find '$m/tree' -type f -print0 | xargs -0 stat -c %s")"
  echo "statwarm $(el sh -c "find '$m/tree' -type f -print0 | xargs -0 stat -c %s")"
  if [ "$kind" = rw ]; then
    w=$m/w/$name
    echo "write $(el dd if=/dev/zero of="$w/big" bs=1M count="$mb" conv=fsync)"
    rm -f "$w/big"
    mkdir -p "$w/small"
    echo "create $(el sh -c "cd '$w/small' && for i in \$(seq 1000); do echo x >f\$i; done && sync")"
    rm -rf "$w/small"
  fi
  ;;
watch) # watch FILE: read FILE, say so, wait for "go" on stdin, then time until it changes
  f=$1
  old=$(cat "$f")
  stat "$f" >/dev/null
  old=$(cat "$f")
  echo primed
  read -r _
  s=$(now)
  while :; do
    c=$(cat "$f" 2>/dev/null)
    t=$((($(now) - s) / 1000))
    if [ "$c" != "$old" ]; then
      [ "$c" = new-content-from-the-host ] && echo "seen $t" || echo "partial $t"
      break
    fi
    [ $t -gt 2000000 ] && { echo "stale $t"; break; }
    sleep 0.02
  done
  ;;
blk) # blk DIR MB
  d=$1 mb=$2 f=$1/bench.dat
  mkdir -p "$d"
  echo "seqwrite $(el dd if=/dev/zero of="$f" bs=1M count="$mb" oflag=direct conv=fsync)"
  drop
  echo "seqread $(el dd if="$f" of=/dev/null bs=1M iflag=direct)"
  if command -v fio >/dev/null; then
    for rw in randread randwrite; do
      iops=$(fio --name=r --filename="$f" --rw=$rw --bs=4k --direct=1 --runtime=5 --time_based \
        --ioengine=psync --output-format=terse 2>/dev/null |
        awk -F';' -v rw=$rw '{print (rw == "randread") ? $8 : $49}')
      echo "$rw ${iops:-FAIL}"
    done
  else
    python3 - "$f" <<'PY'
import mmap, os, random, sys, time
path = sys.argv[1]
size = os.path.getsize(path)
blocks = size // 4096
buf = mmap.mmap(-1, 4096)
for name, flags in (("randread", os.O_RDONLY), ("randwrite", os.O_WRONLY)):
    fd = os.open(path, flags | os.O_DIRECT)
    n, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < 5:
        off = random.randrange(blocks) * 4096
        if name == "randread":
            os.preadv(fd, [buf], off)
        else:
            os.pwritev(fd, [buf], off)
        n += 1
    el = time.monotonic() - t0
    os.close(fd)
    print(f"{name} {n / el:.0f}")
PY
  fi
  rm -f "$f"
  ;;
esac
GUEST

# ---------------------------------------------------------------- compose file
{
  cat <<EOF
name: qcbench
volumes:
  benchvol: {size: 1G}
vms:
  bench:
    image: "$guest_dir/rootfs.img"
    kernel: "$guest_dir/vmlinuz"
    initrd: "$guest_dir/initrd.img"
    cmdline: "$cmdline"
    memory: 1024
    cpu: 2
    user: tester
    volumes:
      - benchvol:/vol
      - ./tools:/opt/bench:ro
EOF
  for c in "${cases[@]}"; do
    read -r name kind opts <<<"$c"
    printf '      - source: ./data\n        target: /mnt/%s\n        read_only: %s\n' \
      "$name" "$([[ $kind == ro ]] && echo true || echo false)"
    [[ -z $opts ]] || printf '        mount_options: "%s"\n' "$opts"
  done
} >"$proj/qemu-compose.yaml"
qc config -q

g() { qc ssh bench -- sudo bash /opt/bench/g.sh "$@" </dev/null; }
gw() { qc ssh bench -- sudo bash /opt/bench/g.sh "$@"; }
secs() { date +%s.%N; }
record() { printf '%s\n' "$*" >>"$results"; }

# ---------------------------------------------------------------- boot
say "up --wait (TCG boots take 30-60 s)"
t0=$(secs)
qc up --wait --wait-timeout 600 >&2
t1=$(secs)
record "lifecycle up $(python3 -c "print(int(($t1-$t0)*1e6))")"
names=()
for c in "${cases[@]}"; do
  read -r name _ <<<"$c"
  names+=("$name")
done
g ready "${names[@]}" >"$proj/ready.txt"
cat "$proj/ready.txt" >&2

# Warm the host's page cache for the data, so every case starts alike.
cat "$proj/data/big" >/dev/null

# ---------------------------------------------------------------- measure
watch_once() { # watch_once CASE HOW: prints seen/stale and microseconds
  local name=$1 how=$2 host_file=$proj/data/edit/$1-$2 line
  echo "old-$RANDOM" >"$host_file"
  sleep 0.3
  coproc W { gw watch "/mnt/$name/edit/$name-$how" 2>&1; }
  local out=${W[0]} in=${W[1]}
  if ! read -r -t 120 line <&"$out" || [[ $line != primed ]]; then
    say "watch $name $how: no 'primed' ($line)"
    kill "$W_PID" 2>/dev/null || true
    return
  fi
  if [[ $how == inplace ]]; then
    echo new-content-from-the-host >"$host_file"
  else
    echo new-content-from-the-host >"$host_file.tmp"
    mv -f "$host_file.tmp" "$host_file"
  fi
  echo go >&"$in"
  read -r -t 60 line <&"$out" || line="error no-answer"
  wait "$W_PID" 2>/dev/null || true
  echo "$line"
}

for r in $(seq "$reps"); do
  # The machine may be shared: note its load and the other QEMUs running at each round.
  mine=" $(pgrep -f "^[^ ]*qemu-system.*$proj" | tr '\n' ' ' || true) "
  others=$({ pgrep -f "^[^ ]*qemu-system" || true; } | awk -v m="$mine" 'index(m, " " $1 " ") == 0' | wc -l)
  record "load $r $(cut -d' ' -f1 /proc/loadavg) $others"
  for c in "${cases[@]}"; do
    read -r name kind _ <<<"$c"
    say "round $r/$reps: $name"
    while read -r k v; do
      record "share $name $k $v"
    done < <(g share "$name" "$kind" "$mb")
    for how in inplace rename; do
      read -r k v < <(watch_once "$name" "$how")
      record "edit $name $how $k ${v:-0}"
    done
  done
  for where in disk vol; do
    d=/var/tmp/bench
    [[ $where == vol ]] && d=/vol/bench
    say "round $r/$reps: $where"
    while read -r k v; do
      record "blk $where $k $v"
    done < <(g blk "$d" "$blk_mb")
  done
done

say "stop"
t0=$(secs)
qc stop -t 120 >&2
t1=$(secs)
record "lifecycle stop $(python3 -c "print(int(($t1-$t0)*1e6))")"

# ---------------------------------------------------------------- report
echo
python3 - "$results" "$proj/ready.txt" "$mb" "$blk_mb" "${cases[@]}" <<'PY'
import statistics, sys
from collections import defaultdict

results, ready, mb, blk_mb = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cases = [c.split(" ", 2) for c in sys.argv[5:]]
vals = defaultdict(list)
edits = defaultdict(list)
loads = []
for line in open(results):
    p = line.split()
    if p[0] == "load":
        loads.append((p[2], p[3]))
        continue
    if len(p) > 2 and p[2] == "error":
        print("error:", " ".join(p[1:]))
        continue
    if p[0] == "edit":
        edits[(p[1], p[2])].append((p[3], p[4]))
    else:
        vals[tuple(p[:-1])].append(p[-1])

def med(key):
    v = vals.get(key, [])
    if not v or "FAIL" in v:
        return None
    return statistics.median(float(x) for x in v)

def secs(key):
    m = med(key)
    return "FAIL" if m is None else f"{m / 1e6:.2f}"

mounts = {}
for line in open(ready):
    p = line.split()
    if p[0] == "mount":
        mounts[p[1]] = p[2]
    elif p[0] in ("fio", "kernel"):
        print(f"guest {p[0]}: {p[1]}")

up, stop = med(("lifecycle", "up")), med(("lifecycle", "stop"))
if loads:
    print("host load average (1 min) at each round: " + ", ".join(l for l, _ in loads)
          + "; other QEMUs running: " + ", ".join(o for _, o in loads))
print(f"\nup --wait to ready: {up / 1e6:.1f} s; stop to powered off: {stop / 1e6:.1f} s (one boot, one sample each)\n")

print(f"9p shares, median of {len(vals.get(('share', cases[0][0], 'read'), []))} "
      f"(read/write: {mb} MiB; tree: 10,000 files; create: 1,000 files; times in s)")
hdr = ("case", "mount_options", "read MB/s", "find", "stat cold", "x", "stat warm", "x",
       "write MB/s", "create", "edit in place", "edit by rename")
rows = [hdr]
base = {}
for name, kind, *opts in cases:
    opt = (opts[0] if opts else "").strip() or "(default)"
    r = med(("share", name, "read"))
    w = med(("share", name, "write"))
    sc = med(("share", name, "statcold"))
    sw = med(("share", name, "statwarm"))
    if name.endswith("-default"):
        base[kind] = (sc, sw)
    b = base.get(kind, (None, None))
    def ratio(x, y):
        return f"{y / x:.1f}x" if x and y else "-"
    def edit(how):
        e = edits.get((name, how), [])
        if not e:
            return "-"
        seen = [float(t) / 1e6 for k, t in e if k == "seen"]
        if len(seen) == len(e):
            return f"seen {max(seen):.2f}s"
        return "STALE " + ",".join(k for k, _ in e)
    rows.append((name, opt,
                 "FAIL" if r is None else f"{mb * 1.048576 / (r / 1e6):.1f}",
                 secs(("share", name, "find")), secs(("share", name, "statcold")), ratio(sc, b[0]),
                 secs(("share", name, "statwarm")), ratio(sw, b[1]),
                 "-" if kind == "ro" else ("FAIL" if w is None else f"{mb * 1.048576 / (w / 1e6):.1f}"),
                 "-" if kind == "ro" else secs(("share", name, "create")),
                 edit("inplace"), edit("rename")))
widths = [max(len(str(row[i])) for row in rows) for i in range(len(hdr))]
for i, row in enumerate(rows):
    print("| " + " | ".join(str(c).ljust(widths[j]) for j, c in enumerate(row)) + " |")
    if i == 0:
        print("| " + " | ".join("-" * w for w in widths) + " |")
print("x = the default case's time divided by this one's (higher is faster); "
      "edit: worst time until a host edit is seen in the guest, STALE = not seen within 2 s")
print("\nmount options the guest kernel applied (/proc/mounts):")
for name, *_ in cases:
    print(f"  {name}: {mounts.get(name, '?')}")

print(f"\nnamed volume vs instance disk (virtio-blk on qcow2; {blk_mb} MiB direct sequential, "
      "4 KiB direct random for 5 s)")
rows = [("disk", "seq write MB/s", "seq read MB/s", "rand read IOPS", "rand write IOPS")]
for where, label in (("disk", "instance disk"), ("vol", "named volume")):
    def mbps(k):
        m = med(("blk", where, k))
        return "FAIL" if m is None else f"{blk_mb * 1.048576 / (m / 1e6):.1f}"
    def iops(k):
        m = med(("blk", where, k))
        return "FAIL" if m is None else f"{m:.0f}"
    rows.append((label, mbps("seqwrite"), mbps("seqread"), iops("randread"), iops("randwrite")))
widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
for i, row in enumerate(rows):
    print("| " + " | ".join(c.ljust(widths[j]) for j, c in enumerate(row)) + " |")
    if i == 0:
        print("| " + " | ".join("-" * w for w in widths) + " |")
PY
