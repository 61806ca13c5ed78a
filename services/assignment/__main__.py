"""`python -m services.assignment` runs the assignment service."""

from services.assignment.app import service

service.run()
