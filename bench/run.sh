#!/usr/bin/env bash
# backuphub benchmark: backuphub vs restic vs borg on a realistic data set, day 1 then day 2.
#
#   bench/run.sh                      # full size: ~300 MB SQL dump + 384 MiB binary,
#                                     # 50,000 small YAML files (80 MiB)
#   BENCH_SQL_MB=30 BENCH_BIN_MIB=32 BENCH_SMALL_FILES=2000 BENCH_SMALL_MIB=3.2 \
#     BENCH_REPEAT=1 bench/run.sh     # quick smoke run
#
# Environment (all optional):
#   BENCH_WORK      work dir (data, repos, logs)            default /tmp/backuphub-bench
#   BENCH_SQL_MB    size of the day-1 SQL dump in MB (1e6)   default 300
#   BENCH_BIN_MIB   size of the day-1 binary file in MiB     default 384
#   BENCH_SEED      generator seed                           default 42
#   BENCH_TOOLS     tools to run                             default "backuphub restic borg"
#   BENCH_SMALL_FILES  number of files in the small series  default 50000
#   BENCH_SMALL_MIB    their total size in MiB                default 80
#   BENCH_ZSTD_LEVEL   zstd level for the zstd reference (the repository's compression
#                   level; backuphub init's default is 3)   default 3
#   BENCH_SERIES    series to run (see below)                default "full bin half small"
#   BENCH_REPEAT    repetitions of every series (fresh repositories each time; the
#                   report shows medians)                    default 3
#   BENCH_RESULTS   markdown output                          default bench/results.md
#   BENCH_TSV       raw measurements (tab-separated)         default $BENCH_WORK/results.tsv
#   BENCH_BH_INIT_ARGS  extra arguments for `backuphub init` (e.g. "--chunk-size 512KiB";
#                   bench/chunker.sh uses it)                default none
#   BACKUPHUB_BIN   backuphub binary (relative to the repo root or absolute)
#                                                            default target/release/backuphub
#   BENCH_BORG_COMPRESSION  borg --compression               default zstd,3
#
# Series (each tool gets a fresh repository, cache and state per series):
#   full  dump.sql + blob.bin in one directory, one repository: day 1, then day 2.
#         -> wall time, peak RSS, repository size, total day-2 growth.
#   bin   blob.bin alone in its own repository: day 1, then day 2.
#         -> day-2 growth caused by the 40 small insertions into the binary file.
#         (day-2 growth of the SQL dump alone is reported as full - bin.)
#   half  day 1 only, on a data set of half the size (SQL/2 + binary/2).
#         -> peak RSS at half vs full size: does memory grow with the input?
#   small 50,000 small Kubernetes-manifest-like YAML files (gen.py yaml): day 1, then day 2
#         on the very same files (same inodes, nothing changed: the unchanged-run cost).
#         -> wall time, peak RSS, repository size (issue 8).
# The full series also times `zstd -T2 -<BENCH_ZSTD_LEVEL> -c dump.sql blob.bin >/dev/null`
# on the day-1 files (tool "zstd"): the large-stream target is relative to it.
#
# All three tools run with encryption on:
#   backuphub  age X25519 recipient (age-keygen), default settings.
#   restic     repository v2 (restic >= 0.14 default), default settings (compression auto).
#   borg       --encryption=repokey-blake2, borg create --compression zstd,3.
# Each tool backs up the same path; on day 2 the files at that path are replaced by the
# day-2 versions (new inodes, as a fresh pg_dump would produce), so every tool must read
# them again; each tool keeps its own cache/state from day 1 (that is the realistic case).
# Repetitions matter: restic (chunker polynomial) and borg (chunk seed) pick a random chunker
# per repository, so their day-2 growth differs from one fresh repository to the next.
# Wall time, CPU time (user+sys) and peak RSS come from GNU time, repository
# size from `du -sb`. Data is in the page cache (the files are read once right before
# each run, and `sync` runs before each measurement); caches cannot be dropped here.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
WORK=${BENCH_WORK:-/tmp/backuphub-bench}
SQL_MB=${BENCH_SQL_MB:-300}
BIN_MIB=${BENCH_BIN_MIB:-384}
SEED=${BENCH_SEED:-42}
TOOLS=${BENCH_TOOLS:-"backuphub restic borg"}
SERIES=${BENCH_SERIES:-"full bin half small"}
SMALL_FILES=${BENCH_SMALL_FILES:-50000}
SMALL_MIB=${BENCH_SMALL_MIB:-80}
ZSTD_LEVEL=${BENCH_ZSTD_LEVEL:-3}
read -r -a BH_INIT_ARGS <<<"${BENCH_BH_INIT_ARGS:-}"
REPEAT=${BENCH_REPEAT:-3}
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_REPEAT must be a positive integer" >&2; exit 1; }
RESULTS_MD=${BENCH_RESULTS:-$HERE/results.md}
BORG_COMPRESSION=${BENCH_BORG_COMPRESSION:-zstd,3}
BH_BIN=${BACKUPHUB_BIN:-target/release/backuphub}
[[ $BH_BIN == /* ]] || BH_BIN=$ROOT/$BH_BIN

PASSWORD=bench-password-not-secret

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

case $WORK in
  "" | / | /tmp | /tmp/ | "$HOME" | "$HOME"/) die "refusing BENCH_WORK=$WORK (it gets rm -rf'd)" ;;
esac
[[ $WORK == /* ]] || WORK=$PWD/$WORK

# ---------------------------------------------------------------------------------------
# dependencies

install_deps() {
  local missing=()
  command -v restic >/dev/null || missing+=(restic)
  command -v borg >/dev/null || missing+=(borgbackup)
  command -v age-keygen >/dev/null || missing+=(age)
  [[ -x /usr/bin/time ]] || missing+=(time)
  command -v python3 >/dev/null || missing+=(python3)
  command -v zstd >/dev/null || missing+=(zstd)
  ((${#missing[@]} == 0)) && return 0
  local sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null || die "missing ${missing[*]} and not root (no sudo)"
    sudo=(sudo)
  fi
  log "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  if ! "${sudo[@]}" apt-get install -y -q "${missing[@]}" >"$WORK/apt.log" 2>&1; then
    "${sudo[@]}" apt-get update -q >>"$WORK/apt.log" 2>&1
    "${sudo[@]}" apt-get install -y -q "${missing[@]}" >>"$WORK/apt.log" 2>&1 ||
      { tail -n 20 "$WORK/apt.log" >&2; die "apt-get install ${missing[*]} failed"; }
  fi
}

mkdir -p "$WORK"
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
if awk -v l="${LOADAVG%% *}" 'BEGIN { exit !(l > 1.0) }'; then
  log "WARNING: load average is $LOADAVG -- something else is running; timings will be noisy"
fi
install_deps

# backuphub may not be built yet: skip it rather than fail.
RUN_TOOLS=()
for t in $TOOLS; do
  case $t in
    backuphub)
      if [[ -x $BH_BIN ]]; then
        # a private copy: a concurrent `cargo build` must not swap the binary mid-run
        mkdir -p "$WORK/bin"
        cp "$BH_BIN" "$WORK/bin/backuphub.tmp" && mv "$WORK/bin/backuphub.tmp" "$WORK/bin/backuphub"
        log "backuphub: using a copy of $BH_BIN"
        BH_BIN=$WORK/bin/backuphub
        RUN_TOOLS+=(backuphub)
      else
        log "NOTE: backuphub binary not found at $BH_BIN (set BACKUPHUB_BIN, or"
        log "      build with 'cargo build --release'); skipping backuphub."
      fi
      ;;
    restic | borg) RUN_TOOLS+=("$t") ;;
    *) die "unknown tool '$t' in BENCH_TOOLS" ;;
  esac
done
((${#RUN_TOOLS[@]} > 0)) || die "no tool to run"

# ---------------------------------------------------------------------------------------
# data (deterministic, regenerated only when parameters change)

HALF_SQL_MB=$(python3 -c "print($SQL_MB/2)")
HALF_BIN_MIB=$(python3 -c "print($BIN_MIB/2)")

gen_pair() { # gen_pair DIR SQL_MB BIN_MIB [--no-day2]  -- both generators in parallel
  local dir=$1 sql=$2 bin=$3 extra=${4:-} pid rc=0
  python3 "$HERE/gen.py" bin --out "$dir" --mib "$bin" --seed "$SEED" $extra &
  pid=$!
  python3 "$HERE/gen.py" sql --out "$dir" --mb "$sql" --seed "$SEED" $extra || rc=$?
  wait "$pid" || rc=$?
  ((rc == 0)) || die "data generation failed"
}

if [[ " $SERIES " == *" full "* ]]; then
  log "generating data in $WORK/data (seed $SEED, SQL ${SQL_MB} MB, binary ${BIN_MIB} MiB)"
  gen_pair "$WORK/data/full" "$SQL_MB" "$BIN_MIB"
elif [[ " $SERIES " == *" bin "* ]]; then
  # the bin series alone (bench/chunker.sh) needs no SQL dump
  log "generating data in $WORK/data (seed $SEED, binary ${BIN_MIB} MiB)"
  python3 "$HERE/gen.py" bin --out "$WORK/data/full" --mib "$BIN_MIB" --seed "$SEED" ||
    die "data generation failed"
fi
if [[ " $SERIES " == *" half "* ]]; then
  gen_pair "$WORK/data/half" "$HALF_SQL_MB" "$HALF_BIN_MIB" --no-day2
fi
if [[ " $SERIES " == *" small "* ]]; then
  log "generating $SMALL_FILES small files (${SMALL_MIB} MiB) in $WORK/data/small"
  python3 "$HERE/gen.py" yaml --out "$WORK/data/small" --files "$SMALL_FILES" --mib "$SMALL_MIB" \
    --seed "$SEED" || die "data generation failed"
fi

# ---------------------------------------------------------------------------------------
# tools

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

# measure OUT LOG CMD...  -> OUT gets "wall_s rss_kib user_s sys_s"
measure() {
  local out=$1 lg=$2
  shift 2
  sync
  if ! /usr/bin/time -f '%e %M %U %S' -o "$out.raw" "$@" >"$lg" 2>&1; then
    log "FAILED: $*"
    tail -n 30 "$lg" >&2
    die "see $lg"
  fi
  tail -n 1 "$out.raw" >"$out"
}

quiet() { # quiet LOG CMD... (unmeasured setup step)
  local lg=$1
  shift
  "$@" >>"$lg" 2>&1 || { tail -n 30 "$lg" >&2; die "setup step failed: $* (see $lg)"; }
}

tool_init() { # tool_init TOOL RUNDIR
  local tool=$1 run=$2 lg=$2/init.log
  case $tool in
    restic)
      quiet "$lg" env RESTIC_PASSWORD=$PASSWORD RESTIC_CACHE_DIR="$run/cache" \
        restic init --repo "$run/repo"
      ;;
    borg)
      quiet "$lg" env BORG_PASSPHRASE=$PASSWORD BORG_BASE_DIR="$run/cache" \
        borg init --encryption=repokey-blake2 "$run/repo"
      ;;
    backuphub)
      quiet "$lg" age-keygen -o "$run/key.txt"
      local recipient
      recipient=$(age-keygen -y "$run/key.txt")
      quiet "$lg" env BACKUPHUB_STATE_DIR="$run/cache" \
        "$BH_BIN" init --repo "$run/repo" --recipient "$recipient" "${BH_INIT_ARGS[@]}"
      ;;
  esac
}

tool_backup() { # tool_backup TOOL RUNDIR SRC DAY OUT LOG
  local tool=$1 run=$2 src=$3 day=$4 out=$5 lg=$6
  case $tool in
    restic)
      measure "$out" "$lg" env RESTIC_PASSWORD=$PASSWORD RESTIC_CACHE_DIR="$run/cache" \
        restic backup --repo "$run/repo" "$src"
      ;;
    borg)
      measure "$out" "$lg" env BORG_PASSPHRASE=$PASSWORD BORG_BASE_DIR="$run/cache" \
        borg create --compression "$BORG_COMPRESSION" "$run/repo::day$day" "$src"
      ;;
    backuphub)
      measure "$out" "$lg" env BACKUPHUB_STATE_DIR="$run/cache" \
        "$BH_BIN" backup --repo "$run/repo" --job bench "$src"
      ;;
  esac
}

# ---------------------------------------------------------------------------------------
# series

TSV=${BENCH_TSV:-$WORK/results.tsv}
printf 'series\ttool\trep\tday\twall_s\tcpu_s\trss_kib\trepo_bytes\tcache_bytes\tload1\n' >"$TSV"
mkdir -p "$WORK/logs"

place() { # place SRC DATADIR FILE... : replace SRC's content by hard links to DATADIR/FILE
  local src=$1 data=$2 f
  shift 2
  rm -rf "$src"
  mkdir -p "$src"
  for f in "$@"; do
    ln "$data/$f" "$src/$f" 2>/dev/null || cp "$data/$f" "$src/$f"
    cat "$src/$f" >/dev/null # warm the page cache, the same for every tool
  done
}

place_tree() { # place_tree SRC TREE : SRC becomes a tree of hard links to TREE's files
  local src=$1 tree=$2
  rm -rf "$src"
  mkdir -p "$(dirname "$src")"
  cp -al "$tree" "$src" 2>/dev/null || cp -a "$tree" "$src"
  find "$src" -type f -print0 | xargs -0 cat >/dev/null # warm the page cache
}

record() { # record SERIES TOOL REP DAY TIMEFILE REPO_DIR CACHE_DIR LOAD
  local wall rss user sys cpu repo=0 cache=0
  read -r wall rss user sys <"$5"
  cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
  [[ -n $6 ]] && repo=$(du -sb "$6" | cut -f1)
  [[ -n $7 ]] && cache=$(du -sb "$7" | cut -f1)
  log "$1 #$3: $2 day $4: ${wall}s wall, ${cpu}s CPU, peak RSS $((rss / 1024)) MiB, repo $(mib "$repo") MiB"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$wall" "$cpu" \
    "$rss" "$repo" "$cache" "$8" >>"$TSV"
}

run_zstd() { # run_zstd REP DATADIR FILE... : the large-stream reference, day-1 files
  local rep=$1 data=$2 out=$WORK/runs/full/zstd.time lg=$WORK/logs/full-zstd-rep$1-day1.log load
  shift 2
  mkdir -p "$WORK/runs/full"
  place "$WORK/src/full" "$data/day1" "$@"
  load=$(cut -d' ' -f1 /proc/loadavg)
  log "full #$rep: zstd -T2 -$ZSTD_LEVEL ..."
  # shellcheck disable=SC2016 # $0 and $@ are the inner shell's: level, then the files
  (cd "$WORK/src/full" && measure "$out" "$lg" sh -c 'zstd -q -T2 "-$0" -c "$@" >/dev/null' \
    "$ZSTD_LEVEL" "$@")
  record full zstd "$rep" 1 "$out" "" "" "$load"
}

run_series() { # run_series NAME DATADIR "DAYS" FILE...   (FILE "tree/": the whole tree, kept on day 2)
  local name=$1 data=$2 days=$3 tool day run src out lg rep
  shift 3
  src=$WORK/src/$name
  for ((rep = 1; rep <= REPEAT; rep++)); do
    if [[ $name == full ]] && command -v zstd >/dev/null; then
      run_zstd "$rep" "$data" "$@"
    fi
    for tool in "${RUN_TOOLS[@]}"; do
      run=$WORK/runs/$name/$tool
      rm -rf "$run"
      mkdir -p "$run/cache"
      tool_init "$tool" "$run"
      for day in $days; do
        if [[ $1 == tree/ ]]; then
          # the same files on every day: only the first day places them
          [[ $day == "${days%% *}" ]] && place_tree "$src" "$data/tree"
        else
          place "$src" "$data/day$day" "$@"
        fi
        out=$run/day$day.time
        lg=$WORK/logs/$name-$tool-rep$rep-day$day.log
        local load
        load=$(cut -d' ' -f1 /proc/loadavg)
        log "$name #$rep: $tool day $day ..."
        tool_backup "$tool" "$run" "$src" "$day" "$out" "$lg"
        record "$name" "$tool" "$rep" "$day" "$out" "$run/repo" "$run/cache" "$load"
      done
    done
  done
}

for s in $SERIES; do
  case $s in
    full) run_series full "$WORK/data/full" "1 2" dump.sql blob.bin ;;
    bin) run_series bin "$WORK/data/full" "1 2" blob.bin ;;
    half) run_series half "$WORK/data/half" "1" dump.sql blob.bin ;;
    small) run_series small "$WORK/data/small" "1 2" tree/ ;;
    *) die "unknown series '$s' in BENCH_SERIES" ;;
  esac
done

# ---------------------------------------------------------------------------------------
# report

META=$WORK/meta.json
bh_version="not run"
if [[ " ${RUN_TOOLS[*]} " == *" backuphub "* ]]; then
  bh_version=$("$BH_BIN" --version 2>/dev/null | head -n 1) || bh_version="?"
fi
M_DATE=$(date -u +%Y-%m-%dT%H:%MZ) \
  M_CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') \
  M_CORES=$(nproc) \
  M_RAM_KIB=$(awk '/MemTotal/ {print $2}' /proc/meminfo) \
  M_KERNEL=$(uname -r) \
  M_FS=$(df -T "$WORK" | awk 'NR==2 {print $2}') \
  M_RESTIC=$(restic version 2>/dev/null | head -n 1) \
  M_BORG=$(borg --version 2>/dev/null | head -n 1) \
  M_BACKUPHUB=$bh_version \
  M_LOADAVG=$LOADAVG M_REPEAT=$REPEAT \
  M_WORK=$WORK M_SEED=$SEED M_SQL_MB=$SQL_MB M_BIN_MIB=$BIN_MIB \
  M_ZSTD=$(zstd --version 2>/dev/null | head -n 1) M_ZSTD_LEVEL=$ZSTD_LEVEL \
  M_BH_INIT_ARGS="${BENCH_BH_INIT_ARGS:-}" \
  M_BORG_COMPRESSION=$BORG_COMPRESSION \
  python3 - "$META" <<'EOF'
import json, os, sys
e = os.environ
meta = {
    "date": e["M_DATE"], "cpu": e["M_CPU"], "cores": int(e["M_CORES"]),
    "ram_gib": round(int(e["M_RAM_KIB"]) / 1048576, 1), "kernel": e["M_KERNEL"],
    "fs": e["M_FS"], "loadavg": e["M_LOADAVG"], "repeat": int(e["M_REPEAT"]), "work": e["M_WORK"], "seed": int(e["M_SEED"]),
    "sql_mb": float(e["M_SQL_MB"]), "bin_mib": float(e["M_BIN_MIB"]),
    "borg_compression": e["M_BORG_COMPRESSION"], "zstd_level": int(e["M_ZSTD_LEVEL"]),
    "bh_init_args": e["M_BH_INIT_ARGS"],
    "versions": {"backuphub": e["M_BACKUPHUB"], "restic": e["M_RESTIC"], "borg": e["M_BORG"],
                 "zstd": e["M_ZSTD"]},
}
try:
    with open(os.path.join(e["M_WORK"], "data", "small", "yaml.stats.json")) as f:
        meta["small_stats"] = json.load(f)
except OSError:
    pass
for kind in ("sql", "bin"):
    try:
        with open(os.path.join(e["M_WORK"], "data", "full", kind + ".stats.json")) as f:
            st = json.load(f)
    except OSError:
        continue
    st.pop("tables", None)
    if "insertions" in st:
        st["insertion_count"] = len(st.pop("insertions"))
    meta[kind + "_stats"] = st
with open(sys.argv[1], "w") as f:
    json.dump(meta, f, indent=1)
EOF

python3 "$HERE/report.py" --tsv "$TSV" --meta "$META" --md "$RESULTS_MD"
log "markdown written to $RESULTS_MD; raw data in $TSV, logs in $WORK/logs"
