"""The compose stack's `monitoring` profile, checked offline by the tools that will run it.

The Compose v2 parser resolves the profile, `promtool check config` (Debian's prometheus
package) checks the Prometheus configuration the profile writes, and the Grafana dashboard is
validated against Grafana's dashboard schema (tests/ops/schemas/grafana, see its README). The
dashboard's queries themselves run against a real Prometheus in tests/serving/test_metrics.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jsonschema
import yaml

from tests.ops.monitoring import (
    DASHBOARD,
    MONITORING,
    PROMTOOL_HOW,
    dashboard_queries,
    monitoring_config,
)
from tests.ops.stack import resolve
from tests.tools import require_tool

SCHEMAS = Path(__file__).resolve().parent / "schemas"


def test_the_profile_adds_prometheus_and_grafana_and_leaves_the_default_stack_alone():
    assert set(resolve(env={})["services"]) == {"repository", "server", "worker"}
    config = monitoring_config()
    services = config["services"]
    assert {"prometheus", "grafana"} <= set(services)
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert {(p["host_ip"], p["target"]) for p in prometheus["ports"]} == {("127.0.0.1", 9090)}
    assert {(p["host_ip"], p["target"]) for p in grafana["ports"]} == {("127.0.0.1", 3000)}
    assert prometheus["configs"] == [
        {"source": "prometheus", "target": "/etc/prometheus/prometheus.yml"}
    ]
    mounts = {v["target"]: v for v in grafana["volumes"]}
    for target, folder in (
        ("/etc/grafana/provisioning", MONITORING / "grafana" / "provisioning"),
        ("/etc/grafana/dashboards", DASHBOARD.parent),
    ):
        assert Path(mounts[target]["source"]) == folder and mounts[target]["read_only"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"/etc/grafana/dashboards/{DASHBOARD.name}"
    # the p50/p99 panels read the summaries, which the server then reports
    command = services["server"]["command"]
    assert command[command.index("--metrics-config") + 1] == "summary_latencies=true"


def test_prometheus_scrapes_the_server_on_its_metrics_port(tmp_path: Path):
    promtool = require_tool("promtool", PROMTOOL_HOW)
    for port in ("8002", "9102"):
        config = monitoring_config({"CNNZOO_METRICS_PORT": port})
        content = config["configs"]["prometheus"]["content"]
        (job,) = yaml.safe_load(content)["scrape_configs"]
        assert job["static_configs"][0]["targets"] == [f"server:{port}"]
        path = tmp_path / f"prometheus-{port}.yml"
        path.write_text(content)
        checked = subprocess.run(
            [str(promtool), "check", "config", str(path)], capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "SUCCESS" in checked.stdout + checked.stderr
    # the check can fail: a scrape interval promtool refuses
    broken = tmp_path / "broken.yml"
    broken.write_text(content.replace("scrape_interval: 5s", "scrape_interval: five"))
    refused = subprocess.run([str(promtool), "check", "config", str(broken)], capture_output=True)
    assert refused.returncode != 0


def _grafana_schema() -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / "grafana" / "dashboard.jsonschema.json").read_text())
    return jsonschema.Draft7Validator(schema)


def test_the_dashboard_follows_grafanas_dashboard_schema():
    validator = _grafana_schema()
    dashboard = json.loads(DASHBOARD.read_text())
    errors = sorted(validator.iter_errors(dashboard), key=str)
    assert not errors, "\n".join(e.message for e in errors[:5])
    broken = {**dashboard, "panels": [{**dashboard["panels"][0], "gridPos": {"x": "left"}}]}
    assert list(validator.iter_errors(broken)), "the schema must be able to refuse a dashboard"


def test_the_dashboard_uses_the_provisioned_data_source_and_covers_the_issue_panels():
    (source,) = yaml.safe_load(
        (MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["type"] == "prometheus"
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert all(t["datasource"]["uid"] == source["uid"] for t in panel["targets"])
    (provider,) = yaml.safe_load(
        (MONITORING / "grafana" / "provisioning" / "dashboards" / "cnnzoo.yml").read_text()
    )["providers"]
    assert provider["options"]["path"] == "/etc/grafana/dashboards"
    queries = " ".join(expr for _, expr in dashboard_queries())
    for metric in (
        "nv_inference_request_success",
        "nv_inference_request_failure",
        'quantile="0.99"',
        'quantile="0.5"',
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_gpu_utilization",
        "nv_gpu_memory_used_bytes",
    ):
        assert metric in queries, metric
    assert "by (model, reason)" in queries


def test_every_dashboard_query_is_valid_promql(tmp_path: Path):
    promtool = require_tool("promtool", PROMTOOL_HOW)
    rules = [
        {"record": f"panel_{i}", "expr": expr} for i, (_, expr) in enumerate(dashboard_queries())
    ]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run(
        [str(promtool), "check", "rules", str(path)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(rules)} rules found" in checked.stdout, checked.stdout
