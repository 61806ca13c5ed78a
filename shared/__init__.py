"""Common package of the second-opinion router: event models, envelope, settings,
telemetry, store helpers, errors and HTTP plumbing shared by the five services."""
