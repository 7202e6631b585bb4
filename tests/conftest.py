"""Fixture plumbing only: the fixtures live in their own modules beside the tests."""

from victoriametrics import victoriametrics

__all__ = ["victoriametrics"]
