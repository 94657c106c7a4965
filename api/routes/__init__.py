"""HTTP routes: ``tasks`` and ``workflows`` under ``/api/v1``, ``health`` (liveness, readiness) at the root."""

from . import health, tasks, workflows

__all__ = ["health", "tasks", "workflows"]
