"""The monitoring profile's files as the tests read them (shared by tests/ops and tests/serving)."""

from __future__ import annotations

import json

from tests.ops.stack import BASE_FILE, ROOT, run_compose

MONITORING = ROOT / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "cnnzoo.json"
PROMTOOL_HOW = "install Debian's prometheus package (apt-get install prometheus)"

# What Grafana puts in for its variables when the dashboard shows every model.
_GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$model": ".*"}


def monitoring_config(env: dict[str, str] | None = None) -> dict:
    """The compose model with the `monitoring` profile on, resolved by the Compose v2 parser."""
    result = run_compose(
        ["--profile", "monitoring", "config", "--format", "json"], [BASE_FILE], env
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of the dashboard, Grafana's variables filled in."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in _GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append((panel["title"], expr))
    return queries
