#!/usr/bin/env bash
# Volume benchmark: backuphub's volume job against the fake API server
# (tests/fake_kube/server.py, a separate process on loopback, which plays the reader pod
# with Debian's busybox and relays the exec stream over a real WebSocket): throughput of
# the exec stream (MB/s), backuphub's CPU per MB, and the bytes an unchanged second run
# transfers, for a filesystem volume and a block volume.
#
#   bench/volume.sh
#
# Environment: BENCH_WORK (default /tmp/backuphub-bench-volume), BACKUPHUB_BIN (default
# target/release/backuphub), BENCH_RESULTS (default bench/volume-results.md),
# BENCH_FILES (files of 512 KiB, default 1000), BENCH_BLOCK_MIB (default 512).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
work=${BENCH_WORK:-/tmp/backuphub-bench-volume}
bin=${BACKUPHUB_BIN:-target/release/backuphub}
results=${BENCH_RESULTS:-bench/volume-results.md}
files=${BENCH_FILES:-1000}
block_mib=${BENCH_BLOCK_MIB:-512}
[ -x "$bin" ] || cargo build --release --locked
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
rm -rf "$work"; mkdir -p "$work/cluster/data/bench"
token=bench-token-0123456789
echo "$token" > "$work/token"
python3 - "$work/cluster" "$files" "$block_mib" <<'PY'
import json, os, sys
root, files, block_mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fs = os.path.join(root, "data/bench/files")
for i in range(files):
    d = os.path.join(fs, f"dir-{i // 100:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"file-{i:05d}.bin"), "wb") as f:
        f.write(os.urandom(512 * 1024))
with open(os.path.join(root, "data/bench/block"), "wb") as f:
    for _ in range(block_mib):
        f.write(os.urandom(1 << 20))
json.dump({
    "storageClasses": [{"name": "fs", "provisioner": "rook-ceph.cephfs.csi.ceph.com"},
                       {"name": "rbd", "provisioner": "rook-ceph.rbd.csi.ceph.com"}],
    "snapshotClasses": [{"name": "fs-snap", "driver": "rook-ceph.cephfs.csi.ceph.com", "default": True},
                        {"name": "rbd-snap", "driver": "rook-ceph.rbd.csi.ceph.com", "default": True}],
    "pvcs": [{"namespace": "bench", "name": "files", "volumeMode": "Filesystem", "storageClassName": "fs",
              "accessModes": ["ReadWriteMany"], "size": "10Gi"},
             {"namespace": "bench", "name": "block", "volumeMode": "Block", "storageClassName": "rbd",
              "accessModes": ["ReadWriteOnce"], "size": f"{block_mib}Mi"}]}, open(os.path.join(root, "volumes.json"), "w"))
PY
python3 tests/fake_kube/server.py --token "$token" --volumes "$work/cluster" > "$work/port" &
fake=$!
trap 'kill $fake 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.1; done
port=$(head -1 "$work/port")
rows=()
for vol in files block; do
  rm -rf "$work/repo" "$work/state"
  cat > "$work/config.toml" <<TOML
[repository]
path = "$work/repo"
create = true
state_dir = "$work/state"
[daemon]
attempts = 1
min_free_space = "1 KiB"
[jobs.volumes]
kind = "volume"
schedule = "@daily"
server = "http://127.0.0.1:$port"
token_file = "$work/token"
volumes = ["bench/$vol"]
retention = { keep_last = 10 }
TOML
  for day in 1 2; do
    NO_COLOR=1 RUST_LOG=info /usr/bin/time -f '%e %U %S %M' -o "$work/time" "$bin" run --config "$work/config.toml" volumes --json > "$work/run.json" 2> "$work/log"
    read -r wall user sys rss < <(tail -1 "$work/time")
    moved=$(grep -o 'transferred=[0-9]*' "$work/log" | tail -1 | cut -d= -f2)
    read -r status total < <(python3 -c 'import json,sys; v=json.load(open(sys.argv[1])); print(v["status"], v["stats"]["total_bytes"])' "$work/run.json")
    row=$(python3 -c '
import sys
wall, user, sys_, moved, total = map(float, sys.argv[1:6])
mb = moved / 1e6
rate = f"{mb / wall:.0f} MB/s" if mb > 1 else "–"
cpu = f"{(user + sys_) / mb * 1000:.1f} ms" if mb > 1 else "–"
print(f"{rate} | {cpu} | {int(moved):,} |")' "$wall" "$user" "$sys" "$moved" "$total")
    rows+=("| $vol | $day | $status | $(( ${total%.*} / 1048576 )) MiB | $wall s | $row $((rss / 1024)) MiB |")
  done
done
{
  echo "# Volume benchmark (bench/volume.sh)"
  echo
  echo "The fake API server (Python, loopback) plays the reader pod with Debian's busybox and relays its exec stream over a WebSocket (\`v5.channel.k8s.io\`), as a real API server relays the kubelet's; $(nproc) cores, $(date -u +%F). Files: $files files of 512 KiB of random data; block: a $block_mib MiB device of random data. Throughput is bytes received over wall time (snapshot, pod start and repository work included); CPU is backuphub's user + system time per MB received."
  echo
  echo "| volume | run | status | volume size | wall | throughput | backuphub CPU per MB | bytes transferred | peak RSS |"
  echo "|---|---:|---|---:|---:|---:|---:|---:|---:|"
  printf '%s\n' "${rows[@]}"
} > "$results"
cat "$results"
