#!/usr/bin/env bash
# Chunker parameters from measurements (issue 8): the `bin` series of bench/run.sh (a random
# binary, then the same file with 40 small insertions) for backuphub once per chunker
# setting, plus restic once as the reference. Prints, per setting: day-2 growth, index
# (state dir) size and entry count, repository size, wall time and peak RSS, and writes a
# markdown table.
#
#   bench/chunker.sh                                     # full size: 384 MiB binary
#   BENCH_BIN_MIB=32 BENCH_REPEAT=1 bench/chunker.sh     # quick smoke run
#
# Environment (all optional; everything else is passed on to bench/run.sh):
#   BENCH_CHUNK_SETTINGS  settings separated by ";". A setting is either a size (taken as
#                         `backuphub init --chunk-size SIZE`: average SIZE, minimum SIZE/2,
#                         maximum 8 x SIZE) or raw `backuphub init` arguments starting
#                         with "--" (for whatever `init --help` offers).
#                         default "128KiB;256KiB;512KiB;1MiB;2MiB"
#   BENCH_CHUNK_REFERENCE tools measured once as the reference    default "restic"
#   BENCH_WORK            work dir (shared with run.sh: the data is generated once)
#                                                                 default /tmp/backuphub-bench
#   BENCH_REPEAT          repetitions per setting (the gear table is seeded per
#                         repository, so growth varies between fresh repositories)  default 3
#   BENCH_CHUNK_RESULTS   markdown output                         default bench/chunker-results.md
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORK=${BENCH_WORK:-/tmp/backuphub-bench}
[[ $WORK == /* ]] || WORK=$PWD/$WORK
SETTINGS=${BENCH_CHUNK_SETTINGS:-"128KiB;256KiB;512KiB;1MiB;2MiB"}
REFERENCE=${BENCH_CHUNK_REFERENCE:-restic}
OUT_MD=${BENCH_CHUNK_RESULTS:-$HERE/chunker-results.md}
export BENCH_WORK=$WORK BENCH_SERIES=bin BENCH_REPEAT=${BENCH_REPEAT:-3}

log() { printf '[chunker %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

DIR=$WORK/chunker
rm -rf "$DIR"
mkdir -p "$DIR"
: >"$DIR/settings.tsv"

i=0
IFS=';' read -r -a LIST <<<"$SETTINGS"
for setting in "${LIST[@]}"; do
  setting=$(sed 's/^ *//; s/ *$//' <<<"$setting")
  [[ -n $setting ]] || continue
  [[ $setting == --* ]] || setting="--chunk-size $setting"
  i=$((i + 1))
  log "setting $i: backuphub init $setting"
  BENCH_TOOLS=backuphub BENCH_BH_INIT_ARGS="$setting" BENCH_TSV="$DIR/$i.tsv" \
    BENCH_RESULTS="$DIR/$i.md" "$HERE/run.sh" >"$DIR/$i.out"
  # blob count of the last repetition's repository (= index entries): packstat.py
  python3 "$HERE/packstat.py" "$WORK/runs/bin/backuphub/repo" >"$DIR/$i.packstat.json"
  printf '%s\t%s\n' "$i" "$setting" >>"$DIR/settings.tsv"
done
if [[ -n $REFERENCE ]]; then
  log "reference: $REFERENCE"
  BENCH_TOOLS=$REFERENCE BENCH_TSV="$DIR/ref.tsv" BENCH_RESULTS="$DIR/ref.md" \
    "$HERE/run.sh" >"$DIR/ref.out"
fi

python3 - "$DIR" "$OUT_MD" "${BENCH_BIN_MIB:-384}" <<'EOF'
import csv, json, os, statistics, sys

d, out_md, bin_mib = sys.argv[1], sys.argv[2], sys.argv[3]
MIB = 1 << 20


def load(path):
    """reps[(tool, rep)][day] = row"""
    reps = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f, delimiter="\t"):
            reps.setdefault((r["tool"], r["rep"]), {})[int(r["day"])] = r
    return reps


def med(xs):
    return statistics.median(xs) if xs else None


def fmt(x, nd=1):
    return "–" if x is None else f"{x:.{nd}f}"


def summarize(label, reps, ps=None):
    days = [r for r in reps.values() if 1 in r and 2 in r]
    growth = [(int(r[2]["repo_bytes"]) - int(r[1]["repo_bytes"])) / MIB for r in days]
    return [label,
            fmt(med([float(r[1]["wall_s"]) for r in days]), 2),
            fmt(med([float(r[2]["wall_s"]) for r in days]), 2),
            fmt(max([int(r[k]["rss_kib"]) / 1024 for r in days for k in (1, 2)], default=None)),
            fmt(med([int(r[1]["repo_bytes"]) / MIB for r in days])),
            fmt(med(growth)) + (f" ({min(growth):.1f}–{max(growth):.1f})" if len(growth) > 1 else ""),
            fmt(med([int(r[2]["cache_bytes"]) / MIB for r in days]), 2),
            str(ps["data_blobs"]) if ps else "–",
            fmt(ps["data_bytes"] / ps["data_blobs"] / 1024, 0) if ps and ps["data_blobs"] else "–"]


rows = []
with open(os.path.join(d, "settings.tsv")) as f:
    for line in f:
        i, setting = line.rstrip("\n").split("\t", 1)
        try:
            with open(os.path.join(d, f"{i}.packstat.json")) as f:
                ps = json.load(f)
        except (OSError, ValueError):
            ps = None
        rows.append(summarize(f"backuphub `{setting}`", load(os.path.join(d, f"{i}.tsv")), ps))
ref = os.path.join(d, "ref.tsv")
if os.path.exists(ref):
    by_tool = {}
    for k, v in load(ref).items():
        by_tool.setdefault(k[0], {})[k] = v
    for tool, reps in sorted(by_tool.items()):
        rows.append(summarize(f"{tool} (reference)", reps))
hdr = ["setting", "wall d1 s", "wall d2 s", "peak RSS MiB", "repo d1 MiB", "day-2 growth MiB",
       "index/state MiB", "data blobs", "mean stored blob KiB"]
w = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(hdr)]
print("  ".join(h.ljust(w[i]) for i, h in enumerate(hdr)))
for r in rows:
    print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))
md = ["# backuphub chunker settings", "", "Generated by `bench/chunker.sh`; do not edit by hand.", "",
      f"The `bin` series of `bench/run.sh`: a {bin_mib} MiB random file, then the same file with 40 "
      "insertions (4 B – 8 KiB). Medians over the repetitions (min–max for the growth); peak RSS is the "
      "maximum; index/state = the backuphub state directory (index cache and write key) after day 2, "
      "the restic cache for restic; data blobs = index entries after day 2 (last repetition, from the pack "
      "headers), mean stored blob = their stored (compressed, sealed) size.", "",
      "| " + " | ".join(hdr) + " |", "|---|" + "---:|" * (len(hdr) - 1)]
md += ["| " + " | ".join(r) + " |" for r in rows]
with open(out_md, "w") as f:
    f.write("\n".join(md) + "\n")
EOF
log "markdown written to $OUT_MD; per-setting logs in $DIR"
