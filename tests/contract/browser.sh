#!/usr/bin/env bash
# Browser contract test: drives Swagger UI at /docs in headless Chromium (tests/contract/browser/docs.mjs).
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

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
browser_dir="$here/browser"
bin="${USERS_API_BIN:-$repo/target/debug/users-api}"

if [[ ! -x /usr/bin/chromium ]]; then
  echo "# /usr/bin/chromium is missing: installing Debian's chromium" >&2
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
fi

if [[ ! -x "$bin" ]]; then
  echo "not ok - server binary $bin is missing (run cargo build, or set USERS_API_BIN)" >&2
  echo "0 passed, 1 failed"
  exit 1
fi

# playwright-core has no install script; npm ci only unpacks it from the registry into node_modules.
(cd "$browser_dir" && npm ci --no-audit --no-fund --loglevel=error) >&2

tmp="$(mktemp -d)"
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
key="uk_$(python3 -c 'import secrets, string; a = string.ascii_letters + string.digits; print("".join(secrets.choice(a) for _ in range(40)))')"
base_url="http://127.0.0.1:$port"

DATABASE_URL="sqlite://$tmp/users.db?mode=rwc" \
USERS_API_KEY="$key" \
PORT="$port" \
HOST=127.0.0.1 \
RUST_LOG="${RUST_LOG:-warn}" \
  "$bin" serve >"$tmp/server.log" 2>&1 &
server_pid=$!

ready=""
for _ in $(seq 1 150); do
  if python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2).read()' \
    "$base_url/openapi.json" 2>/dev/null; then
    ready=1
    break
  fi
  if ! kill -0 "$server_pid" 2>/dev/null; then
    break
  fi
  sleep 0.2
done
if [[ -z "$ready" ]]; then
  echo "not ok - users-api did not answer GET $base_url/openapi.json; its log:" >&2
  cat "$tmp/server.log" >&2 || true
  echo "0 passed, 1 failed"
  exit 1
fi
echo "# users-api (pid $server_pid) at $base_url, database $tmp/users.db"

status=0
BASE_URL="$base_url" API_KEY="${DOCS_API_KEY:-$key}" \
  node "$browser_dir/docs.mjs" || status=$?

if [[ "$status" -ne 0 ]]; then
  echo "# server log (last 50 lines):" >&2
  tail -n 50 "$tmp/server.log" >&2 || true
fi
exit "$status"
