"""`python -m services.reporting` runs the reporting service."""

from services.reporting.app import service

service.run()
