"""records_fetch's bootstrap (issue 16): nothing is built at import, and a service
built by `create_service` reads time from the clock it was given."""

from __future__ import annotations

import importlib
import pathlib

from services.records_fetch import app
from services.records_fetch.settings import RecordsFetchSettings
from shared.clock import ManualClock

SOURCES = pathlib.Path(app.__file__).parent


def test_importing_the_module_builds_no_service_client_or_store() -> None:
    module = importlib.reload(app)
    built = {"service", "store", "client", "ctx", "settings", "api"} & set(vars(module))
    assert built == set()
    assert module._default is None


def test_create_service_uses_the_given_clock_and_settings() -> None:
    clock = ManualClock()
    settings = RecordsFetchSettings(retrieval_workers=1)
    service = app.create_service(settings, clock)
    assert service.clock is clock
    paths = {getattr(r, "path", "") for r in service.api.routes}
    assert "/v1/cases/{case_id}/manifest" in paths


def test_no_wall_clock_is_read_in_records_fetch() -> None:
    readers = [
        p.name for p in SOURCES.glob("*.py") if "datetime.now(" in p.read_text(encoding="utf-8")
    ]
    assert readers == []
