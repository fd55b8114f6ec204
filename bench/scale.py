#!/usr/bin/env python3
"""The control plane at scale (issue 22): N domains, two custom page rules each, each page on
its own domain, in files mode (one edge) and in etcd mode (two edges on one etcd member).

    make bench-scale                                  # N = 1000 10000 100000, both modes
    SCALE_N="1000 10000" SCALE_MODES=files make bench-scale

For each N and mode it measures: `custom-pages -t`; time from start until the admin API
answers and until the last domain serves its custom page; time until every page is fetched;
RSS (and per domain) once they are; latency from a change (a domain file written, an
`etcd put`, an admin `PUT`) until every edge serves it (p50/p99 over SCALE_CHANGES changes);
admin write latency. Results go to the "Scale" section of BENCHMARKS.md (SCALE_OUT).

Environment: SCALE_N, SCALE_MODES (files etcd), SCALE_CHANGES (default 50), SCALE_PAD (bytes
of comment added to each spec, 0 by default; 830 makes specs of 1 KiB), SCALE_PORT_BASE
(default 18600), SCALE_BUILD (1: cargo build --release first), SCALE_KEEP (1: keep the
temporary folder). Only 127.0.0.1 is used. Python 3 standard library only.
"""

import base64
import http.client
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from report import replace_section

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EDGE_BIN = os.path.join(ROOT, "target/release/custom-pages")
ORIGIN_BIN = os.path.join(ROOT, "target/release/examples/demo_origin")
TOKEN = "scale-token"
SIZES = [int(n) for n in os.environ.get("SCALE_N", "1000 10000 100000").split()]
MODES = os.environ.get("SCALE_MODES", "files etcd").split()
CHANGES = int(os.environ.get("SCALE_CHANGES", "50"))
PAD = int(os.environ.get("SCALE_PAD", "0"))
PORT = int(os.environ.get("SCALE_PORT_BASE", "18600"))
OUT = os.environ.get("SCALE_OUT", os.path.join(ROOT, "BENCHMARKS.md"))
START_MARK, END_MARK = "<!-- scale:start -->", "<!-- scale:end -->"


def name(i):
    return f"d{i:06d}.scale.test"


def spec(i, page404="/e404.html"):
    d = name(i)
    # SCALE_PAD: a comment of this many bytes, for specs of a given size (1 KiB: 830).
    pad = f"# {'x' * PAD}\n" if PAD else ""
    return (
        f"{pad}domain: {d}\norigin: {{servers: [\"127.0.0.1:{PORT}\"]}}\n"
        f"custom_pages:\n  - {{code: 404, url: \"http://{d}{page404}\"}}\n"
        f"  - {{code: 500, url: \"http://{d}/e500.html\"}}\n"
    )


def request(port, method, path, host="admin", body=None, timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Host": host, "Authorization": f"Bearer {TOKEN}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=body, headers=headers)
        answer = conn.getresponse()
        return answer.status, answer.read()
    except OSError:
        return None, b""
    finally:
        conn.close()


def wait(check, within, step=0.002):
    """Seconds until check() holds (polled every `step`), or None after `within`."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        if check():
            return time.monotonic() - start
        time.sleep(step)
    return None


def fetched_pages(admin_port):
    status, body = request(admin_port, "GET", "/metrics")
    if status != 200:
        return 0
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith('custom_pages_page_fetches_total{result="ok"}'):
            total += float(line.rsplit(" ", 1)[1])
    return total


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


class Edge:
    def __init__(self, folder, index, extra=""):
        self.port = PORT + 10 + 2 * index
        self.admin = self.port + 1
        self.file = os.path.join(folder, f"edge{index}.yaml")
        with open(self.file, "w") as f:
            f.write(
                f"listen: [\"127.0.0.1:{self.port}\"]\nthreads: 2\n"
                f"pages: {{refresh: 1h, fetch_timeout: 10s}}\n"
                f"domains: domains\nadmin: {{listen: 127.0.0.1:{self.admin}}}\n"
                # Each edge its own state folder: one writer per folder.
                f"state_dir: state{index}\n{extra}"
            )
        self.log = open(os.path.join(folder, f"edge{index}.log"), "w")
        self.process = None

    def check(self):
        start = time.monotonic()
        out = subprocess.run([EDGE_BIN, "-t", "-c", self.file], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"scale: -t failed: {out.stderr[-2000:]}")
        return time.monotonic() - start

    def start(self):
        env = dict(os.environ, CUSTOM_PAGES_ADMIN_TOKEN=TOKEN, RUST_LOG=os.environ.get("SCALE_LOG", "warn"))
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [EDGE_BIN, "-c", self.file], stdout=self.log, stderr=subprocess.STDOUT, env=env
        )

    def serves(self, i, body):
        """Whether domain i answers /missing (a 404 at the origin) with the page `body`."""
        status, got = request(self.port, "GET", "/missing", host=name(i), timeout=5)
        return status == 404 and body.strip() in got.decode(errors="replace")

    def stop(self):
        if self.process:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def page_body(path):
    with open(os.path.join(SITE, path.lstrip("/"))) as f:
        return f.read()


def new_page(j):
    path = f"/v{j}.html"
    with open(os.path.join(SITE, path.lstrip("/")), "w") as f:
        f.write(f"<html><body>version {j}</body></html>\n")
    return path


def start_timings(edges, n):
    """Per edge, all watched at once: seconds from its start until the API answers, until the
    last domain serves its page, until every page is fetched; its RSS then."""
    api, serving, pages, rss = {}, {}, {}, {}
    body = page_body("/e404.html")
    deadline = time.monotonic() + 1800
    last_scrape = 0.0
    while len(pages) < len(edges) and time.monotonic() < deadline:
        for k, edge in enumerate(edges):
            now = time.monotonic()
            if k not in api and request(edge.admin, "GET", "/api/status", timeout=1)[0] == 200:
                api[k] = now - edge.started
            if k in api and k not in serving and edge.serves(n - 1, body):
                # Once it answered: a request for a page not fetched yet waits for it.
                serving[k] = time.monotonic() - edge.started
            if k in serving and k not in pages and now - last_scrape > 0.1:
                if fetched_pages(edge.admin) >= 2 * n:
                    pages[k] = time.monotonic() - edge.started
                    rss[k] = rss_kib(edge.process.pid)
        if time.monotonic() - last_scrape > 0.1:
            last_scrape = time.monotonic()
        time.sleep(0.005)
    return [(api.get(k), serving.get(k), pages.get(k), rss.get(k, rss_kib(e.process.pid))) for k, e in enumerate(edges)]


def change_latencies(edges, n, change):
    """`change(i, page)` makes domain i's 404 rule point at `page`; seconds until every edge
    serves it, for each of CHANGES changes of random domains."""
    latencies = []
    for j in range(CHANGES):
        i = random.randrange(n)
        page = new_page(f"{len(latencies)}-{random.randrange(1 << 30)}")
        body = page_body(page)
        start = time.monotonic()
        change(i, page)
        for edge in edges:
            if wait(lambda: edge.serves(i, body), 30) is None:
                sys.exit(f"scale: change {j} of {name(i)} not served within 30 s")
        latencies.append(time.monotonic() - start)
    return latencies


def admin_writes(edges, n):
    answers, served = [], []
    for _ in range(CHANGES):
        i = random.randrange(n)
        page = new_page(f"api-{random.randrange(1 << 30)}")
        body = json.dumps({"url": f"http://{name(i)}{page}"})
        start = time.monotonic()
        status, text = request(edges[0].admin, "PUT", f"/api/domains/{name(i)}/custom-pages/404", body=body)
        if status not in (200, 201):
            sys.exit(f"scale: admin PUT answered {status}: {text[:500]}")
        answers.append(time.monotonic() - start)
        for edge in edges:
            wait(lambda: edge.serves(i, page_body(page)), 30)
        served.append(time.monotonic() - start)
    return answers, served


def etcd_put(endpoint_port, key, value):
    body = json.dumps({
        "key": base64.b64encode(key.encode()).decode(),
        "value": base64.b64encode(value.encode()).decode(),
    })
    conn = http.client.HTTPConnection("127.0.0.1", endpoint_port, timeout=10)
    conn.request("POST", "/v3/kv/put", body=body, headers={"Content-Type": "application/json"})
    answer = conn.getresponse()
    answer.read()
    conn.close()
    if answer.status != 200:
        sys.exit(f"scale: etcd put answered {answer.status}")


def run(mode, n, folder):
    domains = os.path.join(folder, "domains")
    os.makedirs(domains)
    for i in range(n):
        with open(os.path.join(domains, f"{name(i)}.yaml"), "w") as f:
            f.write(spec(i))
    etcd = None
    if mode == "files":
        edges = [Edge(folder, 0)]
    else:
        client, peer = PORT + 2, PORT + 3
        etcd = subprocess.Popen(
            ["etcd", "--data-dir", os.path.join(folder, "etcd"), "--name", "scale",
             "--listen-client-urls", f"http://127.0.0.1:{client}",
             "--advertise-client-urls", f"http://127.0.0.1:{client}",
             "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-cluster", f"scale=http://127.0.0.1:{peer}",
             "--quota-backend-bytes", str(4 << 30)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        source = lambda i: (
            f"source:\n  etcd:\n    endpoints: [\"http://127.0.0.1:{client}\"]\n    prefix: /scale/\n"
            f"    snapshot: snapshot{i}.json\n    edge_id: edge{i}\n"
        )
        edges = [Edge(folder, 0, source(0)), Edge(folder, 1, source(1))]
        time.sleep(1)
        out = subprocess.run(
            [EDGE_BIN, "etcd", "import", domains, "-c", edges[0].file], capture_output=True, text=True
        )
        if out.returncode != 0:
            sys.exit(f"scale: import failed: {out.stderr[-2000:]}")
    try:
        check = edges[0].check()
        for edge in edges:
            edge.start()
        starts = start_timings(edges, n)
        if mode == "files":
            def change(i, page):
                path = os.path.join(domains, f"{name(i)}.yaml")
                tmp = os.path.join(domains, f".{name(i)}.tmp")
                with open(tmp, "w") as f:
                    f.write(spec(i, page))
                os.rename(tmp, path)
        else:
            def change(i, page):
                etcd_put(PORT + 2, f"/scale/domains/{name(i)}", spec(i, page))
        changes = change_latencies(edges, n, change)
        answers, served = admin_writes(edges, n)
        return {
            "mode": mode, "n": n, "check": check, "starts": starts,
            "changes": changes, "admin": answers, "admin_served": served,
        }
    finally:
        for edge in edges:
            edge.stop()
        if etcd:
            etcd.terminate()
            etcd.wait()


def ms(seconds):
    return "—" if seconds is None else f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def report(results):
    lines = [
        "| mode | domains | `-t` | API answers | last domain served | every page fetched | RSS (per domain), largest edge | change → served on every edge, p50 / p99 | admin `PUT` answered, p50 / p99 | admin `PUT` → served everywhere, p99 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        worst = lambda i: None if any(s[i] is None for s in r["starts"]) else max(s[i] for s in r["starts"])
        api, serving, pages = worst(0), worst(1), worst(2)
        rss_max = max(s[3] for s in r["starts"])
        per_domain = rss_max / r["n"]
        change = r["changes"]
        admin = r["admin"]
        kind = "file written" if r["mode"] == "files" else "`etcd put`, 2 edges"
        lines.append(
            f"| {r['mode']} | {r['n']:,} | {ms(r['check'])} | {ms(api)} | {ms(serving)} | {ms(pages)} "
            f"| {rss_max / 1024:.0f} MiB ({per_domain:.1f} KiB) "
            f"| {ms(pct(change, 50))} / {ms(pct(change, 99))} ({kind}) "
            f"| {ms(pct(admin, 50))} / {ms(pct(admin, 99))} | {ms(pct(r['admin_served'], 99))} |"
        )
    return "\n".join(lines)


def write_report(table):
    cpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    section = (
        f"{START_MARK}\n## Scale: the control plane with many domains\n\n"
        f"`make bench-scale` (bench/scale.py), {time.strftime('%Y-%m-%d')}, {cpu} cores, release build. "
        f"Each domain has two custom page rules, each page on the domain itself (one static origin); "
        f"{CHANGES} changes of random domains per row, each to a new page, timed until every edge serves it.\n\n"
        f"{table}\n{END_MARK}\n"
    )
    replace_section(OUT, START_MARK, END_MARK, section)


def main():
    global SITE
    if os.environ.get("SCALE_BUILD", "1") == "1":
        subprocess.run(["cargo", "build", "--release", "--bin", "custom-pages", "--example", "demo_origin"],
                       cwd=ROOT, check=True)
    top = tempfile.mkdtemp(prefix="scale-")
    SITE = os.path.join(top, "site")
    os.makedirs(SITE)
    for page in ("e404.html", "e500.html"):
        with open(os.path.join(SITE, page), "w") as f:
            f.write(f"<html><body>custom {page}</body></html>\n")
    origin = subprocess.Popen([ORIGIN_BIN, "--listen", f"127.0.0.1:{PORT}", "--root", SITE],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = []
    try:
        for mode in MODES:
            for n in SIZES:
                folder = os.path.join(top, f"{mode}-{n}")
                os.makedirs(folder)
                print(f"scale: {mode}, {n} domains", flush=True)
                result = run(mode, n, folder)
                results.append(result)
                print(report([result]).splitlines()[-1], flush=True)
    finally:
        origin.terminate()
        if os.environ.get("SCALE_KEEP") != "1":
            shutil.rmtree(top, ignore_errors=True)
        else:
            print(f"scale: kept {top}")
    table = report(results)
    print(table)
    write_report(table)


if __name__ == "__main__":
    main()
