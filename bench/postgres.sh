#!/usr/bin/env bash
# PostgreSQL benchmark: backuphub's postgres job versus `pg_dump -Fc -Z0 > /dev/null`
# alone, side by side in one run, on a real server on loopback; peak RSS at two database
# sizes; and the day-2 repository growth of `format = "ordered"` versus `"custom"` after a
# day of clustered churn (new rows, updates to recent rows, oldest rows deleted, vacuum).
#
#   bench/postgres.sh                    # ~400 MB database (pgbench scale 25 + events)
#   BENCH_PG_SCALE=5 BENCH_REPEAT=1 bench/postgres.sh   # quick run
#
# Environment (all optional):
#   BENCH_WORK        work dir                               default /tmp/backuphub-bench-pg
#   BENCH_PG_SCALE    pgbench scale of the large database     default 25 (~375 MB)
#   BENCH_PG_SMALL    pgbench scale of the small database     default 5
#   BENCH_EVENTS      rows of the churn table                 default 1000000
#   BENCH_REPEAT      repetitions of the timed pair           default 3
#   BACKUPHUB_BIN     binary                                  default target/release/backuphub
#   BENCH_RESULTS     markdown output                         default bench/postgres-results.md
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
work=${BENCH_WORK:-/tmp/backuphub-bench-pg}
scale=${BENCH_PG_SCALE:-25}
small=${BENCH_PG_SMALL:-5}
events=${BENCH_EVENTS:-1000000}
repeat=${BENCH_REPEAT:-3}
bin=${BACKUPHUB_BIN:-target/release/backuphub}
results=${BENCH_RESULTS:-bench/postgres-results.md}
[ -x "$bin" ] || cargo build --release --locked
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

rm -rf "$work"; mkdir -p "$work"; chmod 755 "$work"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
password=bench-password-0123
echo "$password" > "$work/pw"
as_owner=()
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$work/pg"; chown nobody "$work/pg"; as_owner=(setpriv --reuid=nobody --regid=nogroup --clear-groups)
  cp "$work/pw" "$work/pg/pwfile"; chown nobody "$work/pg/pwfile"
else
  mkdir -p "$work/pg"; cp "$work/pw" "$work/pg/pwfile"
fi
"${as_owner[@]}" "$pgbin/initdb" -D "$work/pg/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
  --pwfile="$work/pg/pwfile" --no-sync -E UTF8 --locale=C >/dev/null
"${as_owner[@]}" "$pgbin/postgres" -D "$work/pg/data" -k "$work/pg" -p "$port" -c listen_addresses=127.0.0.1 \
  -c fsync=off -c shared_buffers=128MB >"$work/pg.log" 2>&1 &
pgpid=$!
trap 'kill -QUIT $pgpid 2>/dev/null || true' EXIT
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGPASSWORD=$password
for _ in $(seq 100); do "$pgbin/psql" -X -q -d postgres -c 'select 1' >/dev/null 2>&1 && break; sleep 0.2; done

sql() { "$pgbin/psql" -X -q -v ON_ERROR_STOP=1 -d "$1" -c "$2" >/dev/null; }
echo "=== loading (pgbench scale $scale and $small, $events events)" >&2
sql postgres "CREATE DATABASE big"; sql postgres "CREATE DATABASE small"; sql postgres "CREATE DATABASE busy"
"$pgbin/pgbench" -q -i -s "$scale" big >/dev/null 2>&1
"$pgbin/pgbench" -q -i -s "$small" small >/dev/null 2>&1
sql busy "CREATE TABLE events (id bigint PRIMARY KEY, payload text, updated int NOT NULL DEFAULT 0);
  INSERT INTO events SELECT g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text), 0 FROM generate_series(1, $events) g"
size() { "$pgbin/psql" -X -A -t -d postgres -c "select pg_database_size('$1')"; }

config() { # name db format
  cat > "$work/$1.toml" <<TOML
[repository]
path = "$work/repo-$1"
create = true
state_dir = "$work/state-$1"
[daemon]
attempts = 1
min_free_space = "1 KiB"
[jobs.pg]
kind = "postgres"
schedule = "@daily"
host = "127.0.0.1"
port = $port
user = "postgres"
password_file = "$work/pw"
databases = ["$2"]
format = "$3"
retention = { keep_last = 100 }
TOML
}
measure() { # label command...   -> "wall_s rss_kib"
  local label=$1; shift
  /usr/bin/time -f '%e %M' -o "$work/time" "$@" >/dev/null 2>"$work/$label.err" || { cat "$work/$label.err" >&2; exit 1; }
  cat "$work/time"
}
stored() { "$bin" snapshots --repo "$work/repo-$1" --state-dir "$work/state-$1" --json |
  python3 -c 'import json,sys; print(json.load(sys.stdin)[int(sys.argv[1])]["snapshot"]["stats"]["stored_bytes"])' "$2"; }

tsv=$work/results.tsv; : > "$tsv"
for i in $(seq "$repeat"); do
  for db in big small; do
    r=$(measure pg_dump env PGDATABASE=$db "$pgbin/pg_dump" -Fc -Z0); echo -e "pg_dump\t$db\t$r" >> "$tsv"
    rm -rf "$work/repo-b" "$work/state-b"; config b "$db" custom
    r=$(measure backuphub "$bin" run --config "$work/b.toml" pg); echo -e "backuphub\t$db\t$r" >> "$tsv"
  done
done

echo "=== ordered vs custom, day 1 / churn / day 2" >&2
config ord busy ordered; config cus busy custom
"$bin" run --config "$work/ord.toml" pg >/dev/null 2>&1; "$bin" run --config "$work/cus.toml" pg >/dev/null 2>&1
n=$((events / 100))
sql busy "DELETE FROM events WHERE id <= $n; UPDATE events SET updated = updated + 1, payload = md5(payload) WHERE id > $((events - n))"
sql busy "VACUUM events"
sql busy "INSERT INTO events SELECT g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text), 0 FROM generate_series($((events + 1)), $((events + n))) g"
"$bin" run --config "$work/ord.toml" pg >/dev/null 2>&1; "$bin" run --config "$work/cus.toml" pg >/dev/null 2>&1
# Day 3: no row changes, but the heap is rewritten in another order (CLUSTER, as after
# pg_repack or a VACUUM FULL of a bloated table ordered by another index).
sql busy "CREATE INDEX events_payload ON events (payload)"
sql busy "CLUSTER events USING events_payload"
"$bin" run --config "$work/ord.toml" pg >/dev/null 2>&1; "$bin" run --config "$work/cus.toml" pg >/dev/null 2>&1

python3 - "$tsv" "$results" "$(size big)" "$(size small)" "$(stored ord 0)" "$(stored ord 1)" "$(stored cus 0)" "$(stored cus 1)" "$(nproc)" "$(stored ord 2)" "$(stored cus 2)" <<'PY'
import statistics, sys
tsv, out, big, small, o1, o2, c1, c2, cores, o3, c3 = sys.argv[1:]
rows = [l.split('\t') for l in open(tsv).read().splitlines() if l]
def med(tool, db, col):
    return statistics.median(float(r[2].split()[col]) for r in rows if r[0] == tool and r[1] == db)
mb = lambda b: f"{int(b)/1e6:.0f} MB"
lines = [
  "# PostgreSQL benchmark (bench/postgres.sh)", "",
  f"One run on this machine ({cores} cores), medians of {len(rows)//4} repetitions; a real PostgreSQL server on loopback.", "",
  "| database | `pg_dump -Fc -Z0 > /dev/null` | backuphub (custom) | ratio | backuphub peak RSS |",
  "|---|---:|---:|---:|---:|",
]
for db, size in (("small", small), ("big", big)):
    pw, bw = med("pg_dump", db, 0), med("backuphub", db, 0)
    lines.append(f"| {db} ({mb(size)}) | {pw:.2f} s | {bw:.2f} s | {bw/pw:.2f}× | {med('backuphub', db, 1)/1024:.0f} MiB |")
o1, o2, c1, c2, o3, c3 = map(int, (o1, o2, c1, c2, o3, c3))
lines += ["",
  "Growth of the `events` database: day 2 after a day of clustered churn (1 % of rows deleted at the old end, 1 % updated and 1 % inserted at the new end, VACUUM between); day 3 after the same rows were rewritten in another physical order (`CLUSTER` on another index, as pg_repack or VACUUM FULL do):", "",
  "| format | day 1 stored | day 2 stored | day 2 / day 1 | day 3 stored | day 3 / day 1 |", "|---|---:|---:|---:|---:|---:|",
  f"| ordered | {mb(o1)} | {mb(o2)} | {100*o2/o1:.1f} % | {mb(o3)} | {100*o3/o1:.1f} % |",
  f"| custom | {mb(c1)} | {mb(c2)} | {100*c2/c1:.1f} % | {mb(c3)} | {100*c3/c1:.1f} % |", ""]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
PY
