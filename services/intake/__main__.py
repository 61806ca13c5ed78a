"""`python -m services.intake` runs the intake service."""

from services.intake.app import create_service

create_service().run()
