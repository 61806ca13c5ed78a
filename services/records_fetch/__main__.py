"""`python -m services.records_fetch` runs the records_fetch service."""

from services.records_fetch.app import create_service

# Guarded: the check workers' processes import this module's name too.
if __name__ == "__main__":
    create_service().run()
