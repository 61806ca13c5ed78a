"""`python -m services.intake` runs the intake service."""

from services.intake.app import service

service.run()
