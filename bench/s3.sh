#!/usr/bin/env bash
# S3 benchmark: backuphub's s3 job against a real S3 server process (moto in server mode,
# PyPI) on loopback: a first run and an unchanged second run at several object counts —
# wall time, peak RSS, bytes read from object bodies — and a listing-only reference
# (boto3's ListObjectsV2 paginator) for the unchanged run's "time close to listing alone".
# (That an unchanged run sends no GET at all is counted exactly, through the proxy, in
# tests/s3_job.rs; the Python proxy itself is too slow for 100,000 objects.)
#
#   bench/s3.sh                     # 1,000 / 10,000 / 100,000 objects
#   BENCH_COUNTS="1000 10000" bench/s3.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
work=${BENCH_WORK:-/tmp/backuphub-bench-s3}
bin=${BACKUPHUB_BIN:-target/release/backuphub}
results=${BENCH_RESULTS:-bench/s3-results.md}
counts=${BENCH_COUNTS:-1000 10000 100000}
[ -x "$bin" ] || cargo build --release --locked
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
rm -rf "$work"; mkdir -p "$work"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m moto.server -H 127.0.0.1 -p "$port" >/dev/null 2>&1 &
moto=$!
trap 'kill $moto 2>/dev/null || true' EXIT
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
echo testing > "$work/ak"; echo testing-secret > "$work/sk"
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing-secret AWS_DEFAULT_REGION=us-east-1
pport=$port
rows=()
for n in $counts; do
  bucket="b$n"
  echo "=== seeding $n objects" >&2
  python3 - "$port" "$bucket" "$n" <<'PY'
import sys, boto3, concurrent.futures as cf, os
port, bucket, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
s3.create_bucket(Bucket=bucket)
def put(i):
    s3.put_object(Bucket=bucket, Key=f"d{i % 100:02d}/obj{i:07d}", Body=os.urandom(64) + b"x" * (i % 2000))
with cf.ThreadPoolExecutor(16) as ex:
    list(ex.map(put, range(n)))
PY
  cat > "$work/config.toml" <<TOML
[repository]
path = "$work/repo-$n"
create = true
state_dir = "$work/state-$n"
[daemon]
attempts = 1
min_free_space = "1 KiB"
[jobs.s3]
kind = "s3"
schedule = "@daily"
endpoint = "http://127.0.0.1:$pport"
access_key_file = "$work/ak"
secret_key_file = "$work/sk"
buckets = ["$bucket"]
retention = { keep_last = 10 }
TOML
  for run in 1 2; do
    /usr/bin/time -f '%e %M' -o "$work/time" "$bin" run --config "$work/config.toml" s3 --json > "$work/run.json" 2>/dev/null || true
    read -r wall rss < <(tail -1 "$work/time")
    read -r status read_bytes < <(python3 -c 'import json,sys; v=json.load(open(sys.argv[1])); print(v["status"], v["stats"]["read_bytes"])' "$work/run.json")
    rows+=("| $n | $run ($status) | $wall s | $((rss / 1024)) MiB | $read_bytes |")
  done
  list=$( { /usr/bin/time -f '%e' python3 - "$pport" "$bucket" <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="us-east-1")
n = 0
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=sys.argv[2]):
    n += len(page.get("Contents", []))
PY
  } 2>&1 | tail -1)
  rows+=("| $n | listing alone (boto3) | $list s | | |")
done
{
  echo "# S3 benchmark (bench/s3.sh)"
  echo
  echo "moto $(python3 -c 'import moto; print(moto.__version__)') in server mode on loopback; objects of 64 B–2 KB; $(nproc) cores; concurrency 4. 'bytes read' is the bytes of object bodies the run read (0: no object downloaded)."
  echo
  echo "| objects | run | wall | peak RSS | bytes read |"
  echo "|---:|---|---:|---:|---:|"
  printf '%s\n' "${rows[@]}"
} > "$results"
cat "$results"
