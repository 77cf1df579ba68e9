"""Celery app, tasks, canvases, Beat schedule and locks (``celery -A workflows worker``)."""

from workflows.celery_app import app
from workflows import tasks  # noqa: E402,F401  (registers the tasks on the app)

__all__ = ["app"]
