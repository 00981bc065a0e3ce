# Shared by the contract scripts (source it): the repository, the tools' cache, and a users-api
# server started on a free loopback port with a fresh key and its own database.

contract_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$contract_dir/../.." && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/users-api-contract"
bin="${USERS_API_BIN:-$repo/target/debug/users-api}"
mkdir -p "$cache"

# Python tools, pinned in one requirements file, in a venv kept between runs.
python_tools() {
  local venv="$cache/venv"
  local wanted="$contract_dir/requirements.txt"
  if [[ ! -x "$venv/bin/python" ]]; then python3 -m venv "$venv"; fi
  if ! cmp -s "$wanted" "$venv/.installed" 2>/dev/null; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$wanted" >&2
    cp "$wanted" "$venv/.installed"
  fi
  export PATH="$venv/bin:$PATH"
}

random_key() {
  python3 -c 'import secrets, string; a = string.ascii_letters + string.digits; print("uk_" + "".join(secrets.choice(a) for _ in range(40)))'
}

# A fresh PostgreSQL database on the server TEST_DATABASE_URL names (or the local default); sets
# POSTGRES_URL to it. Dropped by stop_servers. (Not a $(…) function: it must record the database
# in this shell for the clean-up.)
postgres_database() {
  local admin="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
  local name="users_api_contract_$(date +%s)_$RANDOM"
  psql "$admin" -v ON_ERROR_STOP=1 -qc "CREATE DATABASE $name" >&2
  _databases+=("$admin $name")
  POSTGRES_URL="${admin%/*}/$name"
}

_servers=()
_databases=()
_tmpdirs=()
stop_servers() {
  local pid entry
  for pid in "${_servers[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  done
  for entry in "${_databases[@]}"; do
    psql "${entry% *}" -qc "DROP DATABASE IF EXISTS ${entry#* } WITH (FORCE)" >&2 || true
  done
  for entry in "${_tmpdirs[@]}"; do rm -rf "$entry"; done
}
trap stop_servers EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_server [DATABASE_URL]: starts users-api (on a fresh SQLite file when no URL is given) and
# sets BASE_URL, API_KEY, SERVER_LOG. Fails, printing the server's log, if it does not answer.
start_server() {
  if [[ ! -x "$bin" ]]; then
    echo "not ok - server binary $bin is missing (cargo build, or set USERS_API_BIN)" >&2
    return 1
  fi
  local tmp port url
  tmp="$(mktemp -d)"
  _tmpdirs+=("$tmp")
  url="${1:-sqlite://$tmp/users.db?mode=rwc}"
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
  API_KEY="$(random_key)"
  BASE_URL="http://127.0.0.1:$port"
  SERVER_LOG="$tmp/server.log"
  DATABASE_URL="$url" USERS_API_KEY="$API_KEY" PORT="$port" HOST=127.0.0.1 RUST_LOG="${RUST_LOG:-warn}" \
    "$bin" serve >"$SERVER_LOG" 2>&1 &
  local pid=$!
  _servers+=("$pid")
  for _ in $(seq 1 150); do
    if python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2).read()' \
      "$BASE_URL/openapi.json" 2>/dev/null; then
      echo "# users-api (pid $pid) at $BASE_URL on ${url%%\?*}" >&2
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  echo "not ok - users-api did not answer GET $BASE_URL/openapi.json; its log:" >&2
  cat "$SERVER_LOG" >&2 || true
  return 1
}
