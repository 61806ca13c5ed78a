"""`python -m services.notify` runs the notify service."""

from services.notify.app import service

service.run()
