#!/usr/bin/env bash
#! Checks the observability files: the Prometheus alerting rules
#! (deploy/prometheus/alerts.yaml, `promtool check rules`), their unit tests
#! (alerts_test.yaml, `promtool test rules`; every alert must have a case
#! where it fires and one where it does not) and the Grafana dashboard
#! (deploy/grafana/hotmount.json: valid JSON, every expression parses as
#! PromQL, every panel on the ${datasource} variable). Every hotmount_*
#! name in these files must be a metric that src/metrics.rs exports, and
#! every dashboard expression must name one (or `up`).
#!
#! Usage: scripts/check-observability.sh [DASHBOARD.json]
#!   DASHBOARD.json, or $HOTMOUNT_DASHBOARD: another dashboard to check;
#!   $HOTMOUNT_PROMETHEUS_DIR: another directory holding alerts.yaml and
#!   alerts_test.yaml. Runs from any directory; needs promtool (package
#!   prometheus) and python3 with yaml (package python3-yaml).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
METRICS_RS="$ROOT/src/metrics.rs"
PROM_DIR="${HOTMOUNT_PROMETHEUS_DIR:-$ROOT/deploy/prometheus}"
DASHBOARD="${1:-${HOTMOUNT_DASHBOARD:-$ROOT/deploy/grafana/hotmount.json}}"

fail() { echo "check-observability: error: $*" >&2; exit 1; }

command -v promtool >/dev/null || fail "promtool is missing: install package prometheus"
command -v python3 >/dev/null || fail "python3 is missing"
python3 -c 'import yaml' 2>/dev/null || fail "python3 cannot import yaml: install package python3-yaml"
for file in "$METRICS_RS" "$PROM_DIR/alerts.yaml" "$PROM_DIR/alerts_test.yaml" "$DASHBOARD"; do
  [ -f "$file" ] || fail "$file is missing"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The names src/metrics.rs exports, one a line: the first argument of each
# opts("...") and histogram("...") call, with the namespace as prefix;
# histograms as their _bucket, _sum and _count series.
exported_metrics() {
  python3 - "$METRICS_RS" <<'PY'
import re, sys
text = open(sys.argv[1]).read().split("#[cfg(test)]")[0]
namespace = re.search(r'const NAMESPACE: &str = "([a-z_]+)";', text)
if not namespace:
    sys.exit("no `const NAMESPACE` in " + sys.argv[1])
names = []
for kind, name in re.findall(r'\b(opts|histogram)\(\s*"([a-zA-Z0-9_:]+)"', text):
    full = namespace.group(1) + "_" + name
    names += [full + s for s in ("_bucket", "_sum", "_count")] if kind == "histogram" else [full]
if not names:
    sys.exit("no opts(\"...\") or histogram(\"...\") call in " + sys.argv[1])
print("\n".join(sorted(set(names))))
PY
}

# Every hotmount_* token of the files given must be exported.
check_metric_names() {
  python3 - "$work/exported" "$@" <<'PY'
import re, sys
exported = set(open(sys.argv[1]).read().split())
bad = []
for path in sys.argv[2:]:
    for number, line in enumerate(open(path), 1):
        for token in re.findall(r'(?<![A-Za-z0-9_:])hotmount_[A-Za-z0-9_:]+', line):
            if token not in exported:
                bad.append(f"{path}:{number}: {token} is not a metric hotmount exports")
if bad:
    sys.exit("\n".join(bad))
PY
}

# The alerts, and for each a test case where it fires and one where it does
# not; prints the number of alerts.
check_alert_tests() {
  python3 - "$PROM_DIR/alerts.yaml" "$PROM_DIR/alerts_test.yaml" <<'PY'
import sys, yaml
rules = yaml.safe_load(open(sys.argv[1]))
alerts = [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
tests = yaml.safe_load(open(sys.argv[2]))
fires, silent = set(), set()
problems = []
for test in tests.get("tests", []):
    for case in test.get("alert_rule_test", []):
        name = case["alertname"]
        if name not in alerts:
            problems.append(f"alerts_test.yaml tests {name}, which alerts.yaml does not define")
        (fires if case.get("exp_alerts") else silent).add(name)
for name in alerts:
    if name not in fires:
        problems.append(f"{name} has no test case where it fires")
    if name not in silent:
        problems.append(f"{name} has no test case where it does not fire")
if not alerts:
    problems.append("alerts.yaml defines no alert")
if problems:
    sys.exit("\n".join(problems))
print(len(alerts))
PY
}

# The dashboard: JSON, every panel on ${datasource}, every expression (panel
# targets, query variables) naming an exported metric or `up`. Writes the
# expressions, variables replaced, as recording rules to "$work/dashboard.rules.yaml"
# for promtool to parse; prints the number of panels (rows left out).
check_dashboard() {
  python3 - "$1" "$work/exported" "$work/dashboard.rules.yaml" <<'PY'
import json, re, sys
path, exported_path, rules_path = sys.argv[1:4]
exported = set(open(exported_path).read().split())
try:
    dashboard = json.load(open(path))
except ValueError as err:
    sys.exit(f"{path} is not valid JSON: {err}")
problems, exprs = [], []
DATASOURCES = ("${datasource}", "$datasource")

def uses_variable(datasource):
    return isinstance(datasource, dict) and datasource.get("uid") in DATASOURCES

def walk(panels):
    for panel in panels:
        yield panel
        yield from walk(panel.get("panels", []))

count = 0
for panel in walk(dashboard.get("panels", [])):
    if panel.get("type") == "row":
        continue
    count += 1
    where = f'panel {panel.get("id")} "{panel.get("title")}"'
    targets = panel.get("targets", [])
    if not targets:
        problems.append(f"{where} has no query")
    if not uses_variable(panel.get("datasource")):
        problems.append(f"{where}: its datasource is not ${{datasource}}")
    for target in targets:
        ref = target.get("refId", "?")
        if "datasource" in target and not uses_variable(target["datasource"]):
            problems.append(f"{where} query {ref}: its datasource is not ${{datasource}}")
        if not target.get("expr"):
            problems.append(f"{where} query {ref} has no expr")
            continue
        exprs.append((f"{where} query {ref}", f'panel_{panel.get("id")}_{ref}', target["expr"]))

variables = dashboard.get("templating", {}).get("list", [])
if not any(v.get("name") == "datasource" and v.get("type") == "datasource"
           and v.get("query") == "prometheus" for v in variables):
    problems.append("no datasource variable of type prometheus named datasource")
for variable in variables:
    if variable.get("type") != "query":
        continue
    query = variable.get("query")
    if isinstance(query, dict):
        query = query.get("query")
    where = f'variable "{variable.get("name")}"'
    if not query:
        problems.append(f"{where} has no query")
        continue
    if not uses_variable(variable.get("datasource")):
        problems.append(f"{where}: its datasource is not ${{datasource}}")
    inner = re.fullmatch(r"\s*(?:label_values|query_result)\((.*?)(?:,\s*[A-Za-z_][A-Za-z0-9_]*)?\)\s*", query)
    exprs.append((where, f'variable_{variable.get("name")}', inner.group(1) if inner else query))

rules = []
for where, record, expr in exprs:
    tokens = re.findall(r"(?<![A-Za-z0-9_:])hotmount_[A-Za-z0-9_:]+", expr)
    for token in tokens:
        if token not in exported:
            problems.append(f"{where}: {token} is not a metric hotmount exports ({expr})")
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    if not tokens and not re.search(r"(?<![A-Za-z0-9_:])up(?![A-Za-z0-9_:])", unquoted):
        problems.append(f"{where} names no hotmount metric (nor up): {expr}")
    # Grafana's variables: intervals become 5m, the others match anything.
    promql = re.sub(r"\$\{?(__[a-z_]+)\}?", "5m", expr)
    promql = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*(?::[a-z]+)?\}?", ".*", promql)
    rules.append({"record": record, "expr": promql})
if not exprs:
    problems.append("the dashboard has no expression")
if problems:
    sys.exit(f"{path}:\n  " + "\n  ".join(problems))
with open(rules_path, "w") as out:
    json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, out, indent=1)
print(count)
PY
}

exported_metrics > "$work/exported" || fail "cannot read the exported metrics from $METRICS_RS"

(cd "$PROM_DIR" && promtool check rules alerts.yaml) \
  || fail "$PROM_DIR/alerts.yaml: promtool check rules failed"
check_metric_names "$PROM_DIR/alerts.yaml" "$PROM_DIR/alerts_test.yaml" \
  || fail "the rules or their tests name metrics hotmount does not export"
(cd "$PROM_DIR" && promtool test rules alerts_test.yaml) \
  || fail "$PROM_DIR/alerts_test.yaml: promtool test rules failed"
alerts=$(check_alert_tests) || fail "$PROM_DIR/alerts_test.yaml does not test every alert both ways"

panels=$(check_dashboard "$DASHBOARD") || fail "the dashboard $DASHBOARD does not pass"
check_metric_names "$DASHBOARD" || fail "the dashboard $DASHBOARD names metrics hotmount does not export"
promtool check rules "$work/dashboard.rules.yaml" >"$work/promql.out" 2>&1 || {
  cat "$work/promql.out" >&2
  fail "an expression of $DASHBOARD is not valid PromQL (panel_ID_REFID or variable_NAME above)"
}

echo "check-observability: $alerts alerts tested, dashboard: $panels panels, every metric exported"
