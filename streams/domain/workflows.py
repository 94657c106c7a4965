"""A workflow's overall status: one rule, derived from how many of its tasks are in each status.

A workflow is not an aggregate of its own in the log: its tasks are (each ``TaskCreated`` carries the
``workflow_id``), and the read side counts them. The rule, in order:

1. ``running`` while any task is not terminal (pending, scheduled, queued or running), whatever the others did:
   a failure in one branch does not stop the independent branches, so the workflow is not over yet;
2. ``failed`` if any task ``failed``;
3. ``cancelled`` if any task was ``cancelled`` (its dependents are ``upstream_failed`` because of it, which
   does not make the workflow ``failed``);
4. ``failed`` if any task is ``upstream_failed`` (a dependency that failed before it was re-driven);
5. ``succeeded``: every task succeeded.

A re-driven task makes its workflow ``running`` again. A workflow with no task (none known yet) is ``running``.
"""

from __future__ import annotations

from collections.abc import Mapping

from taskstream.schemas import TERMINAL, Status, WorkflowStatus


def workflow_status(counts: Mapping[str, int]) -> WorkflowStatus:
    """The overall status of a workflow whose tasks are ``counts`` (task status -> number of tasks)."""
    present = {status for status, n in counts.items() if n > 0}
    if not present or any(status not in TERMINAL for status in present):
        return WorkflowStatus.RUNNING
    if Status.FAILED in present:
        return WorkflowStatus.FAILED
    if Status.CANCELLED in present:
        return WorkflowStatus.CANCELLED
    if Status.UPSTREAM_FAILED in present:
        return WorkflowStatus.FAILED
    return WorkflowStatus.SUCCEEDED
