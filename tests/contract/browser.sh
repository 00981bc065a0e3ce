#!/usr/bin/env bash
# Browser contract test: drives Swagger UI at /docs in headless Chromium (browser/docs.mjs).
#
# Installs what it needs (Debian's chromium only when /usr/bin/chromium is missing; playwright-core
# from the lock with `npm ci`, never a browser download), starts users-api on a fresh SQLite file,
# a random key and a free loopback port, runs docs.mjs against it and exits with its status.
#
# Env: USERS_API_BIN  the server binary (default: <repo>/target/debug/users-api)
#      SCREENSHOT     where docs.mjs writes its full-page screenshot (default /tmp/users-api-docs.png)
#      DOCS_API_KEY   the key docs.mjs authorizes with (default: the key the server was started with;
#                     set it to a wrong key to see the test fail)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

if [[ ! -x /usr/bin/chromium ]]; then
  echo "# /usr/bin/chromium is missing: installing Debian's chromium" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
fi

# playwright-core has no install script; npm ci only unpacks it from the registry into node_modules.
(cd "$contract_dir/browser" && npm ci --no-audit --no-fund --loglevel=error) >&2

start_server || { echo "0 passed, 1 failed"; exit 1; }

status=0
BASE_URL="$BASE_URL" API_KEY="${DOCS_API_KEY:-$API_KEY}" node "$contract_dir/browser/docs.mjs" || status=$?
if [[ "$status" -ne 0 ]]; then
  echo "# server log (last 50 lines):" >&2
  tail -n 50 "$SERVER_LOG" >&2 || true
fi
exit "$status"
