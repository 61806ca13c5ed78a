"""`python -m services.records_fetch` runs the records_fetch service."""

from services.records_fetch.app import create_service

create_service().run()
