"""Clients, payloads and mappers for the outside world: one package per marketplace, payment
provider and carrier. Shared pieces: ``errors`` (the error tree), ``http`` (the client seam),
``ratelimit`` (token buckets), ``canonical`` (the order every mapper produces)."""
