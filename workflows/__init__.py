"""Celery app, tasks, canvases, Beat schedule and locks (``celery -A workflows worker``)."""

from workflows import pipeline, stock, sync, tasks  # noqa: F401  (registers the tasks on the app)
from workflows.celery_app import app

__all__ = ["app"]
