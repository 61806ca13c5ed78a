"""Evaluate deploy/k8s/base/prometheus-rules.yaml with Prometheus's promtool.

`alerts_fired(series, at_minutes)` writes the rules (the PrometheusRule's `spec`)
and a promtool unit test whose input is `series` (promtool's expanding notation,
one sample a minute), runs ``promtool test rules`` and returns the alerts firing
at `at_minutes` as (alertname, *labels `keys`: by default group, topic, partition),
for the alerts `names`.
promtool itself checks
that the expected list matches; here the expectation is read back from its
failure message, so a test states what it expects in Python."""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import yaml

RULES = Path(__file__).resolve().parents[1] / "deploy" / "k8s" / "base" / "prometheus-rules.yaml"


def alerts_fired(
    series: dict[str, str],
    at_minutes: int,
    names: tuple[str, ...] = ("ConsumerStalled",),
    keys: tuple[str, ...] = ("group", "topic", "partition"),
) -> set[tuple[str, ...]]:
    rules = yaml.safe_load(RULES.read_text())["spec"]
    with tempfile.TemporaryDirectory() as tmp:
        rule_file = Path(tmp) / "rules.yaml"
        rule_file.write_text(yaml.safe_dump(rules))
        fired: set[tuple[str, ...]] = set()
        for name in names:
            test = {
                "rule_files": [str(rule_file)],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": [{"series": s, "values": v} for s, v in series.items()],
                        # Expect nothing: promtool then lists what did fire.
                        "alert_rule_test": [
                            {"eval_time": f"{at_minutes}m", "alertname": name, "exp_alerts": []}
                        ],
                    }
                ],
            }
            test_file = Path(tmp) / "test.yaml"
            test_file.write_text(yaml.safe_dump(test))
            result = subprocess.run(
                ["promtool", "test", "rules", str(test_file)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if result.returncode == 0:
                continue
            out = result.stdout + result.stderr
            if "got:" not in out:
                raise AssertionError(f"promtool failed:\n{out}")
            got = out.split("got:", 1)[1]
            for labels in re.findall(r"Labels:\{([^}]*)\}", got):
                found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
                fired.add((found.get("alertname", name), *(found.get(k, "") for k in keys)))
        return fired
