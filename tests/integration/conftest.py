"""Integration tier: every test here runs against the real parts."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from pymongo.asynchronous.database import AsyncDatabase

from deploy.local import seed
from shared.store import Doc, connect

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def clinic_pid(infra: dict[str, Any]) -> str:
    """A patient at the real FHIR peer with clinical records (one per module)."""
    return seed.seed_fhir(infra["fhir_url"], "Test", "Pat", "1970-01-01")


@pytest_asyncio.fixture(loop_scope="session")
async def db(infra: dict[str, Any]) -> AsyncIterator[AsyncDatabase[Doc]]:
    """A fresh database on the real Mongo-wire server, dropped afterwards."""
    client, database = connect(infra["mongo_uri"], f"it_{uuid.uuid4().hex[:10]}")
    try:
        yield database
    finally:
        await client.drop_database(database.name)
        await client.close()
