"""Webhook receiver, staff dashboard and JSON API (FastAPI)."""
