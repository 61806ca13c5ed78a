"""The whole system as processes (`running_stack`): a case's images reach the review
organisation's PACS and the reviewer's assignment links to them (issue 20).

records_fetch (configured by deploy/local/stack.py with the stack's review PACS)
imports the complete case's studies; assignment copies the links from
records.complete onto the assignment and its case.assigned; reporting shows them
on the reviewer's open assignments. The link opens in the review PACS; the
originating MRN is not a patient there, and neither it nor the patient's name is
in the link.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from deploy.local import seed
from deploy.local.demo import REVIEWERS, auth, play_reviewers, sample_case
from tests.conftest import RunningStack

pytestmark = pytest.mark.integration
WAIT = 90.0


def reviewer_assignment(client: httpx.Client, url: str, case_id: str) -> tuple[str, dict[str, Any]]:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        for reviewer in REVIEWERS:
            resp = client.get(f"{url}/v1/reviewer/assignments", headers=auth(reviewer))
            for a in resp.json() if resp.status_code == 200 else []:
                if a["case_id"] == case_id:
                    return reviewer, a
        time.sleep(0.5)
    raise AssertionError(f"no reviewer holds {case_id} after {WAIT}s")


def test_the_reviewers_assignment_links_to_the_images_in_the_review_pacs(
    running_stack: RunningStack,
) -> None:
    urls, infra = running_stack.urls, running_stack.infra
    mrn = f"MRN-RV{uuid.uuid4().hex[:8]}"
    imaging, clinic = seed.seed_patient(infra, mrn, "Viewer^Vera", "Viewer", "Vera", "1950-05-05")
    case = sample_case(
        f"viewer-{uuid.uuid4().hex[:8]}",
        "Second opinion on brain MRI: enhancing lesion in the posterior fossa.",
        imaging,
        clinic,
        "Imaging Group",
        "Possible low-grade glioma",
    )
    with httpx.Client(timeout=30) as client:
        resp = client.post(f"{urls['intake']}/v1/cases", json=case, headers=auth("demo-int"))
        assert resp.status_code == 201, resp.text
        case_id = resp.json()["case_id"]
        reviewer, open_assignment = reviewer_assignment(client, urls["reporting"], case_id)
        images = open_assignment["images"]
        assert images, open_assignment
        review = infra["review_pacs_url"]
        for image in images:
            url = image["viewer_url"]
            assert url.startswith(f"{review}/web-viewer/app/viewer.html?series="), url
            assert mrn not in url and "Vera" not in url
            assert client.get(url).status_code == 200
            series = url.split("series=")[1]
            found = client.get(f"{review}/series/{series}/study").json()
            assert found["MainDicomTags"]["StudyInstanceUID"] == image["study_uid"]
            assert found["PatientMainDicomTags"]["PatientID"] == "SO-" + case_id.removeprefix(
                "case-"
            )
        by_mrn = client.get(
            f"{review}/dicom-web/studies",
            params={"PatientID": mrn},
            headers={"Accept": "application/dicom+json"},
        )
        assert by_mrn.status_code == 200 and (not by_mrn.content or by_mrn.json() == [])
        # The offer the reviewer accepts or declines carries the same links.
        offers = client.get(f"{urls['assignment']}/v1/reviewer/assignments", headers=auth(reviewer))
        [offer] = [a for a in offers.json() if a["case_id"] == case_id]
        assert [i["viewer_url"] for i in offer["images"]] == [i["viewer_url"] for i in images]
        # The reviewers report, so the case frees their capacity for the tests after.
        reported = set[str]()
        deadline, stage = time.monotonic() + WAIT, ""
        while stage not in ("report_ready", "delivered") and time.monotonic() < deadline:
            play_reviewers(client, urls["reporting"], reported)
            got = client.get(f"{urls['intake']}/v1/cases/{case_id}", headers=auth("demo-int"))
            stage = got.json().get("stage", "")
            time.sleep(0.5)
        assert stage in ("report_ready", "delivered"), stage
