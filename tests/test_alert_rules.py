"""docs/operations/relightq-alerts.yml: valid Prometheus rules about metrics relightq exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "docs" / "operations" / "relightq-alerts.yml"
# Series a histogram or counter family exposes besides its own name.
SUFFIXES = ("", "_bucket", "_sum", "_count", "_created")


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def _exported_metrics() -> set[str]:
    """Every metric name relightq/metrics.py defines, with the series derived from them."""
    names = set(re.findall(r'"(relightq_[a-z_]+)"', (ROOT / "relightq" / "metrics.py").read_text()))
    return {name + suffix for name in names for suffix in SUFFIXES}


def test_rules_file_has_groups_of_named_alerts() -> None:
    rules = _rules()
    assert rules
    for rule in rules:
        assert re.fullmatch(r"Relightq[A-Za-z]+", rule["alert"]), rule
        assert rule["expr"].strip(), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names repeat"


def test_rules_use_only_metrics_relightq_exports() -> None:
    exported = _exported_metrics()
    for rule in _rules():
        used = set(re.findall(r"\brelightq_[a-z_]+", rule["expr"]))
        assert used <= exported, f"{rule['alert']} uses unknown metrics {used - exported}"


def test_the_alerts_the_operations_guide_promises_exist() -> None:
    names = {rule["alert"] for rule in _rules()}
    assert {
        "RelightqFleetPaused",
        "RelightqCreditsLow",
        "RelightqQueueDepthGrowing",
        "RelightqWebhookDeliveriesFailing",
        "RelightqLeasesRecovered",
    } <= names
    guide = (ROOT / "docs" / "operations" / "monitoring.md").read_text()
    for name in names:
        assert f"`{name}`" in guide, f"{name} is not explained in monitoring.md"


# `promtool test rules` cases: series in, then at each time which alerts fire, with the
# value their templates show. Every other alert listed there must stay silent.
CASES: list[dict[str, Any]] = [
    {
        "series": {
            'relightq_throttle_paused{job="relightq-api"}': "0 0 1x10",
            'relightq_credits_remaining{job="relightq-api"}': "500 300 90x10",
            'relightq_queue_depth{job="relightq-api",queue="relight"}': "0x12",
            'relightq_queue_depth{job="relightq-api",queue="control"}': "0x12",
            'relightq_upstream_calls_in_flight{job="relightq-api"}': "0x12",
        },
        "expect": [
            ("4m", "RelightqFleetPaused", None),
            ("8m", "RelightqFleetPaused", {}),
            ("1m", "RelightqCreditsLow", None),
            ("3m", "RelightqCreditsLow", {"$value": "90"}),
            ("8m", "RelightqWorkersIdleWithBacklog", None),
            ("8m", "RelightqControlQueueStuck", None),
        ],
    },
    {
        "series": {
            'relightq_queue_depth{job="relightq-api",queue="relight"}': "600+10x60",
            'relightq_upstream_calls_in_flight{job="relightq-api"}': "0x60",
            'relightq_throttle_paused{job="relightq-api"}': "0x60",
        },
        "expect": [
            ("20m", "RelightqQueueDepthGrowing", None),
            ("50m", "RelightqQueueDepthGrowing", {}),
            ("15m", "RelightqWorkersIdleWithBacklog", {}),
        ],
    },
    {
        "series": {
            'relightq_webhook_delivery_attempts_total{job="relightq-worker",result="delivered"}': (
                "0+5x60"
            ),
            'relightq_webhook_delivery_attempts_total{job="relightq-worker",result="failed"}': (
                "0x30 1x30"
            ),
            'relightq_leases_recovered_total{job="relightq-worker",table="jobs",how="expired"}': (
                "0x20 3x40"
            ),
        },
        "expect": [
            ("20m", "RelightqWebhookDeliveriesFailing", None),
            ("40m", "RelightqWebhookDeliveriesFailing", {"$value": "1"}),
            ("10m", "RelightqLeasesRecovered", None),
            (
                "25m",
                "RelightqLeasesRecovered",
                {
                    "$labels.table": "jobs",
                    "$labels.how": "expired",
                    "labels": {"table": "jobs", "how": "expired"},
                },
            ),
        ],
    },
]


def _promtool_tests() -> dict[str, Any]:
    """The CASES as a `promtool test rules` file, annotations rendered from the rules."""
    rules = {rule["alert"]: rule for rule in _rules()}
    tests = []
    for case in CASES:
        expectations = []
        for at, name, fires in case["expect"]:
            alerts = []
            if fires is not None:
                rule = rules[name]
                annotations = {}
                for key, text in rule["annotations"].items():
                    for placeholder, value in fires.items():
                        if placeholder.startswith("$"):
                            text = text.replace("{{ " + placeholder + " }}", value)
                    annotations[key] = text
                labels = {**rule["labels"], **fires.get("labels", {})}
                alerts.append({"exp_labels": labels, "exp_annotations": annotations})
            expectations.append({"eval_time": at, "alertname": name, "exp_alerts": alerts})
        tests.append(
            {
                "interval": "1m",
                "input_series": [
                    {"series": series, "values": values}
                    for series, values in case["series"].items()
                ],
                "alert_rule_test": expectations,
            }
        )
    return {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_rules_and_they_fire_as_described(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None
    cases = tmp_path / "relightq-alerts.test.yml"
    cases.write_text(yaml.safe_dump(_promtool_tests(), sort_keys=False))
    for command in (["check", "rules", str(RULES)], ["test", "rules", str(cases)]):
        done = subprocess.run(
            [promtool, *command], capture_output=True, text=True, timeout=60, cwd=tmp_path
        )
        assert done.returncode == 0, done.stdout + done.stderr
