"""The clinical suite runs against intake as the integration tier starts it: the
FastAPI app in-process on the real broker and Mongo-wire server, with a tap on
the real topics (tests/integration/test_intake_api.py's `intake` fixture)."""

from tests.integration.test_intake_api import intake

__all__ = ["intake"]
