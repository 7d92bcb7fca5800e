"""deploy/: the Grafana dashboard, the Prometheus rules and configurations and the
prometheus-adapter rule of the workers' autoscaler name only metrics and labels batchd
exports, and Prometheus's promtool accepts them.

The metric names, types and labels come from a real scrape of a server and a worker
after a batch; a labelled metric that has no sample yet (no Redis error, no rate-limit
cut) takes its labels from docs/operations.md's table, which the scrape checks where it
has samples. promtool is installed by scripts/install-promtool (scripts/test runs
it); its tests skip where it could not be had.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from support.polling import poll
from support.promql import GRAFANA_INTERVALS, TARGET_LABELS, Catalog, check
from support.promql import labels_used_in_template as labels_read
from support.scrape import Scrape, running, scrape

from batchd.client import AsyncClient
from batchd.core.config import Settings

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "batchd.json"
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ADAPTER = ROOT / "deploy" / "k8s" / "prometheus-adapter.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"

# Grafana's own variables, and the ones the dashboard defines.
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__all"}
# Series Prometheus makes itself for each target.
PROMETHEUS_SERIES = {"up": TARGET_LABELS}
SEVERITIES = {"critical", "warning"}


@dataclass(frozen=True)
class Query:
    where: str
    expr: str
    reads: frozenset[str]  # labels read from the result (legend, annotations)


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' own (collapsed rows hold theirs) included."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> list[Query]:
    found = []
    for panel in panels(dashboard()):
        for target in panel.get("targets", []):
            legend = target.get("legendFormat", "")
            found.append(
                Query(f"panel {panel['title']!r}", target["expr"], frozenset(labels_read(legend)))
            )
    return found


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def rule_queries() -> list[Query]:
    found = []
    for rule in rules():
        texts = " ".join(rule.get("annotations", {}).values())
        name = rule.get("alert") or rule.get("record")
        found.append(Query(f"rule {name}", rule["expr"], frozenset(labels_read(texts))))
    return found


def adapter_queries() -> list[Query]:
    """prometheus-adapter's metricsQuery of each external rule, its templates filled in
    as the adapter does (a selector of the rule's series, matchers of the HPA's)."""
    config = yaml.safe_load(yaml.safe_load(ADAPTER.read_text())["data"]["config.yaml"])
    found = []
    for rule in config["externalRules"]:
        series = re.fullmatch(r"(\w+)\{.*\}", rule["seriesQuery"])
        assert series, rule["seriesQuery"]
        expr = rule["metricsQuery"].replace("<<.Series>>", series[1])
        expr = expr.replace("<<.LabelMatchers>>", 'job="batchd-server"')
        found.append(Query(f"adapter rule {rule['name']['as']}", expr, frozenset()))
    return found


def label_values_queries() -> list[tuple[str, str]]:
    """(metric, label) of each `label_values(metric, label)` variable."""
    found = []
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((\w+)\s*,\s*(\w+)\)", text)
        assert match, f"variable {variable['name']}: {text!r} is not label_values(metric, label)"
        found.append((match[1], match[2]))
    return found


def documented() -> dict[str, tuple[str, frozenset[str]]]:
    """docs/operations.md's metrics table: series name to (type, labels)."""
    table = {}
    for line in OPERATIONS.read_text().splitlines():
        match = re.match(r"\| `(batchd_\w+)` \| (\w+) \| ([^|]*) \|", line)
        if match:
            labels = frozenset(label.strip() for label in match[3].split(",") if label.strip())
            table[match[1]] = (match[2], labels)
    return table


# --- the dashboard --------------------------------------------------------------------


def test_the_dashboard_is_importable_json_on_its_datasource_variable() -> None:
    board = dashboard()
    assert board["uid"]
    assert board["title"]
    assert isinstance(board["schemaVersion"], int)
    assert board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    source = variables["datasource"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    on_variable = {"type": "prometheus", "uid": "${datasource}"}
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == on_variable, variable["name"]
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    queried = [panel for panel in panels(board) if panel["type"] != "row"]
    assert queried
    for panel in queried:
        title = panel["title"]
        assert panel["datasource"] == on_variable, title
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, title
        assert position["h"] > 0, title
        targets = panel["targets"]
        assert targets, f"{title}: no targets"
        assert len({t["refId"] for t in targets}) == len(targets), title
        for target in targets:
            assert target["datasource"] == on_variable, title
            assert isinstance(target["expr"], str), title
            assert target["expr"].strip(), title
    used = {name for query in dashboard_queries() for name in re.findall(r"\$\{?(\w+)", query.expr)}
    assert used - GRAFANA_BUILTINS <= set(variables) - {"datasource"}


def test_the_dashboard_panels_do_not_overlap() -> None:
    board = dashboard()
    boxes = [(p["gridPos"], p["title"]) for p in board["panels"]]
    for n, (a, first) in enumerate(boxes):
        for b, second in boxes[n + 1 :]:
            apart = (
                a["x"] + a["w"] <= b["x"]
                or b["x"] + b["w"] <= a["x"]
                or a["y"] + a["h"] <= b["y"]
                or b["y"] + b["h"] <= a["y"]
            )
            assert apart, f"{first!r} overlaps {second!r}"


def test_every_query_parses_as_promql() -> None:
    queries = dashboard_queries() + rule_queries() + adapter_queries()
    assert len(queries) > 40
    for query in queries:
        promql_parser.parse(GRAFANA_INTERVALS.sub("5m", query.expr))


# --- the alerting rules ---------------------------------------------------------------


def test_each_alert_waits_and_says_how_bad_and_what() -> None:
    alerts = [rule for rule in rules() if "alert" in rule]
    assert alerts
    names = [rule["alert"] for rule in alerts]
    assert len(names) == len(set(names))
    for rule in alerts:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_each_alert_has_unit_tests_that_fire_it_and_keep_it_silent() -> None:
    cases = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())
    fired: set[str] = set()
    silent: set[str] = set()
    for test in cases["tests"]:
        for case in test["alert_rule_test"]:
            (fired if case["exp_alerts"] else silent).add(case["alertname"])
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert fired == alerts
    assert silent == alerts


def test_the_checker_finds_unknown_metrics_and_labels() -> None:
    catalog = Catalog(
        {"batchd_x_total": frozenset({"handler", *TARGET_LABELS}), "up": TARGET_LABELS}
    )
    good = 'sum by (handler) (rate(batchd_x_total{handler=~"$handler"}[$__rate_interval]))'
    assert check(good, catalog, reads={"handler"}) == []
    bad = "sum by (kind) (rate(batchd_x[5m])) / on (job) group_left (code) up"
    assert check(bad, catalog, reads={"instance"}) == [
        "unknown metric 'batchd_x'",
        "sum by/without 'kind', which its input does not carry",
        "/ on(job): not on both sides",
        "group_left(code): not on the right-hand side",
        "reads label 'instance', which the result does not carry",
    ]


# --- promtool -------------------------------------------------------------------------


def promtool() -> str:
    found = shutil.which("promtool") or shutil.which("promtool", path=str(ROOT / ".venv" / "bin"))
    if found is None:
        pytest.skip("promtool is not installed: scripts/install-promtool needs Debian's apt")
    return found


def run_promtool(*args: str) -> str:
    done = subprocess.run(
        [promtool(), *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_promtool_accepts_the_rules_and_the_config() -> None:
    assert "SUCCESS" in run_promtool("check", "rules", "alerts.yml")
    output = run_promtool("check", "config", "prometheus.yml")
    assert "SUCCESS: 1 rule files found" in output
    output = run_promtool("check", "config", "compose.yml")  # deploy/compose.yaml's
    assert "SUCCESS: 1 rule files found" in output


def test_promtool_runs_the_alerts_unit_tests() -> None:
    assert "SUCCESS" in run_promtool("test", "rules", "alerts_test.yml")


# --- against a real scrape ------------------------------------------------------------


@pytest.fixture(scope="module")
async def scrapes(redis_url: str) -> tuple[Scrape, Scrape]:
    """A server's and a worker's /metrics after a batch, one item of which failed."""
    settings = Settings(
        redis_url=redis_url,
        host="127.0.0.1",
        key_prefix=f"deploy-{uuid.uuid4().hex[:8]}:",
        outcome_flush_interval=0.02,
    )
    async with running(settings) as (server, worker):
        assert server.web is not None
        assert worker.metrics_port is not None
        async with AsyncClient(f"127.0.0.1:{server.port}") as client:
            await client.submit("noop", [(f"i{n}", {}) for n in range(5)])
            await client.submit("sleep", [("x", {"seconds": 0, "fail": True})])

        async def recorded() -> Scrape | None:
            found = await scrape(worker.metrics_port or 0)
            done = found.value("batchd_worker_items_finished_total")
            return found if done == 6 else None

        work = await poll(recorded)
        served = await scrape(server.web.port)
    return served, work


SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
    "info": ("_info",),
    "unknown": ("",),
}


def catalog_of(found: tuple[Scrape, ...]) -> Catalog:
    """The series a query can name, by family type, with the labels their samples carry
    (docs/operations.md's where a family has no sample yet) and the target labels."""
    docs = documented()
    series: dict[str, frozenset[str]] = dict(PROMETHEUS_SERIES)
    for family in (f for one in found for f in one.families):
        sampled = {label for sample in family.samples for label in sample.labels if label != "le"}
        for suffix in SUFFIXES[family.type]:
            name = family.name + suffix
            labels = frozenset(sampled) or docs.get(name, ("", frozenset()))[1]
            if suffix == "_bucket":
                labels |= {"le"}
            series[name] = series.get(name, frozenset()) | labels | TARGET_LABELS
    return Catalog(series)


@pytest.mark.slow
async def test_the_documented_metrics_are_those_scraped(scrapes: tuple[Scrape, Scrape]) -> None:
    scraped: dict[str, tuple[str, set[str]]] = {}
    for family in (f for one in scrapes for f in one.families):
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = {label for s in family.samples for label in s.labels if label != "le"}
        kind, known = scraped.get(name, (family.type, set()))
        scraped[name] = (kind, known | labels)
    for name, (kind, documented_labels) in documented().items():
        assert name in scraped, f"{name} is documented, not scraped"
        assert scraped[name][0] == kind, name
        if scraped[name][1]:  # a sample shows the labels
            assert scraped[name][1] == documented_labels, name


@pytest.mark.slow
async def test_every_metric_and_label_the_queries_name_is_exported(
    scrapes: tuple[Scrape, Scrape],
) -> None:
    catalog = catalog_of(scrapes)
    problems = []
    for query in dashboard_queries() + rule_queries() + adapter_queries():
        problems += [f"{query.where}: {p}" for p in check(query.expr, catalog, reads=query.reads)]
    for metric, label in label_values_queries():
        if label not in catalog.series.get(metric, frozenset()):
            problems.append(f"variable label_values({metric}, {label}): no such series")
    assert not problems, "\n".join(problems)
