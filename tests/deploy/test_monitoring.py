"""The dashboard and the alert rules under ``deploy/``, checked against promtool and
against what a live worker exports.

The live check runs a real ``subswitch worker`` (its supervisor and two Celery
workers, so the multiprocess metrics are what is scraped) and a real ``subswitch
archive`` on Redis, with the simulator as the worker's upstream, sends a few commands,
scrapes both ports and fails when the dashboard or an alert names a metric neither
exports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from producers import CommandProducer
from producers.publisher import CeleryPublisher
from subswitch.simulator.testing import SimulatorHandle, spawned_simulator
from tests.subswitch.archive.conftest import ArchiveProcess, archive_env, killed_at_exit
from tests.worker.processes import running_worker, wait_until

DEPLOY: Final = Path(__file__).resolve().parents[2] / "deploy"
ALERTS: Final = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD: Final = DEPLOY / "grafana" / "dashboards" / "subswitch.json"
OPERATIONS: Final = DEPLOY.parent / "docs" / "operations.md"
_METRIC: Final = re.compile(r"\b(subswitch_[a-z0-9_]+)")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool not found: apt-get install prometheus (Debian) to check the rules"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def named_metrics() -> dict[str, str]:
    """Every ``subswitch_*`` metric the dashboard and the alerts name, with where."""
    named: dict[str, str] = {}
    for expr in dashboard_exprs():
        named.update(dict.fromkeys(_METRIC.findall(expr), "the dashboard"))
    for rule in alert_rules():
        named.update(dict.fromkeys(_METRIC.findall(rule["expr"]), f"alert {rule['alert']}"))
    return named


def test_promtool_accepts_the_rules_and_their_unit_tests() -> None:
    # Given promtool
    tool = promtool()
    # When it checks the rules, runs their unit tests and checks the scrape config
    checks = [
        [tool, "check", "rules", str(ALERTS)],
        [tool, "test", "rules", str(ALERTS.with_name("alerts.test.yml"))],
        [tool, "check", "config", str(ALERTS.with_name("prometheus.yml"))],
    ]
    results = [subprocess.run(argv, capture_output=True, text=True, check=False) for argv in checks]
    # Then each passes
    for argv, result in zip(checks, results, strict=True):
        assert result.returncode == 0, f"{' '.join(argv[1:3])}:\n{result.stdout}{result.stderr}"


def test_every_alert_has_a_runbook_entry() -> None:
    # Given the alerts and the operations guide's headings
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in OPERATIONS.read_text().splitlines()
        if line.startswith("#")
    }
    # When each alert's runbook link is followed
    for rule in alert_rules():
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        # Then it names a section of docs/operations.md
        assert path == "docs/operations.md", rule["alert"]
        assert anchor in headings, f"{rule['alert']}: no section #{anchor}"
    assert {rule["alert"] for rule in alert_rules()} >= {
        "SubswitchBreakerOpen", "SubswitchUrgentLatencyHigh", "SubswitchDeadLettersRising",
        "SubswitchFailedRatioHigh", "SubswitchLaneBacklogGrowing", "SubswitchNoWorkerScraped",
        "SubswitchStoreDurabilityWarning",
    }  # fmt: skip


def test_the_dashboard_uses_the_provisioned_data_source_and_path() -> None:
    # Given the dashboard and Grafana's provisioning files
    dashboard = json.loads(DASHBOARD.read_text())
    provisioning = DEPLOY / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    providers = yaml.safe_load((provisioning / "dashboards" / "subswitch.yaml").read_text())
    # When its panels and the provider are read
    uids = {panel["datasource"]["uid"] for panel in dashboard["panels"]}
    ids = [panel["id"] for panel in dashboard["panels"]]
    # Then every panel queries the provisioned Prometheus, ids are unique, and the
    # provider loads the folder compose mounts the dashboards into
    assert uids == {source["uid"] for source in sources["datasources"]}
    assert len(ids) == len(set(ids))
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {"Outcomes per second by lane", "Queue depth per lane", "Dead letters",
            "Archive lag", "Circuit breaker"} <= titles  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorHandle]:
    with spawned_simulator("--subscriptions", "100") as handle:
        yield handle


def scrape(url: str) -> tuple[set[str], list[dict[str, str]]]:
    """Sample names and every sample's labels."""
    text = httpx.get(url, timeout=5, trust_env=False).text
    names: set[str] = set()
    labels: list[dict[str, str]] = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.add(sample.name)
            labels.append(sample.labels)
    return names, labels


def probe(url: str) -> int:
    return httpx.get(url, timeout=5, trust_env=False).status_code


def commands_counted(url: str) -> float:
    text = httpx.get(url, timeout=5, trust_env=False).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "subswitch_commands_total"
    )


@pytest.mark.integration
def test_the_dashboard_and_alerts_name_only_metrics_a_live_worker_and_archive_export(
    clean_redis_url: str, simulator: SimulatorHandle, tmp_path: Path
) -> None:
    # Given a supervised worker (urgent and main Celery workers) serving one metrics port,
    # and the archive serving its own
    port, archive_port = free_port(), free_port()
    env = {
        "SUBSWITCH_BROKER_URL": clean_redis_url,
        "SUBSWITCH_STORE_URL": clean_redis_url,
        "SUBSWITCH_UPSTREAM_URL": simulator.base_url,
        "SUBSWITCH_DATA_DIR": str(tmp_path),
        "SUBSWITCH_METRICS_PORT": str(port),
        "SUBSWITCH_RATE_LIMIT": "50",
    }
    base = f"http://127.0.0.1:{port}"
    publisher = CeleryPublisher(
        broker_url=clean_redis_url, visibility_timeout=300, queue_type="quorum"
    )
    archive_dir = tmp_path / "archive"
    archive_dir.mkdir()
    database = f"sqlite:///{archive_dir / 'archive.sqlite3'}"
    archives: list[ArchiveProcess] = []
    with killed_at_exit(archives):
        # The archive starts while the worker does (waited for before its scrape).
        served = {"SUBSWITCH_METRICS_PORT": str(archive_port)}
        archive_vars = archive_env(clean_redis_url, database, archive_dir) | served
        archives.append(ArchiveProcess(archive_vars, wait=False))
        with (
            running_worker(env, concurrency=2) as worker,
            CommandProducer(publisher=publisher) as p,
        ):
            # When a few commands run, on every lane
            ids = [
                p.change_block_status(org_id="telco", subscription_id=1, block_id=1, active=True,
                                      reason="stolen", priority="urgent", source="tests"),
                p.change_service_status(org_id="telco", subscription_id=2, service_id=2,
                                        active=False, source="tests"),
                p.change_service_status(org_id="telco", subscription_id=3, service_id=3,
                                        active=True, priority="bulk", source="tests"),
            ]  # fmt: skip
            wait_until(lambda: commands_counted(f"{base}/metrics") >= 3, timeout=60,
                       what="three commands counted")  # fmt: skip
            wait_until(lambda: probe(f"{base}/readyz") == 200, timeout=20, what="/readyz 200")
            alive = probe(f"{base}/healthz")
            # ...and the broker has been sampled once more since
            wait_until(lambda: "subswitch_queue_depth" in str(scrape(f"{base}/metrics")[0]),
                       timeout=15, what="a broker sample")  # fmt: skip
            exported, labels = scrape(f"{base}/metrics")
            archives[0].wait_ready()
            archived, _ = scrape(f"http://127.0.0.1:{archive_port}/metrics")
            log = worker.log()
    # Then it is alive and ready, and every metric named is exported by one of them
    assert alive == 200, log[-2000:]
    missing = {
        name: where for name, where in named_metrics().items() if name not in exported | archived
    }
    assert not missing, f"named but not exported: {missing}"
    # ...and no label value is a command id (labels stay bounded)
    values = {value for sample_labels in labels for value in sample_labels.values()}
    assert not values & set(ids)
