#!/usr/bin/env bash
# Schemathesis against the running server: every check, every phase (examples, coverage, fuzzing,
# stateful), a fixed seed, with a valid key; on SQLite, then on PostgreSQL. fuzz/hooks.py says why
# it rewrites the few values whose rules an OpenAPI 3.0 schema cannot state.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
python_tools

seed="${FUZZ_SEED:-42}"
examples="${FUZZ_MAX_EXAMPLES:-300}"
passed=0 failed=0
fuzz() {
  local backend="$1" url="${2:-}"
  start_server ${url:+"$url"}
  if SCHEMATHESIS_HOOKS=hooks PYTHONPATH="$contract_dir/fuzz" schemathesis run "$BASE_URL/openapi.json" \
      --checks all --seed "$seed" --max-examples "$examples" \
      --header "Authorization: Bearer $API_KEY" --request-timeout 10; then
    echo "ok - schemathesis on $backend"; passed=$((passed + 1))
  else
    echo "not ok - schemathesis on $backend"; failed=$((failed + 1))
    tail -n 30 "$SERVER_LOG" >&2 || true
  fi
  # A 500 is a failure even where schemathesis would let it pass.
  if grep -q "internal error" "$SERVER_LOG"; then
    echo "not ok - the server logged an internal error on $backend"; failed=$((failed + 1))
    grep "internal error" "$SERVER_LOG" | head -n 5 >&2
  fi
}
fuzz SQLite
postgres_database
fuzz PostgreSQL "$POSTGRES_URL"
echo "$passed passed, $failed failed"
[[ "$failed" -eq 0 ]]
