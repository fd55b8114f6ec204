#!/usr/bin/env python3
"""The disk tier of the content cache (issue 23), run by `make bench` (bench/run.sh) or alone:

    python3 bench/disk.py            # DISK_BUILD=0 to skip the release build

1. Disk-tier hits, side by side with nginx's proxy_cache on the same data: DISK_OBJECTS objects
   of DISK_OBJECT_KIB KiB (default 4,000 x 64 KiB = 250 MiB) behind one origin (nginx, static
   files); our edge with `cache.memory: 32MiB` over a 1 GiB disk tier, nginx with
   `proxy_cache_path ... levels=1:2 keys_zone=disk:16m max_size=1g`. Every object is requested
   once through each (both fill their disk), then wrk requests random objects for DISK_SECONDS
   (default 10) over 32 connections: requests/s, p50, p99, and our disk tier's hit count. The
   working set is eight times our memory tier, so most hits are disk hits. Both servers on CPU 0
   (one thread, one worker), wrk on CPU 1.
2. Restart to first hit with DISK_RESTART_OBJECTS (default 100,000) objects of 1 KiB stored: the
   edge stopped with SIGTERM (the index saved) and started again, then killed with -9 (the
   index rebuilt from the files in the background): time from exec to the first HIT, and until
   the index lists every object.

Writes the "Disk tier" section of BENCHMARKS.md (DISK_OUT) between its markers. Needs nginx and
wrk (bench/run.sh installs them). Only 127.0.0.1 is used. Python 3 standard library only.
"""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from report import replace_section

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EDGE_BIN = os.path.join(ROOT, "target/release/custom-pages")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
OBJECTS = int(os.environ.get("DISK_OBJECTS", "4000"))
OBJECT_KIB = int(os.environ.get("DISK_OBJECT_KIB", "64"))
SECONDS = int(os.environ.get("DISK_SECONDS", "10"))
RESTART_OBJECTS = int(os.environ.get("DISK_RESTART_OBJECTS", "100000"))
PORT = int(os.environ.get("DISK_PORT_BASE", "18700"))
OUT = os.environ.get("DISK_OUT", os.path.join(ROOT, "BENCHMARKS.md"))
TOKEN = "disk-bench-token"
HOST = "bench.example.com"
START_MARK, END_MARK = "<!-- disk:start -->", "<!-- disk:end -->"
ORIGIN_PORT, EDGE_PORT, ADMIN_PORT, NGINX_PORT = PORT, PORT + 1, PORT + 2, PORT + 3


def log(message):
    print(f"[disk {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def get(port, path, conn=None):
    """(status, x-cache, body) of GET path; reuses `conn` if given."""
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path, headers={"Host": HOST})
    r = c.getresponse()
    body = r.read()
    if conn is None:
        c.close()
    return r.status, r.getheader("x-cache"), body


def status():
    c = http.client.HTTPConnection("127.0.0.1", ADMIN_PORT, timeout=10)
    c.request("GET", "/api/status", headers={"Authorization": f"Bearer {TOKEN}"})
    answer = json.loads(c.getresponse().read())
    c.close()
    return answer


def wait(what, check, within=600):
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting until {what}")


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class Edge:
    def __init__(self, folder, memory):
        self.folder = folder
        os.makedirs(os.path.join(folder, "domains"), exist_ok=True)
        with open(os.path.join(folder, "edge.yaml"), "w") as f:
            f.write(
                f'listen: ["127.0.0.1:{EDGE_PORT}"]\nthreads: 1\naccess_log: "off"\n'
                f"cache:\n  memory: {memory}\n  max_object: 1MiB\n  disk:\n    size: 1GiB\n"
                f"admin:\n  listen: 127.0.0.1:{ADMIN_PORT}\n"
                f"server:\n  grace_period_seconds: 0\n  graceful_shutdown_timeout_seconds: 5\n"
                f"  pid_file: {folder}/edge.pid\n  upgrade_sock: {folder}/upgrade.sock\n"
            )
        with open(os.path.join(folder, "domains", f"{HOST}.yaml"), "w") as f:
            f.write(f'domain: {HOST}\norigin:\n  servers: ["127.0.0.1:{ORIGIN_PORT}"]\n')
        self.process = None

    def start(self):
        env = dict(os.environ, CUSTOM_PAGES_ADMIN_TOKEN=TOKEN, RUST_LOG="info")
        started = time.monotonic()
        self.process = subprocess.Popen(
            ["taskset", "-c", "0", EDGE_BIN, "-c", os.path.join(self.folder, "edge.yaml")],
            env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.folder, "edge.log"), "a"))
        return started

    def stop(self, sig):
        self.process.send_signal(sig)
        self.process.wait(timeout=60)


def fill(port, paths):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for path in paths:
        s, _, _ = get(port, path, conn)
        if s != 200:
            raise SystemExit(f"{path}: {s}")
    conn.close()


def wrk(port, seconds):
    script = os.path.join(WORK, "random.lua")
    with open(script, "w") as f:
        f.write(
            f'math.randomseed(os.time())\n'
            f'request = function()\n'
            f'  return wrk.format("GET", "/o/" .. math.random(0, {OBJECTS - 1}), {{Host = "{HOST}"}})\n'
            f'end\n')
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{seconds}s", "--latency", "-s", script,
         f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def ms(label):
        value, unit = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, ms("50"), ms("99"), int(errors.group(1)) if errors else 0


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def write_origin_conf(location):
    """The origin (nginx): `location` is what its one `location /` does."""
    with open(os.path.join(WORK, "origin.conf"), "w") as f:
        f.write(f"""worker_processes 1;
pid {WORK}/origin.pid;
error_log {WORK}/origin.err;
events {{}}
http {{
    access_log off;
    server {{
        listen 127.0.0.1:{ORIGIN_PORT};
        location / {{ {location} }}
    }}
}}
""")


def disk_hits():
    WORK_ORIGIN = os.path.join(WORK, "origin")
    os.makedirs(os.path.join(WORK_ORIGIN, "o"))
    for i in range(OBJECTS):
        with open(os.path.join(WORK_ORIGIN, "o", str(i)), "wb") as f:
            f.write(os.urandom(OBJECT_KIB << 10))
    write_origin_conf(f"root {WORK_ORIGIN}; add_header Cache-Control \"max-age=86400\";")
    with open(os.path.join(WORK, "nginx.conf"), "w") as f:
        f.write(f"""worker_processes 1;
pid {WORK}/nginx.pid;
error_log {WORK}/nginx.err;
events {{}}
http {{
    access_log off;
    proxy_cache_path {WORK}/nginx-cache levels=1:2 keys_zone=disk:16m max_size=1g inactive=1d use_temp_path=off;
    server {{
        listen 127.0.0.1:{NGINX_PORT};
        location / {{
            proxy_pass http://127.0.0.1:{ORIGIN_PORT};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache disk;
            add_header X-Cache $upstream_cache_status;
        }}
    }}
}}
""")
    subprocess.run(["taskset", "-c", "1", NGINX, "-c", f"{WORK}/origin.conf"], check=True)
    subprocess.run(["taskset", "-c", "0", NGINX, "-c", f"{WORK}/nginx.conf"], check=True)
    edge = Edge(os.path.join(WORK, "edge-hits"), "32MiB")
    edge.start()
    wait("the edge listens", lambda: port_open(EDGE_PORT) and port_open(ADMIN_PORT), 30)
    paths = [f"/o/{i}" for i in range(OBJECTS)]
    log(f"filling both with {OBJECTS} objects of {OBJECT_KIB} KiB")
    fill(EDGE_PORT, paths)
    fill(NGINX_PORT, paths)
    wait("the edge wrote every object", lambda: status()["cache"]["disk"]["writes"]
         + status()["cache"]["disk"]["writes_skipped"] >= OBJECTS)
    rows = []
    for name, port, pid in (("custom-pages", EDGE_PORT, edge.process.pid),
                            ("nginx", NGINX_PORT, int(open(f"{WORK}/nginx.pid").read()))):
        wrk(port, 2)  # warm-up
        before = status()["cache"]["disk"] if name == "custom-pages" else None
        rps, p50, p99, errors = wrk(port, SECONDS)
        note = ""
        if before:
            after = status()["cache"]["disk"]
            hits = after["hits"] - before["hits"]
            note = f"{hits / max(rps * SECONDS, 1):.0%} of requests from disk"
        rows.append((name, rps, p50, p99, errors, rss_mib(pid), note))
        log(f"{name}: {rps:.0f} req/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms {note}")
    final = status()["cache"]["disk"]
    edge.stop(signal.SIGTERM)
    subprocess.run([NGINX, "-c", f"{WORK}/nginx.conf", "-s", "stop"])
    return rows, final


def restart_to_first_hit():
    edge = Edge(os.path.join(WORK, "edge-restart"), "32MiB")
    # 1 KiB objects: the origin serves one file for every path.
    with open(os.path.join(WORK, "origin", "one"), "wb") as f:
        f.write(os.urandom(1024))
    subprocess.run([NGINX, "-c", f"{WORK}/origin.conf", "-s", "stop"])
    time.sleep(0.5)
    write_origin_conf(f"root {WORK}/origin; try_files /one =404; add_header Cache-Control \"max-age=86400\";")
    subprocess.run(["taskset", "-c", "1", NGINX, "-c", f"{WORK}/origin.conf"], check=True)
    edge.start()
    wait("the edge listens", lambda: port_open(EDGE_PORT) and port_open(ADMIN_PORT), 30)
    log(f"storing {RESTART_OBJECTS} objects of 1 KiB")
    fill(EDGE_PORT, (f"/r/{i}" for i in range(RESTART_OBJECTS)))
    wait("every object is written", lambda: status()["cache"]["disk"]["writes"]
         + status()["cache"]["disk"]["writes_skipped"] >= RESTART_OBJECTS)
    stored = status()["cache"]["disk"]
    log(f"stored: {stored['objects']} objects, {stored['used'] / 2**20:.0f} MiB, skipped {stored['writes_skipped']}")
    results = []
    for how, sig in (("clean stop (SIGTERM), index saved", signal.SIGTERM),
                     ("kill -9, index rebuilt from the files", signal.SIGKILL)):
        edge.stop(sig)
        started = edge.start()
        probe = f"/r/{RESTART_OBJECTS // 2}"
        first_hit = None
        while first_hit is None and time.monotonic() - started < 120:
            try:
                s, cache, _ = get(EDGE_PORT, probe)
                if s == 200 and cache == "HIT":
                    first_hit = time.monotonic() - started
            except OSError:
                time.sleep(0.002)
        wait("the index is made", lambda: status()["cache"]["disk"]["indexed"], 300)
        indexed = time.monotonic() - started
        objects = status()["cache"]["disk"]["objects"]
        results.append((how, first_hit, indexed, objects))
        log(f"{how}: first HIT after {first_hit:.3f} s, index of {objects} objects after {indexed:.2f} s")
    edge.stop(signal.SIGTERM)
    subprocess.run([NGINX, "-c", f"{WORK}/origin.conf", "-s", "stop"])
    return results, stored


def write_report(hits, final, restarts, stored):
    cpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    lines = [
        START_MARK,
        "## Disk tier: hits beyond memory, and restarts",
        "",
        f"`make bench` (bench/disk.py), {time.strftime('%Y-%m-%d')}, {cpu} cores, release build; "
        f"the server on CPU 0 (one thread / one worker), wrk on CPU 1, 32 connections, {SECONDS} s.",
        "",
        f"**Disk-tier hits.** {OBJECTS} objects of {OBJECT_KIB} KiB ({OBJECTS * OBJECT_KIB / 1024:.0f} MiB) "
        f"requested at random; our `cache.memory` is 32 MiB ({32 * 1024 / (OBJECTS * OBJECT_KIB):.0%} of the "
        "working set) over a 1 GiB "
        "disk tier; nginx `proxy_cache_path levels=1:2 keys_zone=disk:16m max_size=1g` (nginx has no "
        "memory tier of its own: both read through the kernel's page cache).",
        "",
        "| server | req/s | p50 ms | p99 ms | non-2xx | RSS MiB | |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, rps, p50, p99, errors, rss, note in hits:
        lines.append(f"| {name} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {errors} | {rss:.0f} | {note} |")
    lines += [
        "",
        f"Our disk tier after the run: {final['objects']} objects, {final['used'] / 2**20:.0f} MiB, "
        f"{final['hits']} disk hits, {final['write_errors']} write errors, {final['evictions']} evictions.",
        "",
        f"**Restart to first hit.** {stored['objects']} objects of 1 KiB stored "
        f"({stored['used'] / 2**20:.0f} MiB on disk, {stored['writes_skipped']} writes skipped while filling); "
        "time from starting the process to the first `HIT`, and until the index lists every object "
        "(hits are served by path before that).",
        "",
        "| restart after | first HIT | index complete | objects indexed |",
        "| --- | ---: | ---: | ---: |",
    ]
    for how, first, indexed, objects in restarts:
        lines.append(f"| {how} | {first:.3f} s | {indexed:.2f} s | {objects} |")
    lines += ["", END_MARK, ""]
    section = "\n".join(lines)
    replace_section(OUT, START_MARK, END_MARK, section)


def main():
    global WORK
    for tool in ("wrk", "taskset"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing (bench/run.sh installs wrk)")
    if os.environ.get("DISK_BUILD", "1") == "1":
        subprocess.run(["cargo", "build", "--release", "--bin", "custom-pages"], cwd=ROOT, check=True)
    WORK = tempfile.mkdtemp(prefix="disk-bench-")
    os.chmod(WORK, 0o755)
    try:
        hits, final = disk_hits()
        restarts, stored = restart_to_first_hit()
        write_report(hits, final, restarts, stored)
        log(f"written to {OUT}")
    finally:
        for conf in ("nginx.conf", "origin.conf"):
            subprocess.run([NGINX, "-c", f"{WORK}/{conf}", "-s", "stop"], stderr=subprocess.DEVNULL)
        subprocess.run(["pkill", "-f", f"{WORK}/edge"], stderr=subprocess.DEVNULL)
        if os.environ.get("DISK_KEEP") != "1":
            shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
