"""Soak: does the local stack keep routing cases, at flat latency, for as long as it runs?

    python -m bench.soak --minutes 30 --filler 2 --window 20  # make bench-soak
    python -m bench.soak --minutes 60 --filler 2 --window 20 --rate 0.6  # below saturation
    python -m bench.soak --minutes 3 --filler 0  # a quick look

Starts its own stack (fresh state directory, free ports, the bench roster; like
`bench.run`) and for `--minutes` drives real cases end to end through the public
APIs with the pieces of `bench.load`/`bench.memory` (submission over HTTP,
reviewers played, the partner webhook received and verified), at most `--window`
in flight, so the pipeline runs at its own sustained rate. Then it waits for the
cases in flight, stops the stack and writes `soak.json` and `soak.md` into the
state directory.

`--filler K` makes every topic a case passes through carry K+1 times its real
traffic: a consumer of its own group republishes every real event K more times,
bytes and headers (event id included) unchanged: the redeliveries an at-least-once
broker may send, which every consumer must skip. So the broker's partitions, the
reaper and each consumer see the event counts of (K+1) times the cases, while
only the real cases cost a reviewer, a PACS fetch and a webhook.

Sampled every `--every` seconds:

* each process's RSS and cumulative CPU seconds, with the cases delivered so far
  (`bench.memory.MemorySampler`);
* every consumer's position from the services themselves (`GET /v1/ops/consumers`:
  next offset, the partition end its fetches saw, stalled or not) and every
  consumer group's committed offset and the partition's stored batches from the
  broker's bucket (the reaper's reader, deploy/local/reaper.py);
* the disk each stored part takes (the infra state's `s3` and `mongo` folders,
  allocated blocks), what a stack left up for weeks must not grow without bound.

The summary: per hop (submitted→accepted→records complete→assigned; report
submitted→webhook) p50/p99 over the cases submitted in the first and in the last
tenth of the run; CPU per case and RSS per 1,000 cases (least-squares slopes);
every group's progress (events read, largest backlog seen, longest time without
advancing while behind) and the stalls (a consumer behind that did not advance
for `--stall-seconds`, or a service reporting itself stalled). None is the goal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.load import Driver, Run
from bench.memory import MemorySampler, drive, slope_kib_per_1000
from bench.run import HOPS, case_times, machine, on_own_stack, percentile, stack_pids
from deploy.local import reaper, stack
from deploy.local.demo import auth

FILLER_HEADER = "soak-filler"
FILLER_GROUP = "bench-soak-filler"
CASE_TOPICS = [
    "case.submitted",
    "case.accepted",
    "case.status",
    "records.requested",
    "records.progress",
    "records.complete",
    "case.assigned",
    "report.submitted",
    "report.ready",
    "notification.delivered",
]


class Filler:
    """Republishes every real event of CASE_TOPICS `copies` more times, unchanged."""

    def __init__(self, bootstrap: str, copies: int) -> None:
        self.bootstrap = bootstrap
        self.copies = copies
        self.sent: dict[str, int] = dict.fromkeys(CASE_TOPICS, 0)
        self.real: dict[str, int] = dict.fromkeys(CASE_TOPICS, 0)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.copies > 0:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        consumer = AIOKafkaConsumer(
            *CASE_TOPICS,
            bootstrap_servers=self.bootstrap,
            group_id=FILLER_GROUP,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=500,
        )
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=20)
        await consumer.start()
        await producer.start()
        try:
            async for msg in consumer:
                headers = list(msg.headers or ())
                if any(k == FILLER_HEADER for k, _ in headers):
                    continue
                self.real[msg.topic] += 1
                tagged = [*headers, (FILLER_HEADER, b"1")]
                for _ in range(self.copies):
                    await producer.send(msg.topic, msg.value, key=msg.key, headers=tagged)
                    self.sent[msg.topic] += 1
        finally:
            await producer.stop()
            await consumer.stop()


class ProgressSampler:
    """Every consumer's position (the services' view) and every group's committed
    offset and the stored batches (the broker's bucket), every `every` seconds."""

    def __init__(
        self,
        urls: dict[str, str],
        s3: reaper.S3,
        delivered: Callable[[], int],
        every: float,
        keep: Path,
        disk: dict[str, Path] | None = None,
    ) -> None:
        self.disk = disk or {}
        self.urls = urls
        self.s3 = s3
        self.delivered = delivered
        self.every = every
        self.keep = keep
        self.samples: list[dict[str, Any]] = []
        self.t0 = time.monotonic()

    def _bucket(self) -> dict[str, Any]:
        committed = reaper.committed_offsets(self.s3, reaper.CLUSTER)
        # The partner topics too: no group of the stack commits on them.
        for part in reaper.partner_partitions(self.s3, reaper.CLUSTER):
            committed.setdefault(part, {})
        out: dict[str, Any] = {}
        for (topic, partition), groups in committed.items():
            bases = reaper.batch_bases(self.s3, reaper.CLUSTER, topic, partition)
            out[f"{topic}/{partition}"] = {
                "committed": groups,
                "batches": len(bases),
                "newest_base": max(bases, default=-1),
            }
        return out

    async def sample(self, client: httpx.AsyncClient) -> None:
        services: dict[str, Any] = {}
        for name, url in self.urls.items():
            try:
                resp = await client.get(f"{url}/v1/ops/consumers", headers=auth("ops"))
                services[name] = resp.json()["partitions"] if resp.status_code == 200 else None
            except (httpx.HTTPError, ValueError, KeyError):
                services[name] = None
        try:
            bucket = await asyncio.to_thread(self._bucket)
        except OSError as exc:
            bucket = {"error": str(exc)}
        self.samples.append(
            {
                "t": time.monotonic() - self.t0,
                "delivered": self.delivered(),
                "services": services,
                "bucket": bucket,
                "disk_mib": {k: await asyncio.to_thread(disk_mib, d) for k, d in self.disk.items()},
            }
        )
        self.keep.write_text(json.dumps(self.samples))

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            while not stop.is_set():
                await self.sample(client)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.every)
            await self.sample(client)


def disk_mib(folder: Path) -> float:
    """The disk the files under `folder` take (allocated blocks, as `du` counts)."""
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):  # a file deleted while walking
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_blocks * 512
    return total / 2**20


def disk_growth(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per folder: MiB at the start and the end, and MiB per 1,000 cases over the
    second half (least squares); samples of runs before disk sampling have none."""
    with_disk = [s for s in samples if s.get("disk_mib")]
    if not with_disk:
        return {}
    n = with_disk[-1]["delivered"]
    out = {}
    for name in with_disk[0]["disk_mib"]:
        half = [(s["delivered"], s["disk_mib"][name]) for s in with_disk if s["delivered"] >= n / 2]
        out[name] = {
            "start": with_disk[0]["disk_mib"][name],
            "end": with_disk[-1]["disk_mib"][name],
            "max": max(s["disk_mib"][name] for s in with_disk),
            "mib_per_1000_cases": linear_slope(half) * 1000 if len(half) > 1 else float("nan"),
        }
    return out


def linear_slope(points: list[tuple[float, float]]) -> float:
    n = len(points)
    if n < 2:
        return float("nan")
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return float("nan")
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def tenths(run: Run) -> dict[str, dict[str, dict[str, float]]]:
    """Per hop, p50/p99 (ms) and count over the first and last tenth of the cases."""
    order = sorted(run.submitted, key=lambda c: run.submitted[c])
    k = max(1, len(order) // 10)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for label, ids in (("first", order[:k]), ("last", order[-k:])):
        for name, a, b in HOPS:
            values = []
            for case_id in ids:
                t = case_times(run, case_id)
                if a in t and b in t:
                    values.append((t[b] - t[a]) * 1000)
            out.setdefault(name, {})[label] = {
                "n": len(values),
                "p50": percentile(values, 50),
                "p99": percentile(values, 99),
            }
    return out


def consumer_progress(samples: list[dict[str, Any]], stall_seconds: float) -> dict[str, Any]:
    """Per consumer (service and group, all its partitions): events read over the
    run, the largest backlog, the longest stretch it was behind without advancing
    on any partition (a stall when `stall_seconds` or more), and the longest one
    partition stood still while behind (one consumer serves its partitions in
    turns, a fetch's worth each, so under load one waits while another is read)."""
    groups: dict[str, list[tuple[float, list[dict[str, Any]]]]] = {}
    for s in samples:
        for service, rows in s["services"].items():
            by_group: dict[str, list[dict[str, Any]]] = {}
            for r in rows or []:
                by_group.setdefault(f"{service} {r['group']}", []).append(r)
            for key, parts in by_group.items():
                groups.setdefault(key, []).append((s["t"], parts))
    out: dict[str, Any] = {}
    stalls = []
    for key, points in sorted(groups.items()):
        read = sum(r["offset"] for r in points[-1][1]) - sum(r["offset"] for r in points[0][1])
        longest = _longest_still(
            [(t, sum(r["offset"] for r in ps), sum(r["behind"] for r in ps)) for t, ps in points]
        )
        by_part: dict[int, list[tuple[float, int, int]]] = {}
        for t, ps in points:
            for r in ps:
                by_part.setdefault(r["partition"], []).append((t, r["offset"], r["behind"]))
        flagged = sorted({r["partition"] for _, ps in points for r in ps if r["stalled"]})
        out[key] = {
            "read": read,
            "max_behind": max(sum(r["behind"] for r in ps) for _, ps in points),
            "final_behind": sum(r["behind"] for r in points[-1][1]),
            "longest_still_while_behind_s": round(longest, 1),
            "longest_partition_still_s": round(
                max((_longest_still(v) for v in by_part.values()), default=0.0), 1
            ),
            "reported_stalled_partitions": flagged,
        }
        if longest >= stall_seconds:
            stalls.append(key)
    return {"consumers": out, "stalls": stalls}


def _longest_still(points: list[tuple[float, int, int]]) -> float:
    """Longest time (s) between samples of (t, offset, behind) with the offset
    unchanged and something to read."""
    longest, since = 0.0, None
    for (t_prev, prev, _), (t, offset, behind) in itertools.pairwise(points):
        if behind > 0 and offset == prev:
            since = t_prev if since is None else since
            longest = max(longest, t - since)
        else:
            since = None
    return longest


def bucket_progress(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """From the broker's bucket: per partition the most batches stored at once; per
    group the largest and final distance of its committed offset behind the newest
    stored batch (summed over the partitions: Tansu's own end is a few hundred
    short, the newest batch's base offset is exact to within one batch)."""
    parts: dict[str, int] = {}
    behind: dict[str, list[int]] = {}
    for s in samples:
        if "error" in s["bucket"]:
            continue
        now: dict[str, int] = {}
        for part, b in s["bucket"].items():
            parts[part] = max(parts.get(part, 0), b["batches"])
            for group, committed in b["committed"].items():
                if group == FILLER_GROUP:
                    continue  # the harness's own consumer
                now[group] = now.get(group, 0) + max(0, b["newest_base"] - committed)
        for group, n in now.items():
            behind.setdefault(group, []).append(n)
    return {
        "max_batches": parts,
        "groups": {g: {"max_behind": max(v), "final_behind": v[-1]} for g, v in behind.items()},
    }


def resources(mem: list[dict[str, Any]]) -> dict[str, Any]:
    """Per process: CPU ms per case over the whole run (least squares of cumulative
    CPU against cases delivered) and in the first/last tenth; RSS slope per 1,000
    cases over the second half, and first/last RSS."""
    n = mem[-1]["delivered"]
    out: dict[str, Any] = {}
    for name in mem[0]["rss_mib"]:
        pts = [
            (s["delivered"], s["cpu_s"][name]) for s in mem if s["cpu_s"][name] == s["cpu_s"][name]
        ]
        first = [s for s in mem if s["delivered"] <= n / 10]
        last = [s for s in mem if s["delivered"] >= n * 9 / 10]

        def per_case(ss: list[dict[str, Any]], proc: str = name) -> float:
            if len(ss) < 2 or ss[-1]["delivered"] == ss[0]["delivered"]:
                return float("nan")
            spent = ss[-1]["cpu_s"][proc] - ss[0]["cpu_s"][proc]
            return spent / (ss[-1]["delivered"] - ss[0]["delivered"]) * 1000

        half = [(s["delivered"], s["rss_mib"][name]) for s in mem if s["delivered"] >= n / 2]
        out[name] = {
            "cpu_ms_per_case": linear_slope(pts) * 1000,
            "cpu_ms_per_case_first_tenth": per_case(first),
            "cpu_ms_per_case_last_tenth": per_case(last),
            "rss_mib_start": mem[0]["rss_mib"][name],
            "rss_mib_end": mem[-1]["rss_mib"][name],
            "rss_kib_per_1000_cases": slope_kib_per_1000(half),
        }
    return out


def report(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores, {m['mem_gb']} GiB, Python {m['python']}",
        f"command: {r['command']}",
        f"{r['submitted']} cases submitted, {r['delivered']} delivered, {r['errors']} submit "
        f"errors, {r['elapsed_s'] / 3600:.2f} h ({r['delivered'] / r['elapsed_s']:.2f} cases/s)",
        "events per topic (real + filler): "
        + ", ".join(f"{t} {n}" for t, n in r["events_per_topic"].items()),
        f"webhook deliveries received: {r['webhook_records']} for {r['delivered']} cases",
        "",
        "| hop | first tenth p50 / p99 (ms) | last tenth p50 / p99 (ms) |",
        "|---|---|---|",
    ]
    for hop, t in r["tenths"].items():
        f, last = t["first"], t["last"]
        lines.append(
            f"| {hop} | {f['p50']:.0f} / {f['p99']:.0f} (n={f['n']}) "
            f"| {last['p50']:.0f} / {last['p99']:.0f} (n={last['n']}) |"
        )
    lines += [
        "",
        "| process | CPU ms/case (fit) | first tenth | last tenth | RSS MiB start → end "
        "| RSS KiB/1000 cases (2nd half) |",
        "|---|---|---|---|---|---|",
    ]
    for name, x in r["resources"].items():
        lines.append(
            f"| {name} | {x['cpu_ms_per_case']:.1f} | {x['cpu_ms_per_case_first_tenth']:.1f} "
            f"| {x['cpu_ms_per_case_last_tenth']:.1f} | {x['rss_mib_start']:.0f} → "
            f"{x['rss_mib_end']:.0f} | {x['rss_kib_per_1000_cases']:.0f} |"
        )
    progress = r["progress"]
    lines += [
        "",
        "| consumer (service, group) | events read | max behind | behind at end "
        "| longest still while behind (s): consumer / one partition |",
        "|---|---|---|---|---|",
    ]
    for key, c in progress["consumers"].items():
        if c["read"] == 0 and c["max_behind"] == 0:
            continue
        lines.append(
            f"| {key} | {c['read']} | {c['max_behind']} | {c['final_behind']} "
            f"| {c['longest_still_while_behind_s']} / {c['longest_partition_still_s']} |"
        )
    bucket = r["bucket"]
    deepest = max(bucket["max_batches"].values(), default=0)
    partner = {
        k: n for k, n in bucket["max_batches"].items() if k.startswith(reaper.PARTNER_PREFIX)
    }
    committed = bucket["groups"]
    worst = max(committed, key=lambda g: committed[g]["max_behind"], default="")
    flagged = [k for k, c in progress["consumers"].items() if c["reported_stalled_partitions"]]
    lines += [
        "",
        f"broker's bucket: {len(bucket['max_batches'])} partitions, at most {deepest} batches "
        "stored in one at once (the reaper keeps the newest 100 and deletes what every "
        "required group committed past)"
        + (
            f"; partner topics' partitions at most {max(partner.values())} (cut to the newest "
            f"{reaper.ReaperConfig.partner_keep} once a minute)"
            if partner
            else ""
        ),
        f"committed offsets (bucket) of {len(committed)} groups: largest distance behind the "
        f"newest batch {committed[worst]['max_behind'] if worst else 0} ({worst}); at the end "
        f"{sum(c['final_behind'] for c in committed.values())} in all",
        f"stalls (a consumer behind that did not advance for {r['stall_seconds']:.0f} s): "
        + (", ".join(progress["stalls"]) if progress["stalls"] else "none"),
        "services reporting a partition stalled (router_consumer_stalled, "
        "CONSUMER_STALL_SECONDS): " + (", ".join(flagged) if flagged else "none"),
    ]
    for name, d in r.get("disk", {}).items():
        lines.append(
            f"disk of {name}: {d['start']:.0f} MiB at the start, {d['max']:.0f} at most, "
            f"{d['end']:.0f} at the end; {d['mib_per_1000_cases']:.1f} MiB per 1,000 cases "
            "over the second half"
        )
    return "\n".join(lines)


async def soak(
    args: argparse.Namespace, paths: stack.Paths, info: dict[str, Any]
) -> dict[str, Any]:
    urls, infra = info["urls"], info["infra"]
    driver = await Driver.subscribed(urls, infra, paths.root, "MRN-SOAK-1", "1961-07-09")
    receiver = driver.receiver
    s3 = reaper.S3(
        reaper.ReaperConfig(
            s3_url=infra["s3_url"],
            bucket=infra["s3_bucket"],
            region=infra["s3_region"],
            access_key=infra["s3_access_key_id"],
            secret_key=infra["s3_secret_access_key"],
        )
    )
    filler = Filler(infra["kafka_bootstrap"], args.filler)
    run = Run("soak")
    stop = asyncio.Event()
    try:
        mem = MemorySampler(
            stack_pids(paths),
            lambda: len(receiver.arrived),
            args.every,
            paths.root / "soak-resources.json",
        )
        progress = ProgressSampler(
            urls,
            s3,
            lambda: len(receiver.arrived),
            args.every,
            paths.root / "soak-progress.json",
            {part: paths.infra / part for part in ("s3", "mongo")},
        )
        mem.start()
        sampling = asyncio.create_task(progress.run(stop))
        await filler.start()
        t0 = time.monotonic()
        await drive(
            driver, run, 10**9, args.window, until=t0 + args.minutes * 60, rate=args.rate or None
        )
        elapsed = time.monotonic() - t0
        await asyncio.sleep(args.every)  # a last look at the consumers after the drain
        stop.set()
        await sampling
        mem.stop()
        await filler.stop()
        await driver.read_history(run)
    finally:
        stop.set()
        await filler.stop()
        await driver.close()
    webhook_log = paths.root / "webhooks.jsonl"
    return {
        "machine": machine(),
        "command": " ".join(["python -m bench.soak", *sys.argv[1:]]),
        "minutes": args.minutes,
        "filler": args.filler,
        "submitted": len(run.submitted),
        "delivered": len(run.delivered),
        "errors": run.errors,
        "elapsed_s": elapsed,
        "webhook_records": (sum(1 for _ in webhook_log.open()) if webhook_log.exists() else 0),
        "events_per_topic": {t: filler.real[t] + filler.sent[t] for t in CASE_TOPICS}
        if args.filler
        else {},
        "tenths": tenths(run),
        "resources": resources(mem.samples),
        "progress": consumer_progress(progress.samples, args.stall_seconds),
        "bucket": bucket_progress(progress.samples),
        "disk": disk_growth(progress.samples),
        "stall_seconds": args.stall_seconds,
        "samples": {"resources": mem.samples, "progress": progress.samples},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="how long cases are sent")
    parser.add_argument("--window", type=int, default=20, help="cases in flight at most")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="cases per second offered (0: as fast as it goes)"
    )
    parser.add_argument("--filler", type=int, default=2, help="extra copies of each event")
    parser.add_argument("--every", type=float, default=15.0, help="seconds between samples")
    parser.add_argument(
        "--stall-seconds", type=float, default=60.0, help="behind and still this long: a stall"
    )
    parser.add_argument("--state-dir", default="", help="default: a fresh temporary directory")
    parser.add_argument(
        "--report", type=Path, help="only summarize again the soak.json of an earlier run"
    )
    args = parser.parse_args()
    if args.report:
        result = json.loads(args.report.read_text())
        samples = result["samples"]
        result["progress"] = consumer_progress(samples["progress"], result["stall_seconds"])
        result["bucket"] = bucket_progress(samples["progress"])
        result["disk"] = disk_growth(samples["progress"])
        result["resources"] = resources(samples["resources"])
        print(report(result))
        return
    paths, result = on_own_stack(args.state_dir, "router-soak-", lambda p, i: soak(args, p, i))
    (paths.root / "soak.json").write_text(json.dumps(result, indent=1, default=str))
    text = report(result)
    (paths.root / "soak.md").write_text(text + "\n")
    print("\n" + text)
    print(f"\nresults in {paths.root / 'soak.json'} and {paths.root / 'soak.md'}")


if __name__ == "__main__":
    main()
