"""HTTP routes: ``tasks``, ``workflows`` and ``schedules`` under ``/api/v1``, ``health`` (liveness, readiness) at the root."""

from . import health, schedules, tasks, workflows

__all__ = ["health", "schedules", "tasks", "workflows"]
