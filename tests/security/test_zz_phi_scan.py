"""No PHI in logs, span attributes or metric labels of a full run.

Named to run last in the security tier: by then the canary case (name
"Zelda Phi-Canary", born 1933-03-03, a fresh MRN) has gone from submission to a
delivered webhook, and the other security tests have thrown hostile input at
every API. Every service log (services/logs/*.log; the infrastructure's own
logs — PACS, FHIR peer — are the providers' business and skipped), every span
file (traces/*.jsonl) and every service's /metrics page is searched for the
canary's PHI and for the PHI of the demo and fault-tier test data.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from deploy.local.stack import SERVICES
from tests.conftest import RunningStack
from tests.security.conftest import (
    CANARY_BIRTH,
    CANARY_DICOM_NAME,
    CANARY_FAMILY,
    CANARY_MRN,
    CANARY_NAME,
    Canary,
)

pytestmark = pytest.mark.security

# The test data's PHI (deploy/local/demo.py, seed.py, tests/fault): names as the
# integrator, the PACS (DICOM PN) and the FHIR peer spell them, birth dates in
# ISO and DICOM form, and the MRN prefix every test patient's identifier has.
KNOWN_PHI = [
    "Demo-Patient",
    "Demo^Jane",
    "1961-04-12",
    "19610412",
    "Fault^Pat",
    "MRN-",
]


def phi_terms(canary: Canary) -> list[str]:
    birth_dicom = CANARY_BIRTH.replace("-", "")
    return [
        CANARY_NAME,
        CANARY_FAMILY,
        CANARY_DICOM_NAME,
        CANARY_BIRTH,
        birth_dicom,
        CANARY_MRN,
        canary.clinic_patient_id,
        *KNOWN_PHI,
    ]


def scanned_files(root: Path) -> list[Path]:
    logs = sorted((root / "services" / "logs").glob("*.log"))
    spans = sorted((root / "traces").glob("*.jsonl"))
    others = [p for p in root.rglob("*.log") if "infra" not in p.relative_to(root).parts]
    return sorted({*logs, *spans, *others})


def term_pattern(term: str) -> re.Pattern[str]:
    """`term` as a whole token: "19610412" is a birth date on its own, not inside
    the nanosecond timestamp 1795327375219610412 of a span."""
    left = r"(?<![0-9A-Za-z])" if term[:1].isalnum() else ""
    right = r"(?![0-9A-Za-z])" if term[-1:].isalnum() else ""
    return re.compile(left + re.escape(term) + right)


def findings(name: str, text: str, terms: list[str]) -> list[str]:
    out = []
    for term in terms:
        match = term_pattern(term).search(text)
        if match:
            at = match.start()
            line = text[max(0, at - 120) : at + 80].replace("\n", " | ")
            out.append(f"{name}: {term!r} in …{line}…")
    return out


def wait_for_canary_spans(root: Path, case_id: str, within: float = 20.0) -> None:
    """Spans are exported in batches: wait until the canary's are on disk."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if any(case_id in p.read_text(errors="replace") for p in (root / "traces").glob("*.jsonl")):
            return
        time.sleep(0.5)
    raise AssertionError(f"no span of case {case_id} written within {within}s")


def test_no_phi_in_logs_spans_or_metrics(running_stack: RunningStack, canary: Canary) -> None:
    root = running_stack.paths.root
    wait_for_canary_spans(root, canary.case_id)
    terms = phi_terms(canary)
    files = scanned_files(root)
    assert any(p.suffix == ".jsonl" for p in files) and len(files) >= len(SERVICES)
    found: list[str] = []
    scanned_bytes = 0
    for path in files:
        text = path.read_text(errors="replace")
        scanned_bytes += len(text)
        found += findings(str(path.relative_to(root)), text, terms)
    for service in SERVICES:
        metrics = httpx.get(f"{running_stack.urls[service]}/metrics", timeout=10).text
        scanned_bytes += len(metrics)
        found += findings(f"{service} /metrics", metrics, terms)
    print(f"PHI scan: {len(files)} files + {len(SERVICES)} /metrics, {scanned_bytes} bytes")
    assert not found, "\n".join(found[:30])
