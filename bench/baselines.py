"""Raw rates of the parts the pipeline is built on, measured on the same stack in
the same run: the broker with aiokafka, the database with pymongo, DICOM
parsing with pydicom. These are the bounds the pipeline figures are divided by."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pydicom
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydicom.data import get_testdata_file
from pymongo import AsyncMongoClient, WriteConcern

# Close to the size of one of the router's events (JSON body + CloudEvents headers).
EVENT_BYTES = 700


@dataclass
class Baselines:
    produce_per_s: float
    consume_per_s: float
    upsert_per_s_1: float  # one client, one upsert at a time
    upsert_per_s_n: float  # `clients` concurrent clients, as the five services are
    clients: int
    dicom_parse_per_s: float
    dicom_bytes: int


async def broker_rates(bootstrap: str, n: int) -> tuple[float, float]:
    """(produced/s, consumed/s) for n messages, acks=all, 3 partitions, keyed."""
    topic = f"bench.raw.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()
    body = b"x" * EVENT_BYTES
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        t0 = time.perf_counter()
        futures = [
            await producer.send(topic, body, key=f"case-{i % 997}".encode()) for i in range(n)
        ]
        await asyncio.gather(*futures)
        produce = n / (time.perf_counter() - t0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    await consumer.start()
    try:
        seen, t0 = 0, 0.0
        while seen < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            if batch and not t0:
                t0 = time.perf_counter()  # count from the first record: not the group join
            seen += sum(len(v) for v in batch.values())
        await consumer.commit()
        consume = n / (time.perf_counter() - t0)
    finally:
        await consumer.stop()
    return produce, consume


async def upsert_rate(uri: str, n: int, clients: int) -> float:
    """Upserts/s with the services' write concern (majority, journaled)."""
    conns: list[AsyncMongoClient[dict[str, Any]]] = [
        AsyncMongoClient(uri, w="majority", journal=True) for _ in range(clients)
    ]
    name = f"bench_raw_{uuid.uuid4().hex[:8]}"
    colls = [
        c.get_database(name, write_concern=WriteConcern(w="majority", j=True))["docs"]
        for c in conns
    ]

    async def worker(k: int) -> None:
        for i in range(k, n, clients):
            # The services' write (shared.store.apply_once): update_one, upserting.
            await colls[k].update_one(
                {"_id": f"doc-{i}"},
                {"$set": {"stage": "accepted", "n": i}, "$push": {"applied": {"$each": [str(i)]}}},
                upsert=True,
            )

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(clients)))
        return n / (time.perf_counter() - t0)
    finally:
        await conns[0].drop_database(name)
        for c in conns:
            await c.close()


def dicom_parse_rate(seconds: float = 3.0) -> tuple[float, int]:
    """Parses/s of the bundled test files (the ones the PACS is seeded with), from bytes."""
    blobs = []
    for name in ("MR_small.dcm", "CT_small.dcm"):
        path = get_testdata_file(name)
        assert path is not None
        with open(path, "rb") as f:
            blobs.append(f.read())
    parsed, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for blob in blobs:
            ds = pydicom.dcmread(io.BytesIO(blob))
            _ = ds.pixel_array if "PixelData" in ds else None  # the full decode a check does
            parsed += 1
    return parsed / (time.perf_counter() - t0), sum(len(b) for b in blobs) // len(blobs)


async def measure(
    bootstrap: str, mongo_uri: str, *, messages: int, upserts: int, clients: int
) -> Baselines:
    produce, consume = await broker_rates(bootstrap, messages)
    one = await upsert_rate(mongo_uri, upserts, 1)
    many = await upsert_rate(mongo_uri, upserts, clients)
    parse, size = await asyncio.to_thread(dicom_parse_rate)
    return Baselines(produce, consume, one, many, clients, parse, size)
