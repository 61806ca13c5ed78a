"""How a consumer at the end of a deep partition keeps up on the local broker.

    python -m bench.partition_depth --depths 500,1000,2000,4000 [--bootstrap HOST:PORT]

For each depth it fills a fresh one-partition topic with that many single-message
batches (what the outbox relay sends at low load), positions a consumer (a
committed group, as the services have) at the end with the case path's fetch
wait, produces one message and times until the consumer has it (limit
--limit seconds). With --reap it runs the local stack's reaper
(deploy/local/reaper.py) once after the group committed, as the running stack
does every few seconds. Without --bootstrap it starts a private broker
(Tansu on SeaweedFS, deploy/local/infra.py, auto ports) and stops it after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

REPO = Path(__file__).resolve().parents[1]


async def fill(bootstrap: str, topic: str, count: int) -> None:
    """`count` batches of one message each: every send awaited before the next."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    try:
        for i in range(count):
            await producer.send_and_wait(topic, f"fill-{i}".encode(), partition=0)
    finally:
        await producer.stop()


async def time_new_message(
    bootstrap: str, topic: str, wait_ms: int, limit: float, reap: dict | None
) -> float | None:
    group = f"depth-{uuid.uuid4().hex[:8]}"
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        fetch_max_wait_ms=wait_ms,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        end = await consumer.position(tp)
        await consumer.commit({tp: end})
        if reap is not None:
            from deploy.local import reaper

            report = await reaper.reap_once(reaper.ReaperConfig(**reap))
            print(f"    reaper: {report.summary()}", flush=True)
        started = time.monotonic()
        sent = await producer.send_and_wait(topic, b"new", partition=0)
        while time.monotonic() - started < limit:
            batch = await consumer.getmany(tp, timeout_ms=200)
            for record in batch.get(tp, []):
                if record.offset == sent.offset:
                    return time.monotonic() - started
        return None
    finally:
        await producer.stop()
        await consumer.stop()


def start_private(state: Path) -> dict:
    env = {**os.environ, "LOCAL_STATE_DIR": str(state), "LOCAL_PORTS": "auto"}
    infra = [sys.executable, str(REPO / "deploy/local/infra.py")]
    subprocess.run([*infra, "start", "--only", "kafka"], env=env, check=True)
    return json.loads((state / "endpoints.json").read_text())


def stop_private(state: Path) -> None:
    env = {**os.environ, "LOCAL_STATE_DIR": str(state)}
    subprocess.run(
        [sys.executable, str(REPO / "deploy/local/infra.py"), "stop"], env=env, check=False
    )


async def run(args: argparse.Namespace, endpoints: dict) -> list[dict]:
    bootstrap = endpoints["kafka_bootstrap"]
    rows = []
    for depth in (int(d) for d in args.depths.split(",")):
        topic = f"depth-{depth}-{uuid.uuid4().hex[:6]}"
        began = time.monotonic()
        await fill(bootstrap, topic, depth)
        filled = time.monotonic() - began
        reap = None
        if args.reap:
            reap = {
                "bootstrap": bootstrap,
                "s3_url": endpoints["s3_url"],
                "bucket": endpoints["s3_bucket"],
                "region": endpoints["s3_region"],
                "access_key": endpoints["s3_access_key_id"],
                "secret_key": endpoints["s3_secret_access_key"],
                "topics": [topic],
            }
        latency = await time_new_message(bootstrap, topic, args.wait_ms, args.limit, reap)
        row = {"batches": depth, "fill_s": round(filled, 1), "latency_s": latency}
        print(
            f"  {depth:>6} batches (filled in {filled:5.1f}s): new message after "
            + (f"{latency:.2f}s" if latency is not None else f"never (> {args.limit:g}s)"),
            flush=True,
        )
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", default="500,1000,2000,4000")
    parser.add_argument("--wait-ms", type=int, default=20)
    parser.add_argument("--limit", type=float, default=15.0)
    parser.add_argument("--reap", action="store_true")
    parser.add_argument("--state", help="state dir of a running infra (default: a private one)")
    args = parser.parse_args()
    if args.state:
        endpoints = json.loads((Path(args.state) / "endpoints.json").read_text())
        asyncio.run(run(args, endpoints))
        return
    with tempfile.TemporaryDirectory(prefix="depth-") as tmp:
        state = Path(tmp)
        try:
            asyncio.run(run(args, start_private(state)))
        finally:
            stop_private(state)


if __name__ == "__main__":
    main()
