"""The demo plays every reviewer of its roster: each has a development key, so a
case the demo assigns to any of them (a cardiologist, a haematopathologist) is
reviewed, not left offered for ever (a soak found 12 of the 19 demo reviewers
without a key: their assignments never moved)."""

from __future__ import annotations

import json
from pathlib import Path

from deploy.local import demo
from shared.auth import Credentials

LOCAL = Path(demo.__file__).resolve().parent


def test_every_demo_roster_reviewer_signs_in_with_the_key_the_demo_uses() -> None:
    roster = [r["reviewer_id"] for r in json.loads((LOCAL / "roster.json").read_text())]
    assert sorted(demo.REVIEWERS) == sorted(roster)
    credentials = Credentials.load(LOCAL / "dev-credentials.json")
    for rid in roster:
        principal = credentials.authenticate(demo.dev_key(rid))
        assert (principal.role, principal.subject) == ("reviewer", rid)
