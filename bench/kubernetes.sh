#!/usr/bin/env bash
# Kubernetes benchmark: backuphub's kubernetes job against the fake API server
# (tests/fake_kube/server.py, a separate process on loopback) with 50 namespaces of
# ConfigMaps: run time and peak RSS at several object counts (RSS must not grow with
# them), and what an unchanged second run stores.
#
#   bench/kubernetes.sh          # 1,000 / 5,000 / 20,000 objects
#
# Environment: BENCH_WORK (default /tmp/backuphub-bench-kube), BACKUPHUB_BIN (default
# target/release/backuphub), BENCH_RESULTS (default bench/kubernetes-results.md),
# BENCH_COUNTS (ConfigMaps per namespace, default "20 100 400").
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
work=${BENCH_WORK:-/tmp/backuphub-bench-kube}
bin=${BACKUPHUB_BIN:-target/release/backuphub}
results=${BENCH_RESULTS:-bench/kubernetes-results.md}
counts=${BENCH_COUNTS:-20 100 400}
[ -x "$bin" ] || cargo build --release --locked
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
rm -rf "$work"; mkdir -p "$work"
echo bench-token-0123456789 > "$work/token"
rows=()
for per in $counts; do
  python3 tests/fake_kube/server.py --token bench-token-0123456789 --namespaces 50 --configmaps "$per" > "$work/port" &
  fake=$!
  for _ in $(seq 50); do [ -s "$work/port" ] && break; sleep 0.1; done
  port=$(head -1 "$work/port")
  rm -rf "$work/repo" "$work/state"
  cat > "$work/config.toml" <<TOML
[repository]
path = "$work/repo"
create = true
state_dir = "$work/state"
[daemon]
attempts = 1
min_free_space = "1 KiB"
[jobs.cluster]
kind = "kubernetes"
schedule = "@daily"
server = "http://127.0.0.1:$port"
token_file = "$work/token"
retention = { keep_last = 10 }
TOML
  for day in 1 2; do
    /usr/bin/time -f '%e %M' -o "$work/time" "$bin" run --config "$work/config.toml" cluster --json > "$work/run$day.json" 2>/dev/null || true
    read -r wall rss < <(tail -1 "$work/time")
    read -r status entries stored < <(python3 -c 'import json,sys; v=json.load(open(sys.argv[1])); print(v["status"], v["stats"]["entries"], v["stats"]["stored_bytes"])' "$work/run$day.json")
    rows+=("| $entries | $day | $status | $wall s | $((rss / 1024)) MiB | $stored |")
  done
  kill "$fake"; wait "$fake" 2>/dev/null || true
done
{
  echo "# Kubernetes benchmark (bench/kubernetes.sh)"
  echo
  echo "The fake API server (a Python process on loopback, pages of 500) with 50 namespaces of ConfigMaps; $(nproc) cores. Runs are \`partial\` because the fake's aggregated metrics API answers 503 and that is reported."
  echo
  echo "| objects | run | status | wall | peak RSS | stored bytes |"
  echo "|---:|---:|---|---:|---:|---:|"
  printf '%s\n' "${rows[@]}"
} > "$results"
cat "$results"
