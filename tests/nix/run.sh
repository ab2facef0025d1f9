#!/usr/bin/env bash
# Nix checks that run without nixpkgs (Debian's Nix 2.8 plus ../shared/nixpkgs-lib):
#  - every .nix file of the repository parses;
#  - tests/nix/eval.nix: module.nix under lib.evalModules with stubs (unit, hardening, firewall,
#    credentials, postgres, kubernetes, volume and s3 jobs, assertion messages, the monitoring
#    options), the examples of README.md and nix/module.md, nix/package.nix's arguments and
#    source, and flake.lock against ../shared/nixpkgs-pin.md;
#  - configurations that must not evaluate fail with the expected message (and, in eval.nix,
#    every assertion of the module with a configuration that fails it);
#  - backuphub-admin, as the module writes it, linted and run against a stand-in systemd-run;
#  - nix/package.nix's postInstall, run into a directory: what it installs, and that the files
#    of services.backuphub.monitoring are there;
#  - the VM test's Python script compiles (the VM itself needs KVM and real nixpkgs);
#  - the expectations catch deliberate mistakes in the module (tests/nix/mutants.py);
#  - the harness itself can fail (a deliberately false expectation).
# Usage: bash tests/nix/run.sh   (from anywhere; installs nix-bin and shellcheck with apt-get
# when missing)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
shared=$(cd "$root/../shared" 2>/dev/null && pwd) || {
  echo "tests/nix: $root/../shared not found (needs shared/nixpkgs-lib and shared/nixpkgs-pin.md beside the repository)" >&2
  exit 1
}
[ -f "$shared/nixpkgs-lib/lib/default.nix" ] || { echo "tests/nix: no $shared/nixpkgs-lib/lib" >&2; exit 1; }
[ -f "$shared/nixpkgs-pin.md" ] || { echo "tests/nix: no $shared/nixpkgs-pin.md" >&2; exit 1; }

missing=()
command -v nix-instantiate >/dev/null 2>&1 || missing+=(nix-bin)
# lints backuphub-admin, as writeShellApplication would
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
if [ ${#missing[@]} -gt 0 ]; then
  echo "tests/nix: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${missing[@]}" >/dev/null
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
# and nix/module.md's example of a postgres job with a drill
awk '/^```nix$/ { inb = 1; buf = ""; next }
     inb && /^```$/ { if (buf ~ /kind = "postgres"/ && buf ~ /drill = /) printf "%s", buf; inb = 0; next }
     inb { buf = buf $0 "\n" }' nix/module.md >"$tmp/postgres.nix"
[ -s "$tmp/postgres.nix" ] || fail "no \`\`\`nix block with a postgres job and a drill in nix/module.md"
# and its example of a kubernetes job with a kubeconfig credential
awk '/^```nix$/ { inb = 1; buf = ""; next }
     inb && /^```$/ { if (buf ~ /kind = "kubernetes"/ && buf ~ /kubeconfig = /) printf "%s", buf; inb = 0; next }
     inb { buf = buf $0 "\n" }' nix/module.md >"$tmp/kubernetes.nix"
[ -s "$tmp/kubernetes.nix" ] || fail "no \`\`\`nix block with a kubernetes job and a kubeconfig in nix/module.md"
# and its example of a volume job with a kubeconfig credential
awk '/^```nix$/ { inb = 1; buf = ""; next }
     inb && /^```$/ { if (buf ~ /kind = "volume"/ && buf ~ /kubeconfig = /) printf "%s", buf; inb = 0; next }
     inb { buf = buf $0 "\n" }' nix/module.md >"$tmp/volume.nix"
[ -s "$tmp/volume.nix" ] || fail "no \`\`\`nix block with a volume job and a kubeconfig in nix/module.md"
# and its example of an s3 job with its keys as credentials
awk '/^```nix$/ { inb = 1; buf = ""; next }
     inb && /^```$/ { if (buf ~ /kind = "s3"/ && buf ~ /access_key_file = /) printf "%s", buf; inb = 0; next }
     inb { buf = buf $0 "\n" }' nix/module.md >"$tmp/s3.nix"
[ -s "$tmp/s3.nix" ] || fail "no \`\`\`nix block with an s3 job and its access_key_file in nix/module.md"
# and its examples of a monitoring machine: Prometheus rules and the dashboard, Grafana-managed alerts
awk '/^```nix$/ { inb = 1; buf = ""; next }
     inb && /^```$/ { if (buf ~ /monitoring\.prometheusRules/ && buf ~ /monitoring\.grafanaDashboard/) printf "%s", buf; inb = 0; next }
     inb { buf = buf $0 "\n" }' nix/module.md >"$tmp/monitoring.nix"
[ -s "$tmp/monitoring.nix" ] || fail "no \`\`\`nix block with monitoring.prometheusRules and monitoring.grafanaDashboard in nix/module.md"
awk '/^```nix$/ { inb = 1; buf = ""; next }
     inb && /^```$/ { if (buf ~ /monitoring\.grafanaAlertRules/ && buf ~ /DS_PROMETHEUS/) printf "%s", buf; inb = 0; next }
     inb { buf = buf $0 "\n" }' nix/module.md >"$tmp/grafana-alerts.nix"
[ -s "$tmp/grafana-alerts.nix" ] || fail "no \`\`\`nix block with monitoring.grafanaAlertRules and DS_PROMETHEUS in nix/module.md"

evalnix() {
  nix-instantiate --eval --strict --json tests/nix/eval.nix --arg shared "$shared" \
    --arg piExample "$tmp/pi.nix" --arg postgresExample "$tmp/postgres.nix" \
    --arg kubernetesExample "$tmp/kubernetes.nix" --arg volumeExample "$tmp/volume.nix" \
    --arg s3Example "$tmp/s3.nix" --arg monitoringExample "$tmp/monitoring.nix" \
    --arg grafanaAlertsExample "$tmp/grafana-alerts.nix" "$@"
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
expect_error bad-kind 'jobs.k8s.kind'"'"' is not of type `one of "path", "command", "postgres", "kubernetes", "volume", "s3"'"'"'.'
expect_error store-credential 'absolute path not in the Nix store'
expect_error relative-credential 'absolute path not in the Nix store'
for o in monitoring.prometheusRules monitoring.grafanaAlertRules monitoring.grafanaDashboard prometheusScrapeConfig; do
  expect_error "read-only-${o#monitoring.}" "The option \`services.backuphub.$o' is read-only"
done

# 4. backuphub-admin: the script the module writes, run with a stand-in systemd-run that prints
#    its arguments (one a line), so the translation of ARGS and --identity is checked for real
if evalnix --json --argstr print admin >"$tmp/admin.json" 2>"$log"; then
  jq -r . "$tmp/admin.json" >"$tmp/admin.in"
  store_run=/nix/store/00000000000000000000000000000000-systemd-258.2/bin/systemd-run
  grep -qF "$store_run" "$tmp/admin.in" || fail "backuphub-admin does not call $store_run"
  printf '#!/usr/bin/env bash\nprintf "%%s\\n" "$@"\n' >"$tmp/systemd-run"
  chmod +x "$tmp/systemd-run"
  # and a stand-in runuser: may the service user enter the current directory? ($FAKE_ACCESS)
  store_runuser=/nix/store/00000000000000000000000000000000-util-linux-2.41.2/bin/runuser
  grep -qF "$store_runuser" "$tmp/admin.in" || fail "backuphub-admin does not call $store_runuser"
  printf '#!/usr/bin/env bash\n[ "${FAKE_ACCESS:-yes}" = yes ]\n' >"$tmp/runuser"
  chmod +x "$tmp/runuser"
  sed -e "s|$store_run|$tmp/systemd-run|" -e "s|$store_runuser|$tmp/runuser|" "$tmp/admin.in" >"$tmp/backuphub-admin"
  if bash -n "$tmp/backuphub-admin"; then pass; else fail "backuphub-admin: bash -n"; fi
  if command -v shellcheck >/dev/null 2>&1; then
    if shellcheck -s bash "$tmp/backuphub-admin" >"$log" 2>&1; then pass; else fail "backuphub-admin: shellcheck"; cat "$log" >&2; fi
  fi
  echo "AGE-SECRET-KEY-1TEST" >"$tmp/identity"
  admin_case() { # name, expected lines (grep -x each, in order), args…
    local name=$1 expected=$2
    shift 2
    if [ "$(id -u)" != 0 ]; then echo "tests/nix: not root, skipping backuphub-admin case $name" >&2; return; fi
    if ! (cd "$tmp" && bash "$tmp/backuphub-admin" "$@") >"$tmp/admin.out" 2>"$log"; then
      fail "backuphub-admin $name: exit status"; cat "$log" >&2; return
    fi
    # the unit name holds the wrapper's pid: compare up to it
    sed -i -e 's|^\(BACKUPHUB_IDENTITY=/run/credentials/backuphub-admin-\)[0-9]*\.service/identity$|\1|' \
      -e 's|^\(--unit=backuphub-admin-\)[0-9]*$|\1|' "$tmp/admin.out"
    # every expected line appears, in this order
    if printf '%s\n' "$expected" | awk 'BEGIN { i = 0; n = 0 } NR == FNR { want[n++] = $0; next } i < n && $0 == want[i] { i++ } END { exit !(i == n) }' - "$tmp/admin.out"; then
      pass
    else
      fail "backuphub-admin $name: expected, in order:"; printf '%s\n' "$expected" >&2; echo "got:" >&2; cat "$tmp/admin.out" >&2
    fi
  }
  admin_case plain "-p
User=backuphub
-E
BACKUPHUB_REPO=/mnt/backup/backuphub
--
/nix/store/00000000000000000000000000000000-backuphub-0.1.0/bin/backuphub
snapshots
--job
etc" snapshots --job etc
  admin_case identity "-p
LoadCredential=identity:$tmp/identity
-E
BACKUPHUB_IDENTITY=/run/credentials/backuphub-admin-
--
/nix/store/00000000000000000000000000000000-backuphub-0.1.0/bin/backuphub
cat
latest:etc
hosts" cat --identity identity latest:etc hosts
  admin_case identity-equals "LoadCredential=identity:$tmp/identity
restore
latest:etc
--target
/tmp/x" restore --identity="$tmp/identity" latest:etc --target /tmp/x
  admin_case same-dir "--unit=backuphub-admin-
--same-dir
--
/nix/store/00000000000000000000000000000000-backuphub-0.1.0/bin/backuphub" ls latest:etc
  FAKE_ACCESS=no admin_case inaccessible-dir "--unit=backuphub-admin-
--working-directory=/
--
/nix/store/00000000000000000000000000000000-backuphub-0.1.0/bin/backuphub" ls latest:etc
  # the service manager expands $NAME and ${NAME} in a transient unit's command line unless told
  # not to: arguments (file names with '$' or spaces) must reach backuphub unchanged
  # shellcheck disable=SC2016
  admin_case literal-arguments '--expand-environment=no
-E
PATH=/nix/store/00000000000000000000000000000000-postgresql-17.6/bin:/run/current-system/sw/bin
--
/nix/store/00000000000000000000000000000000-backuphub-0.1.0/bin/backuphub
cat
latest:etc
my $HOME ${USER} file.txt' cat latest:etc 'my $HOME ${USER} file.txt'
  admin_case after-double-dash "--
cat
--
--identity" cat -- --identity
  # a missing file, an empty value and a directory are errors, not "no identity"
  admin_rejects() { # name, message fragment, args…
    local name=$1 message=$2
    shift 2
    if [ "$(id -u)" != 0 ]; then echo "tests/nix: not root, skipping backuphub-admin case $name" >&2; return; fi
    if (cd "$tmp" && bash "$tmp/backuphub-admin" "$@") >/dev/null 2>"$log"; then
      fail "backuphub-admin $name succeeded"
    elif grep -qF -- "$message" "$log"; then pass; else fail "backuphub-admin $name:"; cat "$log" >&2; fi
  }
  admin_rejects missing-identity "no identity file 'missing-file'" cat --identity missing-file x y
  admin_rejects empty-identity "no identity file ''" cat --identity= x y
  admin_rejects empty-identity-arg "no identity file ''" cat --identity "" x y
  mkdir -p "$tmp/identity-dir"
  admin_rejects directory-identity "no identity file 'identity-dir'" cat --identity identity-dir x y
else
  fail "eval.nix --argstr print admin"
  cat "$log" >&2
fi

# 5. the VM test's script is valid Python (it cannot run here: no KVM)
if evalnix --json --argstr print vm-script 2>"$log" | jq -r . >"$tmp/vm_test_script.py" && [ -s "$tmp/vm_test_script.py" ]; then
  if python3 -m py_compile "$tmp/vm_test_script.py" 2>"$log"; then pass; else fail "VM test script does not compile:"; cat "$log" >&2; fi
else
  fail "eval.nix --argstr print vm-script"
  cat "$log" >&2
fi

# 6. nix/package.nix's postInstall, run (as the build does, from the source's root) into a
#    directory: each file with its mode and content, and the files the module's
#    services.backuphub.monitoring names (under the stub package's store path) all there
if evalnix --json --argstr print postInstall >"$tmp/postInstall.json" 2>"$log" \
  && evalnix --json --argstr print monitoring >"$tmp/monitoring.json" 2>>"$log"; then
  jq -r . "$tmp/postInstall.json" >"$tmp/postInstall.sh"
  pkg=$tmp/pkg-out
  if ! out=$pkg bash -euo pipefail "$tmp/postInstall.sh" 2>"$log"; then
    fail "postInstall failed:"; cat "$log" >&2
  else
    expected=$(
      {
        echo "share/backuphub/dashboards/backuphub.json 644 dashboards/backuphub.json"
        echo "share/backuphub/alerts/backuphub.rules.yml 644 alerts/backuphub.rules.yml"
        echo "share/backuphub/alerts/grafana-provisioning.yml 644 alerts/grafana-provisioning.yml"
        echo "share/backuphub/kubernetes/make-kubeconfig.sh 755 deploy/kubernetes/make-kubeconfig.sh"
        for y in deploy/kubernetes/*.yaml; do echo "share/backuphub/kubernetes/${y##*/} 644 $y"; done
      }
    )
    want=$(printf '%s\n' "$expected" | cut -d' ' -f1,2 | sort)
    got=$(cd "$pkg" && find . -type f -printf '%P %m\n' | sort)
    if [ "$got" = "$want" ]; then pass; else
      fail "postInstall: expected these files and modes:"; printf '%s\n' "$want" >&2
      echo "got:" >&2; printf '%s\n' "$got" >&2
    fi
    different=
    while read -r dest _ src; do
      cmp -s "$src" "$pkg/$dest" || different+=" $dest"
    done <<<"$expected"
    if [ -z "$different" ]; then pass; else fail "postInstall: not copies of the repository's files:$different"; fi
    store=/nix/store/00000000000000000000000000000000-backuphub-0.1.0
    absent=
    while IFS= read -r p; do
      case $p in
        "$store"/*) [ -f "$pkg/${p#"$store"/}" ] || absent+=" $p" ;;
        *) absent+=" $p (not in $store)" ;;
      esac
    done < <(jq -r '.[]' "$tmp/monitoring.json")
    if [ -z "$absent" ] && [ "$(jq length "$tmp/monitoring.json")" -eq 3 ]; then pass; else
      fail "services.backuphub.monitoring names files postInstall does not install:$absent"
    fi
  fi
else
  fail "eval.nix --argstr print postInstall / monitoring"
  cat "$log" >&2
fi

# 7. the expectations can fail: each mutant of tests/nix/mutants.py (a copy of module.nix, or of
#    nix/module.md, with one deliberate mistake) fails the expectations it names
mkdir "$tmp/mutants"
if python3 tests/nix/mutants.py "$root" "$tmp/mutants" 2>"$log"; then
  for d in "$tmp/mutants"/*/; do
    d=${d%/}
    first=$(head -n 1 "$d/expect")
    if evalnix --arg modulePath "$d/module.nix" >/dev/null 2>"$log"; then
      fail "mutant $(basename "$d") ($first): eval.nix passed"
      continue
    fi
    missed=
    while IFS= read -r name; do
      grep -qF -- "FAIL $name:" "$log" || missed+="  $name"$'\n'
    done <"$d/expect"
    if [ -z "$missed" ]; then
      pass
    else
      fail "mutant $(basename "$d") ($first): these expectations did not fail:"
      printf '%s' "$missed" >&2
      sed -n '1,40p' "$log" >&2
    fi
  done
else
  fail "tests/nix/mutants.py:"
  cat "$log" >&2
fi

# 8. the harness can fail
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
