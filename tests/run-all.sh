#!/usr/bin/env bash
# Runs every test of backuphub, installing what the tests need first (idempotent: a
# second run installs nothing). Usage: bash tests/run-all.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

need_apt=()
command -v setpriv >/dev/null || need_apt+=(util-linux)
command -v nix-instantiate >/dev/null || need_apt+=(nix-bin)
command -v promtool >/dev/null || need_apt+=(prometheus) # promtool lints /metrics
# Real PostgreSQL servers for the postgres job's tests (initdb, postgres, pg_dump, psql).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql postgresql-client)
# Debian's busybox: the fake Kubernetes API server runs the volume job's execs with it.
[ -x /bin/busybox ] || need_apt+=(busybox)
# Headless browser and its WebDriver for the web UI's end-to-end test (Debian's builds:
# Selenium is pointed at this chromedriver and never downloads one).
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# A real S3 server for the s3 job's tests: moto in server mode, from PyPI.
if ! python3 -c 'import moto.server, flask' >/dev/null 2>&1; then
  echo "installing: moto[server] (pip)" >&2
  python3 -m pip install --quiet 'moto[server]' 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages 'moto[server]'
fi

# Selenium, to drive chromium in the web UI's end-to-end test.
if ! python3 -c 'import selenium' >/dev/null 2>&1; then
  echo "installing: selenium (pip)" >&2
  python3 -m pip install --quiet selenium 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages selenium
fi

# Rust: unit, property and integration tests (real binary, real processes).
cargo test --locked --all-targets

# Web UI: the daemon cargo test just built, driven by headless chromium (screenshots and
# the metrics scrape it checks go to target/test-artifacts/).
python3 tests/web_ui/browser_test.py --bin target/debug/backuphub

# Monitoring: alert rules checked and unit-tested with promtool; dashboard queries parse.
bash tests/monitoring/check.sh

# Nix: module evaluation, flake.lock pin, parse checks.
bash tests/nix/run.sh
