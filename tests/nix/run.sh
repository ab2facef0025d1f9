#!/usr/bin/env bash
# Nix checks that run without nixpkgs (Debian's Nix 2.8 plus ../shared/nixpkgs-lib):
#  - every .nix file of the repository parses;
#  - tests/nix/eval.nix: module.nix under lib.evalModules with stubs (unit, hardening, firewall,
#    credentials, assertion messages) and flake.lock against ../shared/nixpkgs-pin.md;
#  - configurations that must not evaluate fail with the expected message;
#  - the harness itself can fail (a deliberately false expectation).
# Usage: bash tests/nix/run.sh   (from anywhere; installs nix-bin with apt-get when missing)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
shared=$(cd "$root/../shared" 2>/dev/null && pwd) || {
  echo "tests/nix: $root/../shared not found (needs shared/nixpkgs-lib and shared/nixpkgs-pin.md beside the repository)" >&2
  exit 1
}
[ -f "$shared/nixpkgs-lib/lib/default.nix" ] || { echo "tests/nix: no $shared/nixpkgs-lib/lib" >&2; exit 1; }
[ -f "$shared/nixpkgs-pin.md" ] || { echo "tests/nix: no $shared/nixpkgs-pin.md" >&2; exit 1; }

if ! command -v nix-instantiate >/dev/null 2>&1; then
  echo "tests/nix: installing nix-bin" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq nix-bin >/dev/null
fi

passed=0
failed=0
pass() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL $*" >&2; }

cd "$root"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
log=$tmp/log

# 1. every .nix file parses
while IFS= read -r -d '' f; do
  if nix-instantiate --parse "$f" >/dev/null 2>"$log"; then pass; else fail "parse $f"; cat "$log" >&2; fi
done < <(find . \( -name .git -o -name target -o -name node_modules -o -name result \) -prune -o -name '*.nix' -type f -print0 | sort -z)

# README.md's complete example for the Pi, evaluated against the module too
awk '/^```nix$/ { inb = 1; buf = ""; next }
     inb && /^```$/ { if (buf ~ /^# pi\.nix\n/) printf "%s", buf; inb = 0; next }
     inb { buf = buf $0 "\n" }' README.md >"$tmp/pi.nix"
[ -s "$tmp/pi.nix" ] || fail "no \`\`\`nix block starting with '# pi.nix' in README.md"

evalnix() {
  nix-instantiate --eval --strict --json tests/nix/eval.nix --arg shared "$shared" --arg piExample "$tmp/pi.nix" "$@"
}

# 2. the expectations of eval.nix (each counted)
if out=$(evalnix 2>"$log"); then
  n=$(printf '%s' "$out" | sed -n 's/.*"passed":\([0-9][0-9]*\).*/\1/p')
  if [ -n "$n" ] && [ "$n" -gt 0 ]; then
    passed=$((passed + n))
    echo "tests/nix: eval.nix: $n expectations hold"
  else
    fail "eval.nix printed no count: $out"
  fi
else
  fail "eval.nix"
  cat "$log" >&2
fi

# 3. configurations that must not evaluate, and why
expect_error() { # case, message fragment
  if evalnix --argstr case "$1" >/dev/null 2>"$log"; then
    fail "case $1 evaluated, but must not"
  elif grep -qF -- "$2" "$log"; then
    pass
  else
    fail "case $1 failed without the message '$2':"
    cat "$log" >&2
  fi
}
expect_error bad-kind 'jobs.k8s.kind'"'"' is not of type `one of "path", "command"'
expect_error store-credential 'absolute path not in the Nix store'
expect_error relative-credential 'absolute path not in the Nix store'

# 4. the harness can fail
if evalnix --arg selfTest true >/dev/null 2>"$log"; then
  fail "eval.nix passed with a deliberately false expectation"
elif grep -qF 'FAIL self-test: this expectation must fail' "$log"; then
  pass
else
  fail "eval.nix self-test failed for another reason:"
  cat "$log" >&2
fi

echo "nix: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
