#!/usr/bin/env python3
"""End-to-end check of the metric contract, the Grafana dashboard and the alert rules.

Starts a redis-server, the demo service (built beforehand: `cargo build --all-features
--example server`) and a real Prometheus, all on free loopback ports; drives traffic at the
demo while injecting faults (CLIENT KILL of every connection, then Redis stopped for 4 s);
then requires that

- every metric a dashboard panel or an alert rule uses is exported by the demo's /metrics,
- every panel query and every alert expression evaluates without error through Prometheus's
  HTTP API, and the series the faults must move (evictions, reconnects, breaker transitions)
  have data,
- Prometheus loaded the alert rules without error.

It prints the series with an example value and the alerts that fired or would fire.
Standard library only. Every wait is bounded; every process is stopped on exit.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "target", "debug", "examples", "server")
DASHBOARD = os.path.join(ROOT, "grafana", "redis-guard.json")
ALERTS = os.path.join(ROOT, "grafana", "alerts.yml")
POOL = "e2e"
SCRAPE_INTERVAL_S = 1
RATE_WINDOW = "10s"  # stands in for Grafana's $__rate_interval: several scrape intervals


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read().decode()


def wait_until(what, check, limit_s=30):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"e2e: timed out waiting for {what}")


def redis_command(port, *args):
    """One RESP command on a fresh connection; returns the raw reply."""
    payload = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(payload.encode())
        return s.recv(4096).decode(errors="replace")


class Processes:
    def __init__(self):
        self.procs = []

    def start(self, name, argv, **kwargs):
        log = open(os.path.join(WORK, f"{name}.log"), "w")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **kwargs)
        self.procs.append(proc)
        return proc

    def stop_all(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def start_redis(procs, port):
    proc = procs.start(f"redis-{time.monotonic_ns()}", [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", WORK])
    wait_until("redis-server", lambda: "PONG" in redis_command(port, "PING"))
    return proc


def metric_names_in(expr):
    names = set(re.findall(r"\bredis_guard_[a-z_]+", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def scraped_series(text):
    """{series: value} from the Prometheus text format, comments skipped."""
    series = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            series[name] = float(value)
    return series


def prom_query(prom, expr, at=None):
    params = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    status, body = http_get(f"{prom}/api/v1/query?{urllib.parse.urlencode(params)}")
    reply = json.loads(body)
    if status != 200 or reply.get("status") != "success":
        raise SystemExit(f"e2e: query failed: {expr}\n{body}")
    return reply["data"]["result"]


def panel_queries(dashboard):
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def alert_rules():
    """(name, expr) from alerts.yml, read with the same rules Prometheus loaded."""
    rules, name, expr_lines, in_expr = [], None, [], False
    for line in open(ALERTS):
        stripped = line.strip()
        if stripped.startswith("- alert:"):
            if name:
                rules.append((name, " ".join(expr_lines)))
            name, expr_lines, in_expr = stripped.split(":", 1)[1].strip(), [], False
        elif stripped.startswith("expr:"):
            rest = stripped.split(":", 1)[1].strip()
            in_expr = rest in ("|", ">")
            if not in_expr:
                expr_lines = [rest]
        elif in_expr and stripped and not re.match(r"^(for|labels|annotations):", stripped):
            expr_lines.append(stripped)
        elif in_expr:
            in_expr = False
    if name:
        rules.append((name, " ".join(expr_lines)))
    return rules


def main():
    for tool in ("redis-server", "prometheus"):
        if not shutil.which(tool):
            raise SystemExit(f"e2e: {tool} is not installed (make test installs it)")
    if not os.path.exists(DEMO):
        raise SystemExit(f"e2e: {DEMO} missing: cargo build --all-features --example server")

    procs = Processes()
    try:
        run(procs)
    finally:
        procs.stop_all()


def run(procs):
    redis_port, demo_port, prom_port = free_port(), free_port(), free_port()
    redis = start_redis(procs, redis_port)
    demo_url = f"http://127.0.0.1:{demo_port}"
    procs.start("demo", [DEMO], env={
        **os.environ, "REDIS_URL": f"redis://127.0.0.1:{redis_port}",
        "LISTEN_ADDR": f"127.0.0.1:{demo_port}", "REDIS_GUARD_POOL_NAME": POOL,
        "RUST_LOG": "warn"})
    wait_until("the demo to be ready", lambda: http_get(f"{demo_url}/readyz")[0] == 200)

    config = os.path.join(WORK, "prometheus.yml")
    with open(config, "w") as f:
        f.write(f"""global:
  scrape_interval: {SCRAPE_INTERVAL_S}s
  evaluation_interval: {SCRAPE_INTERVAL_S}s
rule_files: ["{ALERTS}"]
scrape_configs:
  - job_name: demo
    static_configs: [{{targets: ["127.0.0.1:{demo_port}"]}}]
""")
    prom = f"http://127.0.0.1:{prom_port}"
    procs.start("prometheus", [
        "prometheus", f"--config.file={config}", f"--storage.tsdb.path={WORK}/tsdb",
        f"--web.listen-address=127.0.0.1:{prom_port}"])
    wait_until("prometheus", lambda: http_get(f"{prom}/-/ready")[0] == 200)

    # Steady traffic for the whole run, bounded in time.
    statuses = {}
    stop = threading.Event()

    def traffic():
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                status = http_get(f"{demo_url}/visits", timeout=3)[0]
            except urllib.error.HTTPError as e:
                status = e.code
            except OSError:
                status = "error"
            statuses[status] = statuses.get(status, 0) + 1
            time.sleep(0.01)

    driver = threading.Thread(target=traffic)
    driver.start()
    time.sleep(3)
    print("e2e: fault 1: CLIENT KILL TYPE normal")
    redis_command(redis_port, "CLIENT", "KILL", "TYPE", "normal")
    time.sleep(3)
    print("e2e: fault 2: redis-server stopped for 4 s")
    outage_start = time.time()
    redis.send_signal(signal.SIGTERM)
    redis.wait(timeout=10)
    time.sleep(4)
    outage_end = time.time()
    start_redis(procs, redis_port)
    wait_until("recovery", lambda: http_get(f"{demo_url}/readyz")[0] == 200)
    time.sleep(4)
    stop.set()
    driver.join(timeout=10)
    time.sleep(2 * SCRAPE_INTERVAL_S)
    print(f"e2e: traffic: {dict(sorted(statuses.items(), key=str))}")

    # 1. Everything the dashboard and the alerts use is exported.
    status, text = http_get(f"{demo_url}/metrics")
    series = scraped_series(text)
    exported = {re.sub(r"_(bucket|sum|count)$", "", s.split("{")[0]) for s in series}
    dashboard = json.load(open(DASHBOARD))
    assert dashboard["uid"] == "redis-guard" and dashboard["id"] is None
    assert "__inputs" not in dashboard, "provisioning needs a datasource variable, not __inputs"
    used = set()
    for _, expr in panel_queries(dashboard):
        used |= metric_names_in(expr)
    for _, expr in alert_rules():
        used |= metric_names_in(expr)
    missing = used - exported
    if missing:
        raise SystemExit(f"e2e: dashboard or alerts use metrics the crate does not export: {sorted(missing)}")
    print(f"e2e: dashboard and alerts use {len(used)} metrics, all exported")

    # 2. Every panel query and alert expression evaluates; the faults moved what they must.
    failures = []
    for title, expr in panel_queries(dashboard):
        query = (expr.replace("$__rate_interval", RATE_WINDOW)
                 .replace("$pool", ".*").replace("$instance", ".*"))
        prom_query(prom, query)
    for name, expr in alert_rules():
        prom_query(prom, expr)
    for what, expr in [
        ("stale evictions", f'sum(redis_guard_stale_evictions_total{{pool="{POOL}"}})'),
        ("reconnects", f'sum(redis_guard_reconnects_total{{pool="{POOL}"}})'),
        ("breaker opened", f'sum(redis_guard_breaker_transitions_total{{pool="{POOL}", to="open"}})'),
        ("refused checkouts", f'sum(redis_guard_checkouts_total{{pool="{POOL}", result="rejected"}})'),
    ]:
        result = prom_query(prom, expr)
        value = float(result[0]["value"][1]) if result else 0.0
        print(f"e2e: {what}: {value:g}")
        if value <= 0:
            failures.append(what)
    if failures:
        raise SystemExit(f"e2e: the faults left no data for: {failures}")
    breaker_during = prom_query(prom, f'max_over_time(redis_guard_breaker_state{{pool="{POOL}"}}[{int(outage_end - outage_start)}s])', at=outage_end)
    print(f"e2e: breaker state during the outage (max): {breaker_during[0]['value'][1]}")

    # 3. Prometheus loaded the rules without error; which fired or would fire.
    rules = json.loads(http_get(f"{prom}/api/v1/rules")[1])["data"]["groups"]
    for group in rules:
        for rule in group["rules"]:
            if rule.get("health") != "ok":
                raise SystemExit(f"e2e: rule {rule['name']} unhealthy: {rule.get('lastError')}")
    print("e2e: alert rules evaluated by Prometheus:")
    for name, expr in alert_rules():
        during = prom_query(prom, expr, at=outage_end)
        now = json.loads(http_get(f"{prom}/api/v1/alerts")[1])["data"]["alerts"]
        state = next((a["state"] for a in now if a["labels"]["alertname"] == name), "inactive")
        print(f"  {name}: condition {'true' if during else 'false'} at the end of the outage; now {state}")

    print("e2e: series after the run (pool e2e):")
    for name in sorted(series):
        print(f"  {name} {series[name]:g}")
    print("e2e: 1 passed, 0 failed")


if __name__ == "__main__":
    WORK = tempfile.mkdtemp(prefix="redis-guard-e2e-")
    try:
        main()
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
