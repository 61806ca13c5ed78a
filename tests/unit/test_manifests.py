"""The production manifests (deploy/k8s): valid Kubernetes objects (kubernetes-validate's
bundled schemas, offline), custom resources checked against their essential schema,
and the design's promises kept: probes, consumer-lag autoscaling, every topic with its
dead-letter topic, a replica-set connection with majority writes, SLA and lag alerts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from deploy import autoscaling, kafka_acls
from deploy.local.stack import SERVICES
from shared.events import (
    ALL_TOPICS,
    PARTNER_TOPICS,
    TOPIC_MODELS,
    dead_letter_topic,
    partner_topic,
)

BASE = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "base"
K8S_VERSION = "1.37.0"
CORE_KINDS = {
    "Namespace",
    "ConfigMap",
    "Deployment",
    "Service",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "Secret",
}

# The parts of the custom resources' schemas (Strimzi, KEDA, Prometheus operator) the
# manifests rely on; the real CRDs are not bundled with any installable validator.
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_KAFKA_OPERATIONS = ["Read", "Write", "Create", "Delete", "Alter", "Describe", "All"]
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "KafkaUser": {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "kafka.strimzi.io/v1beta2"},
            "metadata": {
                "type": "object",
                "required": ["labels"],
                "properties": {"labels": {"required": ["strimzi.io/cluster"]}},
            },
            "spec": {
                "type": "object",
                "required": ["authentication", "authorization"],
                "additionalProperties": False,
                "properties": {
                    "authentication": {
                        "type": "object",
                        "properties": {"type": {"enum": ["tls", "tls-external", "scram-sha-512"]}},
                    },
                    "authorization": {
                        "type": "object",
                        "required": ["type", "acls"],
                        "properties": {
                            "type": {"const": "simple"},
                            "acls": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["resource", "operations"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "resource": {
                                            "type": "object",
                                            "required": ["type", "name", "patternType"],
                                            "additionalProperties": False,
                                            "properties": {
                                                "type": {"enum": ["topic", "group", "cluster"]},
                                                "name": {"type": "string", "minLength": 1},
                                                "patternType": {"enum": ["literal", "prefix"]},
                                            },
                                        },
                                        "operations": {
                                            "type": "array",
                                            "minItems": 1,
                                            "items": {"enum": _KAFKA_OPERATIONS},
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    "KafkaTopic": {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"const": "kafka.strimzi.io/v1beta2"},
            "spec": {
                "type": "object",
                "required": ["topicName", "partitions", "replicas", "config"],
                "additionalProperties": False,
                "properties": {
                    "topicName": {"type": "string"},
                    "partitions": {"type": "integer", "minimum": 1},
                    "replicas": {"type": "integer", "minimum": 1, "maximum": 32767},
                    "config": _STR_MAP,
                },
            },
        },
    },
    "ScaledObject": {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "spec": {
                "type": "object",
                "required": ["scaleTargetRef", "triggers"],
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {"name": {"type": "string"}},
                    },
                    "pollingInterval": {"type": "integer"},
                    "cooldownPeriod": {"type": "integer"},
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["type", "metadata"],
                            "properties": {
                                "type": {"type": "string"},
                                "metadata": _STR_MAP,
                                "authenticationRef": {
                                    "type": "object",
                                    "required": ["name"],
                                    "properties": {"name": {"type": "string"}},
                                    "additionalProperties": False,
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    "TriggerAuthentication": {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "spec": {
                "type": "object",
                "required": ["secretTargetRef"],
                "properties": {
                    "secretTargetRef": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["parameter", "name", "key"],
                            "additionalProperties": False,
                            "properties": {
                                "parameter": {"type": "string"},
                                "name": {"type": "string"},
                                "key": {"type": "string"},
                            },
                        },
                    }
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "spec": {
                "type": "object",
                "required": ["groups"],
                "properties": {
                    "groups": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "properties": {
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["alert", "expr", "labels"],
                                        "additionalProperties": False,
                                        "properties": {
                                            "alert": {"type": "string"},
                                            "expr": {"type": "string", "minLength": 1},
                                            "for": {"type": "string", "pattern": r"^\d+[smh]$"},
                                            "labels": {
                                                **_STR_MAP,
                                                "required": ["severity"],
                                            },
                                            "annotations": _STR_MAP,
                                        },
                                    },
                                }
                            },
                        },
                    }
                },
            },
        },
    },
    "PodMonitor": {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "spec": {
                "type": "object",
                "required": ["selector", "podMetricsEndpoints"],
            },
        },
    },
}


def _resources() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((BASE / name).read_text()) if d]
    return docs


RESOURCES = _resources()


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in RESOURCES if d["kind"] == kind]


def validate(doc: dict[str, Any]) -> None:
    if doc["kind"] in CORE_KINDS:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    else:
        jsonschema.validate(doc, CRD_SCHEMAS[doc["kind"]])


def test_kustomization_lists_every_manifest_file() -> None:
    listed = set(yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize(
    "doc", RESOURCES, ids=[f"{d['kind']}/{d['metadata']['name']}" for d in RESOURCES]
)
def test_every_object_is_valid(doc: dict[str, Any]) -> None:
    assert doc["kind"] in CORE_KINDS | set(CRD_SCHEMAS), f"no schema for {doc['kind']}"
    validate(doc)


def test_the_validator_rejects_a_broken_deployment() -> None:
    broken = yaml.safe_load(yaml.safe_dump(_of_kind("Deployment")[0]))
    probe = broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["httpGet"]["port"] = {"name": "http"}  # must be a name or a number
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)
    unknown_field = yaml.safe_load(yaml.safe_dump(_of_kind("Deployment")[0]))
    unknown_field["spec"]["replica"] = 2  # typo: strict schemas refuse unknown fields
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(unknown_field)


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def test_each_service_runs_with_readiness_and_liveness_probes() -> None:
    deployments = {d["metadata"]["name"]: d for d in _of_kind("Deployment")}
    assert set(deployments) == {s.replace("_", "-") for s in SERVICES}
    for svc in SERVICES:
        c = _container(deployments[svc.replace("_", "-")])
        assert c["command"] == ["python", "-m", f"services.{svc}"]
        port = next(p for p in c["ports"] if p["name"] == "http")["containerPort"]
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["port"] in ("http", port)
        prefix = svc.upper()
        assert _env(c)[f"{prefix}_HTTP_PORT"] == str(port)
        assert _env(c)[f"{prefix}_HTTP_HOST"] == "0.0.0.0"


def _config() -> dict[str, str]:
    config = next(c for c in _of_kind("ConfigMap") if c["metadata"]["name"] == "router-config")
    data: dict[str, str] = config["data"]
    return data


def _topics() -> dict[str, dict[str, Any]]:
    return {t["spec"]["topicName"]: t["spec"] for t in _of_kind("KafkaTopic")}


def test_every_topic_and_its_dead_letter_topic_is_defined() -> None:
    topics = _topics()
    partner_channels = {
        partner_topic(t, topic) for t in kafka_acls.partner_tenants() for topic in PARTNER_TOPICS
    }
    assert set(topics) == set(ALL_TOPICS) | partner_channels
    for topic in TOPIC_MODELS:
        main, dlq = topics[topic], topics[dead_letter_topic(topic)]
        assert main["replicas"] >= 3 and int(main["config"]["min.insync.replicas"]) >= 2
        # Dead letters wait for a person: kept at least as long as the events.
        assert int(dlq["config"]["retention.ms"]) >= int(main["config"]["retention.ms"])


def test_autoscaling_follows_the_lag_of_each_consumer_group() -> None:
    assert autoscaling.OUTPUT.read_text() == autoscaling.render(), (
        "run `python -m deploy.autoscaling` (autoscaling.yaml is out of date)"
    )
    topics = _topics()
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s["spec"] for s in _of_kind("ScaledObject")}
    assert set(scaled) == {d["metadata"]["name"] for d in _of_kind("Deployment")}
    for service in kafka_acls.SERVICES:
        spec = scaled[autoscaling.deployment_name(service)]
        # One trigger per consumer group the service really has.
        assert sorted(t["metadata"]["topic"] for t in spec["triggers"]) == (
            kafka_acls.consumed_topics(service)
        )
        for trig in spec["triggers"]:
            meta = trig["metadata"]
            assert trig["type"] == "kafka" and meta["topic"] in TOPIC_MODELS
            # shared/consumer.py names the group router.<service>.<topic>.
            assert meta["consumerGroup"] == f"router.{service}.{meta['topic']}"
            assert int(meta["lagThreshold"]) > 0
            # A replica beyond the partition count would idle in the group.
            assert spec["maxReplicaCount"] <= topics[meta["topic"]]["partitions"]
            # The lag is read over the TLS listener, authenticated.
            assert meta["bootstrapServers"] == _config()["KAFKA_BOOTSTRAP"]
            assert trig["authenticationRef"]["name"] == autoscaling.TRIGGER_AUTH


def test_keda_reads_the_lag_as_its_own_user_that_may_only_describe() -> None:
    (auth,) = _of_kind("TriggerAuthentication")
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert set(refs) == {"sasl", "username", "password", "tls", "ca"}
    settings = next(s for s in _of_kind("Secret") if s["metadata"]["name"] == refs["sasl"][0])[
        "stringData"
    ]
    assert settings[refs["sasl"][1]] == "scram_sha512" and settings[refs["tls"][1]] == "enable"
    keda = settings[refs["username"][1]]
    assert refs["password"] == (keda, "password")  # the Strimzi user operator's Secret
    user = next(u for u in _of_kind("KafkaUser") if u["metadata"]["name"] == keda)
    acls = user["spec"]["authorization"]["acls"]
    assert {op for a in acls for op in a["operations"]} == {"Describe"}
    assert all(a["resource"]["patternType"] == "literal" for a in acls)


def test_database_is_a_replica_set_with_majority_journaled_writes() -> None:
    config = next(c for c in _of_kind("ConfigMap") if c["metadata"]["name"] == "router-config")
    data = config["data"]
    options = dict(kv.split("=", 1) for kv in data["MONGO_OPTIONS"].split("&"))
    assert options["w"] == "majority" and options["journal"] == "true"
    assert options["replicaSet"] and len(data["MONGO_HOSTS"].split(",")) >= 3
    assert data["DEV_MODE"] == "false"
    for d in _of_kind("Deployment"):
        c = _container(d)
        assert {"configMapRef": {"name": "router-config"}} in c["envFrom"]
        assert _env(c)["MONGO_URI"].endswith("@$(MONGO_HOSTS)/?$(MONGO_OPTIONS)")


def _alerts() -> dict[str, dict[str, Any]]:
    (rule,) = _of_kind("PrometheusRule")
    return {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}


def test_alerts_cover_sla_breach_and_consumer_lag() -> None:
    alerts = _alerts()
    assert any("sla.breached" in a["expr"] for a in alerts.values())
    assert any("kafka_consumergroup_lag" in a["expr"] for a in alerts.values())
    assert any(".dlq" in a["expr"] for a in alerts.values())


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) absent")
def test_alert_rules_parse_with_promtool(tmp_path: Path) -> None:
    (rule,) = _of_kind("PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
