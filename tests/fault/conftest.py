"""Fault tier: the whole system as processes (the `running_stack` fixture of
tests/conftest.py), killed and restarted under load. Run it alone with
`make test-fault` (seed with FAULT_SEED=<n>)."""

import pytest

pytestmark = pytest.mark.fault
