"""The clinical scenarios of scenarios.yaml: each one as a native submission (and,
for a scenario with `images`, the studies records_fetch would report for it), and
what its routing, as intake's case status shows it, must and must not contain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from services.intake.clinical.rules import load_rules
from shared.events import StudySummary

SCENARIOS = Path(__file__).with_name("scenarios.yaml")
CODED = ("diagnoses", "procedures", "body_sites")


def load() -> list[dict[str, Any]]:
    data = yaml.safe_load(SCENARIOS.read_text(encoding="utf-8"))
    return list(data["scenarios"])


def submission(sc: dict[str, Any], external_id: str) -> dict[str, Any]:
    """A native case in the scenario's words, every provider's release on file."""
    case: dict[str, Any] = {
        "external_id": external_id,
        "patient": {"name": "Pat Example", "birth_date": "1961-05-04", "jurisdiction": "US-CA"},
        "question": sc["question"],
        "first_opinion": {
            "diagnosis": sc.get("diagnosis", "See the enclosed records"),
            "report_text": sc.get("report", ""),
            "treatment_plan": sc.get("plan", ""),
            "institution": "First Opinion Clinic",
        },
        "service_tier": sc.get("tier", "specialist_opinion"),
        "symptoms_status": sc.get("symptoms_status", "unknown"),
        "records": [
            {
                "provider_id": "valley-imaging",
                "patient_id": "MRN-1",
                "kinds": ["imaging", "notes"],
                "authorized": True,
            }
        ],
        "earlier_opinions": sc.get("earlier_opinions", []),
    }
    for key in CODED:
        if key in sc:
            case[key] = sc[key]
    return case


def held_by(hold_reason: str) -> set[str]:
    """The hold signal a case status's hold reason states (signals.yaml `explain`)."""
    holds = [sig for sig in load_rules().signals.signals if sig.value == "hold"]
    return {sig.name for sig in holds if hold_reason.startswith(sig.explain)}


def studies(sc: dict[str, Any]) -> list[StudySummary]:
    """The studies of a scenario's `images`, as records.complete summarises them."""
    return [
        StudySummary(
            study_uid=f"1.2.826.0.1.3680043.8.498.{i + 1}",
            modality=img.get("modality", ""),
            body_part=img.get("body_part", ""),
            description=img.get("description", ""),
            study_date="20261101",
            instances=int(img.get("instances", 100)),
        )
        for i, img in enumerate(sc.get("images", []))
    ]


def expected_stage(sc: dict[str, Any]) -> str:
    """Where the case stands when it is checked: its records complete once the
    images are known, else just accepted."""
    return str(
        sc.get("expect", {}).get("stage", "records_complete" if "images" in sc else "accepted")
    )


def problems(sc: dict[str, Any], status: dict[str, Any]) -> list[str]:
    """What the case status gets wrong for the scenario (empty: it is right)."""
    want = sc.get("expect", {})
    needs = [s["name"] for s in status["subspecialties"]]
    # A hold signal (not a second opinion) shows as the case's hold reason.
    signals = {t["name"] for t in status["triage"]} | held_by(status.get("hold_reason", ""))
    beyond = {b["name"] for b in status["beyond_tier"]}
    out = []
    out += [f"reviewer {n} not brought in" for n in want.get("needs", []) if n not in needs]
    out += [f"reviewer {n} brought in" for n in want.get("not_needs", []) if n in needs]
    out += [f"signal {n} missing" for n in want.get("signals", []) if n not in signals]
    out += [f"signal {n} fired" for n in want.get("not_signals", []) if n in signals]
    out += [
        f"{n} not recorded beyond the tier" for n in want.get("beyond_tier", []) if n not in beyond
    ]
    out += [f"{n} recorded beyond the tier" for n in want.get("not_beyond_tier", []) if n in beyond]
    if "primary" in want and (not needs or needs[0] != want["primary"]):
        out.append(f"primary is {needs[:1]}, not {want['primary']}")
    if "value" in want and status["second_opinion_value"] != want["value"]:
        out.append(f"value is {status['second_opinion_value']}, not {want['value']}")
    if status["stage"] != expected_stage(sc):
        out.append(f"stage is {status['stage']}, not {expected_stage(sc)}")
    out += rerouting_problems(want, status.get("reroutes", []))
    for concept, context in want.get("context", {}).items():
        seen = {f["context"] for f in status["findings"] if f["concept"] == concept}
        if context not in seen:
            out.append(f"{concept} read as {sorted(seen) or 'absent'}, not {context}")
    # Every reviewer and every signal is explained.
    out += [
        f"reviewer {s['name']} has no reason" for s in status["subspecialties"] if not s["reason"]
    ]
    out += [f"signal {t['name']} has no reason" for t in status["triage"] if not t["reason"]]
    return out


def rerouting_problems(want: dict[str, Any], reroutes: list[dict[str, Any]]) -> list[str]:
    """The re-check with the images: whether the routing changed, who was added and
    removed, and that each change says why."""
    out: list[str] = []
    if "rerouted" in want and bool(reroutes) != want["rerouted"]:
        out.append(f"rerouted is {bool(reroutes)}, not {want['rerouted']}")
    added = {x["name"] for r in reroutes for x in r["added"]}
    removed = {x["name"] for r in reroutes for x in r["removed"]}
    out += [f"{n} not added by the images" for n in want.get("added", []) if n not in added]
    out += [f"{n} not removed by the images" for n in want.get("removed", []) if n not in removed]
    out += [
        f"re-check change {x['name']} has no reason"
        for r in reroutes
        for x in [*r["added"], *r["removed"]]
        if not x["reason"]
    ]
    return out
