#!/usr/bin/env python3
"""Soak test of the custom-pages edge (issue 6, item 5). Started by soak/run.sh (`make soak`).

It writes a site and a configuration into a temporary folder, starts the demo origin and the
release edge with three domains on that one origin, then for SOAK_SECONDS (default 600):

- HTTP/1.1 workers send mixed traffic over the three domains: files (200, many cache keys),
  missing paths (404 with the custom 404 page), /boom (500 with the custom 5xx page) and a
  larger object now and then; an h2c client (curl) does the same at a lower rate;
- a rule loop changes the rules through the admin API every few seconds (PUT and DELETE);
- the origin is stopped and started again twice (at 1/3 and 2/3 of the run, down 3 s);
- the edge's RSS is read from /proc every 10 s.

Every answer is checked (status and exact body). Expected errors are only those the origin
restarts cause: 502 with the custom 5xx page while the origin is down (plus 2 s). Anything else
is an unexpected error. The run fails (exit 1) on any unexpected error, if the edge exits, or
if its RSS after the warm-up (the first minute, or the first third of a shorter run) grows by
more than SOAK_RSS_BOUND_MIB (default 64) over the highest warm-up sample.

Only 127.0.0.1 is used; every loop is bounded by the run's deadline.
"""

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

HOSTS = ["soak-a.example.com", "soak-b.example.com", "soak-c.example.com"]
TOKEN = "soak-token"
PAGE_404A = b"<!DOCTYPE html>\n<html><body><h1>soak: custom 404 page (a)</h1></body></html>\n"
PAGE_404B = b"<!DOCTYPE html>\n<html><body><h1>soak: custom 404 page (b)</h1></body></html>\n"
PAGE_5XX = b"<!DOCTYPE html>\n<html><body><h1>soak: custom 5xx page</h1></body></html>\n"
RESTART_DOWN_SECONDS = 3.0
# A request overlapping [down - 0.5 s, up + 2 s] may get the origin-restart 502.
RESTART_GRACE_BEFORE = 0.5
RESTART_GRACE_AFTER = 2.0
RSS_EVERY = 10.0
RULE_EVERY = 3.0


class Stop(Exception):
    pass


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_port(port, within, proc=None):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


class Soak:
    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="custom-pages-soak.")
        self.site = os.path.join(self.work, "site")
        self.edge_port, self.admin_port, self.origin_port = free_ports(3)
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.seconds
        self.lock = threading.Lock()  # counters
        self.origin_lock = threading.Lock()  # origin restarts vs in-place rule changes
        self.origin = None
        self.edge = None
        self.down_windows = []  # (down_at, up_at) in seconds since t0
        self.counts = Counter()  # (proto, kind, status)
        self.outcomes = Counter()  # ok / expected_origin_restart / keepalive_retry
        self.unexpected = Counter()  # cause -> count
        self.unexpected_examples = {}
        self.latencies = []
        self.admin_calls = Counter()
        self.rss = []  # (t, MiB)
        self.fatal = []
        self.files = {}

    # -- setup ---------------------------------------------------------------------------------

    def write_site(self):
        os.makedirs(self.site)
        rnd = random.Random(7)
        for i in range(20):
            size = 512 + rnd.randrange(20 * 1024)
            body = (f"<p>soak page {i}</p>\n" * (size // 20 + 1)).encode()[:size]
            self.files[f"/page-{i}.html"] = body
        self.files["/index.html"] = b"<!DOCTYPE html><h1>soak index</h1>\n"
        self.files["/big.bin"] = bytes(rnd.randrange(256) for _ in range(512 * 1024))
        for path, body in self.files.items():
            with open(os.path.join(self.site, path.lstrip("/")), "wb") as f:
                f.write(body)
        for name, body in [
            ("error404.html", PAGE_404A),
            ("error404b.html", PAGE_404B),
            ("error5xx.html", PAGE_5XX),
        ]:
            with open(os.path.join(self.site, name), "wb") as f:
                f.write(body)

    def write_conf(self):
        domains = os.path.join(self.work, "domains")
        os.makedirs(domains)
        with open(os.path.join(self.work, "admin.token"), "w") as f:
            f.write(TOKEN + "\n")
        with open(os.path.join(self.work, "edge.yaml"), "w") as f:
            f.write(
                f"""listen: ["127.0.0.1:{self.edge_port}"]
threads: 2
cache:
  memory: 32MiB
  max_object: 2MiB
pages:
  max_size: 256KiB
  refresh: 30s
  fetch_timeout: 2s
domains: domains
admin:
  listen: 127.0.0.1:{self.admin_port}
  token_file: admin.token
server:
  pid_file: {self.work}/edge.pid
  upgrade_sock: {self.work}/upgrade.sock
  grace_period_seconds: 0
  graceful_shutdown_timeout_seconds: 1
"""
            )
        for host in HOSTS:
            with open(os.path.join(domains, f"{host}.yaml"), "w") as f:
                f.write(
                    f"""domain: {host}
origin:
  servers: ["127.0.0.1:{self.origin_port}"]
  connect_timeout: 1s
  read_timeout: 5s
cache:
  default_ttl: 0s
  error_ttl: 5s
custom_pages:
  - code: 404
    url: http://{host}/error404.html
  - code: "5xx"
    url: http://{host}/error5xx.html
"""
                )

    def start_origin(self):
        log = open(os.path.join(self.work, "origin.log"), "ab")
        self.origin = subprocess.Popen(
            [self.args.origin_bin, "--listen", f"127.0.0.1:{self.origin_port}", "--root", self.site],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()
        if not wait_port(self.origin_port, 10, self.origin):
            raise RuntimeError("the demo origin did not start")

    def stop_origin(self):
        if self.origin is not None and self.origin.poll() is None:
            self.origin.terminate()
            try:
                self.origin.wait(5)
            except subprocess.TimeoutExpired:
                self.origin.kill()
                self.origin.wait()

    def start_edge(self):
        log = open(os.path.join(self.work, "edge.log"), "ab")
        self.edge = subprocess.Popen(
            [self.args.edge_bin, "-c", os.path.join(self.work, "edge.yaml")],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()
        if not wait_port(self.edge_port, 15, self.edge):
            raise RuntimeError("the edge did not start; see " + os.path.join(self.work, "edge.log"))
        # Pages are fetched when the configuration loads; give it a moment.
        time.sleep(1.0)

    def stop_edge(self):
        if self.edge is not None and self.edge.poll() is None:
            self.edge.send_signal(signal.SIGINT)
            try:
                self.edge.wait(5)
            except subprocess.TimeoutExpired:
                self.edge.kill()
                self.edge.wait()

    # -- bookkeeping ---------------------------------------------------------------------------

    def now(self):
        return time.monotonic() - self.t0

    def in_restart_window(self, started, ended):
        with self.lock:
            windows = list(self.down_windows)
        for down_at, up_at in windows:
            up = up_at if up_at is not None else float("inf")
            if started <= up + RESTART_GRACE_AFTER and ended >= down_at - RESTART_GRACE_BEFORE:
                return True
        return False

    def record(self, proto, kind, status, outcome, cause=None, example=None, latency=None):
        with self.lock:
            self.counts[(proto, kind, status)] += 1
            self.outcomes[outcome] += 1
            if cause is not None:
                self.unexpected[cause] += 1
                self.unexpected_examples.setdefault(cause, example)
            if latency is not None:
                self.latencies.append(latency)

    def body_class(self, body):
        if body == PAGE_404A:
            return "custom 404 page (a)"
        if body == PAGE_404B:
            return "custom 404 page (b)"
        if body == PAGE_5XX:
            return "custom 5xx page"
        if b"custom-pages" in body and len(body) < 1024:
            return "built-in page"
        return f"other body ({len(body)} bytes)"

    def judge(self, proto, kind, path, status, body, started, ended, size_only=False):
        """Records one answer; `body` is the byte count when size_only (h2c via curl)."""

        def same(expected):
            return body == len(expected) if size_only else body == expected

        if kind == "file":
            good = status == 200 and same(self.files[path.split("?")[0]])
        elif kind == "missing":
            good = status == 404 and (same(PAGE_404A) or same(PAGE_404B))
        else:  # boom
            good = status == 500 and same(PAGE_5XX)
        if good:
            self.record(proto, kind, status, "ok", latency=ended - started)
            return
        if status == 502 and same(PAGE_5XX) and self.in_restart_window(started, ended):
            self.record(proto, kind, status, "expected_origin_restart")
            return
        what = f"{body} bytes" if size_only else self.body_class(body)
        cause = f"{proto} {kind}: {status} with {what}"
        if status == 502 and same(PAGE_5XX):
            cause += " outside an origin restart"
        self.record(proto, kind, status, "unexpected", cause, f"{path} at {started:.1f}s")

    # -- traffic -------------------------------------------------------------------------------

    def pick(self, rnd):
        host = rnd.choice(HOSTS)
        r = rnd.random()
        if r < 0.60:
            path = f"/page-{rnd.randrange(20)}.html?v={rnd.randrange(500)}"
            kind = "file"
        elif r < 0.63:
            path, kind = "/index.html", "file"
        elif r < 0.65:
            path, kind = "/big.bin", "file"
        elif r < 0.90:
            path, kind = f"/missing-{rnd.randrange(200)}", "missing"
        else:
            path, kind = "/boom", "boom"
        return host, path, kind

    def h1_worker(self, index, pace):
        rnd = random.Random(index)
        conn = None
        served_on_conn = 0
        while time.monotonic() < self.deadline:
            host, path, kind = self.pick(rnd)
            started = self.now()
            attempt = 0
            while True:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.edge_port, timeout=15)
                    served_on_conn = 0
                try:
                    conn.request("GET", path, headers={"Host": host})
                    resp = conn.getresponse()
                    body = resp.read()
                    status = resp.status
                    served_on_conn += 1
                    if resp.will_close:
                        conn.close()
                        conn = None
                    break
                except (http.client.HTTPException, OSError) as e:
                    reused = served_on_conn > 0
                    conn.close()
                    conn = None
                    if reused and attempt == 0 and isinstance(
                        e, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
                    ):
                        # The edge closed an idle keep-alive connection (it does so after an
                        # error it made itself): a client retries on a new connection.
                        with self.lock:
                            self.outcomes["keepalive_retry"] += 1
                        attempt += 1
                        continue
                    status, body = None, type(e).__name__
                    break
            ended = self.now()
            if status is None:
                cause = f"h1 {kind}: connection error {body}"
                if self.in_restart_window(started, ended):
                    cause += " during an origin restart"
                self.record("h1", kind, "error", "unexpected", cause, f"{host}{path} at {started:.1f}s")
            else:
                self.judge("h1", kind, path, status, body, started, ended)
            if pace > 0:
                time.sleep(pace)
        if conn is not None:
            conn.close()

    def h2_worker(self):
        """h2c with prior knowledge through curl, one request per connection: curl 7.88 does not
        send a second request on a reused prior-knowledge connection (exit 16), which the edge
        handles fine (checked with nghttp and the Rust h2 client of the tests)."""
        rnd = random.Random(1000)
        curl = shutil.which("curl")
        if curl is None:
            return
        while time.monotonic() < self.deadline:
            host, path, kind = self.pick(rnd)
            cmd = [
                curl,
                "-s",
                "--http2-prior-knowledge",
                "--max-time",
                "20",
                "--resolve",
                f"{host}:{self.edge_port}:127.0.0.1",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{size_download} %{http_version}",
                f"http://{host}:{self.edge_port}{path}",
            ]
            started = self.now()
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
            ended = self.now()
            parts = out.split()
            if len(parts) != 3 or parts[2] != "2":
                self.record("h2c", kind, "error", "unexpected", f"h2c {kind}: curl said {out!r}", path)
            else:
                self.judge("h2c", kind, path, int(parts[0]), int(parts[1]), started, ended, size_only=True)
            time.sleep(0.05)

    # -- rules, restarts, memory ---------------------------------------------------------------

    def admin(self, method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=20)
        try:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            if body is not None:
                headers["Content-Type"] = "application/json"
                body = json.dumps(body)
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        finally:
            conn.close()

    def rule_loop(self):
        rnd = random.Random(99)
        use_b = {host: False for host in HOSTS}
        has_403 = {host: False for host in HOSTS}
        step = 0
        while time.monotonic() < self.deadline - 1:
            host = HOSTS[step % len(HOSTS)]
            base = f"/api/domains/{host}/custom-pages"
            action = ["page404", "redirect403", "page5xx", "redirect403"][step % 4]
            step += 1
            if action == "redirect403":
                if has_403[host]:
                    call = ("DELETE", f"{base}/403", None, (200,))
                else:
                    body = {"url": "https://help.example.org/forbidden.html", "redirect": 302}
                    call = ("PUT", f"{base}/403", body, (201,))
                has_403[host] = not has_403[host]
                self.admin_call(action, call)
            elif action == "page404":
                # Changing a page means fetching it: only while the origin is up.
                with self.origin_lock:
                    use_b[host] = not use_b[host]
                    page = "error404b.html" if use_b[host] else "error404.html"
                    call = ("PUT", f"{base}/404", {"url": f"http://{host}/{page}"}, (200,))
                    self.admin_call(action, call)
            else:
                # Modify the rule without changing what it serves (source any, said or implied).
                body = {"url": f"http://{host}/error5xx.html"}
                if rnd.random() < 0.5:
                    body["source"] = "any"
                with self.origin_lock:
                    self.admin_call(action, ("PUT", f"{base}/5xx", body, (200,)))
            sleep_until = min(self.deadline - 1, time.monotonic() + RULE_EVERY)
            while time.monotonic() < sleep_until:
                time.sleep(0.1)

    def admin_call(self, action, call):
        method, path, body, expected = call
        try:
            status, text = self.admin(method, path, body)
        except OSError as e:
            status, text = None, str(e)
        with self.lock:
            self.admin_calls[f"{method} {action} -> {status}"] += 1
        if status not in expected:
            self.record("admin", action, status, "unexpected", f"admin {method} {action}: {status}", text[:200])

    def restart_loop(self):
        marks = [self.t0 + self.args.seconds * k / 3.0 for k in (1, 2)]
        for mark in marks:
            while time.monotonic() < mark:
                time.sleep(0.1)
            if time.monotonic() > self.deadline - RESTART_DOWN_SECONDS - 1:
                return
            with self.origin_lock:
                down_at = self.now()
                with self.lock:
                    self.down_windows.append((down_at, None))
                self.stop_origin()
                time.sleep(RESTART_DOWN_SECONDS)
                self.start_origin()
                up_at = self.now()
                with self.lock:
                    self.down_windows[-1] = (down_at, up_at)
            print(f"soak: origin restarted: down {down_at:.1f}s .. up {up_at:.1f}s", flush=True)

    def rss_loop(self):
        next_at = time.monotonic()
        while True:
            value = rss_mib(self.edge.pid)
            if value is None or self.edge.poll() is not None:
                self.fatal.append(f"the edge exited (status {self.edge.poll()}) at {self.now():.1f}s")
                return
            with self.lock:
                self.rss.append((self.now(), value))
            if next_at >= self.deadline:
                return
            next_at = min(next_at + RSS_EVERY, self.deadline)
            while time.monotonic() < next_at:
                time.sleep(0.1)

    # -- run and report ------------------------------------------------------------------------

    def run(self):
        self.write_site()
        self.write_conf()
        self.start_origin()
        self.start_edge()
        self.t0 = time.monotonic()
        self.deadline = self.t0 + self.args.seconds
        print(
            f"soak: {self.args.seconds}s on 127.0.0.1:{self.edge_port} (admin :{self.admin_port}, "
            f"origin :{self.origin_port}), {self.args.workers} h1 workers at ~{self.args.rate} req/s "
            f"+ h2c, work dir {self.work}",
            flush=True,
        )
        pace = self.args.workers / self.args.rate if self.args.rate > 0 else 0
        threads = [threading.Thread(target=self.h1_worker, args=(i, pace)) for i in range(self.args.workers)]
        threads += [
            threading.Thread(target=self.h2_worker),
            threading.Thread(target=self.rule_loop),
            threading.Thread(target=self.restart_loop),
            threading.Thread(target=self.rss_loop),
        ]
        for t in threads:
            t.daemon = True
            t.start()
        next_progress = 60.0
        while time.monotonic() < self.deadline + 30 and any(t.is_alive() for t in threads):
            time.sleep(0.5)
            if self.now() >= next_progress:
                self.progress()
                next_progress += 60.0
        if any(t.is_alive() for t in threads):
            self.fatal.append("a soak thread did not finish within 30 s of the deadline")
        try:
            status, text = self.admin("GET", "/api/status")
            self.api_status = (status, json.loads(text) if status == 200 else text)
        except (OSError, ValueError) as e:
            self.api_status = (None, str(e))
        return self.report()

    def progress(self):
        with self.lock:
            total = sum(self.counts.values())
            bad = self.outcomes["unexpected"]
            rss = self.rss[-1][1] if self.rss else 0
        print(f"soak: {self.now():.0f}s: {total} requests, {bad} unexpected, edge RSS {rss:.1f} MiB", flush=True)

    def report(self):
        elapsed = self.now()
        total = sum(n for (proto, _, _), n in self.counts.items() if proto != "admin")
        lines = ["", "=== soak summary ==="]
        lines.append(f"duration: {elapsed:.0f} s; domains: {', '.join(HOSTS)}")
        lines.append(f"requests: {total} ({total / max(elapsed, 1):.0f}/s)")
        for (proto, kind, status), n in sorted(self.counts.items(), key=lambda kv: str(kv[0])):
            if proto != "admin":
                lines.append(f"  {proto:4} {kind:8} {status}: {n}")
        lines.append(
            "outcomes: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()) if k != "unexpected")
            + f", unexpected {self.outcomes['unexpected']}"
        )
        windows = ", ".join(f"{d:.1f}s-{u:.1f}s" for d, u in self.down_windows if u is not None)
        lines.append(f"origin restarts: {len(self.down_windows)} (down {windows})")
        lines.append(
            f"rule changes: {sum(self.admin_calls.values())} ("
            + ", ".join(f"{k}: {v}" for k, v in sorted(self.admin_calls.items()))
            + ")"
        )
        if self.latencies:
            lat = sorted(self.latencies)
            pct = lambda p: lat[min(len(lat) - 1, int(len(lat) * p))] * 1000  # noqa: E731
            lines.append(f"latency of good answers (ms): p50 {pct(0.5):.1f}, p99 {pct(0.99):.1f}, max {lat[-1] * 1000:.0f}")
        if self.unexpected:
            lines.append("unexpected errors by cause:")
            for cause, n in self.unexpected.most_common():
                lines.append(f"  {n:6}  {cause}   (e.g. {self.unexpected_examples[cause]})")
        lines.append("edge RSS (MiB) every 10 s: " + ", ".join(f"{t:.0f}s {v:.1f}" for t, v in self.rss))
        warmup = min(60.0, self.args.seconds / 3.0)
        early = [v for t, v in self.rss if t <= warmup + 1]
        late = [v for t, v in self.rss if t > warmup + 1]
        failures = list(self.fatal)
        if early and late:
            baseline, peak = max(early), max(late)
            growth = peak - baseline
            lines.append(
                f"RSS: warm-up ({warmup:.0f} s) level {baseline:.1f} MiB, later peak {peak:.1f} MiB, "
                f"growth {growth:+.1f} MiB (bound +{self.args.rss_bound_mib} MiB); "
                f"end {self.rss[-1][1]:.1f} MiB"
            )
            if growth > self.args.rss_bound_mib:
                failures.append(f"edge RSS grew by {growth:.1f} MiB after warm-up")
        else:
            failures.append("too few RSS samples")
        status, body = self.api_status
        if status == 200:
            lines.append(
                f"admin /api/status: version {body.get('version')}, last reload ok "
                f"{body.get('last_reload_ok')}, restart required {body.get('restart_required')}"
            )
            if not body.get("last_reload_ok", False) or body.get("errors"):
                failures.append(f"the last reload failed: {body}")
        else:
            failures.append(f"admin /api/status: {status} {body}")
        if self.outcomes["unexpected"]:
            failures.append(f"{self.outcomes['unexpected']} unexpected errors")
        if len([w for w in self.down_windows if w[1] is not None]) < 2 and self.args.seconds >= 30:
            failures.append("the origin was not restarted twice")
        if total == 0:
            failures.append("no traffic")
        warnings = Counter()
        try:
            with open(os.path.join(self.work, "edge.log"), errors="replace") as f:
                for line in f:
                    for level in ("WARN", "ERROR"):
                        if f" {level} " in line:
                            text = line.split("] ", 1)[-1].strip()
                            warnings[f"{level} {text[:90]}"] += 1
        except OSError:
            pass
        if warnings:
            lines.append("edge log warnings/errors (first 90 chars, by count):")
            for text, n in warnings.most_common(12):
                lines.append(f"  {n:6}  {text}")
        lines.append("RESULT: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)))
        print("\n".join(lines), flush=True)
        return 0 if not failures else 1

    def cleanup(self):
        self.stop_edge()
        self.stop_origin()
        if os.environ.get("SOAK_KEEP"):
            print(f"soak: kept {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--edge-bin", required=True)
    p.add_argument("--origin-bin", required=True)
    p.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", "600")))
    p.add_argument("--workers", type=int, default=int(os.environ.get("SOAK_WORKERS", "8")))
    p.add_argument("--rate", type=float, default=float(os.environ.get("SOAK_RATE", "400")), help="h1 req/s, total")
    p.add_argument("--rss-bound-mib", type=float, default=float(os.environ.get("SOAK_RSS_BOUND_MIB", "64")))
    args = p.parse_args()

    def stop(signum, _frame):
        raise Stop(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    soak = Soak(args)
    code = 1
    try:
        code = soak.run()
    except Stop as e:
        print(f"soak: stopped by {e}", file=sys.stderr)
    finally:
        soak.cleanup()
    sys.exit(code)


if __name__ == "__main__":
    main()
