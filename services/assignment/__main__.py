"""`python -m services.assignment` runs the assignment service."""

from services.assignment.app import create_service

create_service().run()
