"""Fixture plumbing only: the fixtures live in their own modules beside the tests."""

from hypothesis import HealthCheck, settings
from victoriametrics import victoriametrics

# Property tests judge correctness, never speed: on a loaded 2-core CI machine hypothesis's
# "too slow" and "filters too much" health checks would fail a run that found nothing wrong.
settings.register_profile("envagent",
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
                          deadline=None)
settings.load_profile("envagent")

__all__ = ["victoriametrics"]
