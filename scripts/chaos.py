#!/usr/bin/env python3
"""`make chaos`: faults under a steady mixed load, on loopback, bounded in time.

The script owns everything it breaks: a Postgres cluster of its own (initdb in a
temporary directory, port 15432), a Redis of its own without persistence (16379), an
upstream echo server, and the four services (release binaries). Nothing else on the
machine is touched.

Load: CHAOS_WORKERS threads (default 6), each repeating register -> login -> proxied
request -> refresh -> proxied request -> logout -> the logged-out token must be
refused. Every request carries its own X-Request-Id, so each acknowledged login,
refresh and logout can be looked up afterwards in the stores (the audit events carry
the request id).

Faults, in turn: kill -9 of audit, session, auth and the gateway (down
CHAOS_DOWN_SECONDS, default 3, then restarted); Redis killed and restarted with its data
gone; Postgres stopped hard (immediate mode, a crash to its clients) and restarted;
audit down for CHAOS_AUDIT_DOWN_SECONDS (default 60).

Recovery: from the restart until a probe cycle (login, proxied request, refresh,
logout) succeeds through the gateway, or for audit until the outbox backlog written
before the restart has been delivered.

At the end, with the load stopped and the outboxes drained: every acknowledged login's
session exists, every acknowledged logout's session is revoked and its tokens are
refused by the gateway, and every acknowledged login, refresh and logout has exactly
one audit event. Prints a table per fault and the lost records; exits non-zero if a
record was lost, a revoked token was accepted or a request hung.
"""

import base64
import glob
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
WORKERS = int(os.environ.get("CHAOS_WORKERS", "6"))
DOWN = float(os.environ.get("CHAOS_DOWN_SECONDS", "3"))
AUDIT_DOWN = float(os.environ.get("CHAOS_AUDIT_DOWN_SECONDS", "60"))
REQUEST_TIMEOUT = 15.0  # a request still unanswered after this hung
RECOVERY_LIMIT = 60.0
RECOVERY_TARGET = 5.0
PG_PORT, REDIS_PORT, UPSTREAM_PORT, GATEWAY_PORT = 15432, 16379, 28081, 28080
DB = "aia_chaos"
DATABASE_URL = f"postgres://postgres@127.0.0.1:{PG_PORT}/{DB}"
RUN = uuid.uuid4().hex[:8]
PASSWORD = "correct horse battery staple"

work = tempfile.mkdtemp(prefix="aia-chaos.")
os.chmod(work, 0o755)


def log(message):
    sys.stderr.write(f"[chaos {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------- infrastructure


def as_postgres(argv):
    """Postgres refuses to run as root: run its tools as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def pg_bin(tool):
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[4]))
    for d in reversed(dirs):
        if os.path.exists(os.path.join(d, tool)):
            return os.path.join(d, tool)
    return shutil.which(tool) or sys.exit(f"no {tool}: install postgresql")


class Postgres:
    def __init__(self):
        # The socket, the log and the data live in a directory the server can write.
        self.run = os.path.join(work, "pg")
        self.data = os.path.join(self.run, "data")
        os.mkdir(self.run, 0o755)
        os.mkdir(self.data, 0o700)
        if os.geteuid() == 0:
            for d in (self.run, self.data):
                shutil.chown(d, "postgres", "postgres")
        subprocess.run(as_postgres([pg_bin("initdb"), "-D", self.data, "-U", "postgres",
                                    "--auth=trust", "-E", "UTF8"]),
                       check=True, stdout=subprocess.DEVNULL)

    def ctl(self, *args):
        opts = f"-p {PG_PORT} -k {self.run} -c listen_addresses=127.0.0.1"
        subprocess.run(as_postgres([pg_bin("pg_ctl"), "-D", self.data, "-o", opts, "-w",
                                    "-l", os.path.join(self.run, "postgres.log"), *args]),
                       check=True, stdout=subprocess.DEVNULL)

    def start(self):
        self.ctl("start")

    def crash(self):
        self.ctl("stop", "-m", "immediate")

    def sql(self, query):
        out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(PG_PORT), "-U", "postgres",
                              "-d", DB, "-tAX", "-F", "\t", "-c", query],
                             check=True, capture_output=True, text=True)
        return [line.split("\t") for line in out.stdout.splitlines() if line]


class Process:
    """A child we can kill -9 and start again with the same command."""

    def __init__(self, name, argv, env=None):
        self.name, self.argv, self.env, self.proc = name, argv, env, None

    def start(self):
        out = open(os.path.join(work, f"{self.name}.log"), "ab")
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=out)

    def kill(self):
        self.proc.kill()  # SIGKILL
        self.proc.wait()


def wait_port(port, limit=20.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on port {port}; see {work}")


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (the stdlib's name)
        body = b'{"ok":true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


# ---------------------------------------------------------------- the load


class Ledger:
    """What the load did, per phase, and what the platform acknowledged."""

    def __init__(self):
        self.lock = threading.Lock()
        self.phase = "steady"
        self.statuses = defaultdict(Counter)  # phase -> (operation, status) -> count
        self.logins = []    # (request id, user id, session id)
        self.refreshes = []  # (request id, session id)
        self.logouts = []   # (request id, session id, [access tokens])
        self.accepted_after_logout = []  # request ids

    def count(self, phase, operation, status):
        with self.lock:
            self.statuses[phase][(operation, status)] += 1


ledger = Ledger()
stopping = threading.Event()


def claims(token):
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


class Client:
    def __init__(self, count=True):
        self.conn = None
        self.count = count

    def request(self, operation, method, path, body=None, token=None):
        """(status or error name, parsed JSON or None, request id)."""
        rid = f"chaos-{uuid.uuid4().hex}"
        headers = {"x-request-id": rid, "host": f"127.0.0.1:{GATEWAY_PORT}"}
        if body is not None:
            headers["content-type"] = "application/json"
        if token:
            headers["authorization"] = f"Bearer {token}"
        phase = ledger.phase
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", GATEWAY_PORT, timeout=REQUEST_TIMEOUT)
            self.conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
            response = self.conn.getresponse()
            raw = response.read()
            status = response.status
            if response.getheader("connection", "").lower() == "close":
                self.close()
        except socket.timeout:
            status, raw = "hung", b""
            self.close()
        except (OSError, http.client.HTTPException):
            status, raw = "refused/reset", b""
            self.close()
        if self.count:
            ledger.count(phase, operation, status)
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return status, parsed, rid

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def cycle(client, email, record=True):
    """One user's round; True if every step succeeded."""
    status, _, _ = client.request("register", "POST", "/v1/auth/register", {"email": email, "password": PASSWORD})
    if status != 202:
        return False
    status, pair, rid = client.request("login", "POST", "/v1/auth/login", {"email": email, "password": PASSWORD})
    if status != 200:
        return False
    c = claims(pair["access_token"])
    sid = c["sid"]
    if record:
        with ledger.lock:
            ledger.logins.append((rid, c["sub"], sid))
    if client.request("proxied", "GET", "/api/chaos", token=pair["access_token"])[0] != 200:
        return False
    status, fresh, rid = client.request("refresh", "POST", "/v1/auth/refresh", {"refresh_token": pair["refresh_token"]})
    if status != 200:
        return False
    if record:
        with ledger.lock:
            ledger.refreshes.append((rid, sid))
    if client.request("proxied", "GET", "/api/chaos", token=fresh["access_token"])[0] != 200:
        return False
    status, _, rid = client.request("logout", "POST", "/v1/auth/logout", token=fresh["access_token"])
    if status != 204:
        return False
    tokens = [pair["access_token"], fresh["access_token"]]
    if record:
        with ledger.lock:
            ledger.logouts.append((rid, sid, tokens))
    status, _, rid = client.request("me after logout", "GET", "/v1/auth/me", token=fresh["access_token"])
    if status == 200:
        with ledger.lock:
            ledger.accepted_after_logout.append(rid)
    return status == 401


def worker(n):
    client = Client()
    i = 0
    while not stopping.is_set():
        i += 1
        if not cycle(client, f"chaos-{RUN}-{n}-{i}@example.com"):
            time.sleep(0.1)  # do not spin on a dead service


# ---------------------------------------------------------------- faults


def probe_until_ok(since, what):
    """Seconds from `since` until a whole probe cycle succeeds (None: not within the limit)."""
    client = Client(count=False)
    i = 0
    while time.monotonic() - since < RECOVERY_LIMIT:
        i += 1
        if cycle(client, f"probe-{RUN}-{what}-{i}@example.com", record=False):
            return time.monotonic() - since
        time.sleep(0.05)
    return None


def backlog_drained_since(pg, since_wall, since):
    """Seconds from `since` until no outbox row written before `since_wall` is left."""
    while time.monotonic() - since < RECOVERY_LIMIT * 3:
        try:
            rows = pg.sql(
                f"SELECT (SELECT count(*) FROM auth.audit_outbox WHERE created_at < to_timestamp({since_wall}))"
                f" + (SELECT count(*) FROM session.audit_outbox WHERE created_at < to_timestamp({since_wall}))")
            if rows and rows[0][0] == "0":
                return time.monotonic() - since
        except subprocess.CalledProcessError:
            pass
        time.sleep(0.1)
    return None


def outbox_rows(pg):
    rows = pg.sql("SELECT (SELECT count(*) FROM auth.audit_outbox) + (SELECT count(*) FROM session.audit_outbox)")
    return int(rows[0][0])


def metric(name, labels=""):
    """Sum of a gateway counter's series whose labels contain `labels`."""
    conn = http.client.HTTPConnection("127.0.0.1", 29100, timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def main():
    log(f"work directory {work}")
    pg = Postgres()
    pg.start()
    subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(PG_PORT), "-U", "postgres", "-qc",
                    f"CREATE DATABASE {DB}"], check=True)
    redis = Process("redis", ["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no"])
    redis.start()
    wait_port(REDIS_PORT)
    upstream = ThreadingHTTPServer(("127.0.0.1", UPSTREAM_PORT), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()

    env = dict(os.environ,
               APP_ENV="development", LOG_FORMAT="text", RUST_LOG="warn",
               DATABASE_URL=DATABASE_URL, REDIS_URL=f"redis://127.0.0.1:{REDIS_PORT}",
               AUDIT_GRPC_ADDR="127.0.0.1:25053", AUDIT_ADMIN_ADDR="127.0.0.1:29103",
               SESSION_GRPC_ADDR="127.0.0.1:25052", SESSION_ADMIN_ADDR="127.0.0.1:29102",
               AUTH_GRPC_ADDR="127.0.0.1:25051", AUTH_ADMIN_ADDR="127.0.0.1:29101",
               GATEWAY_HTTP_ADDR=f"127.0.0.1:{GATEWAY_PORT}", GATEWAY_ADMIN_ADDR="127.0.0.1:29100",
               AUDIT_GRPC_URL="http://127.0.0.1:25053", SESSION_GRPC_URL="http://127.0.0.1:25052",
               AUTH_GRPC_URL="http://127.0.0.1:25051",
               UPSTREAMS=f"/api/=http://127.0.0.1:{UPSTREAM_PORT}",
               RATE_LIMIT_API="1000000000/60", RATE_LIMIT_LOGIN="1000000000/60",
               RATE_LIMIT_LOGIN_ACCOUNT="1000000000/60", RATE_LIMIT_REGISTER="1000000000/60",
               MAIL_DIR=os.path.join(work, "mail"))
    subprocess.run([os.path.join(BIN, "aia"), "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    ports = {"audit": 25053, "session": 25052, "auth": 25051, "gateway": GATEWAY_PORT}
    services = {name: Process(name, [os.path.join(BIN, f"aia-{name}")], env) for name in ports}
    for name, service in services.items():
        service.start()
        wait_port(ports[name])
    if probe_until_ok(time.monotonic(), "start") is None:
        sys.exit(f"the stack does not answer; see {work}")

    log(f"load: {WORKERS} workers (register, login, proxied, refresh, proxied, logout, refused)")
    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(WORKERS)]
    for t in threads:
        t.start()
    rows = []  # (fault, recovery seconds or None, note)

    def phase(name, seconds):
        ledger.phase = name
        time.sleep(seconds)

    phase("steady", 5)

    for name in ["audit", "session", "auth", "gateway"]:
        fault = f"kill -9 {name} ({DOWN:g} s)"
        log(fault)
        ledger.phase = fault
        services[name].kill()
        time.sleep(DOWN)
        wall, since = time.time(), time.monotonic()
        services[name].start()
        if name == "audit":
            recovered, note = backlog_drained_since(pg, wall, since), "outbox backlog delivered"
        else:
            recovered, note = probe_until_ok(since, name), "probe cycle succeeds"
        rows.append((fault, recovered, note))
        phase(f"after {name}", 2)

    fault = f"Redis killed, restarted empty ({DOWN:g} s)"
    log(fault)
    ledger.phase = fault
    fallback_before = metric("gateway_rate_limit_fallback_total")
    with ledger.lock:
        earlier = [tokens[-1] for _, _, tokens in ledger.logouts[-20:]]
    redis.kill()
    time.sleep(DOWN)
    since = time.monotonic()
    redis.start()
    wait_port(REDIS_PORT)
    client = Client(count=False)
    revived = [t for t in earlier if client.request("me", "GET", "/v1/auth/me", token=t)[0] != 401]
    recovered = probe_until_ok(since, "redis")
    fallback = metric("gateway_rate_limit_fallback_total") - fallback_before
    rows.append((fault, recovered,
                 f"probe cycle succeeds; {len(earlier) - len(revived)}/{len(earlier)} logged-out tokens "
                 f"still refused right after; {fallback:.0f} rate-limit decisions fell back"))
    phase("after redis", 2)

    fault = f"Postgres stopped hard, restarted ({DOWN:g} s)"
    log(fault)
    ledger.phase = fault
    pg.crash()
    time.sleep(DOWN)
    since = time.monotonic()
    pg.start()
    rows.append((fault, probe_until_ok(since, "postgres"), "probe cycle succeeds"))
    phase("after postgres", 2)

    fault = f"audit down ({AUDIT_DOWN:g} s)"
    log(fault)
    ledger.phase = fault
    services["audit"].kill()
    time.sleep(AUDIT_DOWN)
    backlog = outbox_rows(pg)
    wall, since = time.time(), time.monotonic()
    services["audit"].start()
    recovered = backlog_drained_since(pg, wall, since)
    rows.append((fault, recovered, f"outbox backlog of {backlog} events delivered"))
    phase("after audit", 3)

    stopping.set()
    for t in threads:
        t.join(REQUEST_TIMEOUT + 5)
    log("load stopped; waiting for the outboxes to drain")
    deadline = time.monotonic() + 60
    while outbox_rows(pg) and time.monotonic() < deadline:
        time.sleep(0.2)
    left_in_outbox = outbox_rows(pg)

    lost = verify(pg)
    report(rows, lost, left_in_outbox)
    for service in services.values():
        service.kill()
    redis.kill()
    upstream.shutdown()
    pg.crash()
    # 503 is the answer for a route whose service is down; a 5xx other than that, or
    # no answer at all, is a bug.
    broken = [k for c in ledger.statuses.values() for k in unexpected(c)
              if k[1] == "hung" or (isinstance(k[1], int) and k[1] >= 500 and k[1] != 503)]
    bad = any(lost.values()) or left_in_outbox or ledger.accepted_after_logout or broken or any(
        r[1] is None for r in rows)
    if bad:
        log(f"FAILED; logs in {work}")
        sys.exit(1)
    shutil.rmtree(work, ignore_errors=True)


def verify(pg):
    """Acknowledged records the stores do not hold (each list must be empty)."""
    ids = lambda values: ",".join(f"'{v}'" for v in values) or "NULL"  # noqa: E731 (uuids and request ids we made)
    lost = {}
    sessions = {r[0] for r in pg.sql(f"SELECT id FROM session.sessions WHERE id IN ({ids(s for _, _, s in ledger.logins)})")}
    lost["sessions of acknowledged logins"] = [s for _, _, s in ledger.logins if s not in sessions]
    revoked = {r[0] for r in pg.sql(
        f"SELECT id FROM session.sessions WHERE revoked_at IS NOT NULL AND id IN ({ids(s for _, s, _ in ledger.logouts)})")}
    lost["revocations of acknowledged logouts"] = [s for _, s, _ in ledger.logouts if s not in revoked]
    client = Client(count=False)
    accepted = []
    for _, sid, tokens in ledger.logouts:
        for t in tokens:
            if client.request("proxied", "GET", "/api/chaos", token=t)[0] != 401:
                accepted.append(sid)
    lost["logged-out tokens accepted at the end"] = accepted
    events = Counter()
    for rid, kind, n in pg.sql(
            "SELECT request_id, event_type, count(*) FROM audit.events WHERE outcome = 'success' "
            f"AND request_id LIKE 'chaos-%' GROUP BY 1, 2"):
        events[(rid, kind)] = int(n)
    for label, kind, records in [("auth.login", "auth.login", ledger.logins),
                                 ("session.refresh", "session.refresh", ledger.refreshes),
                                 ("session.logout", "session.logout", ledger.logouts)]:
        lost[f"{label} events missing"] = [r[0] for r in records if events[(r[0], kind)] == 0]
        lost[f"{label} events stored twice"] = [r[0] for r in records if events[(r[0], kind)] > 1]
    return lost


EXPECTED = {"register": 202, "login": 200, "proxied": 200, "refresh": 200, "logout": 204, "me after logout": 401}


def unexpected(counts):
    """(operation, status) -> count of the answers a healthy stack would not give."""
    return {k: n for k, n in counts.items() if EXPECTED.get(k[0]) != k[1]}


def report(rows, lost, left_in_outbox):
    """Prints the tables and writes them to docs/CHAOS.md."""
    lines = ["| phase | requests | as expected | other answers (operation status x count) |",
             "|---|---:|---:|---|"]
    for phase, counts in ledger.statuses.items():
        other = unexpected(counts)
        shown = ", ".join(f"{op} {status} x{n}" for (op, status), n in sorted(other.items(), key=str))
        total = sum(counts.values())
        lines.append(f"| {phase} | {total} | {total - sum(other.values())} | {shown} |")
    lines += ["", f"| fault | recovery (target < {RECOVERY_TARGET:g} s) | measured as |", "|---|---:|---|"]
    for fault, recovered, note in rows:
        shown = "not within %g s" % RECOVERY_LIMIT if recovered is None else f"{recovered:.2f} s"
        lines.append(f"| {fault} | {shown} | {note} |")
    lines += ["", f"Acknowledged: {len(ledger.logins)} logins, {len(ledger.refreshes)} refreshes, "
              f"{len(ledger.logouts)} logouts. Left in the outboxes at the end: {left_in_outbox}. "
              f"Logged-out tokens accepted right after their logout: {len(ledger.accepted_after_logout)}.",
              "", "| lost record | count (must be 0) |", "|---|---:|"]
    lines += [f"| {label} | {len(missing)} |" for label, missing in lost.items()]
    table = "\n".join(lines)
    print()
    print(table)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    os.makedirs(os.path.join(ROOT, "docs"), exist_ok=True)
    with open(os.path.join(ROOT, "docs", "CHAOS.md"), "w") as out:
        out.write(f"""# Faults under load

Written by `make chaos` ({time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, commit {commit or 'unknown'}),
on {os.cpu_count()} cores ({cpu}). See `scripts/chaos.py` for what it does.

Load: {WORKERS} workers, each repeating register, login, proxied request, refresh,
proxied request, logout, and a request with the logged-out token (which must be
refused). A request is counted in the phase it started in, so the phase after a
fault also shows the requests cut by the next fault. Services and Redis are killed
with SIGKILL; Postgres is stopped in immediate mode (its clients see a crash).
Logins answer 503 while Redis is down: the login throttle fails closed
(`LOCKOUT_FAIL_OPEN=false`, the default); the gateway's rate limiter falls back to
its in-process limiter meanwhile.

{table}
""")


if __name__ == "__main__":
    main()
