"""HTTP routes: ``tasks`` under ``/api/v1``, ``health`` (liveness, readiness) at the root."""

from . import health, tasks

__all__ = ["health", "tasks"]
