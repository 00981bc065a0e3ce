#!/usr/bin/env bash
# SDK contract test: generates three client SDKs from the committed openapi/openapi.json and runs
# each against a real users-api:
#   python      openapi-python-client             -> tests/contract/sdk/python_client.py
#   typescript  openapi-generator typescript-fetch -> tests/contract/sdk/ts_client.ts (tsc --strict, node)
#   rust        openapi-generator rust (reqwest)   -> tests/contract/sdk/rust/ (a workspace of its own)
# Each test creates a user of every variant (NewContactUser, NewPersonUser, NewUserWithExternalId on
# POST /users; NewSignUpUser without a key and NewUserByOperator with one on POST /v1/users), checks the
# 201 parses as the matching model with the values sent, then gets a 409 email_exists and a 422
# validation_failed as the generated ErrorResponse.
#
# Tools, pinned, installed once into ${XDG_CACHE_HOME:-~/.cache}/users-api-contract/sdk/: a venv
# from tests/contract/sdk/requirements.txt (openapi-python-client, openapi-generator-cli with its
# bundled jar; needs Java) and typescript under node/. The Python and TypeScript clients are
# generated into a temporary directory, removed at exit; the Rust program is copied to and built in
# target/sdk-rust/crate/ (ignored, kept between runs for cargo's cache), with its generated client
# crate in target/sdk-rust/crate/generated/. Nothing is generated inside the source tree.
#
# Env: USERS_API_BIN  the server binary (default: <repo>/target/debug/users-api)
#      SDK_STRICT=0   report the generator misreads that a spec change can fix as `# known issue`
#                     notes instead of failures (default 1: they fail; the spec must be fixed)
#      SDK_ONLY       a space-separated subset of "python typescript rust" (default: all three)
#      SDK_CARGO_TARGET_DIR  where the Rust program builds (default: <repo>/target/sdk-rust)
#
# Prints one line per check (`ok - …` / `not ok - …`), `# …` notes and timings, and ends with
# `N passed, M failed`; exits 1 on any failure.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
sdk="$here/sdk"
spec="$repo/openapi/openapi.json"
bin="${USERS_API_BIN:-$repo/target/debug/users-api}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/users-api-contract/sdk"
strict="${SDK_STRICT:-1}"
only="${SDK_ONLY:-python typescript rust}"
rust_target="${SDK_CARGO_TARGET_DIR:-$repo/target/sdk-rust}"

# Pinned tool versions (the venv's full pin list is tests/contract/sdk/requirements.txt).
OPENAPI_PYTHON_CLIENT_VERSION=0.29.1
OPENAPI_GENERATOR_CLI_VERSION=7.26.0
TYPESCRIPT_VERSION=5.9.3

passed=0
failed=0
timings=()
pass() { passed=$((passed + 1)); echo "ok - $*"; }
fail() { failed=$((failed + 1)); echo "not ok - $*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
wants() { [[ " $only " == *" $1 "* ]]; }

finish() {
  echo "# timings: ${timings[*]:-none}"
  echo "$passed passed, $failed failed"
  [[ $failed -eq 0 ]]
}

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

# --- tools -------------------------------------------------------------------------------------
venv="$cache/venv"
tsc="$cache/node/node_modules/typescript/bin/tsc"
install_tools() {
  local stamp
  stamp="$(sha256sum "$sdk/requirements.txt" | cut -d' ' -f1)"
  if [[ "$(cat "$venv/.requirements.sha256" 2>/dev/null || true)" != "$stamp" ]] || ! "$venv/bin/python" -c '' 2>/dev/null; then
    echo "# installing the Python tools into $venv"
    rm -rf "$venv"
    mkdir -p "$cache"
    python3 -m venv "$venv" || return 1
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$sdk/requirements.txt" || return 1
    echo "$stamp" >"$venv/.requirements.sha256"
  fi
  if wants typescript && [[ "$(node -p "require('$cache/node/node_modules/typescript/package.json').version" 2>/dev/null || true)" != "$TYPESCRIPT_VERSION" ]]; then
    echo "# installing typescript@$TYPESCRIPT_VERSION into $cache/node"
    mkdir -p "$cache/node"
    npm install --no-save --no-audit --no-fund --loglevel=error --prefix "$cache/node" "typescript@$TYPESCRIPT_VERSION" |
      sed '/^$/d; s/^/#   /' || return 1
  fi
  if (wants typescript || wants rust) && ! command -v java >/dev/null; then
    echo "# java is missing (openapi-generator needs it): installing Debian's default-jre-headless"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless; } |
      sed '/^$/d; s/^/#   /' || return 1
  fi
}
t="$(now)"
install_tools || true
export PATH="$venv/bin:$PATH" # openapi-python-client runs ruff from PATH
if [[ "$(openapi-python-client --version 2>/dev/null)" == *"$OPENAPI_PYTHON_CLIENT_VERSION"* &&
  "$(openapi-generator-cli version 2>/dev/null | tail -n 1)" == "$OPENAPI_GENERATOR_CLI_VERSION" ]] &&
  { ! wants typescript || [[ -f "$tsc" ]]; }; then
  pass "tools: openapi-python-client $OPENAPI_PYTHON_CLIENT_VERSION, openapi-generator $OPENAPI_GENERATOR_CLI_VERSION, typescript $TYPESCRIPT_VERSION ($(since "$t") s)"
  timings+=("tools=$(since "$t")s")
else
  fail "tools: could not install openapi-python-client $OPENAPI_PYTHON_CLIENT_VERSION, openapi-generator-cli $OPENAPI_GENERATOR_CLI_VERSION (with Java) and typescript $TYPESCRIPT_VERSION"
  finish
  exit 1
fi

# --- the spec the generators read ----------------------------------------------------------------
# The committed spec, as it is: where a generator misread it, the service's types were changed.
gen_spec="$tmp/openapi.json"
cp "$spec" "$gen_spec"

# --- generate ------------------------------------------------------------------------------------
gen="$tmp/gen"
mkdir -p "$gen"
py_ok=0 ts_ok=0 rs_ok=0

if wants python; then
  t="$(now)"
  if (cd "$gen" && openapi-python-client generate --path "$gen_spec" --output-path "$gen/python/users_api_client" \
    --meta none) >"$tmp/python-gen.log" 2>&1; then
    if grep -q "Warning" "$tmp/python-gen.log"; then
      fail "python: openapi-python-client generated with warnings ($(since "$t") s)"
      grep -v '^$' "$tmp/python-gen.log" | grep -v '^{\|^}\|"\$ref"' | sed -E 's/<[^>]* at 0x[0-9a-f]+>/<status>/' |
        sort | uniq -c | sort -rn | sed 's/^/#   /' | head -n 20
    else
      pass "python: openapi-python-client generated the client without warnings ($(since "$t") s)"
    fi
    py_ok=1
  else
    fail "python: openapi-python-client failed"
    sed 's/^/#   /' "$tmp/python-gen.log" | tail -n 20
  fi
  timings+=("python-generate=$(since "$t")s")
fi

if wants typescript; then
  t="$(now)"
  if openapi-generator-cli generate -g typescript-fetch -i "$gen_spec" -o "$gen/ts/client" \
    --global-property apiDocs=false,modelDocs=false >"$tmp/ts-gen.log" 2>&1; then
    ts_generate="$(since "$t")"
    timings+=("typescript-generate=${ts_generate}s")
    t2="$(now)"
    cp "$sdk/ts_client.ts" "$gen/ts/ts_client.ts"
    if (cd "$gen/ts" && node "$tsc" --strict --target ES2022 --module commonjs --moduleResolution node10 \
      --lib ES2022,DOM --outDir dist ts_client.ts) >"$tmp/tsc.log" 2>&1; then
      pass "typescript: typescript-fetch client generated ($ts_generate s) and compiled with tsc --strict ($(since "$t2") s)"
      ts_ok=1
    else
      fail "typescript: tsc --strict rejected the generated client or ts_client.ts"
      sed 's/^/#   /' "$tmp/tsc.log" | head -n 30
    fi
    timings+=("typescript-compile=$(since "$t2")s")
  else
    fail "typescript: openapi-generator typescript-fetch failed"
    grep -E 'ERROR|Exception' "$tmp/ts-gen.log" | sed 's/^/#   /' | head -n 20
    timings+=("typescript-generate=$(since "$t")s")
  fi
fi

if wants rust; then
  # The test program is built outside the source tree, in $rust_target/crate/: its Cargo.toml, src/
  # and the committed Cargo.lock are copied there (only when they differ, so that cargo's
  # fingerprints hold), and the client is generated into crate/generated/, its path dependency.
  crate="$rust_target/crate"
  mkdir -p "$crate/src"
  for f in Cargo.toml Cargo.lock src/main.rs; do
    cmp -s "$sdk/rust/$f" "$crate/$f" || cp "$sdk/rust/$f" "$crate/$f"
  done
  t="$(now)"
  if openapi-generator-cli generate -g rust -i "$gen_spec" -o "$gen/rust" \
    --additional-properties=packageName=users_api_client,packageVersion=0.0.0 \
    --global-property apiDocs=false,modelDocs=false >"$tmp/rust-gen.log" 2>&1; then
    if ! diff -rq "$gen/rust" "$crate/generated" >/dev/null 2>&1; then
      rm -rf "$crate/generated"
      cp -r "$gen/rust" "$crate/generated"
    fi
    rust_generate="$(since "$t")"
    timings+=("rust-generate=${rust_generate}s")
    t2="$(now)"
    # Not --locked: the generated crate's dependencies follow the spec (a `format: uuid` adds
    # uuid). Cargo keeps every version the committed lock pins and resolves only what is new.
    if (cd "$crate" && CARGO_TARGET_DIR="$rust_target" cargo build --quiet) >"$tmp/rust-build.log" 2>&1; then
      pass "rust: openapi-generator rust client generated ($rust_generate s) and the test program built ($(since "$t2") s)"
      rs_ok=1
      if ! cmp -s "$crate/Cargo.lock" "$sdk/rust/Cargo.lock"; then
        echo "# note: the generated crate's dependencies changed; to pin them, copy $crate/Cargo.lock to tests/contract/sdk/rust/Cargo.lock"
      fi
    else
      fail "rust: the generated crate or tests/contract/sdk/rust did not build"
      sed 's/^/#   /' "$tmp/rust-build.log" | tail -n 30
    fi
    timings+=("rust-build=$(since "$t2")s")
  else
    fail "rust: openapi-generator rust failed"
    grep -E 'ERROR|Exception' "$tmp/rust-gen.log" | sed 's/^/#   /' | head -n 20
    timings+=("rust-generate=$(since "$t")s")
  fi
fi

# --- the server ----------------------------------------------------------------------------------
if [[ ! -x "$bin" ]]; then
  fail "server binary $bin is missing (run cargo build, or set USERS_API_BIN)"
  finish
  exit 1
fi
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
key="uk_$(python3 -c 'import secrets, string; a = string.ascii_letters + string.digits; print("".join(secrets.choice(a) for _ in range(40)))')"
base_url="http://127.0.0.1:$port"
run_id="$(date +%s)$RANDOM"

t="$(now)"
DATABASE_URL="sqlite://$tmp/users.db?mode=rwc" \
USERS_API_KEY="$key" \
HOST=127.0.0.1 \
PORT="$port" \
RUST_LOG="${RUST_LOG:-warn}" \
  "$bin" serve >"$tmp/server.log" 2>&1 &
server_pid=$!

ready=0
for _ in $(seq 1 150); do # 30 s at most
  if curl -fsS -o /dev/null --max-time 2 "$base_url/openapi.json" 2>/dev/null; then
    ready=1
    break
  fi
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.2
done
if [[ $ready -eq 1 ]]; then
  pass "server: GET /openapi.json answers on $base_url ($(since "$t") s)"
else
  fail "server: no answer on $base_url/openapi.json within 30 s"
  sed 's/^/#   /' "$tmp/server.log" | tail -n 20
  finish
  exit 1
fi
timings+=("server-start=$(since "$t")s")

# --- the client tests ----------------------------------------------------------------------------
# Runs one client test, echoes its lines and adds its ok / not ok lines to the counts.
run_client() {
  local name="$1"
  shift
  local out="$tmp/$name.out" rc=0 t
  t="$(now)"
  BASE_URL="$base_url" API_KEY="$key" RUN_ID="$run_id" SDK_STRICT="$strict" "$@" >"$out" 2>"$tmp/$name.err" || rc=$?
  cat "$out"
  local ok bad
  ok="$(grep -c '^ok ' "$out" || true)"
  bad="$(grep -c '^not ok ' "$out" || true)"
  passed=$((passed + ok))
  failed=$((failed + bad))
  if [[ $rc -ne 0 && $bad -eq 0 ]]; then
    fail "$name: the test exited with status $rc"
  fi
  if [[ $ok -eq 0 && $rc -eq 0 ]]; then
    fail "$name: the test ran no check"
  fi
  if [[ $rc -ne 0 && -s "$tmp/$name.err" ]]; then
    sed 's/^/#   /' "$tmp/$name.err" | tail -n 20
  fi
  timings+=("$name-test=$(since "$t")s")
}

if wants python; then
  if [[ $py_ok -eq 1 ]]; then
    run_client python env PYTHONPATH="$gen/python" "$venv/bin/python" "$sdk/python_client.py"
  else
    fail "python: client test not run (no client)"
  fi
fi
if wants typescript; then
  if [[ $ts_ok -eq 1 ]]; then
    run_client typescript node "$gen/ts/dist/ts_client.js"
  else
    fail "typescript: client test not run (no client)"
  fi
fi
if wants rust; then
  if [[ $rs_ok -eq 1 ]]; then
    run_client rust "$rust_target/debug/users-api-sdk-contract"
  else
    fail "rust: client test not run (no client)"
  fi
fi

if [[ $failed -ne 0 && -s "$tmp/server.log" ]]; then
  echo "# server log (last lines):"
  sed 's/^/#   /' "$tmp/server.log" | tail -n 20
fi
finish
