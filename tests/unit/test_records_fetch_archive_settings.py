"""Which archive records_fetch uses: RECORDS_FETCH_ARCHIVE=s3|local; unset, local in
development and a refusal to start outside it (fail closed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from services.records_fetch import archive as archives
from services.records_fetch.settings import RecordsFetchSettings
from shared.settings import InsecureSettings

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION: dict[str, Any] = {
    "dev_mode": False,
    "credentials_file": Path("/etc/router/credentials/credentials.json"),
    "kafka_security_protocol": "SASL_SSL",
    "kafka_sasl_username": "router-records-fetch",
}


def test_outside_development_an_unset_archive_refuses_to_start() -> None:
    with pytest.raises(InsecureSettings, match="RECORDS_FETCH_ARCHIVE"):
        RecordsFetchSettings(**PRODUCTION).check_production()
    with pytest.raises(ValueError):
        archives.from_settings(RecordsFetchSettings(**PRODUCTION))
    RecordsFetchSettings(**PRODUCTION, archive="local").check_production()
    s3 = RecordsFetchSettings(**PRODUCTION, archive="s3", s3_endpoint="https://s3.example")
    s3.check_production()
    with pytest.raises(InsecureSettings, match="http://"):
        RecordsFetchSettings(
            **PRODUCTION, archive="s3", s3_endpoint="http://s3.example"
        ).check_production()


def test_the_setting_picks_the_implementation(tmp_path: Path) -> None:
    dev = RecordsFetchSettings(dev_mode=True, records_dir=tmp_path)
    assert isinstance(archives.from_settings(dev), archives.LocalArchive)
    s3 = archives.from_settings(
        RecordsFetchSettings(
            dev_mode=True, archive="s3", s3_endpoint="http://127.0.0.1:1", s3_bucket="b"
        )
    )
    assert isinstance(s3, archives.S3Archive)
    assert s3.location("ab" + "0" * 62) == "s3://b/ab/ab" + "0" * 62


def test_the_deployment_uses_the_shared_archive_with_a_spool() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy/k8s/base/records_fetch.yaml").read_text()))
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["RECORDS_FETCH_ARCHIVE"]["value"] == "s3"
    secret = env["RECORDS_FETCH_S3_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]
    assert secret["name"] == "router-records-s3"
    spool = env["RECORDS_FETCH_SPOOL_DIR"]["value"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["spool"] == spool and "emptyDir" in volumes["spool"]
