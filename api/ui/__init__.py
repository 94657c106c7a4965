"""The web dashboard at ``/ui``: server-rendered page shells, data fetched by the browser from the HTTP API.

``router`` (``taskstream.api.ui.router``) holds every UI route, so one role
can be given to all of them: the pages, their static files and the two
read-only JSON helpers the HTTP API has no route for (a workflow's tasks,
the processor's lag). See ``routes`` for the design.
"""

from .routes import router

__all__ = ["router"]
