"""Verify a signed second opinion, as a partner would:

    python -m services.reporting.verify https://router.example/v1/reports/rpt-… --api-key KEY
    python -m services.reporting.verify report.json --keys keys.json      # offline

The source is the JSON of GET /v1/reports/{id} (a URL or a saved file). The
keys are the published JWK set (GET /.well-known/jwks.json; by default fetched
from the report's own server, or a saved file). The report and every addendum
are checked: the JWS (EdDSA) against the key its header names, that its
payload is the RFC 8785 canonical form of the document shown, the content
hash, that the key belongs to the reviewer the report names, and that each
addendum quotes the hash of the report as signed. Exit status 0 when all verify.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from services.reporting.signing import Signature, verification_problems


def _load(source: str, api_key: str = "") -> Any:
    if source.startswith(("http://", "https://")):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        resp = httpx.get(source, headers=headers, timeout=30)
        resp.raise_for_status()
        return resp.json()
    return json.loads(Path(source).read_text())


def _keys_url(source: str) -> str:
    parts = urlsplit(source)
    return f"{parts.scheme}://{parts.netloc}/.well-known/jwks.json"


def check(bundle: dict[str, Any], jwks: list[dict[str, Any]]) -> list[str]:
    """Every problem with the report and its addenda ([] = all verify)."""
    report = bundle["report"]
    signature = Signature.model_validate(bundle["signature"])
    problems = [f"report: {p}" for p in verification_problems(report, signature, jwks)]
    for item in bundle.get("addenda", []):
        add, add_sig = item["addendum"], Signature.model_validate(item["signature"])
        name = add.get("addendum_id", "addendum")
        problems += [f"{name}: {p}" for p in verification_problems(add, add_sig, jwks)]
        if add.get("report_sha256") != signature.content_sha256:
            problems.append(f"{name}: does not refer to this report as signed")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", help="report URL or JSON file (GET /v1/reports/{id})")
    parser.add_argument(
        "--keys", default="", help="JWK set URL or file (default: /.well-known/jwks.json)"
    )
    parser.add_argument("--api-key", default="", help="partner API key for a report URL")
    args = parser.parse_args(argv)
    if not args.keys and not args.source.startswith(("http://", "https://")):
        parser.error("--keys is required when the report is a file")
    bundle = _load(args.source, args.api_key)
    keys_source = args.keys or _keys_url(args.source)
    jwks = _load(keys_source)["keys"]
    problems = check(bundle, jwks)
    report = bundle["report"]
    if problems:
        print(f"INVALID {report.get('report_id', '?')}:", *problems, sep="\n  ")
        return 1
    print(
        f"VALID {report['report_id']}: signed by {report['reviewer_id']} at "
        f"{report['signed_at']} (key {bundle['signature']['kid']}), "
        f"{len(bundle.get('addenda', []))} addenda verified"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
