#!/usr/bin/env bash
# Checks the monitoring artefacts of backuphub:
#   alerts/backuphub.rules.yml       Prometheus alerting rules
#   alerts/grafana-provisioning.yml  the same alerts as Grafana-managed rules
#   dashboards/backuphub.json        Grafana dashboard
#
#   tests/monitoring/check.sh [SCRAPE_FILE]
#
# (a) promtool check rules + promtool test rules; every PromQL expression in the
#     Grafana files must parse (promtool checks them from a throwaway rules file);
#     the dashboard must use the `datasource` variable everywhere and have no __inputs.
# (b) extracts every metric name the three files use (identifiers starting with
#     backuphub_, plus `up`; histogram _bucket/_sum/_count suffixes stripped).
# (c) with SCRAPE_FILE (a saved `curl -s host:9750/metrics`), fails unless every
#     extracted name other than `up` occurs in it. Without SCRAPE_FILE (c) is skipped.
#     Note: the daemon only exports a series once it has a value, so take the scrape
#     from a daemon that has run every job, a prune and a restore drill at least once.
#
# Needs promtool (Debian: prometheus) and python3 with PyYAML. Exits non-zero on any failure.
# DASHBOARD / RULES / GRAFANA_RULES override the file locations (used to test this script).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
rules=${RULES:-$root/alerts/backuphub.rules.yml}
grafana_rules=${GRAFANA_RULES:-$root/alerts/grafana-provisioning.yml}
dashboard=${DASHBOARD:-$root/dashboards/backuphub.json}
tests=$here/backuphub.rules.test.yml
scrape=${1:-}

fail() { echo "check.sh: FAIL: $*" >&2; exit 1; }
command -v promtool >/dev/null || fail "promtool not found (Debian: apt-get install prometheus)"
command -v python3 >/dev/null || fail "python3 not found"
[[ -z $scrape || -r $scrape ]] || fail "cannot read scrape file $scrape"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== (a) promtool check rules"
promtool check rules "$rules" || fail "promtool check rules $rules"
echo "== (a) promtool test rules"
if [[ $(realpath "$rules") == "$root/alerts/backuphub.rules.yml" ]]; then
  promtool test rules "$tests" || fail "promtool test rules $tests"
else
  echo "skipped: RULES points elsewhere, the unit tests load alerts/backuphub.rules.yml"
fi

echo "== (a) Grafana files: structure and PromQL syntax; (b) metric names"
python3 - "$rules" "$grafana_rules" "$dashboard" "$tmp" <<'PY' || fail "dashboard or alert files (see ERROR lines)"
import json, re, sys
import yaml

rules_file, grafana_file, dash_file, tmp = sys.argv[1:5]
errors = []
exprs = []   # (origin, promql as written)

# --- Prometheus rules
rules = yaml.safe_load(open(rules_file))
for g in rules["groups"]:
    for r in g["rules"]:
        exprs.append((f"{rules_file}: {r.get('alert') or r.get('record')}", str(r["expr"])))
prom_alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}

# --- Grafana alert provisioning
gp = yaml.safe_load(open(grafana_file))
if gp.get("apiVersion") != 1:
    errors.append(f"{grafana_file}: apiVersion must be 1")
grafana_alerts = set()
uids = set()
for g in gp.get("groups", []):
    for k in ("orgId", "name", "folder", "interval", "rules"):
        if k not in g:
            errors.append(f"{grafana_file}: group {g.get('name')} lacks {k}")
    for r in g.get("rules", []):
        where = f"{grafana_file}: {r.get('title')}"
        grafana_alerts.add(r.get("title"))
        for k in ("uid", "title", "condition", "data", "noDataState", "execErrState", "for", "annotations", "labels"):
            if k not in r:
                errors.append(f"{where}: lacks {k}")
        if r.get("uid") in uids:
            errors.append(f"{where}: duplicate uid {r.get('uid')}")
        uids.add(r.get("uid"))
        for k in ("summary", "description", "runbook_url"):
            if k not in r.get("annotations", {}):
                errors.append(f"{where}: annotation {k} missing")
        if "severity" not in r.get("labels", {}):
            errors.append(f"{where}: label severity missing")
        refs = {d.get("refId") for d in r.get("data", [])}
        if r.get("condition") not in refs:
            errors.append(f"{where}: condition {r.get('condition')} is not a refId of data")
        for d in r.get("data", []):
            m = d.get("model", {})
            if m.get("refId") != d.get("refId"):
                errors.append(f"{where}: model.refId differs from refId {d.get('refId')}")
            if d.get("datasourceUid") == "__expr__":
                continue
            if d.get("datasourceUid") != "${DS_PROMETHEUS}":
                errors.append(f"{where}: datasourceUid is {d.get('datasourceUid')!r}, expected ${{DS_PROMETHEUS}}")
            if "expr" not in m:
                errors.append(f"{where}: query {d.get('refId')} has no expr")
            else:
                exprs.append((f"{where} ({d.get('refId')})", m["expr"]))
if prom_alerts != grafana_alerts:
    errors.append(f"alert sets differ: only in Prometheus rules {sorted(prom_alerts - grafana_alerts)}, "
                  f"only in Grafana rules {sorted(grafana_alerts - prom_alerts)}")

# --- dashboard
dash = json.load(open(dash_file))
if "__inputs" in dash:
    errors.append(f"{dash_file}: has __inputs; use the datasource variable instead")
variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
dsv = variables.get("datasource")
if not dsv or dsv.get("type") != "datasource" or dsv.get("query") != "prometheus":
    errors.append(f"{dash_file}: needs a variable `datasource` of type datasource, query prometheus")
jobv = variables.get("job")
if not jobv or not jobv.get("multi") or not jobv.get("includeAll"):
    errors.append(f"{dash_file}: needs a multi-value `job` variable with All")

def uses_ds_var(ds):
    return isinstance(ds, dict) and ds.get("uid") in ("${datasource}", "$datasource")

def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels", []))

def unvar(q):
    # Make a Grafana query plain PromQL: $__rate_interval & co become a duration,
    # other variables (used inside label matchers) a plain string.
    q = re.sub(r"\$__\w+|\$\{__\w+\}", "5m", q)
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", "x", q)

for name, v in variables.items():
    if v.get("type") == "query":
        if not uses_ds_var(v.get("datasource")):
            errors.append(f"{dash_file}: variable {name} does not use ${{datasource}}")
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", q)
        if m:
            exprs.append((f"{dash_file}: variable {name}", unvar(m.group(1))))
        elif q:
            exprs.append((f"{dash_file}: variable {name}", unvar(q)))
n_targets = 0
for p in walk(dash.get("panels", [])):
    if p.get("type") == "row":
        continue
    where = f"{dash_file}: panel {p.get('id')} {p.get('title')!r}"
    if not uses_ds_var(p.get("datasource")):
        errors.append(f"{where}: panel datasource is not ${{datasource}}")
    if not p.get("targets"):
        errors.append(f"{where}: no targets")
    for t in p.get("targets", []):
        if not uses_ds_var(t.get("datasource")):
            errors.append(f"{where}: target {t.get('refId')} datasource is not ${{datasource}}")
        if not t.get("expr"):
            errors.append(f"{where}: target {t.get('refId')} has no expr")
            continue
        n_targets += 1
        exprs.append((f"{where} ({t.get('refId')})", unvar(t["expr"])))
if n_targets == 0:
    errors.append(f"{dash_file}: no queries found")

# --- syntax of every expression: one recording rule each, checked by promtool
with open(f"{tmp}/exprs.rules.yml", "w") as f:
    yaml.safe_dump({"groups": [{"name": "exprs", "rules": [
        {"record": f"check:expr_{i}", "expr": e} for i, (_, e) in enumerate(exprs)]}]}, f, width=1000)
with open(f"{tmp}/exprs.origin", "w") as f:
    for i, (o, e) in enumerate(exprs):
        f.write(f"check:expr_{i}\t{o}\t{e}\n")

# --- (b) metric names
def metric_names(expr):
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # drop string literals
    e = re.sub(r"\{[^}]*\}", "{}", e)                                         # drop label matchers
    for tok in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        if tok.startswith("backuphub_") or tok == "up":
            yield re.sub(r"_(bucket|sum|count)$", "", tok)

names = sorted({n for _, e in exprs for n in metric_names(e)})
if not names:
    errors.append("no metric names extracted")
with open(f"{tmp}/names", "w") as f:
    f.write("".join(n + "\n" for n in names))

# --- every runbook link names a heading of the README (GitHub's anchors)
readme = open(re.sub(r"alerts/[^/]*$", "README.md", rules_file)) if rules_file.endswith("alerts/backuphub.rules.yml") else None
if readme is not None:
    anchors = set()
    for line in readme:
        m = re.match(r"#+\s+(.*)", line)
        if m:
            anchors.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    links = [(f"{rules_file}: {r['alert']}", r.get("annotations", {}).get("runbook_url", ""))
             for g in rules["groups"] for r in g["rules"] if "alert" in r]
    links += [(f"{grafana_file}: {r.get('title')}", r.get("annotations", {}).get("runbook_url", ""))
              for g in gp.get("groups", []) for r in g.get("rules", [])]
    for where, url in links:
        anchor = url.partition("#")[2]
        if not anchor:
            errors.append(f"{where}: runbook_url {url!r} has no #anchor")
        elif anchor not in anchors:
            errors.append(f"{where}: runbook anchor #{anchor} is not a heading of README.md")

print(f"{len(exprs)} expressions, {len(names)} metric names")
if errors:
    for e in errors:
        print("ERROR:", e, file=sys.stderr)
    sys.exit(1)
PY

if ! out=$(promtool check rules "$tmp/exprs.rules.yml" 2>&1); then
  echo "$out" >&2
  echo "expressions (record name, origin, expression):" >&2
  cat "$tmp/exprs.origin" >&2
  fail "an expression in the dashboard or the alert files does not parse"
fi
echo "all expressions parse"
echo "metric names used:"
sed 's/^/  /' "$tmp/names"

echo "== (c) metric names against a live scrape"
if [[ -z $scrape ]]; then
  echo "skipped: no scrape file given (usage: $0 SCRAPE_FILE, e.g. curl -s host:9750/metrics > scrape.txt)"
  exit 0
fi
python3 - "$scrape" "$tmp/names" <<'PY' || fail "metric names missing from the scrape"
import re, sys
scrape, names_file = sys.argv[1:3]
exported = set()
for line in open(scrape, encoding="utf-8", errors="replace"):
    line = line.strip()
    if not line:
        continue
    m = re.match(r"#\s*(?:HELP|TYPE)\s+([A-Za-z_:][A-Za-z0-9_:]*)", line)
    if m:
        exported.add(m.group(1))
        continue
    if line.startswith("#"):
        continue
    m = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)", line)
    if m:
        exported.add(m.group(1))
        exported.add(re.sub(r"_(bucket|sum|count)$", "", m.group(1)))
if not any(n.startswith("backuphub_") for n in exported):
    print(f"ERROR: {scrape} contains no backuphub_ metric; is it a backuphub /metrics scrape?", file=sys.stderr)
    sys.exit(1)
missing = [n for n in open(names_file).read().split() if n != "up" and n not in exported]
if missing:
    print(f"ERROR: {len(missing)} metric name(s) used by the dashboard/alerts are not in {scrape}:", file=sys.stderr)
    for n in missing:
        print(f"  {n}", file=sys.stderr)
    print("(a metric only shows up once it has a value: run every job, a prune and a drill before scraping)", file=sys.stderr)
    sys.exit(1)
print(f"all names found in {scrape}")
PY
echo "check.sh: OK"
