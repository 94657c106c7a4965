"""The HTTP gateway (DESIGN §8): clients submit tasks as events and read tasks from a local read model.

``create_app(settings)`` builds the FastAPI app; ``run_api(settings)``
serves it (blocking). The API imports only ``taskstream.schemas``.
"""

from .app import create_app, run_api

__all__ = ["create_app", "run_api"]
