"""`python -m services.notify` runs the notify service."""

from services.notify.app import default_service

default_service().run()
