"""The local stack's retention: the broker's read batches and the store's change log.

Two things on the local stack grow without bound unless something deletes
them: the broker's batches (below) and the S3 store's change log
(deploy/local/filer_log.py, pruned on every pass to ``--log-keep-seconds``).

Tansu 0.6 with its ``s3://`` engine (the local broker, deploy/local/infra.py)
keeps every batch a producer sent as one object, and answers each fetch by
listing *all* the objects of the partition before it reads any. The listing
is cut off when the fetch's wait runs out, so a partition deep enough (about
2,000 batches at a 20 ms wait, docs/performance.md "The local broker's
partition depth") never lets a caught-up consumer see a new message. This
broker offers no way to bound a partition: it ignores ``retention.ms`` and
``retention.bytes`` (its storage's ``maintain`` does nothing for S3), and its
DeleteRecords is unimplemented (``todo!()`` in the storage, which panics).

So this process, started with the broker (`infra.py start` part ``reaper``),
does what DeleteRecords would: every ``--interval`` seconds it reads every
consumer group's committed offsets (the broker keeps them in the same bucket,
``clusters/C/groups/consumers/G/offsets/T/partitions/P.json``) and deletes the
batch objects (``clusters/C/topics/T/partitions/P/records/BASE.batch``) that
lie wholly below the lowest committed offset of that partition:

* a batch goes only when the *next* batch starts at or below that offset, so
  the batch holding a group's next record always stays (a batch's object name
  is its first offset only);
* the newest ``--keep`` batches of each partition always stay;
* a partition no group has committed on is never touched (partner topics
  aside, below), and neither is a
  partition some group named in ``--required-groups`` (a JSON file
  ``{topic: [group, ...]}``, re-read on every pass; `deploy/local/stack.py`
  writes it from the services' subscriptions) has not committed on yet: a
  service that has not started yet still finds every event it subscribes to.

A consumer group that commits once and never comes back holds its partitions
at that offset: what it has not read is kept (remove the group's offsets to
release them).

A partner's topic (``partner.<tenant>.<topic>``, read by the partner's portal
from outside the stack, maybe never on a local stack) is the exception: no
service of the stack reads it, so no group may ever commit on it, and nothing
else would bound it. Every ``--partner-every`` seconds each of its partitions is
cut to its newest ``--partner-keep`` batches (1,000; at 2,000 a consumer at the
end with Kafka's default 500 ms fetch wait still saw a new event within 0.8 s,
docs/performance.md), read or not, besides what every group committed past: the
local counterpart of the 7-day ``retention.ms`` those topics have on a real Kafka
(deploy/k8s). A portal that connects later finds the newest 1,000 events of each
partition. Dead-letter topics (``*.dlq``) and the services' own topics are never
cut so.

The layout of the objects is Tansu 0.6's; the integration test
tests/integration/test_partition_depth.py runs this against the real broker.

Standard library only, like infra.py: S3 requests are signed here (SigV4).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from base64 import b64encode
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

try:
    from deploy.local import filer_log
except ImportError:  # run as a script (infra.py starts it so): its folder is on sys.path
    import filer_log  # type: ignore[no-redef]

CLUSTER = "tansu_cluster"  # Tansu's default --cluster-id (infra.py does not set one)
DELETE_CHUNK = 1000  # S3 DeleteObjects takes up to 1,000 keys per request
S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class ReaperConfig:
    s3_url: str
    bucket: str
    region: str
    access_key: str
    secret_key: str
    bootstrap: str = ""  # unused: everything is read from the bucket
    cluster: str = CLUSTER
    keep: int = 100
    topics: list[str] | None = None  # only these topics (None: all)
    required_groups: dict[str, list[str]] = field(default_factory=dict)
    filer_url: str = ""  # the S3 store's filer, whose change log is pruned ("": not pruned)
    partner_keep: int = 1000  # a partner topic's partition keeps at most this many batches
    log_keep_seconds: float = filer_log.DEFAULT_KEEP_SECONDS


@dataclass
class PartitionReport:
    topic: str
    partition: int
    batches: int
    floor: int | None
    deleted: int
    held_by: str = ""  # why nothing (more) was deleted


@dataclass
class ReapReport:
    partitions: list[PartitionReport] = field(default_factory=list)

    @property
    def deleted(self) -> int:
        return sum(p.deleted for p in self.partitions)

    def summary(self) -> str:
        kept = sum(p.batches - p.deleted for p in self.partitions)
        return f"{len(self.partitions)} partitions, {self.deleted} batches deleted, {kept} kept"


class S3:
    """The few S3 calls the reaper needs, signed with AWS Signature V4."""

    def __init__(self, config: ReaperConfig) -> None:
        self.config = config
        self.base = config.s3_url.rstrip("/")
        self.host = urllib.parse.urlsplit(self.base).netloc

    def _request(
        self, method: str, key: str, query: dict[str, str] | None = None, body: bytes = b""
    ) -> bytes:
        cfg = self.config
        path = "/" + cfg.bucket + ("/" + urllib.parse.quote(key, safe="/~") if key else "")
        query = query or {}
        canonical_query = "&".join(
            f"{urllib.parse.quote(k, safe='~')}={urllib.parse.quote(v, safe='~')}"
            for k, v in sorted(query.items())
        )
        now = dt.datetime.now(dt.UTC)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        payload_hash = hashlib.sha256(body).hexdigest()
        headers = {"host": self.host, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
        if body:
            headers["content-md5"] = b64encode(
                hashlib.md5(body, usedforsecurity=False).digest()
            ).decode()
            headers["content-type"] = "application/xml"
        signed = ";".join(sorted(headers))
        canonical = "\n".join(
            [
                method,
                path,
                canonical_query,
                *(f"{k}:{headers[k]}" for k in sorted(headers)),
                "",
                signed,
                payload_hash,
            ]
        )
        scope = f"{day}/{cfg.region}/s3/aws4_request"
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        signing_key = ("AWS4" + cfg.secret_key).encode()
        for part in (day, cfg.region, "s3", "aws4_request"):
            signing_key = hmac.new(signing_key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={cfg.access_key}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}"
        )
        url = self.base + path + ("?" + canonical_query if canonical_query else "")
        request = urllib.request.Request(url, data=body or None, method=method)
        for k, v in headers.items():
            if k != "host":
                request.add_header(k, v)
        with HTTP.open(request, timeout=30) as response:
            return response.read()

    def _listing(self, prefix: str, **extra: str) -> Iterator[ET.Element]:
        """The pages of a ListObjectsV2 answer, one parsed XML document each."""
        token = ""
        while True:
            query = {"list-type": "2", "prefix": prefix, "max-keys": "1000", **extra}
            if token:
                query["continuation-token"] = token
            root = ET.fromstring(self._request("GET", "", query))
            yield root
            token = root.findtext(f"{S3_NS}NextContinuationToken") or ""
            if root.findtext(f"{S3_NS}IsTruncated") != "true" or not token:
                return

    def list_keys(self, prefix: str) -> list[str]:
        return [e.text or "" for page in self._listing(prefix) for e in page.iter(f"{S3_NS}Key")]

    def list_prefixes(self, prefix: str) -> list[str]:
        """The "folders" right under `prefix` (S3 CommonPrefixes, delimiter '/')."""
        return [
            e.findtext(f"{S3_NS}Prefix") or ""
            for page in self._listing(prefix, delimiter="/")
            for e in page.iter(f"{S3_NS}CommonPrefixes")
        ]

    def get(self, key: str) -> bytes:
        return self._request("GET", key)

    def delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), DELETE_CHUNK):
            chunk = keys[start : start + DELETE_CHUNK]
            objects = "".join(f"<Object><Key>{k}</Key></Object>" for k in chunk)
            body = f"<Delete><Quiet>true</Quiet>{objects}</Delete>".encode()
            answer = self._request("POST", "", {"delete": ""}, body)
            errors = ET.fromstring(answer).findall(f"{S3_NS}Error") if answer else []
            if errors:
                raise OSError(f"S3 refused to delete {len(errors)} of {len(chunk)} batches")


def committed_offsets(s3: S3, cluster: str) -> dict[tuple[str, int], dict[str, int]]:
    """{(topic, partition): {group: committed offset}} as the broker stores them."""
    prefix = f"clusters/{cluster}/groups/consumers/"
    out: dict[tuple[str, int], dict[str, int]] = {}
    for key in s3.list_keys(prefix):
        # G/offsets/T/partitions/P.json; a group or topic name has no '/'.
        parts = key[len(prefix) :].split("/")
        if len(parts) != 5 or parts[1] != "offsets" or parts[3] != "partitions":
            continue
        group, topic, name = parts[0], parts[2], parts[4]
        try:
            offset = int(json.loads(s3.get(key))["offset"])
            partition = int(name.removesuffix(".json"))
        except (urllib.error.HTTPError, ValueError, KeyError, TypeError):
            continue  # gone meanwhile, or not an offset: hold nothing on it
        if offset >= 0:
            out.setdefault((topic, partition), {})[group] = offset
    return out


def batch_bases(s3: S3, cluster: str, topic: str, partition: int) -> dict[int, str]:
    prefix = f"clusters/{cluster}/topics/{topic}/partitions/{partition:0>10}/records/"
    bases = {}
    for key in s3.list_keys(prefix):
        name = key.rsplit("/", 1)[-1]
        if name.endswith(".batch") and name[:20].isdigit():
            bases[int(name[:20])] = key
    return bases


def deletable(bases: list[int], floor: int, keep: int) -> list[int]:
    """The batches wholly below `floor`: each one's successor starts at or below it.

    `bases` sorted ascending; the newest `keep` are never returned."""
    candidates = bases[: max(0, len(bases) - keep)]
    return [b for b, nxt in zip(candidates, bases[1:], strict=False) if nxt <= floor]


def reap_partition(
    s3: S3, config: ReaperConfig, topic: str, partition: int, groups: dict[str, int]
) -> PartitionReport:
    missing = [g for g in config.required_groups.get(topic, []) if g not in groups]
    bases = batch_bases(s3, config.cluster, topic, partition)
    if missing:
        return PartitionReport(topic, partition, len(bases), None, 0, f"waits for {missing[0]}")
    floor = min(groups.values())
    slowest = min(groups, key=lambda g: groups[g])
    doomed = deletable(sorted(bases), floor, config.keep)
    s3.delete_keys([bases[b] for b in doomed])
    return PartitionReport(topic, partition, len(bases), floor, len(doomed), slowest)


PARTNER_PREFIX = "partner."  # shared.events.PARTNER_PREFIX (this script imports nothing)


def is_partner_topic(topic: str) -> bool:
    return topic.startswith(PARTNER_PREFIX) and not topic.endswith(".dlq")


def partner_partitions(s3: S3, cluster: str) -> list[tuple[str, int]]:
    """Every partition of every partner topic the broker has stored."""
    root = f"clusters/{cluster}/topics/"
    found = []
    for folder in s3.list_prefixes(root + PARTNER_PREFIX):
        topic = folder[len(root) :].rstrip("/")
        if not is_partner_topic(topic):
            continue
        for part in s3.list_prefixes(f"{folder}partitions/"):
            name = part.rstrip("/").rsplit("/", 1)[-1]
            if name.isdigit():
                found.append((topic, int(name)))
    return found


def beyond_cap(bases: list[int], keep: int) -> list[int]:
    """All but the newest `keep` batches (`bases` sorted ascending)."""
    return bases[: max(0, len(bases) - keep)]


def cap_partition(s3: S3, config: ReaperConfig, topic: str, partition: int) -> PartitionReport:
    bases = batch_bases(s3, config.cluster, topic, partition)
    doomed = beyond_cap(sorted(bases), config.partner_keep)
    s3.delete_keys([bases[b] for b in doomed])
    return PartitionReport(topic, partition, len(bases), None, len(doomed), "partner cap")


def reap_once_sync(config: ReaperConfig, partners: bool = False) -> ReapReport:
    """One pass over the committed partitions; with `partners`, the partner topics'
    partitions are cut to their cap afterwards."""
    s3 = S3(config)
    report = ReapReport()
    for (topic, partition), groups in sorted(committed_offsets(s3, config.cluster).items()):
        if config.topics is not None and topic not in config.topics:
            continue
        report.partitions.append(reap_partition(s3, config, topic, partition, groups))
    if partners:
        for topic, partition in partner_partitions(s3, config.cluster):
            if config.topics is None or topic in config.topics:
                report.partitions.append(cap_partition(s3, config, topic, partition))
    return report


async def reap_once(config: ReaperConfig) -> ReapReport:
    """One pass, off the event loop (the S3 calls block)."""
    import asyncio

    return await asyncio.to_thread(reap_once_sync, config, True)


def config_from_endpoints(
    path: Path,
    keep: int,
    required: Path | None,
    log_keep_seconds: float = filer_log.DEFAULT_KEEP_SECONDS,
    partner_keep: int = ReaperConfig.partner_keep,
) -> ReaperConfig:
    endpoints = json.loads(path.read_text())
    filer_port = endpoints.get("ports", {}).get("weed_filer")
    groups: dict[str, list[str]] = {}
    if required is not None and required.exists():
        groups = json.loads(required.read_text())
    return ReaperConfig(
        s3_url=endpoints["s3_url"],
        bucket=endpoints["s3_bucket"],
        region=endpoints["s3_region"],
        access_key=endpoints["s3_access_key_id"],
        secret_key=endpoints["s3_secret_access_key"],
        keep=keep,
        required_groups=groups,
        filer_url=f"http://127.0.0.1:{filer_port}" if filer_port else "",
        log_keep_seconds=log_keep_seconds,
        partner_keep=partner_keep,
    )


def prune_change_log(config: ReaperConfig, now: dt.datetime) -> filer_log.PruneReport | None:
    if not config.filer_url:
        return None
    return filer_log.prune(filer_log.Filer(config.filer_url), now, config.log_keep_seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=Path, required=True, help="infra's endpoints.json")
    parser.add_argument("--required-groups", type=Path, help="JSON {topic: [group, ...]}")
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--keep", type=int, default=100)
    parser.add_argument(
        "--log-keep-seconds",
        type=float,
        default=filer_log.DEFAULT_KEEP_SECONDS,
        help="how long the S3 store's change log is kept",
    )
    parser.add_argument(
        "--partner-keep",
        type=int,
        default=ReaperConfig.partner_keep,
        help="batches a partner topic's partition keeps at most, read or not",
    )
    parser.add_argument(
        "--partner-every",
        type=float,
        default=60.0,
        help="how often the partner topics are cut to --partner-keep (seconds)",
    )
    parser.add_argument("--once", action="store_true")
    args = parser.parse_args(argv)
    last_line = ""
    partners_cut_at = -float("inf")
    while True:
        started = time.monotonic()
        try:
            config = config_from_endpoints(
                args.endpoints,
                args.keep,
                args.required_groups,
                args.log_keep_seconds,
                args.partner_keep,
            )
            partners = args.once or started - partners_cut_at >= args.partner_every
            report = reap_once_sync(config, partners)
            if partners:
                partners_cut_at = started
            line = report.summary()
            pruned = prune_change_log(config, dt.datetime.now(dt.UTC))
            stamp = dt.datetime.now().isoformat(timespec="seconds")
            if report.deleted or line != last_line:
                print(f"{stamp} {line} in {time.monotonic() - started:.2f}s", flush=True)
                last_line = line
            if pruned is not None and (pruned.files_deleted or pruned.days_deleted):
                print(f"{stamp} {pruned.summary()}", flush=True)
        except (OSError, ValueError, ET.ParseError) as exc:
            # S3 away (restarting) or a half-written file: try again next pass.
            print(f"reaper pass failed: {type(exc).__name__}: {exc}", flush=True)
        if args.once:
            return 0
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
