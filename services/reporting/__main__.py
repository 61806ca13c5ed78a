"""`python -m services.reporting` runs the reporting service."""

from services.reporting.app import create_service

create_service().run()
