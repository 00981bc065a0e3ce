#!/usr/bin/env bash
# Lints the committed spec: openapi-spec-validator, Redocly (recommended) and Spectral (spectral:oas).
# Rules switched off are in lint/redocly.yaml and lint/.spectral.yaml, each with its reason.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
python_tools
(cd "$contract_dir/lint" && npm ci --no-audit --no-fund --loglevel=error) >&2

passed=0 failed=0
check() {
  local name="$1"; shift
  if "$@"; then echo "ok - $name"; passed=$((passed + 1)); else echo "not ok - $name"; failed=$((failed + 1)); fi
}
spec="$repo/openapi/openapi.json"
check "openapi-spec-validator openapi.json" openapi-spec-validator "$spec"
check "openapi-spec-validator openapi.yaml" openapi-spec-validator "$repo/openapi/openapi.yaml"
# Redocly exits 0 on warnings; each warning must be fixed or switched off, so its totals decide.
redocly_clean() {
  "$contract_dir/lint/node_modules/.bin/redocly" lint --config "$contract_dir/lint/redocly.yaml" "$spec" >&2 || true
  "$contract_dir/lint/node_modules/.bin/redocly" lint --config "$contract_dir/lint/redocly.yaml" --format json "$spec" 2>/dev/null |
    python3 -c 'import json, sys; t = json.load(sys.stdin)["totals"]; print("# redocly totals:", t); sys.exit(t["errors"] + t["warnings"] > 0)'
}
check "redocly lint (recommended), no errors or warnings" redocly_clean
check "spectral lint (spectral:oas), no errors or warnings" \
  "$contract_dir/lint/node_modules/.bin/spectral" lint --fail-severity warn --ruleset "$contract_dir/lint/.spectral.yaml" "$spec"
echo "$passed passed, $failed failed"
[[ "$failed" -eq 0 ]]
