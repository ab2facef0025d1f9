#!/usr/bin/env bash
# Scale simulation (issue 8): a tree of N small files, S snapshots with 1 % churn each,
# then forget, prune, check, and a daemon refresh. Every command runs under GNU time
# (wall, CPU, peak RSS); repository composition is measured at the end of each phase.
#
#   bench/scale.sh                                   # full: N = 100 k and 1 M, 100 snapshots
#   BENCH_SCALE_N=2000 BENCH_SCALE_SNAPSHOTS=5 bench/scale.sh    # smoke test
#
# Environment (all optional):
#   BENCH_SCALE_N          tree sizes, space-separated         default "100000 1000000"
#   BENCH_SCALE_SNAPSHOTS  snapshots per tree                  default 100
#   BENCH_SCALE_CHURN_PCT  % of live files rewritten per snapshot   default 1
#   BENCH_SCALE_ADDDEL     files added and files deleted per snapshot
#                                                              default N/2000 (at least 1)
#   BENCH_SCALE_KEEP_LAST  forget --keep-last                  default 10
#   BENCH_SCALE_DAEMON_CHANGE  files rewritten before the daemon's triggered run (a fixed
#                          count, so that the refresh after it can be compared across N:
#                          proportional to what changed means flat)   default 10
#   BENCH_SCALE_CHECK_ARGS extra `check` arguments (e.g. "--read-data-subset 5")
#                                                              default none
#   BENCH_SCALE_PORT       the daemon's HTTP port (127.0.0.1)  default 19750
#   BENCH_SCALE_WORK       work dir (tree, repository, logs; rm -rf'd per N)
#                                                              default /tmp/backuphub-scale
#   BENCH_SCALE_RESULTS    markdown output                     default bench/scale-results.md
#   BENCH_SEED             generator seed                      default 42
#   BACKUPHUB_BIN          backuphub binary                    default target/release/backuphub
#
# The repository is encrypted (an age X25519 recipient), with default init settings. The
# backups run through the CLI (`backuphub backup --job scale TREE`); the daemon phase
# starts `backuphub daemon` on the same repository and state dir, times (a) start to
# /api/v1/status showing every snapshot, and (b) a triggered run after DAEMON_CHANGE files
# were rewritten, to the status showing that run's snapshot, split into the run itself (its start/end in
# the status) and the refresh after it (end to seen). Its peak RSS is VmHWM read from
# /proc just before it is stopped.
#
# Repository composition: bytes of packs/, snapshots/ and refs/ (if present), and the bytes
# of data, tree, refs and root blobs from the pack headers (bench/packstat.py, formats 1
# and 2). "metadata" = refs/ + snapshots/ + refs and root blobs in packs; the target is
# metadata <= 5 % of pack bytes.
# Disk: ~4 KiB per file for the tree (4 GiB at 1 M) plus the repository (~1/3 of the tree's
# bytes, plus churn).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
NS=${BENCH_SCALE_N:-"100000 1000000"}
SNAPS=${BENCH_SCALE_SNAPSHOTS:-100}
CHURN=${BENCH_SCALE_CHURN_PCT:-1}
KEEP=${BENCH_SCALE_KEEP_LAST:-10}
DAEMON_CHANGE=${BENCH_SCALE_DAEMON_CHANGE:-10}
read -r -a CHECK_ARGS <<<"${BENCH_SCALE_CHECK_ARGS:-}"
PORT=${BENCH_SCALE_PORT:-19750}
WORK=${BENCH_SCALE_WORK:-/tmp/backuphub-scale}
RESULTS_MD=${BENCH_SCALE_RESULTS:-$HERE/scale-results.md}
SEED=${BENCH_SEED:-42}
BH_BIN=${BACKUPHUB_BIN:-target/release/backuphub}
[[ $BH_BIN == /* ]] || BH_BIN=$ROOT/$BH_BIN

log() { printf '[scale %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

case $WORK in
  "" | / | /tmp | /tmp/ | "$HOME" | "$HOME"/) die "refusing BENCH_SCALE_WORK=$WORK (it gets rm -rf'd)" ;;
esac
[[ $WORK == /* ]] || WORK=$PWD/$WORK
[[ $SNAPS =~ ^[1-9][0-9]*$ ]] || die "BENCH_SCALE_SNAPSHOTS must be a positive integer"
for n in $NS; do [[ $n =~ ^[1-9][0-9]*$ ]] || die "BENCH_SCALE_N: '$n' is not a positive integer"; done
[[ -x $BH_BIN ]] || die "backuphub binary not found at $BH_BIN (cargo build --release, or set BACKUPHUB_BIN)"
[[ -x /usr/bin/time ]] || die "GNU time (/usr/bin/time) is needed"
command -v age-keygen >/dev/null || die "age-keygen is needed"

mkdir -p "$WORK"
# a private copy: a concurrent `cargo build` must not swap the binary mid-run
cp "$BH_BIN" "$WORK/backuphub.tmp" && mv "$WORK/backuphub.tmp" "$WORK/backuphub"
BH=$WORK/backuphub
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
TSV=$WORK/scale.tsv
SIZES=$WORK/sizes.tsv
printf 'n\tcmd\tround\twall_s\tcpu_s\trss_kib\n' >"$TSV"
printf 'n\tphase\tsnapshots\tpacks_bytes\tsnapshots_bytes\trefs_dir_bytes\tstate_bytes\tdata_blob_bytes\ttree_blob_bytes\trefs_blob_bytes\troot_blob_bytes\tpacks\tpacks_unparsed\n' >"$SIZES"

# measure N CMD ROUND LOG ARGV... : one command under GNU time, one TSV row
measure() {
  local n=$1 cmd=$2 round=$3 lg=$4 wall rss user sys
  shift 4
  if ! /usr/bin/time -f '%e %M %U %S' -o "$lg.time" "$@" >"$lg" 2>&1; then
    tail -n 30 "$lg" >&2
    die "failed: $* (see $lg)"
  fi
  read -r wall rss user sys < <(tail -n 1 "$lg.time")
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$cmd" "$round" "$wall" \
    "$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')" "$rss" >>"$TSV"
  log "N=$n $cmd $round: ${wall}s, peak RSS $((rss / 1024)) MiB"
}

# sizes N PHASE : repository composition (blob kinds from the pack headers: packstat.py)
sizes() {
  python3 - "$1" "$2" "$REPO" "$STATE" "$HERE" >>"$SIZES" <<'EOF'
import os, sys

n, phase, repo, state, here = sys.argv[1:]
sys.path.insert(0, here)
import packstat


def du(p):
    t = 0
    for d, _, fs in os.walk(p):
        for f in fs:
            try:
                t += os.lstat(os.path.join(d, f)).st_size
            except OSError:
                pass
    return t


st = packstat.stat(repo)
snaps = os.path.join(repo, "snapshots")
count = len(os.listdir(snaps)) if os.path.isdir(snaps) else 0
row = [n, phase, count, st["pack_bytes"], du(snaps), du(os.path.join(repo, "refs")), du(state),
       st["data_bytes"], st["tree_bytes"], st["refs_bytes"], st["root_bytes"], st["packs"], st["unparsed"]]
print("\t".join(str(x) for x in row))
EOF
}

# daemon N LOGDIR : start, refresh, one triggered run, peak RSS; appends TSV rows
daemon_phase() {
  local n=$1 logs=$2 cfg=$WORK/run/daemon.toml
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/run/token"
  cat >"$cfg" <<EOF
# written by bench/scale.sh
[repository]
path = "$REPO"
state_dir = "$STATE"

[http]
listen = "127.0.0.1:$PORT"
token_file = "$WORK/run/token"

[daemon]
concurrency = 1
min_free_space = "1 MiB"
attempts = 1

# nothing scheduled during the measurement: once a year
[prune]
schedule = "0 0 0 1 1 *"

[jobs.scale]
kind = "path"
schedule = "0 0 0 1 1 *"
paths = ["$TREE"]
retention = { keep_last = $KEEP }
EOF
  "$BH" config check --config "$cfg" >"$logs/config-check.log" 2>&1 ||
    { cat "$logs/config-check.log" >&2; die "daemon config rejected"; }
  local round=$((SNAPS + 1))
  python3 - "$n" "$BH" "$cfg" "$PORT" "$WORK/run/token" "$logs" "$TSV" "$HERE/scale_gen.py" \
    "$WORK/run" "$round" "$DAEMON_CHANGE" "$SEED" "$REPO" <<'EOF'
import json, os, signal, subprocess, sys, time, urllib.request
from datetime import datetime

n, bh, cfg, port, token_file, logs, tsv, gen, root, rnd, change, seed, repo = sys.argv[1:]
base = f"http://127.0.0.1:{port}"
token = open(token_file).read().strip()


def status():
    try:
        with urllib.request.urlopen(base + "/api/v1/status", timeout=5) as r:
            return json.load(r)
    except OSError:
        return None


def job(st):
    return next((j for j in st.get("jobs", []) if j.get("name") == "scale"), {}) if st else {}


def parse_t(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def row(cmd, wall, rss_kib=0):
    with open(tsv, "a") as f:
        f.write(f"{n}\t{cmd}\t0\t{wall:.3f}\t0\t{rss_kib}\n")
    print(f"[scale] N={n} {cmd}: {wall:.3f}s" + (f", {rss_kib // 1024} MiB" if rss_kib else ""),
          file=sys.stderr)


def hwm(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


expected = len(os.listdir(os.path.join(repo, "snapshots")))
log = open(os.path.join(logs, "daemon.log"), "w")
t0 = time.time()
p = subprocess.Popen([bh, "daemon", "--config", cfg], stdout=log, stderr=subprocess.STDOUT)
try:
    deadline = t0 + 3600
    while True:
        st = status()
        if st and st["repository"].get("snapshots") == expected and job(st).get("snapshots") == expected:
            break
        if p.poll() is not None:
            sys.exit(f"daemon exited with {p.returncode}; see {logs}/daemon.log")
        if time.time() > deadline:
            sys.exit("daemon did not show the snapshots within an hour")
        time.sleep(0.02)
    row("daemon start to status", time.time() - t0)
    before = job(st).get("last_run") or {}
    subprocess.run([sys.executable, gen, "churn", "--root", root, "--round", rnd, "--rewrite", change,
                    "--seed", seed], check=True, stderr=subprocess.DEVNULL)
    t1 = time.time()
    req = urllib.request.Request(base + "/api/v1/jobs/scale/run", method="POST",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read().decode()
    while True:
        st = status()
        last = job(st).get("last_run") or {}
        if last and last != before and last.get("end"):
            break
        if p.poll() is not None:
            sys.exit(f"daemon exited with {p.returncode}; see {logs}/daemon.log")
        if time.time() > t1 + 3600:
            sys.exit("the triggered run did not finish within an hour")
        time.sleep(0.02)
    seen = time.time()
    if last.get("status") not in ("complete", "success", "ok"):
        print(f"[scale] note: triggered run status {last.get('status')!r} ({body.strip()})", file=sys.stderr)
    run_s = parse_t(last["end"]) - parse_t(last["start"])
    row("daemon run (trigger to status)", seen - t1)
    row("daemon run itself (start to end)", run_s)
    row("daemon refresh after the run (end to status)", max(0.0, seen - parse_t(last["end"])))
    row("daemon peak RSS (VmHWM)", seen - t0, hwm(p.pid))
finally:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
EOF
}

for n in $NS; do
  ADDDEL=${BENCH_SCALE_ADDDEL:-$((n / 2000 > 1 ? n / 2000 : 1))}
  RUN=$WORK/run
  TREE=$RUN/tree
  REPO=$RUN/repo
  STATE=$RUN/state
  LOGS=$WORK/logs/$n
  rm -rf "$RUN" "$LOGS"
  mkdir -p "$RUN" "$LOGS" "$STATE"
  log "N=$n: generating the tree"
  t=$(date +%s.%N)
  python3 "$HERE/scale_gen.py" init --root "$RUN" --files "$n" --seed "$SEED"
  log "N=$n: tree in $(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')s, $(du -sh "$TREE" | cut -f1) on disk"
  age-keygen -o "$RUN/key.txt" 2>/dev/null
  export BACKUPHUB_STATE_DIR=$STATE
  "$BH" init --repo "$REPO" --recipient "$(age-keygen -y "$RUN/key.txt")" >"$LOGS/init.log" 2>&1 ||
    { cat "$LOGS/init.log" >&2; die "init failed"; }
  for ((k = 1; k <= SNAPS; k++)); do
    if ((k > 1)); then
      python3 "$HERE/scale_gen.py" churn --root "$RUN" --round $((k - 1)) --pct "$CHURN" \
        --add "$ADDDEL" --delete "$ADDDEL" --seed "$SEED" 2>>"$LOGS/churn.log"
    fi
    sync
    measure "$n" backup "$k" "$LOGS/backup-$k.log" "$BH" backup --repo "$REPO" --job scale "$TREE"
  done
  sizes "$n" "after $SNAPS snapshots"
  measure "$n" forget 0 "$LOGS/forget.log" "$BH" forget --repo "$REPO" --job scale --keep-last "$KEEP"
  measure "$n" prune 0 "$LOGS/prune.log" "$BH" prune --repo "$REPO"
  sizes "$n" "after forget + prune"
  measure "$n" check 0 "$LOGS/check.log" "$BH" check --repo "$REPO" --identity "$RUN/key.txt" "${CHECK_ARGS[@]}"
  daemon_phase "$n" "$LOGS"
  sizes "$n" "after the daemon run"
  unset BACKUPHUB_STATE_DIR
done

M_BH=$("$BH" --version 2>/dev/null | head -n 1) \
  M_CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') \
  M_CORES=$(nproc) M_DATE=$(date -u +%Y-%m-%dT%H:%MZ) M_LOAD=$LOADAVG \
  M_FS=$(df -T "$WORK" | awk 'NR==2 {print $2}') \
  M_SNAPS=$SNAPS M_CHURN=$CHURN M_KEEP=$KEEP M_ADDDEL="${BENCH_SCALE_ADDDEL:-N/2000}" \
  M_CHECK_ARGS="${BENCH_SCALE_CHECK_ARGS:-}" M_DAEMON_CHANGE=$DAEMON_CHANGE \
  python3 "$HERE/scale_report.py" --tsv "$TSV" --sizes "$SIZES" --md "$RESULTS_MD"
log "markdown written to $RESULTS_MD; raw data in $TSV and $SIZES, logs in $WORK/logs"
